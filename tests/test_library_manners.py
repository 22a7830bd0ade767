"""A library has manners: it sets no logger level or plotting backend for its caller, changes no object
it is handed, and renames no exception into a vaguer one."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch


@pytest.mark.slow  # a fresh interpreter
def test_importing_the_plots_chooses_no_backend_and_no_pyplot():
    code = ("import sys, matplotlib; before = matplotlib.rcParams._get('backend'); "
            "import sbir_bench.reporting.plots; "
            "print(matplotlib.rcParams._get('backend') == before, 'matplotlib.pyplot' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["True", "False"], done.stdout + done.stderr


def test_a_run_leaves_the_callers_logger_level_alone(tmp_path, mini_root):
    from sbir_bench.config import build_run_config
    from sbir_bench.runner import run
    logger = logging.getLogger("sbir_bench")
    before = logger.level
    try:
        logger.setLevel(logging.ERROR)  # the caller's choice
        run(build_run_config({}, {"method": "zeroshot-clip", "output_dir": str(tmp_path), "quiet": False,
                                  "eval.save_embeddings": False}))
        assert logger.level == logging.ERROR
    finally:
        logger.setLevel(before)


def test_clip_at_trains_its_own_image_tower_never_the_backbone_it_is_handed(tiny_backbone):
    from sbir_bench.baselines.clip_at import CLIPAT
    from sbir_bench.data.triplets import TripletBatch
    before = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    method = CLIPAT(tiny_backbone, ["cat", "dog", "cow"], [0, 1])
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    assert any(p.requires_grad for p in method.clip.visual.parameters())
    size = tiny_backbone.image_size
    batch = TripletBatch(torch.rand(2, 3, size, size), torch.rand(2, 3, size, size), torch.rand(2, 3, size, size),
                         torch.tensor([0, 1]), torch.tensor([1, 0]))
    optimiser = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1.0)
    method.loss(batch)["loss"].backward()
    optimiser.step()
    after = tiny_backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert method.clip.transformer is tiny_backbone.model.transformer  # the text tower is shared, not copied


def test_an_error_building_a_randomly_initialised_model_is_not_called_a_weights_error(monkeypatch):
    from sbir_bench.errors import WeightsError
    from sbir_bench.models import factory

    def broken(*args, **kwargs):
        raise ValueError("a bug in the model config")
    monkeypatch.setattr(factory, "create_model", broken)
    with pytest.raises(ValueError, match="a bug in the model config"):
        factory.load_backbone("sbir-tiny", "random")
    with pytest.raises(WeightsError, match="could not load weights"):
        factory.load_backbone("sbir-tiny")  # its shipped weights: loading them failed
