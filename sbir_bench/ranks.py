"""Which process this is under ``torchrun``: the one rank-0 rule every module uses.

Read from the environment torchrun sets (``RANK``, ``WORLD_SIZE``), so it holds before the process
group exists and costs no torch import (the CLI's error line and the progress bars ask it too).
Outside torchrun this is rank 0 of a world of one.
"""

from __future__ import annotations

import os
from typing import Tuple


def world() -> Tuple[int, int]:
    """(this process's rank, number of processes).

    >>> world() if "RANK" not in os.environ else (0, 1)
    (0, 1)
    """
    return int(os.environ.get("RANK") or 0), int(os.environ.get("WORLD_SIZE") or 1)


def is_rank_zero() -> bool:
    """True on the process that speaks for all: prints errors and progress, writes records."""
    return world()[0] == 0
