"""Training curves as they happen, in the trackers researchers use: CSV, TensorBoard, W&B, MLflow.

``--report-to csv,tensorboard`` (or the config key ``report_to``, comma-separated as Hugging Face's
``report_to``) sends every loss term, the total loss, learning rate, gradient norm, images/s and peak
GPU memory per optimiser step, seen-class validation metrics per epoch, the final test metrics, and
the resolved config as parameters. Everything is local unless the user says otherwise:

* ``csv``: ``<run-id>/metrics.csv`` (``step,name,value``), needs nothing;
* ``tensorboard``: event files in ``<run-id>/tensorboard/``;
* ``wandb``: an offline run in ``<run-id>/wandb/`` unless ``WANDB_MODE`` says otherwise;
* ``mlflow``: ``sqlite:///<output-dir>/mlflow.db`` unless ``--tracking-uri`` names another store.

The three libraries are an optional extra (the ``track`` extra), imported only when asked
for; asking for one that is not installed is a one-line error before any work. The tracker's run is
named by the sbir-bench run id and the record lists where each tracker wrote, so each leads to the
other. Only rank 0 reports under torchrun. A tracker that fails mid-run (disk full, server gone) is a
warning and is switched off: a run is never lost to its tracker.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from .errors import ConfigError
from .extras import is_installed, missing
from .log import get_logger, quiet_library
from .plugins import TRACKERS

log = get_logger(__name__)


class Tracker:
    """What a tracker is: built for one run (its folder, id, config and the tracking URI), it logs values
    per step and says where it wrote when finished. Register one with ``@TRACKERS.register("name")`` (the
    built-ins below) or through the ``sbir_bench.trackers`` entry-point group; ``needs`` names the module it
    imports (an extra of :mod:`sbir_bench.extras`), checked before any work."""

    needs: Optional[str] = None

    def __init__(self, folder: Path, run_id: str, config: Dict[str, Any], uri: Optional[str]) -> None:
        raise NotImplementedError

    def log(self, values: Dict[str, float], step: int) -> None:
        raise NotImplementedError

    def finish(self) -> Dict[str, Any]:
        raise NotImplementedError


def parse_report_to(text: str) -> List[str]:
    """``"csv,tensorboard"`` -> ["csv", "tensorboard"]; ``none`` or "" -> []; unknown names are an error."""
    names = [n.strip() for n in (text or "").split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"report_to: unknown tracker {unknown[0]!r}; choose from none, {', '.join(TRACKERS.names())}")
    return list(dict.fromkeys(names))


MLFLOW_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


def check_available(names: List[str], tracking_uri: Optional[str] = None) -> None:
    """Before any work: one line naming the extra when a requested tracker's library is not installed,
    or when ``--tracking-uri`` is not a store MLflow can open (its scheme is checked, nothing is dialled)."""
    if tracking_uri:
        scheme = tracking_uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in tracking_uri else ""
        if scheme not in MLFLOW_SCHEMES:
            raise ConfigError(f"--tracking-uri {tracking_uri}: MLflow opens no {scheme!r} store; give sqlite:///FILE.db, "
                              f"file:///FOLDER, http(s)://SERVER or a folder")
    for name in names:
        module = TRACKERS.get(name).needs
        if module and not is_installed(module):
            raise missing(module, f"--report-to {name}")


def flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (the config as tracker parameters)."""
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@TRACKERS.register("csv")
class CsvTracker(Tracker):
    """``metrics.csv`` in the run folder, one ``step,name,value`` row per value."""

    def __init__(self, folder: Path, run_id: str, config: Dict[str, Any], uri: Optional[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "metrics.csv"
        self._fh = open(self.path, "w", newline="")
        self._writer = csv.writer(self._fh)
        self._writer.writerow(["step", "name", "value"])
        (folder / "params.json").write_text(json.dumps(flatten(config), sort_keys=True, default=str))

    def log(self, values: Dict[str, float], step: int) -> None:
        for name, value in values.items():
            self._writer.writerow([step, name, repr(float(value))])
        self._fh.flush()

    def finish(self) -> Dict[str, Any]:
        self._fh.close()
        return {"csv": str(self.path)}


@TRACKERS.register("tensorboard")
class TensorBoardTracker(Tracker):
    """TensorBoard event files in ``<run folder>/tensorboard``; the config as a JSON text entry."""

    needs = "tensorboard"

    def __init__(self, folder: Path, run_id: str, config: Dict[str, Any], uri: Optional[str]) -> None:
        # optional (the track extra): imported only when this tracker is asked for
        from torch.utils.tensorboard import SummaryWriter
        self.dir = folder / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.dir))
        self.writer.add_text("config", json.dumps(config, sort_keys=True, default=str))
        self.writer.add_text("sbir_bench_run_id", run_id)

    def log(self, values: Dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, float(value), step)
        self.writer.flush()

    def finish(self) -> Dict[str, Any]:
        self.writer.close()
        return {"tensorboard": str(self.dir)}


@TRACKERS.register("wandb")
class WandbTracker(Tracker):
    """A W&B run, offline (files in ``<run folder>/wandb``) unless ``WANDB_MODE`` is set."""

    needs = "wandb"

    def __init__(self, folder: Path, run_id: str, config: Dict[str, Any], uri: Optional[str]) -> None:
        # optional (the track extra): imported only when this tracker is asked for
        import wandb
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(mode=os.environ.get("WANDB_MODE", "offline"), dir=str(folder), name=run_id,
                              config=flatten(config), tags=["sbir-bench"], reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off"))
        log.info(f"W&B run {self.run.id} ({self.run.settings.mode}) in {self.run.dir}")
        self.run.summary["sbir_bench_run_id"] = run_id

    def log(self, values: Dict[str, float], step: int) -> None:
        self.run.log({k: float(v) for k, v in values.items()}, step=step)

    def finish(self) -> Dict[str, Any]:
        where = {"wandb": {"dir": str(self.run.dir), "id": self.run.id}}
        self.run.finish()
        return where


def _mlflow_name(name: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / space``: ``mAP@all`` -> ``mAP_at_all``, and a
    selection protocol's ``pros:mAP@200`` -> ``pros_mAP_at_200``.

    >>> _mlflow_name("val/pros:mAP@200")
    'val/pros_mAP_at_200'
    """
    return name.replace("@", "_at_").replace(":", "_")


@TRACKERS.register("mlflow")
class MlflowTracker(Tracker):
    """An MLflow run in a local SQLite store (``<output-dir>/mlflow.db``) unless a tracking URI is given."""

    needs = "mlflow"

    def __init__(self, folder: Path, run_id: str, config: Dict[str, Any], uri: Optional[str]) -> None:
        # optional (the track extra): imported only when this tracker is asked for
        import alembic
        import mlflow
        from mlflow.tracking import MlflowClient
        self.uri = uri or f"sqlite:///{(folder.parent / 'mlflow.db').resolve()}"
        with quiet_library(mlflow), quiet_library(alembic):  # "Creating initial MLflow database tables..."
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment = self.client.get_experiment_by_name("sbir-bench")
            exp_id = experiment.experiment_id if experiment else self.client.create_experiment("sbir-bench")
        self.run_id = self.client.create_run(exp_id, run_name=run_id, tags={"sbir_bench.run_id": run_id}).info.run_id
        for key, value in flatten(config).items():
            self.client.log_param(self.run_id, key, str(value)[:500])

    def log(self, values: Dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.client.log_metric(self.run_id, _mlflow_name(name), float(value), step=step)

    def finish(self) -> Dict[str, Any]:
        self.client.set_terminated(self.run_id)
        return {"mlflow": {"tracking_uri": self.uri, "run_id": self.run_id}}


class Trackers:
    """Every requested tracker behind one ``log``; a tracker that raises is warned about and dropped."""

    def __init__(self, names: List[str], folder: Path, run_id: str, config: Dict[str, Any],
                 uri: Optional[str] = None) -> None:
        self.active: Dict[str, Any] = {}
        self.where: Dict[str, Any] = {}
        for name in names:
            self._guard(name, lambda n=name: self.active.__setitem__(n, TRACKERS.get(n)(folder, run_id, config, uri)))

    def _guard(self, name: str, call) -> None:
        try:
            call()
        except Exception as exc:  # any failure of a tracker library: the run goes on without it
            why = str(exc).splitlines()[0][:160] if str(exc) else ""
            log.warning(f"tracker {name} failed ({type(exc).__name__}: {why}); the run goes on without it")
            self.active.pop(name, None)

    def log(self, values: Dict[str, float], step: int) -> None:
        for name, tracker in list(self.active.items()):
            self._guard(name, lambda t=tracker: t.log(values, step))

    def finish(self) -> Dict[str, Any]:
        """Close every tracker; returns where each wrote (for the record)."""
        for name, tracker in list(self.active.items()):
            self._guard(name, lambda t=tracker: self.where.update(t.finish()))
        self.active = {}
        return self.where


class NoTrackers(Trackers):
    """What non-zero ranks and runs without ``report_to`` get: logs nothing."""

    def __init__(self) -> None:
        self.active, self.where = {}, {}
