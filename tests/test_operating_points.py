"""A named operating point is a threshold on the probability of the class its table names. On a run
trained with data.positive_label=without_mask, every consumer (predict, detect, serve, the endpoint
handler, the demo) labels an image without_mask exactly where P(without_mask) >= the threshold.

The images are chosen so that this rule and the mask class's (P(with_mask) >= t) disagree on some
of them, and each test checks that they do: a consumer that applied the threshold to the other
class could not pass."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import compose_scene
from PIL import Image

from facemask.__main__ import main as cli
from facemask.config.schema import ConfigError
from facemask.runtime.decision import decision_rule

POSITIVE, OTHER = "without_mask", "with_mask"


def best_f1(run: Path) -> float:
    table = json.loads((run / "operating_points.json").read_text())
    assert table["positive_label"] == POSITIVE
    return {row["name"]: row["threshold"] for row in table["rows"]}["best F1"]


def assert_follows_the_tables_class(rows, threshold, prob=lambda row: row[f"prob_{POSITIVE}"]):
    """Every row: without_mask iff P(without_mask) >= t; and on some row the with_mask rule differs."""
    assert rows
    for row in rows:
        assert row["label"] == (POSITIVE if prob(row) >= threshold else OTHER), row
    wrong_class = [OTHER if 1 - prob(row) >= threshold else POSITIVE for row in rows]
    assert any(row["label"] != other for row, other in zip(rows, wrong_class)), \
        "no image tells the two rules apart: the test has lost its power"


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Drawn faces of both classes: the tiny model's P(without_mask) falls on both sides of its best-F1 threshold."""
    root = tmp_path_factory.mktemp("drawn")
    assert cli(["synth", str(root), "--num-images", "40", "--image-size", "40", "--seed", "0"]) == 0
    return sorted(root.rglob("*.*"))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A scene photo as composed, and the same with a green cast: the random model scores the faces of
    the second lower on P(without_mask), across the threshold."""
    root = tmp_path_factory.mktemp("scenes")
    scene = compose_scene()[0]
    scene.save(root / "street.jpg", quality=92)
    green = (np.asarray(scene, dtype=np.float64) * (0.3, 1.0, 0.3)).astype(np.uint8)
    Image.fromarray(green).save(root / "green.jpg", quality=92)
    return [root / "street.jpg", root / "green.jpg"]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_predict_applies_a_named_point_to_its_tables_class(without_mask_run, drawn, tmp_path, backend):
    out = tmp_path / "rows.json"
    assert cli(["predict", str(without_mask_run), *map(str, drawn), "--backend", backend, "--threshold", "best F1",
                "--output", str(out)]) == 0
    assert_follows_the_tables_class(json.loads(out.read_text()), best_f1(without_mask_run))


def test_predict_says_which_threshold_it_applied(without_mask_run, drawn, capsys):
    """`--threshold "best F1"` once never said what number that was, nor on which class."""
    assert cli(["predict", str(without_mask_run), str(drawn[0]), "--threshold", "best F1"]) == 0
    said = capsys.readouterr().err
    assert f"decision rule: {POSITIVE} where P({POSITIVE}) >= {best_f1(without_mask_run):.6g} (--threshold 'best F1')" \
        in said


def test_a_conflicting_positive_label_is_an_error(without_mask_run, drawn, tmp_path, capsys):
    run = without_mask_run
    for command in (["predict", str(run), str(drawn[0])], ["detect", str(run), str(drawn[0]), "--output",
                                                          str(tmp_path / "faces")], ["serve", str(run)]):
        assert cli([*command, "--threshold", "best F1", "--positive-label", OTHER]) == 2
        err = capsys.readouterr().err
        assert "'best F1' is a threshold on P(without_mask)" in err and "--positive-label is 'with_mask'" in err, err
    assert not (tmp_path / "faces").exists()
    # The table's own class named again is no conflict; a number follows the run's class unless told.
    labels = [OTHER, POSITIVE]
    assert decision_rule(run, labels, "best F1", POSITIVE).positive_label == POSITIVE
    assert decision_rule(run, labels, "0.7", None).positive_label == POSITIVE
    assert decision_rule(run, labels, "0.7", OTHER).positive_label == OTHER
    assert decision_rule(run, labels, None, None).threshold is None


def test_detect_applies_a_named_point_to_its_tables_class(without_mask_run, scenes, tmp_path):
    out = tmp_path / "faces"
    assert cli(["detect", str(without_mask_run), *map(str, scenes), "--backend", "onnx", "--threshold", "best F1",
                "--output", str(out)]) == 0
    rows = json.loads((out / "detections.json").read_text())
    assert {Path(row["file"]).name for row in rows} == {"street.jpg", "green.jpg"}
    assert_follows_the_tables_class(rows, best_f1(without_mask_run))


def test_the_service_applies_a_named_point_to_its_tables_class(without_mask_run, drawn, scenes):
    from test_serve import free_port, wait_ready

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "facemask", "serve", str(without_mask_run), "--port", str(port),
                             "--threshold", "best F1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        threshold = best_f1(without_mask_run)
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in drawn[:16]]
        rows = httpx.post(f"{url}/predict", files=files, timeout=60).json()["predictions"]
        faces = []
        for photo in scenes:
            answer = httpx.post(f"{url}/detect", content=photo.read_bytes(), headers={"content-type": "image/jpeg"},
                                timeout=60)
            faces += answer.json()["faces"]
        assert len(rows) == 16 and len(faces) >= 4
        assert_follows_the_tables_class(rows + faces, threshold)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_endpoint_handler_applies_a_named_point_to_its_tables_class(without_mask_run, drawn, tmp_path):
    from facemask.publish.endpoint import add_handler

    run = tmp_path / "run"
    shutil.copytree(without_mask_run, run)  # the fixture is shared: read only
    add_handler(run, "best F1")
    config = json.loads((run / "handler_config.json").read_text())
    assert (config["threshold"], config["positive_label"], config["positive_index"]) == (best_f1(run), POSITIVE, 1)
    spec = importlib.util.spec_from_file_location("handler", run / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module.EndpointHandler(str(run))
    rows = []
    for path in drawn:
        answer = handler({"inputs": path.read_bytes()})
        rows.append({"label": answer[0]["label"], **{f"prob_{a['label']}": a["score"] for a in answer}})
    assert_follows_the_tables_class(rows, best_f1(run))
    with pytest.raises(ConfigError, match="'best F1' is a threshold on P\\(without_mask\\)"):
        add_handler(run, "best F1", OTHER)
    # A handler_config.json whose class is not the model's is refused, not applied to some index.
    (run / "handler_config.json").write_text(json.dumps({**config, "positive_label": "masked"}))
    with pytest.raises(ValueError, match="positive_label 'masked' is not one of the model's classes"):
        module.EndpointHandler(str(run))


def test_the_demo_applies_a_named_point_to_its_tables_class(without_mask_run, drawn, scenes):
    from facemask.publish.demo import default_rule, load_demo

    demo = load_demo(str(without_mask_run))
    rule = default_rule(demo.rules)
    threshold = demo.rules[rule]
    assert rule.startswith("best F1") and threshold == best_f1(without_mask_run)
    rows = []
    for path in drawn:
        message, probabilities = demo.classify(str(path), rule)
        assert f"P(without_mask) = {probabilities[POSITIVE]:.1%}" in message
        rows.append({"label": message.splitlines()[0].removeprefix("## "), **{f"prob_{k}": v for k, v in
                                                                              probabilities.items()}})
    columns = demo.scene_columns
    for photo in scenes:
        rows += [dict(zip(columns, row)) for row in demo.scene(str(photo), rule)[2]]
    assert_follows_the_tables_class(rows, threshold)


def test_a_table_without_its_class_takes_the_runs_config_or_is_refused(without_mask_run, drawn, tmp_path, capsys):
    """No table train.py wrote lacks positive_label; one that does (edited, or from elsewhere) is read
    with the class of the run's experiment.yaml, and without that a named point is refused."""
    from facemask.publish.demo import ARGMAX_RULE, load_demo

    run = tmp_path / "run"
    shutil.copytree(without_mask_run, run)
    table = json.loads((run / "operating_points.json").read_text())
    del table["positive_label"]
    (run / "operating_points.json").write_text(json.dumps(table))
    out = tmp_path / "rows.json"
    assert cli(["predict", str(run), *map(str, drawn), "--backend", "onnx", "--threshold", "best F1",
                "--output", str(out)]) == 0
    assert_follows_the_tables_class(json.loads(out.read_text()), best_f1(without_mask_run))
    assert load_demo(str(run)).positive_label == POSITIVE

    (run / "experiment.yaml").unlink()
    assert cli(["predict", str(run), str(drawn[0]), "--threshold", "best F1"]) == 2
    assert "the operating point's class is not recorded" in capsys.readouterr().err
    assert load_demo(str(run)).rules == {ARGMAX_RULE: None}
    # A number names its class itself (the mask class by default), so it stays usable.
    assert decision_rule(run, [OTHER, POSITIVE], "0.5", None).positive_label == OTHER


def test_a_table_on_a_class_the_model_lacks_is_refused(without_mask_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(without_mask_run, run)
    table = json.loads((run / "operating_points.json").read_text())
    (run / "operating_points.json").write_text(json.dumps({**table, "positive_label": "no_mask"}))
    with pytest.raises(ConfigError, match="thresholds are on the class 'no_mask'.*not this model's"):
        decision_rule(run, [OTHER, POSITIVE], "best F1", None)


def test_detect_colours_the_mask_class_green_whatever_class_the_threshold_is_on():
    from facemask.detection.annotate import GREEN, RED
    from facemask.detection.scenes import SceneClassifier

    class Two:
        labels, input_side = [OTHER, POSITIVE], 32

    for positive in (0, 1):
        scene = SceneClassifier(Two(), detector=None, threshold=0.5, positive=positive)
        assert scene.colours == {OTHER: GREEN, POSITIVE: RED}
