"""Logging and progress bars, the way Python libraries do it.

Library code logs through ``logging.getLogger("sbir_bench.<module>")`` (see :func:`get_logger`) and
never prints: a program that calls sbir-bench as a library decides what it sees by configuring the
``sbir_bench`` logger. The command line installs one stderr handler (:func:`configure_cli_logging`).

Progress bars follow the same switch: they are drawn only while the ``sbir_bench`` logger lets INFO
through, on DDP rank 0. ``--quiet`` (:func:`set_quiet`) raises the level to WARNING, which silences
bars and info lines and keeps warnings and errors.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, Iterator, Optional, TypeVar

from tqdm.std import tqdm  # not tqdm.auto: its asyncio class opens a second iterator over what it wraps

from .ranks import is_rank_zero

ROOT = "sbir_bench"
T = TypeVar("T")


def get_logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (``__name__``), a child of the ``sbir_bench`` logger."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


class _CliFormatter(logging.Formatter):
    """Info lines as they are; warnings and errors prefixed like the rest of the CLI's output."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return message


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def configure_cli_logging(quiet: bool = False) -> None:
    """One stderr handler on the ``sbir_bench`` logger (idempotent), INFO or WARNING with ``quiet``."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_CliFormatter())
        logger.addHandler(handler)
        logger.propagate = False
    set_quiet(quiet)


def set_quiet(quiet: bool) -> None:
    """Silence (or re-enable) info lines and progress bars; warnings always pass."""
    logging.getLogger(ROOT).setLevel(logging.WARNING if quiet else logging.INFO)


def is_quiet() -> bool:
    """True when progress output is off: the logger drops INFO, or this is a non-zero DDP rank."""
    return not logging.getLogger(ROOT).isEnabledFor(logging.INFO) or not is_rank_zero()


PROGRESS_EVERY_ENV = "SBIR_BENCH_PROGRESS_EVERY"
DEFAULT_PROGRESS_EVERY = 30.0  # seconds between two progress lines when stderr is a file or a pipe


def progress_every() -> float:
    """Seconds between progress lines in a log file: ``$SBIR_BENCH_PROGRESS_EVERY`` (default 30).

    A value that is not a positive number is ignored with the default, since a typo in a job script's
    environment must not stop a run that has already been queued for hours.
    """
    raw = os.environ.get(PROGRESS_EVERY_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_PROGRESS_EVERY
    return value if value > 0 and value == value and value != float("inf") else DEFAULT_PROGRESS_EVERY


class LineProgress:
    """Progress for a log file: a plain line (no carriage return, no bar) at most every ``every`` seconds.

    Under SLURM, CI or ``nohup`` stderr is a file, where tqdm's redraws become dozens of ``\\r`` frames
    on one line. This writes ``desc: n/total (p%) [elapsed, rate] postfix`` lines instead, plus one
    line when the loop ends. It offers the part of tqdm's interface sbir-bench uses (iteration,
    ``set_postfix``), so callers do not know which one they hold.

    >>> import io
    >>> out = io.StringIO()
    >>> list(LineProgress(range(3), desc="demo", total=3, unit="batch", every=3600.0, stream=out))
    [0, 1, 2]
    >>> out.getvalue().startswith("demo: 3/3 (100%)") and "\\r" not in out.getvalue()
    True
    """

    def __init__(self, iterable: Iterable[T], desc: str, total: Optional[int], unit: str, every: float,
                 stream=None) -> None:
        self.iterable, self.desc, self.unit, self.every = iterable, desc, unit, every
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.stream = stream
        self.postfix = ""
        self.n = 0

    def set_postfix(self, values: Dict[str, object], refresh: bool = True) -> None:
        """Shown at the end of the next line (tqdm's signature; ``refresh`` is accepted and ignored)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _line(self, elapsed: float) -> str:
        done = f"{self.n}/{self.total} ({100.0 * self.n / self.total:.0f}%)" if self.total else str(self.n)
        rate = f"{self.n / elapsed:.3g} {self.unit}/s" if elapsed > 0 else f"- {self.unit}/s"
        tail = f" {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done} [{elapsed:.0f}s, {rate}]{tail}\n"

    def _write(self, elapsed: float) -> None:
        stream = self.stream or sys.stderr  # whatever stderr is now (test runners swap it)
        stream.write(self._line(elapsed))
        stream.flush()

    def __iter__(self) -> Iterator[T]:
        start = last = time.monotonic()
        written = -1
        for item in self.iterable:
            yield item
            self.n += 1
            now = time.monotonic()
            if now - last >= self.every:
                self._write(now - start)
                last, written = now, self.n
        if written != self.n:  # the closing line, unless the last item's line just said the same
            self._write(time.monotonic() - start)


def progress(iterable: Iterable[T], desc: str, total: Optional[int] = None, unit: str = "it") -> Iterable[T]:
    """Progress over ``iterable`` on stderr unless quiet: a tqdm bar on a terminal, else plain lines
    (:class:`LineProgress`) at most every :func:`progress_every` seconds."""
    if not is_quiet() and not sys.stderr.isatty():
        return LineProgress(iterable, desc=desc, total=total, unit=unit, every=progress_every())
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=is_quiet(), file=sys.stderr,
                dynamic_ncols=True, leave=False, mininterval=0.1)


def progress_bytes(desc: str) -> Callable[[int, int], None]:
    """A callback ``show(done, total)`` for a byte transfer (total -1: unknown), with :func:`progress`'s
    manners: a tqdm bar on a terminal, plain lines at most every :func:`progress_every` seconds
    otherwise, nothing when quiet."""
    if is_quiet():
        return lambda done, total: None
    if sys.stderr.isatty():
        bar = tqdm(desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False)

        def show_bar(done: int, total: int) -> None:
            bar.total = total if total >= 0 else None
            bar.update(done - bar.n)
        return show_bar
    state = {"last": 0.0}

    def show_line(done: int, total: int) -> None:
        now = time.monotonic()
        if now - state["last"] >= progress_every() or (total >= 0 and done >= total):
            state["last"] = now
            of = f" of {total / 2**20:,.1f} MiB" if total >= 0 else ""
            sys.stderr.write(f"{desc}: {done / 2**20:,.1f} MiB{of}\n")
    return show_line


class _DropLibraryRecords(logging.Filter):
    """Drops records below ERROR emitted from inside one package's source folder."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not os.path.realpath(record.pathname).startswith(self.folder)


@contextmanager
def quiet_library(package) -> Iterator[None]:
    """Hide a library's own INFO/WARNING records while it works, without touching anyone's levels.

    open_clip logs through the root logger ("model initialized randomly" when sbir-bench builds a
    model before loading weights itself); sbir-bench reports the weight source in its own words.
    The filter matches records by source file, so the host program's records are untouched.
    """
    folder = os.path.dirname(os.path.realpath(package.__file__))
    named = logging.getLogger(package.__name__)
    previous = named.level
    named.setLevel(logging.ERROR)
    drop = _DropLibraryRecords(folder)
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        named.setLevel(previous)
