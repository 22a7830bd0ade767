"""Progress bars that every long loop uses, silenced globally by ``--quiet``.

One switch for the whole process keeps call sites free of ``disable=`` plumbing.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Optional, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Silence (or re-enable) every progress bar and informational message."""
    global _QUIET
    _QUIET = quiet


def is_quiet() -> bool:
    """True when progress output is disabled (``--quiet`` or a non-zero DDP rank)."""
    return _QUIET or int(os.environ.get("RANK", "0")) != 0


def progress(iterable: Iterable[T], desc: str, total: Optional[int] = None, unit: str = "it") -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr unless quiet."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=is_quiet(), file=sys.stderr,
                dynamic_ncols=True, leave=False)


def info(message: str) -> None:
    """Print an informational line to stderr unless quiet."""
    if not is_quiet():
        print(message, file=sys.stderr)


def warn(message: str) -> None:
    """Print a warning line to stderr (warnings are never silenced)."""
    print(f"warning: {message}", file=sys.stderr)
