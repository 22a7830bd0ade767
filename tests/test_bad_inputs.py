"""Every bad input fails early, in one line: one row per bad input (docs/errors.md lists the codes).

Each row asserts a non-zero exit with the documented code, one `error:` line on stderr holding a fragment
of the message, no traceback,
at most three lines of output, and that no file in the output folder was created or changed.
Separate tests cover a diverged (NaN) training run and every kind of resume mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import as_options, short_training

from sbir_bench.cli import main
from sbir_bench.errors import (
    ConfigError,
    DataError,
    DivergedError,
    OutOfMemoryError,
    OutputError,
    WeightsError,
)

CONFIG, DATA, WEIGHTS, OUTPUT = ConfigError.exit_code, DataError.exit_code, WeightsError.exit_code, OutputError.exit_code
MEMORY = OutOfMemoryError.exit_code
FG_LAYOUT = ("Sketchy/256x256/sketch/tx_000000000000", "Sketchy/256x256/photo/tx_000000000000")


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _embeddings_file(folder: Path, name: str = "e.npz", **changes) -> str:
    """A small valid embeddings file (4 queries, 5 photos, both classes relevant), with ``changes``."""
    arrays = {"query": Q, "gallery": G, "query_labels": [0, 1, 0, 1], "gallery_labels": [0, 1, 0, 1, 1], **changes}
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def _fg_only_tree(root: Path) -> str:
    from conftest import _tiny_image
    for folder in FG_LAYOUT:
        for cls in ("cat", "dog"):
            _tiny_image(root / folder / cls / "n01_1.png", 1, sketch=True)
    return str(root)


def _fg_raw_tree(root: Path) -> str:
    """Sketchy's fine-grained copy as its archive unpacks: sketch/ and photo/ hold tx_ render folders."""
    from conftest import _tiny_image
    for folder in ("Sketchy/sketch/tx_000000000000", "Sketchy/photo/tx_000000000000"):
        for cls in ("cat", "dog"):
            _tiny_image(root / folder / cls / "n01_1.png", 1, sketch=True)
    return str(root)


def _room_for(method: str, triplets: int) -> str:
    """A memory budget with room for micro-batches of ``triplets`` of ``method`` on the mini set, batch 8."""
    from sbir_bench.config import build_run_config
    from sbir_bench.runner import run_counts
    from sbir_bench.training.memory import predicted_peak
    cfg = build_run_config({}, {"method": method, "train.batch_size": 8})
    return str(predicted_peak(cfg, run_counts(cfg), triplets))


def _nan_weights(path: Path) -> str:
    from sbir_bench.models import load_backbone
    state = load_backbone("sbir-tiny").model.state_dict()
    state["visual.proj"] = torch.full_like(state["visual.proj"], float("nan"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return str(path)


def _wrong_state(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"visual.conv1.weight": torch.zeros(3), "extra.key": torch.zeros(1)}, path)
    return str(path)


def _record_dir(path: Path) -> str:
    from test_reporting import make_record
    make_record(path, "coop", 0, {"mAP@all": 0.5})
    return str(path)


def _truncated_checkpoint(path: Path) -> str:
    import io
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(1000)}, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[:300])
    return str(path)


def _unwritable(tmp: Path, name: str) -> str:
    """A path inside a folder that refuses new files: a read-only folder, or for root (whom mode bits
    do not stop) a path under /proc, where nobody can create a file."""
    if os.geteuid() == 0:
        return f"/proc/sbir-bench-test/{name}"
    folder = tmp / "read-only"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    return str(folder / name)


RNG = np.random.default_rng(0)
Q, G = RNG.normal(size=(4, 3)), RNG.normal(size=(5, 3))

# (id, args builder(tmp, out) -> argv, exit code, message fragment)
ROWS: List[tuple] = [
    # ---- 4. options that mean nothing (usage and config errors: exit 2)
    ("unknown-method", lambda t, o: ["run", "no-such-method"], CONFIG, "unknown method"),
    ("epochs-zero", lambda t, o: ["run", "coop", "--epochs", "0"], CONFIG, "--epochs"),
    ("epochs-negative", lambda t, o: ["run", "coop", "--epochs", "-3"], CONFIG, "--epochs"),
    ("batch-size-zero", lambda t, o: ["run", "coop", "--batch-size", "0"], CONFIG, "--batch-size"),
    ("workers-negative", lambda t, o: ["run", "coop", "--workers", "-1"], CONFIG, "--workers"),
    ("lr-zero", lambda t, o: ["run", "coop", "--lr", "0"], CONFIG, "--lr"),
    ("seed-negative", lambda t, o: ["run", "coop", "--seed", "-1"], CONFIG, "--seed"),
    ("set-batch-size-zero", lambda t, o: ["run", "coop", "--set", "train.batch_size=0"], CONFIG, "must be >= 1"),
    ("set-epochs-word", lambda t, o: ["run", "coop", "--set", "train.epochs=many"], CONFIG, "expected int"),
    ("set-unknown-key", lambda t, o: ["run", "coop", "--set", "nonsense.key=1"], CONFIG, "unknown key"),
    ("set-bad-optimizer", lambda t, o: ["run", "coop", "--set", "train.optimizer=adam"], CONFIG, "choose one of"),
    ("set-val-fraction", lambda t, o: ["run", "coop", "--set", "data.val_fraction=1.5"], CONFIG, "must be <="),
    ("set-eval-memory", lambda t, o: ["run", "coop", "--set", "eval.memory=lots"], CONFIG, "eval.memory"),
    ("set-no-equals", lambda t, o: ["run", "coop", "--set", "train.epochs"], CONFIG, "section.key=value"),
    ("device-unknown", lambda t, o: ["run", "coop", "--device", "gpu9"], CONFIG, "device"),
    ("device-cuda-ordinal-absent", lambda t, o: ["run", "coop", "--device", f"cuda:{torch.cuda.device_count() + 7}"],
     CONFIG, "--device cuda"),
    ("setting-unknown", lambda t, o: ["run", "coop", "--setting", "transductive"], CONFIG, "--setting"),
    ("protocol-unknown", lambda t, o: ["run", "coop", "--protocol", "nope"], CONFIG, "--protocol"),
    ("protocol-knob-bad", lambda t, o: ["run", "coop", "--set", "eval.protocol_overrides.ties=random"], CONFIG, "ties"),
    ("method-config-unknown", lambda t, o: ["run", "coop", "--set", "method_config.warp=1"], CONFIG, "unknown key"),
    ("coop-nctx-vs-phrase", lambda t, o: ["run", "coop", "--set", "method_config.n_ctx=8"], CONFIG, "4 words"),
    ("maple-phrase-too-short", lambda t, o: ["run", "maple", "--set", "method_config.n_ctx=3", "--set",
                                             "method_config.ctx_init=a photo"], CONFIG, "fewer than n_ctx"),
    ("config-missing", lambda t, o: ["run", "coop", "--config", "/no/such.yaml"], CONFIG, "config file not found"),
    ("config-bad-yaml", lambda t, o: ["run", "coop", "--config", _write(t / "bad.yaml", "data:\n  setting: [zs\n")],
     CONFIG, "line"),
    ("config-not-mapping", lambda t, o: ["run", "coop", "--config", _write(t / "list.yaml", "- a\n- b\n")], CONFIG,
     "mapping at top level"),
    ("config-section-scalar", lambda t, o: ["run", "coop", "--config", _write(t / "s.yaml", "train: 3\n")], CONFIG,
     "expected a section"),
    ("compare-digits-negative", lambda t, o: ["compare", "--results-dir", str(o), "--digits", "-1"], CONFIG, "--digits"),
    ("plot-top-k-zero", lambda t, o: ["plot", "--results-dir", str(o), "--top-k", "0"], CONFIG, "--top-k"),
    ("plot-queries-zero", lambda t, o: ["plot", "--results-dir", str(o), "--queries", "0"], CONFIG, "--queries"),
    ("eval-no-input", lambda t, o: ["eval"], CONFIG, "exactly one of"),
    ("eval-unknown-preset", lambda t, o: ["eval", "--embeddings", _embeddings_file(t),
                                          "--protocols", "nope"], CONFIG, "unknown protocol"),
    ("eval-bad-cutoffs", lambda t, o: ["eval", "--embeddings", _embeddings_file(t),
                                       "--map-k", "x"], CONFIG, "comma-separated integers"),
    ("dataset-unknown", lambda t, o: ["run", "coop", "--dataset", "imagenet"], CONFIG, "unknown dataset"),
    # ---- round two: labels that become file names, repeated seeds, empty values, conflicting options
    ("variant-path-traversal", lambda t, o: ["run", "coop", "--variant", "x/../../../esc"], CONFIG, "variant"),
    ("variant-subfolder", lambda t, o: ["run", "coop", "--variant", "a/b"], CONFIG, "letters, digits"),
    ("variant-too-long", lambda t, o: ["run", "coop", "--variant", "v" * 300], CONFIG, "at most 64"),
    ("variant-space", lambda t, o: ["run", "coop", "--variant", "a b"], CONFIG, "variant"),
    ("variant-newline", lambda t, o: ["run", "coop", "--set", "variant=a\nb"], CONFIG, "variant"),
    ("seed-repeated", lambda t, o: ["run", "coop", "--seed", "0", "--seed", "0"], CONFIG, "more than once"),
    ("reproduce-seeds-repeated", lambda t, o: ["reproduce", "zs", "--dataset", "mini", "--seeds", "0,0",
                                               "--output-dir", str(o)], CONFIG, "more than once"),
    ("reproduce-seeds-empty", lambda t, o: ["reproduce", "zs", "--dataset", "mini", "--seeds", "",
                                            "--output-dir", str(o)], CONFIG, "one or more integers"),
    ("reproduce-unknown-method", lambda t, o: ["reproduce", "zs", "--method", "nosuch", "--output-dir", str(o)],
     CONFIG, "choose from: "),
    ("set-empty-value", lambda t, o: ["run", "coop", "--set", "train.lr="], CONFIG, "gives no value"),
    ("config-base-not-a-path", lambda t, o: ["run", "coop", "--config", _write(t / "b.yaml", "base: 42\n")], CONFIG,
     "'base' must name"),
    ("eval-protocols-empty", lambda t, o: ["eval", "--embeddings", _embeddings_file(t),
                                           "--protocols", ""], CONFIG, "--protocols needs"),
    ("eval-protocol-and-protocols", lambda t, o: ["eval", "--embeddings", _embeddings_file(t),
                                                  "--protocols", "sake", "--protocol", "sem-pcyc"], CONFIG, "not both"),
    ("eval-model-with-json", lambda t, o: ["eval", "--model", str(t / "run"), "--json", str(t / "m.json")], CONFIG,
     "go with saved embeddings, not with --model"),
    ("eval-model-missing", lambda t, o: ["eval", "--model", str(t / "no-such-run"), "--output-dir", str(o)], WEIGHTS,
     "model artifact not found"),
    ("eval-dataset-without-model", lambda t, o: ["eval", "--embeddings", "x.npz", "--dataset", "tuberlin"], CONFIG,
     "go with --model"),
    ("plot-grid-unbounded", lambda t, o: ["plot", "--results-dir", str(o), "--top-k", "500"], CONFIG, "--top-k"),
    ("cocoop-meta-net-without-hidden-unit", lambda t, o: ["run", "cocoop", "--set", "method_config.meta_reduction=1000"],
     CONFIG, "leaves the meta-network no hidden unit"),
    ("coop-zero-context-vectors", lambda t, o: ["run", "coop", "--set", "method_config.n_ctx=0", "--set",
                                                "method_config.ctx_init=null"], CONFIG, "n_ctx=0: must be >= 1"),
    ("run-resnet-visual-prompts", lambda t, o: ["run", "maple", "--backbone", "RN50", "--pretrained", "random"], CONFIG,
     "needs a ViT backbone"),
    # ---- 3. empty / degenerate inputs, 7. weak messages: data errors (exit 3)
    ("reproduce-status-of-a-missing-folder", lambda t, o: ["reproduce", "zs", "--dataset", "mini", "--status",
                                                           "--output-dir", str(t / "nowhere")], DATA,
     "holds no reproduce cells"),
    ("reproduce-collect-on-plain-runs", lambda t, o: ["reproduce", "zs", "--dataset", "mini", "--collect",
                                                      "--output-dir", str(o)], DATA, "`sbir-bench export` tabulates"),
    ("check-fine-grained-copy-as-sketchy", lambda t, o: ["datasets", "check", "--dataset", "sketchy", "--data-root",
                                                         _fg_raw_tree(t / "fg")], DATA, "use --dataset sketchy-fg"),
    ("tracking-uri-unknown-scheme", lambda t, o: ["run", "zeroshot-clip", "--report-to", "csv", "--tracking-uri",
                                                  "notaurl://x"], CONFIG, "MLflow opens no 'notaurl' store"),
    ("pros-dropout-one", lambda t, o: ["run", "pros", "--set", "method_config.dropout=1.0"], CONFIG,
     "dropout=1.0: must be < 1.0"),
    ("pros-pool-token", lambda t, o: ["run", "pros", "--set", "method_config.pool_token=5"], CONFIG,
     "pool_token=5: choose one of: 1, 0"),
    ("select-on-test-without-early-stopping", lambda t, o: ["run", "coop", "--set", "train.select_on=test"], CONFIG,
     "train.select_on=test chooses the kept epoch through early stopping"),
    ("select-metric-not-reported", lambda t, o: ["run", "pros", "--set", "train.early_stop=2", "--set",
                                                 "train.select_metric=mAP@999"], CONFIG,
     "not a category-level metric of the run protocol"),
    ("early-stop-without-validation", lambda t, o: ["run", "pros", "--set", "train.early_stop=2", "--set",
                                                    "data.val_fraction=0"], CONFIG,
     "train.early_stop needs a seen-class validation"),
    ("eval-unknown-similarity", lambda t, o: ["eval", "--embeddings", _embeddings_file(t), "--similarity",
                                              "manhattan"], CONFIG, "manhattan"),
    ("clip-at-no-prompt", lambda t, o: ["run", "clip-at", "--set", "method_config.n_prompts=0"], CONFIG,
     "n_prompts=0: must be >= 1"),
    ("clip-at-one-tile", lambda t, o: ["run", "clip-at", "--set", "method_config.patch_grid=1"], CONFIG,
     "patch_grid=1: must be >= 2"),
    ("split-mini-2", lambda t, o: ["run", "coop", "--split", "2"], DATA, "has no split '2'"),
    ("split-file-missing", lambda t, o: ["run", "coop", "--split-file", "/no/split.txt"], DATA, "split file not found"),
    ("split-file-empty", lambda t, o: ["run", "coop", "--split-file", _write(t / "empty.txt", "# nothing\n\n")], DATA,
     "names no class"),
    ("split-file-unknown-class", lambda t, o: ["run", "coop", "--split-file", _write(t / "u.txt", "star\nunicorn\n")],
     DATA, "unicorn"),
    ("split-file-every-class", lambda t, o: ["run", "coop", "--split-file", _write(t / "all.txt", "\n".join(
        __import__("sbir_bench.data.mini", fromlist=["x"]).MINI_CLASSES))], DATA, "every class as unseen"),
    ("dataset-absent", lambda t, o: ["run", "coop", "--dataset", "sketchy", "--data-root", str(t / "none")], DATA,
     "not found"),
    ("sketchy-with-fg-layout", lambda t, o: ["run", "coop", "--dataset", "sketchy", "--data-root",
                                             _fg_only_tree(t / "fg")], DATA, "--dataset sketchy-fg"),
    ("eval-missing-file", lambda t, o: ["eval", "--embeddings", "/no/file.npz"], DATA, "not found"),
    ("eval-junk-file", lambda t, o: ["eval", "--embeddings", _write(t / "junk.npz", "not a zip")], DATA,
     "not a readable"),
    ("eval-nan-embeddings", lambda t, o: ["eval", "--embeddings", _embeddings_file(t, query=np.where(np.eye(4, 3) > 0,
                                                                                                  np.nan, Q))],
     DATA, "query row 0 holds NaN"),
    ("eval-no-labels", lambda t, o: ["eval", "--embeddings", _embeddings_file(t, query_labels=None,
                                                                               gallery_labels=None)], DATA,
     "either query_labels"),
    ("eval-zero-queries", lambda t, o: ["eval", "--embeddings", _embeddings_file(t, query=np.zeros((0, 3)),
                                                                                  query_labels=np.zeros(0, int))], DATA,
     "no query"),
    ("eval-no-relevant", lambda t, o: ["eval", "--embeddings", _embeddings_file(t, query_labels=[7, 7, 8, 8])], DATA,
     "no query has a relevant"),
    ("eval-record-missing", lambda t, o: ["eval", "--record", str(t / "none.json")], DATA, "unreadable"),
    ("compare-no-records", lambda t, o: ["compare", "--results-dir", str(o)], DATA, "no run records"),
    ("compare-reference-empty", lambda t, o: ["compare", "--results-dir", str(o), "--reference", str(t)], DATA,
     "no reference CSV"),
    ("run-nan-weights", lambda t, o: ["run", "zeroshot-clip", "--quiet", "--pretrained", _nan_weights(t / "nan.pt")], DATA,
     "holds NaN or infinity"),
    ("compare-filter-matches-nothing", lambda t, o: ["compare", _record_dir(t / "recs"), "--method", "splip"], DATA,
     "none of the 1 run record"),
    ("check-absent", lambda t, o: ["datasets", "check", "--dataset", "tuberlin", "--data-root", str(t / "none")], DATA,
     "not found"),
    # ---- weights (exit 4)
    ("backbone-unknown", lambda t, o: ["run", "coop", "--backbone", "ViT-Z-99"], WEIGHTS, "unknown backbone"),
    ("pretrained-missing", lambda t, o: ["run", "coop", "--pretrained", "/no/weights.pt"], WEIGHTS, "not found"),
    ("pretrained-junk", lambda t, o: ["run", "coop", "--pretrained", _write(t / "junk.pt", "garbage")], WEIGHTS,
     "not a checkpoint"),
    ("pretrained-truncated", lambda t, o: ["run", "coop", "--pretrained", _truncated_checkpoint(t / "cut.pt")], WEIGHTS,
     "truncated"),
    ("pretrained-folder", lambda t, o: ["run", "coop", "--pretrained", str(Path(_write(t / "w" / "x.txt", "")).parent)],
     WEIGHTS, "is a folder"),
    ("pretrained-wrong-state-dict", lambda t, o: ["run", "coop", "--pretrained", _wrong_state(t / "wrong.pt")], WEIGHTS,
     "missing keys"),
    ("pretrained-empty", lambda t, o: ["run", "coop", "--pretrained", _write(t / "empty.pt", "")], WEIGHTS, "empty"),
    ("pretrained-unknown-tag", lambda t, o: ["run", "coop", "--backbone", "ViT-B-32", "--pretrained", "not-a-tag"],
     WEIGHTS, "unknown pretrained tag"),
    ("pretrained-offline", lambda t, o: ["run", "coop", "--backbone", "ViT-B-32", "--pretrained", "openai",
                                         "--cache-dir", str(t)], WEIGHTS, "not cached"),
    # ---- memory (exit 7) and the estimate's options
    ("memory-budget-nothing-fits", lambda t, o: ["run", "coop", "--memory-budget", "1KiB"], MEMORY,
     "one triplet needs about"),
    ("memory-budget-not-a-size", lambda t, o: ["run", "coop", "--memory-budget", "lots"], CONFIG,
     "memory size 'lots'"),
    ("memory-budget-unknown-unit", lambda t, o: ["run", "coop", "--memory-budget", "2XB"], CONFIG, "memory size '2XB'"),
    ("memory-budget-two-points", lambda t, o: ["run", "coop", "--memory-budget", "1.2.3GB"], CONFIG,
     "memory size '1.2.3GB'"),
    ("memory-budget-too-large", lambda t, o: ["run", "coop", "--memory-budget", "9" * 400 + "GB"], CONFIG, "too large"),
    ("set-eval-memory-two-points", lambda t, o: ["run", "coop", "--set", "eval.memory=1.2.3GB"], CONFIG, "eval.memory"),
    ("reproduce-memory-budget-too-large", lambda t, o: ["reproduce", "zs", "--dataset", "mini", "--memory-budget",
                                                        "1" + "0" * 30 + "TB", "--output-dir", str(o)], CONFIG,
     "too large"),
    ("eval-memory-unknown-unit", lambda t, o: ["eval", "--embeddings", _embeddings_file(t), "--eval-memory", "2XB"],
     CONFIG, "memory size '2XB'"),
    ("recipes-prefix-matches-nothing", lambda t, o: ["recipes", "paper/zz"], CONFIG, "no shipped recipe starts with"),
    ("linear-probe-budget-would-split-batchnorm", lambda t, o: ["run", "linear-probe", "--batch-size", "8",
                                                                "--memory-budget", _room_for("linear-probe", 4)],
     MEMORY, "set train.grad_accum=2"),
    ("json-without-dry-run", lambda t, o: ["run", "coop", "--json", str(t / "e.json")], CONFIG, "add --dry-run"),
    ("reproduce-json-without-dry-run", lambda t, o: ["reproduce", "zs", "--dataset", "mini", "--json",
                                                     str(t / "e.json"), "--output-dir", str(o)], CONFIG, "add --dry-run"),
    # ---- 5. outputs checked before any work (exit 6)
    ("output-dir-is-file", lambda t, o: ["run", "coop", "--output-dir", _write(t / "file.txt", "x")], OUTPUT, "is a file"),
    ("eval-json-is-dir", lambda t, o: ["eval", "--embeddings", _embeddings_file(t),
                                       "--json", str(t)], OUTPUT, "is a folder"),
    ("export-output-is-dir", lambda t, o: ["export", "--results-dir", str(o), "-o", str(o)], OUTPUT, "is a folder"),
    ("plot-output-dir-is-file", lambda t, o: ["plot", "--results-dir", str(o), "--output-dir",
                                              _write(t / "f.txt", "x")], OUTPUT, "is a file"),
    ("run-output-dir-unwritable", lambda t, o: ["run", "coop", "--output-dir", _unwritable(t, "runs")], OUTPUT,
     "is not writable"),
    ("reproduce-output-dir-unwritable", lambda t, o: ["reproduce", "zs", "--output-dir", _unwritable(t, "table")],
     OUTPUT, "is not writable"),
    ("eval-json-unwritable", lambda t, o: ["eval", "--embeddings", _embeddings_file(t),
                                           "--json", _unwritable(t, "m.json")], OUTPUT, "is not writable"),
    ("export-output-unwritable", lambda t, o: ["export", "--results-dir", str(o), "-o", _unwritable(t, "t.tex")],
     OUTPUT, "is not writable"),
    ("plot-output-dir-unwritable", lambda t, o: ["plot", "--results-dir", str(o), "--output-dir",
                                                 _unwritable(t, "plots")], OUTPUT, "is not writable"),
]


def _snapshot(folder: Path) -> Dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_row_is_named_once_and_its_exit_code_is_documented():
    docs = (Path(__file__).parents[1] / "docs" / "errors.md").read_text()
    assert len({r[0] for r in ROWS}) == len(ROWS)
    assert all(re.search(rf"^\| {code} \|", docs, re.M) for code in {r[2] for r in ROWS})


@pytest.mark.parametrize("name,build,code,fragment", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_error(name: str, build: Callable, code: int, fragment: str, tmp_path, mini_root):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.json").write_text('{"unrelated": true}')
    args = build(tmp_path / "in", out)
    before = _snapshot(tmp_path)  # every folder a row could touch: its inputs and its outputs
    if args[0] == "run" and "--output-dir" not in args:
        args += ["--output-dir", str(out)]
    result = CliRunner().invoke(main, args)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == code, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert errors and errors[-1].startswith("error: ") and fragment in errors[-1], result.output  # docs/errors.md
    assert "error:" not in result.stdout and sum(ln.startswith("error: ") for ln in errors) == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert len(lines) <= 3, result.output
    assert _snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------- diverged
def test_nan_loss_stops_training_and_records_nothing(tmp_path, mini_root, monkeypatch):
    from sbir_bench.baselines.linear_probe import LinearProbe

    def nan_loss(self, batch):
        out = original(self, batch)
        return {**out, "triplet": out["triplet"] * float("nan"), "loss": out["loss"] * float("nan")}
    original = LinearProbe.loss
    monkeypatch.setattr(LinearProbe, "loss", nan_loss)
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["run", "linear-probe", "--epochs", "1", "--output-dir", str(out), "--quiet"])
    assert result.exit_code == DivergedError.exit_code, result.output
    assert "diverged at epoch 1, step 1" in result.output and "'loss'" in result.output
    assert not list(out.glob("*.json"))  # no record of a diverged run


# ---------------------------------------------------------------------------------------- resume
FAST = as_options(short_training())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mini_root) -> Path:
    """A finished coop run whose checkpoint the resume tests try to continue."""
    out = tmp_path_factory.mktemp("resume")
    result = CliRunner().invoke(main, ["run", "coop", *FAST, "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("change,differs", [
    (["--epochs", "3"], "train.epochs"),
    (["--lr", "0.5"], "train.lr"),
    (["--set", "method_config.fusion_weight=0.25"], "method_config.fusion_weight"),
    (["--set", "data.val_fraction=0.3"], "data.val_fraction"),
    (["--set", "train.optimizer=sgd"], "train.optimizer"),
    (["--gzs-protocol", "heldout"], "data.gzs_protocol"),
])
def test_resume_with_other_settings_is_refused(trained, change, differs):
    before = _snapshot(trained)
    args = ["run", "coop", *FAST, "--output-dir", str(trained), "--resume", *change]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == WeightsError.exit_code, result.output
    assert "trained with other settings" in result.output and differs in result.output
    assert len([ln for ln in result.output.splitlines() if ln.strip()]) <= 3
    assert _snapshot(trained) == before


def test_resume_with_another_backbone_is_refused(trained, tmp_path):
    weights = tmp_path / "other.pt"
    from sbir_bench.models import load_backbone
    torch.save(load_backbone("sbir-tiny", "random").model.state_dict(), weights)
    result = CliRunner().invoke(main, ["run", "coop", *FAST, "--output-dir", str(trained), "--resume",
                                       "--pretrained", str(weights)])
    assert result.exit_code == WeightsError.exit_code and "backbone.pretrained" in result.output


def test_custom_split_gets_its_own_checkpoints(trained, tmp_path):
    split = tmp_path / "my-split.txt"
    split.write_text("star\nhouse\ncup\nflower\nkite\n")  # the same classes as split 1, yet a different run
    result = CliRunner().invoke(main, ["run", "coop", *FAST, "--output-dir", str(trained), "--resume",
                                       "--split-file", str(split)])
    assert result.exit_code == 0, result.output
    record = json.loads(next(p for p in trained.glob("*splitfile-my-split-*.json")).read_text())
    assert record["train"]["resumed_from_epoch"] == 0 and record["split"] == f"file:{split}"


def test_resume_of_a_finished_run_is_a_no_op_that_says_so(trained):
    before = _snapshot(trained)
    result = CliRunner().invoke(main, ["run", "coop", *FAST, "--output-dir", str(trained), "--resume"])
    assert result.exit_code == 0, result.output
    assert "already finished" in result.output and "nothing to resume" in result.output
    assert _snapshot(trained) == before  # no second record of the same seed


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, mini_root):
    out = tmp_path / "runs"
    first = CliRunner().invoke(main, ["run", "coop", *FAST, "--epochs", "1", "--output-dir", str(out)])
    assert first.exit_code == 0, first.output
    for record in out.glob("*.json"):  # as if the run had been killed after epoch 1 of 2
        record.unlink()
    ckpt = torch.load(out / "checkpoints" / "coop_mini_zs_split1_seed0" / "last.pt", weights_only=True)
    ckpt["trained_on"]["train"]["epochs"] = 2
    torch.save(ckpt, out / "checkpoints" / "coop_mini_zs_split1_seed0" / "last.pt")
    result = CliRunner().invoke(main, ["run", "coop", *FAST, "--output-dir", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    record = json.loads(next(out.glob("coop_mini_zs_split1_seed0_*.json")).read_text())
    assert record["train"]["resumed_from_epoch"] == 1


def test_a_write_refused_after_the_early_check_is_a_one_line_output_error(tmp_path):
    """A folder made read-only (or a full disk) while a run works: exit 6 with the path, no traceback."""
    from sbir_bench.fileio import atomic_write_json
    with pytest.raises(OutputError, match="cannot write .*record.json"):
        atomic_write_json(Path(_unwritable(tmp_path, "record.json")), {"a": 1})
