"""What every command shares: one-line errors with exit codes, and options derived from the configs.

Options of ``run`` and ``eval`` are built from the config dataclasses' and the protocol's field
metadata (:func:`config_option`, :func:`protocol_options`), so a bound, a list of choices or a help
text is written once, in :mod:`sbir_bench.config` or :mod:`sbir_bench.retrieval.protocol`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import threading
import typing
from typing import Any, Callable, Dict, List, Optional

import click

from ..config import field_meta
from ..errors import INTERRUPTED, TERMINATED, SbirError
from ..ranks import is_rank_zero


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr (on rank 0 only under torchrun) and exit with ``code``."""
    if is_rank_zero():
        click.echo(f"error: {message}", err=True)
    sys.exit(code)


INTERRUPTED_ADVICE = {"run": "rerun the same command with --resume to continue from the last checkpoint",
                      "reproduce": "rerun the same reproduce command: finished cells are kept and interrupted ones "
                                   "resume from their last checkpoint"}


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, ``kill``, a container's shutdown), raised where the command is, so that
    it unwinds as Ctrl-C does (checkpoint folders released, the cell's state written) and says so."""


def stop_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` in this process (the command line only: a library leaves the
    caller's signals alone). A forked child (a data-loader worker) keeps the default: it just ends."""
    if threading.current_thread() is not threading.main_thread():
        return
    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()
    signal.signal(signal.SIGTERM, handler)


def friendly_errors(fn: Callable) -> Callable:
    """Report user errors (and Ctrl-C) as one line and the error's exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SbirError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt as exc:
            command = click.get_current_context(silent=True)
            name = command.info_name if command is not None else ""
            what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            if is_rank_zero():
                advice = INTERRUPTED_ADVICE.get(name)
                click.echo(f"{what}; {advice}" if advice else what, err=True)
            sys.exit(TERMINATED if isinstance(exc, Terminated) else INTERRUPTED)

    return wrapper


class OneLineGroup(click.Group):
    """A click group whose usage errors are one ``error:`` line (exit 2), like every other error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra: Any):
        stop_on_sigterm()
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.exceptions.Abort:
            fail("aborted", 1)


def _click_type(annotation: Any, meta: Dict[str, Any]) -> Any:
    """The click type of a config field: ranges and choices from its metadata."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if typing.get_origin(annotation) is typing.Union else annotation
    if meta.get("choices"):
        return click.Choice(meta["choices"])
    low = meta.get("min")
    if base is int:
        return click.IntRange(min=low, max=meta.get("max")) if low is not None else int
    if base is float:
        if meta.get("positive"):
            return click.FloatRange(min=0, min_open=True, max=meta.get("max"))
        return click.FloatRange(min=low, max=meta.get("max")) if low is not None else float
    return str


def config_option(flag: str, cls: Any, name: str, **extra: Any) -> Callable:
    """A ``--flag`` option for config field ``cls.name`` (type, bounds, choices and help from its metadata)."""
    meta = field_meta(cls, name)
    hints = typing.get_type_hints(cls)
    default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    shown = "" if default in (None, dataclasses.MISSING, "") else f"  [default: {default}]"
    return click.option(flag, name.replace("-", "_") if "dest" not in extra else extra.pop("dest"),
                        type=_click_type(hints[name], meta), help=(meta.get("help", "") + shown).strip(), **extra)


def protocol_options(fn: Callable) -> Callable:
    """One option per protocol knob (``--ties``, ``--map-k`` ...); unset options keep the preset's value."""
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..retrieval.protocol import protocol_fields
    for f in reversed(protocol_fields()):
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        kind = click.Choice(f.metadata["choices"]) if f.metadata.get("choices") else \
            click.BOOL if isinstance(f.default, bool) else str
        fn = click.option(flag, f"knob_{f.name}", type=kind, default=None,
                          help=f"{f.metadata['help']} (default: the preset's)")(fn)
    return fn


def knob_overrides(opts: Dict[str, Any]) -> Dict[str, Any]:
    """Protocol overrides from the ``knob_*`` options that were given."""
    return {k[len("knob_"):]: v for k, v in opts.items() if k.startswith("knob_") and v is not None}


def selection_options(fn: Callable) -> Callable:
    """Options shared by compare / export / plot: which records, which subset."""
    for option in reversed([
        click.argument("patterns", nargs=-1),
        click.option("--results-dir", default="results/runs", show_default=True, type=click.Path(),
                     help="Where records are read from when no RUN_GLOB is given."),
        click.option("--dataset", "datasets", multiple=True, help="Keep only this dataset (repeatable)."),
        click.option("--setting", "settings", multiple=True, help="Keep only this setting (repeatable)."),
        click.option("--method", "methods", multiple=True, help="Keep only this method (repeatable)."),
    ]):
        fn = option(fn)
    return fn


def split_list(text: Optional[str]) -> List[str]:
    """``"a,b"`` -> ``["a", "b"]``."""
    return [x.strip() for x in (text or "").split(",") if x.strip()]
