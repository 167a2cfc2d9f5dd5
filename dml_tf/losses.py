"""The losses of Deep Mutual Learning (Sec. 3), computed from log-probabilities.

Every term works on ``log_softmax`` outputs, so it stays finite for extreme logits
(a probability that underflows to 0 contributes ``0 * finite``). Batch reduction is
the mean over the batch, as in the original code (the paper's Eq. 4 writes a sum
over the N samples; the two differ by the constant N).
"""

import math
import numbers

import numpy as np
import tensorflow as tf

from dml_tf.errors import check_choice

MIMICRY_MODES = ("kl", "js", "ensemble")
PEER_REDUCTIONS = ("mean", "sum")


def log_probabilities(logits):
    """``log p`` from logits, computed in float32 (safe under mixed precision)."""
    return tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)


def kl_divergence(target_log_probs, log_probs):
    """Per-sample ``KL(p_target || p) = sum_m p_target^m (log p_target^m - log p^m)`` (Eq. 4)."""
    target_probs = tf.exp(target_log_probs)
    return tf.reduce_sum(target_probs * (target_log_probs - log_probs), axis=-1)


def entropy(log_probs):
    """Per-sample posterior entropy ``H(p) = -sum_m p^m log p^m``."""
    return -tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=-1)


def labeled_mask(labels):
    """1.0 for labeled samples, 0.0 for unlabeled ones (label -1, Sec. 3.4)."""
    return tf.cast(tf.greater_equal(labels, 0), tf.float32)


def cross_entropy(labels, log_probs, label_smoothing=0.0):
    """Mean cross-entropy over the LABELED samples of the batch (Eq. 1).

    Labels equal to -1 are unlabeled and excluded; a batch without labeled
    samples gives 0. ``label_smoothing`` mixes the one-hot target with the
    uniform distribution as ``(1 - s) * onehot + s / M`` (TF-slim and Keras).
    """
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    num_classes = tf.shape(log_probs)[-1]
    targets = tf.one_hot(tf.maximum(labels, 0), num_classes, dtype=tf.float32)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / tf.cast(
            num_classes, tf.float32
        )
    per_sample = -tf.reduce_sum(targets * log_probs, axis=-1)
    mask = labeled_mask(labels)
    return tf.math.divide_no_nan(tf.reduce_sum(per_sample * mask), tf.reduce_sum(mask))


def _reduce_peers(terms, peer_reduction):
    """Sums per-peer terms, divided by their count for ``"mean"`` (1/(K-1) of Eq. 10)."""
    total = tf.add_n(terms)
    return total / float(len(terms)) if peer_reduction == "mean" else total


def mimicry_loss(log_probs, peer_log_probs, mode="kl", peer_reduction="mean"):
    """Member k's mimicry term towards its peers, averaged over the batch.

    Args:
      log_probs: member k's log-probabilities, shape (batch, M).
      peer_log_probs: list of the K-1 peers' log-probabilities (targets; the
        caller stops their gradient).
      mode: ``"kl"``: ``KL(p_l || p_k)`` per peer (Eq. 5, 6, 10);
        ``"js"``: the symmetric ``1/2 (KL(p_l || p_k) + KL(p_k || p_l))`` per peer
        (Eq. 7); ``"ensemble"``: DML_e, ``KL(p_avg || p_k)`` with ``p_avg`` the mean
        of the peers' probabilities (Eq. 11; ``peer_reduction`` does not apply).
      peer_reduction: ``"mean"`` divides the sum over peers by K-1 as in Eq. 10;
        ``"sum"`` is the original code's plain sum.

    Returns:
      A scalar; 0 when there are no peers (K = 1).
    """
    check_choice("mimicry mode", mode, MIMICRY_MODES)
    check_choice("peer_reduction", peer_reduction, PEER_REDUCTIONS)
    return _mimicry(log_probs, peer_log_probs, mode, peer_reduction)


def _mimicry(log_probs, peer_log_probs, mode, peer_reduction):
    """``mimicry_loss`` for choices already checked."""
    if not peer_log_probs:
        return tf.constant(0.0, tf.float32)
    if mode == "ensemble":
        stacked = tf.stack(peer_log_probs, axis=0)
        avg_log_probs = tf.reduce_logsumexp(stacked, axis=0) - tf.math.log(
            float(len(peer_log_probs))
        )
        return tf.reduce_mean(kl_divergence(avg_log_probs, log_probs))
    terms = []
    for peer in peer_log_probs:
        term = kl_divergence(peer, log_probs)
        if mode == "js":
            term = 0.5 * (term + kl_divergence(log_probs, peer))
        terms.append(tf.reduce_mean(term))
    return _reduce_peers(terms, peer_reduction)


def feature_l2_loss(features, peer_features, peer_reduction="mean"):
    """Squared L2 distance between member k's features and its peers' (Table 5 "DML, L2").

    Per peer: the batch mean of ``||f_k - f_l||^2``; reduced over peers like the
    mimicry term. The paper gives no formula and the released code has no such loss;
    the README's "Paper vs original code" section states this one.
    """
    if not peer_features:
        return tf.constant(0.0, tf.float32)
    features = tf.cast(features, tf.float32)
    flat = tf.reshape(features, [tf.shape(features)[0], -1])
    terms = []
    for peer in peer_features:
        peer = tf.reshape(tf.cast(peer, tf.float32), tf.shape(flat))
        terms.append(tf.reduce_mean(tf.reduce_sum(tf.square(flat - peer), axis=-1)))
    return _reduce_peers(terms, peer_reduction)


def _is_real(value):
    """A real number: Python or NumPy (``np.float32(0.5)``), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


class MemberObjective:
    """Member k's loss in a cohort (Eq. 10, with the options of Sec. 4.5 and Table 5)::

        L_k = CE(y, p_k) + mimicry_weight * mimicry(p_k, peers)
              - entropy_weight * H(p_k) + feature_l2_weight * L2(f_k, peer features)
              + sum(member_k.losses)

    The peers' probabilities and features are targets: the caller stops their
    gradient. The choices are checked once, here; calling the objective does not
    check them again.

    Args:
      mimicry: ``"kl"`` (Eq. 10), ``"js"`` (symmetric, Eq. 7) or ``"ensemble"``
        (DML_e, Eq. 11); see :func:`mimicry_loss`.
      mimicry_weight: weight of the mimicry term; 0 gives independent training.
      peer_reduction: ``"mean"`` (the 1/(K-1) of Eq. 10) or ``"sum"`` (the
        original code's plain sum over peers).
      label_smoothing: label smoothing of the cross-entropy, in [0, 1).
      entropy_weight: confidence penalty ``- w * H(p_k)`` (Table 5 "Independent,
        Entropy"); 0 disables it.
      feature_l2_weight: weight of :func:`feature_l2_loss` (Table 5 "DML, L2");
        0 disables it.
    """

    def __init__(self, mimicry="kl", mimicry_weight=1.0, peer_reduction="mean",
                 label_smoothing=0.0, entropy_weight=0.0, feature_l2_weight=0.0):
        check_choice("mimicry", mimicry, MIMICRY_MODES)
        check_choice("peer_reduction", peer_reduction, PEER_REDUCTIONS)
        for arg, value in (("mimicry_weight", mimicry_weight), ("entropy_weight", entropy_weight),
                           ("feature_l2_weight", feature_l2_weight)):
            if not _is_real(value) or not value >= 0 or not math.isfinite(value):
                raise ValueError(f"`{arg}` must be a finite number >= 0; got {value!r}.")
        if not _is_real(label_smoothing) or not 0 <= label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be in [0, 1); got {label_smoothing!r}.")
        self.mimicry = mimicry
        self.mimicry_weight = float(mimicry_weight)
        self.peer_reduction = peer_reduction
        self.label_smoothing = float(label_smoothing)
        self.entropy_weight = float(entropy_weight)
        self.feature_l2_weight = float(feature_l2_weight)

    @property
    def reads_peers(self):
        """Whether the loss depends on the peers (mimicry or feature L2 weighted above 0)."""
        return self.mimicry_weight > 0 or self.feature_l2_weight > 0

    def __call__(self, labels, log_probs, peer_log_probs, features=None, peer_features=(),
                 regularization=(), mimicry_scale=None):
        """Member k's loss terms.

        Args:
          labels: integer labels, -1 for unlabeled (they get no cross-entropy).
          log_probs: member k's log-probabilities (with gradient).
          peer_log_probs: list of the peers' log-probabilities (targets, stopped).
          features, peer_features: member k's and its peers' (stopped) features; read
            only when ``feature_l2_weight`` > 0.
          regularization: member k's regularization losses (``member.losses``).
          mimicry_scale: a factor of ``mimicry_weight`` at this step (a mimicry ramp-up);
            None: the weight as it is.

        Returns:
          dict with ``loss`` (the total minimized), ``ce`` and ``mimicry`` (unweighted).
        """
        ce = cross_entropy(labels, log_probs, self.label_smoothing)
        mimicry = _mimicry(log_probs, peer_log_probs, self.mimicry, self.peer_reduction)
        weight = self.mimicry_weight if mimicry_scale is None else self.mimicry_weight * mimicry_scale
        total = ce + weight * mimicry
        if self.entropy_weight:
            total -= self.entropy_weight * tf.reduce_mean(entropy(log_probs))
        if self.feature_l2_weight:
            total += self.feature_l2_weight * feature_l2_loss(
                features, peer_features, self.peer_reduction)
        if regularization:
            total += tf.add_n([tf.cast(r, tf.float32) for r in regularization])
        return {"loss": total, "ce": ce, "mimicry": mimicry}

    def get_config(self):
        return {
            "mimicry": self.mimicry,
            "mimicry_weight": self.mimicry_weight,
            "peer_reduction": self.peer_reduction,
            "label_smoothing": self.label_smoothing,
            "entropy_weight": self.entropy_weight,
            "feature_l2_weight": self.feature_l2_weight,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
