"""What every cell of SpLIP's tables needs, from the estimate: the Markdown docs/cluster.md holds.

    python benchmarks/cell_costs.py            # the per-cell table, then the whole tables' GPU-hours

The figures are counts (sbir_bench/cell_costs.py), the same on any machine.
"""

from __future__ import annotations

from sbir_bench.cell_costs import CARDS, rows, table_markdown, totals_markdown
from sbir_bench.gpus import GPUS

if __name__ == "__main__":
    assert all(c in GPUS for c in CARDS)
    print(table_markdown())
    print()
    print(totals_markdown(rows()))
