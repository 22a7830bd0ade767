"""The faiss top-K backend against the exact engine (its oracle) on tie-free data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from sbir_bench.cli import main
from sbir_bench.retrieval import Protocol, evaluate
from sbir_bench.retrieval.faiss_topk import evaluate_topk


@pytest.mark.parametrize("normalization", ["min_k_r", "hits", "r"])
@pytest.mark.parametrize("interpolation", ["voc", "none"])
def test_category_topk_matches_exact_engine(normalization, interpolation):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 12))
    ql, gl = rng.integers(0, 5, 300), rng.integers(0, 5, 400)
    q = (centres[ql] + rng.normal(size=(300, 12))).astype(np.float32)
    g = (centres[gl] + rng.normal(size=(400, 12))).astype(np.float32)
    proto = Protocol(map_k=(50, 200), prec_k=(10, 100), ties="stable", topk_interpolation=interpolation,
                     topk_normalization=normalization)
    exact = evaluate(q, g, ql, gl, protocol=proto, device="cpu")
    fast = evaluate_topk(q, g, ql, gl, protocol=proto, block=64)
    for key in ("mAP@50", "mAP@200", "P@10", "P@100"):
        np.testing.assert_allclose(fast.per_query[key], exact.per_query[key], atol=1e-5, err_msg=key)


@pytest.mark.parametrize("similarity", ["euclidean", "cosine"])
def test_pros_preset_topk_matches_exact_engine(similarity):
    """ProS's convention ranks by squared Euclidean distance of unnormalised embeddings: faiss' L2 index."""
    from sbir_bench.retrieval import resolve_protocol
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(4, 10)) * 2
    ql, gl = rng.integers(0, 4, 120), rng.integers(0, 4, 260)
    q = (centres[ql] + rng.normal(size=(120, 10)) * rng.uniform(0.3, 3, (120, 1))).astype(np.float32)
    g = (centres[gl] + rng.normal(size=(260, 10)) * rng.uniform(0.3, 3, (260, 1))).astype(np.float32)
    proto = resolve_protocol("pros", {"similarity": similarity})
    exact = evaluate(q, g, ql, gl, protocol=proto, device="cpu")
    fast = evaluate_topk(q, g, ql, gl, protocol=proto, block=50)
    for key in ("mAP@200", "P@100", "P@200"):
        np.testing.assert_allclose(fast.per_query[key], exact.per_query[key], atol=1e-5, err_msg=key)


def test_instance_topk_matches_exact_engine():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(200, 8)).astype(np.float32)
    truth = rng.integers(0, 200, 150)
    q = g[truth] + 0.8 * rng.normal(size=(150, 8)).astype(np.float32)
    truth[0] = -1
    proto = Protocol(acc_k=(1, 5, 10))
    exact = evaluate(q, g, query_to_gallery=truth, protocol=proto, device="cpu")
    fast = evaluate_topk(q, g, query_to_gallery=truth, protocol=proto)
    assert fast.n_excluded == exact.n_excluded == 1
    for k in (1, 5, 10):
        assert fast.metrics[f"Acc@{k}"] == pytest.approx(exact.metrics[f"Acc@{k}"])


def test_cli_faiss_backend(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "e.npz"
    np.savez(path, query=rng.normal(size=(20, 6)), gallery=rng.normal(size=(30, 6)),
             query_labels=rng.integers(0, 3, 20), gallery_labels=rng.integers(0, 3, 30))
    out = tmp_path / "m.json"
    result = CliRunner().invoke(main, ["eval", "--embeddings", str(path), "--backend", "faiss", "--json", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data["metrics"]) == {"mAP@200", "P@100", "P@200"} and data["protocol"]["backend"] == "faiss-topk"


@pytest.mark.parametrize("n_gallery", [150, 100, 80, 40])  # K < N, K = N, K > N for K = 100 (and 200 > N)
@pytest.mark.parametrize("normalization", ["min_k_r", "hits", "r"])
def test_both_backends_agree_when_k_reaches_or_exceeds_the_gallery(n_gallery, normalization):
    rng = np.random.default_rng(n_gallery)
    centres = rng.normal(size=(4, 10))
    ql, gl = rng.integers(0, 4, 60), np.arange(n_gallery) % 4
    q = (centres[ql] + rng.normal(size=(60, 10))).astype(np.float32)
    g = (centres[gl] + rng.normal(size=(n_gallery, 10))).astype(np.float32)
    proto = Protocol(map_k=(200,), prec_k=(100, 200), ties="stable", topk_normalization=normalization)
    exact = evaluate(q, g, ql, gl, protocol=proto, device="cpu")
    fast = evaluate_topk(q, g, ql, gl, protocol=proto)
    for key in ("mAP@200", "P@100", "P@200"):
        np.testing.assert_allclose(fast.per_query[key], exact.per_query[key], atol=1e-5, err_msg=key)
    if n_gallery < 100:  # a brute-force count: every relevant item lies within K, P@K = R / min(K, N)
        n_rel = np.bincount(gl, minlength=4)[ql]
        np.testing.assert_allclose(fast.per_query["P@100"], n_rel / min(100, n_gallery), atol=1e-6)
        assert fast.metrics["P@100"] < 0.5


def test_non_finite_embeddings_are_refused_by_both_backends():
    from sbir_bench.errors import DataError
    q, g = np.ones((3, 4), np.float32), np.ones((5, 4), np.float32)
    q[1, 2] = np.nan
    for backend in (lambda: evaluate(q, g, [0, 0, 0], [0] * 5, device="cpu"),
                    lambda: evaluate_topk(q, g, [0, 0, 0], [0] * 5)):
        with pytest.raises(DataError, match="query embeddings row 1 holds NaN"):
            backend()


@pytest.mark.parametrize("preset", ["sbir-bench", "sem-pcyc", "sake", "clip-at"])
def test_queries_without_a_relevant_item_follow_the_presets_rule_in_both_backends(preset):
    """Excluded, scored 0, or (SAKE) out of mAP and 0 in P@K; class-averaged too: the one aggregation."""
    from sbir_bench.retrieval.protocol import resolve_protocol
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(5, 12))
    ql, gl = rng.integers(0, 5, 120), rng.integers(0, 4, 300)  # class 4 has no photo
    q = (centres[ql] + rng.normal(size=(120, 12))).astype(np.float32)
    g = (centres[gl] + rng.normal(size=(300, 12))).astype(np.float32)
    for average in ("query", "class"):
        proto = resolve_protocol(preset, {"map_k": [50], "prec_k": [10, 100], "ties": "stable", "average": average})
        exact = evaluate(q, g, ql, gl, protocol=proto, device="cpu")
        fast = evaluate_topk(q, g, ql, gl, protocol=proto, block=32)
        assert exact.n_excluded == fast.n_excluded and (ql == 4).any()
        for key in ("mAP@50", "P@10", "P@100"):
            assert fast.metrics[key] == pytest.approx(exact.metrics[key], abs=1e-6), (preset, average, key)
