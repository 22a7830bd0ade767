"""Third-party plug-ins: a method and a dataset from an installed package (its entry points), found by
`methods`, `datasets` and `run` exactly as the built-in ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import _tiny_image

PLUGIN = '''
from sbir_bench.data.catalog import DatasetSpec, Layout
from sbir_bench.methods import Method
import torch


class MeanShift(Method):
    """Frozen features minus a fixed offset: a method no built-in is."""
    description = "plug-in test method"
    trainable = False

    def embed_sketches(self, images):
        return self.frozen_image_features(images) - 0.01

    def embed_photos(self, images):
        return self.frozen_image_features(images) - 0.01


DATA = DatasetSpec(name="plugdata", title="Plug-in data", subdirs=("PlugData",),
                   layouts=(Layout("S", "P"),), splits={"1": ("cat", "dog")})
'''


def _install(site: Path) -> None:
    (site / "sbirplug").mkdir(parents=True)
    (site / "sbirplug" / "__init__.py").write_text(PLUGIN)
    info = site / "sbirplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sbirplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sbir_bench.methods]\nmean-shift = sbirplug:MeanShift\n\n"
                                           "[sbir_bench.datasets]\nplugdata = sbirplug:DATA\n")


@pytest.mark.slow  # a pip install and a fresh interpreter
def test_a_method_and_a_dataset_from_an_installed_package(tmp_path):
    site = tmp_path / "site"
    _install(site)
    data = tmp_path / "data" / "PlugData"
    for modality, sketch in (("S", True), ("P", False)):
        for cname in ("cat", "dog", "cow", "emu"):
            for k in range(2):
                _tiny_image(data / modality / cname / f"{cname}{k}.png", k, sketch=sketch)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    out = tmp_path / "runs"
    # One fresh interpreter (its entry points are read from the installed package's metadata) runs
    # `methods`, `datasets` and `run`, each as the command line would.
    script = (
        "import sys\n"
        "from sbir_bench.cli import main\n"
        "for args in (['methods'], ['datasets'], ['run', 'mean-shift', '--dataset', 'plugdata', '--data-root', "
        f"{str(tmp_path / 'data')!r}, '--output-dir', {str(out)!r}, '--quiet', '--set', 'eval.save_embeddings=false']):\n"
        "    print('=== ' + args[0], flush=True)\n"
        "    try:\n"
        "        main.main(args, standalone_mode=False)\n"
        "    except SystemExit as exc:\n"
        "        sys.exit(exc.code)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    listed, datasets, _ = done.stdout.split("=== ")[1:]
    assert "mean-shift" in listed and "plug-in test method" in listed
    assert "plugdata" in datasets
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["method"] == "mean-shift" and record["dataset"] == "plugdata"
    assert record["classes"]["unseen_names"] == ["cat", "dog"]
