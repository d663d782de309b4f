"""python -m facemask detect: real faces found in photos, composed scenes, an animation and a video;
the crops classified as predict classifies them; faces followed across frames; bad inputs skipped."""

import csv
import json
import struct
import zlib

import av
import numpy as np
import pytest
from conftest import ASTRONAUT_FACE, best_iou, compose_scene
from PIL import Image
from skimage import data

from facemask.__main__ import main
from facemask.detection.crops import crop_box, margin_from_images
from facemask.detection.detectors import load_detector, nms
from facemask.detection.tracking import Tracker
from facemask.evaluation.predict import predict_files

LABELS = ["with_mask", "without_mask"]
COLUMNS = ["file", "frame", "time_s", "x0", "y0", "x1", "y1", "detector_score", "track", "label",
           "prob_with_mask", "prob_without_mask"]


@pytest.fixture(scope="module")
def run_dir(evaluated_run):
    return evaluated_run


@pytest.fixture(scope="module")
def detector():
    return load_detector()


def read_table(folder):
    with (folder / "detections.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def boxes_of(rows):
    return np.array([[float(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in rows])


def moving_frames(count, step=6):
    """Frames of a scene whose faces move right by `step` pixels a frame, and each frame's known boxes."""
    scene, boxes = compose_scene()
    frames = []
    for i in range(count):
        canvas = Image.new("RGB", scene.size, (200, 190, 170))
        canvas.paste(scene, (i * step, 0))
        frames.append((canvas, [(x0 + i * step, y0, x1 + i * step, y1) for x0, y0, x1, y1 in boxes]))
    return frames


def write_video(path, frames, rate=10, options=None):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode(None))


def huge_png(path, side=20000):
    """A PNG whose header says side x side pixels (over PIL's decompression-bomb limit) in a few bytes."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


def test_the_detector_finds_the_face_in_a_real_portrait(detector):
    boxes, scores = detector.detect(data.astronaut())
    assert len(boxes) == 1 and scores[0] > 0.9
    assert best_iou(ASTRONAUT_FACE, boxes) >= 0.5


def test_the_detector_finds_masked_and_unmasked_faces_at_their_places(detector):
    scene, known = compose_scene()
    boxes, _ = detector.detect(np.asarray(scene))
    assert len(boxes) == len(known)
    assert all(best_iou(box, boxes) >= 0.5 for box in known)
    empty, _ = detector.detect(np.full((300, 400, 3), 120, dtype=np.uint8))
    assert len(empty) == 0


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=np.float32)
    assert nms(boxes, np.array([0.8, 0.9, 0.5]), 0.4).tolist() == [1, 2]


def test_crop_box_adds_the_margin_is_square_and_stays_inside():
    # A 20 x 40 box grows by a quarter of its size on each side (30 x 60), then to a 60 px square.
    assert crop_box((40, 40, 60, 80), (200, 200), margin=0.25, square=True) == (20, 30, 80, 90)
    assert crop_box((40, 40, 60, 80), (200, 200), margin=0.25, square=False) == (35, 30, 65, 90)
    # At the edge the square is moved into the image, not cut.
    assert crop_box((0, 0, 20, 40), (200, 200), margin=0.25, square=True) == (0, 0, 60, 60)
    # An image smaller than the crop gives the whole image.
    assert crop_box((5, 5, 25, 35), (30, 40), margin=0.5, square=True) == (0, 0, 30, 40)


def test_margin_measured_on_training_crops_recovers_the_margin_they_were_cut_with(detector, tmp_path):
    photo = Image.fromarray(data.astronaut())
    [box], _ = detector.detect(np.asarray(photo))
    for i, scale in enumerate((0.6, 1.0, 1.5)):
        crop = photo.crop(crop_box(box, photo.size, margin=0.3, square=False))
        crop.resize((round(crop.width * scale), round(crop.height * scale))).save(tmp_path / f"{i}.png")
    Image.new("RGB", (64, 64), (90, 90, 90)).save(tmp_path / "blank.png")
    measured = margin_from_images(sorted(tmp_path.glob("*.png")), detector)
    assert measured["images"] == 4 and measured["without_face"] == 1
    assert measured["margin"] == pytest.approx(0.3, abs=0.06)


def test_tracker_keeps_ids_across_frames_and_gives_new_faces_new_ids():
    tracker = Tracker(max_gap=2, max_gap_s=1.0)
    assert tracker.update(np.array([[0, 0, 10, 10], [50, 50, 60, 60]]), 0.0) == [1, 2]
    assert tracker.update(np.array([[52, 50, 62, 60], [1, 0, 11, 10]]), 0.1) == [2, 1]
    assert tracker.update(np.array([[100, 0, 110, 10]]), 0.2) == [3]
    assert tracker.update(np.array([[2, 0, 12, 10]]), 0.3) == [1]  # unseen for one frame: within max_gap
    for step in range(5):
        tracker.update(np.zeros((0, 4)), 0.4 + 0.1 * step)
    # Unseen for 5 frames but 0.6 s: within max_gap_s, the same face.
    assert tracker.update(np.array([[2, 0, 12, 10]]), 0.9) == [1]
    # Unseen for 3 frames and 1.5 s: a new track.
    for time in (1.4, 1.9):
        tracker.update(np.zeros((0, 4)), time)
    assert tracker.update(np.array([[2, 0, 12, 10]]), 2.4) == [4]


def test_a_long_video_keeps_a_bounded_list_of_tracks():
    # 4000 frames at 25 fps: a face enters every 10 frames, walks right for 50 frames and leaves. Its row
    # is next used 80 frames on, after its gap (2 frames and 1 s) has passed, so every face is a new track.
    fps, every, life, rows, frames = 25, 10, 50, 8, 4000
    tracker = Tracker(max_gap=2, max_gap_s=1.0)
    stored, seen = [], {}
    for frame in range(frames):
        faces = [k for k in range(frame // every + 1) if k * every <= frame < k * every + life]
        boxes = np.array([[frame - k * every, 100 * (k % rows), frame - k * every + 40, 100 * (k % rows) + 40]
                          for k in faces], dtype=float).reshape(-1, 4)
        for k, track in zip(faces, tracker.update(boxes, frame / fps)):
            seen.setdefault(k, set()).add(track)
        stored.append(len(tracker.last_seen))
    assert all(len(tracks) == 1 for tracks in seen.values())
    assert len({t for tracks in seen.values() for t in tracks}) == len(seen) == frames // every
    # The tracks kept are those on screen (life / every) and those left within their gap (1 s = 25 frames):
    # the same few from the first hundred frames to the last, not one per face ever seen.
    bound = (life + fps) // every + 1
    assert max(stored) <= bound
    assert max(stored[100:1000]) == max(stored[-900:])


def test_two_people_crossing_one_spot_at_different_times_and_a_pause_within_the_gap():
    tracker = Tracker(max_gap=2, max_gap_s=1.0)
    walk = [np.array([[x, 50, x + 40, 90]], dtype=float) for x in range(0, 200, 10)]
    first = [tracker.update(box, i / 10) for i, box in enumerate(walk)]
    assert first == [[1]] * len(walk)
    # Nobody for 3 frames and 1.5 s: the first person's track has ended.
    for time in (2.4, 2.9, 3.4):
        assert tracker.update(np.zeros((0, 4)), time) == []
    second = [tracker.update(box, 3.5 + i / 10) for i, box in enumerate(walk)]
    assert second == [[2]] * len(walk)
    # The second person stops, hidden for 3 analysed frames but 0.8 s (within the gap): the same track.
    for time in (5.6, 5.8, 6.0):
        tracker.update(np.zeros((0, 4)), time)
    assert tracker.update(walk[-1], 6.2) == [2]
    # A third person where both walked, once their gap has passed: a new id, never a reused one.
    for time in (7.0, 7.5, 8.0):
        tracker.update(np.zeros((0, 4)), time)
    assert tracker.update(walk[0], 8.5) == [3]


def test_without_times_a_track_ends_after_its_frames():
    tracker = Tracker(max_gap=2, max_gap_s=1.0)
    box = np.array([[0, 0, 10, 10]], dtype=float)
    assert tracker.update(box) == [1]
    tracker.update(np.zeros((0, 4)))
    assert tracker.update(box) == [1]  # unseen for one frame: within max_gap
    for _ in range(3):
        tracker.update(np.zeros((0, 4)))
    assert tracker.update(box) == [2] and len(tracker.last_seen) == 1


def test_detect_photos_boxes_crops_table_and_bad_inputs(run_dir, tmp_path, capsys):
    scene, known = compose_scene(size=(1920, 1080), places=((100, 120, 2.0), (800, 400, 1.4), (1400, 160, 2.6),
                                                            (1500, 700, 1.3)))
    scene.save(tmp_path / "street.jpg", quality=95)
    Image.new("RGB", (400, 300), (60, 120, 200)).save(tmp_path / "sky.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    huge_png(tmp_path / "huge.png")
    out = tmp_path / "det"
    out.mkdir()
    (out / "street.jpg").write_bytes(b"the user's own file, not detect's")
    code = main(["detect", str(run_dir), str(tmp_path / "*.*"), "--output", str(out), "--max-side", "640"])
    captured = capsys.readouterr()
    assert code == 1  # something was skipped
    for name, reason in (("empty.jpg", "empty file"), ("notes.png", "not an image file"),
                         ("huge.png", "decompression bomb")):
        assert f"{name}: " in captured.err and reason in captured.err.split(name)[1].splitlines()[0]
    assert "3 of 5 inputs skipped" in captured.err
    assert "2 files (2 images, 0 videos), 4 faces" in captured.out and "no face found in 1" in captured.out

    columns, rows = read_table(out)
    assert columns == COLUMNS
    assert [r["file"] for r in rows] == [str(tmp_path / "street.jpg")] * 4
    assert {(r["frame"], r["time_s"], r["track"]) for r in rows} == {("0", "", "")}
    # Found on a copy shrunk to 640 px, reported in the photo's own pixels.
    found = boxes_of(rows)
    assert all(best_iou(box, found) >= 0.5 for box in known)
    assert json.loads((out / "detections.json").read_text())[0]["track"] is None

    # Each face's crop is classified exactly as predict classifies that crop as a file.
    photo = Image.open(tmp_path / "street.jpg").convert("RGB")
    for i, row in enumerate(rows):
        photo.crop(crop_box(found[i], photo.size)).save(tmp_path / f"crop{i}.png")
    predicted, _ = predict_files(*_model(run_dir), [tmp_path / f"crop{i}.png" for i in range(len(rows))])
    for row, pred in zip(rows, predicted):
        assert float(row["prob_with_mask"]) == pytest.approx(pred["prob_with_mask"], abs=1e-5)
        assert row["label"] == pred["label"]
    annotated = Image.open(out / "street-2.jpg")  # street.jpg was there before: kept
    assert annotated.size == scene.size and (out / "sky.png").is_file()
    assert (out / "street.jpg").read_bytes() == b"the user's own file, not detect's"

    # The table is not written over unless asked.
    assert main(["detect", str(run_dir), str(tmp_path / "sky.png"), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["detect", str(run_dir), str(tmp_path / "sky.png"), "--output", str(out), "--overwrite",
                 "--threshold", "0"]) == 0
    assert read_table(out)[1] == [] and "0 faces" in capsys.readouterr().out
    # An input inside the output folder is not read (it may be detect's own output).
    assert main(["detect", str(run_dir), str(out / "sky.png"), "--output", str(out), "--overwrite"]) == 1
    assert "sky.png: it is inside the output folder" in capsys.readouterr().err


def test_the_margin_is_measured_on_the_runs_training_images_when_they_are_here(run_dir, detector, tmp_path):
    import shutil

    import yaml

    from facemask.detection.crops import DEFAULT_MARGIN, run_margin

    assert run_margin(str(run_dir), detector) == (DEFAULT_MARGIN, "the default (no training images of the run to "
                                                                  "measure it on here)")
    photo = Image.fromarray(data.astronaut())
    [box], _ = detector.detect(np.asarray(photo))
    for label in LABELS:
        (tmp_path / "train" / label).mkdir(parents=True)
        for i, scale in enumerate((0.7, 1.2)):
            crop = photo.crop(crop_box(box, photo.size, margin=0.15, square=False))
            crop = crop.resize((round(crop.width * scale), round(crop.height * scale)))
            crop.save(tmp_path / "train" / label / f"{i}.png")
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    experiment = yaml.safe_load((run / "experiment.yaml").read_text())
    experiment["data"]["train_dir"] = str(tmp_path / "train")
    (run / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    margin, how = run_margin(str(run), detector)
    assert margin == pytest.approx(0.15, abs=0.05) and how.startswith("measured on the run's training images")


def test_detect_follows_faces_through_a_video_and_an_animation(run_dir, tmp_path, capsys):
    frames = moving_frames(12)
    write_video(tmp_path / "queue.mp4", [f for f, _ in frames])
    # An animation of odd size whose frames show for different times.
    gif = [f.crop((0, 0, 959, 539)) for f, _ in frames[:4]]
    gif[0].save(tmp_path / "loop.gif", save_all=True, append_images=gif[1:], duration=[100, 300, 100, 200], loop=0)
    (tmp_path / "cut.mp4").write_bytes((tmp_path / "queue.mp4").read_bytes()[:2500])
    # A Matroska file cut in half: FFmpeg decodes the first half without an error. (Every frame a
    # key frame, so that half the bytes hold about half the frames.)
    write_video(tmp_path / "whole.mkv", [f for f, _ in frames], options={"g": "1"})
    whole = (tmp_path / "whole.mkv").read_bytes()
    (tmp_path / "half.mkv").write_bytes(whole[:len(whole) // 2])
    out = tmp_path / "det"
    code = main(["detect", str(run_dir), str(tmp_path / "queue.mp4"), str(tmp_path / "loop.gif"),
                 str(tmp_path / "cut.mp4"), str(tmp_path / "half.mkv"), "--output", str(out), "--every", "2",
                 "--threshold", "0.5"])
    captured = capsys.readouterr()
    assert code == 1 and "cut.mp4: not a readable video" in captured.err
    assert "half.mkv: truncated video: decoding stopped at" in captured.err and "are in the table" in captured.err
    assert "2 of 4 inputs skipped" in captured.err
    assert "loop.gif is animated: read as a video" in captured.out
    _, rows = read_table(out)
    half = {int(r["frame"]) for r in rows if r["file"].endswith("half.mkv")}
    assert half and max(half) < 10 and len(half) == sum(1 for _ in range(0, max(half) + 1, 2))
    assert f"{6 + 2 + len(half)} of " in captured.out and "frames/s" in captured.out
    video = [r for r in rows if r["file"].endswith("queue.mp4")]
    # One row per face per analysed frame (0, 2, ..., 10), at the frame's time.
    assert sorted({int(r["frame"]) for r in video}) == [0, 2, 4, 6, 8, 10]
    assert len(video) == 4 * 6
    assert {r["time_s"] for r in video if r["frame"] == "4"} == {"0.4"}
    for index in range(0, 12, 2):
        found = boxes_of([r for r in video if int(r["frame"]) == index])
        assert all(best_iou(box, found) >= 0.5 for box in frames[index][1])
    # Each face keeps one track id across frames, and one label (its track's mean probabilities).
    tracks = {}
    for r in video:
        tracks.setdefault(r["track"], []).append(r)
    assert len(tracks) == 4 and all(len(t) == 6 for t in tracks.values())
    for track_rows in tracks.values():
        assert len({r["label"] for r in track_rows}) == 1 and len({r["prob_with_mask"] for r in track_rows}) == 1
        assert np.ptp(boxes_of(track_rows)[:, 1]) < 5  # the faces only move sideways
        mean = float(track_rows[0]["prob_with_mask"])
        assert track_rows[0]["label"] == ("with_mask" if mean >= 0.5 else "without_mask")
    loop = [r for r in rows if r["file"].endswith("loop.gif")]
    assert len(loop) == 4 * 2 and sorted({r["time_s"] for r in loop}) == ["0.0", "0.4"]  # frames 0 and 2
    # Annotated copies: every frame, at the input's rate and size.
    with av.open(str(out / "queue.mp4")) as container:
        stream = container.streams.video[0]
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        assert len(decoded) == 12 and stream.average_rate == 10
    assert decoded[0].shape == (540, 960, 3)
    assert not np.array_equal(decoded[0], np.asarray(frames[0][0]))  # boxes were drawn
    # The animation's copy: its frames at their own times; odd sides padded by one pixel.
    with av.open(str(out / "loop.mp4")) as container:
        shown = [(round(float(frame.time), 2), frame.width, frame.height) for frame in container.decode(video=0)]
    assert shown == [(0.0, 960, 540), (0.1, 960, 540), (0.4, 960, 540), (0.5, 960, 540)]


def test_detect_reads_a_rotated_phone_video_upright_an_animated_webp_and_a_truncated_gif(run_dir, tmp_path, capsys):
    frames = moving_frames(3)
    # Stored on its side, with the display matrix that turns it upright (as phones record portrait).
    with av.open(str(tmp_path / "phone.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 540, 960, "yuv420p"
        stream.set_display_rotation(90)
        for frame, _ in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame.rotate(-90, expand=True))))
        container.mux(stream.encode(None))
    gif = [f for f, _ in moving_frames(6)]
    gif[0].save(tmp_path / "whole.gif", save_all=True, append_images=gif[1:], duration=100)
    whole = (tmp_path / "whole.gif").read_bytes()
    (tmp_path / "cut.gif").write_bytes(whole[:len(whole) * 2 // 3])
    gif[0].save(tmp_path / "loop.webp", save_all=True, append_images=gif[1:3], duration=100, lossless=True)
    out = tmp_path / "det"
    code = main(["detect", str(run_dir), str(tmp_path / "phone.mp4"), str(tmp_path / "cut.gif"),
                 str(tmp_path / "loop.webp"), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "cut.gif: truncated animation after" in err and "are in the table" in err
    _, rows = read_table(out)
    phone = [r for r in rows if r["file"].endswith("phone.mp4")]
    for index, (_, known) in enumerate(frames):
        found = boxes_of([r for r in phone if r["frame"] == str(index)])
        assert len(found) == 4 and all(best_iou(box, found) >= 0.5 for box in known)
    with av.open(str(out / "phone.mp4")) as container:
        assert [(f.width, f.height) for f in container.decode(video=0)] == [(960, 540)] * 3
    assert sorted(int(r["frame"]) for r in rows if r["file"].endswith("loop.webp")) == [0] * 4 + [1] * 4 + [2] * 4
    cut = {int(r["frame"]) for r in rows if r["file"].endswith("cut.gif")}
    assert cut and cut == set(range(max(cut) + 1)) and max(cut) < 5


def test_the_crops_batch_size_does_not_change_the_probabilities(run_dir, tmp_path):
    compose_scene()[0].save(tmp_path / "still.png")
    assert main(["detect", str(run_dir), str(tmp_path / "still.png"), "--output", str(tmp_path / "a"),
                 "--batch-size", "1"]) == 0
    assert main(["detect", str(run_dir), str(tmp_path / "still.png"), "--output", str(tmp_path / "b"),
                 "--batch-size", "8"]) == 0
    first, second = read_table(tmp_path / "a")[1], read_table(tmp_path / "b")[1]
    assert len(first) == 4
    for a, b in zip(first, second):
        assert float(a["prob_with_mask"]) == pytest.approx(float(b["prob_with_mask"]), abs=1e-5)


def _model(run_dir):
    from facemask.evaluation.loading import load_model

    return load_model(str(run_dir))


def test_the_shipped_detector_weights_are_the_ones_their_licence_file_names():
    import hashlib
    import re

    from facemask.detection.detectors import WEIGHTS_DIR, RetinaFace

    stated = re.search(r"sha256 ([0-9a-f]{64})", (WEIGHTS_DIR / "LICENSE").read_text()).group(1)
    assert hashlib.sha256(RetinaFace.weights.read_bytes()).hexdigest() == stated
