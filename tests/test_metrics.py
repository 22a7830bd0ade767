"""The retrieval engine against independent oracles: scikit-learn, a literal transcription of SAKE's
VOC AP@K, a brute-force ranker, and hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from sbir_bench.retrieval import Protocol, evaluate
from sbir_bench.retrieval.engine import block_rows


# ---------------------------------------------------------------- oracles (deliberately loop-based)
def stable_order(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")


def sake_ap_at_k(scores: np.ndarray, relevant: np.ndarray, k: int | None, interpolate: bool = True) -> float:
    """SAKE's eval_AP_inner + VOCap, transcribed position by position (stable tie order)."""
    flags = relevant[stable_order(scores)]
    total_pos = relevant.sum()
    if k is not None:
        flags = flags[: min(k, len(flags))]
        total_pos = min(k, total_pos)
    tp = np.cumsum(flags)
    fp = np.cumsum(~flags)
    rec = tp / total_pos
    prec = tp / (tp + fp)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    if interpolate:
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
    ap = 0.0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            ap += (mrec[i] - mrec[i - 1]) * mpre[i]
    return ap


def precision_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    flags = relevant[stable_order(scores)][:k]
    return flags.sum() / min(k, len(scores))


def random_problem(rng: np.random.Generator, nq: int, ng: int, classes: int, ties: bool):
    ql = rng.integers(0, classes, nq)
    gl = rng.integers(0, classes, ng)
    scores = rng.normal(size=(nq, ng)) + 1.5 * (ql[:, None] == gl[None, :])
    if ties:
        scores = np.round(scores, 1)  # many tied blocks, some mixing relevant and irrelevant items
    return scores.astype(np.float32), ql, gl


# ---------------------------------------------------------------- hand-computed examples
def test_hand_computed_category_example():
    # one query of class 0; gallery ranked by score: R, N, R, N, N  (2 relevant)
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]], dtype=np.float32)
    ql = np.array([0])
    gl = np.array([0, 1, 0, 1, 1])
    res = evaluate(scores=scores, query_labels=ql, gallery_labels=gl,
                   protocol=Protocol(map_k=(2, 3), prec_k=(1, 2, 3)))
    assert res.metrics["mAP@all"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert res.metrics["P@1"] == pytest.approx(1.0)
    assert res.metrics["P@2"] == pytest.approx(0.5)
    assert res.metrics["P@3"] == pytest.approx(2 / 3)
    assert res.metrics["mAP@2"] == pytest.approx(1 / 2)          # one hit (precision 1) / min(2, 2)
    assert res.metrics["mAP@3"] == pytest.approx((1 + 2 / 3) / 2)


def test_hand_computed_ties_grouped_matches_sklearn():
    # relevant item tied with an irrelevant one at the top: sklearn scores that block as one point (1/2)
    scores = np.array([[0.9, 0.9, 0.1]], dtype=np.float32)
    gl = np.array([1, 0, 0])
    res = evaluate(scores=scores, query_labels=np.array([0]), gallery_labels=gl, protocol=Protocol(map_k=(3,), prec_k=(1,)))
    expected = average_precision_score([0, 1, 1], [0.9, 0.9, 0.1])
    assert res.metrics["mAP@all"] == pytest.approx(expected)
    assert res.metrics["mAP@all"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert res.metrics["P@1"] == 0.0  # grouped: the tied block ends at rank 2, so nothing is in the top 1


def test_optimistic_and_pessimistic_ties_are_real_rankings():
    scores = np.array([[0.5, 0.5, 0.5, 0.1]], dtype=np.float32)  # two relevant tied with one irrelevant
    gl = np.array([0, 1, 0, 1])
    kw = dict(scores=scores, query_labels=np.array([0]), gallery_labels=gl)
    opt = evaluate(**kw, protocol=Protocol(map_k=(4,), prec_k=(2,), ties="optimistic"))
    pes = evaluate(**kw, protocol=Protocol(map_k=(4,), prec_k=(2,), ties="pessimistic"))
    assert opt.metrics["mAP@4"] == pytest.approx(1.0)              # R R N N
    assert opt.metrics["P@2"] == pytest.approx(1.0)
    assert pes.metrics["mAP@4"] == pytest.approx(2 / 3)  # N R R N: precisions 1/2, 2/3; VOC envelope 2/3, 2/3
    assert pes.metrics["P@2"] == pytest.approx(0.5)
    for res in (opt, pes):
        assert 0.0 <= res.per_query["mAP@4"].max() <= 1.0


def test_query_without_relevant_items_is_excluded_and_counted():
    scores = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    res = evaluate(scores=scores, query_labels=np.array([0, 7]), gallery_labels=np.array([0, 1]))
    assert res.n_excluded == 1 and res.n_queries == 2
    assert list(res.query_index) == [0]
    assert res.metrics["mAP@all"] == pytest.approx(1.0)


# ---------------------------------------------------------------- random problems vs oracles
@pytest.mark.parametrize("ties", [False, True])
def test_map_all_equals_sklearn(ties):
    rng = np.random.default_rng(1)
    scores, ql, gl = random_problem(rng, 40, 120, 5, ties)
    res = evaluate(scores=scores, query_labels=ql, gallery_labels=gl)
    expected = [average_precision_score(gl == ql[i], scores[i]) for i in range(len(ql))]
    np.testing.assert_allclose(res.per_query["AP@all"], expected, atol=1e-6)
    assert res.metrics["mAP@all"] == pytest.approx(np.mean(expected), abs=1e-6)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("interpolation", ["voc", "none"])
def test_topk_equals_sake_transcription_with_stable_ties(ties, interpolation):
    rng = np.random.default_rng(2)
    scores, ql, gl = random_problem(rng, 30, 150, 4, ties)
    k = 20
    proto = Protocol(map_k=(k,), prec_k=(10, k), ties="stable", topk_interpolation=interpolation)
    res = evaluate(scores=scores, query_labels=ql, gallery_labels=gl, protocol=proto)
    ap = [sake_ap_at_k(scores[i], gl == ql[i], k, interpolation == "voc") for i in range(len(ql))]
    p10 = [precision_at_k(scores[i], gl == ql[i], 10) for i in range(len(ql))]
    np.testing.assert_allclose(res.per_query[f"mAP@{k}"], ap, atol=1e-6)
    np.testing.assert_allclose(res.per_query["P@10"], p10, atol=1e-6)


@pytest.mark.parametrize("ties", [False, True])
def test_voc_map_all_equals_sake_without_cutoff(ties):
    rng = np.random.default_rng(8)
    scores, ql, gl = random_problem(rng, 30, 80, 3, ties)
    res = evaluate(scores=scores, query_labels=ql, gallery_labels=gl,
                   protocol=Protocol(all_interpolation="voc", ties="stable", map_k=(), prec_k=()))
    expected = [sake_ap_at_k(scores[i], gl == ql[i], None) for i in range(len(ql))]
    np.testing.assert_allclose(res.per_query["AP@all"], expected, atol=1e-6)


def test_all_tie_policies_agree_without_ties():
    rng = np.random.default_rng(3)
    scores, ql, gl = random_problem(rng, 25, 90, 3, ties=False)
    results = [evaluate(scores=scores, query_labels=ql, gallery_labels=gl,
                        protocol=Protocol(map_k=(15,), prec_k=(15,), ties=t)).metrics
               for t in ("grouped", "stable", "optimistic", "pessimistic")]
    for other in results[1:]:
        for key in results[0]:
            assert other[key] == pytest.approx(results[0][key], abs=1e-9)


def test_normalisations():
    rng = np.random.default_rng(4)
    scores, ql, gl = random_problem(rng, 20, 60, 3, ties=False)
    k = 10
    base = dict(scores=scores, query_labels=ql, gallery_labels=gl)
    hits = evaluate(**base, protocol=Protocol(map_k=(k,), topk_normalization="hits", topk_interpolation="none"))
    by_r = evaluate(**base, protocol=Protocol(map_k=(k,), topk_normalization="r", topk_interpolation="none"))
    for i in range(len(ql)):
        flags = (gl == ql[i])[stable_order(scores[i])][:k]
        precs = np.cumsum(flags)[flags] / (np.flatnonzero(flags) + 1)
        assert hits.per_query[f"mAP@{k}"][i] == pytest.approx(precs.sum() / max(1, flags.sum()))
        assert by_r.per_query[f"mAP@{k}"][i] == pytest.approx(precs.sum() / (gl == ql[i]).sum())


def test_class_average_differs_from_query_average_as_defined():
    rng = np.random.default_rng(5)
    scores, ql, gl = random_problem(rng, 30, 60, 3, ties=False)
    by_q = evaluate(scores=scores, query_labels=ql, gallery_labels=gl)
    by_c = evaluate(scores=scores, query_labels=ql, gallery_labels=gl, protocol=Protocol(average="class"))
    ap = by_q.per_query["AP@all"]
    assert by_c.metrics["mAP@all"] == pytest.approx(np.mean([ap[ql == c].mean() for c in np.unique(ql)]))
    assert by_q.per_class == pytest.approx({int(c): ap[ql == c].mean() for c in np.unique(ql)})


def test_embeddings_path_equals_score_matrix_and_block_size_is_irrelevant():
    rng = np.random.default_rng(6)
    q = rng.normal(size=(70, 16)).astype(np.float32)
    g = rng.normal(size=(110, 16)).astype(np.float32)
    ql, gl = rng.integers(0, 4, 70), rng.integers(0, 4, 110)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    ref = evaluate(scores=qn @ gn.T, query_labels=ql, gallery_labels=gl, memory="1GiB")
    small = evaluate(q, g, ql, gl, memory=110 * 13 * 3, device="cpu")  # 3 rows per block
    assert block_rows(110, 110 * 13 * 3) == 3
    for key in ref.metrics:
        assert small.metrics[key] == pytest.approx(ref.metrics[key], abs=1e-5)


# ---------------------------------------------------------------- instance level
def test_instance_level_accuracy_brute_force():
    rng = np.random.default_rng(7)
    scores = np.round(rng.normal(size=(50, 40)), 1).astype(np.float32)
    target = rng.integers(0, 40, 50)
    target[3] = -1  # a query whose photo is absent
    res = evaluate(scores=scores, query_to_gallery=target, protocol=Protocol(acc_k=(1, 5, 10), ties="stable"))
    ranks = []
    for i in np.flatnonzero(target >= 0):
        order = stable_order(scores[i])
        ranks.append(int(np.flatnonzero(order == target[i])[0]) + 1)
    ranks = np.array(ranks)
    assert res.n_excluded == 1
    np.testing.assert_array_equal(res.per_query["rank"], ranks)
    for k in (1, 5, 10):
        assert res.metrics[f"Acc@{k}"] == pytest.approx(np.mean(ranks <= k))


def test_instance_grouped_rank_counts_ties_against_the_query():
    scores = np.array([[0.5, 0.5, 0.2]], dtype=np.float32)
    res = evaluate(scores=scores, query_to_gallery=np.array([1]), protocol=Protocol(acc_k=(1, 2)))
    assert res.per_query["rank"][0] == 2
    assert res.metrics["Acc@1"] == 0.0 and res.metrics["Acc@2"] == 1.0


def test_engine_input_errors():
    from sbir_bench.errors import SbirError
    with pytest.raises(SbirError):
        evaluate(np.zeros((2, 3)), np.zeros((2, 4)), [0, 1], [0, 1])
    with pytest.raises(SbirError):
        Protocol(ties="random")


def test_map_all_equals_torchmetrics_only_with_positive_scores():
    from torchmetrics.functional.retrieval import retrieval_average_precision

    from sbir_bench.retrieval import PRESETS, Protocol, evaluate
    rng = np.random.default_rng(3)
    scores = rng.uniform(0.05, 1.0, (20, 50)).astype(np.float32)  # distinct and positive: they agree
    ql, gl = rng.integers(0, 3, 20), rng.integers(0, 3, 50)
    ours = evaluate(scores=scores, query_labels=ql, gallery_labels=gl, protocol=Protocol()).per_query["AP@all"]
    tm = [float(retrieval_average_precision(torch.from_numpy(scores[i]), torch.from_numpy(gl == ql[i]))) for i in range(20)]
    np.testing.assert_allclose(ours, tm, atol=1e-6)
    scores[:, ::3] -= 1.0  # a third of the items, relevant ones included, now score <= 0
    ours = evaluate(scores=scores, query_labels=ql, gallery_labels=gl, protocol=Protocol()).per_query["AP@all"]
    tm = [float(retrieval_average_precision(torch.from_numpy(scores[i]), torch.from_numpy(gl == ql[i]))) for i in range(20)]
    assert np.abs(ours - np.array(tm)).max() > 0.05  # torchmetrics >= 1.8 drops relevant items scored <= 0
    preset = evaluate(scores=scores, query_labels=ql, gallery_labels=gl, protocol=PRESETS["torchmetrics"])
    np.testing.assert_allclose(preset.per_query["AP@all"], tm, atol=1e-6)  # ... which its preset reproduces


def test_block_rows_follow_the_memory_budget():
    from sbir_bench.retrieval.scoring import block_rows
    rows = [block_rows(100_000, budget) for budget in (10 ** 7, 2 * 10 ** 7, 4 * 10 ** 7)]
    assert rows[0] >= 1 and all(abs(b - 2 * a) <= 1 for a, b in zip(rows, rows[1:]))  # rows grow with the budget
    assert block_rows(2 * 100_000, 2 * 10 ** 7) == rows[0]  # and shrink with the gallery
    assert block_rows(10 ** 9, 1) == 1  # a budget below one row still scores, one row at a time
    assert block_rows(10, "1GiB") == 512  # capped on CPU
    assert block_rows(10, "auto", "cpu") == 512


@pytest.mark.parametrize("decimals", [0, 1, 2, 6])
def test_cpu_and_device_ranking_paths_give_the_same_counts(decimals):
    """The CPU path (numpy sorts, counts derived where nothing ties) equals the torch path a GPU runs,
    on problems full of ties (scores rounded to few decimals) and without."""
    from sbir_bench.retrieval.measures import (
        RelevantRanks,
        counts_numpy,
        counts_torch,
        tie_shift_numpy,
        tie_shift_torch,
    )
    rng = np.random.default_rng(decimals)
    for _ in range(30):
        b, n = int(rng.integers(1, 12)), int(rng.integers(2, 200))
        scores = np.round(rng.standard_normal((b, n)), decimals).astype(np.float32)
        rel = np.sort(rng.choice(n, int(rng.integers(1, n + 1)), replace=False))
        fast, device = counts_numpy(scores, rel), counts_torch(torch.from_numpy(scores), torch.from_numpy(rel))
        for a, d in zip(fast, device):
            assert np.array_equal(a, d.numpy())
        rr = RelevantRanks(torch.from_numpy(scores), *device, n_gallery=n)
        rows, cols = torch.nonzero(rr.n_ge - rr.n_gt > 1, as_tuple=True)
        if len(rows):
            assert torch.equal(tie_shift_numpy(rr, rows, cols), tie_shift_torch(rr, rows, cols))


@pytest.mark.parametrize("decimals", [1, 6])
def test_every_metric_is_the_same_through_the_torch_ranking_path(decimals, monkeypatch):
    """The whole engine, every preset: the numpy ranking CPUs use against the torch ranking GPUs use
    (run here on CPU tensors by routing the CPU counts through ``counts_torch``)."""
    from sbir_bench.retrieval import PRESETS, evaluate_many, measures
    rng = np.random.default_rng(decimals)
    q, g = np.round(rng.normal(size=(70, 6)), decimals), np.round(rng.normal(size=(90, 6)), decimals)
    ql, gl = rng.integers(0, 5, 70), rng.integers(0, 5, 90)
    protocols = list(PRESETS.values())
    numpy_path = evaluate_many(q, g, ql, gl, protocols=protocols, device="cpu")
    monkeypatch.setattr(measures, "counts_numpy", lambda s, r: tuple(
        t.numpy() for t in measures.counts_torch(torch.from_numpy(np.ascontiguousarray(s)), torch.from_numpy(r))))
    torch_path = evaluate_many(q, g, ql, gl, protocols=protocols, device="cpu")
    for a, b in zip(numpy_path, torch_path):
        assert a.metrics.keys() == b.metrics.keys()
        for key in a.metrics:
            assert a.metrics[key] == pytest.approx(b.metrics[key], abs=1e-12), (a.protocol["preset"], key)
