"""Where a page listens (the demo, the review page): --host, --port, --share, and the warning a
page reachable from other machines gets. One owner, so the two pages bind alike."""

from __future__ import annotations

import argparse
import sys
from typing import Any

LOCAL_HOSTS = ("127.0.0.1", "localhost")


def _bool(value: str) -> bool:
    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_page_arguments(parser: Any, port: int = 7860) -> None:
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--share", type=_bool, nargs="?", const=True, default=False, metavar="true|false",
                        help="also open a public gradio.live link (default false)")


def warn_if_reachable(args: argparse.Namespace) -> None:
    if args.host not in LOCAL_HOSTS:
        print(f"warning: --host {args.host}: the page is reachable from other machines", file=sys.stderr)
    if args.share:
        print("warning: --share: the page is public at a gradio.live link while it runs", file=sys.stderr)
