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


def _broken_package(site: Path) -> None:
    """An installed package whose method entry point fails to import (a library this machine lacks)."""
    (site / "sbirbroken").mkdir(parents=True)
    (site / "sbirbroken" / "__init__.py").write_text('raise ImportError("needs a library this machine lacks")\n')
    info = site / "sbirbroken-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sbirbroken\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[sbir_bench.methods]\nbroken-method = sbirbroken:Method\n")


def test_a_plugin_that_fails_to_import_is_a_warning_and_every_other_method_works(tmp_path, monkeypatch):
    import logging
    from click.testing import CliRunner

    from sbir_bench import plugins
    from sbir_bench.cli import main
    from sbir_bench.errors import ConfigError
    _broken_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    fresh = plugins.METHODS
    fresh.names()  # the built-ins, registered when their modules were first imported
    monkeypatch.setattr(fresh, "_loaded", False)  # as in a fresh process: the entry points are read again
    monkeypatch.setattr(fresh, "_broken", {})
    seen = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("sbir_bench.plugins").addHandler(handler)  # the CLI's logger may not propagate
    try:
        names = fresh.names()
        fresh.names()  # loaded once: no second warning
    finally:
        logging.getLogger("sbir_bench.plugins").removeHandler(handler)
    assert "coop" in names and "splip" in names and "broken-method" not in names
    warned = [m for m in seen if "broken-method" in m]
    assert len(warned) == 1 and "sbirbroken" in warned[0] and "needs a library this machine lacks" in warned[0]
    with pytest.raises(ConfigError, match="broken-method.*unavailable.*sbirbroken.*needs a library this machine lacks"):
        fresh.get("broken-method")
    assert fresh.get("coop").name == "coop"  # the registry is whole after the failure
    listed = CliRunner().invoke(main, ["methods"])
    assert listed.exit_code == 0 and "coop" in listed.output and "broken-method" not in listed.output
