"""``sbir-bench datasets check``: walk a dataset copy and say precisely what is wrong with it.

Researchers assemble these benchmarks from several downloads; a copy with a missing class or a
truncated photo silently changes every number computed on it. The check reports, per modality:
missing and unexpected classes (against the official class list), empty class folders, unreadable
or truncated images, byte-identical duplicate files, counts against the documented ones, split
classes absent from the copy, and (fine-grained) sketches whose photo is missing.

A copy is *unusable* (non-zero exit) when the requested split cannot be applied, an official
class is missing, a class folder is empty, or more than 5% of the images cannot be decoded.

Depth: by default a seeded sample of ``SAMPLE`` images per modality is decoded and only hard links
(one file under two names) count as duplicates, so a QuickDraw-Ext-sized copy (534k files) is checked
in seconds; ``deep`` decodes every image and compares file contents (reads the whole copy).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import DataError
from ..log import progress
from .catalog import DatasetSpec, get_spec
from .classnames import class_key
from .discovery import (
    check_not_fine_grained,
    class_folders,
    index_dataset,
    list_images,
    locate,
    photo_folders,
    photo_instance,
    photos_listed_twice,
    resolve_root,
    sketch_instance,
)
from .images import load_rgb
from .splits import load_split, package_file, read_class_file, split_names
from .domains import DOMAIN_SETTINGS, SEEN_SPLITS, class_lists, unknown_domains
from .tasks import SETTINGS, TrainingPartition, build_task, partition

MAX_LISTED = 10
UNREADABLE_LIMIT = 0.05
SAMPLE = 200  # images decoded per modality without --deep
DEPTHS = ("none", "sample", "deep")


@dataclass
class CheckReport:
    """Findings of one check; ``problems`` make the copy unusable, ``warnings`` do not."""

    dataset: str
    root: Path
    counts: Dict[str, int] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # what was not checked, and how to check it
    layout: str = ""  # the catalog's name for the copy found (data/catalog.py layouts)

    @property
    def usable(self) -> bool:
        return not self.problems

    def lines(self) -> List[str]:
        found = f" ({self.layout} layout)" if self.layout else ""
        out = [f"{self.dataset} at {self.root}{found}: " + ", ".join(f"{v} {k}" for k, v in self.counts.items())]
        out += [f"problem: {p}" for p in self.problems]
        out += [f"warning: {w}" for w in self.warnings]
        out += [f"note: {n}" for n in self.notes]
        return out

    def summary(self) -> str:
        verdict = "usable" if self.usable else "UNUSABLE"
        return f"{self.dataset}: {verdict} ({len(self.problems)} problem(s), {len(self.warnings)} warning(s))"


def _listing(items: List[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def _official_classes(spec: DatasetSpec) -> Optional[List[str]]:
    return read_class_file(package_file("classes", spec.class_list)) if spec.class_list else None


def _check_classes(report: CheckReport, spec: DatasetSpec, folders: Dict[str, Dict[str, Path]]) -> None:
    official = _official_classes(spec)
    for modality, found in folders.items():
        keys = {class_key(c) for c in found}
        if official is not None:
            missing = [c for c in official if class_key(c) not in keys]
            extra = sorted(c for c in found if class_key(c) not in {class_key(o) for o in official})
            if missing:
                report.problems.append(f"{len(missing)} official class(es) missing from {modality}: {_listing(missing)}")
            if extra:
                report.warnings.append(f"{len(extra)} unexpected class folder(s) in {modality}: {_listing(extra)}")
    sketch_keys = {class_key(c) for c in folders["sketches"]}
    photo_keys = {class_key(c) for c in folders["photos"]}
    one_sided = sorted(sketch_keys ^ photo_keys)
    if one_sided and official is None:
        report.problems.append(f"class(es) with only one modality: {_listing(one_sided)}")


def _check_images(report: CheckReport, modality: str, images: Dict[str, List[Path]], depth: str) -> None:
    empty = sorted(c for c, files in images.items() if not files)
    if empty:
        report.problems.append(f"{len(empty)} empty {modality} class folder(s): {_listing(empty)}")
    files = [p for group in images.values() for p in group]
    report.counts[modality] = len(files)
    dups, zero_bytes = _duplicates(files, modality, read=depth == "deep")
    if zero_bytes:  # found from the listing's sizes alone, so --no-decode reports them too
        share = len(zero_bytes) / max(1, len(files))
        message = f"{len(zero_bytes)} empty (zero-byte) {modality} file(s): {_listing([str(p) for p in zero_bytes])}"
        (report.problems if share > UNREADABLE_LIMIT else report.warnings).append(message)
        skip = set(zero_bytes)
        files = [p for p in files if p not in skip]  # not decoded again below
    if dups:
        report.warnings.append(f"{sum(len(g) - 1 for g in dups)} duplicate {modality} file(s) (byte-identical): "
                               + _listing([" = ".join(str(p) for p in g[:2]) for g in dups]))
    if depth == "none":
        return
    chosen = files if depth == "deep" or len(files) <= SAMPLE else \
        [files[i] for i in sorted(np.random.default_rng(0).choice(len(files), SAMPLE, replace=False))]
    if len(chosen) < len(files):
        report.notes.append(f"decoded a sample of {len(chosen)} of the {len(files):,} {modality}; --deep decodes "
                            f"every image and compares file contents")
    bad = [str(p) for p in progress(chosen, desc=f"decoding {modality}", unit="img")
           if load_rgb(str(p), warn_once=False) is None]
    if bad:
        share = len(bad) / max(1, len(chosen))
        message = (f"{len(bad)} unreadable or truncated {modality} image(s) ({share:.1%} of "
                   f"{'all' if len(chosen) == len(files) else 'a sample'}): {_listing(bad)}")
        (report.problems if share > UNREADABLE_LIMIT else report.warnings).append(message)


def _duplicates(files: List[Path], modality: str, read: bool) -> Tuple[List[List[Path]], List[Path]]:
    """(groups of byte-identical files, zero-byte files): hard links of one file always (no read), and
    with ``read`` files of equal size and SHA-1 (the whole copy is read, with a progress bar). Empty
    files are neither: they are unreadable, whatever their number."""
    by_inode: Dict[tuple, List[Path]] = defaultdict(list)
    by_size: Dict[int, List[tuple]] = defaultdict(list)
    zero: List[Path] = []
    for p in progress(files, desc=f"listing {modality}", unit="file"):
        st = p.stat()
        if st.st_size == 0:
            zero.append(p)
            continue
        key = (st.st_dev, st.st_ino)
        if key not in by_inode:
            by_size[st.st_size].append(key)
        by_inode[key].append(p)
    groups = [g for g in by_inode.values() if len(g) > 1]
    if read:
        by_hash: Dict[str, List[Path]] = defaultdict(list)
        candidates = [key for keys in by_size.values() if len(keys) > 1 for key in keys]
        for key in progress(candidates, desc=f"comparing {modality}", unit="file"):
            by_hash[hashlib.sha1(by_inode[key][0].read_bytes()).hexdigest()].append(key)
        for keys in (k for k in by_hash.values() if len(k) > 1):
            merged = [p for key in keys for p in by_inode[key]]
            groups = [g for g in groups if g[0] not in merged] + [merged]
    return groups, zero


def _check_pairs(report: CheckReport, images: Dict[str, Dict[str, List[Path]]]) -> None:
    photos = {photo_instance(p) for group in images["photos"].values() for p in group}
    orphans = [str(p) for group in images["sketches"].values() for p in group if sketch_instance(p) not in photos]
    if orphans:
        report.warnings.append(f"{len(orphans)} sketch(es) whose photo <photo-id>.jpg is missing: {_listing(orphans)}")


def check_dataset(name: str, data_root: Optional[str], split: str = "1", split_file: Optional[str] = None,
                  depth: str = "sample") -> CheckReport:
    """Run every check on the copy of ``name`` under ``data_root`` (``depth``: none, sample or deep,
    see the module docstring)."""
    spec = get_spec(name)
    base, layout = locate(spec, resolve_root(spec, data_root))
    if spec.domain_split is not None:
        return _check_domains(CheckReport(name, base, layout=layout.name), spec, depth)
    report = CheckReport(name, base, layout=layout.name)
    sketches = class_folders(base / layout.sketch_dir)
    check_not_fine_grained(spec, base, layout, list(class_folders(base / layout.photo_dir)))
    folders = {"sketches": sketches,  # photo folders keyed by the class they hold (raw spellings mapped)
               "photos": photo_folders(spec, base / layout.photo_dir, {class_key(c) for c in sketches})}
    report.counts["classes"] = len({class_key(c) for c in folders["sketches"]} & {class_key(c) for c in folders["photos"]})
    _check_classes(report, spec, folders)
    images = {m: {c: list_images(p) for c, p in f.items()} for m, f in folders.items()}
    for modality in ("sketches", "photos"):
        _check_images(report, modality, images[modality], depth)
    if spec.fine_grained:
        _check_pairs(report, images)
    for key, expected in spec.expected.items():
        if report.counts.get(key, expected) != expected:
            report.warnings.append(f"{key}: found {report.counts[key]}, the published copy has {expected}")
    try:
        wanted = split_names(spec, split, split_file)
        present = {class_key(c) for c in folders["sketches"]} & {class_key(c) for c in folders["photos"]}
        absent = [w for w in wanted if class_key(w) not in present]
        if absent:
            report.problems.append(f"split {split_file or split}: {len(absent)} unseen class(es) absent: {_listing(absent)}")
    except DataError as exc:
        report.problems.append(str(exc))
    return report


def _check_domains(report: CheckReport, spec: DatasetSpec, depth: str) -> CheckReport:
    """A multi-domain copy: every domain folder's classes and images, the protocol's class lists against
    the gallery domain, and the folders the official code would train on but sbir-bench does not read."""
    split = spec.domain_split
    base = report.root
    every = [c for names in class_lists(split, "train") for c in names]  # seen, validation and unseen
    stray = unknown_domains(spec, base)
    if stray:
        report.warnings.append(f"folder(s) {_listing(stray)} are no domain of the protocol: sbir-bench does not read "
                               f"them (the official code lists every sub-folder and would train on them)")
    absent = [d for d in split.domains if not (base / d).is_dir()]
    if absent:
        report.warnings.append(f"domain folder(s) missing: {_listing(absent)} (a run holding one out, or training "
                               f"on it, lacks its images)")
    for domain in (d for d in split.domains if (base / d).is_dir()):
        folders = class_folders(base / domain)
        keys = {class_key(c) for c in folders}
        missing = [c for c in every if class_key(c) not in keys]
        if missing:
            (report.problems if domain == split.gallery else report.warnings).append(
                f"{len(missing)} class(es) of the protocol's lists missing from {domain}/: {_listing(missing)}")
        images = {c: list_images(p) for c, p in folders.items()}
        _check_images(report, domain, images, depth)
        expected = split.images.get(domain)
        if expected and report.counts[domain] != expected:
            report.warnings.append(f"{domain}: found {report.counts[domain]:,} images, the published copy has "
                                   f"{expected:,}")
    report.counts["classes"] = len({class_key(c) for c in class_folders(base / split.gallery)})
    report.notes.append("listings are read sorted; a run's record holds their hash (data_fingerprint.files_sha256), "
                        "which names the files its draws were made from")
    return report


def _domain_task_sizes(name: str, data_root: Optional[str]) -> List[str]:
    """One line per held-out domain present and seen-class choice: the UCDR (G0, G1) and U^d-CDR
    (official and held-out galleries) test sets a run builds."""
    spec = get_spec(name)
    index = index_dataset(name, data_root)
    present = {s.domain for s in index.sketches}
    lines = []
    for seen_split in SEEN_SPLITS:
        for held in (d for d in spec.domain_split.domains if d in present):
            part = partition(index, [], TrainingPartition(held_out_domain=held, seen_split=seen_split))
            size = {(st, g): build_task(st, part, False, dataset=spec, ucdr_gallery=g if st == "ucdr" else "g0",
                                        udcdr_gallery=g if st == "udcdr" else "official")
                    for st, g in (("ucdr", "g0"), ("ucdr", "g1"), ("udcdr", "official"), ("udcdr", "held-out"))}
            q = {k: len(t.queries) for k, t in size.items()}
            g = {k: len(t.gallery) for k, t in size.items()}
            lines.append(f"held out {held}, seen {seen_split} ({len(part.seen)} classes): ucdr {q['ucdr', 'g0']:,} queries "
                         f"x {g['ucdr', 'g0']:,} (g0) / {g['ucdr', 'g1']:,} (g1) photos; udcdr {q['udcdr', 'official']:,} "
                         f"x {g['udcdr', 'official']:,} (official, training images) / {g['udcdr', 'held-out']:,} "
                         f"(held-out); training {len(part.train_sketches):,} images + {len(part.train_photos):,} photos")
    return lines


def task_sizes(name: str, data_root: Optional[str], split_file: Optional[str] = None) -> List[str]:
    """One line per split and setting: the test task a run builds (queries x gallery; GZS's seen and
    unseen parts), with the default seed and fractions, so a copy can be compared with a paper's test
    set before any GPU time is spent (docs/datasets.md lists the published ones)."""
    spec = get_spec(name)
    if spec.domain_split is not None:
        return _domain_task_sizes(name, data_root)
    index = index_dataset(name, data_root)
    splits = [split_file] if split_file else list(spec.splits)
    again = photos_listed_twice(index, data_root) if spec.listed_twice else None
    lines = []
    for split in splits:
        unseen = load_split(spec, index.class_names, "1" if split_file else split, split_file)
        part = partition(index, unseen)
        label = f"split {split}" if not split_file else f"split file {split_file}"
        for setting in SETTINGS:
            if setting in DOMAIN_SETTINGS or (setting == "fg" and not spec.fine_grained):
                continue
            task = build_task(setting, part, spec.fine_grained)
            line = f"{label} {setting}: {len(task.queries):,} queries x {len(task.gallery):,} photos"
            if setting == "zs" and again is not None:
                published = build_task(setting, part, False, listed_again=again)
                line += f" ({len(published.gallery):,} with data.gallery=published, as SAKE's/ZSE-SBIR's lists)"
            if setting == "gzs":
                seen = set(part.seen)
                seen_q = sum(1 for q in task.queries if q.label in seen)
                seen_g = sum(1 for g in task.gallery if g.label in seen)
                line += (f" (seen part {seen_q:,} x {seen_g:,}, unseen part {len(task.queries) - seen_q:,} x "
                         f"{len(task.gallery) - seen_g:,})")
            lines.append(line)
    return lines
