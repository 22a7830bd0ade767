"""A paper table from a folder of runs: the user's rows beside the literature's, with deltas.

``reproduce`` writes it when its cells are done, and the last cluster job of a table writes it too
(:mod:`sbir_bench.launchers`); both call :func:`write_table`, which reads only records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Dict, Optional

from ..errors import SbirError
from ..fileio import atomic_write_bytes
from ..locations import published_folder
from ..log import get_logger
from .collect import runs_frame
from .compare import compare, load_reference
from .render import to_csv, to_latex, to_markdown

log = get_logger(__name__)


def write_table(setting: str, output_dir: Path, configs: Optional[Collection[str]] = None) -> Dict[str, Path]:
    """The table of ``setting``: the runs in ``output_dir`` plus every literature row of the paper's
    table, with deltas; written as Markdown, LaTeX and CSV next to the runs.

    ``configs``: the config ids (:func:`~sbir_bench.config.config_id`) the table answers
    (``reproduce``'s planned cells); a record of another config in the folder (an earlier request
    whose resume was refused) is left out, with one warning, instead of standing in for the new one."""
    frame = runs_frame([], output_dir, settings=[setting])
    if configs is not None and not frame.empty:
        other = ~frame["config_id"].isin(set(configs))
        if other.any():
            log.warning(f"{int(other.sum())} record(s) in {output_dir} were run with another config than this request's "
                        f"cells; left out of the table")
        frame = frame[~other]
    if frame.empty:
        raise SbirError(f"no finished {setting} run in {output_dir}: nothing to tabulate")
    cells = compare(frame, load_reference(published_folder()), all_reference_blocks=True)
    written = {}
    for fmt, text in (("md", to_markdown(cells)), ("tex", to_latex(cells, caption=f"{setting.upper()}-SBIR")),
                      ("csv", to_csv(cells))):
        written[fmt] = atomic_write_bytes(Path(output_dir) / f"table_{setting}.{fmt}", text.encode())
    return written
