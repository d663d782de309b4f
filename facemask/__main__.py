"""python -m facemask SUBCOMMAND (or `facemask SUBCOMMAND`): the table of subcommands.

Each subcommand's parser and body live with its concern, in an object with `add_arguments(parser)`
and `command(args) -> exit code`: a module, or `module:name` for one of several in a command module
(docs/architecture.md). Only the subcommand asked for is imported, so `--help` answers at once.
Exit codes: 0 done; 1 the work failed (a push refused, an export whose parity fails, a skipped
input, an audit that refuses the data); 2 a usage or config error (bad arguments, a config key or
value, a model, run folder or data that cannot be found)."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, List, Optional

from facemask.config.schema import ConfigError, WorkFailed

COMMANDS = {  # name: (where its add_arguments and command live, its one-line help)
    "synth": ("facemask.data.cli:synth", "write the drawn face-mask set as an image folder"),
    "audit": ("facemask.data.cli:audit", "check a config's data: bad files, leaks, shortcuts, balance"),
    "cache": ("facemask.pipeline.cache_entries", "list or clear what the cache folder keeps"),
    "predict": ("facemask.runtime.cli", "classify image files (exit 1 if any input was skipped)"),
    "detect": ("facemask.detection.cli", "find, classify and draw every face in photos and videos"),
    "compare": ("facemask.evaluation.cli:compare", "two runs on the same images: paired bootstrap, McNemar"),
    "explain": ("facemask.evaluation.cli:explain", "where in each image the model looks: overlays, --sanity"),
    "train": ("facemask.training.run", "fine-tune a classifier from a config (as train.py)"),
    "search": ("facemask.training.search", "hyperparameter search (Optuna) over the config's search.space"),
    "repeat": ("facemask.training.repeat", "a config once per seed or fold: each run's metrics, mean and spread"),
    "label-issues": ("facemask.training.label_issues", "training labels that are probably wrong (cleanlab)"),
    "review": ("facemask.curation.review", "review flagged or selected images in the browser, one key a decision"),
    "select": ("facemask.curation.select", "the unlabelled images to label next: uncertain, diverse, no copies"),
    "pretrain": ("facemask.training.pretrain", "masked image modelling (SimMIM) on unlabelled images"),
    "card": ("facemask.publish.cli:card", "regenerate a run's model card from the files it left"),
    "push": ("facemask.publish.cli:push", "push a finished run (model, card, results, plots) to the Hub"),
    "export": ("facemask.publish.cli:export", "export a run to ONNX, parity checked on its validation images"),
    "demo": ("facemask.publish.cli:demo", "a Gradio page for a run or a Hub model"),
    "space": ("facemask.publish.cli:space", "write and push a Hugging Face Space serving the demo page"),
    "serve": ("facemask.publish.serve", "an HTTP JSON service: /predict, /detect, /health, /ready, /metrics"),
}


def owner(name: str) -> Any:
    """The object holding subcommand `name`'s add_arguments and command (imported now)."""
    module, _, attribute = COMMANDS[name][0].partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attribute) if attribute else loaded


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """Every subcommand's name and help; the arguments of `only` alone (its module imported)."""
    parser = argparse.ArgumentParser(prog="python -m facemask", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == only:
            owner(name).add_arguments(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # usage, --help or the list of subcommands; exits
    name = argv[0]
    sub = build_parser(name)._subparsers._group_actions[0].choices[name]
    # Options, positionals and `key=value` overrides in any order (argparse cannot parse
    # intermixed arguments through subparsers, so the subcommand's own parser does).
    args = sub.parse_intermixed_args(argv[1:])
    args.argv = argv[1:]  # as given, for a subcommand that hands them to an entry point
    try:
        return owner(name).command(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except WorkFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def console() -> None:
    """The `facemask` console script and `python -m facemask`: a process's own output."""
    from facemask.progress import quiet_library_bars

    quiet_library_bars()  # off a terminal, no library redraws its bars in the output
    sys.exit(main())


if __name__ == "__main__":
    console()
