"""Shared fixtures: an isolated cache (the shipped mini set is unpacked once per session), offline weights,
a tiny random open_clip backbone, and quiet progress bars."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory):
    """Point every cache at a session temp dir and forbid downloads: tests never touch ~/.cache or the net.

    ``SBIR_BENCH_TEST_CACHE`` (a developer's option, unset in CI) reuses one folder across sessions.
    The mini set and the sbir-tiny weights ship with the package, so nothing is built here.
    """
    cache = Path(os.environ["SBIR_BENCH_TEST_CACHE"]) if os.environ.get("SBIR_BENCH_TEST_CACHE") \
        else tmp_path_factory.mktemp("sbir-cache")
    old = {k: os.environ.get(k) for k in ("SBIR_BENCH_CACHE", "SBIR_BENCH_WEIGHTS", "SBIR_BENCH_OFFLINE",
                                          "SBIR_BENCH_DATA", "HF_HUB_OFFLINE")}
    os.environ.update(SBIR_BENCH_CACHE=str(cache), SBIR_BENCH_WEIGHTS=str(cache / "weights"), SBIR_BENCH_OFFLINE="1",
                      HF_HUB_OFFLINE="1",
                      SBIR_BENCH_DATA=str(cache / "no-data-here"))
    from sbir_bench.log import set_quiet
    set_quiet(True)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def mini_root() -> Path:
    from sbir_bench.data.mini import ensure_mini
    return ensure_mini()


@pytest.fixture(scope="session")
def tiny_backbone():
    from sbir_bench.models import load_backbone
    return load_backbone("sbir-tiny")


# ------------------------------------------------------------------ dataset trees in the real layouts
TREE_LAYOUTS = {  # dataset -> (the catalog's layout the tiny trees use, sketch file name, photo file name)
    "sketchy": ("raw", "{pid}-{n}.png", "{pid}.jpg"),
    "sketchy-fg": ("raw", "{pid}-{n}.png", "{pid}.jpg"),
    "tuberlin": ("sake", "{sid}.png", "{pid}.JPEG"),
    "quickdraw": ("doodle2search", "{sid}.png", "{pid}.jpg"),
}


def tree_layout(dataset: str):
    """The catalog's entry (data/catalog.py) of the layout :func:`build_tree` writes for ``dataset``."""
    from sbir_bench.data.catalog import get_spec
    return get_spec(dataset).layout(TREE_LAYOUTS[dataset][0])


def _tiny_image(path: Path, seed: int, sketch: bool) -> None:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    if sketch:
        arr = np.full((8, 8, 3), 255, np.uint8)
        arr[rng.integers(0, 8, 6), rng.integers(0, 8, 6)] = 0
    else:
        arr = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG" if path.suffix == ".png" else "JPEG")


def build_tree(root: Path, dataset: str, classes, photos: int = 2, sketches_per_photo: int = 1) -> Path:
    """Write a tiny copy of ``dataset`` under ``root`` with real folder and file naming schemes."""
    layout, (_, sk_name, ph_name) = tree_layout(dataset), TREE_LAYOUTS[dataset]
    base, sk_dir, ph_dir = root / layout.folder, layout.sketch_dir, layout.photo_dir
    for ci, cname in enumerate(classes):
        for k in range(photos):
            pid = f"n{ci:08d}_{k + 1}"
            _tiny_image(base / ph_dir / cname / ph_name.format(pid=pid), hash((ci, k)) & 0xFFFF, sketch=False)
            for n in range(1, sketches_per_photo + 1):
                sid = ci * 1000 + k * 10 + n
                _tiny_image(base / sk_dir / cname / sk_name.format(pid=pid, n=n, sid=sid), sid, sketch=True)
    return root


def official_classes(dataset: str):
    from sbir_bench.data.catalog import get_spec
    from sbir_bench.data.splits import package_file, read_class_file
    return read_class_file(package_file("classes", get_spec(dataset).class_list))


@pytest.fixture
def make_tree(tmp_path):
    def make(dataset: str, classes=None, **kw) -> Path:
        return build_tree(tmp_path / "data", dataset, classes or official_classes(dataset), **kw)
    return make


# ------------------------------------------------------------------ runs and caches shared by tests
SHORT_TRAINING = {"train.epochs": 2, "train.steps_per_epoch": 2, "train.batch_size": 8, "train.val_every": 0,
                  "eval.save_embeddings": False}


def short_training(changes: dict | None = None) -> dict:
    """The few-step training tests run (config keys), with ``changes``: the one definition of "fast"."""
    return {**SHORT_TRAINING, **(changes or {})}


FLAGS = {"train.epochs": "--epochs", "train.batch_size": "--batch-size"}  # keys with their own option


def as_options(values: dict) -> list:
    """Config values as command-line options (their own flag where there is one, so that a later
    ``--epochs`` given by a test wins as it would for a user; else ``--set key=value``), quiet."""
    text = {True: "true", False: "false"}
    args = []
    for key, value in values.items():
        value = text[value] if isinstance(value, bool) else value
        args += [FLAGS[key], str(value)] if key in FLAGS else ["--set", f"{key}={value}"]
    return args + ["--quiet"]


def newest_record(out: Path) -> dict:
    """The record written last into ``out``."""
    import json
    return json.loads(max(out.glob("*.json"), key=lambda p: p.stat().st_mtime).read_text())


def run_record(out: Path, *extra: str, method: str = "zeroshot-clip") -> dict:
    """Run ``method`` from the command line into ``out`` (quietly) and return its newest record."""
    from click.testing import CliRunner

    from sbir_bench.cli import main
    result = CliRunner().invoke(main, ["run", method, "--output-dir", str(out), "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return newest_record(out)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private frozen-feature cache (the mini set and tiny weights stay in the session cache)."""
    from sbir_bench import feature_cache
    root = tmp_path / "features"
    monkeypatch.setattr(feature_cache, "features_root", lambda: root)
    return root


def last_checkpoint(directory: Path) -> dict:
    """The newest checkpoint a trainer left in ``directory`` (every tensor on the CPU)."""
    import torch
    return torch.load(directory / "last.pt", map_location="cpu", weights_only=False)


# ------------------------------------------------------------------ one training step of every trained method
def _trained_methods() -> list:
    """Every registered method that trains, in the tables' order: the tests follow the registry, so a new
    method is held to the same checks without a list to edit."""
    from sbir_bench.methods import get_method
    from sbir_bench.reproduce import table_methods
    return [m for m in table_methods() if get_method(m).trainable]


def _stages(method: str) -> tuple:
    from sbir_bench.config import TrainConfig
    from sbir_bench.methods import get_method
    from sbir_bench.methods.base import stages_of
    return tuple(s.name for s in stages_of(get_method(method), {}, TrainConfig()))


TRAINED = _trained_methods()
# (method, training stage): a method trained in stages is held in each (ProS)
STAGED = [(m, s) for m in TRAINED for s in _stages(m)]
# Per-method variants the quick loop leaves to the whole suite (CI): SpLIP's costly ones, and ProS's forks,
# whose steps are ProS's image tower with other prompts (ProS's both stages stay in the quick loop).
WHOLE_SUITE_ONLY = ("splip", "depro", "ucdr-adapter")


def quick_or_whole(params, methods=WHOLE_SUITE_ONLY):
    """``params`` (tuples whose first item is a method name) with those of ``methods`` marked slow."""
    import pytest
    return [pytest.param(*p, marks=pytest.mark.slow) if p[0] in methods else p for p in params]
NAMES = ["cat", "dog", "house", "tree", "car", "boat", "apple", "chair"]


def real_batch(method, n: int, features: bool, seed: int = 0):
    """A batch of ``n`` random triplets (images, or frozen features) for ``method``, seeded."""
    import torch

    from sbir_bench.data.triplets import TripletBatch
    g = torch.Generator().manual_seed(seed)
    side = method.backbone.image_size
    shape = (n, method.backbone.embed_dim) if features else (n, 3, side, side)
    x = lambda: torch.randn(shape, generator=g)  # noqa: E731
    labels = lambda: torch.randint(len(method.seen), (n,), generator=g)  # noqa: E731
    return TripletBatch(x(), x(), x(), labels(), labels(), features=features)
