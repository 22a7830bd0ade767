"""Training checkpoints (training/checkpoint.py): loaded with weights_only, pickled code and another
method's checkpoint refused, one run per checkpoint folder, and the way out of a foreign checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbir_bench.errors import OutputError, WeightsError


def test_checkpoints_load_with_weights_only(tmp_path):
    from sbir_bench.training.checkpoint import (
        load_checkpoint,
        rng_state,
        save_checkpoint,
        set_rng_state,
    )
    np.random.seed(5)
    state = rng_state()
    save_checkpoint(tmp_path, {"epoch": 1, "rng": state, "trainable": {"w": torch.ones(2)}})
    loaded = load_checkpoint(tmp_path)  # would raise under weights_only=True if it held a numpy array
    np.random.rand(3)
    set_rng_state(loaded["rng"])
    np.random.seed(5)
    expected = np.random.rand(3)
    set_rng_state(loaded["rng"])
    assert np.allclose(np.random.rand(3), expected)


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path):
    import pickle

    from sbir_bench.training.checkpoint import load_checkpoint

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))
    torch.save({"epoch": 1, "evil": Evil()}, tmp_path / "last.pt", pickle_module=pickle)
    with pytest.raises(WeightsError, match="unreadable"):
        load_checkpoint(tmp_path)


def test_checkpoint_of_another_method_is_refused(tmp_path):
    from sbir_bench.training.checkpoint import check_resumable
    with pytest.raises(WeightsError, match="for method 'maple', not 'coop'"):
        check_resumable({"method": "maple"}, "coop", {}, tmp_path)


def test_the_way_out_of_a_foreign_checkpoint_fits_run_and_reproduce(tmp_path):
    """reproduce has no --resume (it always resumes): the advice must not send its user to a flag it lacks."""
    from sbir_bench.errors import WeightsError
    from sbir_bench.training.checkpoint import check_resumable
    for ckpt, fingerprint in (({"method": "coop"}, None), ({"method": "splip", "trained_on": {"lr": 1}}, {"lr": 2})):
        with pytest.raises(WeightsError) as err:
            check_resumable(ckpt, "splip", fingerprint, tmp_path)
        message = str(err.value)
        assert f"delete {tmp_path}" in message and "another --output-dir" in message
        assert not message.rstrip(")").endswith("without --resume or use another --output-dir")


def test_a_checkpoint_folder_is_held_by_one_run_at_a_time(tmp_path):
    from sbir_bench.training.checkpoint import claim_folder
    with claim_folder(tmp_path / "ckpt"):
        with pytest.raises(OutputError, match="in use by another run"):
            with claim_folder(tmp_path / "ckpt"):
                pass
    with claim_folder(tmp_path / "ckpt"):  # released when the holder is done
        pass
