"""python -m facemask: subcommands load lazily, and one exit code per kind of error."""

import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, tiny_config

from facemask.__main__ import COMMANDS, build_parser, main
from facemask.config.loading import load_config

SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def test_help_of_every_subcommand_imports_no_torch():
    script = (
        "import sys\n"
        "from facemask.__main__ import main\n"
        f"for args in [['--help']] + [[name, '--help'] for name in {SUBCOMMANDS!r}]:\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, (args, done.code)\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'gradio') if m in sys.modules]\n"
        "print('imported:', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: python -m facemask export" in done.stdout and "imported: []" in done.stdout


def test_a_subcommand_builds_its_own_parser_alone():
    """main builds only the arguments of the subcommand asked for (predict and detect start without
    the training stack): every other subcommand is a name and its help."""
    assert SUBCOMMANDS == sorted(COMMANDS)
    for name in COMMANDS:
        subparsers = build_parser(name)._subparsers._group_actions[0].choices
        built = sorted(n for n, sub in subparsers.items() if len(sub._actions) > 1)  # more than -h
        assert built == [name]


@pytest.mark.parametrize("args", [
    ["predict", "no/such-model-here", "x.jpg"],
    ["demo", "no/such-model-here"],
    ["detect", "no/such-model-here", "x.jpg", "--output", "{tmp}/det"],
    ["detect", "no/such-model-here", "x.jpg", "--margin", "-0.5"],
    ["detect", "no/such-model-here", "x.jpg", "--detector-threshold", "2"],
    ["detect", "no/such-model-here", "x.jpg", "--output", "README.md"],  # a file, not a folder
    ["export", "{tmp}/not-a-run"],
    ["card", "{tmp}/not-a-run"],
    ["audit", "{tmp}/missing.yaml"],
    ["search", "{tmp}/missing.yaml", "--trials", "1"],
    ["audit", "configs/quickstart.yaml", "data.no_such_key=1"],
])
def test_usage_and_config_errors_exit_2_with_a_message(args, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_audit_of_a_model_that_cannot_be_found_says_what_predict_says(capsys, monkeypatch):
    """Offline with no processor cached, `audit configs/vit-base-facemask.yaml` ended in an OSError
    traceback (exit code 1); predict names such a model clearly. A Hub id cached nowhere stands in for it."""
    monkeypatch.chdir(REPO)
    missing = "facemask-tests/not-cached-anywhere"
    assert main(["predict", missing, "x.jpg"]) == 2
    said = capsys.readouterr().err.split(" (")[0]
    assert said == f"error: model not found: '{missing}' is neither a local run folder nor a Hub model that could be downloaded"
    assert main(["audit", "configs/vit-base-facemask.yaml", f"model.name_or_path={missing}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and "Traceback" not in err


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as done:
        main(["predict"])
    assert done.value.code == 2


def test_train_takes_options_and_overrides_in_any_order(tmp_path):
    import train

    config = tiny_config(tmp_path)
    train.main([str(config), "training.max_steps=1"])
    # An option before an override: the override must still apply (one step more is two).
    results = train.main([str(config), "--overwrite", "training.max_steps=2", "data.test_split=0"])
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and "test" not in results
    # `--resume KEY=VALUE` gives the override back, in its place: the later override wins.
    from facemask.training.resume import parse_args

    args = parse_args([str(config), "training.seed=1", "--resume", "training.seed=2"], "")
    assert args.resume == "latest" and args.overrides == ["training.seed=1", "training.seed=2"]
    args = parse_args([str(config), "training.seed=1", "--resume=training.seed=2", "training.seed=3"], "")
    assert args.resume == "latest" and args.overrides == ["training.seed=1", "training.seed=2", "training.seed=3"]
    args = parse_args(["--resume", str(config), "training.seed=1"], "")  # the option first, then the config
    assert (args.config, args.resume, args.overrides) == (str(config), "latest", ["training.seed=1"])


def test_search_takes_options_and_overrides_in_any_order(tmp_path):
    config = tiny_config(tmp_path, training={"max_steps": 2, "eval_strategy": "steps", "eval_steps": 2})
    cfg = yaml.safe_load(config.read_text())
    cfg["search"] = {"space": {"training.learning_rate": {"log_uniform": [1.0e-4, 1.0e-2]}}}
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "found"
    assert main(["search", str(config), "--trials", "1", "training.max_steps=1", "--output", str(out),
                 "training.logging_steps=1"]) == 0
    best = load_config(out / "best_config.yaml")
    assert best.training["max_steps"] == 1 and best.training["logging_steps"] == 1


def test_audit_takes_options_and_overrides_in_any_order(tmp_path, capsys):
    config = tiny_config(tmp_path)
    report = tmp_path / "audited"
    # audit's only positional before its overrides is the config; its one option goes anywhere.
    assert main(["audit", str(config), "--output", str(report), "data.synthetic_num_images=40"]) == 0
    audit = json.loads((report / "data_audit.json").read_text())
    assert audit["checked_images"] == 40
