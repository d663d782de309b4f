"""Progress where the output is not a terminal (nohup, CI, a pipe): one line per 10% of the work
or every 30 s (facemask/progress.py), in training and the cache build; the live bar on a terminal."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from facemask.progress import LINE_SECONDS, QUIET_SECONDS, LineProgress, datasets_lines, progress, quiet_library_bars

REPO = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_line_per_tenth_of_the_work_with_rate_time_left_and_postfix():
    clock, out = Clock(), io.StringIO()
    bar = LineProgress(total=100, desc="training", unit="step", file=out, clock=clock)
    for step in range(1, 101):
        clock.now += 0.5
        bar.update()
        if step == 35:
            bar.set_postfix(loss="0.41", refresh=False)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [re.match(r"training: (\d+)% \((\d+)/100 steps\)", line).groups() for line in lines] == [
        (str(p), str(p)) for p in range(10, 101, 10)]
    assert lines[3] == "training: 40% (40/100 steps), 2.0 steps/s, 30 s left, loss 0.41"
    assert lines[-1] == "training: 100% (100/100 steps), 2.0 steps/s, 50 s in all, loss 0.41"


def test_a_slow_bar_prints_every_30_s_and_the_last_update_prints_100_percent():
    clock, out = Clock(), io.StringIO()
    bar = LineProgress(total=1000, desc="caching train images", unit=" examples", file=out, clock=clock)
    for _ in range(9):
        clock.now += LINE_SECONDS / 3
        bar.update()
    clock.now += 1
    bar.update(991)
    bar.close()  # after 100%: nothing more
    lines = out.getvalue().splitlines()
    assert lines[:3] == [f"caching train images: 0% ({n}/1000 examples), 10.0 s/example, {left} left"
                         for n, left in ((3, "2 h 46 min"), (6, "2 h 45 min"), (9, "2 h 45 min"))]
    assert len(lines) == 4 and lines[3].startswith("caching train images: 100% (1000/1000 examples), ")
    assert lines[3].endswith(", 1 min 31 s in all")


def test_work_done_within_the_first_seconds_gets_only_its_last_line():
    clock, out = Clock(), io.StringIO()
    with LineProgress(total=6400, desc="caching train images", unit=" examples", file=out, clock=clock) as bar:
        for _ in range(100):
            clock.now += (QUIET_SECONDS - 1) / 100
            bar.update(64)
    assert out.getvalue().splitlines() == ["caching train images: 100% (6400/6400 examples), 1600.0 examples/s, "
                                           "4 s in all"]


def test_a_bar_closed_early_says_where_it_stopped_and_one_never_moved_says_nothing():
    clock, out = Clock(), io.StringIO()
    with LineProgress(total=100, desc="training", unit="step", file=out, clock=clock) as bar:
        clock.now += 11
        bar.update(55)
        clock.now += 2
        bar.update(3)  # no tenth crossed, under 30 s: no line until the bar closes
    with LineProgress(total=20, desc="idle", file=out, clock=clock):
        clock.now += 100
    assert out.getvalue().splitlines() == ["training: 55% (55/100 steps), 5.0 steps/s, 9 s left",
                                           "training: 58% (58/100 steps), 4.5 steps/s, 13 s in all"]


def test_progress_is_a_tqdm_bar_on_a_terminal_and_lines_elsewhere():
    from tqdm.std import tqdm

    terminal, piped = Terminal(), io.StringIO()
    bar = progress(total=3, desc="training", unit="step", file=terminal)
    assert isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert "\r" in terminal.getvalue() and "3/3" in terminal.getvalue()
    lines = progress(total=3, desc="training", unit="step", file=piped)
    assert isinstance(lines, LineProgress)
    lines.update(3)
    lines.close()
    assert "\r" not in piped.getvalue() and piped.getvalue().startswith("training: 100% (3/3 steps)")


def test_library_bars_go_off_only_off_a_terminal_and_a_users_0_wins(monkeypatch):
    import huggingface_hub.utils
    import transformers

    was = (huggingface_hub.utils.are_progress_bars_disabled(), datasets.utils.logging.is_progress_bar_enabled(),
           transformers.utils.logging.is_progress_bar_enabled())
    environ = {key: value for key, value in os.environ.items() if not key.endswith("_DISABLE_PROGRESS_BARS")}
    monkeypatch.setattr(os, "environ", environ)
    try:
        datasets.utils.logging.enable_progress_bar()
        transformers.utils.logging.enable_progress_bar()
        assert not quiet_library_bars(Terminal())
        assert "HF_HUB_DISABLE_PROGRESS_BARS" not in environ and datasets.utils.logging.is_progress_bar_enabled()
        environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "0"
        assert quiet_library_bars(io.StringIO())
        assert environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and huggingface_hub.utils.are_progress_bars_disabled()
        assert not transformers.utils.logging.is_progress_bar_enabled()
        assert datasets.utils.logging.is_progress_bar_enabled()  # the user's HF_DATASETS_DISABLE_PROGRESS_BARS=0
    finally:
        for switch_on, library in zip((not was[0], was[1], was[2]), (huggingface_hub.utils, datasets.utils.logging,
                                                                     transformers.utils.logging)):
            if switch_on:
                getattr(library, "enable_progress_bars", getattr(library, "enable_progress_bar", None))()


def _images(count: int) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    items = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buffer, format="PNG")
        items.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(decode=False),
                                  "label": datasets.ClassLabel(names=["a", "b"])})
    return datasets.Dataset.from_dict({"image": items, "label": [i % 2 for i in range(count)]}, features=features)


def test_the_cache_builds_datasets_bar_becomes_lines_off_a_terminal(tmp_path, monkeypatch, capsys):
    from facemask.config.schema import ModelConfig
    from facemask.pipeline.cache import CacheSpec, build_or_load
    from facemask.pipeline.processor import load_image_processor

    processor = load_image_processor(ModelConfig(from_config={"model_type": "vit", "image_size": 16}))
    spec = CacheSpec.for_split(processor, train=False)
    enabled = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()  # as a run sets it up: the lines show all the same
    original = datasets.arrow_dataset.hf_tqdm
    try:
        build_or_load(_images(300), "train", "image", "label", spec, processor, tmp_path, num_proc=1)
        piped = capsys.readouterr().err
        monkeypatch.setattr(sys, "stderr", Terminal())
        build_or_load(_images(200), "validation", "image", "label", spec, processor, tmp_path, num_proc=1)
        on_terminal = sys.stderr.getvalue()
    finally:
        if enabled:
            datasets.utils.logging.enable_progress_bar()
    assert datasets.arrow_dataset.hf_tqdm is original  # swapped back after the build
    lines = piped.splitlines()
    assert "\r" not in piped and len(lines) <= 11, piped  # datasets updates its bar every 256 images here
    assert all(line.startswith("caching train images: ") for line in lines)
    assert lines[-1].startswith("caching train images: 100% (300/300 examples), ")
    assert "caching" not in on_terminal  # on a terminal, as before: datasets' bar, off in a run


def _tiny_run(tmp_path: Path) -> tuple[list, dict]:
    training = {"disable_tqdm": False, "max_steps": 40, "logging_steps": 5, "eval_strategy": "steps",
                "eval_steps": 20}
    config = tiny_config(tmp_path, training=training, data={"synthetic": True, "synthetic_num_images": 60,
                                                            "synthetic_image_size": 40, "test_split": 0.2,
                                                            "error_maps": "none"})
    env = {key: value for key, value in os.environ.items() if not key.endswith("_DISABLE_PROGRESS_BARS")}
    env.update(HF_DATASETS_CACHE=str(tmp_path / "cache"), MPLCONFIGDIR=str(tmp_path / "mpl"), HF_HUB_OFFLINE="1")
    return [sys.executable, "train.py", str(config)], env


@pytest.mark.slow  # a train.py process piped to a file: ~10 s; the default suite stays under ~8 minutes
def test_training_piped_to_a_file_prints_bounded_progress_lines(tmp_path):
    command, env = _tiny_run(tmp_path)
    with open(tmp_path / "console.log", "wb") as log:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300)
    console = (tmp_path / "console.log").read_bytes().decode("utf-8")  # read_text would turn \r into \n
    assert done.returncode == 0, console[-3000:]
    assert "\r" not in console
    progress_lines = [line for line in console.splitlines() if line.startswith("training: ")]
    # At most one per tenth (none in the first seconds), and one per 30 s if a step stalls.
    percents = [int(re.match(r"training: (\d+)% \(", line).group(1)) for line in progress_lines]
    assert len(percents) <= 13 and percents == sorted(percents), progress_lines
    assert progress_lines[-1].startswith("training: 100% (40/40 steps), ") and "loss " in progress_lines[-1]
    for split in ("train", "validation", "test"):
        assert f"caching {split} images: 100% (" in console, split
    # The start, the evaluations (steps 20 and 40, then the final one), the metric blocks and the end.
    assert "training a random-init vit model on synthetic" in console
    assert sum("validation: accuracy" in line for line in console.splitlines()) == 3
    assert "***** test metrics *****" in console and f"outputs in {tmp_path / 'out'}" in console
    assert len(console.splitlines()) < 100


@pytest.mark.slow
def test_training_on_a_terminal_still_draws_the_bar(tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    command, env = _tiny_run(tmp_path)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # tqdm sizes the bar to it
    process = subprocess.Popen(command, cwd=REPO, env=env, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process has closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=300) == 0
    console = b"".join(chunks).decode("utf-8", errors="replace")
    assert re.search(r"\rtraining: 100%\|[^\r\n]*\| 40/40 \[", console)  # tqdm's bar, redrawn in place
    assert not re.search(r"^training: \d+% \(", console, re.MULTILINE)  # no progress lines
    assert "caching train images" not in console  # as before on a terminal
    assert sum("validation: accuracy" in line for line in console.splitlines()) == 3
