"""Run records: schema, atomic writes, tolerant reading; saved embeddings round-trip."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run_record

from sbir_bench.cli import main
from sbir_bench.errors import SbirError
from sbir_bench.fileio import atomic_write_json
from sbir_bench.records import REQUIRED_KEYS, SCHEMA, load_records
from sbir_bench.retrieval.npz_files import load_embeddings, save_embeddings


def test_atomic_write_leaves_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind


def test_load_records_skips_corrupt_and_foreign_files(tmp_path):
    good = {"schema": SCHEMA, **{k: 0 for k in REQUIRED_KEYS if k != "schema"}, "metrics": {"mAP@all": 0.5}}
    atomic_write_json(tmp_path / "good.json", good)
    (tmp_path / "half.json").write_text('{"schema": "sbir-bench/run-rec')
    (tmp_path / "foreign.json").write_text('{"hello": 1}')
    records, skipped = load_records(sorted(tmp_path.glob("*.json")))
    assert [r.path.name for r in records] == ["good.json"]
    reasons = {p.name: why for p, why in skipped}
    assert "unreadable JSON" in reasons["half.json"]
    assert "schema" in reasons["foreign.json"]


def test_embeddings_round_trip_and_validation(tmp_path):
    q, g = np.random.rand(4, 3), np.random.rand(5, 3)
    path = save_embeddings(tmp_path / "e.npz", q, g, np.arange(4), np.arange(5))
    data = load_embeddings(path)
    np.testing.assert_allclose(data["query"], q.astype(np.float32))
    assert data["gallery_labels"].dtype == np.int64
    bad = tmp_path / "bad.npz"
    np.savez(bad, query=q, gallery=g)
    with pytest.raises(SbirError, match="either query_labels"):
        load_embeddings(bad)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SbirError, match="not a readable"):
        load_embeddings(tmp_path / "junk.npz")
    with pytest.raises(SbirError, match="not found"):
        load_embeddings(tmp_path / "missing.npz")


def test_gzs_record_parts_and_every_preset_agree_with_an_independent_computation(tmp_path, mini_root):
    """The record's seen / unseen / H values and its metrics under every preset, recomputed from its
    own saved embeddings: H by the formula, each part by scikit-learn over that part's queries."""
    import numpy as np
    from click.testing import CliRunner
    from sklearn.metrics import average_precision_score

    from sbir_bench.cli import main
    result = CliRunner().invoke(main, ["run", "zeroshot-clip", "--setting", "gzs", "--output-dir", str(tmp_path),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    m = record["metrics"]
    s, u = m["mAP@all/seen"], m["mAP@all/unseen"]
    assert m["mAP@all/H"] == pytest.approx(2 * s * u / (s + u), abs=1e-12)
    with np.load(record["embeddings"]) as z:
        q, g, ql, gl, seen = z["query"], z["gallery"], z["query_labels"], z["gallery_labels"], z["query_seen"]
    scores = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    has = (gl[None, :] == ql[:, None]).any(1)  # queries whose class has no gallery photo are excluded
    assert not has.all()  # the GZS draw leaves some seen classes without photos: the exclusion is exercised
    ap = np.array([average_precision_score(gl == ql[i], scores[i]) if has[i] else np.nan for i in range(len(q))])
    assert ap[seen & has].mean() == pytest.approx(s, abs=1e-6)
    assert ap[~seen & has].mean() == pytest.approx(u, abs=1e-6)
    assert record["n_excluded"] == int((~has).sum())
    per_class = {int(c): v for c, v in record["per_class_map"].items()}
    assert set(per_class) == set(ql[has].tolist())  # every evaluated query's class, no other
    for c, value in per_class.items():  # each class's mean AP over its evaluated queries
        assert value == pytest.approx(ap[(ql == c) & has].mean(), abs=1e-6)
    out = tmp_path / "all.json"
    again = CliRunner().invoke(main, ["eval", "--record", str(next(tmp_path.glob("*.json"))), "--protocols", "all",
                                      "--json", str(out), "--quiet"])
    assert again.exit_code == 0, again.output
    for preset, result_ in json.loads(out.read_text())["protocols"].items():
        for key, value in record["metrics_by_protocol"][preset].items():
            assert result_["metrics"][key] == pytest.approx(value, abs=1e-9), (preset, key)


def test_two_copies_of_the_same_data_are_one_dataset_and_other_files_are_another(tmp_path, make_tree):
    classes = ["airplane", "cat", "dog", "t-shirt"]
    split = tmp_path / "split.txt"
    split.write_text("dog\nt-shirt\n")
    out = tmp_path / "runs"
    first = make_tree("quickdraw", classes, photos=3)
    twin = tmp_path / "twin"
    shutil.copytree(first, twin)
    common = ["--dataset", "quickdraw", "--split-file", str(split)]
    a = run_record(out, *common, "--data-root", str(first))
    b = run_record(out, *common, "--data-root", str(twin))
    assert a["data_fingerprint"] == b["data_fingerprint"]
    result = CliRunner().invoke(main, ["compare", "--results-dir", str(out)])
    assert "(1)" in result.output and "counted once" in result.output
    (twin / "QuickDraw" / "QuickDraw_images_final" / "cat" / "n00000001_1.jpg").unlink()
    c = run_record(out, *common, "--data-root", str(twin))
    assert c["data_fingerprint"]["photos"] == a["data_fingerprint"]["photos"] - 1
    rows = CliRunner().invoke(main, ["compare", "--results-dir", str(out)]).output
    assert "data 1" in rows and "data 2" in rows


def test_records_carry_the_sha256_of_their_weights_and_data(tmp_path, mini_root):
    from sbir_bench.data import mini
    from sbir_bench.models import tiny_pretrain
    record = run_record(tmp_path / "runs")
    assert record["weights_sha256"] == tiny_pretrain.SHIPPED_SHA256
    assert record["data_fingerprint"]["content_sha256"] == mini.SHIPPED_SHA256


def test_eval_scores_string_labels_as_it_scores_their_codes(tmp_path):
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(6, 4)), rng.normal(size=(9, 4))
    ql, gl = np.array([0, 1, 2, 0, 1, 2]), np.array([0, 1, 2] * 3)
    names = np.array(["cat", "dog", "t-shirt"])
    results = []
    for tag, (a, b) in (("codes", (ql, gl)), ("names", (names[ql], names[gl]))):
        np.savez(tmp_path / f"{tag}.npz", query=q, gallery=g, query_labels=a, gallery_labels=b)
        out = tmp_path / f"{tag}.json"
        result = CliRunner().invoke(main, ["eval", "--embeddings", str(tmp_path / f"{tag}.npz"), "--json", str(out),
                                           "--quiet"])
        assert result.exit_code == 0, result.output
        results.append(json.loads(out.read_text())["metrics"])
    assert results[0] == results[1]
