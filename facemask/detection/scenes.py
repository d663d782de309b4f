"""Every face in photos, animations and videos: found by the detector on a copy shrunk to
`max_side`, cropped from the full-resolution image, classified in batches by the code `predict`
uses, followed across video frames, drawn, and written as one table (`detections.csv` / `.json`).
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from facemask.config.schema import WorkFailed
from facemask.data.images import shrink
from facemask.data.labels import resolve_positive_label
from facemask.detection.annotate import draw_faces, label_colours
from facemask.detection.crops import DEFAULT_MARGIN, crop_box
from facemask.detection.media import UnreadableVideo, VideoWriter, is_animated, is_video, time_base, video_frames
from facemask.detection.tracking import Tracker
from facemask.run_folder import DETECTIONS_CSV, DETECTIONS_JSON, output_name
from facemask.runtime.decision import decide
from facemask.runtime.files import read_input, write_rows
from facemask.runtime.predict import Classifier

BOX_COLUMNS = ["x0", "y0", "x1", "y1"]


def table_columns(labels: Sequence[str]) -> List[str]:
    return ["file", "frame", "time_s", *BOX_COLUMNS, "detector_score", "track", "label",
            *(f"prob_{label}" for label in labels)]


@dataclass
class Faces:
    """The faces of one image: boxes (x0, y0, x1, y1, full-resolution pixels), detector scores and
    each face's class probabilities."""

    boxes: np.ndarray
    scores: np.ndarray
    probs: np.ndarray


@dataclass
class SceneClassifier:
    """A face detector and a classifier (the torch-free runtime's or evaluation.predict.TorchClassifier),
    and the settings that join them."""

    classifier: Classifier
    detector: Any
    threshold: Optional[float] = None
    positive: int = 1  # the class `threshold` is on (decision.decision_rule's)
    margin: float = DEFAULT_MARGIN
    square: bool = True
    min_face: int = 20
    max_side: int = 1280
    detector_threshold: float = 0.6
    batch_size: int = 32
    labels: List[str] = field(init=False)

    def __post_init__(self) -> None:
        self.labels = self.classifier.labels
        # Green is the mask class whichever class the threshold is on (an operating point may be on P(without_mask)).
        self.colours = label_colours(self.labels, resolve_positive_label(self.labels, None))

    def find(self, image: Image.Image) -> Tuple[np.ndarray, np.ndarray]:
        """The faces' boxes in `image`'s own pixels and their detector scores (the detector's part)."""
        scale = min(1.0, self.max_side / max(image.size))
        small = image if scale == 1.0 else image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
        boxes, scores = self.detector.detect(np.asarray(small), self.detector_threshold)
        boxes = boxes / scale
        big = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= self.min_face
        return boxes[big], scores[big]

    def faces(self, image: Image.Image, check: Optional[Callable[[], None]] = None) -> Faces:
        """The faces found and classified; `check()`, where given, runs between the stages (the
        detector, each batch of crops) and may raise to abandon the work (the service's timeout)."""
        check = check or (lambda: None)
        boxes, scores = self.find(image)
        # Shrunk as the one decoder shrinks a file (predict on a saved crop sees the same pixels).
        side = 2 * self.classifier.input_side
        crops = [shrink(image.crop(crop_box(box, image.size, self.margin, self.square)), side) for box in boxes]
        probs = []
        for start in range(0, max(1, len(crops)), self.batch_size):
            check()
            probs.append(self.classifier.probabilities(crops[start:start + self.batch_size], self.batch_size))
        return Faces(boxes, scores, np.concatenate(probs))

    def decide(self, probs: np.ndarray) -> List[str]:
        return [self.labels[i] for i in decide(probs.reshape(-1, len(self.labels)), self.threshold, self.positive)]

    def draw(self, image: Image.Image, boxes: np.ndarray, probs: np.ndarray) -> Image.Image:
        labels = self.decide(probs)
        return draw_faces(image, [(box, label, float(p[self.labels.index(label)]))
                                  for box, label, p in zip(boxes, labels, probs)], self.colours)

    def rows(self, name: str, faces: Faces, frame: Any = 0, time_s: Any = "", tracks: Optional[List[Any]] = None,
             probs: Optional[np.ndarray] = None) -> List[Dict[str, Any]]:
        """Table rows of one image's faces; `probs` (a track's mean) stands in for the faces' own."""
        probs = faces.probs if probs is None else probs
        tracks = tracks if tracks is not None else [""] * len(faces.boxes)
        out = []
        for box, score, track, p, label in zip(faces.boxes, faces.scores, tracks, probs, self.decide(probs)):
            row = {"file": name, "frame": frame, "time_s": time_s}
            row.update({key: round(float(v), 1) for key, v in zip(BOX_COLUMNS, box)})
            row.update(detector_score=round(float(score), 4), track=track, label=label)
            row.update({f"prob_{lab}": round(float(v), 6) for lab, v in zip(self.labels, p)})
            out.append(row)
        return out


def label_counts(labels: Sequence[str], order: Sequence[str]) -> str:
    """'with_mask 2, without_mask 1': how many faces got each label, in the model's class order."""
    counts = Counter(labels)
    return ", ".join(f"{label} {counts[label]}" for label in order if counts[label])


class OutputError(WorkFailed):
    """An annotated copy that could not be written (the output folder's fault, not the input's)."""


@dataclass
class Report:
    rows: List[Dict[str, Any]] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    written: List[Path] = field(default_factory=list)
    images: int = 0
    videos: int = 0
    frames: int = 0
    analysed_frames: int = 0
    video_seconds: float = 0.0
    without_faces: List[str] = field(default_factory=list)

    def summary(self, order: Sequence[str]) -> str:
        files = self.images + self.videos
        line = f"{files} file{'s' * (files != 1)} ({self.images} image{'s' * (self.images != 1)}, {self.videos} " \
               f"video{'s' * (self.videos != 1)}"
        if self.videos:
            line += f": {self.analysed_frames} of {self.frames} frames analysed"
            if self.video_seconds > 0:
                line += f", {self.analysed_frames / self.video_seconds:.1f} frames/s"
        line += f"), {len(self.rows)} face{'s' * (len(self.rows) != 1)}"
        if self.rows:
            line += ": " + label_counts([row["label"] for row in self.rows], order)
        lines = [line]
        if self.without_faces:
            shown = ", ".join(self.without_faces[:10]) + (", ..." if len(self.without_faces) > 10 else "")
            lines.append(f"no face found in {len(self.without_faces)}: {shown}")
        return "\n".join(lines)


@contextmanager
def writing(target: Path) -> Iterator[None]:
    import av

    try:
        yield
    except (OSError, ValueError, av.error.FFmpegError) as err:
        raise OutputError(f"could not write {target}: {str(err).splitlines()[0]}") from None


def detect_image(scene: SceneClassifier, path: Path, image: Image.Image, out: Optional[Path], report: Report,
                 taken: set) -> None:
    faces = scene.faces(image)
    report.images += 1
    report.rows += scene.rows(str(path), faces)
    if not len(faces.boxes):
        report.without_faces.append(str(path))
    if out is not None:
        suffix = ".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else ".png"
        target = out / output_name(path, suffix, taken)
        with writing(target):
            scene.draw(image, faces.boxes, faces.probs).save(target, quality=92)
        report.written.append(target)


def detect_video(scene: SceneClassifier, path: Path, every: int, out: Optional[Path], report: Report,
                 taken: set) -> None:
    """Two passes: the sampled frames are analysed and their faces tracked, then (with an output
    folder) every frame is written with the latest analysed frame's boxes and each track's label."""
    tracker, analysed = Tracker(), []
    start, frames, error = time.perf_counter(), 0, None
    try:
        for index, time_s, image in video_frames(path):
            frames += 1
            if index % every:
                continue
            faces = scene.faces(image)
            analysed.append((index, time_s, faces, tracker.update(faces.boxes, time_s)))
    except UnreadableVideo as err:
        if not analysed:
            raise
        error = str(err)
    report.video_seconds += time.perf_counter() - start
    report.videos += 1
    report.frames += frames
    report.analysed_frames += len(analysed)
    sums: Dict[int, np.ndarray] = {}
    counts: Counter = Counter()
    for _, _, faces, tracks in analysed:
        for track, p in zip(tracks, faces.probs):
            sums[track] = sums.get(track, 0) + p
            counts[track] += 1
    mean = {track: sums[track] / counts[track] for track in sums}

    def track_probs(tracks: List[int]) -> np.ndarray:
        return np.array([mean[t] for t in tracks]).reshape(len(tracks), len(scene.labels))

    for index, time_s, faces, tracks in analysed:
        report.rows += scene.rows(str(path), faces, index, round(time_s, 3), tracks, track_probs(tracks))
    if not any(len(f.boxes) for _, _, f, _ in analysed):
        report.without_faces.append(str(path))
    if error:
        report.skipped.append((str(path), f"{error} (the {frames} frames decoded before it are in the table)"))
    if out is None:
        return
    target = out / output_name(path, ".mp4", taken)
    shown = iter(analysed)
    current, upcoming = None, next(shown, None)
    with writing(target):
        writer = VideoWriter(target, time_base(path))
        try:
            for index, time_s, image in video_frames(path):
                while upcoming is not None and upcoming[0] <= index:
                    current, upcoming = upcoming, next(shown, None)
                if current is not None:
                    _, _, faces, tracks = current
                    image = scene.draw(image, faces.boxes, track_probs(tracks))
                writer.write(image, time_s)
        except UnreadableVideo:
            pass  # the frames the first pass read were written; the failure is already reported
        finally:
            writer.close()
    report.written.append(target)


def detect_files(scene: SceneClassifier, paths: Sequence[Path], out: Optional[Path] = None, every: int = 1,
                 overwrite: bool = False) -> Report:
    """Run the scene classifier over image and video files; bad files are skipped with the reason.
    Annotated copies never replace a file already in `out` unless `overwrite`."""
    taken = {DETECTIONS_CSV.lower(), DETECTIONS_JSON.lower()}
    if out is not None and not overwrite and out.is_dir():
        taken |= {p.name.lower() for p in out.iterdir()}
    report = Report()
    for path in paths:
        path = Path(path)
        try:
            if path.stat().st_size == 0:
                report.skipped.append((str(path), "empty file"))
                continue
            if is_video(path):
                detect_video(scene, path, every, out, report, taken)
                continue
            image, reason = read_input(path)
            if image is None:
                report.skipped.append((str(path), reason))
                continue
            if is_animated(path):
                report.notes.append(f"{path} is animated: read as a video")
                detect_video(scene, path, every, out, report, taken)
            else:
                detect_image(scene, path, image, out, report, taken)
        except UnreadableVideo as err:
            report.skipped.append((str(path), str(err)))
        except OSError as err:  # reading the input: writing raises OutputError
            report.skipped.append((str(path), str(err).splitlines()[0]))
    return report


def json_row(row: Dict[str, Any]) -> Dict[str, Any]:
    """A table row as detections.json (and serve's /detect) hold it: an empty cell is null."""
    return {k: (None if v == "" else v) for k, v in row.items()}


def write_table(report: Report, labels: Sequence[str], out: Path) -> List[Path]:
    columns = table_columns(labels)
    write_rows(report.rows, out / DETECTIONS_CSV, columns)
    # JSON says null where the CSV leaves a cell empty (a still image's time and track).
    write_rows([json_row(row) for row in report.rows], out / DETECTIONS_JSON)
    return [out / DETECTIONS_CSV, out / DETECTIONS_JSON]
