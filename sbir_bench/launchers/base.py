"""What a launcher is: one way to run a table's cells, behind one interface, with the options it takes.

A launcher declares its own command-line options (:class:`LauncherOption`) and checks them
(:meth:`Launcher.configure` returns the launcher set up for one command); ``reproduce`` adds every
launcher's options by looping over :data:`sbir_bench.launchers.LAUNCHERS`, and refuses an option of
another launcher than the one chosen, which would be silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ..errors import SbirError


@dataclass(frozen=True)
class LauncherOption:
    """One command-line option a launcher takes: its flag, where its value goes, its default and help."""

    flag: str
    dest: str
    default: Any = None
    help: str = ""
    type: Any = None  # a click type; None: text
    is_flag: bool = False
    multiple: bool = False


@dataclass
class LaunchRequest:
    """What ``reproduce`` asks of a launcher: a table's planned runs and how to run them."""

    table: str
    output_dir: Path


@dataclass
class Outcome:
    """What a launch did: failures (cell, error), one line per submitted job, and whether jobs are still
    out (the last one writes the table)."""

    failures: List[Tuple[str, SbirError]] = field(default_factory=list)
    submitted: List[str] = field(default_factory=list)
    pending: bool = False


class Launcher:
    """A way to run a table's cells. ``launch`` runs or submits every runnable planned run (each has
    ``cell``, ``seed``, ``cfg``, ``status``, ``model``, ``runnable`` and ``describe()``); it never stops
    at a failing cell, and never runs a cell another command holds."""

    name = ""
    options: Tuple[LauncherOption, ...] = ()  # what it takes on the command line

    def configure(self, values: Dict[str, Any]) -> "Launcher":
        """This launcher set up with its options' ``values`` (by ``dest``), checked; a new object."""
        return self

    def launch(self, runs: Sequence[Any], request: LaunchRequest) -> Outcome:
        raise NotImplementedError
