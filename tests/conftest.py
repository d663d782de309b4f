import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest

# Tests never reach the Hub: models come from configs, data from images the tests draw.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    # datasets' caches (imagefolder tables, the preprocessing cache) go to a folder of this session.
    config._facemask_cache = tempfile.mkdtemp(prefix="facemask-test-cache-")
    os.environ["HF_DATASETS_CACHE"] = config._facemask_cache


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_facemask_cache", ""), ignore_errors=True)

TINY_MODELS = {
    "vit": {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64},
    "beit": {"model_type": "beit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 64, "use_relative_position_bias": True},
}


def tiny_config(tmp_path: Path, model_type: str = "vit", data: dict | None = None, training: dict | None = None,
                recipe: dict | None = None, model: dict | None = None) -> Path:
    """A YAML config for a 2-step run of a tiny random-init model on a little synthetic data
    (`model` replaces the model section: a checkpoint, LoRA). The end-of-run robustness test and the
    error gallery's maps are off unless `data` turns them on (a second or so a run each, over a
    hundred runs): the tests of either ask for it."""
    import yaml

    data = data if data is not None else {"synthetic": True, "synthetic_num_images": 60, "synthetic_image_size": 40,
                                          "test_split": 0.2}
    cfg = {
        "model": model or {"from_config": TINY_MODELS[model_type]},
        "data": {"robustness": False, "error_maps": "none", **data},
        "training": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 8,
                     "per_device_eval_batch_size": 16, "learning_rate": 1e-3, "use_cpu": True,
                     "save_strategy": "no", "eval_strategy": "no", "disable_tqdm": True, "report_to": "none",
                     "seed": 0, **(training or {})},
    }
    if recipe:
        cfg["recipe"] = recipe
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


class TrainedRun(NamedTuple):
    """A finished run: its folder, the config it was trained from, what train.main returned and printed."""
    out: Path
    config: Path
    results: dict
    printed: str


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """tiny_config's own run (2 steps, validation and test splits) of `model_type`, trained once per
    session: the tests that only read a plain run share it; one that writes into it copies it first."""
    import contextlib
    import io

    import train

    runs = {}

    def get(model_type: str = "vit") -> TrainedRun:
        if model_type not in runs:
            tmp = tmp_path_factory.mktemp(f"tiny-{model_type}")
            config = tiny_config(tmp, model_type)
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                results = train.main([str(config)])
            runs[model_type] = TrainedRun(tmp / "out", config, results, printed.getvalue())
        return runs[model_type]

    return get


@pytest.fixture(scope="session")
def six_step_run(tmp_path_factory):
    """tiny_config's ViT run trained for 6 steps: a teacher for distillation, a run to compare with
    another (the tests only read it)."""
    import train

    tmp = tmp_path_factory.mktemp("six-steps")
    train.main([str(tiny_config(tmp, "vit", training={"max_steps": 6}))])
    return tmp / "out"


@pytest.fixture(scope="session")
def evaluated_run(tmp_path_factory):
    """A tiny ViT run with validation and test results, hence operating points, galleries and
    confusion matrices: the model the demo and detect tests serve (they only read it)."""
    import train

    tmp = tmp_path_factory.mktemp("evaluated-run")
    data = {"synthetic": True, "synthetic_num_images": 60, "synthetic_image_size": 40, "test_split": 0.2,
            "robustness": True, "error_maps": "ablation"}
    train.main([str(tiny_config(tmp, "vit", data=data, training={"eval_strategy": "steps", "eval_steps": 1}))])
    return tmp / "out"


@pytest.fixture(scope="session")
def onnx_run(evaluated_run, tmp_path_factory):
    """A copy of the evaluated run with both graphs exported (int8 kept whatever its accuracy): what
    the torch-free runtime and the HTTP service run (they only read it)."""
    import shutil

    from facemask.__main__ import main as cli

    run = tmp_path_factory.mktemp("runtime") / "run"
    shutil.copytree(evaluated_run, run)
    assert cli(["export", str(run), "--quantize", "int8", "--max-accuracy-drop", "100", "--max-images", "8"]) == 0
    return run


@pytest.fixture(scope="session")
def without_mask_run(tmp_path_factory):
    """A tiny ViT run trained with data.positive_label=without_mask, so its operating points are
    thresholds on P(without_mask), with its graph exported: what the consumers of a named operating
    point read (they only read it)."""
    import train

    from facemask.__main__ import main as cli

    tmp = tmp_path_factory.mktemp("without-mask-run")
    data = {"synthetic": True, "synthetic_num_images": 60, "synthetic_image_size": 40, "test_split": 0.2,
            "positive_label": "without_mask"}
    train.main([str(tiny_config(tmp, "vit", data=data, training={"eval_strategy": "steps", "eval_steps": 1}))])
    assert cli(["export", str(tmp / "out"), "--max-images", "8"]) == 0
    return tmp / "out"


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    """The README's quickstart (configs/quickstart.yaml) run as a user would: a model that has
    learned the drawn task, for the tests that need one (accuracy, explanation maps)."""
    import train

    out = tmp_path_factory.mktemp("quickstart") / "quickstart"
    train.main([str(REPO / "configs" / "quickstart.yaml"), f"training.output_dir={out}"])
    return out


@pytest.fixture
def synth_folder(tmp_path_factory):
    """An image folder of mixed JPEG/PNG files, written by the project's own CLI."""
    from facemask.__main__ import main

    root = tmp_path_factory.mktemp("synth")
    assert main(["synth", str(root), "--num-images", "40", "--image-size", "48", "--seed", "3"]) == 0
    return root


# Scenes for the face detector: real faces (scikit-image's astronaut portrait, a photograph), pasted
# at known places, because a drawn face need not look like a face to a real detector.
ASTRONAUT_FACE = (175, 55, 275, 180)  # the face in data.astronaut(), hand-labelled: x0, y0, x1, y1
FACE_CROP = (150, 20, 300, 210)  # the part of the photo pasted into scenes: the face with hair and shoulders


def face_crops():
    """(the astronaut's face crop, the same with a drawn mask over nose and mouth)."""
    from PIL import Image, ImageDraw
    from skimage import data

    face = Image.fromarray(data.astronaut()).crop(FACE_CROP)
    masked = face.copy()
    w, h = masked.size
    ImageDraw.Draw(masked).polygon([(w * 0.2, h * 0.55), (w * 0.8, h * 0.55), (w * 0.75, h * 0.9), (w * 0.5, h * 0.97),
                                    (w * 0.25, h * 0.9)], fill=(90, 150, 220))
    return face, masked


def compose_scene(size=(960, 540), places=((50, 60, 1.0), (350, 200, 0.7), (650, 80, 1.3), (820, 380, 0.45)),
                  background=(200, 190, 170)):
    """A canvas with a face crop pasted at each (x, y, scale), masked on every other one, and the
    known face boxes (x0, y0, x1, y1) there."""
    from PIL import Image

    face, masked = face_crops()
    canvas = Image.new("RGB", size, background)
    boxes = []
    fx0, fy0, fx1, fy1 = (a - b for a, b in zip(ASTRONAUT_FACE, FACE_CROP[:2] * 2))
    for i, (x, y, scale) in enumerate(places):
        crop = masked if i % 2 else face
        canvas.paste(crop.resize((round(crop.width * scale), round(crop.height * scale))), (x, y))
        boxes.append((x + fx0 * scale, y + fy0 * scale, x + fx1 * scale, y + fy1 * scale))
    return canvas, boxes


def best_iou(box, boxes) -> float:
    """The largest overlap (IoU) of `box` with any of `boxes`."""
    from facemask.detection.detectors import iou

    return float(iou([box], boxes).max()) if len(boxes) else 0.0
