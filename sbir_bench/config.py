"""Typed run configuration: dataclasses, loaded from YAML, overridden from the CLI.

Every run writes :func:`to_dict` of its fully resolved config into its record, so a number in a
table can always be traced back to the exact settings that produced it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from .errors import ConfigError


@dataclass
class DataConfig:
    """Which dataset, split and setting to run, and how to load images."""

    dataset: str = "mini"
    setting: str = "zs"
    split: str = "1"
    split_file: Optional[str] = None
    data_root: Optional[str] = None
    image_size: Optional[int] = None  # None: the backbone's own input size
    gzs_seen_photo_fraction: float = 0.2  # share of each seen class's photos held out for the GZS gallery
    val_fraction: float = 0.1  # share of seen-class sketches/photos held out for validation
    max_per_class: Optional[int] = None  # cap samples per class (quick experiments); None = all
    workers: int = 0
    pin_memory: bool = True


@dataclass
class BackboneConfig:
    """Which open_clip model to build and where its weights come from."""

    name: str = "sbir-tiny"
    pretrained: Optional[str] = None  # open_clip tag (e.g. "openai"), a local checkpoint path, or None
    cache_dir: Optional[str] = None


@dataclass
class TrainConfig:
    """Optimisation settings shared by every trainable method."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    grad_accum: int = 1
    amp: bool = True  # only takes effect on CUDA
    steps_per_epoch: Optional[int] = None  # None: one pass over the training sketches
    val_every: int = 1  # evaluate on the seen-class validation split every N epochs (0 = never)
    checkpoint_dir: Optional[str] = None  # default: <output_dir>/checkpoints/<run name>
    resume: bool = False


@dataclass
class EvalConfig:
    """Retrieval evaluation protocol (see docs/metrics.md)."""

    memory: str = "1GiB"
    map_k: List[int] = field(default_factory=lambda: [200])
    prec_k: List[int] = field(default_factory=lambda: [100, 200])
    acc_k: List[int] = field(default_factory=lambda: [1, 5, 10])
    topk_interpolation: str = "voc"  # voc | none
    all_interpolation: str = "none"  # none (= sklearn) | voc (SAKE's mAP@all)
    topk_normalization: str = "min_k_r"  # min_k_r | hits | r
    ties: str = "grouped"  # grouped | stable | optimistic | pessimistic (top-K metrics, and mAP@all with voc)
    average: str = "query"  # query | class
    batch_size: int = 64
    save_embeddings: bool = True


@dataclass
class RunConfig:
    """Everything a run needs; ``method`` holds the method's own typed config as a dict."""

    method: str = "zeroshot-clip"
    variant: str = ""  # label of an ablation/variant: its own row in `compare`, its own checkpoints
    seed: int = 0
    device: str = "auto"
    output_dir: str = "results/runs"
    quiet: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method_config: Dict[str, Any] = field(default_factory=dict)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to ``annotation``, with a clear error."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, where)
    if origin in (list, List):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        return [_coerce(v, args[0], where) for v in value]
    if origin in (dict, Dict) or annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if annotation in (int, float, str):
            return annotation(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}") from None
    return value


def from_dict(cls: Any, data: Optional[Dict[str, Any]], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) dict, rejecting unknown keys."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Dict[str, Any]:
    """Plain-dict view of a (nested) dataclass, suitable for YAML/JSON."""
    return dataclasses.asdict(obj)


def load_yaml(path: str | Path) -> Dict[str, Any]:
    """Read a YAML mapping or raise a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
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
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def build_run_config(file_data: Optional[Dict[str, Any]], overrides: Dict[str, Any]) -> RunConfig:
    """Merge YAML data and dotted overrides (CLI wins) into a validated :class:`RunConfig`."""
    tree: Dict[str, Any] = dict(file_data or {})
    for key, value in overrides.items():
        if value is not None:
            set_dotted(tree, key, value)
    return from_dict(RunConfig, tree, "config")
