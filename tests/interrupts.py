"""A method's ``loss`` that raises KeyboardInterrupt on its n-th call: what Ctrl-C (or a preemption
signal turned into one) does to a run mid-training, placed on an exact step (test helper)."""

from __future__ import annotations

from typing import Callable


def loss_interrupted_at(cls, call: int, message: str = "") -> Callable:
    """``cls.loss`` as it is now, raising KeyboardInterrupt(``message``) on call number ``call``."""
    original, calls = cls.loss, {"n": 0}

    def loss(self, batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt(message)
        return original(self, batch)
    return loss
