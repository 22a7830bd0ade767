"""Our tensors held to what an official code computed (tests/fixtures/official), for the tests of ProS,
DePro and UCDR-Adapter: the shared tiny CLIP they were recorded on, and the one comparison."""

from __future__ import annotations

import numpy as np
import official_inputs as oi
import torch

from sbir_bench.models import load_backbone

TOL = dict(rtol=1e-4, atol=1e-4)


def pros_tiny_backbone():
    """open_clip's ``test-pros-tiny`` (ProS's tiny CLIP: width 768, input 224, patch 32) holding the fixtures'
    CLIP values (``official_inputs.weights``, the same names as the OpenAI layout)."""
    backbone = load_backbone("test-pros-tiny", "random")
    state = backbone.model.state_dict()
    values = oi.weights({k: tuple(v.shape) for k, v in state.items()})
    backbone.model.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()}, strict=True)
    return backbone


def check(tensor: torch.Tensor, expected, tol=TOL) -> None:
    """``tensor`` equals the fixture's values, or its row summary (``official_inputs.row_summary``)."""
    values = tensor.detach().float().numpy()
    if isinstance(expected, dict):
        assert list(values.shape) == expected["shape"]
        got = oi.row_summary(values)
        np.testing.assert_allclose(got["norm"], expected["norm"], **tol)
        np.testing.assert_allclose(got["dot"], expected["dot"], **tol)
    else:
        np.testing.assert_allclose(values.reshape(-1), np.asarray(expected, dtype=np.float64), **tol)
