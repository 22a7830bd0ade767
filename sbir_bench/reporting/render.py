"""Render the long comparison table as text, LaTeX (booktabs), Markdown or CSV.

Columns are grouped by (dataset, split, setting), then metric; rows are methods (published
reference rows last). In LaTeX and Markdown the best value of each metric column is bold and the
second best underlined (higher is better for every sbir-bench metric); a missing cell is ``-``.
Output depends only on the cells, in a fixed order with fixed formatting, so the same runs give the
same bytes.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import numpy as np
import pandas as pd

from .collect import metric_names

Column = Tuple[str, str, str, str]  # dataset, split, setting, metric
SETTING_ORDER = {"zs": 0, "gzs": 1, "fg": 2}
DATASET_TITLES = {"sketchy": "Sketchy-Ext", "sketchy-fg": "Sketchy-FG", "tuberlin": "TU-Berlin-Ext",
                  "quickdraw": "QuickDraw-Ext", "mini": "mini"}


def _layout(cells: pd.DataFrame) -> Tuple[List[str], List[Column]]:
    order = metric_names(pd.DataFrame(columns=[f"metric:{m}" for m in cells["metric"].unique()]))
    blocks = sorted(set(zip(cells["dataset"], cells["split"], cells["setting"])),
                    key=lambda b: (b[0], b[1], SETTING_ORDER.get(b[2], 9), b[2]))
    columns = [(d, s, st, m) for d, s, st in blocks for m in order
               if ((cells["dataset"] == d) & (cells["split"] == s) & (cells["setting"] == st) & (cells["metric"] == m)).any()]
    ours = sorted(cells.loc[~cells["reference"].astype(bool), "row"].unique())
    refs = sorted(cells.loc[cells["reference"].astype(bool), "row"].unique())
    return ours + refs, columns


def _index(cells: pd.DataFrame) -> Dict[Tuple[str, Column], dict]:
    return {(r["row"], (r["dataset"], r["split"], r["setting"], r["metric"])): r for r in cells.to_dict("records")}


def _ranks(rows: List[str], columns: List[Column], index) -> Dict[Tuple[str, Column], int]:
    """1 for the best value of each column, 2 for the second (ties share a rank)."""
    out = {}
    for col in columns:
        values = sorted({round(index[(r, col)]["mean"], 12) for r in rows if (r, col) in index}, reverse=True)
        for r in rows:
            if (r, col) in index:
                v = round(index[(r, col)]["mean"], 12)
                out[(r, col)] = values.index(v) + 1
    return out


def _has(cells: pd.DataFrame, key: str) -> bool:
    return bool(cells[key].notna().any())


def _num(x: float, digits: int) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _cell_text(c: dict, digits: int) -> str:
    text = _num(c["mean"], digits)
    if not c["reference"] and c["n"] > 1:
        text += f" ± {_num(c['std'], digits)}"
    if not c["reference"]:
        text += f" ({c['n']})"
    if not math.isnan(c["ci_lo"]):
        text += f" [{_num(c['ci_lo'], digits)}, {_num(c['ci_hi'], digits)}]"
    return text


def _extras(cells: pd.DataFrame) -> List[str]:
    return [k for k in ("delta", "p") if _has(cells, k)]


def _extra_text(c: dict, key: str, digits: int) -> str:
    if c is None or math.isnan(c[key]):
        return "-"
    return f"{c[key]:+.{digits}f}" if key == "delta" else (f"{c[key]:.4f}" if c[key] >= 1e-4 else "<1e-4")


def _header(col: Column) -> str:
    d, s, st, m = col
    return f"{DATASET_TITLES.get(d, d)}{'' if s in ('1', '') else f' (split {s})'} {st.upper()} {m}"


def to_text(cells: pd.DataFrame, digits: int = 3) -> str:
    """Aligned plain-text table for the terminal."""
    rows, columns = _layout(cells)
    index = _index(cells)
    extras = _extras(cells)
    head = ["method"] + [h for col in columns for h in [_header(col)] + [f"{'Δ' if e == 'delta' else 'p'}" for e in extras]]
    body = []
    for r in rows:
        line = [r]
        for col in columns:
            c = index.get((r, col))
            line.append(_cell_text(c, digits) if c else "-")
            line += [_extra_text(c, e, digits) for e in extras]
        body.append(line)
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    fmt = lambda line: "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths)))
    rule = "-" * len(fmt(head))
    return "\n".join([rule, fmt(head), rule, *[fmt(b) for b in body], rule])


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("$", r"\$")):
        text = text.replace(a, b)
    return text


def to_latex(cells: pd.DataFrame, digits: int = 3, caption: str = "", label: str = "tab:sbir") -> str:
    """A booktabs table: dataset/setting header spanning its metric columns; best bold, second underlined."""
    rows, columns = _layout(cells)
    index, ranks = _index(cells), _ranks(rows, columns, _index(cells))
    extras = _extras(cells)
    per = 1 + len(extras)
    blocks: List[Tuple[Tuple[str, str, str], int]] = []
    for col in columns:
        key = col[:3]
        if blocks and blocks[-1][0] == key:
            blocks[-1] = (key, blocks[-1][1] + per)
        else:
            blocks.append((key, per))
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{_latex_escape(caption)}}}")
    lines += [rf"\label{{{label}}}", r"\begin{tabular}{l" + "c" * (len(columns) * per) + "}", r"\toprule"]
    top, rules, start = ["Method"], [], 2
    for (d, s, st), span in blocks:
        title = f"{DATASET_TITLES.get(d, d)}{'' if s in ('1', '') else f' (split {s})'} {st.upper()}"
        top.append(rf"\multicolumn{{{span}}}{{c}}{{{_latex_escape(title)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    lines += [" & ".join(top) + r" \\", " ".join(rules)]
    sub = [""]
    for col in columns:
        sub.append(_latex_escape(col[3]))
        sub += [r"$\Delta$" if e == "delta" else "$p$" for e in extras]
    lines += [" & ".join(sub) + r" \\", r"\midrule"]
    ours_done = False
    for r in rows:
        c0 = [index.get((r, col)) for col in columns]
        if not ours_done and any(c is not None and c["reference"] for c in c0):
            lines.append(r"\midrule")
            ours_done = True
        out = [_latex_escape(r)]
        for col, c in zip(columns, c0):
            if c is None:
                out.append("-")
            else:
                value = _num(c["mean"], digits)
                if not c["reference"] and c["n"] > 1:
                    value += rf"$\pm${_num(c['std'], digits)}"
                rank = ranks[(r, col)]
                value = rf"\textbf{{{value}}}" if rank == 1 else (rf"\underline{{{value}}}" if rank == 2 else value)
                out.append(value)
            out += [_latex_escape(_extra_text(c, e, digits)).replace("<", r"$<$") for e in extras]
        lines.append(" & ".join(out) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_markdown(cells: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table; best bold, second underlined."""
    rows, columns = _layout(cells)
    index = _index(cells)
    ranks = _ranks(rows, columns, index)
    extras = _extras(cells)
    head = ["Method"] + [h for col in columns for h in [_header(col)] + ["Δ" if e == "delta" else "p" for e in extras]]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + [":---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        out = [r]
        for col in columns:
            c = index.get((r, col))
            if c is None:
                out.append("-")
            else:
                text = _cell_text(c, digits)
                rank = ranks[(r, col)]
                out.append(f"**{text}**" if rank == 1 else (f"<u>{text}</u>" if rank == 2 else text))
            out += [_extra_text(c, e, digits) for e in extras]
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def to_csv(cells: pd.DataFrame) -> str:
    """The long (tidy) table, one cell per line, fixed order and float format."""
    ordered = cells.sort_values(["reference", "row", "dataset", "split", "setting", "metric"]).reset_index(drop=True)
    return ordered.to_csv(index=False, float_format="%.6f", lineterminator="\n")


RENDERERS = {"latex": to_latex, "markdown": to_markdown, "csv": to_csv, "text": to_text}
