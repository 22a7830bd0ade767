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
from .fileio import atomic_write_bytes, atomic_write_json, atomic_write_npz, cache_root
from .log import get_logger

log = get_logger(__name__)
FORMAT = 1
Entry = Tuple[int, int, str, int]  # size, mtime_ns, shard id, row


def features_root() -> Path:
    """Folder holding every namespace."""
    return cache_root() / "features"


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (weight files are identified by content, not by name)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


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

    @classmethod
    def open(cls, key: Dict[str, Any], root: Optional[Path] = None) -> "FeatureCache":
        """The namespace of ``key`` (created on first use)."""
        text = json.dumps({**key, "format": FORMAT}, sort_keys=True)
        folder = (root or features_root()) / hashlib.sha256(text.encode()).hexdigest()[:20]
        if not (folder / "key.json").is_file():
            atomic_write_json(folder / "key.json", json.loads(text))
        return cls(folder, key)

    def _load_index(self) -> Dict[str, Entry]:
        if self._index is None:
            self._index = {}
            for keys in sorted(self.folder.glob("shard-*.keys.npz")):
                shard = keys.name[len("shard-"): -len(".keys.npz")]
                with np.load(keys, allow_pickle=False) as z:
                    for row, (p, size, mtime) in enumerate(zip(z["paths"].tolist(), z["sizes"], z["mtimes"])):
                        self._index[p] = (int(size), int(mtime), shard, row)
        return self._index

    def _vector(self, shard: str, row: int) -> np.ndarray:
        if shard not in self._shards:
            self._shards[shard] = np.load(self.folder / f"shard-{shard}.npy", mmap_mode="r")
        return self._shards[shard][row]

    def lookup(self, samples: Sequence[Sample]) -> Tuple[Dict[int, np.ndarray], List[int]]:
        """({position: feature} of the cached samples, positions to compute)."""
        index, found, missing = self._load_index(), {}, []
        for i, s in enumerate(samples):
            entry, stat = index.get(s.path), _stat(s.path)
            if entry is not None and stat is not None and entry[:2] == stat:
                found[i] = self._vector(entry[2], entry[3])
            else:
                missing.append(i)
        return found, missing

    def store(self, samples: Sequence[Sample], features: np.ndarray) -> None:
        """Add a shard for ``samples`` (images whose file vanished meanwhile are left out)."""
        stats = [_stat(s.path) for s in samples]
        keep = [i for i, st in enumerate(stats) if st is not None]
        if not keep:
            return
        shard = uuid.uuid4().hex[:12]
        buf = _npy_bytes(np.ascontiguousarray(features[keep], dtype=np.float32))
        atomic_write_bytes(self.folder / f"shard-{shard}.npy", buf)
        atomic_write_npz(self.folder / f"shard-{shard}.keys.npz", paths=np.array([samples[i].path for i in keep], dtype=str),
                         sizes=np.array([stats[i][0] for i in keep], np.int64),
                         mtimes=np.array([stats[i][1] for i in keep], np.int64))
        if self._index is not None:
            for row, i in enumerate(keep):
                self._index[samples[i].path] = (*stats[i], shard, row)

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


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def open_for(backbone, preprocess: Dict[str, Any], device_type: str, amp: bool) -> Optional[FeatureCache]:
    """The namespace of a backbone's frozen features, or None for random weights (never cached)."""
    if not backbone.weights_file:
        return None
    weights = f"tag:{backbone.weights_tag}" if backbone.weights_tag else f"sha256:{file_sha256(backbone.weights_file)}"
    precision = "bf16-autocast" if amp and device_type == "cuda" else "fp32"
    return FeatureCache.open({"backbone": backbone.name, "weights": weights, "preprocess": preprocess,
                              "precision": precision, "device_type": device_type})


def namespaces(root: Optional[Path] = None) -> List[Dict[str, Any]]:
    """Every namespace with its key, entry count and size on disk (for ``sbir-bench cache list``)."""
    out = []
    for folder in sorted((root or features_root()).glob("*/key.json")):
        ns = folder.parent
        entries = 0
        for keys in ns.glob("shard-*.keys.npz"):
            with np.load(keys, allow_pickle=False) as z:
                entries += len(z["paths"])
        size = sum(p.stat().st_size for p in ns.iterdir() if p.is_file())
        out.append({"namespace": ns.name, "key": json.loads(folder.read_text()), "entries": entries, "bytes": size})
    return out


def clear(root: Optional[Path] = None) -> int:
    """Delete every namespace; returns how many were removed."""
    folders = [p.parent for p in (root or features_root()).glob("*/key.json")]
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return len(folders)
