"""Workarounds for Keras 3.15 under ``MultiWorkerMirroredStrategy`` (private APIs).

Each function says what it works around; remove it when Keras no longer needs it.
"""

import tensorflow as tf


def is_multi_worker(strategy):
    """Whether ``strategy`` is a ``MultiWorkerMirroredStrategy`` spanning several workers."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()


def multi_worker_logs(results, strategy):
    """``results`` as Keras 3.15's multi-worker log reduction accepts them.

    Keras 3.15 reduces multi-worker logs with ``strategy.reduce("MEAN", v, axis=0)``,
    which rejects scalars: under a multi-worker strategy the values get shape [1] (the
    mean over workers of these synchronised values is again a scalar).
    """
    if not is_multi_worker(strategy):
        return results
    return {k: tf.reshape(v, [1]) for k, v in results.items()}


def skip_symbolic_build(model, iterator):
    """Whether to skip ``keras.Model._maybe_symbolic_build`` (having built the optimizer).

    Keras 3.15's symbolic build eagerly reduces the first distributed batch
    (``strategy.reduce("MEAN", PerReplica)``), which fails under
    ``MultiWorkerMirroredStrategy``. The cohort needs only its optimizer built, which
    this does (``model._build_optimizer``) when the model is built.
    """
    if iterator is None or not is_multi_worker(model.distribute_strategy):
        return False
    if model.built:
        with model.distribute_strategy.scope():
            model._build_optimizer()
    return True
