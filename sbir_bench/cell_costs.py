"""What every cell of SpLIP's tables needs, from the estimate (:mod:`sbir_bench.sizing`): peak memory and
micro-batch at the recipe's batch, and GPU-hours, on an A100-80GB and on an RTX 4090 (24 GB).

Counted on the meta device from the shipped recipes and the catalog's counts: no weights, no data,
the same figures on any machine. GZS cells train what the ZS cells of their column train (their
rows would repeat these), and so do DomainNet's G1 and U^d-CDR cells what its G0 UCDR cell of the same
held-out domain trains, so the table lists ZS, FG and UCDR (G0) trainings; evaluation is included. docs/cluster.md
holds :func:`table_markdown` (a slow test compares); ``benchmarks/cell_costs.py`` prints it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import List

from .reproduce import cells, plan
from .runner import estimate_run

CARDS = ("a100-80gb", "rtx4090-24gb")
TABLES = ("zs", "fg", "ucdr")  # the tables whose cells train (the others reuse their models)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


def rows() -> List[List[str]]:
    """One row per ZS and FG cell: setting, column, method, batch, then per card peak GiB (micro-batch)
    and GPU-hours of one seed. A method trained in stages (ProS) lists each stage's batch and micro-batch
    ("200 / 25"), its largest stage's peak and the sum of its stages' hours."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for table in TABLES:
            for planned in plan(cells(table), [0], Path(tmp), {}, network=False):
                if planned.cfg.data.setting == "ucdr" and planned.cfg.data.ucdr_gallery != "g0":
                    continue  # evaluates the G0 cell's model
                ests = {card: estimate_run(planned.cfg, card) for card in CARDS}
                first = ests[CARDS[0]]
                batch = " / ".join(str(s["batch_size"]) for s in first.stages) or str(planned.cfg.train.batch_size)
                row = [table.upper(), planned.cell.name, planned.cell.method, batch]
                for card, est in ests.items():  # a method trained in stages: each stage's micro-batch
                    micro = " / ".join(str(s["micro_batch"]) for s in est.stages) or str(est.micro_batch)
                    micro = f" ({micro})" if est.trainable_parameters else ""
                    row += [f"{_gib(est.peak_memory_bytes)}{micro}", f"{est.gpu_hours:.2f}"]
                out.append(row)
    return out


def table_markdown() -> str:
    """The per-cell table as Markdown."""
    head = ["table", "column", "method", "batch"]
    for card in CARDS:
        head += [f"peak GiB (micro-batch) on {card}", f"GPU-h on {card}"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows()]
    return "\n".join(lines)


def totals_markdown(table_rows: List[List[str]]) -> str:
    """GPU-hours of whole tables (one seed, and three) per card."""
    lines = ["| table | cells | " + " | ".join(f"GPU-h on {c} (1 seed / 3 seeds)" for c in CARDS) + " |",
             "| --- | --- |" + " --- |" * len(CARDS)]
    for table in (t.upper() for t in TABLES):
        mine = [r for r in table_rows if r[0] == table]
        hours = [sum(float(r[5 + 2 * i]) for r in mine) for i in range(len(CARDS))]
        lines.append(f"| {table} | {len(mine)} | " + " | ".join(f"{h:.1f} / {3 * h:.1f}" for h in hours) + " |")
    return "\n".join(lines)
