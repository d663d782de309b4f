"""Pushing through huggingface_hub's real client to a stand-in Hub on 127.0.0.1."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, tiny_config
from fake_hub import FakeHub

from facemask.publish.public import local_folders, public_text
from facemask.run_folder import read_run

TOKEN = "hf_" + "Zq9" * 12
PUSHED = {
    "README.md", "config.json", "model.safetensors", "preprocessor_config.json", "experiment.yaml", "run_info.json",
    "trainer_state.json", "train_results.json", "eval_results.json", "test_results.json", "all_results.json",
    "eval_confusion_matrix.json", "test_confusion_matrix.json", "eval_confusion_matrix.png",
    "test_confusion_matrix.png", "training_curves.png", "data_audit.json", "data_audit.md",
    "eval_slices.json", "test_slices.json", "eval_calibration.json", "test_calibration.json",
    "eval_calibration.png", "test_calibration.png", "eval_errors.json", "test_errors.json",
    "operating_points.json", "test_shortcut_test.json", "eval_roc_curve.png", "test_roc_curve.png",
    "eval_intervals.json", "test_intervals.json",
}
# Error galleries exist where a split had misclassified images.
GALLERIES = {"eval_errors.png", "test_errors.png"}


def run(args, hub, tmp_path, token=TOKEN):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="0",
               HF_HUB_DISABLE_TELEMETRY="1")
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory):
    """A tiny run of an image folder under a home directory (home/ana/masks), trained by a train.py
    process with hub.push=true, checkpoints on, against the stand-in Hub: one process for the tests
    of what a push sends and of the paths that must not leave the machine."""
    from facemask.__main__ import main

    tmp = tmp_path_factory.mktemp("push")
    data = tmp / "home" / "ana" / "masks"
    assert main(["synth", str(data), "--num-images", "40", "--image-size", "48", "--seed", "3"]) == 0
    config = tiny_config(tmp, "vit", data={"train_dir": str(data), "validation_split": 0.2, "test_split": 0.2},
                         training={"save_strategy": "steps", "save_steps": 1, "eval_strategy": "steps",
                                   "eval_steps": 1, "logging_steps": 1})
    with FakeHub() as hub:
        result = run(["train.py", str(config), "hub.push=true", "hub.model_id=tester/vit-facemask"], hub, tmp)
    return tmp, hub, result


def test_training_pushes_exactly_the_model_files(pushed_run):
    tmp, hub, result = pushed_run
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp / "out"
    assert (out / "checkpoint-2").is_dir() and (out / "training_args.bin").is_file()
    assert hub.repos["tester/vit-facemask"]["visibility"] == "private"
    assert len(hub.commits) == 1
    files = hub.commits[0]["files"]
    assert set(files) - GALLERIES == PUSHED  # no checkpoints, optimizer state or training_args.bin
    folders = local_folders(read_run(out))
    for name, content in files.items():
        local = (out / name).read_bytes()
        # Text goes out without this machine's paths; everything else as it is.
        expected = public_text(local.decode(), folders).encode() if name.endswith((".json", ".yaml", ".md")) else local
        assert content == expected, name
        assert TOKEN.encode() not in content and str(tmp).encode() not in content, name
    assert str(out) in (out / "experiment.yaml").read_text()  # the local files keep their full paths
    assert 'model="tester/vit-facemask"' in files["README.md"].decode()
    assert any(auth == f"Bearer {TOKEN}" for auth in hub.authorizations)
    assert TOKEN not in result.stdout + result.stderr


def test_push_command_pushes_a_finished_run_to_a_branch(pushed_run):
    tmp, _, _ = pushed_run
    with FakeHub() as hub:
        result = run(["-m", "facemask", "push", str(tmp / "out"), "--model-id", "tester/later", "--revision", "v2",
                      "--public"], hub, tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    assert hub.repos["tester/later"]["visibility"] == "public"
    assert hub.branches == [("tester/later", "v2")]
    assert hub.commits[0]["revision"] == "v2" and set(hub.commits[0]["files"]) - GALLERIES == PUSHED
    assert 'model="tester/later"' in hub.commits[0]["files"]["README.md"].decode()


def test_failed_push_keeps_every_local_file_and_says_how_to_retry(pushed_run):
    tmp, _, _ = pushed_run
    out = tmp / "out"
    before = snapshot(out)
    with FakeHub() as hub:
        result = run(["-m", "facemask", "push", str(out), "--model-id", "tester/fail-repo"], hub, tmp)
    assert result.returncode == 1
    assert "every local file is intact" in result.stderr.lower()
    assert f"python -m facemask push {out} --model-id tester/fail-repo" in result.stderr
    after = snapshot(out)
    assert set(after) == set(before)
    changed = {k for k in before if before[k] != after[k]}
    assert changed <= {"README.md"}  # only the card, rewritten to name the Hub id
    assert TOKEN not in result.stderr


@pytest.mark.parametrize("token, message", [(None, "no Hugging Face token was found"),
                                            ("hf_read" + "x" * 30, "read-only")])
def test_bad_token_stops_before_training(tmp_path, token, message):
    config = tiny_config(tmp_path, "vit")
    with FakeHub() as hub:
        result = run(["train.py", str(config), "hub.push=true", "hub.model_id=tester/x"], hub, tmp_path, token=token)
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "out").exists()
    assert not hub.repos and not hub.commits


@pytest.mark.parametrize("command, token, message", [
    ("push", None, "no Hugging Face token was found"),
    ("space", None, "no Hugging Face token was found"),
    ("space", "hf_read" + "x" * 30, "read-only"),
])
def test_push_and_space_check_access_before_writing_anything(evaluated_run, tmp_path, command, token, message):
    """`space` once wrote its files into the run folder before it found there was no token, and both
    commands blamed "hub.push", a config key the user had not set."""
    folder = tmp_path / "run"
    shutil.copytree(evaluated_run, folder)
    before = snapshot(folder)
    args = {"push": ["push", str(folder), "--model-id", "tester/m", "--handler"],
            "space": ["space", str(folder), "--space-id", "tester/s", "--model-id", "tester/m"]}[command]
    with FakeHub() as hub:
        result = run(["-m", "facemask", *args], hub, tmp_path, token=token)
    assert result.returncode == 1
    assert f"python -m facemask {command} pushes to the Hub, but" in result.stderr and message in result.stderr
    assert "hub.push" not in result.stderr
    assert snapshot(folder) == before  # no space/ folder, no handler.py, the card as it was
    assert not hub.repos and not hub.commits


def test_a_push_deletes_only_its_own_files_that_it_no_longer_has():
    from facemask.publish.hub import stale_paths
    from facemask.run_folder import PUSH_PATTERNS

    ours = PUSHED | GALLERIES | {"model-00001-of-00002.safetensors", "onnx/model_quantized.onnx", "holdout_roc_curve.png"}
    theirs = {"notes.md", "my_plot.png", "photos/test_errors.png", "nested/test_results.json", "onnx/model_fp16.onnx"}
    # Everything a push sends is owned: an earlier copy of any of them goes when the push lacks it.
    assert stale_paths(ours | theirs, pushed=set(), owned=PUSH_PATTERNS) == sorted(ours)
    assert stale_paths(ours | theirs, pushed=PUSHED | GALLERIES, owned=PUSH_PATTERNS) == [
        "holdout_roc_curve.png", "model-00001-of-00002.safetensors", "onnx/model_quantized.onnx"]


def test_no_local_path_leaves_the_machine(pushed_run):
    """A run on an image folder: the card and every pushed file name the data by its folder's name."""
    tmp, hub, result = pushed_run
    data = tmp / "home" / "ana" / "masks"
    assert result.returncode == 0, result.stderr[-3000:]
    files = hub.commits[0]["files"]
    out = tmp / "out"
    for name, content in files.items():
        assert str(tmp).encode() not in content, name
    card = files["README.md"].decode()
    assert "Checked 40 images from masks." in card
    errors = json.loads(files["test_errors.json"])["worst"]
    assert errors and all(row["file"].startswith("masks/") for row in errors)
    assert json.loads(files["run_info.json"])["data"]["source"] == "masks"
    # Locally, the full paths stay where they are useful.
    assert json.loads((out / "run_info.json").read_text())["data"]["source"] == str(data)
    assert str(tmp) not in (out / "README.md").read_text()


@pytest.mark.slow  # a pretrain.py process pushing to the stand-in Hub: ~10 s
def test_a_pretraining_run_pushes_like_any_run(tmp_path):
    """`pretrain` with hub.push: the encoder, its record, digests, figures and own card, no local path."""
    import yaml

    config = tiny_config(tmp_path, "vit", training={"max_steps": 2})
    cfg = yaml.safe_load(config.read_text())
    cfg["pretrain"] = {"mask_patch_size": 16, "reconstructions": 2}
    config.write_text(yaml.safe_dump(cfg))
    with FakeHub() as hub:
        result = run(["pretrain.py", str(config), "hub.push=true", "hub.model_id=tester/vit-encoder"], hub, tmp_path)
        # A run fine-tuned from the Hub id checks its test images against the pushed digests.
        check = run(["-c", "from facemask.data.seen import read_seen_images\n"
                           "seen = read_seen_images('tester/vit-encoder')\nprint(seen.run, sorted(seen.digests))\n"
                           "print(read_seen_images('tester/not-pushed'))"],
                    hub, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (commit,) = hub.commits
    files = commit["files"]
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json", "pretraining.json",
            "pretraining_images.txt", "pretraining_loss.png", "reconstructions.png"} <= set(files)
    assert "masked image modelling" in files["README.md"].decode() and "pretrained encoder" in commit["header"]["summary"]
    for name, content in files.items():
        assert TOKEN.encode() not in content and str(tmp_path).encode() not in content, name
    assert check.returncode == 0, check.stderr[-2000:]
    digests = (tmp_path / "out" / "pretraining_images.txt").read_text().split()
    assert check.stdout.strip() == f"tester/vit-encoder {sorted(digests)}\nNone"
    # The Hub said the repository holds no listing: not a pretraining run, no warning.
    assert "NOT checked" not in check.stderr
