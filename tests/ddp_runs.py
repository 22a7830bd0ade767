"""Run a list of training runs in one process, alone or as one rank under ``torchrun`` (test helper).

``python tests/ddp_runs.py PLAN.json`` and ``torchrun --nproc_per_node=2 tests/ddp_runs.py PLAN.json``
run the same plan; tests/test_trainer.py compares their records. Starting torch once for many runs
keeps the multi-process test affordable. A plan entry is ``{"out": folder, "method": name,
"set": {dotted key: value}, "interrupt_at": n}``: with ``interrupt_at`` the method's ``loss`` raises
KeyboardInterrupt on its n-th call in every rank (what Ctrl-C sends each torchrun worker), and the
same run is then started again with ``train.resume``, in the same process group.
"""

from __future__ import annotations

import json
import sys

from interrupts import loss_interrupted_at

from sbir_bench.config import build_run_config
from sbir_bench.methods import get_method
from sbir_bench.runner import run


def main(plan_file: str) -> None:
    for entry in json.loads(open(plan_file).read()):
        overrides = {"method": entry["method"], "output_dir": entry["out"], "device": "cpu", "quiet": True,
                     **entry.get("set", {})}
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


if __name__ == "__main__":
    main(sys.argv[1])
