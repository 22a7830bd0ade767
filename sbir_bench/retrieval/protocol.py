"""The evaluation protocol: every convention that changes a reported number, defined once.

Published SBIR numbers come from engines that disagree (docs/metrics.md). :class:`Protocol` names
each choice; its field metadata is the single definition that the run config (``eval.protocol``
and ``eval.protocol_overrides``), the ``eval`` command's options and the docs are derived from.
:data:`PRESETS` are the conventions of public code, each citing the file it reproduces; every run
records the resolved protocol and its metrics under every preset.

>>> PRESETS["sake"].ties, PRESETS["sem-pcyc"].topk_normalization
('stable', 'hits')
>>> resolve_protocol("sake", {"ties": "grouped"}).describe()
'sake + ties=grouped'
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import ConfigError

INTERPOLATIONS = ("voc", "none")
NORMALIZATIONS = ("min_k_r", "hits", "r")
TIE_POLICIES = ("grouped", "stable", "optimistic", "pessimistic", "list")
AVERAGES = ("query", "class")
NO_RELEVANT = ("exclude", "zero", "exclude_map")
PRECISION_DIVISORS = ("min_k_n", "k")
FG_GALLERIES = ("all", "category")
SIMILARITIES = ("cosine", "euclidean")
DEFAULT_PRESET = "sbir-bench"


def knob(default: Any, help: str, choices: Tuple[str, ...] = (), flag: str = "") -> Any:
    """A protocol field with the metadata the CLI and the docs are built from."""
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag})


@dataclass(frozen=True)
class Protocol:
    """How scores turn into metrics (docs/metrics.md defines each knob exactly)."""

    map_k: Tuple[int, ...] = knob((200,), "cut-offs K of mAP@K")
    prec_k: Tuple[int, ...] = knob((100, 200), "cut-offs K of P@K")
    acc_k: Tuple[int, ...] = knob((1, 5, 10), "cut-offs K of Acc@K (instance level)")
    all_interpolation: str = knob("none", "mAP@all: none (scikit-learn AP) or voc (SAKE's VOC envelope)",
                                  INTERPOLATIONS)
    topk_interpolation: str = knob("voc", "mAP@K: voc envelope (SAKE) or none", INTERPOLATIONS, "--interpolation")
    topk_normalization: str = knob("min_k_r", "AP divisor: min(K, #relevant) (SAKE), hits in the top K "
                                   "(scikit-learn on the list, torchmetrics) or #relevant", NORMALIZATIONS,
                                   "--normalization")
    precision_divisor: str = knob("min_k_n", "P@K divisor: min(K, N) (SAKE, SEM-PCYC) or K (torchmetrics); they "
                                  "differ only when the gallery holds fewer than K items", PRECISION_DIVISORS)
    ties: str = knob("grouped", "tied scores: grouped (one operating point, as scikit-learn), stable (gallery "
                     "order), optimistic, pessimistic, or list (top-K cut by gallery order, grouped inside, "
                     "as SEM-PCYC)", TIE_POLICIES)
    average: str = knob("query", "average over queries or over classes", AVERAGES)
    no_relevant: str = knob("exclude", "a query with no relevant gallery item: exclude it, count it as 0, or "
                            "exclude_map: leave it out of mAP, count it as 0 in P@K (SAKE)", NO_RELEVANT)
    positive_only: bool = knob(False, "relevant items scored <= 0 count as non-relevant (torchmetrics >= 1.8)")
    fg_gallery: str = knob("all", "FG-ZS: rank each sketch among all test photos, or among its category's",
                           FG_GALLERIES)
    similarity: str = knob("cosine", "how a query scores a gallery item: cosine (normalised embeddings) or euclidean "
                                 "(minus the squared Euclidean distance of the embeddings as saved, not normalised: "
                                 "ProS)", SIMILARITIES)
    preset: str = DEFAULT_PRESET  # the preset this protocol was resolved from (overrides are listed by describe)

    def __post_init__(self) -> None:
        for f in fields(self):
            choices = f.metadata.get("choices") if f.metadata else None
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"protocol {f.name}={getattr(self, f.name)!r}; choose one of: {', '.join(choices)}")
        if any(int(k) < 1 for k in (*self.map_k, *self.prec_k, *self.acc_k)):
            raise ConfigError("protocol cut-offs K must be >= 1")

    @classmethod
    def from_eval_config(cls, cfg: Any) -> "Protocol":
        """The protocol of an :class:`~sbir_bench.config.EvalConfig` (preset + overrides)."""
        return resolve_protocol(cfg.protocol, cfg.protocol_overrides)

    def counts_unmatched(self, metric: str) -> bool:
        """Whether a query without a relevant gallery item enters ``metric``'s mean, scoring 0.

        >>> PRESETS["sake"].counts_unmatched("mAP@all"), PRESETS["sake"].counts_unmatched("P@100")
        (False, True)
        """
        return self.no_relevant == "zero" or (self.no_relevant == "exclude_map" and metric.startswith("P@"))

    def describe(self) -> str:
        """The preset this protocol was resolved from, and what differs from it."""
        changed = self.differences(PRESETS.get(self.preset, PRESETS[DEFAULT_PRESET]))
        return self.preset + "".join(f" + {k}={_text(getattr(self, k))}" for k in changed)

    def differences(self, other: "Protocol") -> List[str]:
        """Names of the knobs whose values differ from ``other``'s."""
        return [f.name for f in protocol_fields() if getattr(self, f.name) != getattr(other, f.name)]

    def to_dict(self) -> Dict[str, Any]:
        """Every knob (tuples as lists), the preset description and the mAP@all convention in words."""
        d = asdict(self)
        d.update({k: list(v) for k, v in d.items() if isinstance(v, tuple)})
        d["preset"] = self.describe()
        d["map_all"] = ("uninterpolated, tied scores grouped (= sklearn average_precision_score)"
                        if self.all_interpolation == "none" and self.ties in ("grouped", "list")
                        else f"{self.all_interpolation}-interpolated, ties {self.ties}")
        return d


def _text(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


@dataclass(frozen=True)
class Preset:
    """One published convention, declared once: its name, the code it reproduces, and its knobs."""

    name: str
    source: str
    knobs: Mapping[str, Any]

    def protocol(self) -> Protocol:
        return Protocol(**self.knobs, preset=self.name)


PRESET_ENTRIES = (
    # sbir-bench's default: tie-exact scikit-learn mAP@all (= CLIP-AT's torchmetrics 0.9 AP without
    # ties) and SAKE's top-K conventions, with tied scores grouped so that gallery order never matters.
    Preset(DEFAULT_PRESET, "scikit-learn average_precision_score (mAP@all); SAKE's VOCap / eval_precision (top-K)",
           {}),
    # github.com/qliu24/SAKE, src/test_cse_resnet_{sketchy,tuberlin}_zeroshot.py: eval_AP_inner
    # (np.argsort order) + VOCap for mAP@all and mAP@K, eval_precision for P@K; a query without a
    # relevant photo has AP nan (0 / 0), which np.nanmean drops, and precision 0, which it keeps.
    Preset("sake", "github.com/qliu24/SAKE src/test_cse_resnet_tuberlin_zeroshot.py (eval_AP_inner, VOCap, "
                   "eval_precision)",
           dict(all_interpolation="voc", topk_interpolation="voc", topk_normalization="min_k_r", ties="stable",
                no_relevant="exclude_map")),
    # github.com/AnjanDutta/sem-pcyc, src/utils.py: apsak (sklearn average_precision_score over the
    # argsort top-K list, 0 when the list holds no hit) and precak (hits / K); src/test.py.
    Preset("sem-pcyc", "github.com/AnjanDutta/sem-pcyc src/utils.py (apsak, precak), src/test.py",
           dict(all_interpolation="none", topk_interpolation="none", topk_normalization="hits", ties="list",
                no_relevant="zero")),
    # torchmetrics >= 1.8 functional retrieval_average_precision(top_k) / retrieval_precision(top_k):
    # topk order, relevant items with score <= 0 dropped, divisor = hits, 0 without a relevant item.
    Preset("torchmetrics", "torchmetrics >= 1.8 functional/retrieval (average_precision.py, precision.py)",
           dict(all_interpolation="none", topk_interpolation="none", topk_normalization="hits", ties="stable",
                no_relevant="zero", positive_only=True, precision_divisor="k")),
    # github.com/aneeshan95/Sketch_LVM, src/model_LN_prompt.py: torchmetrics 0.9.3
    # retrieval_average_precision per query (argsort order, divisor = #relevant); mAP@all only in
    # the released code, the top-K knobs follow torchmetrics 0.9's retrieval_precision.
    Preset("clip-at", "github.com/aneeshan95/Sketch_LVM src/model_LN_prompt.py (torchmetrics 0.9.3)",
           dict(all_interpolation="none", topk_interpolation="none", topk_normalization="r", ties="stable",
                no_relevant="zero", precision_divisor="k")),
    # github.com/fangkaipeng/ProS, src/utils/mAP.py (_partedMAP_all, mean_average_precision) via
    # src/utils/metrics.py: score -||q - g||^2 of the unnormalised embeddings, torch.topk order (ties
    # unspecified: gallery order here), AP@K over the hits in the top K (0 without one), mAP@all over
    # the whole list, Prec@K = hits / K, plain mean over every query.
    Preset("pros", "github.com/fangkaipeng/ProS src/utils/mAP.py (_partedMAP_all), src/utils/metrics.py",
           dict(similarity="euclidean", all_interpolation="none", topk_interpolation="none", topk_normalization="hits",
                ties="stable", no_relevant="zero", precision_divisor="k")),
    # github.com/mvp18/UCDR (SnMpNet, the UCDR benchmark's code), src/utils/metrics.py: exp(-Euclidean) by
    # cdist (the ranking of -||q - g||^2), apsak (sklearn average_precision_score over the argsort top-K list,
    # 0 without a hit) and precak (hits / min(K, listed)): SEM-PCYC's functions on Euclidean distances.
    Preset("snmpnet", "github.com/mvp18/UCDR src/utils/metrics.py (compute_retrieval_metrics: apsak, precak)",
           dict(similarity="euclidean", all_interpolation="none", topk_interpolation="none", topk_normalization="hits",
                ties="list", no_relevant="zero")),
)
PRESETS: Dict[str, Protocol] = {entry.name: entry.protocol() for entry in PRESET_ENTRIES}
SOURCES: Dict[str, str] = {entry.name: entry.source for entry in PRESET_ENTRIES}


def get_preset(name: str) -> Protocol:
    """The preset called ``name`` or a one-line error listing them."""
    if name not in PRESETS:
        raise ConfigError(f"unknown protocol {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def resolve_protocol(preset: str, overrides: Optional[Mapping[str, Any]] = None) -> Protocol:
    """``preset`` with ``overrides`` (field -> value, values coerced from text) applied."""
    base = get_preset(preset)
    known = {f.name: f for f in protocol_fields()}
    unknown = sorted(set(overrides or {}) - set(known))
    if unknown:
        raise ConfigError(f"unknown protocol knob(s) {', '.join(unknown)}; valid: {', '.join(known)}")
    values = {k: _coerce(k, v, getattr(base, k)) for k, v in (overrides or {}).items() if v is not None}
    return replace(base, **values)


def _coerce(name: str, value: Any, like: Any) -> Any:
    """``value`` (YAML scalar, list or CLI text) as the type of the preset's ``like`` value."""
    if isinstance(like, tuple):
        items = value.split(",") if isinstance(value, str) else list(value if isinstance(value, (list, tuple)) else [value])
        try:
            return tuple(int(str(x).strip()) for x in items if str(x).strip())
        except ValueError:
            raise ConfigError(f"protocol {name}: cut-offs must be comma-separated integers, got {value!r}") from None
    if isinstance(like, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"protocol {name}: expected true or false, got {value!r}")
    return str(value)


def protocol_fields() -> List[Any]:
    """The knobs a user may set (everything but the preset name), in order."""
    return [f for f in fields(Protocol) if f.name != "preset"]


# ------------------------------------------------------------------ metric names and their order
_FAMILY = {"mAP": 0, "P": 1, "Acc": 2}
_GROUP = {"": 0, "unseen": 1, "seen": 2, "H": 3}


def metric_sort_key(name: str) -> tuple:
    """Conventional order: mAP@all, mAP@K, P@K, Acc@K (K ascending); overall, unseen, seen, H.

    >>> sorted(["P@200", "mAP@200", "mAP@all/H", "mAP@all", "Acc@1"], key=metric_sort_key)
    ['mAP@all', 'mAP@all/H', 'mAP@200', 'P@200', 'Acc@1']
    """
    m = re.fullmatch(r"(mAP|P|Acc)@(all|\d+)(?:/(seen|unseen|H))?", name)
    if not m:
        return (9, 0, 0, name)
    family, k, group = m.group(1), m.group(2), m.group(3) or ""
    return (_FAMILY[family], -1 if k == "all" else int(k), _GROUP[group], name)


def metric_names(protocol: Protocol, level: str) -> List[str]:
    """The metrics ``protocol`` reports at ``level`` ("category" or "instance"), in conventional order."""
    if level == "instance":
        return [f"Acc@{k}" for k in protocol.acc_k]
    return ["mAP@all"] + [f"mAP@{k}" for k in protocol.map_k] + [f"P@{k}" for k in protocol.prec_k]
