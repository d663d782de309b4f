"""Evaluation's commands: `compare` (two runs on the same images) and `explain` (where the model
looks: evaluation/explain.py's parser and body with predict's face check, from detection/, a layer
above evaluation). A command module, in the top layer (tests/test_architecture.py);
__main__.py's table names `facemask.evaluation.cli:NAME`, each with `add_arguments` and `command`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any


def _add_compare_arguments(parser: Any) -> None:
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--split", default="test", help="validation, test or an extra test set's name (default test)")
    parser.add_argument("--output", metavar="FILE.json", help="also write the comparison as JSON")


def _compare(args: Any) -> int:
    from facemask.evaluation.compare import compare_runs, comparison_table
    from facemask.run_folder import write_json

    result = compare_runs(args.run_a, args.run_b, args.split)
    print(comparison_table(result))
    if args.output:
        write_json(Path(args.output), result)
        print(f"wrote {args.output}")
    return 0


def _add_explain_arguments(parser: Any) -> None:
    from facemask.detection.framing import add_face_arguments
    from facemask.evaluation.explain import add_arguments

    add_arguments(parser)
    add_face_arguments(parser)


def _explain(args: Any) -> int:
    from facemask.detection.framing import face_check
    from facemask.evaluation.explain import command

    return command(args, face_check(args))


compare = SimpleNamespace(add_arguments=_add_compare_arguments, command=_compare)
explain = SimpleNamespace(add_arguments=_add_explain_arguments, command=_explain)
