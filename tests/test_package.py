"""The installable package: a wheel built from the checkout, installed into a fresh virtual
environment outside the repository, runs from another folder (package data, not the checkout's
files)."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, tiny_config
from PIL import Image


@pytest.mark.slow  # a wheel, a fresh environment with the pinned stack (minutes), two short trainings
def test_a_wheel_installed_elsewhere_predicts_repeats_and_pretrains_from_another_folder(evaluated_run, tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
                   check=True, timeout=600)
    wheel = next(wheels.glob("facemask-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel), "-r", str(REPO / "requirements.txt")],
                   check=True, timeout=2400)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")

    def facemask(*args):
        return subprocess.run([str(venv / "bin" / "facemask"), *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=elsewhere, timeout=900)

    where = subprocess.run([str(python), "-c", "import facemask; print(facemask.__file__)"], capture_output=True,
                           text=True, env=env, cwd=elsewhere, check=True).stdout
    assert str(venv) in where and str(REPO) not in where

    shown = facemask("--help")
    assert shown.returncode == 0 and "train" in shown.stdout and "pretrain" in shown.stdout, shown.stderr

    image = elsewhere / "face.png"
    Image.new("RGB", (40, 40), (180, 140, 120)).save(image)
    predicted = facemask("predict", evaluated_run, image, "--output", "rows.json")
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads((elsewhere / "rows.json").read_text())[0]["label"] in ("with_mask", "without_mask")

    # The config the docs name, carried by the package: each run trains in a `facemask train` process.
    out = tmp_path / "repeat"
    repeated = facemask("repeat", "configs/quickstart.yaml", "--seeds", "0", "data.synthetic_num_images=100",
                        "training.num_train_epochs=1", f"training.output_dir={out}")
    assert repeated.returncode == 0, repeated.stdout + repeated.stderr
    assert "python -m facemask train configs/quickstart.yaml" in repeated.stdout
    assert (out / "seed-0" / "README.md").is_file() and (out / "README.md").is_file()  # the card templates
    assert json.loads((out / "repeat_results.json").read_text())["runs"][0]["run"] == "seed-0"

    config = tiny_config(tmp_path / "pretrain", training={"max_steps": 2})
    cfg = yaml.safe_load(config.read_text())
    cfg["pretrain"] = {"mask_patch_size": 16, "mask_ratio": 0.5, "reconstructions": 2}
    config.write_text(yaml.safe_dump(cfg))
    pretrained = facemask("pretrain", config)
    assert pretrained.returncode == 0, pretrained.stderr
    backbone = tmp_path / "pretrain" / "out"
    assert (backbone / "pretraining.json").is_file() and "masked image modelling" in (backbone / "README.md").read_text()
