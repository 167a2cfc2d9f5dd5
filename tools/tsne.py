r"""2-D t-SNE of the members' features (Fig. 5: DML vs independent feature spaces).

    python -m tools.tsne --runs=runs/c100_dml,runs/c100_ind --limit=2000 --output_dir=out/tsne
    python -m tools.tsne --runs=runs/market_dml,runs/market_ind --identities=10 \
        --perplexity=10 --output_dir=out/tsne_market

For every run folder written by ``python -m dml_tf.train`` and every member (``--members``,
default all), extracts the output of the layer ``features`` (global average pooling) for
the images of ``--split`` (default: the test split, no augmentation): with
``--identities=N`` only those of the first N distinct labels in sorted order, then the
first ``--limit`` of them. Embeds them in 2-D with scikit-learn's TSNE (``--perplexity``,
seeded by ``--seed``; one embedding per member, as the paper's per-network panels) and
plots them coloured by label. Market-1501 runs (Fig. 5 proper): the test split is the
gallery's real identities (junk and distractors left out), labeled and coloured by person
id. Writes ``tsne.json`` (coordinates, labels, per run and member) and ``tsne.png`` (one
panel per run and member). Datasets: digits, cifar10, cifar100, market1501.
"""
import os
import sys

if __name__ == "__main__" and not __package__:  # started as python tools/NAME.py
    sys.exit(f"Run it from the repository root as: python -m tools.{os.path.basename(__file__)[:-3]}")

from absl import app

from dml_tf import cli_flags
from tools import _common


def define_flags():
    cli_flags.define("list", "runs", [], "Comma list of run folders written by dml_tf.train.")
    cli_flags.define("list", "members", None, "Member indices to embed (default: all).")
    cli_flags.define("string", "output_dir", None, "Where tsne.json/.png go.")
    cli_flags.define("enum", "split", "test", ["train", "test"], "Images to embed (no augmentation).")
    cli_flags.define("integer", "limit", 1000, "Embed the first N images (after --identities).")
    cli_flags.define("integer", "identities", None,
                     "Keep only the images of the first N distinct labels (identities) in sorted order.")
    cli_flags.define("float", "perplexity", 30.0, "t-SNE perplexity (must be < number of images).")
    cli_flags.define("integer", "seed", 0, "t-SNE random state.")
    cli_flags.define("integer", "batch_size", None, "Feature extraction batch size (default: the run's).")
    cli_flags.define("string", "data_dir", None, "Override the runs' data_dir.")


def embed(features, perplexity=30.0, seed=0):
    """``(N, 2)`` t-SNE coordinates of ``(N, D)`` features (PCA initialisation)."""
    import numpy as np
    from sklearn.manifold import TSNE

    features = np.asarray(features, np.float64)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def compute(runs, output_dir, members=None, split="test", limit=1000, perplexity=30.0, seed=0,
            batch_size=None, data_dir=None, identities=None, log=print):
    """Extracts, embeds, writes and returns the coordinates (see the module docstring)."""
    import numpy as np

    from dml_tf import analysis
    from dml_tf.reid.features import extract_features

    _common.check_split_and_limit(split, None)
    if limit is None or limit < 5:
        raise app.UsageError(f"--limit must be >= 5; got {limit}.")
    if identities is not None and (isinstance(identities, bool) or not isinstance(identities, int)
                                   or identities < 1):
        raise app.UsageError(f"--identities must be a positive integer; got {identities!r}.")
    if not perplexity or perplexity <= 0 or perplexity >= limit:
        raise app.UsageError(f"--perplexity must be in (0, --limit={limit}); got {perplexity}.")
    wanted = None if not members else _common.parse_ints(members, "members", minimum=0)
    output_dir = _common.need_output_dir(output_dir)
    entries = []
    for run_dir, results, config, run_members, dataset, n, label in _common.runs_with_data(
            runs, split, batch_size, data_dir, limit, identities):
        if perplexity >= n:
            raise app.UsageError(f"--perplexity={perplexity} must be below the {n} images of {run_dir} "
                                 f"(--limit={limit}, --identities={identities}).")
        labels = np.concatenate([np.asarray(y) for _, y in dataset])
        chosen = [m for m in run_members if wanted is None or m["index"] in wanted]
        missing = sorted(set(wanted or []) - {m["index"] for m in run_members})
        if missing:
            raise app.UsageError(f"--members {missing} not in {run_dir} (members "
                                 f"{[m['index'] for m in run_members]}).")
        for m in chosen:
            log(f"{label} member {m['index']}: features of {n} {split} images, t-SNE")
            try:
                feats = extract_features(analysis.load_member(m["path"]), dataset, verbose=0)
            except ValueError as e:
                raise app.UsageError(str(e)) from None
            coords = embed(feats, perplexity, seed)
            entries.append({"run_dir": run_dir, "label": label, "member": m["index"], "name": m.get("name"),
                            "feature_dim": int(feats.shape[1]), "num_images": len(labels),
                            "coordinates": coords.tolist(), "labels": labels.tolist()})

    counts = {e["num_images"] for e in entries}  # runs of different data sets may differ
    payload = {"split": split, "num_images": counts.pop() if len(counts) == 1 else None,
               "identities": identities,
               "limit": limit, "perplexity": perplexity, "seed": seed, "feature_layer": "features",
               "embeddings": entries}
    cols = min(len(entries), 4)
    fig, axes = _common.figure(cols, width=4.2, height=4, nrows=-(-len(entries) // cols))
    import matplotlib.pyplot as plt

    for ax, e in zip(axes, entries):
        xy = np.asarray(e["coordinates"])
        classes, codes = np.unique(e["labels"], return_inverse=True)  # colour k = k-th label (ids are sparse)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        ax.scatter(xy[:, 0], xy[:, 1], c=codes % cmap.N, cmap=cmap, vmin=0, vmax=cmap.N - 1, s=4)
        ax.set_title(f"{e['label']} member {e['member']}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(entries):]:
        ax.axis("off")
    _common.write_outputs(output_dir, "tsne", payload, fig, log)
    return payload


if __name__ == "__main__":
    _common.run_tool(compute, define_flags)
