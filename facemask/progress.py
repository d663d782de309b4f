"""How the commands show progress. On a terminal (or a notebook): live tqdm bars, as always.
Where the bar's stream is not one (nohup, CI, a pipe to a file): one line per 10% of the work or
every 30 s, whichever comes first, instead of thousands of carriage-return redraws, and the
libraries' own bars (weights loading, shard writing, downloads, dataset mapping) turned off.

Stdlib only at import: the torch-free runtime imports the package without tqdm or the Hugging Face
libraries installed."""

from __future__ import annotations

import functools
import importlib
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional, TextIO, Tuple

LINE_FRACTION = 0.1  # a line each time another 10% of the work is done
LINE_SECONDS = 30.0  # or when this long has passed since the last line, whichever comes first
QUIET_SECONDS = 5.0  # no line but the last before this: work done in a few seconds gets one line


def live_display(stream: Optional[TextIO] = None) -> bool:
    """Whether `stream` (stderr by default, where bars draw) shows a redrawn bar: a terminal or a
    Jupyter kernel (whose streams are no TTY but draw tqdm's widgets)."""
    stream = sys.stderr if stream is None else stream
    try:
        if stream is not None and stream.isatty():
            return True
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        pass
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


class LineProgress:
    """A progress report for a stream that is not a terminal, used like a tqdm bar (update,
    set_postfix, write, close, a context manager): a line such as
    `training: 40% (800/2000 steps), 38.2 steps/s, 31 s left, loss 0.41` each time another
    LINE_FRACTION of `total` is done or LINE_SECONDS have passed, none in the first QUIET_SECONDS,
    and always the last state (100% when the work is complete). The rate is that since the previous line. tqdm options it
    has no use for (dynamic_ncols, leave, ...) are accepted and ignored; `clock` is for tests."""

    def __init__(self, desc: Optional[str] = None, total: Optional[float] = None, unit: str = "it",
                 initial: float = 0, file: Optional[TextIO] = None, disable: bool = False,
                 clock: Callable[[], float] = time.monotonic, **_tqdm_options: Any) -> None:
        self.desc = (desc or "").rstrip(": ")
        self.total = total
        self.unit = unit.strip() or "it"
        self.n = initial
        self.postfix: Dict[str, Any] = {}
        self.file = sys.stderr if file is None else file
        self.disable = disable
        self._clock = clock
        self._start = self._last = (initial, clock())
        self._closed = False

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        if not self.disable and not self._closed:
            now = self._clock()
            if self._due(now):
                self._emit(now)

    def _due(self, now: float) -> bool:
        last_n, last_t = self._last
        if self.total and self.n >= self.total:
            return last_n < self.total  # the line that says 100%
        if now - self._start[1] < QUIET_SECONDS:
            return False
        if now - last_t >= LINE_SECONDS:
            return True
        if not self.total:
            return False
        # Whole LINE_FRACTIONs done, before and now (the epsilon keeps 30/100 of 0.1 from falling to 2.999...)
        return int(self.n / self.total / LINE_FRACTION + 1e-9) > int(last_n / self.total / LINE_FRACTION + 1e-9)

    def set_postfix(self, ordered_dict: Optional[Dict[str, Any]] = None, refresh: bool = True, **values: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **values}

    def write(self, text: str, file: Optional[TextIO] = None, end: str = "\n") -> None:
        """A message between lines (tqdm.write's signature: stdout by default)."""
        stream = sys.stdout if file is None else file
        stream.write(text + end)
        stream.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.disable and self.n != self._last[0]:
            self._emit(self._clock())

    def line(self, now: float) -> str:
        """The line for the state at `now`."""
        units = self.unit if self.unit.endswith("s") or self.unit == "it" else self.unit + "s"
        single = self.unit[:-1] if self.unit.endswith("s") and len(self.unit) > 1 else self.unit
        if self.total:
            where = f"{int(100 * self.n / self.total)}% ({_count(self.n)}/{_count(self.total)} {units})"
        else:
            where = f"{_count(self.n)} {units}"
        parts = [f"{self.desc}: {where}" if self.desc else where]
        finished = bool(self.total) and self.n >= self.total or self._closed
        since_n, since_t = self._start if finished else self._last
        rate = (self.n - since_n) / (now - since_t) if now > since_t else 0.0
        if rate > 0:
            parts.append(f"{rate:.1f} {units}/s" if rate >= 1 else f"{1 / rate:.1f} s/{single}")
        if finished:
            parts.append(f"{_duration(now - self._start[1])} in all")
        elif self.total and rate > 0:
            parts.append(f"{_duration((self.total - self.n) / rate)} left")
        parts.extend(f"{key} {value}" for key, value in self.postfix.items())
        return ", ".join(parts)

    def _emit(self, now: float) -> None:
        self.file.write(self.line(now) + "\n")
        self.file.flush()
        self._last = (self.n, now)


def progress(total: Optional[float] = None, desc: str = "", unit: str = "it", initial: float = 0,
             file: Optional[TextIO] = None, **tqdm_options: Any) -> Any:
    """The project's progress display: a tqdm bar where `file` (stderr by default) is a live
    display, a LineProgress where it is not. Both take tqdm's update, set_postfix, write, close."""
    if live_display(file):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=file, **tqdm_options)
    return LineProgress(total=total, desc=desc, unit=unit, initial=initial, file=file)


# Each library: the environment variable it reads when imported, and the switch that turns its
# bars off once it is (transformers follows huggingface_hub's variable at import).
_LIBRARY_SWITCHES: Dict[str, Tuple[str, str, str]] = {
    "huggingface_hub": ("HF_HUB_DISABLE_PROGRESS_BARS", "huggingface_hub.utils", "disable_progress_bars"),
    "datasets": ("HF_DATASETS_DISABLE_PROGRESS_BARS", "datasets.utils.logging", "disable_progress_bar"),
    "transformers": ("HF_HUB_DISABLE_PROGRESS_BARS", "transformers.utils.logging", "disable_progress_bar"),
}


def quiet_library_bars(stream: Optional[TextIO] = None) -> bool:
    """Called by each command's process entry: where `stream` (stderr) is not a live display, the
    bars of huggingface_hub, datasets and transformers are turned off, in the libraries imported
    already and, through their environment variables, in those imported later and in the processes
    this one starts. A variable the user set to 0 keeps that library's bars. Returns whether it
    turned them off. Nothing is imported that was not already."""
    if live_display(stream):
        return False
    for module, (variable, owner, switch) in _LIBRARY_SWITCHES.items():
        if os.environ.setdefault(variable, "1").strip().upper() not in ("1", "ON", "YES", "TRUE"):
            continue
        if module in sys.modules:
            getattr(importlib.import_module(owner), switch)()
    return True


@contextmanager
def datasets_lines(stream: Optional[TextIO] = None) -> Iterator[None]:
    """Where `stream` (stderr) is not a live display, the datasets bars drawn inside the block (a
    map's "caching train images") are LineProgress lines, even where datasets' bars are turned
    off; on a live display nothing changes."""
    if live_display(stream):
        yield
        return
    import datasets.arrow_dataset

    # datasets has no hook for its bar class (transformers has set_tqdm_hook): the name its maps
    # call is swapped for the block. tests/test_console.py fails if a datasets release renames it.
    previous = datasets.arrow_dataset.hf_tqdm
    datasets.arrow_dataset.hf_tqdm = functools.partial(LineProgress, file=stream)
    try:
        yield
    finally:
        datasets.arrow_dataset.hf_tqdm = previous
