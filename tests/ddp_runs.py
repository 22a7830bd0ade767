"""Run a list of training runs in one process, alone or as one rank under ``torchrun`` (test helper).

``python tests/ddp_runs.py PLAN.json`` and ``torchrun --nproc_per_node=2 tests/ddp_runs.py PLAN.json``
run the same plan; tests/test_trainer.py compares their records. Starting torch once for many runs
keeps the multi-process test affordable. A plan entry is ``{"out": folder, "method": name,
"set": {dotted key: value}, "interrupt_at": n}``: with ``interrupt_at`` the method's ``loss`` raises
KeyboardInterrupt on its n-th call in every rank (what Ctrl-C sends each torchrun worker), and the
same run is then started again with ``train.resume``, in the same process group. With
``"unreadable_on_rank": r`` (last in a plan) every epoch's first training micro-batch of rank ``r`` arrives all unreadable (what
the loader yields when every image of it fails to decode), on that rank alone.
"""

from __future__ import annotations

import json
import os
import sys

from interrupts import loss_interrupted_at

from sbir_bench.config import build_run_config
from sbir_bench.methods import get_method
from sbir_bench.runner import run


def main(plan_file: str) -> None:
    for entry in json.loads(open(plan_file).read()):
        overrides = {"method": entry["method"], "output_dir": entry["out"], "device": "cpu", "quiet": True,
                     **entry.get("set", {})}
        if "unreadable_on_rank" in entry:  # the plan's last entry: the patch stays for the rest of the process
            unreadable_first_batch(int(entry["unreadable_on_rank"]))
        if "interrupt_at" not in entry:
            run(build_run_config({}, overrides))
            continue
        cls = get_method(entry["method"])
        original = cls.loss
        cls.loss = loss_interrupted_at(cls, entry["interrupt_at"])
        try:
            run(build_run_config({}, overrides))
            raise SystemExit("the run was not interrupted")
        except KeyboardInterrupt:
            pass
        finally:
            cls.loss = original
        run(build_run_config({}, {**overrides, "train.resume": True}))


class FirstBatchUnreadable:
    """The trainer's progress wrapper whose first micro-batch arrives all unreadable: (None, its size)."""

    def __init__(self, bar) -> None:
        self.bar = bar

    def set_postfix(self, *args, **kwargs) -> None:
        self.bar.set_postfix(*args, **kwargs)

    def __iter__(self):
        for i, (batch, skipped) in enumerate(self.bar):
            yield (None, skipped + len(batch.label)) if i == 0 and batch is not None else (batch, skipped)


def unreadable_first_batch(rank: int) -> None:
    """On ``rank`` alone, every epoch's first training micro-batch is unreadable."""
    from sbir_bench.training import trainer
    if int(os.environ.get("RANK", "0")) == rank:
        original = trainer.progress
        trainer.progress = lambda *args, **kwargs: FirstBatchUnreadable(original(*args, **kwargs))


if __name__ == "__main__":
    main(sys.argv[1])
