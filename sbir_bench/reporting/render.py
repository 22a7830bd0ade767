"""Render the long comparison table as text, LaTeX (booktabs), Markdown or CSV.

Columns are grouped by (dataset, split, setting), then metric; rows are methods (published
reference rows last). In LaTeX and Markdown the best value of each metric column is bold and the
second best underlined (higher is better for every sbir-bench metric); a missing cell is ``-``.
Output depends only on the cells, in a fixed order with fixed formatting, so the same runs give the
same bytes.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from ..data.tasks import SETTINGS
from ..plugins import DATASETS
from ..retrieval.protocol import metric_sort_key

Column = Tuple[str, str, str, str]  # dataset, split, setting, metric
SETTING_ORDER = {s: i for i, s in enumerate(SETTINGS)}


def dataset_title(name: str) -> str:
    """The name papers print for a dataset (its spec's ``table_title``), or the name itself."""
    return (getattr(DATASETS.get(name), "table_title", "") or name) if name in DATASETS else name


def aligned(head: Sequence[str], body: Sequence[Sequence[str]], title: str = "", first_left: bool = True) -> str:
    """The one plain-text table renderer: columns right-aligned (the first left-aligned), ruled.

    >>> print(aligned(["metric", "value"], [["mAP@all", "0.5000"]]))
    ---------------
    metric    value
    ---------------
    mAP@all  0.5000
    ---------------
    """
    widths = [max(len(str(row[i])) for row in [head, *body]) for i in range(len(head))]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(str(x).ljust(w) if i == 0 and first_left else str(x).rjust(w)
                         for i, (x, w) in enumerate(zip(row, widths)))
    rule = "-" * max(len(fmt(head)), len(title))
    return "\n".join(x for x in (title, rule, fmt(head), rule, *[fmt(b) for b in body], rule) if x)


def metrics_table(metrics: Mapping[str, Any], title: str = "") -> str:
    """One row of metric values (4 decimals) under their names, with an optional title."""
    values = [f"{v:.4f}" if isinstance(v, (int, float)) else str(v) for v in metrics.values()]
    return aligned(list(metrics), [values], title, first_left=False)


def record_table(record: Dict[str, Any]) -> str:
    """The metrics of one run record, titled with what was run."""
    title = (f"{record['method']} | {record['dataset']} split {record['split']} | {record['setting']} | "
             f"{record['backbone']}{'/' + record['pretrained'] if record.get('pretrained') else ''} | "
             f"seed {record['seed']} | {record.get('n_evaluated', '?')} queries | protocol {record['protocol']['preset']}")
    return metrics_table(record["metrics"], title)


def protocols_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """Every metric (rows) under every protocol (columns), with the spread max - min per metric."""
    names = sorted({m for r in results.values() for m in r}, key=metric_sort_key)
    presets = list(results)
    body = []
    for m in names:
        values = [results[p].get(m) for p in presets]
        present = [v for v in values if v is not None]
        body.append([m, *[_num(v, 4) for v in values], _num(max(present) - min(present), 4) if present else "-"])
    return aligned(["metric", *presets, "spread"], body)


def _layout(cells: pd.DataFrame) -> Tuple[List[str], List[Column]]:
    order = sorted(cells["metric"].unique(), key=metric_sort_key)
    blocks = sorted(set(zip(cells["dataset"], cells["split"], cells["setting"])),
                    key=lambda b: (b[0], b[1], SETTING_ORDER.get(b[2], 9), b[2]))
    columns = [(d, s, st, m) for d, s, st in blocks for m in order
               if ((cells["dataset"] == d) & (cells["split"] == s) & (cells["setting"] == st) & (cells["metric"] == m)).any()]
    ours = sorted(cells.loc[~cells["reference"].astype(bool), "row"].unique())
    published = cells[cells["reference"].astype(bool)]
    refs = list(dict.fromkeys(published.sort_values("order", kind="stable")["row"]))  # the paper's row order
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


UNKNOWN_MARK = "?"


def _extra_text(c: dict, key: str, digits: int) -> str:
    if c is None or math.isnan(c[key]):
        return "-"
    if key == "delta":
        return f"{c[key]:+.{digits}f}" + (UNKNOWN_MARK if c.get("delta_note") else "")
    return f"{c[key]:.4f}" if c[key] >= 1e-4 else "<1e-4"


def footnotes(cells: pd.DataFrame) -> List[str]:
    """What a marked delta means (printed under text and Markdown tables, and in LaTeX)."""
    notes = sorted({n for n in cells.get("delta_note", pd.Series(dtype=str)).fillna("") if n})
    if not notes:
        return []
    return [f"{UNKNOWN_MARK} delta against a published number whose evaluation code is not public or whose protocol "
            f"our records lack ({'; '.join(notes)}): it uses our run's own protocol"]


def _header(col: Column) -> str:
    d, s, st, m = col
    return f"{dataset_title(d)}{'' if s in ('1', '') else f' (split {s})'} {st.upper()} {m}"


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
    return "\n".join([aligned(head, body), *footnotes(cells)])


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Escape every LaTeX special character in one pass (so escapes are never escaped again).

    >>> print(latex_escape("a_b{c}~^"))
    a\\_b\\{c\\}\\textasciitilde{}\\textasciicircum{}
    """
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_blocks(columns: List[Column], per: int) -> List[Tuple[Tuple[str, str, str], int]]:
    """(dataset, split, setting) header groups and how many table columns each spans."""
    blocks: List[Tuple[Tuple[str, str, str], int]] = []
    for col in columns:
        if blocks and blocks[-1][0] == col[:3]:
            blocks[-1] = (col[:3], blocks[-1][1] + per)
        else:
            blocks.append((col[:3], per))
    return blocks


def _latex_header(columns: List[Column], extras: List[str]) -> List[str]:
    per = 1 + len(extras)
    top, rules, start = ["Method"], [], 2
    for (d, s, st), span in _latex_blocks(columns, per):
        title = f"{dataset_title(d)}{'' if s in ('1', '') else f' (split {s})'} {st.upper()}"
        top.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(title)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    sub = [""]
    for col in columns:
        sub.append(latex_escape(col[3]))
        sub += [r"$\Delta$" if e == "delta" else "$p$" for e in extras]
    return [" & ".join(top) + r" \\", " ".join(rules), " & ".join(sub) + r" \\", r"\midrule"]


def _latex_value(c: dict, rank: int, digits: int) -> str:
    value = _num(c["mean"], digits)
    if not c["reference"] and c["n"] > 1:
        value += rf"$\pm${_num(c['std'], digits)}"
    return rf"\textbf{{{value}}}" if rank == 1 else (rf"\underline{{{value}}}" if rank == 2 else value)


def _latex_label(row: str, cells: List[Optional[dict]]) -> str:
    r"""The row name, with ``\cite{key}`` for a published row that has a bib key."""
    key = next((c["bibkey"] for c in cells if c is not None and c.get("bibkey")), "")
    return latex_escape(row) + (rf"~\cite{{{key}}}" if key else "")


def to_latex(cells: pd.DataFrame, digits: int = 3, caption: str = "", label: str = "tab:sbir") -> str:
    """A booktabs table: dataset/setting header spanning its metric columns; best bold, second underlined;
    published rows (after a rule) cite their paper; a marked delta is explained under the table."""
    rows, columns = _layout(cells)
    index = _index(cells)
    ranks, extras = _ranks(rows, columns, index), _extras(cells)
    lines = [r"\begin{table}[t]", r"\centering"] + ([rf"\caption{{{latex_escape(caption)}}}"] if caption else [])
    lines += [rf"\label{{{label}}}", r"\begin{tabular}{l" + "c" * (len(columns) * (1 + len(extras))) + "}", r"\toprule"]
    lines += _latex_header(columns, extras)
    ours_done = False
    for r in rows:
        row_cells = [index.get((r, col)) for col in columns]
        if not ours_done and any(c is not None and c["reference"] for c in row_cells):
            lines.append(r"\midrule")
            ours_done = True
        out = [_latex_label(r, row_cells)]
        for col, c in zip(columns, row_cells):
            out.append("-" if c is None else _latex_value(c, ranks[(r, col)], digits))
            out += [latex_escape(_extra_text(c, e, digits)).replace("<", r"$<$") for e in extras]
        lines.append(" & ".join(out) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [rf"\par\smallskip{{\footnotesize {latex_escape(note)}}}" for note in footnotes(cells)]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_markdown(cells: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table; best bold, second underlined (the layout of :func:`table_data`)."""
    table = table_data(cells, digits)
    marks = {1: "**{}**", 2: "<u>{}</u>"}
    lines = ["| " + " | ".join(["Method"] + table["head"]) + " |",
             "|" + "|".join(["---"] + [":---:"] * len(table["head"])) + "|"]
    for row in table["rows"]:
        values = [marks.get(v["rank"], "{}").format(v["text"]) for v in row["values"]]
        lines.append("| " + " | ".join([row["label"]] + values) + " |")
    return "\n".join(lines + ["", *table["notes"]] if table["notes"] else lines) + "\n"


def table_data(cells: pd.DataFrame, digits: int = 3) -> Dict[str, Any]:
    """The table as :func:`to_markdown` lays it out, as data for a page that sorts it: ``head``, and per
    row its label, whether it is a literature row, and per column the text shown, the mean (to sort
    by, None where empty) and its rank (1 best, 2 second); ``notes`` the footnotes."""
    rows, columns = _layout(cells)
    index = _index(cells)
    ranks = _ranks(rows, columns, index)
    extras = _extras(cells)
    head = [h for col in columns for h in [_header(col)] + ["Δ" if e == "delta" else "p" for e in extras]]
    body = []
    for r in rows:
        values = []
        for col in columns:
            c = index.get((r, col))
            values.append({"text": _cell_text(c, digits) if c else "-", "mean": None if c is None else float(c["mean"]),
                           "rank": ranks.get((r, col))})
            values += [{"text": _extra_text(c, e, digits), "mean": None, "rank": None} for e in extras]
        reference = any(bool(index[(r, col)]["reference"]) for col in columns if (r, col) in index)
        body.append({"label": r, "reference": reference, "values": values})
    return {"head": head, "rows": body, "notes": footnotes(cells)}


def to_csv(cells: pd.DataFrame) -> str:
    """The long (tidy) table, one cell per line, fixed order and float format."""
    ordered = cells.sort_values(["reference", "order", "row", "dataset", "split", "setting", "metric"])
    return ordered.drop(columns=["order"]).reset_index(drop=True).to_csv(index=False, float_format="%.6f",
                                                                         lineterminator="\n")


RENDERERS = {"latex": to_latex, "markdown": to_markdown, "csv": to_csv, "text": to_text}
