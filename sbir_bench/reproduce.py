"""``sbir-bench reproduce zs|gzs|fg``: every cell of one of SpLIP's tables, for SpLIP and each baseline.

A *cell* is one dataset column of the paper's table run with one method: its config lives in
``configs/paper/<setting>/<cell>/<method>.yaml`` (each cell names its data; the method's recipe is
written once in ``configs/paper/recipes/``). ``--dataset mini`` runs the mini-set recipes
(``configs/mini/``) instead, so the whole pipeline can be tried anywhere.

For every (cell, method, seed) the plan says whether the run is done (a record with the same
config exists), can resume (a checkpoint exists), can reuse the model of an identical training
(the GZS cell of a split whose ZS cell has trained: :func:`~sbir_bench.runner.training_identity`),
must start, or cannot run here (dataset or weights missing, said in one line). Executing the plan
runs what it can (a :class:`~sbir_bench.launchers.Launcher`: here, N at a time, or as cluster jobs), and
the table is written (:mod:`sbir_bench.reporting.tables`) with the user's rows, the literature's rows
of that table, and deltas to the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .artifacts import artifact_run_id, find_reusable
from .config import SELECTIONS, TEST_SELECTED, RunConfig, build_run_config, load_yaml
from .data.catalog import get_spec
from .data.discovery import default_data_root, locate, resolve_root
from .data.domains import DOMAIN_SETTINGS
from .data.tasks import SETTINGS  # one paper table per setting
from .errors import ConfigError, DataError, SbirError
from .locations import recipes_folder
from .log import get_logger
from .methods import METHODS, get_method
from .models.factory import WeightsNotCached, check_weights_source
from .methods.base import resolved_method_config
from .runner import check_method_data, finished_record, has_checkpoint, training_identity

log = get_logger(__name__)


@dataclass
class Cell:
    """One column block of a paper table run by one method, and the config file that describes it."""

    setting: str
    name: str
    method: str
    path: Path


@dataclass
class PlannedRun:
    """A (cell, seed) with its resolved config and what would happen to it."""

    cell: Cell
    seed: int
    cfg: Optional[RunConfig]
    status: str  # done | run | resume | reuse | missing: <why> | refused: <why> (the method does not run there)
    model: Optional[Path] = None  # with "reuse": the artifact of an identical training
    note: str = ""  # what a dry run could not check without the network (weights not cached yet)

    def describe(self) -> str:
        """One line: cell, method, seed, what it needs and its status."""
        cfg = self.cfg
        needs = f"{cfg.data.dataset} split {cfg.data.split}, {cfg.backbone.name}/{cfg.backbone.pretrained or 'default'}"
        reuse = f" the model of {artifact_run_id(self.model)} (same training)" if self.model else ""
        note = f"  ({self.note})" if self.note else ""
        return (f"{self.cell.setting}/{self.cell.name:<15} {self.cell.method:<14} seed {self.seed}  needs {needs}  "
                f"-> {self.status}{reuse}{note}")

    @property
    def runnable(self) -> bool:
        return self.status in ("run", "resume", "reuse")

    @property
    def skipped(self) -> bool:
        """Not run here: its data or weights are missing, or its method does not run on its dataset."""
        return self.status.startswith(("missing", "refused"))


def table_methods(methods: Sequence[str] = ()) -> List[str]:
    """The methods of the tables, from the registry (built-ins and plug-ins) in their rows' order
    (``Method.table_order``), or those of ``methods`` (unknown names are one line)."""
    unknown = [m for m in methods if m not in METHODS.names()]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; choose from: {', '.join(METHODS.names())}")
    ordered = sorted(METHODS.items(), key=lambda item: (item[1].table_order, item[0]))
    return [name for name, _ in ordered if not methods or name in methods]


def recipes_of(method: str):
    """The folder ``method``'s recipes lie in: its own (a plug-in's ``Method.recipes``) or the shipped ones."""
    return get_method(method).recipes or recipes_folder()


def cells(setting: str, datasets: Sequence[str] = (), methods: Sequence[str] = ()) -> List[Cell]:
    """The cells of ``setting``'s table (paper configs), or of the mini set when ``datasets`` is ``["mini"]``:
    every registered method with a recipe for the cell, built-in or plug-in."""
    if setting not in SETTINGS:
        raise ConfigError(f"unknown table {setting!r}; choose one of: {', '.join(SETTINGS)}")
    wanted = table_methods(methods)
    if list(datasets) == ["mini"]:
        return [Cell(setting, "mini", m, recipes_of(m) / "mini" / f"{m}.yaml") for m in wanted]
    root = recipes_folder() / "paper" / setting
    if not root.is_dir():
        raise ConfigError(f"no paper configs in {root}; this sbir-bench install lacks its recipes (reinstall it)")
    names = _cell_names(setting, wanted)
    found = [Cell(setting, name, m, recipes_of(m) / "paper" / setting / name / f"{m}.yaml") for name in names
             for m in wanted if (recipes_of(m) / "paper" / setting / name / f"{m}.yaml").is_file()]
    found = [c for c in found if not datasets or any(c.name == d or c.name.startswith(f"{d}-") for d in datasets)]
    if not found:
        raise ConfigError(f"no {setting} cell matches {', '.join(datasets) or 'any dataset'} and "
                          f"{', '.join(methods) or 'any method'}; cells are the folders of {root}")
    return found


def _cell_names(setting: str, methods: Sequence[str]) -> List[str]:
    """The cells (dataset columns) of ``setting``'s table that any of ``methods`` has recipes for."""
    names = set()
    for m in methods:
        folder = recipes_of(m) / "paper" / setting
        if folder.is_dir():
            names |= {d.name for d in folder.iterdir() if d.is_dir()}
    return sorted(names)


def _config(cell: Cell, seed: int, output_dir: Path, overrides: Dict[str, Any]) -> RunConfig:
    tree = load_yaml(cell.path)
    if cell.name == "mini":
        data = tree.setdefault("data", {})
        data["setting"] = cell.setting
        if cell.setting in DOMAIN_SETTINGS:  # the mini recipes' training knobs on the mini DomainNet world,
            data["dataset"] = "mini-domainnet"  # scored as the paper cells are (the ProS family's code)
            data.pop("val_fraction", None)
            tree.setdefault("eval", {})["protocol"] = "pros"
    return build_run_config(tree, {**overrides, "method": cell.method, "seed": seed, "output_dir": str(output_dir),
                                   "train.resume": True})


def _refused(cfg: RunConfig) -> str:
    """Why the cell's method does not run on its dataset at all (ProS on DomainNet, for now), or ''."""
    method_cls = get_method(cfg.method)
    try:
        check_method_data(cfg, method_cls, resolved_method_config(cfg, method_cls))
    except SbirError as exc:
        return str(exc)
    return ""


def _missing(cfg: RunConfig, network: bool) -> Tuple[str, str]:
    """(why this run cannot run here in a few words, or ''; a note on what was not checked).

    Without ``network`` (a dry run) weights that are not cached are a note, not a reason: a dry run
    never waits on a connection."""
    spec = get_spec(cfg.data.dataset)
    lacks, note = [], ""
    try:
        locate(spec, resolve_root(spec, cfg.data.data_root))
    except DataError:
        lacks.append(f"{spec.title} not found under {cfg.data.data_root or default_data_root()}")
    try:
        check_weights_source(cfg.backbone.name, cfg.backbone.pretrained, cfg.backbone.cache_dir, network=network)
    except WeightsNotCached as exc:
        note = str(exc)
    except SbirError as exc:
        lacks.append(str(exc).split(";")[0])
    return "; ".join(lacks), note


def model_folders(output_dir: Path) -> List[Path]:
    """Where an identical training's artifact may be: this table's folder, then the other tables'
    default folders beside it (``results/reproduce/zs`` for the ``gzs`` table)."""
    siblings = [output_dir.parent / s for s in SETTINGS if output_dir.parent / s != output_dir]
    return [output_dir, *[p for p in siblings if p.is_dir()]]


PATIENCE = 2  # early stopping added by --select-on where a recipe has none (ProS's official patience)


def selection_overrides(cell: Cell, seed: int, output_dir: Path, overrides: Dict[str, Any], selection: str
                        ) -> List[Dict[str, Any]]:
    """The overrides of each run a cell makes under ``reproduce --select-on``: ``recipe`` as the recipe
    says; ``validation`` / ``test`` one run choosing its kept epoch on that (early stopping with patience
    :data:`PATIENCE` every epoch where the recipe has none, the same in both); ``both`` the two, so that
    the table shows what test-set selection buys. A test-selected run carries the variant
    :data:`TEST_SELECTED` (its own row, run name and checkpoints); a method that trains nothing runs once."""
    if selection not in SELECTIONS:
        raise ConfigError(f"--select-on {selection!r}: choose one of: {', '.join(SELECTIONS)}")
    base = _config(cell, seed, output_dir, overrides)
    if selection == "recipe" or not get_method(cell.method).trainable:
        return [overrides]
    stopping = {} if base.train.early_stop else {"train.early_stop": PATIENCE, "train.val_every": 1}
    out = []
    for on in (("validation", "test") if selection == "both" else (selection,)):
        extra = {**stopping, "train.select_on": on}
        if on == "test":
            extra["variant"] = f"{base.variant}+{TEST_SELECTED}" if base.variant else TEST_SELECTED
        out.append({**overrides, **extra})
    return out


def plan(table_cells: Sequence[Cell], seeds: Sequence[int], output_dir: Path, overrides: Dict[str, Any],
         network: bool = True, selection: str = "recipe") -> List[PlannedRun]:
    """What each (cell, seed) needs and would do (nothing is run; ``network=False`` for a dry run);
    ``selection``: :func:`selection_overrides`."""
    out = []
    for cell in table_cells:
        for seed in seeds:
            for run_overrides in selection_overrides(cell, seed, output_dir, overrides, selection):
                out.append(_planned(cell, seed, output_dir, run_overrides, network))
    return out


def _planned(cell: Cell, seed: int, output_dir: Path, overrides: Dict[str, Any], network: bool) -> PlannedRun:
    """What one run of ``cell`` needs and would do."""
    cfg = _config(cell, seed, output_dir, overrides)
    refused = _refused(cfg)
    missing, note = ("", "") if refused else _missing(cfg, network)
    if refused:
        status = f"refused: {refused}"
    elif missing:
        status = f"missing: {missing}"
    elif finished_record(cfg) is not None:
        status = "done"
    elif has_checkpoint(cfg):
        status = "resume"
    else:
        model = find_reusable(model_folders(output_dir), training_identity(cfg))
        return PlannedRun(cell, seed, cfg, "reuse" if model else "run", model, note)
    return PlannedRun(cell, seed, cfg, status, note=note)
