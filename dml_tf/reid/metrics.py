"""Market-1501 retrieval metrics: CMC and mAP, single query and multi-query.

The protocol is the one of the Market-1501 benchmark's MATLAB evaluation kit
(``market_evaluation.m`` / ``compute_AP.m``):

* for a query with person id ``q`` seen by camera ``c``, the gallery images with id
  ``q`` AND camera ``c`` are ignored, and so are the junk images (id ``-1``);
* the gallery images with id ``q`` from another camera are the true matches; every
  other gallery image, distractors (id ``0``) included, is a negative;
* the remaining gallery is ranked by distance to the query (ties keep gallery order,
  like MATLAB's stable ``sort``).

``evaluate`` is vectorised and chunked over the query set so that a full Market-1501
evaluation (3,368 x 19,732, 1,024-d) runs in seconds and a few hundred MiB: distances
come from one matrix product per chunk, and instead of an ``argsort`` of every row it
sorts order-preserving integer keys ``(row, distance bits, gallery index)`` with a SIMD
integer sort and finds the rank of each true match with one ``searchsorted``. Ignored
entries get an infinite distance, so they rank after every real gallery image and never
shift the rank of a true match.
"""

import logging
from typing import NamedTuple

import numpy as np

AP_MODES = ("market1501", "standard")
METRICS = ("euclidean", "cosine")

_INF_BITS = np.int64(np.array(np.inf, dtype=np.float32).view(np.int32))

logger = logging.getLogger(__name__)


def _as_features(name, x):
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (num_images, feature_dim); got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers; got dtype {x.dtype}.")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return x


def _as_int_vector(name, x):
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array; got shape {x.shape}.")
    if x.size and np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)) or not np.all(x == np.round(x)):
            raise ValueError(f"{name} must hold whole numbers.")
    elif x.size and not (np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
        raise ValueError(f"{name} must hold integers; got dtype {x.dtype}.")
    return x.astype(np.int64)


def _check_lengths(features_name, features, **vectors):
    for name, vector in vectors.items():
        if len(vector) != len(features):
            raise ValueError(
                f"{name} has {len(vector)} entries but {features_name} has {len(features)} rows; "
                "they must describe the same images."
            )


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {list(choices)}.")


def _power_of_two_scale(max_abs):
    """``2**-e`` with ``max_abs * 2**-e`` in [0.5, 1) (1 where ``max_abs`` is 0): a
    scaling that is exact in floating point, so it changes no ranking."""
    exponent = np.frexp(np.asarray(max_abs, np.float64))[1]
    return np.where(max_abs > 0, np.ldexp(1.0, -exponent), 1.0)


def l2_normalize(x):
    """Rows of ``(N, D)`` ``x`` divided by their L2 norm (zero rows stay zero).

    Each row is first scaled by a power of two that brings its largest entry into
    [0.5, 1) (exact in floating point), so its norm neither overflows (features of
    1e20 in float32) nor underflows (1e-25).
    """
    x = np.asarray(x)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
    if x.size:
        x = x * _power_of_two_scale(np.abs(x).max(axis=1, keepdims=True)).astype(dtype)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.asarray(1e-12, dtype))


class _Gallery(NamedTuple):
    """The gallery side of an evaluation, prepared once and shared by every query chunk."""

    features: np.ndarray  # (G, D) float32, rescaled (euclidean) or L2-normalized (cosine)
    sq_norms: np.ndarray | None  # (G,) squared norms of ``features`` (euclidean), None (cosine)
    ids: np.ndarray  # (G,) int64 person ids; -1 is junk, 0 a distractor
    cams: np.ndarray  # (G,) int64 camera numbers
    junk: np.ndarray  # (G,) bool, ``ids == -1``
    index: np.ndarray  # (G,) int64 ``arange(G)``, the low bits of every ranking key


def evaluate(
    query_features,
    gallery_features,
    query_ids,
    query_cams,
    gallery_ids,
    gallery_cams,
    ap_mode="market1501",
    metric="euclidean",
    chunk_size=256,
):
    """Scores a query set against a gallery with the Market-1501 protocol.

    Args:
      query_features: ``(Q, D)`` array, one row per query image.
      gallery_features: ``(G, D)`` array.
      query_ids, query_cams: ``(Q,)`` person ids and camera numbers of the queries.
      gallery_ids, gallery_cams: ``(G,)`` the same for the gallery; id ``-1`` is junk
        (ignored), id ``0`` a distractor (a real negative).
      ap_mode: ``"market1501"``: the benchmark's ``compute_AP.m`` trapezoid rule (at
        every true match ``ap += (recall - old_recall) * (old_precision + precision)/2``
        with ``old_precision`` the precision one rank earlier, 1 before the first
        rank); ``"standard"``: non-interpolated AP, the mean of the precision at each
        true match (what most Python re-id libraries report). They differ slightly.
      metric: ``"euclidean"`` (ranked by squared Euclidean distance, the same order as
        Euclidean) or ``"cosine"`` (features L2-normalized, ranked by ``1 - cos``).
      chunk_size: queries scored per step; memory grows linearly with it (about
        ``chunk_size * G * 30`` bytes).

    Returns:
      ``{"mAP": float, "cmc": (G,) float array, "num_queries": int,
      "num_skipped": int, "ap": (Q,) float array}``. ``cmc[r]`` is the fraction of
      the scored queries whose first true match is within the top ``r + 1`` (junk and
      same-camera images removed from the list). Queries without any true match in
      the gallery are skipped: they count in ``num_skipped``, not in ``num_queries``,
      ``mAP`` nor ``cmc``, and their entry of the per-query ``ap`` is NaN. (The MATLAB
      kit would count them as AP 0; Market-1501 has no such query.) If every query is
      skipped, ``mAP`` is NaN and ``cmc`` all NaN.

    Raises:
      ValueError: mismatched lengths or feature sizes, an empty query set or gallery,
        non-finite features, an unknown ``ap_mode`` or ``metric``.
    """
    _check_choice("ap_mode", ap_mode, AP_MODES)
    _check_choice("metric", metric, METRICS)
    _check_chunk_size(chunk_size)
    qf, gf, qids, qcams, gids, gcams = _evaluation_inputs(
        query_features, gallery_features, query_ids, query_cams, gallery_ids, gallery_cams
    )
    qf, gf, g_sq = _metric_space(qf, gf, metric)
    index_bits, chunk = _key_layout(len(gf), len(qf), chunk_size)
    gallery = _Gallery(gf, g_sq, gids, gcams, gids == -1, np.arange(len(gf), dtype=np.int64))

    ap = np.full(len(qf), np.nan, dtype=np.float64)
    first_hit_counts = np.zeros(len(gf), dtype=np.int64)
    for start in range(0, len(qf), chunk):
        rows = slice(start, min(start + chunk, len(qf)))
        match_rows, ranks, num_good = _true_match_ranks(
            qf[rows], qids[rows], qcams[rows], gallery, metric, index_bits
        )
        hit_number = _hit_numbers(match_rows, num_good)
        ap[rows] = _average_precision(ranks, hit_number, match_rows, num_good, ap_mode)
        first_hit_counts += np.bincount(ranks[hit_number == 1], minlength=len(gf))
    return _summary(ap, first_hit_counts)


def _check_chunk_size(chunk_size):
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}.")


def _evaluation_inputs(
    query_features, gallery_features, query_ids, query_cams, gallery_ids, gallery_cams
):
    """``evaluate``'s arguments as contiguous float32 features and int64 vectors, checked
    to describe a non-empty query set and gallery of one feature size."""
    qf = _as_features("query_features", query_features)
    gf = _as_features("gallery_features", gallery_features)
    qids = _as_int_vector("query_ids", query_ids)
    qcams = _as_int_vector("query_cams", query_cams)
    gids = _as_int_vector("gallery_ids", gallery_ids)
    gcams = _as_int_vector("gallery_cams", gallery_cams)
    _check_lengths("query_features", qf, query_ids=qids, query_cams=qcams)
    _check_lengths("gallery_features", gf, gallery_ids=gids, gallery_cams=gcams)
    if len(qf) == 0:
        raise ValueError("The query set is empty: query_features has no rows.")
    if len(gf) == 0:
        raise ValueError("The gallery is empty: gallery_features has no rows.")
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"Feature dimension mismatch: query_features are {qf.shape[1]}-d but "
            f"gallery_features are {gf.shape[1]}-d."
        )
    return qf, gf, qids, qcams, gids, gcams


def _metric_space(qf, gf, metric):
    """Query and gallery features ready for ``_distances``, and the gallery's squared
    norms (None for cosine)."""
    if metric == "cosine":
        return l2_normalize(qf), l2_normalize(gf), None
    # One power-of-two scale for both sets (exact, so the ranking is unchanged) keeps
    # every entry in [-1, 1): the squared norms below cannot overflow (features of
    # 1e20) nor underflow to zero (features of 1e-25).
    scale = _power_of_two_scale(max(np.abs(qf).max(), np.abs(gf).max())).astype(np.float32)
    qf, gf = qf * scale, gf * scale
    return qf, gf, np.einsum("ij,ij->i", gf, gf)


def _key_layout(num_gallery, num_queries, chunk_size):
    """Bits of the gallery index in a ranking key, and the queries per chunk (no more
    than the bits left for the row number can count)."""
    # Key layout (int64, non-negative): row | 31 bits of non-negative float32 | index.
    index_bits = max(1, int(num_gallery - 1).bit_length())
    row_bits = 63 - 31 - index_bits
    if row_bits < 1:
        raise ValueError(f"Gallery too large for one evaluation: {num_gallery} images.")
    return index_bits, int(min(chunk_size, 1 << row_bits, num_queries))


def _true_match_ranks(q, qids, qcams, gallery, metric, index_bits):
    """0-based rank of every true match of a chunk of queries in its query's ranked
    gallery, with junk and same-camera images of the query's id ranked last.

    Returns ``(match_rows, ranks, num_good)``: the chunk row of each true match and
    its rank, grouped by row and ascending within a row, and ``(rows,)`` the number
    of true matches per query.
    """
    dist = _distances(q, gallery, metric)
    ignored, good = _ignore_and_match_masks(qids, qcams, gallery)
    keys = _ranking_keys(dist, ignored, gallery.index, index_bits)
    del dist, ignored  # freed before the sort, as in the chunk's memory estimate
    good_keys = np.sort(keys[good])  # grouped by row, ranked within a row
    num_good = good.sum(axis=1)
    del good
    keys.sort(axis=1)
    match_rows = good_keys >> (31 + index_bits)
    ranks = np.searchsorted(keys.ravel(), good_keys) - match_rows * len(gallery.index)  # 0-based
    return match_rows, ranks, num_good


def _distances(q, gallery, metric):
    """``(rows, G)`` float32 distances, non-negative and never -0.0: squared Euclidean
    from one matrix product (``|q|^2 - 2 q.g + |g|^2``) or ``1 - cos``."""
    dist = q @ gallery.features.T  # (rows, G) float32
    if metric == "cosine":
        np.subtract(np.float32(1.0), dist, out=dist)
    else:
        dist *= np.float32(-2.0)
        dist += gallery.sq_norms[None, :]
        dist += np.einsum("ij,ij->i", q, q)[:, None]
    np.maximum(dist, np.float32(0.0), out=dist)
    dist += np.float32(0.0)  # -0.0 -> +0.0, so the bit patterns order like the values
    return dist


def _ignore_and_match_masks(qids, qcams, gallery):
    """``(rows, G)`` masks of the Market-1501 protocol: ``ignored`` (junk, or the
    query's id in the query's camera) and ``good`` (the query's id in another camera,
    the true matches)."""
    same_id = qids[:, None] == gallery.ids[None, :]
    same_cam = qcams[:, None] == gallery.cams[None, :]
    ignored = same_id & same_cam
    ignored |= gallery.junk[None, :]
    good = same_id
    good &= ~same_cam
    good &= ~gallery.junk[None, :]
    return ignored, good


def _ranking_keys(dist, ignored, gallery_index, index_bits):
    """``(rows, G)`` int64 keys ``row | distance bits | gallery index`` whose order is
    the ranking (ties keep gallery order, like MATLAB's stable ``sort``); ignored
    entries get the bits of an infinite distance, so they rank after every real one."""
    keys = dist.view(np.int32).astype(np.int64)
    keys[ignored] = _INF_BITS
    keys <<= index_bits
    keys |= gallery_index[None, :]
    keys |= (np.arange(len(dist), dtype=np.int64) << (31 + index_bits))[:, None]
    return keys


def _hit_numbers(match_rows, num_good):
    """1-based count of each true match among its query's true matches (``i`` of
    ``precision = i / (rank + 1)``, ranks 0-based)."""
    offsets = np.concatenate([[0], np.cumsum(num_good)[:-1]])
    return np.arange(len(match_rows), dtype=np.int64) - offsets[match_rows] + 1


def _average_precision(ranks, hit_number, match_rows, num_good, ap_mode):
    """``(rows,)`` AP of each query of a chunk (NaN where it has no true match): the
    mean of its true matches' ``_ap_terms``."""
    terms = _ap_terms(ranks, hit_number, ap_mode)
    sums = np.bincount(match_rows, weights=terms, minlength=len(num_good))
    ap = np.full(len(num_good), np.nan, dtype=np.float64)
    valid = num_good > 0
    ap[valid] = sums[valid] / num_good[valid]
    return ap


def _ap_terms(ranks, hit_number, ap_mode):
    """Each true match's share of its query's AP (times its number of true matches):
    ``compute_AP.m``'s trapezoid ``(old_precision + precision) / 2`` for
    ``"market1501"``, the precision itself for ``"standard"``."""
    precision = hit_number / (ranks + 1.0)
    if ap_mode != "market1501":
        return precision
    previous = np.where(ranks == 0, 1.0, (hit_number - 1) / np.maximum(ranks, 1))
    return (previous + precision) / 2.0


def _summary(ap, first_hit_counts):
    """``evaluate``'s result from the per-query AP (NaN: skipped) and the histogram of
    the ranks of each query's first true match."""
    scored = ~np.isnan(ap)
    num_queries = int(scored.sum())
    num_skipped = int(len(ap) - num_queries)
    if num_skipped:
        logger.info("%d of %d queries have no true match in the gallery; skipped.", num_skipped, len(ap))
    if num_queries:
        cmc = np.cumsum(first_hit_counts) / float(num_queries)
        mean_ap = float(np.mean(ap[scored]))
    else:
        cmc = np.full(len(first_hit_counts), np.nan)
        mean_ap = float("nan")
    return {
        "mAP": mean_ap,
        "cmc": cmc,
        "num_queries": num_queries,
        "num_skipped": num_skipped,
        "ap": ap,
    }


def pool_multi_query(
    query_ids,
    query_cams,
    mq_features,
    mq_ids,
    mq_cams,
    mode="mean",
    query_features=None,
    return_counts=False,
):
    """Multi-query features: each query pooled over the same person in the same camera.

    The Market-1501 multi-query protocol replaces a query's feature by the mean (or
    element-wise max) of the features of all ``gt_bbox`` images (hand-drawn boxes)
    with the query's person id AND camera; the query image itself is usually one of
    them.

    Args:
      query_ids, query_cams: ``(Q,)`` ids and cameras of the queries.
      mq_features: ``(M, D)`` features of the multi-query pool (``gt_bbox``).
      mq_ids, mq_cams: ``(M,)`` their ids and cameras.
      mode: ``"mean"`` or ``"max"``.
      query_features: optional ``(Q, D)`` single-query features. A query with no pool
        image of its id and camera falls back to its own feature from here (and the
        count of such queries is logged); without ``query_features`` such a query is
        a ``ValueError``.
      return_counts: also return the ``(Q,)`` number of pool images behind each query
        (0 where it fell back to its own feature).

    Returns:
      ``(Q, D)`` float32 features (and the counts if ``return_counts``).
    """
    _check_choice("mode", mode, ("mean", "max"))
    qids, qcams, mf, mids, mcams, qf = _pool_inputs(
        query_ids, query_cams, mq_features, mq_ids, mq_cams, query_features
    )
    dim = mf.shape[1]
    if len(qids) + len(mids) == 0:
        out = np.zeros((0, dim), np.float32)
        return (out, np.zeros(0, np.int64)) if return_counts else out
    q_keys, m_keys = _id_cam_keys(qids, qcams, mids, mcams)

    pooled = np.zeros((len(qids), dim), np.float32)
    counts = np.zeros(len(qids), np.int64)
    if len(m_keys):
        group_keys, group_features, group_sizes = _pool_groups(m_keys, mf, mode)
        position = np.minimum(np.searchsorted(group_keys, q_keys), len(group_keys) - 1)
        found = group_keys[position] == q_keys
        pooled[found] = group_features[position[found]]
        counts[found] = group_sizes[position[found]]
    else:
        found = np.zeros(len(qids), bool)
    _fall_back_to_query_features(pooled, found, qf)
    return (pooled, counts) if return_counts else pooled


def _pool_inputs(query_ids, query_cams, mq_features, mq_ids, mq_cams, query_features):
    """``pool_multi_query``'s arguments as int64 vectors and float32 features (the last
    None without ``query_features``), checked to agree in length and feature size."""
    qids = _as_int_vector("query_ids", query_ids)
    qcams = _as_int_vector("query_cams", query_cams)
    if len(qids) != len(qcams):
        raise ValueError(f"query_ids has {len(qids)} entries but query_cams has {len(qcams)}.")
    mids = _as_int_vector("mq_ids", mq_ids)
    mcams = _as_int_vector("mq_cams", mq_cams)
    mf = _as_features("mq_features", mq_features)
    _check_lengths("mq_features", mf, mq_ids=mids, mq_cams=mcams)
    qf = None
    if query_features is not None:
        qf = _as_features("query_features", query_features)
        _check_lengths("query_features", qf, query_ids=qids)
        if qf.shape[1] != mf.shape[1]:
            raise ValueError(
                f"Feature dimension mismatch: query_features are {qf.shape[1]}-d but "
                f"mq_features are {mf.shape[1]}-d."
            )
    return qids, qcams, mf, mids, mcams, qf


def _id_cam_keys(qids, qcams, mids, mcams):
    """One integer per (person id, camera) pair, for the queries and the pool: two
    images get the same key exactly when they share both."""
    all_ids = np.concatenate([qids, mids])
    all_cams = np.concatenate([qcams, mcams])
    cam_min = all_cams.min()
    cam_range = int(all_cams.max() - cam_min) + 1
    id_min = all_ids.min()
    q_keys = (qids - id_min) * cam_range + (qcams - cam_min)
    m_keys = (mids - id_min) * cam_range + (mcams - cam_min)
    return q_keys, m_keys


def _pool_groups(m_keys, mf, mode):
    """The pool grouped by (id, camera) key: ``(group_keys, group_features,
    group_sizes)``, keys ascending, features the mean (float64 sums) or the
    element-wise max of the group."""
    order = np.argsort(m_keys, kind="stable")
    group_keys, starts, group_sizes = np.unique(m_keys[order], return_index=True, return_counts=True)
    sorted_features = mf[order]
    if mode == "mean":
        group_features = np.add.reduceat(sorted_features, starts, axis=0, dtype=np.float64)
        group_features /= group_sizes[:, None]
    else:
        group_features = np.maximum.reduceat(sorted_features, starts, axis=0)
    return group_keys, group_features, group_sizes


def _fall_back_to_query_features(pooled, found, qf):
    """Gives the queries without a pool group (``~found``) their own single-query
    feature, in place; a ``ValueError`` if there is any and no ``qf``."""
    missing = int((~found).sum())
    if not missing:
        return
    if qf is None:
        raise ValueError(
            f"{missing} of {len(found)} queries have no multi-query image of the same id and "
            "camera; pass query_features to fall back to their own features."
        )
    pooled[~found] = qf[~found]
    logger.info(
        "Multi-query: %d of %d queries have no gt_bbox image of the same id and camera; "
        "they keep their single-query feature.",
        missing,
        len(found),
    )


def cmc_at(result, ranks=(1, 5, 10, 20)):
    """``{"rank1": ..., "rank5": ...}`` from an ``evaluate`` result (ranks past the
    gallery size read the last CMC value)."""
    cmc = np.asarray(result["cmc"])
    return {f"rank{r}": float(cmc[min(r, len(cmc)) - 1]) for r in ranks}
