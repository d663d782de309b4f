"""Reading the inputs of `detect` as frames and writing annotated videos: video files through PyAV
(its wheels bundle FFmpeg), animated images (GIF, WebP, PNG) through PIL, both as (frame index,
time in seconds, RGB image)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

import numpy as np
from PIL import Image, ImageSequence

from facemask.data.images import to_rgb

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".webm", ".mkv", ".m4v", ".mpg", ".mpeg"}
Frame = Tuple[int, float, Image.Image]


class UnreadableVideo(ValueError):
    """A video that cannot be decoded, or stops part-way (`frames` were read before the failure)."""

    def __init__(self, message: str, frames: int = 0) -> None:
        super().__init__(message)
        self.frames = frames


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def is_animated(path: Path) -> bool:
    """Whether an image file holds more than one frame (read without counting them all, so that a
    truncated animation still counts as one)."""
    with Image.open(path) as image:
        return bool(getattr(image, "is_animated", False))


def video_frames(path: Path) -> Iterator[Frame]:
    """Every frame of a video or an animated image, decoded in order, upright, its time counted
    from the first frame."""
    if not is_video(path):
        yield from _animation_frames(path)
        return
    import av

    index, time, start, missing = 0, 0.0, None, ""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnreadableVideo("no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or 25)
            for frame in container.decode(stream):
                if frame.time is not None:
                    start = frame.time if start is None else start
                    time = float(frame.time - start)
                else:
                    time = index / rate
                image = frame.to_image()
                # The display matrix: how far the stored picture is turned counterclockwise for
                # display (phones store portrait video as landscape frames and say so here).
                if frame.rotation:
                    image = image.rotate(frame.rotation, expand=True)
                yield index, time, image
                index += 1
            missing = _truncation(container, stream, index, time + 1 / rate, rate)
    except (av.error.FFmpegError, OSError) as err:  # what FFmpeg says of a bad or truncated file
        where = f" after {index} frames" if index else ""
        raise UnreadableVideo(f"not a readable video{where} ({type(err).__name__}: {str(err).splitlines()[0]})",
                              index) from None
    if index == 0:
        raise UnreadableVideo("not a readable video (no frame could be decoded)")
    if missing:
        raise UnreadableVideo(f"truncated video: {missing}", index)


def _animation_frames(path: Path) -> Iterator[Frame]:
    index = 0
    try:
        with Image.open(path) as image:
            time = 0.0
            for index, frame in enumerate(ImageSequence.Iterator(image)):
                yield index, time, to_rgb(frame.copy())
                time += frame_duration(frame)
    except OSError as err:  # PIL's word for a file that ends early
        raise UnreadableVideo(f"truncated animation after {index} frames ({str(err).splitlines()[0]})",
                              index) from None


def frame_duration(frame: Image.Image) -> float:
    """An animation frame's display time in seconds; browsers show 0 or missing as 0.1 s."""
    return (frame.info.get("duration") or 100) / 1000


def _truncation(container: Any, stream: Any, frames: int, end: float, rate: float) -> str:
    """What a video's header promises and decoding did not give ("" when nothing is missing).
    FFmpeg stops at the end of a cut-off MKV or AVI without an error, so the decoded length is
    checked against the frame count or duration the file states."""
    if stream.frames and frames < stream.frames - 1:
        return f"{frames} of the {stream.frames} frames its header lists could be decoded"
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration and len(container.streams) == 1:  # with audio, the container's may be longer
        duration = container.duration / 1e6
    else:
        return ""
    if end < duration - max(2 / rate, 0.1):
        return f"decoding stopped at {end:.2f} s of the {duration:.2f} s its header states"
    return ""


def time_base(path: Path) -> Fraction:
    """The rate the annotated copy counts time in: the video's frame rate, or hundredths of a second
    for an animation, whose frames each keep their own duration."""
    if not is_video(path):
        return Fraction(100)
    import av

    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
    return Fraction(rate).limit_denominator(1000) if rate else Fraction(25)


class VideoWriter:
    """An H.264 MP4 (yuv420p, which every player reads: odd sides are padded by one black pixel),
    each frame shown at the time it had in the input."""

    def __init__(self, path: Path, rate: Fraction) -> None:
        import av

        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": "23", "preset": "veryfast"}
        self.rate = rate
        self.size: Optional[Tuple[int, int]] = None
        self.last_pts = -1

    def write(self, image: Image.Image, time: float) -> None:
        import av

        if self.size is None:
            self.size = (image.width + image.width % 2, image.height + image.height % 2)
            self.stream.width, self.stream.height = self.size
        if image.size != self.size:
            canvas = Image.new("RGB", self.size)
            canvas.paste(image)
            image = canvas
        frame = av.VideoFrame.from_ndarray(np.asarray(image.convert("RGB")), format="rgb24")
        frame.pts = self.last_pts = max(round(time * self.rate), self.last_pts + 1)
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()
