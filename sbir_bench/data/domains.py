"""Multi-domain benchmarks (DomainNet): universal cross-domain retrieval as the official code defines it.

SnMpNet's code (github.com/mvp18/UCDR, ``src/data/DomainNet/domainnet.py``) defines the protocol, and
ProS, DePro and UCDR-Adapter copy it (../shared/field/domainnet-ucdr.md). One domain is held out of
training; its images query a gallery of ``real`` photos. The training set is every seen-class image of
the other non-gallery domains plus 92 % of every seen class's real photos. The settings:

* ``ucdr``  (unseen domain, unseen classes): every held-out-domain image of the unseen classes queries
  the unseen classes' real photos (``data.ucdr_gallery: g0``), or those plus the 8 % of every seen
  class's real photos held out of training (``g1``, "Generalized 1").
* ``udcdr`` (unseen domain, seen classes): a share (0.1 for quickdraw, 0.25 otherwise) of the held-out
  domain's images of the first 45 seen classes queries the same share of those classes' real photos.
  Drawn with the training draw's seeds, **every such gallery photo was a training image**: that is the
  official gallery (``data.udcdr_gallery: official``, named so in the record); ``held-out`` uses the
  seen-class real photos held out of training instead (a different, disjoint protocol).
* U^c-CDR (seen domains, unseen classes) is ZS-SBIR on Sketchy and TU-Berlin: ``--setting zs`` there.

Seen classes: ``data.seen_split: train+val`` (300 on DomainNet; ProS and DePro merge the validation
classes into training) or ``train`` (245; UCDR-Adapter, SnMpNet), whose 55 validation classes then give a
held-out-class validation as SnMpNet draws it (30 % of each validation class's images per training
domain query all their real photos).

Every draw is the official rule: class ``i`` of the seen list (in its file's order) draws with
``np.random.seed(i); np.random.choice(files, int(f * n), replace=False)``, i.e. the first ``int(f * n)``
entries of ``RandomState(i).permutation(n)`` (:func:`official_draw`). The official code draws over an
unsorted ``glob`` listing, so its files differ between machines; here the listing is sorted, and the
record carries its hash (the data fingerprint's ``files_sha256``) and ``listing: sorted``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError, DataError
from ..log import get_logger
from .catalog import DOMAINNET_SPLIT, DatasetSpec, DomainSplit, get_spec
from .classnames import class_key
from .splits import package_file, read_class_file

log = get_logger(__name__)

DOMAIN_SETTINGS = ("ucdr", "udcdr")
SEEN_SPLITS = ("train+val", "train")  # 300 or 245 seen classes on DomainNet
UCDR_GALLERIES = ("g0", "g1")
UDCDR_GALLERIES = ("official", "held-out")
HELD_OUT_DOMAINS = tuple(d for d in DOMAINNET_SPLIT.domains if d != DOMAINNET_SPLIT.gallery)  # data.held_out_domain
QUERY_DOMAINS = HELD_OUT_DOMAINS  # data.query_domain: any domain but the gallery's
DOMAIN_ONLY = ("held_out_domain", "query_domain", "seen_split", "ucdr_gallery", "udcdr_gallery")  # their data options
NOT_DOMAIN = ("gallery", "gzs_protocol", "gzs_seen_photo_fraction", "val_fraction")  # and of the others only
LISTING = "sorted"  # how a domain's files are listed before the draws (the official code: unsorted glob)


def official_draw(n: int, fraction: float, seed: int) -> np.ndarray:
    """Indices of the ``int(fraction * n)`` items the official code draws from a listing of ``n``:
    ``np.random.seed(seed); np.random.choice(listing, k, replace=False)`` returns the first ``k`` of
    ``RandomState(seed).permutation(n)`` (in that order), without touching the global NumPy state.

    >>> official_draw(10, 0.3, 0).tolist()
    [2, 8, 4]
    """
    return np.random.RandomState(seed).permutation(n)[:int(fraction * n)]


def class_lists(split: DomainSplit, seen_split: str) -> Tuple[List[str], List[str], List[str]]:
    """(seen classes in the official order, validation classes, unseen classes) under ``seen_split``:
    ``train+val`` appends the validation classes to the seen ones and leaves none to validate on."""
    train, val, test = (read_class_file(package_file("splits", f)) for f in (split.train, split.val, split.test))
    if seen_split == "train+val":
        return train + val, [], test
    if seen_split == "train":
        return train, val, test
    raise ConfigError(f"data.seen_split={seen_split!r}: choose one of: {', '.join(SEEN_SPLITS)}")


def check_domain_config(data) -> None:
    """Refuse, in one line before anything loads, a setting or option that does not belong to the
    dataset (a ``config.DataConfig``): DomainNet runs ucdr/udcdr, the others zs/gzs/fg."""
    spec = get_spec(data.dataset)
    split = spec.domain_split
    changed = [k for k in DOMAIN_ONLY if getattr(data, k) != _default(data, k)]
    if split is None:
        if data.setting in DOMAIN_SETTINGS:
            raise ConfigError(f"the {data.setting} setting needs a multi-domain dataset (--dataset domainnet or "
                              f"mini-domainnet); on {spec.title}, U^c-CDR is --setting zs")
        if changed:
            raise ConfigError(f"data.{changed[0]} applies to multi-domain datasets (domainnet); {spec.title} has none")
        return
    if data.setting not in DOMAIN_SETTINGS:
        raise ConfigError(f"{spec.title} is a multi-domain benchmark: choose --setting ucdr or udcdr "
                          f"(not {data.setting}); U^c-CDR is --setting zs on sketchy or tuberlin")
    foreign = [k for k in NOT_DOMAIN if getattr(data, k) != _default(data, k)]
    if foreign or data.split_file or data.split != "1":
        raise ConfigError(f"data.{(foreign or ['split'])[0]} does not apply to {spec.title}: its classes are its "
                          f"official seen/validation/unseen lists and its draws the official ones (data.seen_split chooses 300 or "
                          f"245 seen classes; the 55 validation classes validate under train)")
    if data.held_out_domain not in split.domains or data.held_out_domain == split.gallery:
        raise ConfigError(f"data.held_out_domain={data.held_out_domain!r}: choose one of: "
                          f"{', '.join(d for d in split.domains if d != split.gallery)}")
    if data.query_domain and (data.setting != "ucdr" or data.query_domain not in split.domains
                              or data.query_domain == split.gallery):
        raise ConfigError(f"data.query_domain={data.query_domain!r}: the ucdr setting's query domain, one of "
                          f"{', '.join(d for d in split.domains if d != split.gallery)} (default: the held-out one)")


def training_domains(spec: DatasetSpec, held_out: str) -> List[str]:
    """The domains a run on multi-domain ``spec`` trains on, with ``held_out`` held out, sorted: the official
    code's domain dictionary (DomainNet: the four other query domains and real)."""
    return sorted(d for d in spec.domain_split.domains if d != held_out)


def _default(data, key: str):
    return next(f.default for f in dataclasses.fields(data) if f.name == key)


def locate_domains(spec: DatasetSpec, candidates: Sequence[Path]) -> Path:
    """The folder holding the domain folders (``<root>/DomainNet/<domain>/<class>/``): the first
    candidate with the gallery domain and another known domain; else one line saying where we looked."""
    split = spec.domain_split
    for base in candidates:
        if (base / split.gallery).is_dir() and any((base / d).is_dir() for d in split.domains if d != split.gallery):
            return base
    raise DataError(f"{spec.title} not found: looked in {', '.join(str(c) for c in dict.fromkeys(candidates))} for "
                    f"the domain folders {', '.join(split.domains)} (each holding <class>/ folders; the layout "
                    f"download_domainnet.sh unpacks); point --data-root at the folder that holds DomainNet/")


def unknown_domains(spec: DatasetSpec, base: Path) -> List[str]:
    """Sub-folders of ``base`` that are no domain of the protocol. The official code makes any such
    folder an auxiliary training domain; here they are never read, and `datasets check` names them."""
    known = set(spec.domain_split.domains)
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in known)


def _labels(names: Sequence[str], index: Dict[str, int], what: str, spec: DatasetSpec) -> List[int]:
    missing = [n for n in names if class_key(n) not in index]
    if missing:
        raise DataError(f"{spec.title}: {len(missing)} {what} class(es) have no folder in the copy: "
                        f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}; run `sbir-bench datasets check "
                        f"{spec.name}`")
    return [index[class_key(n)] for n in names]


def _group(samples) -> Dict[Tuple[str, int], list]:
    """(domain, label) -> the samples in listing order."""
    out: Dict[Tuple[str, int], list] = {}
    for s in samples:
        out.setdefault((s.domain, s.label), []).append(s)
    return out


def domain_partition(index, spec, held_out: str, seen_split: str, max_per_class: Optional[int] = None):
    """The :class:`~sbir_bench.data.tasks.SplitPartition` of a multi-domain copy ``index`` (a
    ``DatasetIndex`` whose sketches are the non-gallery domains' images and photos the gallery's) with
    ``held_out`` held out, as the official code draws it (module docstring). ``max_per_class`` caps
    each (domain, class) listing before any draw (quick experiments only)."""
    from .tasks import COUNTED, SplitPartition

    split: DomainSplit = spec.domain_split
    names = class_lists(split, seen_split)
    labels = index.class_index()
    seen, val, unseen = (_labels(n, labels, w, spec) for n, w in zip(names, ("seen", "validation", "unseen")))
    cap = (lambda xs: xs[:max_per_class]) if max_per_class else (lambda xs: xs)
    train_domains = [d for d in split.domains if d not in (held_out, split.gallery)]
    by = {k: cap(v) for k, v in _group(list(index.sketches) + list(index.photos)).items()}
    out = SplitPartition(list(index.class_names), seen, sorted(unseen))
    for i, c in enumerate(seen):  # the official order: the seed of class c is its index i
        real = by.get((split.gallery, c), [])
        taken = set(official_draw(len(real), split.train_share, i).tolist())
        out.train_photos += [s for j, s in enumerate(real) if j in taken]
        out.heldout_photos += [s for j, s in enumerate(real) if j not in taken]  # G1's distractors
        for d in train_domains:
            out.train_sketches += by.get((d, c), [])
    for i, c in enumerate(val):  # SnMpNet's validation: seeds restart at 0 over the validation classes
        for d in train_domains:
            group = by.get((d, c), [])
            out.val_sketches += [group[j] for j in sorted(official_draw(len(group), split.val_query_share, i))]
        out.val_photos += by.get((split.gallery, c), [])
    for c in out.unseen:
        out.unseen_sketches += by.get((held_out, c), [])
        out.unseen_photos += by.get((split.gallery, c), [])
        for d in train_domains:  # the seen domains' unseen-class images: data.query_domain's queries
            out.unseen_by_domain.setdefault(d, []).extend(by.get((d, c), []))
    share = split.udcdr_fraction.get(held_out, split.udcdr_default)
    for i, c in enumerate(seen[:split.udcdr_classes]):
        for domain, target in ((held_out, out.udcdr_queries), (split.gallery, out.udcdr_gallery)):
            group = by.get((domain, c), [])
            target += [group[j] for j in sorted(official_draw(len(group), share, i))]
    out.counts = {k: len(getattr(out, k)) for k in COUNTED}
    return out


def udcdr_classes(spec: DatasetSpec, part) -> List[int]:
    """The seen classes U^d-CDR tests on: the first ``udcdr_classes`` of the official seen order."""
    return list(part.seen[:spec.domain_split.udcdr_classes])


def domain_task(setting: str, part, spec: DatasetSpec, ucdr_gallery: str = "g0", udcdr_gallery: str = "official",
                query_domain: str = ""):
    """The test task of a multi-domain ``setting`` (``ucdr`` or ``udcdr``) over ``part``; ``query_domain``: the
    ucdr queries' domain when it is not the held-out one (a domain trained on: the official trainers' extra
    seen-domain rows)."""
    from .tasks import RetrievalTask

    if setting == "ucdr":
        if ucdr_gallery not in UCDR_GALLERIES:
            raise ConfigError(f"data.ucdr_gallery={ucdr_gallery!r}: choose one of: {', '.join(UCDR_GALLERIES)}")
        extra = list(part.heldout_photos) if ucdr_gallery == "g1" else []
        queries = part.unseen_by_domain.get(query_domain, []) if query_domain else part.unseen_sketches
        return RetrievalTask("ucdr", "category", list(queries), list(part.unseen_photos) + extra)
    if setting == "udcdr":
        if udcdr_gallery == "official":
            gallery = list(part.udcdr_gallery)
        elif udcdr_gallery == "held-out":
            keep = set(udcdr_classes(spec, part))
            gallery = [p for p in part.heldout_photos if p.label in keep]
        else:
            raise ConfigError(f"data.udcdr_gallery={udcdr_gallery!r}: choose one of: {', '.join(UDCDR_GALLERIES)}")
        return RetrievalTask("udcdr", "category", list(part.udcdr_queries), gallery)
    raise DataError(f"unknown multi-domain setting {setting!r}; choose one of: {', '.join(DOMAIN_SETTINGS)}")


def domain_catalog_sizes(spec: DatasetSpec, held_out: str, seen_split: str, setting: str, ucdr_gallery: str = "g0",
                         query_domain: str = "") -> Tuple[List[str], List[int], Dict[str, int]]:
    """(class names, seen labels, sizes) of a multi-domain benchmark from its published per-domain totals,
    for a dry-run estimate without the copy: each domain's images split by class share (DomainNet's
    classes are roughly balanced), the draws' shares applied as the official code applies them."""
    split = spec.domain_split
    seen_names, _val, unseen_names = class_lists(split, seen_split)
    names = sorted({c for names in class_lists(split, "train") for c in names})
    labels = {n: i for i, n in enumerate(names)}
    per_class = {d: n / len(names) for d, n in split.images.items()}
    n_seen, n_unseen = len(seen_names), len(unseen_names)
    train_domains = [d for d in split.domains if d not in (held_out, split.gallery)]
    real = per_class.get(split.gallery, 0)
    per_domain = {d: int(per_class.get(d, 0) * n_seen) for d in train_domains}
    per_domain[split.gallery] = int(real * split.train_share * n_seen)
    sizes = {"train_sketches": int(sum(per_class.get(d, 0) for d in train_domains) * n_seen),
             "train_photos": per_domain[split.gallery],
             "train_domains": [per_domain[d] for d in sorted(per_domain)]}  # the official dictionary's order
    if setting == "udcdr":
        share, classes = split.udcdr_fraction.get(held_out, split.udcdr_default), min(split.udcdr_classes, n_seen)
        sizes["test_images"] = int((per_class.get(held_out, 0) + real) * share * classes)
    else:
        g1 = real * (1 - split.train_share) * n_seen if ucdr_gallery == "g1" else 0
        sizes["test_images"] = int((per_class.get(query_domain or held_out, 0) + real) * n_unseen + g1)
    return names, [labels[n] for n in seen_names], sizes


def protocol_record(data) -> Dict[str, object]:
    """What a multi-domain run's record states of its protocol (nothing for the other datasets)."""
    spec = get_spec(data.dataset)
    if spec.domain_split is None:
        return {}
    seen, val, unseen = (len(x) for x in class_lists(spec.domain_split, data.seen_split))
    out: Dict[str, object] = {"held_out_domain": data.held_out_domain, "gallery_domain": spec.domain_split.gallery,
                              "seen_split": data.seen_split, "seen_classes": seen, "val_classes": val,
                              "unseen_classes": unseen, "listing": LISTING}
    if data.setting == "ucdr":
        out["gallery"] = data.ucdr_gallery
        out["query_domain"] = data.query_domain or data.held_out_domain
        if data.query_domain and data.query_domain != data.held_out_domain:
            out["query_domain_note"] = "a domain trained on (unseen classes): the official trainers' seen-domain rows"
    else:
        out["gallery"] = ("official: a draw of seen-class real photos that were all training images"
                          if data.udcdr_gallery == "official" else
                          "held-out: the seen-class real photos held out of training")
    return out
