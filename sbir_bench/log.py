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
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional, TypeVar

from tqdm.auto import tqdm

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
    return not logging.getLogger(ROOT).isEnabledFor(logging.INFO) or int(os.environ.get("RANK", "0")) != 0


def progress(iterable: Iterable[T], desc: str, total: Optional[int] = None, unit: str = "it") -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr unless quiet."""
    interactive = sys.stderr.isatty()  # a log file gets a line every 30 s, not every update
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=is_quiet(), file=sys.stderr,
                dynamic_ncols=True, leave=False, mininterval=0.1 if interactive else 30.0)


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
