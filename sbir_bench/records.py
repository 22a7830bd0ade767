"""Run records: one JSON file per run, written atomically, read back tolerantly.

A record carries everything needed to trust and reproduce a number: method, dataset, setting, split,
backbone, seed, the full resolved config, metrics, evaluation protocol, timings, package versions,
git commit and host. ``compare`` reads a folder of them; a corrupt or foreign JSON file is reported
and skipped, never fatal.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

SCHEMA = "sbir-bench/run-record/v1"
REQUIRED_KEYS = ("schema", "method", "dataset", "setting", "split", "backbone", "seed", "config", "metrics")
PACKAGES = ("sbir-bench", "torch", "torchvision", "open_clip_torch", "numpy", "scipy", "pandas")


def package_versions() -> Dict[str, str]:
    """Installed versions of the packages that can change a number."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(start: Optional[Path] = None) -> Optional[str]:
    """HEAD commit (with ``-dirty``) of the checkout holding sbir-bench, if any."""
    cwd = start or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> Dict[str, Any]:
    """Where and with what a run was produced."""
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
            "packages": package_versions(), "python": platform.python_version(), "host": platform.node(),
            "platform": platform.platform()}


def run_name(method: str, dataset: str, setting: str, split: str, seed: int) -> str:
    """Stable name of a run configuration (checkpoints of a resumable run live under it)."""
    return f"{method}_{dataset}_{setting}_split{split}_seed{seed}"


def split_label(split: str, split_file: Optional[str] = None, for_record: bool = False) -> str:
    """The split as records show it (``file:<path>`` for a custom split) or as run names use it
    (``file-<stem>-<content hash>``, so two custom splits never share checkpoints)."""
    if not split_file:
        return str(split)
    if for_record:
        return f"file:{split_file}"
    digest = hashlib.sha256(Path(split_file).read_bytes()).hexdigest()[:8]
    return f"file-{Path(split_file).stem}-{digest}"


def data_split(data, for_record: bool = False) -> str:
    """The split of a run's ``data`` section (a ``config.DataConfig``) as records and run names show it:
    :func:`split_label`, and on a multi-domain benchmark the held-out domain, with the gallery where it
    is not the default one (``sketch``, ``sketch-g1``, ``painting-heldout``) and a query domain that is not the
    held-out one (``sketch-qquickdraw-g1``): tables give each its column."""
    from .data.domains import DOMAIN_SETTINGS  # light: the CLI imports records without the data stack

    if data.setting not in DOMAIN_SETTINGS:
        return split_label(data.split, data.split_file, for_record)
    gallery = {("ucdr", "g1"): "-g1", ("udcdr", "held-out"): "-heldout"}
    query = f"-q{data.query_domain}" if data.query_domain and data.query_domain != data.held_out_domain else ""
    return data.held_out_domain + query + gallery.get((data.setting, data.ucdr_gallery if data.setting == "ucdr"
                                                        else data.udcdr_gallery), "")


@dataclass
class LoadedRecord:
    path: Path
    data: Dict[str, Any]


def validate_record(data: Any) -> Optional[str]:
    """Why ``data`` is not a run record, or None if it is one."""
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.get("schema") != SCHEMA:
        return f"schema is {data.get('schema')!r}, not {SCHEMA!r}"
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        return f"missing {', '.join(missing)}"
    if not isinstance(data["metrics"], dict) or not data["metrics"]:
        return "metrics is not a non-empty object"
    for name, value in data["metrics"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"metric {name} is {value!r}, not a finite number"
    if not isinstance(data.get("seed"), int) or isinstance(data.get("seed"), bool):
        return f"seed is {data.get('seed')!r}, not an integer"
    return None


def load_records(paths: Iterable[Path]) -> Tuple[List[LoadedRecord], List[Tuple[Path, str]]]:
    """Read run records; return (records, [(path, reason)] for files that were skipped)."""
    good: List[LoadedRecord] = []
    bad: List[Tuple[Path, str]] = []
    for p in sorted(set(Path(x) for x in paths)):
        try:
            data = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            bad.append((p, f"unreadable JSON ({type(exc).__name__})"))
            continue
        reason = validate_record(data)
        if reason:
            bad.append((p, reason))
        else:
            good.append(LoadedRecord(p, data))
    return good, bad


def find_record_files(patterns: Iterable[str], default_dir: str | Path = "results/runs") -> List[Path]:
    """Expand globs / folders / files into JSON file paths (default: every record under ``default_dir``)."""
    pats = list(patterns) or [str(default_dir)]
    out: List[Path] = []
    for pat in pats:
        p = Path(pat)
        if p.is_dir():
            out += sorted(p.glob("*.json"))
        else:
            out += [Path(x) for x in sorted(glob.glob(pat, recursive=True)) if x.endswith(".json")]
    return [p for p in out if p.is_file()]  # regular files only: reading a FIFO named x.json would hang


def beside_record(record_path: str | Path, stored: Optional[str]) -> str:
    """Where a file a record names (``model``, ``embeddings``, ``per_query``) is now: the file of that
    name beside the record (``<folder>/<run-id>/<name>``), else the stored path, else ''.

    A results folder that was copied or moved keeps its files beside its records; looking there first
    means a copy uses its own embeddings and model, never the original's at the stored absolute path.

    >>> beside_record("/nowhere/run.json", "")
    ''
    """
    if not stored:
        return ""
    record_path, kept = Path(record_path), Path(stored)
    here = record_path.parent / record_path.stem / kept.name
    if here.is_file():
        return str(here)
    relative = record_path.parent / kept
    return str(relative) if not kept.is_absolute() and relative.is_file() else str(kept)

