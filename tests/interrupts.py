"""A method's ``loss`` that raises KeyboardInterrupt on its n-th call: what Ctrl-C (or a preemption
signal turned into one) does to a run mid-training, placed on an exact step (test helper)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List

import torch


def loss_interrupted_at(cls, call: int, message: str = "") -> Callable:
    """``cls.loss`` as it is now, raising KeyboardInterrupt(``message``) on call number ``call``."""
    original, calls = cls.loss, {"n": 0}

    def loss(self, batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt(message)
        return original(self, batch)
    return loss


@dataclass
class StagedResume:
    """What :func:`interrupted_then_resumed` leaves: the last stage's final checkpoint and the record of
    the straight run and of the interrupted-then-resumed one."""

    reference: dict
    final: dict
    straight_record: dict
    resumed_record: dict

    def assert_same_model(self) -> None:
        assert self.final["trainable"].keys() == self.reference["trainable"].keys()
        for key, value in self.reference["trainable"].items():
            assert torch.equal(value, self.final["trainable"][key]), key


def interrupted_then_resumed(tmp_path: Path, monkeypatch, cls, args: List[str], call: int, stage: str, epoch: int,
                             last_stage: str) -> StagedResume:
    """Run the CLI ``args`` straight (``tmp_path/a``); again (``b``) with ``cls.loss`` raising Ctrl-C on call
    ``call``, which must leave stage ``stage``'s checkpoint at ``epoch``; then ``--resume`` it."""
    from click.testing import CliRunner
    from conftest import last_checkpoint

    from sbir_bench.cli import main
    straight = CliRunner().invoke(main, [*args, "--output-dir", str(tmp_path / "a")])
    assert straight.exit_code == 0, straight.output
    name = f"{args[1]}_mini_zs_split1_seed0"
    checkpoints = lambda out: tmp_path / out / "checkpoints" / name  # noqa: E731
    original = cls.loss
    monkeypatch.setattr(cls, "loss", loss_interrupted_at(cls, call))
    first = CliRunner().invoke(main, [*args, "--output-dir", str(tmp_path / "b")])
    assert first.exit_code == 130, first.output
    assert last_checkpoint(checkpoints("b") / stage)["epoch"] == epoch
    monkeypatch.setattr(cls, "loss", original)
    resumed = CliRunner().invoke(main, [*args, "--output-dir", str(tmp_path / "b"), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    records = [json.loads(next((tmp_path / p).glob("*.json")).read_text()) for p in ("a", "b")]
    return StagedResume(last_checkpoint(checkpoints("a") / last_stage), last_checkpoint(checkpoints("b") / last_stage),
                        *records)
