"""Person re-identification: Market-1501 CMC/mAP, multi-query pooling, features, plots.

``evaluate`` and ``pool_multi_query`` need only NumPy; ``extract_features`` imports
Keras and ``plot_cmc`` matplotlib when called.
"""

from dml_tf.reid.metrics import AP_MODES, METRICS, cmc_at, evaluate, pool_multi_query


def extract_features(model, dataset, verbose=1, layer_name="features"):
    """See :func:`dml_tf.reid.features.extract_features`."""
    from dml_tf.reid.features import extract_features as _extract

    return _extract(model, dataset, verbose=verbose, layer_name=layer_name)


def plot_cmc(curves, path, max_rank=20, title="CMC"):
    """See :func:`dml_tf.reid.plots.plot_cmc`."""
    from dml_tf.reid.plots import plot_cmc as _plot

    return _plot(curves, path, max_rank=max_rank, title=title)


__all__ = ["AP_MODES", "METRICS", "cmc_at", "evaluate", "extract_features", "plot_cmc", "pool_multi_query"]
