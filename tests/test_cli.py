"""python -m facemask: subcommands load lazily, and one exit code per kind of error."""

import subprocess
import sys

import pytest
from conftest import REPO

from facemask.__main__ import build_parser, main

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


@pytest.mark.parametrize("args", [
    ["predict", "no/such-model-here", "x.jpg"],
    ["demo", "no/such-model-here"],
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


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as done:
        main(["predict"])
    assert done.value.code == 2
