"""Build open_clip backbones from a name and a weight source, offline-safe.

``--backbone ViT-B-32 --pretrained openai`` goes through open_clip's own pretrained registry and
cache; ``--pretrained PATH`` loads a local checkpoint; ``--pretrained random`` (or no ``--pretrained``
for an open_clip model) gives random init. The bundled ``sbir-tiny`` config defaults to ``mini``:
weights pretrained on synthetic photos, shipped with the package (see ``tiny_pretrain``). A weight file
that is not cached while offline is a one-line :class:`WeightsError` naming the cache directory and
the ``--pretrained PATH`` way out, never a network stack trace.

The backbone carries the preprocessing its weights were trained with (open_clip's preprocess config,
including the tag's interpolation, resize mode and statistics): see :mod:`.preprocess`.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional
from urllib.parse import urlparse

import open_clip
import torch
from safetensors import SafetensorError, safe_open

from ..errors import WeightsError
from ..locations import weights_folder
from .backbone_configs import TINY, create_model, list_backbones
from .tiny_pretrain import TAG, ensure_weights

RANDOM = "random"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass
class Backbone:
    """A frozen open_clip model with its preprocessing config and tokenizer."""

    name: str
    pretrained: Optional[str]
    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    image_size: int
    preprocess_cfg: Dict[str, Any] = field(default_factory=dict)
    weights_file: Optional[str] = None  # the local file the weights came from (None: random init)

    @property
    def weights_tag(self) -> Optional[str]:
        """The open_clip tag the weights came from, or None for a local file or random init."""
        p = self.pretrained
        return p if p and not is_path(p) and open_clip.is_pretrained_cfg(self.name, p) else None

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])


def default_cache_dir(cache_dir: Optional[str]) -> str:
    """Where open_clip's URL weights are looked for and downloaded: ``--cache-dir``, else
    ``$SBIR_BENCH_WEIGHTS`` (:func:`~sbir_bench.locations.weights_folder`), else open_clip's own
    ``~/.cache/clip``. ``$SBIR_BENCH_CACHE`` is the cache of what sbir-bench generates, never this."""
    return cache_dir or str(weights_folder())


def _cached_weight_file(name: str, tag: str, cache_dir: Optional[str]) -> Optional[str]:
    """Path of the already-downloaded file for ``name``/``tag`` or None (never downloads)."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        # imported only when a tag is looked up in the Hugging Face cache (its import is slow)
        from huggingface_hub import try_to_load_from_cache
        repo_id, filename = (hf_hub.rstrip("/"), "open_clip_pytorch_model.bin") if hf_hub.endswith("/") \
            else os.path.split(hf_hub)
        for candidate in (filename, filename.replace(".bin", ".safetensors"), "open_clip_model.safetensors"):
            hit = try_to_load_from_cache(repo_id, candidate, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    url = cfg.get("url", "")
    if url:
        target = os.path.join(default_cache_dir(cache_dir), os.path.basename(url))
        if os.path.isfile(target):
            return target
    return None


def _offline(cfg: Dict[str, Any]) -> bool:
    """True when weights cannot be downloaded: offline flags set, or the weight host is unreachable.

    Probing one TCP connection (3 s, once per host and process) first turns "no network" into an
    immediate one-line error instead of a minute of Hugging Face retries and a stack trace.
    """
    if any(os.environ.get(v, "0") not in ("", "0") for v in ("SBIR_BENCH_OFFLINE", "HF_HUB_OFFLINE")):
        return True
    host = "huggingface.co" if cfg.get("hf_hub") else urlparse(cfg.get("url", "")).hostname
    return not host or not _reachable(host)


@functools.lru_cache(maxsize=None)
def _reachable(host: str) -> bool:
    """Whether one TCP connection to ``host`` opens within 3 s (asked once per process: a table's
    cells share two weight hosts, and waiting 3 s per cell is what made dry runs slow)."""
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return False
    return True


def resolve_pretrained(name: str, pretrained: Optional[str]) -> Optional[str]:
    """The weight source actually used: ``sbir-tiny`` defaults to its mini-pretrained weights,
    ``random`` (or None for other backbones) means random initialisation."""
    if pretrained is None and name == TINY:
        return TAG
    return None if pretrained in (None, RANDOM) else pretrained


def is_path(pretrained: str) -> bool:
    """True when ``pretrained`` names a local file rather than an open_clip tag."""
    return os.path.sep in pretrained or pretrained.endswith(CHECKPOINT_SUFFIXES)


def check_checkpoint_file(path: str) -> None:
    """One-line error unless ``path`` is a readable, complete torch or safetensors checkpoint."""
    if os.path.isdir(path):
        raise WeightsError(f"--pretrained {path} is a folder, not a checkpoint file; give the .pt, .bin or "
                           f".safetensors file of open_clip weights inside it")
    if not os.path.isfile(path):
        raise WeightsError(f"checkpoint file not found: {path}")
    if os.path.getsize(path) == 0:
        raise WeightsError(f"checkpoint file {path} is empty")
    if path.endswith(".safetensors"):
        try:
            with safe_open(path, framework="pt") as fh:
                fh.keys()
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"could not load weights {path}: not a readable safetensors file "
                               f"({str(exc).splitlines()[0][:120]})") from None
        return
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except RuntimeError as exc:
        why = "truncated or corrupt" if "zip archive" in str(exc) or "central directory" in str(exc) else \
            str(exc).splitlines()[0][:120]
        raise WeightsError(f"could not load weights {path}: {why}") from None
    except Exception as exc:  # pickle/unpickling errors of files that are not checkpoints at all
        raise WeightsError(f"could not load weights {path}: not a checkpoint ({type(exc).__name__}); give a "
                           f"torch .pt/.bin or .safetensors file of open_clip weights") from None


def _resolve_weights(name: str, pretrained: str, cache_dir: Optional[str]) -> str:
    """Turn ``pretrained`` (a path or an open_clip tag) into a local file path."""
    if name == TINY:
        if pretrained == TAG:
            return ensure_weights()
    if is_path(pretrained):
        check_checkpoint_file(pretrained)
        return pretrained
    if not open_clip.is_pretrained_cfg(name, pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        hint = f"known tags for {name}: {', '.join(tags)}" if tags else f"{name} has no open_clip pretrained tags"
        raise WeightsError(f"unknown pretrained tag {pretrained!r} for backbone {name} ({hint}), or pass --pretrained PATH")
    hit = _cached_weight_file(name, pretrained, cache_dir)
    if hit:
        return hit
    where = default_cache_dir(cache_dir)
    message = (f"weights {name}/{pretrained} are not cached (looked in {where} and the Hugging Face cache) and "
               f"cannot be downloaded offline; copy them there, set --cache-dir, or pass --pretrained PATH to a local checkpoint")
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if _offline(cfg):
        raise WeightsError(message)
    try:
        return open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception:  # network failures come in many types; all mean the same thing here
        raise WeightsError(message) from None


def check_weights_source(name: str, pretrained: Optional[str], cache_dir: Optional[str], network: bool = True) -> None:
    """One-line error now if ``name``/``pretrained`` cannot be loaded later (nothing is loaded or built):
    unknown backbone or tag, missing or unreadable checkpoint file, uncached weights while offline.

    With ``network=False`` (a dry run) uncached weights are not checked against the network at all:
    :class:`WeightsNotCached` says so without waiting on a connection."""
    if name not in list_backbones():
        raise WeightsError(f"unknown backbone {name!r}; run `sbir-bench backbones` to list the names open_clip knows")
    source = resolve_pretrained(name, pretrained)
    if source is None or (name == TINY and source == "mini"):
        return
    if is_path(source):
        check_checkpoint_file(source)
        return
    if not open_clip.is_pretrained_cfg(name, source):
        _resolve_weights(name, source, cache_dir)  # raises the unknown-tag error
    elif _cached_weight_file(name, source, cache_dir) is None:
        if not network:
            raise WeightsNotCached(f"weights {name}/{source} not cached in {default_cache_dir(cache_dir)} "
                                   f"(downloaded on first use, if this machine has network)")
        if _offline(open_clip.get_pretrained_cfg(name, source)):
            _resolve_weights(name, source, cache_dir)  # raises the offline error


class WeightsNotCached(WeightsError):
    """Weights that are not on this machine yet, said without asking the network (dry runs)."""


def tag_overrides(name: str, pretrained: Optional[str]) -> Dict[str, Any]:
    """Model-building options an open_clip tag implies: QuickGELU and the tag's preprocessing.

    Weights are loaded from a resolved local file, so open_clip never sees the tag itself; the
    settings the tag was trained with must be passed explicitly or OpenAI weights would run with
    the wrong activation and images would be resized and normalised differently (silently worse
    numbers).
    """
    if not pretrained or not open_clip.is_pretrained_cfg(name, pretrained):
        return {}
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    out: Dict[str, Any] = {"force_quick_gelu": bool(cfg.get("quick_gelu", False))}
    for key, option in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"),
                        ("resize_mode", "image_resize_mode")):
        if cfg.get(key):
            out[option] = tuple(cfg[key]) if isinstance(cfg[key], (list, tuple)) else cfg[key]
    return out


def load_error_summary(exc: Exception, keys: int = 3) -> str:
    """One line saying why weights did not load, naming up to ``keys`` missing / unexpected / mismatched
    keys from torch's multi-line ``load_state_dict`` message (its first line names none)."""
    text = str(exc)
    parts = []
    for kind in ("Missing key(s)", "Unexpected key(s)"):
        m = re.search(re.escape(kind) + r' in state_dict: (.*?)(?:\.\s*$|\.\s*\n)', text, re.M | re.S)
        if m:
            names = re.findall(r'"([^"]+)"', m.group(1))
            more = f" and {len(names) - keys} more" if len(names) > keys else ""
            parts.append(f"{kind.split()[0].lower()} keys {', '.join(names[:keys])}{more}")
    sizes = re.findall(r"size mismatch for ([\w.]+): copying a param with shape (torch.Size\(\[[^\]]*\]\))", text)
    if sizes:
        parts.append("shape mismatch for " + ", ".join(f"{k} ({s})" for k, s in sizes[:keys]))
    if parts:
        return "; ".join(parts) + " (a checkpoint of another model? check --backbone)"
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def load_backbone(name: str = TINY, pretrained: Optional[str] = None, cache_dir: Optional[str] = None,
                  device: str | torch.device = "cpu") -> Backbone:
    """Build ``name`` with weights from ``pretrained`` (tag, path or None), frozen and in eval mode."""
    if name not in list_backbones():
        raise WeightsError(f"unknown backbone {name!r}; run `sbir-bench backbones` to list the names open_clip knows")
    pretrained = resolve_pretrained(name, pretrained)
    weights = _resolve_weights(name, pretrained, cache_dir) if pretrained else None
    try:
        model, _, preprocess = create_model(name, pretrained=weights, cache_dir=cache_dir,
                                            **tag_overrides(name, pretrained))
    except (RuntimeError, KeyError, ValueError) as exc:  # what loading a state dict raises on a mismatch
        if weights is None:  # nothing was loaded: not a weights problem, so not renamed into one
            raise
        raise WeightsError(f"could not load weights {weights} into {name}: {load_error_summary(exc)}") from None
    model.eval().requires_grad_(False).to(device)
    size = model.visual.image_size
    image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return Backbone(name=name, pretrained=pretrained, model=model, preprocess=preprocess,
                    tokenizer=open_clip.get_tokenizer(name), image_size=image_size,
                    preprocess_cfg=dict(open_clip.get_model_preprocess_cfg(model)), weights_file=weights)
