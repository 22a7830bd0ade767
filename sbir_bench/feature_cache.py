"""A disk cache of frozen-backbone image features, shared by runs, seeds and methods.

Zero-shot CLIP, the linear probe and CoOp see images only through the frozen image encoder, and
every such run embeds the same photo gallery again. Features are cached per *namespace*: a hash of
everything that changes them (backbone name, weights tag or weight-file SHA-256, preprocessing,
numeric precision and device type). Inside a namespace an entry is keyed by the image path, its size
and its modification time, so touching or replacing an image invalidates just that image, and a
different preprocessing or weight file gets a different namespace. Randomly initialised backbones
are never cached (their weights depend on the seed).

Layout: ``<cache>/features/<namespace>/key.json`` (what the namespace means) and shards written
atomically, ``shard-<id>.npy`` (float32 features) then ``shard-<id>.keys.npz`` (paths, sizes,
mtimes); a shard counts only once its keys file exists, so concurrent runs and DDP ranks never see
half a shard. ``sbir-bench cache list|clear`` inspects and empties it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .data.discovery import Sample
from .fileio import atomic_write_bytes, atomic_write_json, atomic_write_npz, file_sha256
from .locations import cache_root
from .log import get_logger
from .precision import Precision

log = get_logger(__name__)
FORMAT = 2  # 2: every shard's SHA-256 in its keys file
Entry = Tuple[int, int, str, int, str]  # size, mtime_ns, shard id, row, shard SHA-256


def features_root() -> Path:
    """Folder holding every namespace."""
    return cache_root() / "features"


def _stat(path: str) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


@dataclass
class FeatureCache:
    """One namespace of cached features (see the module docstring)."""

    folder: Path
    key: Dict[str, Any]
    _index: Optional[Dict[str, Entry]] = field(default=None, repr=False)
    _shards: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _dropped: set = field(default_factory=set, repr=False)

    @classmethod
    def open(cls, key: Dict[str, Any], root: Optional[Path] = None) -> "FeatureCache":
        """The namespace of ``key`` (created on first use; a damaged ``key.json`` is rewritten)."""
        text = json.dumps({**key, "format": FORMAT}, sort_keys=True)
        folder = (root or features_root()) / hashlib.sha256(text.encode()).hexdigest()[:20]
        cache = cls(folder, json.loads(text))
        cache._write_key()
        return cache

    def _write_key(self) -> None:
        """(Re)write ``key.json`` unless it is intact: ``cache clear`` or a crash may have removed it."""
        try:
            if json.loads((self.folder / "key.json").read_text()) == self.key:
                return
        except (OSError, ValueError):
            pass
        atomic_write_json(self.folder / "key.json", self.key)

    def _load_index(self) -> Dict[str, Entry]:
        if self._index is None:
            self._index = {}
            for keys in sorted(self.folder.glob("shard-*.keys.npz")):
                shard = keys.name[len("shard-"): -len(".keys.npz")]
                try:
                    with np.load(keys, allow_pickle=False) as z:
                        rows = list(zip(z["paths"].tolist(), z["sizes"], z["mtimes"]))
                        digest = str(z["sha256"])
                except Exception as exc:  # truncated, foreign or older-format keys: any of numpy's errors
                    self._drop(shard, f"unreadable keys ({type(exc).__name__})")
                    continue
                for row, (p, size, mtime) in enumerate(rows):
                    self._index[p] = (int(size), int(mtime), shard, row, digest)
        return self._index

    def _drop(self, shard: str, why: str) -> None:
        """Delete a damaged shard (with a warning); its images are computed again."""
        self._dropped.add(shard)
        log.warning(f"feature cache {self.folder.name}: dropped damaged shard {shard} ({why}); its images are recomputed")
        for suffix in (".npy", ".keys.npz"):
            (self.folder / f"shard-{shard}{suffix}").unlink(missing_ok=True)
        if self._index is not None:
            self._index = {p: e for p, e in self._index.items() if e[2] != shard}

    def _shard(self, shard: str, digest: str) -> Optional[np.ndarray]:
        """The verified features of ``shard``, or None after dropping it (checksum, shape or NaN)."""
        if shard in self._dropped:
            return None
        if shard not in self._shards:
            why = shard_problem(self.folder / f"shard-{shard}.npy", digest)
            if why:
                self._drop(shard, why)
                return None
            self._shards[shard] = np.load(self.folder / f"shard-{shard}.npy", mmap_mode="r")
        return self._shards[shard]

    def lookup(self, samples: Sequence[Sample]) -> Tuple[Dict[int, np.ndarray], List[int]]:
        """({position: feature} of the cached samples, positions to compute)."""
        index, found, missing = self._load_index(), {}, []
        for i, s in enumerate(samples):
            entry, stat = index.get(s.path), _stat(s.path)
            data = self._shard(entry[2], entry[4]) if entry is not None and stat is not None and entry[:2] == stat else None
            if data is not None and entry[3] < len(data):
                found[i] = data[entry[3]]
            else:
                missing.append(i)
        return found, missing

    def store(self, samples: Sequence[Sample], features: np.ndarray) -> None:
        """Add a shard for ``samples`` (images whose file vanished meanwhile are left out; features that
        are not finite are never cached)."""
        stats = [_stat(s.path) for s in samples]
        keep = [i for i, st in enumerate(stats) if st is not None]
        array = np.ascontiguousarray(features[keep], dtype=np.float32)
        if not keep or not np.isfinite(array).all():
            return
        self._write_key()
        shard = uuid.uuid4().hex[:12]
        buf = _npy_bytes(array)
        digest = hashlib.sha256(buf).hexdigest()
        atomic_write_bytes(self.folder / f"shard-{shard}.npy", buf)
        atomic_write_npz(self.folder / f"shard-{shard}.keys.npz", paths=np.array([samples[i].path for i in keep], dtype=str),
                         sizes=np.array([stats[i][0] for i in keep], np.int64),
                         mtimes=np.array([stats[i][1] for i in keep], np.int64), sha256=np.array(digest))
        if self._index is not None:
            for row, i in enumerate(keep):
                self._index[samples[i].path] = (*stats[i], shard, row, digest)

    def features(self, samples: Sequence[Sample], compute: Callable[[Sequence[Sample]], Tuple[np.ndarray, np.ndarray, int]]
                 ) -> Tuple[np.ndarray, np.ndarray, int]:
        """(features of the readable samples, their positions, number skipped): cached ones read,
        the rest computed by ``compute(samples) -> (features, positions, skipped)`` and stored."""
        found, missing = self.lookup(samples)
        skipped = 0
        if missing:
            todo = [samples[i] for i in missing]
            feats, pos, skipped = compute(todo)
            self.store([todo[p] for p in pos], feats)
            found.update({missing[p]: f for p, f in zip(pos, feats)})
        log.info(f"feature cache {self.folder.name}: {len(samples) - len(missing)} of {len(samples)} images cached")
        order = np.array(sorted(found), dtype=np.int64)
        if not len(order):
            return np.zeros((0, 1), np.float32), order, skipped
        return np.stack([np.asarray(found[i], np.float32) for i in order]), order, skipped


def shard_problem(path: Path, digest: str) -> str:
    """Why the shard file at ``path`` cannot be trusted ("" when it can): missing, checksum differs
    from the one its keys file recorded, not a 2-D float32 array, or not finite."""
    try:
        data = path.read_bytes()
    except OSError:
        return "shard file missing"
    if hashlib.sha256(data).hexdigest() != digest:
        return "checksum differs"
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a malformed header
        return f"unreadable ({type(exc).__name__})"
    if array.ndim != 2 or array.dtype != np.float32 or not np.isfinite(array).all():
        return "not finite float32 features"
    return ""


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def open_for(backbone, preprocess: Dict[str, Any], device_type: str, precision: Precision) -> Optional[FeatureCache]:
    """The namespace of a backbone's frozen features, or None for random weights (never cached)."""
    if not backbone.weights_file:
        return None
    weights = f"tag:{backbone.weights_tag}" if backbone.weights_tag else f"sha256:{file_sha256(backbone.weights_file)}"
    return FeatureCache.open({"backbone": backbone.name, "weights": weights, "preprocess": preprocess,
                              "precision": precision.cache_label, "device_type": device_type})


def namespaces(root: Optional[Path] = None) -> List[Dict[str, Any]]:
    """Every namespace folder with its key, entry count, damaged shards and size on disk (for
    ``sbir-bench cache list``); a folder whose key is missing or unreadable is listed, not skipped."""
    out = []
    base = root or features_root()
    for ns in sorted(p for p in base.glob("*") if p.is_dir()) if base.is_dir() else []:
        try:
            key = json.loads((ns / "key.json").read_text())
        except (OSError, ValueError):
            key = None
        entries, damaged = 0, 0
        for keys in ns.glob("shard-*.keys.npz"):
            try:
                with np.load(keys, allow_pickle=False) as z:
                    n, digest = len(z["paths"]), str(z["sha256"])
            except Exception:  # any damage to the keys file
                damaged += 1
                continue
            if shard_problem(keys.with_name(keys.name.replace(".keys.npz", ".npy")), digest):
                damaged += 1
            else:
                entries += n
        size = sum(p.stat().st_size for p in ns.iterdir() if p.is_file())
        out.append({"namespace": ns.name, "key": key, "entries": entries, "damaged": damaged, "bytes": size})
    return out


def clear(root: Optional[Path] = None) -> int:
    """Delete every namespace folder (with or without its key); returns how many were removed."""
    base = root or features_root()
    folders = [p for p in base.glob("*") if p.is_dir()] if base.is_dir() else []
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return len(folders)
