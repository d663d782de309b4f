"""`push --handler`: the Inference Endpoints handler, imported here as an endpoint imports it,
answers as `predict` does (image handling and decision rule) on images of every awkward kind."""

import base64
import importlib.util
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from facemask.__main__ import main as facemask_main
from facemask.config.schema import ConfigError
from facemask.evaluation.loading import load_model
from facemask.evaluation.predict import predict_files
from facemask.publish.endpoint import add_handler
from facemask.publish.hub import files_to_push
from facemask.runtime.decision import threshold_from


def awkward_images(folder):
    """EXIF-rotated JPEG larger than the draft side, RGBA and palette PNGs, greyscale, 16-bit, odd sizes."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    paths = []
    rotated = Image.fromarray((rng.random((90, 160, 3)) * 255).astype(np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(folder / "rotated.jpg", exif=exif, quality=90)
    Image.fromarray((rng.random((37, 91, 4)) * 255).astype(np.uint8), "RGBA").save(folder / "alpha.png")
    Image.fromarray((rng.random((50, 50)) * 255).astype(np.uint8), "L").save(folder / "grey.png")
    Image.fromarray((rng.random((20, 33)) * 65535).astype(np.uint16)).save(folder / "deep.png")
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).convert("P").save(folder / "palette.png")
    # Larger than twice the model's side: shrunk after decoding, as predict shrinks them.
    Image.fromarray((rng.random((300, 420)) * 65535).astype(np.uint16)).save(folder / "deep-large.png")
    Image.fromarray((rng.random((280, 300, 4)) * 255).astype(np.uint8), "RGBA").save(folder / "alpha-large.png")
    for name in ("rotated.jpg", "alpha.png", "grey.png", "deep.png", "palette.png", "deep-large.png",
                 "alpha-large.png"):
        paths.append(folder / name)
    return paths


@pytest.mark.parametrize("threshold", [None, "0.8"])
def test_the_endpoint_handler_answers_as_predict(evaluated_run, tmp_path, threshold):
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)  # the fixture is shared: read only
    written = add_handler(run, threshold)
    assert {p.name for p in written} <= {p.name for p in files_to_push(run)}
    spec = importlib.util.spec_from_file_location("handler", run / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module.EndpointHandler(str(run))

    paths = awkward_images(tmp_path / "images")
    model, processor = load_model(str(run))
    rows, skipped = predict_files(model, processor, paths, threshold=None if threshold is None else
                                  threshold_from(run, threshold))
    assert not skipped
    for path, row in zip(paths, rows):
        data = path.read_bytes()
        for given in (data, base64.b64encode(data).decode()):
            answer = handler({"inputs": given})
            assert answer[0]["label"] == row["label"], path.name
            for item in answer:
                assert item["score"] == pytest.approx(row[f"prob_{item['label']}"], abs=2e-6)
    if threshold is not None:
        assert json.loads((run / "handler_config.json").read_text())["threshold"] == 0.8


def test_the_handler_asks_for_the_pil_backend_where_torchvision_is_installed(evaluated_run, tmp_path, monkeypatch):
    """An endpoint has torchvision, and transformers then picks its torchvision backend unless
    told: the handler must ask for the PIL one that training and predict use."""
    from transformers.models.auto import image_processing_auto

    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    add_handler(run, None)
    monkeypatch.setattr(image_processing_auto, "is_torchvision_available", lambda: True)
    chosen = []
    resolve = image_processing_auto._resolve_backend
    monkeypatch.setattr(image_processing_auto, "_resolve_backend",
                        lambda *args: chosen.append(resolve(*args)) or chosen[-1])
    spec = importlib.util.spec_from_file_location("handler", run / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.EndpointHandler(str(run))
    assert chosen == ["pil"]


def test_handler_options_are_checked(evaluated_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    with pytest.raises(ConfigError, match="operating points are"):
        add_handler(run, "best guess")
    assert not (run / "handler.py").exists()
    assert facemask_main(["push", str(run), "--model-id", "you/x", "--threshold", "0.5"]) == 2
