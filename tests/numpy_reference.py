"""Independent NumPy versions of the quantities the tests check (float64, no TensorFlow)."""

import numpy as np


def softmax(z):
    """Class probabilities of logits ``z`` (last axis), shifted for stability."""
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def kl(p, q):
    """Per-sample KL(p || q) = sum_m p^m log(p^m / q^m) (Eq. 4)."""
    return np.sum(p * np.log(p / q), axis=-1)


def entropy(p):
    """Per-sample entropy -sum_m p^m log p^m, with 0 log 0 = 0."""
    return -(p * np.log(np.where(p > 0, p, 1))).sum(axis=-1)
