"""Backbone loading: tiny random config, local checkpoints, and one-line offline errors."""

from __future__ import annotations

import pytest
import torch

from sbir_bench.errors import WeightsError
from sbir_bench.models import load_backbone
from sbir_bench.models.factory import tag_overrides as _tag_overrides


def test_tiny_config_is_registered_and_frozen(tiny_backbone):
    assert tiny_backbone.image_size == 64
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    out = tiny_backbone.model.encode_image(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, tiny_backbone.embed_dim)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_checkpoint_round_trip(tmp_path, tiny_backbone, suffix):
    torch.manual_seed(123)
    source = load_backbone("sbir-tiny", "random")  # weights unlike the default: only the file can give them
    assert not torch.equal(source.model.visual.conv1.weight, tiny_backbone.model.visual.conv1.weight)
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".pt":
        torch.save(source.model.state_dict(), path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    loaded = load_backbone("sbir-tiny", str(path))
    want, got = source.model.state_dict(), loaded.model.state_dict()
    assert set(want) == set(got) and loaded.weights_file == str(path)
    for name, value in want.items():
        assert torch.equal(value, got[name]), name


def test_offline_missing_weights_is_one_line_naming_cache_and_way_out(tmp_path):
    with pytest.raises(WeightsError) as info:
        load_backbone("ViT-B-32", "openai", cache_dir=str(tmp_path))
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path) in message and "--pretrained PATH" in message


def test_bad_inputs_are_weights_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_backbone("sbir-tiny", str(tmp_path / "nope.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="could not load"):
        load_backbone("sbir-tiny", str(junk))
    with pytest.raises(WeightsError, match="unknown backbone"):
        load_backbone("ViT-Z-99")
    with pytest.raises(WeightsError, match="unknown pretrained tag"):
        load_backbone("ViT-B-32", "not-a-tag")


def test_openai_tag_builds_with_quickgelu():
    assert _tag_overrides("ViT-B-32", "openai")["force_quick_gelu"] is True
    assert _tag_overrides("sbir-tiny", None) == {}


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
