"""dml_tf.reid metrics: hand-worked rankings, a brute-force reference, multi-query."""

import numpy as np
import pytest

from dml_tf.reid import metrics
from dml_tf.reid.metrics import evaluate, pool_multi_query


# --------------------------------------------------------------------------------------
# Brute-force reference: the MATLAB kit's loop, one query at a time, float64.
# --------------------------------------------------------------------------------------
def _reference(qf, gf, qids, qcams, gids, gcams, metric="euclidean"):
    qf = np.asarray(qf, np.float64)
    gf = np.asarray(gf, np.float64)
    if metric == "cosine":
        qf = qf / np.maximum(np.linalg.norm(qf, axis=1, keepdims=True), 1e-12)
        gf = gf / np.maximum(np.linalg.norm(gf, axis=1, keepdims=True), 1e-12)
    market_aps, standard_aps, cmcs = [], [], []
    for k in range(len(qf)):
        if metric == "cosine":
            dist = 1.0 - gf @ qf[k]
        else:
            dist = ((gf - qf[k]) ** 2).sum(axis=1)
        order = np.argsort(dist, kind="stable")
        good = [g for g in range(len(gf)) if gids[g] == qids[k] and gcams[g] != qcams[k] and gids[g] != -1]
        junk = [g for g in range(len(gf)) if gids[g] == -1 or (gids[g] == qids[k] and gcams[g] == qcams[k])]
        if not good:
            continue
        # compute_AP.m, line by line.
        cmc = np.zeros(len(gf))
        ngood = len(good)
        old_recall, old_precision, ap, intersect, j, good_now, njunk = 0.0, 1.0, 0.0, 0, 0, 0, 0
        precisions = []
        for n, g in enumerate(order):
            flag = False
            if g in good:
                cmc[n - njunk:] = 1
                flag = True
                good_now += 1
            if g in junk:
                njunk += 1
                continue
            if flag:
                intersect += 1
                precisions.append(intersect / (j + 1))
            recall = intersect / ngood
            precision = intersect / (j + 1)
            ap += (recall - old_recall) * ((old_precision + precision) / 2)
            old_recall, old_precision = recall, precision
            j += 1
            if good_now == ngood:
                break
        market_aps.append(ap)
        standard_aps.append(np.mean(precisions))
        cmcs.append(cmc)
    return market_aps, standard_aps, np.mean(cmcs, axis=0) if cmcs else None


# --------------------------------------------------------------------------------------
# Hand-made ranking, 1-d features.
# --------------------------------------------------------------------------------------
# gallery: feature, id, camera -- stored out of distance order on purpose.
_GALLERY = [
    (6.0, 5, 3),  # g0: id 5 cam 3
    (3.0, 5, 2),  # g1: id 5 cam 2
    (1.0, 5, 1),  # g2: id 5 cam 1
    (4.0, -1, 3),  # g3: junk
    (2.0, 0, 2),  # g4: distractor (a real negative)
    (5.0, 7, 2),  # g5: id 7 cam 2
]
_QUERIES = [
    (0.0, 5, 1),  # A: ignores g2 (same id+cam); list g4 g1* g5 g0* -> matches at ranks 1, 3
    (4.9, 7, 1),  # B: g5 first -> match at rank 0
    (0.0, 9, 1),  # C: no match anywhere -> skipped
    (0.0, 5, 2),  # D: ignores g1; list g2* g4 g5 g0* -> matches at ranks 0, 3
]


def _hand_arrays():
    g = np.array(_GALLERY)
    q = np.array(_QUERIES)
    return q[:, :1], g[:, :1], q[:, 1], q[:, 2], g[:, 1], g[:, 2]


def test_hand_worked_ranking_both_ap_modes():
    qf, gf, qi, qc, gi, gc = _hand_arrays()
    # Query A, ranks r=1 and r=3 of 2 matches (0-based, junk/same-camera removed):
    #   standard: (1/2 + 2/4) / 2 = 1/2
    #   market1501: 1/2 * ((0/1 + 1/2) / 2) + 1/2 * ((1/3 + 2/4) / 2) = 1/8 + 5/24 = 1/3
    # Query B, r=0 of 1: both 1.
    # Query D, r=0 and r=3 of 2:
    #   standard: (1/1 + 2/4) / 2 = 3/4
    #   market1501: 1/2 * ((1 + 1) / 2) + 1/2 * ((1/3 + 1/2) / 2) = 1/2 + 5/24 = 17/24
    market = evaluate(qf, gf, qi, qc, gi, gc, ap_mode="market1501")
    standard = evaluate(qf, gf, qi, qc, gi, gc, ap_mode="standard")
    np.testing.assert_allclose(market["ap"], [1 / 3, 1.0, np.nan, 17 / 24])
    np.testing.assert_allclose(standard["ap"], [1 / 2, 1.0, np.nan, 3 / 4])
    assert market["mAP"] == pytest.approx((1 / 3 + 1 + 17 / 24) / 3)
    assert standard["mAP"] == pytest.approx((1 / 2 + 1 + 3 / 4) / 3)
    for result in (market, standard):
        assert result["num_queries"] == 3
        assert result["num_skipped"] == 1
        # first matches at ranks 1 (A), 0 (B), 0 (D)
        np.testing.assert_allclose(result["cmc"], [2 / 3, 1, 1, 1, 1, 1])
        assert result["cmc"].shape == (6,)
    ref_market, ref_standard, ref_cmc = _reference(qf, gf, qi, qc, gi, gc)
    np.testing.assert_allclose(ref_market, [1 / 3, 1.0, 17 / 24])
    np.testing.assert_allclose(ref_standard, [1 / 2, 1.0, 3 / 4])
    np.testing.assert_allclose(ref_cmc, market["cmc"])


def test_junk_and_same_camera_do_not_count_but_distractors_do():
    # One query, id 1 cam 1; the junk and same-camera images are nearest.
    gf = np.array([[0.1], [0.2], [0.3], [0.4]])
    gi = np.array([-1, 1, 0, 1])
    gc = np.array([2, 1, 2, 2])
    result = evaluate([[0.0]], gf, [1], [1], gi, gc, ap_mode="standard")
    # list after removal: distractor (0.3), match (0.4) -> rank 1.
    assert result["ap"][0] == pytest.approx(0.5)
    np.testing.assert_allclose(result["cmc"], [0, 1, 1, 1])
    # without the distractor the match would be first
    result = evaluate([[0.0]], gf[[0, 1, 3]], [1], [1], gi[[0, 1, 3]], gc[[0, 1, 3]])
    assert result["mAP"] == pytest.approx(1.0)
    assert result["cmc"][0] == 1.0


def test_ties_keep_gallery_order_like_matlab_sort():
    # Negative and match at the same distance (1-d: -1 and +1 around the query at 0).
    first_negative = evaluate([[0.0]], [[-1.0], [1.0]], [3], [1], [4, 3], [2, 2])
    first_match = evaluate([[0.0]], [[1.0], [-1.0]], [3], [1], [3, 4], [2, 2])
    assert first_negative["cmc"][0] == 0.0 and first_negative["ap"][0] == pytest.approx(0.25)
    assert first_match["cmc"][0] == 1.0 and first_match["mAP"] == pytest.approx(1.0)


def test_all_queries_skipped():
    result = evaluate([[0.0]], [[1.0]], [3], [1], [4], [2])
    assert result["num_queries"] == 0 and result["num_skipped"] == 1
    assert np.isnan(result["mAP"]) and np.all(np.isnan(result["cmc"]))


def _random_problem(seed, num_query, num_gallery, dim, integer=False):
    rng = np.random.default_rng(seed)
    if integer:  # small integers: exact distances, many ties
        qf = rng.integers(-2, 3, (num_query, dim)).astype(np.float32)
        gf = rng.integers(-2, 3, (num_gallery, dim)).astype(np.float32)
    else:
        qf = rng.standard_normal((num_query, dim)).astype(np.float32)
        gf = rng.standard_normal((num_gallery, dim)).astype(np.float32)
    qi = rng.integers(1, 12, num_query)
    qc = rng.integers(1, 7, num_query)
    gi = rng.integers(-1, 12, num_gallery)  # includes junk -1 and distractors 0
    gc = rng.integers(1, 7, num_gallery)
    return qf, gf, qi, qc, gi, gc


@pytest.mark.parametrize("chunk_size", [1, 7, 13, 1000])
@pytest.mark.parametrize("integer", [False, True])
def test_chunked_matches_brute_force(chunk_size, integer):
    qf, gf, qi, qc, gi, gc = _random_problem(chunk_size + integer, 40, 150, 6, integer)
    ref_market, ref_standard, ref_cmc = _reference(qf, gf, qi, qc, gi, gc)
    market = evaluate(qf, gf, qi, qc, gi, gc, chunk_size=chunk_size)
    standard = evaluate(qf, gf, qi, qc, gi, gc, ap_mode="standard", chunk_size=chunk_size)
    valid = ~np.isnan(market["ap"])
    assert market["num_queries"] == len(ref_market) == valid.sum()
    assert market["num_skipped"] == 40 - len(ref_market)
    np.testing.assert_allclose(market["ap"][valid], ref_market, rtol=1e-12)
    np.testing.assert_allclose(standard["ap"][valid], ref_standard, rtol=1e-12)
    np.testing.assert_allclose(market["cmc"], ref_cmc, rtol=1e-12)
    np.testing.assert_allclose(standard["cmc"], ref_cmc, rtol=1e-12)
    assert market["mAP"] == pytest.approx(np.mean(ref_market))
    # the two AP definitions differ, slightly
    assert market["mAP"] != pytest.approx(standard["mAP"], abs=1e-9)


def test_cosine_matches_brute_force():
    qf, gf, qi, qc, gi, gc = _random_problem(3, 25, 90, 5)
    ref_market, _, ref_cmc = _reference(qf, gf, qi, qc, gi, gc, metric="cosine")
    result = evaluate(qf * 3.0, gf, qi, qc, gi, gc, metric="cosine", chunk_size=4)
    np.testing.assert_allclose(result["ap"][~np.isnan(result["ap"])], ref_market, rtol=1e-10)
    np.testing.assert_allclose(result["cmc"], ref_cmc)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("scale", [1e20, 1e-25])
def test_huge_and_tiny_finite_features_rank_as_in_float64(metric, scale):
    """Squared norms of 1e20 overflow float32 and those of 1e-25 underflow to 0; the
    ranking must still be the float64 one of the same features."""
    qf, gf, qi, qc, gi, gc = _random_problem(5, 30, 120, 6)
    qf, gf = (qf * np.float32(scale)).astype(np.float32), (gf * np.float32(scale)).astype(np.float32)
    if metric == "cosine":  # rows of very different sizes, each normalised on its own
        gf[::2] = (gf[::2].astype(np.float64) * (1e-40 if scale > 1 else 1e45)).astype(np.float32)
    assert np.all(np.isfinite(qf)) and np.all(np.isfinite(gf)) and np.all(gf != 0)
    exact = [np.asarray(f, np.float64) for f in (qf, gf)]
    if metric == "cosine":  # unit rows in float64 (the reference floors norms at 1e-12)
        exact = [f / np.linalg.norm(f, axis=1, keepdims=True) for f in exact]
    ref_market, _, ref_cmc = _reference(*exact, qi, qc, gi, gc, metric=metric)
    result = evaluate(qf, gf, qi, qc, gi, gc, metric=metric, chunk_size=7)
    assert result["num_queries"] == len(ref_market) > 0
    np.testing.assert_allclose(result["ap"][~np.isnan(result["ap"])], ref_market, rtol=1e-10)
    np.testing.assert_allclose(result["cmc"], ref_cmc, rtol=1e-10)
    normalised = metrics.l2_normalize(gf)
    np.testing.assert_allclose(np.linalg.norm(normalised.astype(np.float64), axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(query_ids=[1, 2]), "query_ids"),
        (dict(gallery_cams=[1]), "gallery_cams"),
        (dict(gallery_features=np.zeros((3, 5))), "dimension"),
        (dict(query_features=np.zeros((0, 2)), query_ids=[], query_cams=[]), "empty"),
        (dict(gallery_features=np.zeros((0, 2)), gallery_ids=[], gallery_cams=[]), "empty"),
        (dict(ap_mode="interpolated"), "ap_mode"),
        (dict(metric="manhattan"), "metric"),
        (dict(query_features=np.zeros(3)), "query_features"),
        (dict(query_features=np.full((3, 2), np.nan)), "NaN"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_bad_input_is_a_value_error_naming_it(change, message):
    args = dict(
        query_features=np.zeros((3, 2)),
        gallery_features=np.zeros((3, 2)),
        query_ids=[1, 2, 3],
        query_cams=[1, 1, 1],
        gallery_ids=[1, 2, 3],
        gallery_cams=[2, 2, 2],
    )
    args.update(change)
    with pytest.raises(ValueError, match=message):
        evaluate(**args)


def test_cmc_at():
    result = {"cmc": np.array([0.5, 0.75, 1.0])}
    assert metrics.cmc_at(result, (1, 2, 5)) == {"rank1": 0.5, "rank2": 0.75, "rank5": 1.0}


# --------------------------------------------------------------------------------------
# Multi-query pooling.
# --------------------------------------------------------------------------------------
def test_pool_multi_query_mean_max_and_fallback():
    mq_features = np.array([[1.0, 0.0], [3.0, 4.0], [10.0, 10.0], [-5.0, 2.0], [7.0, 7.0]])
    mq_ids = [5, 5, 5, 6, 5]
    mq_cams = [1, 1, 2, 1, 1]
    query_ids = [5, 5, 6, 8]
    query_cams = [1, 2, 1, 1]
    query_features = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [9.0, 9.0]])
    mean, counts = pool_multi_query(
        query_ids, query_cams, mq_features, mq_ids, mq_cams, query_features=query_features, return_counts=True
    )
    np.testing.assert_allclose(mean, [[11 / 3, 11 / 3], [10, 10], [-5, 2], [9, 9]], rtol=1e-6)
    np.testing.assert_array_equal(counts, [3, 1, 1, 0])  # id 8 fell back to its own feature
    assert mean.dtype == np.float32
    maximum = pool_multi_query(query_ids, query_cams, mq_features, mq_ids, mq_cams, "max", query_features)
    np.testing.assert_allclose(maximum, [[7, 7], [10, 10], [-5, 2], [9, 9]])
    with pytest.raises(ValueError, match="query_features"):
        pool_multi_query(query_ids, query_cams, mq_features, mq_ids, mq_cams)
    with pytest.raises(ValueError, match="mode"):
        pool_multi_query(query_ids, query_cams, mq_features, mq_ids, mq_cams, "median", query_features)
    with pytest.raises(ValueError, match="mq_ids"):
        pool_multi_query(query_ids, query_cams, mq_features, mq_ids[:2], mq_cams, "mean", query_features)


def test_pool_multi_query_matches_loop():
    rng = np.random.default_rng(0)
    mf = rng.standard_normal((60, 4)).astype(np.float32)
    mi, mc = rng.integers(1, 6, 60), rng.integers(1, 4, 60)
    qi, qc = rng.integers(1, 6, 20), rng.integers(1, 4, 20)
    qf = rng.standard_normal((20, 4)).astype(np.float32)
    pooled = pool_multi_query(qi, qc, mf, mi, mc, "mean", qf)
    pooled_max = pool_multi_query(qi, qc, mf, mi, mc, "max", qf)
    for k in range(20):
        same = (mi == qi[k]) & (mc == qc[k])
        expected = mf[same].mean(0) if same.any() else qf[k]
        expected_max = mf[same].max(0) if same.any() else qf[k]
        np.testing.assert_allclose(pooled[k], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pooled_max[k], expected_max)


def test_plot_cmc_writes_png(tmp_path):
    from dml_tf.reid.plots import plot_cmc

    path = tmp_path / "sub" / "cmc.png"
    out = plot_cmc({"member 0": np.linspace(0.5, 1, 30), "ensemble": np.linspace(0.6, 1, 5)}, path, title="t")
    assert out == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="max_rank"):
        plot_cmc({"a": [1.0]}, path, max_rank=0)
    with pytest.raises(ValueError, match="curves"):
        plot_cmc({}, path)
