import os
import shutil
import tempfile
from pathlib import Path

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
                recipe: dict | None = None) -> Path:
    """A YAML config for a 2-step run of a tiny random-init model on a little synthetic data."""
    import yaml

    cfg = {
        "model": {"from_config": TINY_MODELS[model_type]},
        "data": data if data is not None else {"synthetic": True, "synthetic_num_images": 60,
                                               "synthetic_image_size": 40, "test_split": 0.2},
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


@pytest.fixture
def synth_folder(tmp_path_factory):
    """An image folder of mixed JPEG/PNG files, written by the project's own CLI."""
    from facemask.__main__ import main

    root = tmp_path_factory.mktemp("synth")
    assert main(["synth", str(root), "--num-images", "40", "--image-size", "48", "--seed", "3"]) == 0
    return root
