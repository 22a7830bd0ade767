"""Autocast on the meta device, for the resource estimate: what a bf16 step saves, counted without a GPU.

PyTorch has no autocast for meta tensors, yet what a mixed-precision step holds differs from the fp32
step in both directions: activations saved by matrix products are bf16 (half), but every frozen weight
a product multiplies is cast to a bf16 copy that autograd keeps for the backward pass (autocast caches
casts only of leaves that require a gradient), and ops on autocast's fp32 list save an fp32 copy of
their bf16 input. :class:`AutocastEmulation` reproduces autocast's casting rule at the Python level,
above autograd (where the ops are looked up), so that a meta trace sees the same casts and saves the
same tensors.

The op lists follow PyTorch's autocast op reference ("CUDA Ops that can autocast to float16/float32",
"CPU Ops that can autocast to bfloat16/float32"): :data:`CUDA` is what the estimate uses (a GPU runs
the step), :data:`CPU` lets ``tests/test_sizing.py`` hold the emulation to a real CPU step under
``torch.autocast("cpu")``. Ops on neither list run in the widest input type, as under autocast.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_map

T = torch.Tensor
Op = Tuple[Any, str]  # (module or class, attribute): where the code that calls the op looks it up
# matrix products: autocast's lower-precision list on both devices (einsum runs bmm, which is on it)
PRODUCTS: FrozenSet[Op] = frozenset(
    [(F, "linear"), (F, "conv1d"), (F, "conv2d"), (F, "conv3d"), (F, "scaled_dot_product_attention"),
     (torch, "einsum")] + [(owner, name) for owner in (torch, T) for name in ("matmul", "mm", "bmm", "baddbmm", "addmm")]
    + [(T, "__matmul__"), (T, "__rmatmul__")])
LOSSES: FrozenSet[Op] = frozenset((F, name) for name in (
    "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "kl_div", "binary_cross_entropy_with_logits",
    "triplet_margin_loss", "margin_ranking_loss"))
# CUDA's fp32 list also holds normalisation, softmax and the reductions (CPU's holds only the losses)
CUDA_FP32: FrozenSet[Op] = LOSSES | frozenset(
    [(F, name) for name in ("layer_norm", "group_norm", "softmax", "log_softmax", "normalize", "cosine_similarity",
                            "softplus")]
    + [(owner, name) for owner in (torch, T) for name in ("softmax", "log_softmax", "norm", "exp", "log", "pow", "sum",
                                                         "logsumexp", "cumsum", "rsqrt")]
    + [(T, "__pow__")])


@dataclass(frozen=True)
class AutocastLists:
    """Which ops autocast runs in the low precision and which in fp32, on one device type."""

    device: str
    low: FrozenSet[Op]
    fp32: FrozenSet[Op]


CUDA = AutocastLists("cuda", PRODUCTS, CUDA_FP32)
CPU = AutocastLists("cpu", PRODUCTS, LOSSES)


class AutocastEmulation:
    """Casts the floating inputs of ``lists.low`` ops to ``dtype`` and of ``lists.fp32`` ops to fp32, as
    autocast does; a leaf that requires a gradient is cast once per step (autocast's cast cache). The
    ops are wrapped where callers look them up (``torch.nn.functional.linear``, ``Tensor.__matmul__``
    ...), above autograd, so that autograd records the casts and saves what they produce."""

    def __init__(self, lists: AutocastLists = CUDA, dtype: torch.dtype = torch.bfloat16) -> None:
        self.lists, self.dtype = lists, dtype
        self.cache: Dict[int, torch.Tensor] = {}
        self.originals: List[Tuple[Any, str, Any]] = []

    def cast(self, value: Any, dtype: torch.dtype) -> Any:
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()) or value.dtype == dtype:
            return value
        if value.is_leaf and value.requires_grad and dtype == self.dtype:
            if id(value) not in self.cache:
                self.cache[id(value)] = value.to(dtype)
            return self.cache[id(value)]
        return value.to(dtype)

    def wrap(self, original: Callable, dtype: torch.dtype) -> Callable:
        @functools.wraps(original)
        def cast_then_call(*args: Any, **kwargs: Any) -> Any:
            args, kwargs = tree_map(lambda v: self.cast(v, dtype), (args, kwargs))
            return original(*args, **kwargs)
        return cast_then_call

    def __enter__(self) -> "AutocastEmulation":
        for ops, dtype in ((self.lists.low, self.dtype), (self.lists.fp32, torch.float32)):
            for owner, name in ops:
                original = getattr(owner, name)
                self.originals.append((owner, name, original))
                setattr(owner, name, self.wrap(original, dtype))
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, original in reversed(self.originals):
            setattr(owner, name, original)
        self.originals.clear()


@contextlib.contextmanager
def autocast(lists: Optional[AutocastLists], device_type: str = "meta",
             dtype: torch.dtype = torch.bfloat16) -> Iterator[None]:
    """Autocast with ``lists``' rules for the ops run inside (nothing when ``lists`` is None): emulated
    on the meta device, PyTorch's own on a real one (what the emulation is held to)."""
    if lists is None:
        yield
    elif device_type != "meta":
        with torch.autocast(lists.device, dtype=dtype):
            yield
    else:
        with AutocastEmulation(lists, dtype):
            yield
