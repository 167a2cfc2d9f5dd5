"""DML loss terms against an independent NumPy computation (Eq. 1, 4, 7, 10, 11)."""

import numpy as np
import pytest
import tensorflow as tf

from dml_tf import losses
from numpy_reference import entropy, kl, softmax




@pytest.fixture
def logits():
    rng = np.random.RandomState(0)
    return [rng.randn(6, 5).astype(np.float64) * 2 for _ in range(4)]


def _tf_log_probs(z):
    return losses.log_probabilities(tf.constant(z, tf.float32))


@pytest.mark.parametrize("k", [0, 2])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kl_mimicry_matches_eq10(logits, k, reduction):
    p = [softmax(z) for z in logits]
    peers = [p[l] for l in range(4) if l != k]
    expected = sum(kl(pl, p[k]).mean() for pl in peers)
    if reduction == "mean":
        expected /= len(peers)  # 1/(K-1) of Eq. 10
    got = losses.mimicry_loss(
        _tf_log_probs(logits[k]),
        [_tf_log_probs(logits[l]) for l in range(4) if l != k],
        mode="kl",
        peer_reduction=reduction,
    )
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_js_mimicry_matches_eq7(logits, reduction):
    p = [softmax(z) for z in logits[:3]]
    terms = [0.5 * (kl(p[l], p[0]) + kl(p[0], p[l])).mean() for l in (1, 2)]
    expected = sum(terms) / (2 if reduction == "mean" else 1)
    got = losses.mimicry_loss(
        _tf_log_probs(logits[0]), [_tf_log_probs(logits[1]), _tf_log_probs(logits[2])],
        mode="js", peer_reduction=reduction,
    )
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_two_member_kl_is_eq5_and_eq6(logits):
    p1, p2 = softmax(logits[0]), softmax(logits[1])
    l1 = losses.mimicry_loss(_tf_log_probs(logits[0]), [_tf_log_probs(logits[1])])
    l2 = losses.mimicry_loss(_tf_log_probs(logits[1]), [_tf_log_probs(logits[0])])
    np.testing.assert_allclose(float(l1), kl(p2, p1).mean(), rtol=1e-5)  # Eq. 5
    np.testing.assert_allclose(float(l2), kl(p1, p2).mean(), rtol=1e-5)  # Eq. 6
    assert abs(float(l1) - float(l2)) > 1e-4  # asymmetric


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ensemble_mimicry_matches_eq11(logits, reduction):
    p = [softmax(z) for z in logits]
    p_avg = (p[1] + p[2] + p[3]) / 3.0
    expected = kl(p_avg, p[0]).mean()
    got = losses.mimicry_loss(
        _tf_log_probs(logits[0]), [_tf_log_probs(z) for z in logits[1:]],
        mode="ensemble", peer_reduction=reduction,
    )
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_no_peers_gives_zero(logits):
    assert float(losses.mimicry_loss(_tf_log_probs(logits[0]), [])) == 0.0


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_masks_unlabeled_and_smooths(logits, smoothing):
    labels = np.array([0, 4, -1, 2, -1, 1])
    p = softmax(logits[0])
    m = p.shape[1]
    target = np.eye(m)[np.maximum(labels, 0)] * (1 - smoothing) + smoothing / m
    per_sample = -np.sum(target * np.log(p), axis=-1)
    expected = per_sample[labels >= 0].mean()
    got = losses.cross_entropy(tf.constant(labels), _tf_log_probs(logits[0]), smoothing)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_cross_entropy_all_unlabeled_is_zero(logits):
    got = losses.cross_entropy(tf.constant([-1] * 6), _tf_log_probs(logits[0]))
    assert float(got) == 0.0


def test_entropy_and_feature_l2_match_numpy(logits):
    p = softmax(logits[0])
    np.testing.assert_allclose(
        losses.entropy(_tf_log_probs(logits[0])).numpy(), entropy(p), rtol=1e-5
    )
    f = [np.random.RandomState(i).randn(6, 3) for i in range(3)]
    expected = np.mean([np.sum((f[0] - f[l]) ** 2, axis=1).mean() for l in (1, 2)])
    got = losses.feature_l2_loss(tf.constant(f[0], tf.float32),
                                 [tf.constant(f[1], tf.float32), tf.constant(f[2], tf.float32)])
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


@pytest.mark.parametrize("mode", ["kl", "js", "ensemble"])
def test_extreme_logits_stay_finite(mode):
    own = tf.constant([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]])
    peer = tf.constant([[-1e4, 1e4, 0.0], [1e4, -1e4, -5.0]])
    with tf.GradientTape() as tape:
        tape.watch(own)
        lp = losses.log_probabilities(own)
        value = losses.mimicry_loss(lp, [losses.log_probabilities(peer)], mode=mode)
        value += losses.cross_entropy(tf.constant([1, 0]), lp)
    grad = tape.gradient(value, own)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(grad.numpy()))
    assert float(value) > 1e3  # the members disagree completely: a large, finite loss


def test_unknown_modes_raise():
    lp = _tf_log_probs(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="mimicry mode"):
        losses.mimicry_loss(lp, [lp], mode="l2")
    with pytest.raises(ValueError, match="peer_reduction"):
        losses.mimicry_loss(lp, [lp], peer_reduction="max")


def test_member_objective_matches_numpy(logits):
    """CE (smoothed, unlabeled masked) + w_m * mimicry - w_H * H + w_f * L2 + regularization,
    each term computed independently."""
    labels = np.array([0, 4, -1, 2, -1, 1])
    p = [softmax(z) for z in logits[:3]]
    f = [np.random.RandomState(i).randn(6, 3) for i in range(3)]
    smoothing, w_m, w_h, w_f, reg = 0.1, 0.7, 0.3, 0.2, [0.05, 0.01]
    target = np.eye(5)[np.maximum(labels, 0)] * (1 - smoothing) + smoothing / 5
    ce = -np.sum(target * np.log(p[0]), -1)[labels >= 0].mean()
    mimicry = sum(kl(p[l], p[0]).mean() for l in (1, 2))  # peer_reduction="sum"
    entropy = -np.sum(p[0] * np.log(p[0]), -1).mean()
    l2 = sum(np.sum((f[0] - f[l]) ** 2, -1).mean() for l in (1, 2))
    objective = losses.MemberObjective(mimicry="kl", mimicry_weight=w_m, peer_reduction="sum",
                                       label_smoothing=smoothing, entropy_weight=w_h,
                                       feature_l2_weight=w_f)
    terms = objective(tf.constant(labels), _tf_log_probs(logits[0]),
                      [_tf_log_probs(logits[1]), _tf_log_probs(logits[2])],
                      tf.constant(f[0], tf.float32),
                      [tf.constant(f[1], tf.float32), tf.constant(f[2], tf.float32)],
                      [tf.constant(r) for r in reg])
    np.testing.assert_allclose(float(terms["ce"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(terms["mimicry"]), mimicry, rtol=1e-5)
    np.testing.assert_allclose(float(terms["loss"]),
                               ce + w_m * mimicry - w_h * entropy + w_f * l2 + sum(reg), rtol=1e-5)
    # The defaults: CE + the KL mean over peers (Eq. 10); no peers (K = 1): CE alone.
    default = losses.MemberObjective()
    plain = default(tf.constant(labels), _tf_log_probs(logits[0]), [_tf_log_probs(logits[1])])
    np.testing.assert_allclose(float(plain["loss"]), -np.sum(np.eye(5)[np.maximum(labels, 0)]
                               * np.log(p[0]), -1)[labels >= 0].mean() + kl(p[1], p[0]).mean(), rtol=1e-5)
    alone = default(tf.constant(labels), _tf_log_probs(logits[0]), [])
    assert float(alone["mimicry"]) == 0.0 and float(alone["loss"]) == float(alone["ce"])


def test_member_objective_config_round_trip():
    objective = losses.MemberObjective(mimicry="js", mimicry_weight=np.float32(0.5),
                                       peer_reduction="sum", label_smoothing=0.1)
    config = objective.get_config()
    assert config == {"mimicry": "js", "mimicry_weight": 0.5, "peer_reduction": "sum",
                      "label_smoothing": 0.1, "entropy_weight": 0.0, "feature_l2_weight": 0.0}
    assert all(type(config[k]) is float for k in config if k not in ("mimicry", "peer_reduction"))
    assert losses.MemberObjective.from_config(config).get_config() == config
    assert objective.reads_peers and not losses.MemberObjective(mimicry_weight=0).reads_peers
    assert losses.MemberObjective(mimicry_weight=0, feature_l2_weight=1).reads_peers


@pytest.mark.parametrize("kwargs,message", [
    ({"mimicry": "l2"}, r"Unknown mimicry 'l2'; expected one of \('kl', 'js', 'ensemble'\)"),
    ({"peer_reduction": "max"}, r"Unknown peer_reduction 'max'; expected one of \('mean', 'sum'\)"),
    ({"mimicry_weight": -1}, r"`mimicry_weight` must be a finite number >= 0; got -1"),
    ({"entropy_weight": float("nan")}, r"`entropy_weight` must be a finite number >= 0; got nan"),
    ({"feature_l2_weight": float("inf")}, r"`feature_l2_weight` must be a finite number >= 0; got inf"),
    ({"mimicry_weight": True}, r"`mimicry_weight` must be a finite number >= 0; got True"),
    ({"entropy_weight": "0.5"}, r"`entropy_weight` must be a finite number >= 0; got '0.5'"),
    ({"label_smoothing": 1.0}, r"`label_smoothing` must be in \[0, 1\); got 1.0"),
    ({"label_smoothing": -0.1}, r"`label_smoothing` must be in \[0, 1\); got -0.1"),
    ({"label_smoothing": np.bool_(False)}, r"`label_smoothing` must be in \[0, 1\); got "),
])
def test_member_objective_validates_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        losses.MemberObjective(**kwargs)
