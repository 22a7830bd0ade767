"""Protocol presets against line-by-line transcriptions of the code they reproduce (with and without
tied scores), one score pass for several presets, the FG gallery choice, and `eval --protocols all`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import average_precision_score

from sbir_bench.cli import main
from sbir_bench.errors import SbirError
from sbir_bench.retrieval import PRESETS, Protocol, evaluate, evaluate_many
from sbir_bench.retrieval.protocol import PRESET_ENTRIES, resolve_protocol

K = 20


def stable_order(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")


def problem(seed: int, ties: bool, nq: int = 25, ng: int = 90, classes: int = 4, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    ql, gl = rng.integers(0, classes, nq), rng.integers(0, classes, ng)
    scores = rng.normal(size=(nq, ng)) * 0.3 + 0.5 * (ql[:, None] == gl[None, :]) + shift
    if ties:
        scores = np.round(scores, 1)  # tied blocks mixing relevant and irrelevant items
    return scores.astype(np.float32), ql, gl


# ------------------------------------------------------------------ SAKE (qliu24/SAKE, src/test_cse_resnet_*)
def sake_eval_ap_inner(scores, relevant, top=None):
    sort_idx = stable_order(scores)  # np.argsort(-scores): stable order makes the oracle deterministic
    tp = relevant[sort_idx]
    fp = np.logical_not(tp)
    tot_pos = relevant.sum()
    if top is not None:
        top = min(top, len(scores))
        tp, fp, tot_pos = tp[:top], fp[:top], min(top, tot_pos)
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec, prec = tp / tot_pos, tp / (tp + fp)
    mrec = np.append(np.append(0, rec), 1)
    mpre = np.append(np.append(0, prec), 0)
    for ii in range(len(mpre) - 2, -1, -1):
        mpre[ii] = max(mpre[ii], mpre[ii + 1])
    msk = [i != j for i, j in zip(mrec[1:], mrec[0:-1])]
    return np.sum((mrec[1:][msk] - mrec[0:-1][msk]) * mpre[1:][msk])


def sake_eval_precision(scores, relevant, top=100):
    top = min(top, len(scores))
    return np.sum(relevant[stable_order(scores)][:top]) / top


# ------------------------------------------------------------------ SEM-PCYC (AnjanDutta/sem-pcyc, src/utils.py)
def sem_pcyc_apsak(sim, str_sim, k=None):
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    sim_k = np.array([sim[i, ix] for i, ix in enumerate(idx)])
    str_sim_k = np.array([str_sim[i, ix] for i, ix in enumerate(idx)])
    idx_nz = np.where(str_sim_k.sum(axis=1) != 0)[0]
    aps = np.zeros(sim.shape[0])
    aps[idx_nz] = [average_precision_score(str_sim_k[i], sim_k[i]) for i in idx_nz]
    return aps


def sem_pcyc_prec(actual, predicted, k):
    act_set, pred_set = set(actual), set(predicted[:k])
    return len(act_set & pred_set) / min(k, len(pred_set))


# ------------------------------------------------------------------ torchmetrics 0.9.3 as CLIP-AT called it
def torchmetrics_093_ap(preds, target):
    if not target.sum():
        return 0.0
    target = target[np.argsort(-preds, kind="stable")]
    positions = np.arange(1, len(target) + 1, dtype=np.float64)[target > 0]
    return float(((np.arange(len(positions)) + 1) / positions).mean())


# ------------------------------------------------------------------ torchmetrics >= 1.8, transcribed with a stable top-k
def torchmetrics_ap(preds, target, top_k=None):
    top_k = top_k or len(preds)
    target = np.where(preds > 0, target, False)[stable_order(preds)[: min(top_k, len(preds))]]
    if not target.sum():
        return 0.0
    positions = np.arange(1, len(target) + 1, dtype=np.float64)[target > 0]
    return float(((np.arange(len(positions)) + 1) / positions).mean())


def torchmetrics_precision(preds, target, top_k):
    if not target.sum():
        return 0.0
    filtered = np.where(preds > 0, target, False)
    return filtered[stable_order(preds)[: min(top_k, len(preds))]].sum() / top_k


@pytest.mark.parametrize("ties", [False, True])
def test_sake_preset(ties):
    scores, ql, gl = problem(0, ties)
    res = evaluate(scores=scores, query_labels=ql, gallery_labels=gl,
                   protocol=resolve_protocol("sake", {"map_k": [K], "prec_k": [10, K]}))
    rel = [gl == q for q in ql]
    np.testing.assert_allclose(res.per_query["AP@all"], [sake_eval_ap_inner(s, r) for s, r in zip(scores, rel)], atol=1e-6)
    np.testing.assert_allclose(res.per_query[f"mAP@{K}"], [sake_eval_ap_inner(s, r, K) for s, r in zip(scores, rel)],
                               atol=1e-6)
    np.testing.assert_allclose(res.per_query["P@10"], [sake_eval_precision(s, r, 10) for s, r in zip(scores, rel)],
                               atol=1e-6)


@pytest.mark.parametrize("ties", [False, True])
def test_sake_preset_drops_a_query_without_relevant_photos_from_map_only_and_divides_by_the_gallery(ties):
    """SAKE's script: AP of a query without relevant photos is 0/0 = nan and ``np.nanmean`` drops it;
    its precision is 0 and stays. With fewer photos than K, P@K divides by the gallery size."""
    scores, ql, gl = problem(4, ties, ng=15)  # 15 photos, K = 20: min(K, N) = 15 is the divisor
    ql[:3] = 9  # three queries without a relevant photo
    res = evaluate(scores=scores, query_labels=ql, gallery_labels=gl,
                   protocol=resolve_protocol("sake", {"map_k": [K], "prec_k": [10, K]}))
    rel = [gl == q for q in ql]
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = {"mAP@all": np.nanmean([sake_eval_ap_inner(s, r) for s, r in zip(scores, rel)]),
                    f"mAP@{K}": np.nanmean([sake_eval_ap_inner(s, r, K) for s, r in zip(scores, rel)]),
                    **{f"P@{k}": np.nanmean([sake_eval_precision(s, r, k) for s, r in zip(scores, rel)]) for k in (10, K)}}
    assert res.metrics == pytest.approx(expected, abs=1e-6)
    assert res.n_excluded == 3 and len(res.per_query["AP@all"]) == len(ql) - 3 and len(res.per_query[f"P@{K}"]) == len(ql)
    assert res.query_index_of[f"P@{K}"].tolist() == list(range(len(ql)))
    assert expected[f"P@{K}"] != pytest.approx(np.mean([r[stable_order(s)].sum() / K for s, r in zip(scores, rel)]))


def test_a_short_gallery_divides_p_at_k_as_each_source_does():
    """Fewer photos than K: SAKE and SEM-PCYC divide by min(K, N), torchmetrics 0.9.3 (CLIP-AT) by K."""
    scores, ql, gl = problem(5, False, ng=15)
    results = evaluate_many(scores=scores, query_labels=ql, gallery_labels=gl,
                            protocols=[resolve_protocol(p, {"prec_k": [K]}) for p in ("sake", "sem-pcyc", "clip-at")])
    hits = np.array([(gl == q).sum() for q in ql])  # the whole gallery is inside the top K
    for res, divisor in zip(results, (15, 15, K)):
        np.testing.assert_allclose(res.per_query[f"P@{K}"], hits / divisor, atol=1e-6)


@pytest.mark.parametrize("ties", [False, True])
def test_sem_pcyc_preset(ties):
    scores, ql, gl = problem(1, ties)
    ql[0] = 9  # a query without any relevant item: SEM-PCYC counts it as 0, it is not excluded
    res = evaluate(scores=scores, query_labels=ql, gallery_labels=gl,
                   protocol=resolve_protocol("sem-pcyc", {"map_k": [K], "prec_k": [10, K]}))
    str_sim = (ql[:, None] == gl[None, :]).astype(int)
    assert res.n_excluded == 0 and len(res.per_query["AP@all"]) == len(ql)
    np.testing.assert_allclose(res.per_query["AP@all"], sem_pcyc_apsak(scores, str_sim), atol=1e-6)
    np.testing.assert_allclose(res.per_query[f"mAP@{K}"], sem_pcyc_apsak(scores, str_sim, K), atol=1e-6)
    orders = np.argsort(-scores, axis=1, kind="stable")
    expected = [sem_pcyc_prec(np.nonzero(s)[0], orders[i], K) for i, s in enumerate(str_sim)]
    np.testing.assert_allclose(res.per_query[f"P@{K}"], expected, atol=1e-6)


@pytest.mark.parametrize("ties", [False, True])
def test_clip_at_preset(ties):
    scores, ql, gl = problem(2, ties, shift=-1.0)  # CLIP-AT scores are cos - 1 <= 0
    res = evaluate(scores=scores, query_labels=ql, gallery_labels=gl, protocol=PRESETS["clip-at"])
    expected = [torchmetrics_093_ap(scores[i], gl == ql[i]) for i in range(len(ql))]
    np.testing.assert_allclose(res.per_query["AP@all"], expected, atol=1e-6)


def precision_093(preds, target, k):
    """torchmetrics 0.9.3 ``retrieval_precision(preds, target, k)``: relevant items in the top k, over k."""
    return target[stable_order(preds)[:k]].sum() / k


def ap_at_k_over_relevant(preds, target, k):
    """AP of the top-k list with torchmetrics 0.9.3's divisor, all relevant items (0 without one)."""
    if not target.sum():
        return 0.0
    positions = np.flatnonzero(target[stable_order(preds)[:k]]) + 1
    return float(((np.arange(len(positions)) + 1) / positions).sum() / target.sum())


@pytest.mark.parametrize("ties", [False, True])
def test_clip_at_preset_top_k(ties):
    scores, ql, gl = problem(2, ties, shift=-1.0)
    ql[0] = 9  # no relevant item: 0, and the query is kept (no_relevant=zero)
    res = evaluate(scores=scores, query_labels=ql, gallery_labels=gl,
                   protocol=resolve_protocol("clip-at", {"map_k": [K], "prec_k": [10, K]}))
    assert res.n_excluded == 0
    for k in (10, K):
        np.testing.assert_allclose(res.per_query[f"P@{k}"],
                                   [precision_093(scores[i], gl == ql[i], k) for i in range(len(ql))], atol=1e-6)
    np.testing.assert_allclose(res.per_query[f"mAP@{K}"],
                               [ap_at_k_over_relevant(scores[i], gl == ql[i], K) for i in range(len(ql))], atol=1e-6)


@pytest.mark.parametrize("ties", [False, True])
def test_torchmetrics_preset(ties):
    scores, ql, gl = problem(3, ties, shift=-0.2)  # some relevant items score <= 0
    res = evaluate(scores=scores, query_labels=ql, gallery_labels=gl,
                   protocol=resolve_protocol("torchmetrics", {"map_k": [K], "prec_k": [K]}))
    for key, fn in (("AP@all", lambda s, t: torchmetrics_ap(s, t)), (f"mAP@{K}", lambda s, t: torchmetrics_ap(s, t, K)),
                    (f"P@{K}", lambda s, t: torchmetrics_precision(s, t, K))):
        np.testing.assert_allclose(res.per_query[key], [fn(scores[i], gl == ql[i]) for i in range(len(ql))], atol=1e-6)
    if not ties:  # and the installed torchmetrics itself (its top-k order only matters with ties)
        from torchmetrics.functional.retrieval import (
            retrieval_average_precision,
            retrieval_precision,
        )
        t = [(torch.from_numpy(scores[i]), torch.from_numpy(gl == ql[i])) for i in range(len(ql))]
        np.testing.assert_allclose(res.per_query[f"mAP@{K}"], [float(retrieval_average_precision(p, g, top_k=K))
                                                               for p, g in t], atol=1e-6)
        np.testing.assert_allclose(res.per_query[f"P@{K}"], [float(retrieval_precision(p, g, top_k=K)) for p, g in t],
                                   atol=1e-6)


# ------------------------------------------------------------------ ProS (fangkaipeng/ProS, src/utils/mAP.py)
def embedding_problem(seed: int, ties: bool, nq: int = 25, ng: int = 210, classes: int = 4, dim: int = 6):
    """Unnormalised embeddings around class centres (at least 200 gallery items, as ProS's code needs);
    with ``ties``, small integers, so that many gallery items lie at equal distances."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2
    ql, gl = rng.integers(0, classes, nq), rng.integers(0, classes, ng)
    q = centres[ql] + rng.normal(size=(nq, dim)) * rng.uniform(0.5, 3, (nq, 1))
    g = centres[gl] + rng.normal(size=(ng, dim)) * rng.uniform(0.5, 3, (ng, 1))
    if ties:
        q, g = np.round(q), np.round(g)
    return q.astype(np.float32), g.astype(np.float32), ql, gl


def pros_parted_map(q, g, q_label, g_labels):
    """One query of _partedMAP_all: -||q-g||^2, topk order (gallery order among ties here), AP over the
    hits of the top K (0 without one), precision = hits in the top K / K."""
    sim = -((q[None, :] - g) ** 2).sum(-1)
    matched = (g_labels[stable_order(sim)] == q_label).astype(np.float64)
    out = {}
    for name, top in (("AP@200", 200), ("AP@all", len(g))):
        m = matched[:top]
        precision = np.cumsum(m) / np.arange(1, top + 1)
        out[name] = (precision * m).sum() / m.sum() if m.sum() >= 1 else 0.0
    for k in (100, 200):
        out[f"P@{k}"] = matched[:k].sum() / k
    return out


@pytest.mark.parametrize("ties", [False, True])
def test_pros_preset(ties):
    q, g, ql, gl = embedding_problem(7, ties)
    ql[0] = 9  # a query whose class has no photo: scored 0 and averaged in, as the code does
    result = evaluate(q, g, ql, gl, protocol=PRESETS["pros"])
    per_query = [pros_parted_map(q[i], g, ql[i], gl) for i in range(len(ql))]
    expected = {"mAP@200": np.mean([v["AP@200"] for v in per_query]), "mAP@all": np.mean([v["AP@all"] for v in per_query]),
                "P@100": np.mean([v["P@100"] for v in per_query]), "P@200": np.mean([v["P@200"] for v in per_query])}
    assert result.metrics == pytest.approx(expected, abs=1e-6)
    assert result.n_queries == len(ql) and result.n_excluded == 0
    cosine = evaluate(q, g, ql, gl, protocol=resolve_protocol("pros", {"similarity": "cosine"}))
    assert cosine.metrics["mAP@all"] != pytest.approx(result.metrics["mAP@all"], abs=1e-4)  # the distance matters


def test_pros_preset_equals_the_numbers_its_code_printed():
    """tests/fixtures/official/pros.json: ProS's compute_retrieval_metrics on official_inputs.pros_retrieval_set."""
    import official_inputs as oi
    from pathlib import Path
    official = json.loads((Path(__file__).parent / "fixtures" / "official" / "pros.json").read_text())["metrics"]
    result = evaluate(*oi.pros_retrieval_set(), protocol=PRESETS["pros"])
    assert result.metrics == pytest.approx({"mAP@200": official["mAP@200"], "mAP@all": official["mAP@all"],
                                            "P@100": official["prec@100"], "P@200": official["prec@200"]}, abs=1e-6)


def test_a_score_matrix_cannot_claim_euclidean_distances():
    scores, ql, gl = problem(4, ties=False)
    with pytest.raises(SbirError, match="euclidean needs the embeddings"):
        evaluate(scores=scores, query_labels=ql, gallery_labels=gl, protocol=PRESETS["pros"])


def test_one_pass_gives_each_preset_its_own_result():
    q, g, ql, gl = embedding_problem(4, ties=True)
    together = evaluate_many(q, g, ql, gl, protocols=list(PRESETS.values()))
    for preset, result in zip(PRESETS.values(), together):
        alone = evaluate(q, g, ql, gl, protocol=preset)
        assert result.metrics == pytest.approx(alone.metrics, abs=1e-12)
        assert result.protocol["preset"] == preset.preset
    spread = {r.metrics["mAP@200"] for r in together}
    assert len(spread) > 1  # the conventions really differ


def test_every_preset_is_one_row_of_the_docs_that_cites_its_source():
    import re
    from pathlib import Path
    docs = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text()
    section = docs[docs.index("## Presets"):]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w-]+)`(?: \(default\))? \|.*$", section, re.M)}
    assert [name for name in rows if name != "--protocol"] == [entry.name for entry in PRESET_ENTRIES]
    for entry in PRESET_ENTRIES:
        where = entry.source.split()[0]  # the repository or library the preset transcribes
        assert where in rows[entry.name], entry.name
    assert all(PRESETS[name].describe() == name for name in PRESETS)
    assert resolve_protocol("sake", {"ties": "grouped"}).describe() == "sake + ties=grouped"


# ------------------------------------------------------------------ FG gallery
def test_fg_category_gallery_has_a_known_different_answer():
    # query 0's photo is gallery item 0 (class 0); two photos of class 1 score higher
    scores = np.array([[0.5, 0.9, 0.8, 0.1]], dtype=np.float32)
    kw = dict(scores=scores, query_to_gallery=np.array([0]), query_labels=np.array([0]),
              gallery_labels=np.array([0, 1, 1, 0]))
    everything = evaluate(**kw, protocol=Protocol(acc_k=(1, 3)))
    category = evaluate(**kw, protocol=Protocol(acc_k=(1, 3), fg_gallery="category"))
    assert everything.per_query["rank"][0] == 3 and category.per_query["rank"][0] == 1
    assert everything.metrics["Acc@1"] == 0.0 and category.metrics["Acc@1"] == 1.0


def test_fg_gallery_choice_on_a_generated_tree(make_tree, tmp_path):
    root = make_tree("sketchy-fg", sketches_per_photo=2)
    results = {}
    for gallery in ("all", "category"):
        out = tmp_path / gallery
        args = ["run", "zeroshot-clip", "--dataset", "sketchy-fg", "--setting", "fg", "--data-root", str(root),
                "--set", f"eval.protocol_overrides.fg_gallery={gallery}", "--output-dir", str(out), "--quiet"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        results[gallery] = json.loads(next(out.glob("*.json")).read_text())
    assert results["category"]["protocol"]["fg_gallery"] == "category"
    assert results["all"]["protocol"]["fg_gallery"] == "all"
    for k in (1, 5):  # ranking among one category's photos can only move the true photo up
        assert results["category"]["metrics"][f"Acc@{k}"] >= results["all"]["metrics"][f"Acc@{k}"]
    assert results["category"]["metrics"]["Acc@1"] > results["all"]["metrics"]["Acc@1"]


# ------------------------------------------------------------------ eval --protocols all
def test_eval_protocols_all_side_by_side(tmp_path):
    scores_q = np.random.default_rng(5).normal(size=(30, 8))
    g = np.random.default_rng(6).normal(size=(60, 8))
    path = tmp_path / "e.npz"
    np.savez(path, query=scores_q, gallery=g, query_labels=np.arange(30) % 3, gallery_labels=np.arange(60) % 3)
    out = tmp_path / "all.json"
    result = CliRunner().invoke(main, ["eval", "--embeddings", str(path), "--protocols", "all", "--json", str(out),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("metric"))
    assert all(name in header for name in PRESETS) and "spread" in header
    payload = json.loads(out.read_text())
    assert set(payload["protocols"]) == set(PRESETS)


def test_per_query_file_gives_each_metric_its_own_queries_under_sakes_rule(tmp_path):
    """per_query.npz (what compare's CIs and paired tests read): mAP's values belong to the queries with a
    relevant photo, P@K's to every query, each with the positions that say which."""
    from sbir_bench.retrieval.npz_files import per_query_values, save_per_query
    scores, ql, gl = problem(6, False)
    ql[[2, 7]] = 9
    res = evaluate(scores=scores, query_labels=ql, gallery_labels=gl, protocol=PRESETS["sake"])
    path = str(save_per_query(tmp_path / "per_query.npz", res))
    index, ap = per_query_values(path, "mAP@all")
    assert 2 not in index and 7 not in index and len(index) == len(ap) == len(ql) - 2
    index, p100 = per_query_values(path, "P@100")
    assert index.tolist() == list(range(len(ql))) and p100[[2, 7]].tolist() == [0.0, 0.0]
    assert np.mean(p100) == pytest.approx(res.metrics["P@100"]) and np.mean(ap) == pytest.approx(res.metrics["mAP@all"])


def test_protocols_all_with_a_name_is_every_preset_once(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "e.npz", query=rng.normal(size=(5, 3)), gallery=rng.normal(size=(6, 3)),
             query_labels=[0, 1, 0, 1, 0], gallery_labels=[0, 1, 0, 1, 1, 0])
    out = tmp_path / "m.json"
    result = CliRunner().invoke(main, ["eval", "--embeddings", str(tmp_path / "e.npz"), "--protocols", "all,sake",
                                       "--json", str(out), "--quiet"])
    from sbir_bench.retrieval.protocol import PRESETS
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(out.read_text())["protocols"]) == sorted(PRESETS)


def test_snmpnet_preset_equals_the_numbers_its_code_computed():
    """tests/fixtures/official/snmpnet_metrics.json: SnMpNet's compute_retrieval_metrics (github.com/mvp18/UCDR,
    exp(-Euclidean), scikit-learn AP over the argsort top-K list, precak) on official_inputs.pros_retrieval_set;
    the preset gives every query's AP and the mean precisions."""
    from pathlib import Path

    import official_inputs as oi
    official = json.loads((Path(__file__).parent / "fixtures" / "official" / "snmpnet_metrics.json").read_text())
    result = evaluate(*oi.pros_retrieval_set(), protocol=PRESETS["snmpnet"])
    np.testing.assert_allclose(result.per_query["AP@all"], official["aps@all"], atol=1e-6)
    np.testing.assert_allclose(result.per_query["mAP@200"], official["aps@200"], atol=1e-6)
    assert result.metrics["P@100"] == pytest.approx(official["prec@100"], abs=1e-6)
    assert result.metrics["P@200"] == pytest.approx(official["prec@200"], abs=1e-6)
    assert result.metrics["mAP@200"] == pytest.approx(np.mean(official["aps@200"]), abs=1e-6)
