"""CMC curves as PNG (matplotlib's Agg canvas; the global pyplot backend is untouched)."""

import numpy as np

from dml_tf.io_utils import atomic_savefig


def plot_cmc(curves, path, max_rank=20, title="CMC"):
    """Plots CMC curves (rank 1..``max_rank``, in %) and writes them to ``path``.

    Args:
      curves: ``{label: cmc array}``; ``cmc[r]`` is the matching rate within the top
        ``r + 1`` as a fraction (what ``dml_tf.reid.evaluate`` returns). Curves
        shorter than ``max_rank`` are drawn as far as they go.
      path: the PNG to write (atomically; parent folders are created).
      max_rank: the last rank drawn.
      title: the figure title.

    Returns:
      ``path`` as a string.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer; got {max_rank!r}.")
    if not curves:
        raise ValueError("plot_cmc needs at least one curve in curves; got none.")
    figure = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for label, cmc in curves.items():
        cmc = np.asarray(cmc, dtype=np.float64).ravel()[:max_rank]
        ranks = np.arange(1, len(cmc) + 1)
        axes.plot(ranks, 100.0 * cmc, marker="o", markersize=3, label=f"{label} (R1 {100 * cmc[0]:.2f}%)")
    axes.set_xlim(1, max_rank)
    axes.set_xlabel("Rank")
    axes.set_ylabel("Matching rate (%)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    atomic_savefig(figure, path, dpi=100)
    return str(path)
