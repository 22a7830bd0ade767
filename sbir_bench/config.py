"""Typed run configuration: dataclasses, loaded from YAML, overridden from the CLI, validated once.

Each field's constraints and help text live in its metadata (:func:`opt`); :func:`from_dict` (which
every YAML file, ``--set`` and CLI flag goes through) checks them, and the CLI builds its options from
the same metadata (:func:`option_type`), so a bound is written once. Every run writes
:func:`to_dict` of its fully resolved config into its record, so a number in a table can always be
traced back to the exact settings that produced it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import yaml

from .data.domains import HELD_OUT_DOMAINS, QUERY_DOMAINS, SEEN_SPLITS, UCDR_GALLERIES, UDCDR_GALLERIES
from .data.tasks import EPOCH_LENGTHS, GALLERIES, GZS_PROTOCOLS, SAMPLERS, SETTINGS
from .errors import ConfigError
from .gpus import parse_bytes, parse_memory
from .retrieval.protocol import DEFAULT_PRESET, PRESETS

DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?|mps"
# A variant label becomes part of file names (records, checkpoints, plots) and table rows: a safe,
# short character set, checked when the config is built (never a path, a space or a newline).
LABEL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}|"


SELECT_ON = ("validation", "test")  # train.select_on: what chooses the kept epoch under early stopping
SELECTIONS = ("recipe", "validation", "test", "both")  # reproduce --select-on (reproduce.selection_overrides)
TEST_SELECTED = "test-selected"  # the variant that names a test-selected reproduce run (own row and checkpoints)

# What a field says about a run's identity (declared on the field, read by :func:`keys_with_role`):
ROLES = {
    "training": "changes what is trained: part of a checkpoint's fingerprint and of a table row's identity",
    "evaluation": "changes the numbers, not the training: may change on resume; identifies a table row",
    "incidental": "where files go or how fast: identifies nothing",
    "seed": "the seed: part of the training; the seeds of one table row differ in it",
    "label": "part of the training, shown in a table as its own label rather than in the row's config id",
}


def opt(default: Any = dataclasses.MISSING, help: str = "", min: Optional[float] = None,
        max: Optional[float] = None, choices: Tuple[Any, ...] = (), pattern: str = "", positive: bool = False,
        factory: Any = dataclasses.MISSING, role: str = "training", parse: Optional[Callable[[Any], Any]] = None,
        below: Optional[float] = None) -> Any:
    """A config field with its help text, constraints (checked by :func:`validate`) and identity role
    (:data:`ROLES`): a new field is classified once, here, for resume, reuse and table rows alike.
    ``parse``: the function that will read the value (e.g. a memory size), run at validation so that a
    value it cannot read is one line before any work, never a traceback later."""
    assert role in ROLES, role
    meta = {"help": help, "min": min, "max": max, "choices": choices, "pattern": pattern, "positive": positive,
            "role": role, "parse": parse, "below": below}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    """Which dataset, split and setting to run, and how to load images."""

    dataset: str = opt("mini", "dataset name (see `sbir-bench datasets`)")
    setting: str = opt("zs", "zs, gzs or fg; ucdr or udcdr on DomainNet (docs/datasets.md)", choices=SETTINGS)
    split: str = opt("1", "official zero-shot split id (sketchy: 1 or 2)")
    split_file: Optional[str] = opt(None, "custom split: a file with one unseen class name per line")
    data_root: Optional[str] = opt(None, "folder holding the dataset (default: $SBIR_BENCH_DATA or ~/data/sbir)",
                                   role="incidental")
    image_size: Optional[int] = opt(None, "input size; default: the backbone's own", min=8)
    gzs_protocol: str = opt("sem-pcyc", "GZS composition: sem-pcyc (the literature's) or heldout (stricter)",
                            choices=GZS_PROTOCOLS)
    gzs_seen_photo_fraction: float = opt(0.2, "GZS: seen-class share (see docs/datasets.md)", min=0.0, max=1.0,
                                         positive=True)
    gallery: str = opt("unique", "ZS gallery: unique, or published (as SAKE's/ZSE-SBIR's lists: Sketchy's original "
                                 "photos listed twice; docs/metrics.md)", choices=GALLERIES, role="label")
    held_out_domain: str = opt("sketch", "DomainNet: the domain held out of training, whose images query (real is "
                                         "the gallery)", choices=HELD_OUT_DOMAINS)
    query_domain: str = opt("", "DomainNet ucdr: the domain whose unseen-class images query; default the held-out one; a "
                                "training domain gives the official trainers' extra seen-domain rows (unseen classes, "
                                "a domain trained on)", choices=("", *QUERY_DOMAINS))
    seen_split: str = opt("train+val", "DomainNet: seen classes: train+val (300: ProS, DePro) or train (245: "
                                       "SnMpNet, UCDR-Adapter; the 55 val classes validate)", choices=SEEN_SPLITS)
    ucdr_gallery: str = opt("g0", "DomainNet ucdr gallery: g0 (unseen-class real photos) or g1 (+ the 8 % of seen-"
                                  "class real photos held out of training)", choices=UCDR_GALLERIES)
    udcdr_gallery: str = opt("official", "DomainNet udcdr gallery: official (drawn real photos, all of them training "
                                         "images, as the official code) or held-out (never trained on)",
                             choices=UDCDR_GALLERIES)
    crop_scale_min: float = opt(0.8, "training augmentation: smallest random-resized-crop area (CoOp/MaPLe: 0.08)",
                                min=0.0, max=1.0, positive=True)
    val_fraction: float = opt(0.1, "share of seen-class sketches/photos held out for validation", min=0.0, max=0.9)
    max_per_class: Optional[int] = opt(None, "cap images per class (quick experiments)", min=1)
    workers: Optional[int] = opt(None, "DataLoader worker processes (default: automatic, from the cores)", min=0,
                                 role="incidental")
    pin_memory: bool = opt(True, "pin host memory for CUDA transfers", role="incidental")


@dataclass
class BackboneConfig:
    """Which open_clip model to build and where its weights come from."""

    name: str = opt("sbir-tiny", "open_clip model name, e.g. ViT-B-32")
    pretrained: Optional[str] = opt(None, "open_clip tag (e.g. openai), a local checkpoint PATH, or random")
    cache_dir: Optional[str] = opt(None, "where open_clip weights are cached", role="incidental")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every trainable method."""

    epochs: int = opt(2, "training epochs (ignored by methods that do not train)", min=1)
    batch_size: int = opt(32, "global training batch size", min=1)
    lr: float = opt(2e-3, "learning rate", positive=True)
    weight_decay: float = opt(1e-4, "weight decay", min=0.0)
    optimizer: str = opt("adamw", "adamw or sgd", choices=("adamw", "sgd"))
    momentum: float = opt(0.9, "SGD momentum", min=0.0, max=1.0)
    schedule: str = opt("cosine-step", "cosine-step (per step), cosine-epoch (per epoch, as CoOp/MaPLe), "
                                       "constant (after any warm-up, as CLIP-AT) or exponential-epoch (epoch e at "
                                       "lr x 0.001^(e/20), never below 1e-6, as ProS)",
                        choices=("cosine-step", "cosine-epoch", "constant", "exponential-epoch"))
    warmup_epochs: float = opt(0.0, "warm-up length in epochs", min=0.0)
    warmup: str = opt("linear", "linear ramp, or constant lr = warmup_lr (CoOp/MaPLe)", choices=("linear", "constant"))
    warmup_lr: float = opt(1e-5, "learning rate during a constant warm-up", positive=True)
    grad_accum: int = opt(1, "micro-batches per optimiser step (at least; train.memory_budget may split further)", min=1)
    memory_budget: Optional[str] = opt(None, "memory a step may plan for per process, e.g. 24GiB (binary) or 24GB "
                                             "(decimal): each batch is split into the fewest micro-batches whose "
                                             "predicted peak fits (docs/cluster.md); default on CUDA: the GPU's free "
                                             "memory, on CPU: no limit", role="incidental", parse=parse_bytes)
    text_chunk: int = opt(0, "images per checkpointed chunk of per-image class texts while training (SpLIP "
                             "class_text=image, CoCoOp): same values and gradients, the memory of one chunk, their "
                             "forward computed twice; 0 = all at once", min=0, role="incidental")
    amp: bool = opt(True, "mixed precision (bf16, or fp16 with a grad scaler); only takes effect on CUDA")
    steps_per_epoch: Optional[int] = opt(None, "default: one pass as train.epoch_length says", min=1)
    epoch_length: str = opt("sketches", "what one epoch passes over: sketches (every training sketch once) or "
                                        "smallest-domain (as many triplets as the smaller of the training sketches "
                                        "and photos: ProS's sampler)", choices=EPOCH_LENGTHS)
    sampler: str = opt("triplets", "what a batch holds: triplets (the toolkit's: sketches with a photo of their "
                                   "class), balanced (ProS's BalancedSampler, as DePro without --triplet and "
                                   "UCDR-Adapter: the same number of images of every training domain) or dpk "
                                   "(DePro's: 3 classes x 4 images of every domain per block); an official sampler "
                                   "draws 2 x batch_size images, one epoch its own (train.epoch_length unread), "
                                   "for the methods whose loss reads images one by one (pros, depro, ucdr-adapter)",
                       choices=SAMPLERS)
    val_every: int = opt(1, "seen-class validation every N epochs (0 = never); with early_stop it decides which "
                            "epochs can be kept (part of the training then)", min=0, role="evaluation")
    early_stop: int = opt(0, "stop after N validations in a row without a higher seen-class validation value "
                             "(train.select_metric), and keep the best validated epoch's model (ProS: 2); 0 = every "
                             "epoch, the last model", min=0)
    select_metric: str = opt("auto", "the validation metric early stopping keeps the best epoch by: auto (mAP@all; "
                                     "Acc@1 at instance level) or a metric the selection protocol reports, e.g. mAP@200")
    select_protocol: str = opt("run", "the protocol that metric is computed under: run (eval.protocol) or a preset "
                                      "(ProS's code selects under its own: pros)", choices=("run",) + tuple(PRESETS))
    select_on: str = opt("validation", "what early stopping validates on: validation (the seen-class validation split) "
                                       "or test (the test task itself, as ProS's, DePro's and UCDR-Adapter's code do: "
                                       "the number then chose its own model; the record and every table say so)",
                         choices=SELECT_ON)
    checkpoint_dir: Optional[str] = opt(None, "default: <output_dir>/checkpoints/<run name>", role="incidental")
    resume: bool = opt(False, "continue from the last checkpoint of this run", role="incidental")


@dataclass
class EvalConfig:
    """Retrieval evaluation: protocol preset and overrides (docs/metrics.md), and resources."""

    protocol: str = opt(DEFAULT_PRESET, "protocol preset", choices=tuple(PRESETS), role="evaluation")
    protocol_overrides: Dict[str, Any] = opt(help="protocol knobs that differ from the preset, e.g. {ties: stable}",
                                             factory=dict, role="evaluation")
    memory: str = opt("1GiB", "memory budget of the evaluation engine, e.g. 2GiB (binary) or 2GB (decimal); auto: "
                              "half the free GPU memory", role="incidental", parse=parse_memory)
    batch_size: int = opt(64, "images per forward pass when embedding", min=1, role="incidental")
    save_embeddings: bool = opt(True, "save embeddings.npz and per_query.npz next to the record", role="incidental")
    feature_cache: bool = opt(True, "reuse cached frozen-backbone features (see `sbir-bench cache`)",
                              role="incidental")
    amp: bool = opt(True, "bf16 autocast while embedding images on a CUDA GPU with bf16, fp32 elsewhere (training "
                          "has train.amp)", role="evaluation")


SECTIONS = {"data": DataConfig, "backbone": BackboneConfig, "train": TrainConfig, "eval": EvalConfig}


@dataclass
class RunConfig:
    """Everything a run needs; ``method_config`` holds the method's own typed config as a dict."""

    method: str = opt("zeroshot-clip", "method name (see `sbir-bench methods`)")
    variant: str = opt("", "label of an ablation/variant: its own row in `compare`, its own checkpoints; letters, "
                           "digits and . _ + - only, at most 64, starting with a letter or digit",
                       pattern=LABEL_PATTERN)
    seed: int = opt(0, "random seed", min=0, role="seed")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N", pattern=DEVICE_PATTERN, role="incidental")
    output_dir: str = opt("results/runs", "where records go", role="incidental")
    quiet: bool = opt(False, "no progress bars or info lines", role="incidental")
    report_to: str = opt("none", "trackers for training curves, comma-separated: none, csv, tensorboard, wandb, mlflow",
                         role="incidental")
    tracking_uri: Optional[str] = opt(None, "MLflow tracking URI (default: sqlite:///<output_dir>/mlflow.db)",
                                      role="incidental")
    data: DataConfig = opt(factory=DataConfig)
    backbone: BackboneConfig = opt(factory=BackboneConfig)
    train: TrainConfig = opt(factory=TrainConfig)
    eval: EvalConfig = opt(factory=EvalConfig)
    method_config: Dict[str, Any] = opt(factory=dict)


def keys_with_role(*roles: str, cls: Any = RunConfig, prefix: str = "") -> Tuple[str, ...]:
    """Dotted names of the fields declared with one of ``roles`` (sections recursed into).

    >>> "output_dir" in keys_with_role("incidental") and "train.lr" not in keys_with_role("incidental")
    True
    """
    out: List[str] = []
    for f in dataclasses.fields(cls):
        if cls is RunConfig and f.name in SECTIONS:
            out += keys_with_role(*roles, cls=SECTIONS[f.name], prefix=f"{prefix}{f.name}.")
        elif (f.metadata or {}).get("role", "training") in roles:
            out.append(prefix + f.name)
    return tuple(out)


# what does not identify a table row (where files go, how fast, the seed, labels shown on their own)
NOT_IN_CONFIG_ID = keys_with_role("incidental", "seed", "label")


def config_id(config: Dict[str, Any]) -> str:
    """Short hash of a run's config (a :func:`to_dict` tree) without the seed and what only says where
    files go or how fast (:data:`NOT_IN_CONFIG_ID`): the identity of a table row. Fields at their default
    are left out, so records from before a field existed still match."""
    tree = without_defaults(without_keys(json.loads(json.dumps(config or {})), NOT_IN_CONFIG_ID))
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:8]


def without_defaults(tree: Dict[str, Any], cls: Any = RunConfig) -> Dict[str, Any]:
    """A copy of a config tree without the fields at their default value: a record written before a
    field existed and one written with its default mean the same configuration.

    >>> without_defaults({"seed": 0, "train": {"lr": 0.5, "amp": True}})
    {'train': {'lr': 0.5}}
    """
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        f = next((f for f in dataclasses.fields(cls) if f.name == key), None)
        if cls is RunConfig and key in SECTIONS and isinstance(value, dict):
            inner = without_defaults(value, SECTIONS[key])
            if inner:
                out[key] = inner
        elif f is None or f.default is dataclasses.MISSING or value != f.default:
            out[key] = value
    return out


def without_keys(tree: Dict[str, Any], keys: Iterable[str]) -> Dict[str, Any]:
    """A copy of a config tree without ``keys`` (dotted); a section left empty is dropped with them."""
    out = copy.deepcopy(tree)
    for key in keys:
        node, _, leaf = key.rpartition(".")
        section = out.get(node, {}) if node else out
        if isinstance(section, dict):
            section.pop(leaf, None)
            if node and section == {}:
                out.pop(node, None)
    return out


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to ``annotation``, with a clear error."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, [a for a in args if a is not type(None)][0], where)
    if origin in (list, List):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        return [_coerce(v, args[0], where) for v in value]
    if origin in (dict, Dict) or annotation is Any:
        if origin in (dict, Dict) and not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
        return from_dict(annotation, value, where)
    return _scalar(value, annotation, where)


def _scalar(value: Any, annotation: Any, where: str) -> Any:
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.lower() in ("1", "true", "yes", "on")
            raise ValueError(value)
        if annotation is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if annotation in (float, str):
            out = annotation(value)
            if annotation is float and not math.isfinite(out):
                raise ValueError(value)
            return out
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}") from None
    return value


def validate(obj: Any, where: str) -> Any:
    """Check every field of dataclass ``obj`` against its metadata; one-line error naming the key."""
    for f in dataclasses.fields(obj):
        value, meta = getattr(obj, f.name), f.metadata or {}
        if value is None or isinstance(value, (dict, list)) or dataclasses.is_dataclass(value):
            continue
        problem = _violation(value, meta)
        if problem:
            raise ConfigError(f"{where}.{f.name}={value!r}: {problem}")
    return obj


def _violation(value: Any, meta: Dict[str, Any]) -> str:
    """What is wrong with ``value`` under ``meta``'s constraints, or ''."""
    if meta.get("choices") and value not in meta["choices"]:
        return f"choose one of: {', '.join(str(c) for c in meta['choices'])}"
    if meta.get("pattern") and not re.fullmatch(meta["pattern"], str(value)):
        return f"not a valid value ({meta.get('help', '')})"
    if meta.get("parse"):
        try:
            meta["parse"](value)
        except ConfigError as exc:
            return str(exc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if meta.get("positive") and value <= 0:
            return "must be > 0"
        if meta.get("min") is not None and value < meta["min"]:
            return f"must be >= {meta['min']}"
        if meta.get("max") is not None and value > meta["max"]:
            return f"must be <= {meta['max']}"
        if meta.get("below") is not None and value >= meta["below"]:
            return f"must be < {meta['below']}"
    return ""


def from_dict(cls: Any, data: Optional[Dict[str, Any]], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) dict, rejecting unknown keys and bad values."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return validate(cls(**kwargs), where)


def field_meta(cls: Any, name: str) -> Dict[str, Any]:
    """The metadata (help and constraints) of field ``name`` of dataclass ``cls``."""
    return dict(next(f for f in dataclasses.fields(cls) if f.name == name).metadata or {})


def to_dict(obj: Any) -> Dict[str, Any]:
    """Plain-dict view of a (nested) dataclass, suitable for YAML/JSON."""
    return dataclasses.asdict(obj)


def deep_merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """``base`` with ``over`` laid on top, section by section."""
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_yaml(path: str | Path, _seen: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """Read a YAML mapping or raise a one-line error (with line and column for syntax errors).

    A ``base: other.yaml`` key (relative to the file) loads that file first and lays this one on top,
    so a recipe is written once and every cell that uses it names only what differs.
    """
    data = _read_yaml(Path(path))
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"config file {path}: 'base' must name another YAML file (a path), got {base!r}")
    base_path = (Path(path).parent / str(base)).resolve()
    if base_path in _seen:
        raise ConfigError(f"config file {path}: 'base' chain loops back to {base_path}")
    return deep_merge(load_yaml(base_path, (*_seen, base_path)), data)


def _read_yaml(p: Path) -> Dict[str, Any]:
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {p} is not valid YAML{at}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not a text file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at top level")
    return data


def set_dotted(tree: Dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``dotted='a.b'``, creating levels as needed."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.path=value`` (value parsed as YAML scalar/list) for ``--set``."""
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    if not raw.strip():
        raise ConfigError(f"override {text!r} gives no value; write {key.strip()}=VALUE (or {key.strip()}=null for none)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def build_run_config(file_data: Optional[Dict[str, Any]], overrides: Dict[str, Any]) -> RunConfig:
    """Merge YAML data and dotted overrides (CLI wins) into a validated :class:`RunConfig`."""
    tree: Dict[str, Any] = copy.deepcopy(file_data or {})  # the caller's dictionaries stay as they were
    for key, value in overrides.items():  # an explicit None (``--set key=null``) sets None
        set_dotted(tree, key, copy.deepcopy(value))
    return from_dict(RunConfig, tree, "config")
