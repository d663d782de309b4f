"""python -m facemask search: Trainer.hyperparameter_search with Optuna over config keys."""

import csv

import pytest
import yaml
from conftest import REPO, tiny_config

from facemask.__main__ import main
from facemask.config.loading import load_config
from facemask.config.schema import ConfigError
from facemask.training.search import parse_space


def search_config(tmp_path, space):
    config = tiny_config(tmp_path, training={"max_steps": 6, "eval_strategy": "steps", "eval_steps": 2,
                                             "metric_for_best_model": "accuracy"})
    cfg = yaml.safe_load(config.read_text())
    cfg["search"] = {"space": space}
    config.write_text(yaml.safe_dump(cfg))
    return config


SPACE = {"training.learning_rate": {"log_uniform": [1.0e-4, 1.0e-2]},
         "recipe.mixup_alpha": {"choice": [0.0, 0.4]},
         "recipe.ema_decay": {"choice": [None, 0.9]},
         "model.config_overrides.hidden_dropout_prob": {"uniform": [0.0, 0.2]},
         "data.crop_scale": {"choice": [[0.5, 1.0], [0.9, 1.0]]}}


@pytest.mark.slow
def test_search_writes_every_trial_and_a_runnable_best_config(tmp_path):
    config = search_config(tmp_path, SPACE)
    out = tmp_path / "search"
    assert main(["search", str(config), "--trials", "3", "--output", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "search_trials.csv")))
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert {r["state"] for r in rows} <= {"complete", "pruned"} and rows[0]["state"] == "complete"
    for key in SPACE:
        assert key in rows[0]
    assert rows[0]["eval_accuracy"] != "" and "eval_balanced_accuracy" in rows[0]
    assert (out / "search_trials.md").read_text().startswith("| trial | state | eval_accuracy |")
    # The best trial's values, applied to the whole config, load as a config train.py runs.
    best = load_config(out / "best_config.yaml")
    complete = [r for r in rows if r["state"] == "complete"]
    top = max(complete, key=lambda r: float(r["eval_accuracy"]))
    assert best.training["learning_rate"] == pytest.approx(float(top["training.learning_rate"]))
    assert best.training["output_dir"] == str(tmp_path / "out")  # the real run's folder, not the trials'
    assert "# Best of 3 search trials" in (out / "best_config.yaml").read_text()
    # Trials did not change what a search keeps fixed, and left no checkpoints behind.
    assert not list((out / "trials").rglob("checkpoint-*"))
    assert main(["search", str(config), "--trials", "1", "--output", str(out)]) == 2  # no silent reuse
    (out / "notes.txt").write_text("mine")
    assert main(["search", str(config), "--trials", "1", "--output", str(out), "--overwrite"]) == 0
    assert len(list(csv.DictReader(open(out / "search_trials.csv")))) == 1
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite replaced only the search's own files


def test_a_search_of_ema_under_a_sharded_launch_is_refused_before_the_data(tmp_path, monkeypatch):
    from facemask.training.search import run_search

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    config = search_config(tmp_path, {"recipe.ema_decay": {"choice": [None, 0.9]}})
    with pytest.raises(ConfigError, match="varies 'recipe.ema_decay', which is not supported under FSDP"):
        run_search(str(config), [], trials=2, output=str(tmp_path / "search"))
    assert not (tmp_path / "search" / "trials").exists()


def test_search_space_errors(tmp_path):
    with pytest.raises(ConfigError, match="only training"):
        parse_space({"data.train_dir": {"choice": ["a", "b"]}})
    with pytest.raises(ConfigError, match=r"expected \[low, high\]"):
        parse_space({"training.learning_rate": {"log_uniform": [1e-2, 1e-4]}})
    with pytest.raises(ConfigError, match="is fixed during a search"):
        parse_space({"training.seed": {"int": [0, 5]}})
    config = search_config(tmp_path, {"training.lerning_rate": {"uniform": [0.1, 0.2]}})
    assert main(["search", str(config), "--trials", "1"]) == 2


@pytest.mark.slow
def test_a_four_trial_search_on_the_quickstart(tmp_path):
    import time

    start = time.perf_counter()
    out = tmp_path / "search"
    assert main(["search", str(REPO / "configs" / "quickstart.yaml"), f"training.output_dir={tmp_path / 'quickstart'}",
                 "training.num_train_epochs=3", "--trials", "4", "--output", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "search_trials.csv")))
    assert len(rows) == 4 and sum(r["state"] == "complete" for r in rows) >= 2
    print(f"4-trial quickstart search: {time.perf_counter() - start:.0f} s")
