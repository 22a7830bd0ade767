"""The cost model: what one training step of a method costs, counted before any GPU hour is spent.

The real method is built on PyTorch's meta device (shapes, no weights, no data) and one training
step is traced there: :class:`~torch.utils.flop_counter.FlopCounterMode` counts its FLOPs (forward
and backward), a saved-tensor hook the bytes autograd holds between them (the activations), and a
dispatch mode the largest memory one op's output owns (the workspace); with ``train.amp`` the forward
runs under bf16 autocast's casting rule (:mod:`sbir_bench.meta_autocast`). Parameters, gradients and
optimiser state follow from the trainable parameters. The step is traced at two micro-batch sizes;
everything in between is linear in the micro-batch (every method's per-triplet work is), which gives
the figures at any batch without a trace per size. The memory plan (:mod:`sbir_bench.training.memory`)
and the estimate (:mod:`sbir_bench.estimate`) read it.

``tests/test_sizing.py`` holds the cost model to what a real step on the CPU allocates and holds, for
every method at three sizes (torch.profiler's record), and the FLOP count to a hand count.

>>> round(_Linear((2, 4), (100, 180))(3))  # a quantity measured at 2 and 4 triplets, read at 3
140
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from . import meta_autocast
from .config import RunConfig, from_dict
from .data.balanced import ImageBatch, domain_sizes, training_images
from .data.catalog import get_spec
from .data.domains import domain_catalog_sizes
from .data.splits import load_split, package_file, read_class_file
from .data.triplets import TripletBatch
from .fileio import atomic_write_json
from .locations import cache_root
from .log import get_logger
from .methods import get_method
from .methods.base import resolved_method_config
from .models.backbone_configs import create_model
from .models.factory import Backbone
from .models.prompted import PromptedCLIP

log = get_logger(__name__)
TRACE_SIZES = (2, 4)  # micro-batches (triplets) traced; even, so SpLIP's jigsaw half is exact at both


# ------------------------------------------------------------------------------------ tracing one step
@dataclass
class StepTrace:
    """What one training step of a micro-batch costs: bytes autograd saves, FLOPs, largest op output."""

    saved_bytes: int
    flops: int
    largest_op_bytes: int


class _LargestOutput(TorchDispatchMode):
    """Records the largest memory any op's output owns (the transient workspace beside what is saved):
    a view of an input (an expanded weight, a reshape) owns nothing new and is not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in inputs:
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


def _fused_on_meta(original: Callable) -> Callable:
    """``scaled_dot_product_attention`` that sends meta tensors to the fused (memory-efficient) kernel
    and everything else to ``original``, unchanged."""
    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if query.device.type != "meta":
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, **kwargs)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device)
            attn_mask = attn_mask.expand(*query.shape[:-1], key.shape[-2])
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, True, dropout_p, is_causal, scale=scale)[0]
    return attention


@contextlib.contextmanager
def fused_attention():
    """Attention as a GPU runs it, for meta-device traces. PyTorch's meta kernels take the math path,
    which saves the whole attention matrix; a CUDA GPU runs a fused kernel that saves the output and
    its log-sum-exp. For the trace, ``F.scaled_dot_product_attention`` (which ``nn.MultiheadAttention``
    calls) sends meta tensors to the fused kernel; any other tensor takes PyTorch's own path."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_on_meta(original)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def held_storages(module: torch.nn.Module) -> set:
    """The storages of ``module``'s parameters and buffers: memory that exists whether or not a step runs."""
    return {t.untyped_storage()._cdata for t in (*module.parameters(), *module.buffers())}


@contextlib.contextmanager
def counting_saved(held: set) -> Iterator[Dict[int, int]]:
    """Bytes autograd saves inside the block, by storage (each once; ``held`` storages left out)."""
    saved: Dict[int, int] = {}
    alive: List[torch.Tensor] = []  # kept until the count is done: a freed storage's address is never reused

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in held:
            saved[storage._cdata] = storage.nbytes()
            alive.append(t)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


def trace_step(method: torch.nn.Module, batch: "TripletBatch | ImageBatch",
               autocast: Optional[meta_autocast.AutocastLists] = None) -> StepTrace:
    """Run ``method.loss(batch)`` and its backward once, counting saved bytes (each storage once;
    parameters and buffers, which exist anyway, left out), FLOPs and the largest op output. Works on
    any device: the meta device for an estimate, the CPU for its calibration. ``autocast``: the forward
    under bf16 autocast with those op lists (:mod:`~sbir_bench.meta_autocast`; fp32 when None)."""
    largest = _LargestOutput()
    device = batch.label.device.type
    emulated, real = (autocast, None) if device == "meta" else (None, autocast)
    # the emulation stays on through the backward pass: checkpointed chunks recompute their forward there,
    # in the precision their forward ran in (PyTorch's own autocast restores itself for that)
    with FlopCounterMode(display=False) as flops, largest, meta_autocast.autocast(emulated):
        with counting_saved(held_storages(method)) as saved, meta_autocast.autocast(real, device):
            loss = method.loss(batch)["loss"]
        loss.backward()
    return StepTrace(sum(saved.values()), int(flops.get_total_flops()), largest.largest)


def trace_embedding(method: torch.nn.Module, images: torch.Tensor) -> int:
    """FLOPs of embedding ``images`` as sketches (evaluation's cost per image x their number)."""
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        method.embed_sketches(images)
    return int(flops.get_total_flops())


def _cpu_tokenizer(tokenizer: Callable) -> Callable:
    """``tokenizer`` whose ids stay real on the CPU inside a meta-device context (lengths are read)."""
    def tokenize(texts, *args, **kwargs):
        with torch.device("cpu"):
            return tokenizer(texts, *args, **kwargs)
    return tokenize


def meta_backbone(name: str) -> Backbone:
    """``name``'s open_clip model on the meta device: every shape, no weights."""
    with torch.device("meta"):
        model, _, preprocess = create_model(name, device="meta")
    model.eval().requires_grad_(False)
    size = model.visual.image_size
    return Backbone(name=name, pretrained=None, model=model, preprocess=preprocess,
                    tokenizer=_cpu_tokenizer(open_clip.get_tokenizer(name)),
                    image_size=int(size[0] if isinstance(size, (tuple, list)) else size))


def meta_method(method: str, method_config: Dict[str, Any], backbone: str, class_names: Sequence[str],
                seen: Sequence[int], text_chunk: int = 0):
    """The real method built on a meta backbone (its own tensors on the meta device too)."""
    cls = get_method(method)
    bb = meta_backbone(backbone)
    with torch.device("meta"):
        built = cls(bb, list(class_names), list(seen), from_dict(cls.config_class, method_config, "method_config"))
    built.set_text_chunk(text_chunk)
    return built


def meta_batch(method, n: int, features: bool) -> TripletBatch:
    """A micro-batch of ``n`` triplets on the meta device: images, or cached frozen features."""
    if features:
        shape: Tuple[int, ...] = (n, method.backbone.embed_dim)
    else:
        side = method.backbone.image_size
        shape = (n, 3, side, side)
    x = lambda: torch.empty(shape, device="meta")  # noqa: E731
    labels = lambda: torch.zeros(n, dtype=torch.long, device="meta")  # noqa: E731
    return TripletBatch(x(), x(), x(), labels(), labels(), features=features, domain=labels(), positive_domain=labels())


# ------------------------------------------------------------------------------------ the estimate
@dataclass
class Counts:
    """The sizes a run's cost follows from, and where they came from."""

    train_sketches: int
    class_names: List[str]
    seen: List[int]
    test_images: int  # queries + gallery
    source: str  # "the copy on disk" or "the catalog's published counts"
    train_photos: Optional[int] = None  # None: unknown (an epoch rule that reads them takes the sketches')
    # training images per domain in the official dictionary's order (an official sampler's epoch reads them);
    # None: photos and sketches (photo 0, sketch 1)
    train_domains: Optional[List[int]] = None

    def domain_sizes(self) -> List[int]:
        """Training images per domain, as an official sampler's epoch counts them (data/balanced.py)."""
        if self.train_domains:
            return list(self.train_domains)
        return [self.train_photos if self.train_photos is not None else self.train_sketches, self.train_sketches]


@dataclass(frozen=True)
class _Linear:
    """A quantity measured at two micro-batch sizes, as a + b * m."""

    at: Tuple[int, int]
    values: Tuple[int, int]

    def __call__(self, m: int) -> int:
        (m1, m2), (v1, v2) = self.at, self.values
        return max(0, round(v1 + (v2 - v1) * (m - m1) / (m2 - m1)))

    @property
    def per_sample(self) -> float:
        (m1, m2), (v1, v2) = self.at, self.values
        return (v2 - v1) / (m2 - m1)


@dataclass(frozen=True)
class MethodCost:
    """A method's traced costs, independent of the batch size and the GPU."""

    trainable: int
    weights_bytes: int
    saved: _Linear
    flops: _Linear
    largest: _Linear
    embed_flops_per_image: int
    features: bool  # trains on cached frozen features
    text_chunk: int = 0  # images per checkpointed chunk of class texts (0: not chunked)
    chunk_bytes: _Linear = _Linear((1, 2), (0, 0))  # what a chunk of that many images saves while recomputed
    text_images: _Linear = _Linear(TRACE_SIZES, (0, 0))  # the most images one class-text call takes, per micro-batch

    @classmethod
    def from_dict(cls, tree: Dict[str, Any]) -> "MethodCost":
        linear = {k: _Linear(tuple(tree[k]["at"]), tuple(tree[k]["values"]))
                  for k in ("saved", "flops", "largest", "chunk_bytes", "text_images")}
        return cls(**{**tree, **linear})

    def chunk_images(self, micro: int) -> int:
        """Images in the largest checkpointed chunk a micro-batch of ``micro`` triplets computes: a call
        smaller than ``text_chunk`` is one chunk of its own size."""
        return min(self.text_chunk, self.text_images(micro)) if self.text_chunk else 0

    def workspace(self, micro: int) -> int:
        """Transient bytes beside what is saved: the largest op output, or one class-text chunk."""
        chunk = self.chunk_images(micro)
        return max(self.largest(micro), self.chunk_bytes(chunk) if chunk else 0)


def _capture_text_chunks(method) -> Tuple[List[tuple], List[int]]:
    """Record the arguments of every checkpointed class-text chunk ``method`` computes (meta copies we own),
    and how many images each class-text call takes."""
    calls: List[tuple] = []
    sizes: List[int] = []
    for module in method.modules():
        if isinstance(module, PromptedCLIP):
            inner, outer = module._texts_after, module.encode_text_after

            def record(*args, _inner=inner):
                calls.append((_inner, args))
                return _inner(*args)

            def sized(prefix, *args, _outer=outer, **kwargs):
                sizes.append(int(prefix.inputs[0].shape[0]))
                return _outer(prefix, *args, **kwargs)
            module._texts_after, module.encode_text_after = record, sized
    return calls, sizes


def _chunk_bytes(calls: List[tuple], images: int, held: set, autocast: Optional[meta_autocast.AutocastLists]) -> int:
    """Bytes one chunk of ``images`` images saves (the first recorded chunk, widened to ``images``); the
    text tower's weights, which exist anyway, are not counted."""
    if not calls:
        return 0
    inner, (prefix_inputs, suffix, eot, normalize) = calls[0]
    wide = [x[:1].detach().expand(images, *x.shape[1:]).requires_grad_() for x in prefix_inputs]
    with counting_saved(held) as saved, fused_attention(), meta_autocast.autocast(autocast, wide[0].device.type):
        inner(wide, suffix, eot, normalize)
    return sum(saved.values())


def _method_cost(method: str, method_config_json: str, backbone: str, class_names: Tuple[str, ...],
                 seen: Tuple[int, ...], text_chunk: int, stage: str = "", amp: bool = False) -> MethodCost:
    # Chunked class texts are traced two images per chunk: what a step holds does not depend on the
    # chunk size; the recomputed chunk's own activations are counted once, at the real size.
    built = meta_method(method, json.loads(method_config_json), backbone, class_names, seen, min(text_chunk, 2))
    built.begin_stage(stage)  # a method trained in stages: what this stage trains and computes
    trainable = sum(p.numel() for p in built.parameters() if p.requires_grad)
    weights = sum(t.numel() * t.element_size() for t in (*built.parameters(), *built.buffers()))
    unseen = [class_names[i] for i in range(len(class_names)) if i not in set(seen)] or list(class_names)
    built.prepare_eval(unseen)
    side = built.backbone.image_size
    with fused_attention():
        embed = trace_embedding(built, torch.empty(2, 3, side, side, device="meta")) // 2
    features = built.trains_on_frozen_features()
    if not built.trainable or not trainable:
        zero = _Linear(TRACE_SIZES, (0, 0))
        return MethodCost(0, weights, zero, zero, zero, embed, features)
    built.train()
    calls, sizes = _capture_text_chunks(built) if text_chunk else ([], [])
    traces, most = [], []
    lists = meta_autocast.CUDA if amp else None  # bf16 autocast as a CUDA GPU runs it
    with fused_attention():
        for m in TRACE_SIZES:
            sizes.clear()
            traces.append(trace_step(built, meta_batch(built, m, features), lists))
            most.append(max(sizes, default=0))
    held = held_storages(built)
    return MethodCost(trainable, weights, _Linear(TRACE_SIZES, tuple(t.saved_bytes for t in traces)),
                      _Linear(TRACE_SIZES, tuple(t.flops for t in traces)),
                      _Linear(TRACE_SIZES, tuple(t.largest_op_bytes for t in traces)), embed, features, text_chunk,
                      _Linear((1, 2), tuple(_chunk_bytes(calls, n, held, lists) for n in (1, 2))),
                      _Linear(TRACE_SIZES, tuple(most)))


def method_cost(cfg: RunConfig, counts: Counts, stage: str = "") -> MethodCost:
    """The traced costs of ``cfg``'s method (in training stage ``stage``) on ``counts``' classes: traced
    once per identical method and class list, kept in memory and on disk (``<cache>/estimates``, keyed
    by everything the trace reads, the code that computes it included)."""
    resolved = asdict(resolved_method_config(cfg))  # as the run builds it (one domain unit per DomainNet domain)
    return _cached_cost(cfg.method, json.dumps(resolved, sort_keys=True, default=str), cfg.backbone.name,
                        tuple(counts.class_names), tuple(counts.seen), cfg.train.text_chunk, stage, bool(cfg.train.amp))


@lru_cache(maxsize=64)
def _cached_cost(*args: Any) -> MethodCost:
    """:func:`_method_cost` of ``args``, read from (or written to) the disk cache once per process."""
    path = cache_root() / "estimates" / f"{_trace_key(*args)}.json"
    try:
        return MethodCost.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not traced yet (or unreadable: traced again)
    cost = _method_cost(*args)
    try:
        atomic_write_json(path, asdict(cost))
    except OSError as exc:  # a read-only cache costs time, never the estimate
        log.debug(f"estimate not cached: {exc}")
    return cost


def _trace_key(*args: Any) -> str:
    """A digest of a trace's inputs and of the code that traces (the method's module, the prompted
    encoders, this module, the autocast rule a bf16 trace follows) and the library versions: a changed
    method or casting rule never reads an old trace."""
    files = {Path(inspect.getsourcefile(get_method(args[0]))), Path(__file__), Path(inspect.getsourcefile(PromptedCLIP)),
             Path(meta_autocast.__file__)}
    code = b"".join(f.read_bytes() for f in sorted(files))
    blob = json.dumps([list(a) if isinstance(a, tuple) else a for a in args] + [torch.__version__, open_clip.__version__])
    return hashlib.sha256(blob.encode() + code).hexdigest()[:32]


def optimizer_states(train) -> int:
    """fp32 tensors the optimiser keeps per trainable parameter: AdamW two moments, SGD its momentum."""
    return 2 if train.optimizer == "adamw" else int(train.momentum > 0)


def static_bytes(cost: MethodCost, train) -> Tuple[int, int, int]:
    """(weights, gradients, optimiser state) bytes: fp32 master weights and gradients of the trainable part."""
    grads = 4 * cost.trainable
    return cost.weights_bytes, grads, optimizer_states(train) * grads


def peak_bytes(cost: MethodCost, train, micro: int) -> int:
    """Predicted peak memory of a step over micro-batches of ``micro`` triplets."""
    return sum(static_bytes(cost, train)) + cost.saved(micro) + cost.workspace(micro)


def predicted_peak(cfg: RunConfig, counts: Counts, micro: int, stage: str = "") -> int:
    """Predicted peak bytes of ``cfg``'s training step (in ``stage``) over micro-batches of ``micro`` triplets."""
    return peak_bytes(method_cost(cfg, counts, stage), cfg.train, micro)


def catalog_counts(data) -> Counts:
    """Counts from the catalog (official class list and published totals) when no copy is on disk, for a
    run's ``data`` section (a ``config.DataConfig``)."""
    spec = get_spec(data.dataset)
    if spec.domain_split is not None:
        names, seen, sizes = domain_catalog_sizes(spec, data.held_out_domain, data.seen_split, data.setting,
                                                  data.ucdr_gallery, data.query_domain)
        return Counts(sizes["train_sketches"], names, seen, sizes["test_images"],
                      "the catalog's published per-domain totals, split by class share", sizes["train_photos"],
                      sizes["train_domains"])
    names = read_class_file(package_file("classes", spec.class_list))
    unseen = set(load_split(spec, names, data.split, data.split_file))
    seen = [i for i in range(len(names)) if i not in unseen]
    share = len(seen) / len(names)
    sketches, photos = spec.expected.get("sketches", 0), spec.expected.get("photos", 0)
    return Counts(int(sketches * share * (1 - data.val_fraction)), names, seen,
                  int((sketches + photos) * (1 - share)), "the catalog's published counts",
                  int(photos * share * (1 - data.val_fraction)) if photos else None)


def counts_from_data(data) -> Counts:
    """Counts of a run's prepared data (:class:`~sbir_bench.runner.RunData`)."""
    part = data.part
    _, domain_ids = training_images(part.train_sketches, part.train_photos, part.seen)
    return Counts(len(part.train_sketches), list(data.index.class_names), list(part.seen),
                  len(data.task.queries) + len(data.task.gallery), "the copy on disk", len(part.train_photos),
                  domain_sizes(domain_ids))
