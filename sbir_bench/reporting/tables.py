"""Plain-text tables printed at the end of ``run`` and ``eval``."""

from __future__ import annotations

from typing import Any, Dict, Mapping


def metrics_table(metrics: Mapping[str, float], title: str = "") -> str:
    """Two aligned rows (metric names, values to 4 decimals) under an optional title."""
    names = list(metrics)
    cells = [f"{metrics[n]:.4f}" if isinstance(metrics[n], (int, float)) else str(metrics[n]) for n in names]
    widths = [max(len(n), len(c)) for n, c in zip(names, cells)]
    head = "  ".join(n.rjust(w) for n, w in zip(names, widths))
    vals = "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    rule = "-" * len(head)
    return "\n".join(x for x in (title, rule, head, vals, rule) if x)


def record_table(record: Dict[str, Any]) -> str:
    """The metrics of one run record, titled with what was run."""
    title = (f"{record['method']} | {record['dataset']} split {record['split']} | {record['setting']} | "
             f"{record['backbone']}{'/' + record['pretrained'] if record.get('pretrained') else ''} | "
             f"seed {record['seed']} | {record.get('n_evaluated', '?')} queries")
    return metrics_table(record["metrics"], title)
