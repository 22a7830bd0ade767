"""Train once, evaluate anywhere: every trained run leaves a model artifact that reproduces its own
numbers, scores other tasks, refuses leakage, loads from Python, and is refused when damaged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TRAINED, as_options, newest_record, quick_or_whole, short_training

from sbir_bench.cli import main
from sbir_bench.errors import DataError, WeightsError

FAST = as_options(short_training({"train.epochs": 1, "eval.save_embeddings": True}))


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mini_root):
    """A short SpLIP run (the method with the most trained parts) and its record."""
    out = tmp_path_factory.mktemp("trained")
    result = _invoke("run", "splip", *FAST, "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    return out, newest_record(out)


def test_a_trained_run_saves_a_small_self_describing_artifact(trained):
    out, record = trained
    meta = json.loads(Path(record["model"]).read_text())
    tensors = Path(record["model"]).with_name("model.safetensors")
    assert meta["method"] == "splip" and meta["run_id"] == record["run_id"]
    assert meta["backbone"]["weights_sha256"] == record["weights_sha256"]
    assert meta["training"]["data_fingerprint"] == record["data_fingerprint"]
    assert [meta["class_names"][i] for i in meta["seen"]] == [n for n in record["class_names"]
                                                               if n not in record["classes"]["unseen_names"]]
    from safetensors.torch import load_file
    state = load_file(str(tensors))
    assert not any(k.startswith("clip.") for k in state)  # the backbone is not in it
    assert tensors.stat().st_size < 2 * 2**20


def test_eval_model_reproduces_the_runs_own_numbers_and_embeddings(trained, tmp_path):
    out, record = trained
    result = _invoke("eval", "--model", record["record_path"] if "record_path" in record else
                     str(out / f"{record['run_id']}.json"), "--output-dir", str(tmp_path), "--quiet")
    assert result.exit_code == 0, result.output
    again = newest_record(tmp_path)
    assert again["metrics"] == record["metrics"]
    assert again["model_source"]["run_id"] == record["run_id"] and again["train"]["epochs"] == 0
    with np.load(record["embeddings"]) as a, np.load(again["embeddings"]) as b:
        np.testing.assert_allclose(a["query"], b["query"], atol=1e-6)
        np.testing.assert_allclose(a["gallery"], b["gallery"], atol=1e-6)


def test_eval_model_scores_another_setting_and_refuses_seen_test_classes(trained, tmp_path):
    out, record = trained
    run_folder = str(Path(record["model"]).parent)
    gzs = _invoke("eval", "--model", run_folder, "--setting", "gzs", "--output-dir", str(tmp_path / "gzs"), "--quiet")
    assert gzs.exit_code == 0, gzs.output
    assert newest_record(tmp_path / "gzs")["setting"] == "gzs"
    split = tmp_path / "split.txt"
    split.write_text("star\ncircle\nsquare\n")  # circle and square were training classes
    leak = _invoke("eval", "--model", run_folder, "--split-file", str(split), "--output-dir", str(tmp_path / "x"))
    assert leak.exit_code == DataError.exit_code and "circle, square" in leak.output
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").glob("*.json"))
    allowed = _invoke("eval", "--model", run_folder, "--split-file", str(split), "--allow-seen-classes",
                      "--output-dir", str(tmp_path / "y"), "--quiet")
    assert allowed.exit_code == 0, allowed.output
    assert newest_record(tmp_path / "y")["model_source"]["seen_classes_in_test"] == ["circle", "square"]


def test_load_model_in_three_lines_embeds_like_the_run(trained, mini_root):
    from PIL import Image

    import sbir_bench
    out, record = trained
    m = sbir_bench.load_model(Path(record["model"]).parent)
    with np.load(record["embeddings"], allow_pickle=False) as z:
        path, expected = str(z["query_paths"][0]), z["query"][0]
    got = m.embed_sketches([Image.open(path)])
    assert got.shape == (1, expected.shape[0])
    np.testing.assert_allclose(got[0].numpy(), expected, atol=1e-5)
    assert m.embed_photos([path]).shape == got.shape


@pytest.mark.parametrize("method,dataset", quick_or_whole([(m, "mini") for m in TRAINED], (
    "depro", "ucdr-adapter", "clip-at", "maple", "cocoop")) + [("pros", "sketchy")])  # the quick loop: one of each kind
def test_load_model_embeds_exactly_as_eval_model_does(method, dataset, tmp_path, make_tree):
    """The Python API and ``eval --model`` build their transforms with the same builder: for every method the
    embeddings agree to 1e-6 (ProS on Sketchy included, whose sketches its loader colour-inverts)."""
    import sbir_bench
    where = ["--dataset", dataset] + (["--split", "2", "--data-root", str(make_tree("sketchy"))]
                                      if dataset == "sketchy" else [])
    steps = {"train.epochs": 1, "train.steps_per_epoch": 1, "eval.save_embeddings": True}
    short = as_options(short_training({**steps, "method_config.units_batch_size": 8} if method == "pros" else steps))
    trained = _invoke("run", method, *where, *short, "--output-dir", str(tmp_path / "run"))
    assert trained.exit_code == 0, trained.output
    record = newest_record(tmp_path / "run")
    scored = _invoke("eval", "--model", str(Path(record["model"]).parent), *where, "--output-dir",
                     str(tmp_path / "eval"), "--quiet")
    assert scored.exit_code == 0, scored.output
    evaluated = newest_record(tmp_path / "eval")
    # the ZS gallery's vocabulary, as eval --model prepares it (CoOp and CoCoOp embed class scores too)
    model = sbir_bench.load_model(Path(record["model"]).parent, class_names=evaluated["classes"]["unseen_names"])
    with np.load(evaluated["embeddings"], allow_pickle=False) as z:
        for side, embed in (("query", model.embed_sketches), ("gallery", model.embed_photos)):
            paths = [str(p) for p in z[f"{side}_paths"][:6]]
            np.testing.assert_allclose(embed(paths).numpy(), z[side][:6], atol=1e-6, rtol=0, err_msg=side)


@pytest.mark.parametrize("damage", ["truncated-tensors", "missing-key", "newer-version", "not-json", "other-backbone",
                                    "seen-class-renamed", "method-renamed", "v1-method-unknown"])
def test_a_refused_artifact_is_one_line_exit_4_and_writes_nothing(damage, trained, tmp_path):
    import shutil
    out, record = trained
    copy = tmp_path / "model"
    shutil.copytree(Path(record["model"]).parent, copy)
    meta_path, tensors = copy / "model.json", copy / "model.safetensors"
    meta = json.loads(meta_path.read_text())
    extra = []
    if damage == "truncated-tensors":
        tensors.write_bytes(tensors.read_bytes()[:100])
    elif damage == "missing-key":
        meta.pop("seen")
    elif damage == "newer-version":
        meta["format_version"] = 99
    elif damage == "not-json":
        meta_path.write_text("{not json")
    elif damage == "seen-class-renamed":  # would hide the class from the leakage check
        meta["class_names"][meta["seen"][0]] = "renamed"  # seen: indices into class_names
    elif damage == "method-renamed":
        meta["method"] = "coop-v2"
    elif damage == "v1-method-unknown":  # a version-1 artifact (no meta checksum) of a method not installed here
        meta.update(format_version=1, method="coop-v2")
        meta.pop("meta_sha256")
    else:
        from sbir_bench.models import load_backbone
        weights = tmp_path / "other.pt"
        torch.save(load_backbone("sbir-tiny", "random").model.state_dict(), weights)
        extra = ["--pretrained", str(weights)]
    if damage in ("missing-key", "newer-version", "seen-class-renamed", "method-renamed", "v1-method-unknown"):
        meta_path.write_text(json.dumps(meta))
    result = _invoke("eval", "--model", str(copy), *extra, "--output-dir", str(tmp_path / "records"), "--quiet")
    assert result.exit_code == WeightsError.exit_code, result.output
    assert damage in ("other-backbone",) or str(copy) in result.output  # the line names the artifact
    assert len([ln for ln in result.output.splitlines() if ln.strip()]) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "records").exists()


def test_reproduce_reuses_the_zs_model_for_the_gzs_cell(tmp_path, mini_root):
    base = ["--dataset", "mini", "--method", "linear-probe", "--set", "train.epochs=1", "--quiet"]
    zs = _invoke("reproduce", "zs", *base, "--output-dir", str(tmp_path / "zs"))
    assert zs.exit_code == 0, zs.output
    dry = _invoke("reproduce", "gzs", *base, "--output-dir", str(tmp_path / "gzs"), "--dry-run")
    assert "-> reuse the model of linear-probe_mini_zs_split1_seed0" in dry.output, dry.output
    gzs = _invoke("reproduce", "gzs", *base, "--output-dir", str(tmp_path / "gzs"))
    assert gzs.exit_code == 0, gzs.output
    record = newest_record(tmp_path / "gzs")
    assert record["setting"] == "gzs" and record["train"]["epochs"] == 0 and record["model_source"]
    heldout = _invoke("reproduce", "gzs", *base, "--set", "data.gzs_protocol=heldout", "--output-dir",
                      str(tmp_path / "gzs"), "--dry-run")
    assert "-> run" in heldout.output  # a held-out GZS partition trains on other data: no reuse


def test_a_heldout_zs_model_is_reused_only_by_a_heldout_cell_and_its_record_says_so(tmp_path, mini_root):
    """``data.gzs_protocol=heldout`` holds seen photos out of training in every setting: a plain GZS cell
    after such a ZS cell trains its own model; a heldout GZS cell reuses it; the records state the partition."""
    base = ["--dataset", "mini", "--method", "linear-probe", "--set", "train.epochs=1", "--quiet"]
    heldout = ["--set", "data.gzs_protocol=heldout"]
    zs = _invoke("reproduce", "zs", *base, *heldout, "--output-dir", str(tmp_path / "zs"))
    assert zs.exit_code == 0, zs.output
    record = newest_record(tmp_path / "zs")
    assert record["gzs_protocol"] == "heldout" and record["partition"]["heldout_fraction"] == 0.2
    assert record["counts"]["heldout_photos"] > 0
    plain = _invoke("reproduce", "gzs", *base, "--output-dir", str(tmp_path / "zs"), "--dry-run")
    assert "-> run" in plain.output and "reuse" not in plain.output, plain.output
    same = _invoke("reproduce", "gzs", *base, *heldout, "--output-dir", str(tmp_path / "zs"), "--dry-run")
    assert "-> reuse the model of linear-probe_mini_zs_split1_seed0" in same.output, same.output


def test_a_moved_results_folder_uses_its_own_files_not_the_originals(trained, tmp_path):
    """Records store where their files were written; a copied or moved folder must use the files beside
    its records (the original may be gone, or a different run)."""
    import shutil

    from sbir_bench.artifacts import artifact_path
    from sbir_bench.reporting.collect import runs_frame
    out, record = trained
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    run_id = record["run_id"]
    assert artifact_path(moved / f"{run_id}.json") == moved / run_id / "model.json"
    row = runs_frame([str(moved / f"{run_id}.json")]).iloc[0]
    assert row["embeddings"] == str(moved / run_id / "embeddings.npz")
    assert row["per_query"] == str(moved / run_id / "per_query.npz")
    scored = _invoke("eval", "--record", str(moved / f"{run_id}.json"), "--json", str(tmp_path / "m.json"))
    assert scored.exit_code == 0, scored.output


def test_an_artifact_copied_into_another_run_s_folder_says_whose_it_is(trained, tmp_path):
    """A run writes its artifact into <run-id>/: one found under another name is evaluated as the run that
    trained it, and the line says so."""
    import shutil
    out, record = trained
    other = tmp_path / "runs" / "coop_mini_zs_split1_seed9_20260101-000000-abcdef"
    shutil.copytree(Path(record["model"]).parent, other)
    result = _invoke("eval", "--model", str(other), "--output-dir", str(tmp_path / "eval"))
    assert result.exit_code == 0, result.output
    assert f"is run {record['run_id']}'s, not {other.name}'s" in result.output
    assert newest_record(tmp_path / "eval")["model_source"]["run_id"] == record["run_id"]
