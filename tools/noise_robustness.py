r"""Robustness of trained members to parameter noise (Fig. 4a, 4b: DML finds wider minima).

    python -m tools.noise_robustness --runs=runs/c100_dml,runs/c100_ind \
        --sigmas=0,0.002,0.005,0.01 --draws=3 --output_dir=out/noise

For every run folder written by ``python -m dml_tf.train`` and every member, loads a
fresh in-memory copy of member_k.keras (the files are only read), measures the training
loss -- plain cross-entropy ``-log p_y`` averaged over the TRAINING images WITHOUT
augmentation (``--split=train``; no label smoothing or regulariser) -- then, for every
std in ``--sigmas`` and each of ``--draws`` draws, adds independent Gaussian noise
N(0, sigma^2) to every trainable parameter (seeded by ``--seed``, sigma index and draw),
measures the loss again and restores the weights. sigma = 0 reproduces the clean loss.

Writes ``noise_robustness.json`` (clean loss, losses per sigma and draw, mean and std per
member and per run) and ``noise_robustness.png``: left, the training-loss curve of the
runs' histories (Fig. 4a, the ``ce_k`` metric logged by dml_tf.train, mean over members);
right, loss vs sigma per run, mean +- std over draws and members (Fig. 4b).
Datasets: digits, cifar10, cifar100 and market1501 (labels as the run was trained:
Market class indices over its training ids). The loss skips label -1: a Market-1501
semi-supervised run's unlabeled identities (a CIFAR/digits run's images keep true labels).
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
    cli_flags.define("string", "output_dir", None, "Where noise_robustness.json/.png go.")
    cli_flags.define("list", "sigmas", ["0", "0.001", "0.002", "0.005", "0.01"],
                     "Standard deviations of the parameter noise.")
    cli_flags.define("integer", "draws", 3, "Noise draws per sigma.")
    cli_flags.define("integer", "seed", 0, "Seed of the noise.")
    cli_flags.define("enum", "split", "train", ["train", "test"],
                     "train: training images without augmentation (the paper's training loss).")
    cli_flags.define("integer", "batch_size", None, "Evaluation batch size (default: the run's).")
    cli_flags.define("integer", "limit", None, "Use only the first N images (quick looks).")
    cli_flags.define("string", "data_dir", None, "Override the runs' data_dir.")


def _history_ce(results):
    history = results.get("history") or {}
    curves = [v for k, v in sorted(history.items()) if k.startswith("ce_") and k[3:].isdigit()]
    if not curves:
        return None
    length = min(len(c) for c in curves)
    return [float(sum(c[i] for c in curves) / len(curves)) for i in range(length)]


def compute(runs, output_dir, sigmas=(0.0, 0.001, 0.002, 0.005, 0.01), draws=3, seed=0,
            split="train", batch_size=None, limit=None, data_dir=None, log=print):
    """Computes, writes and returns the noise study (see the module docstring)."""
    import numpy as np

    from dml_tf import analysis

    sigmas = _common.parse_floats(sigmas, "sigmas", minimum=0.0)
    if draws is None or draws < 1:
        raise app.UsageError(f"--draws must be positive; got {draws}.")
    if seed is None or seed < 0:
        raise app.UsageError(f"--seed must be >= 0; got {seed}.")
    _common.check_split_and_limit(split, limit)
    output_dir = _common.need_output_dir(output_dir)
    entries = []
    for run_dir, results, config, members, dataset, n, label in _common.runs_with_data(
            runs, split, batch_size, data_dir, limit):
        log(f"{label}: {len(members)} member(s), {n} {split} images, sigmas {sigmas}, {draws} draw(s)")
        member_entries = []
        for m in members:
            model = analysis.load_member(m["path"])  # in-memory copy; the file is not written
            log(f" member {m['index']} ({m.get('name')})")
            try:
                out = analysis.noisy_losses(model, dataset, sigmas, draws=draws, seed=seed + m["index"],
                                            log=log)
            except ValueError as e:  # e.g. --limit keeps only unlabeled images
                raise app.UsageError(f"{run_dir} (--split={split}, --limit={limit}): {e}") from None
            out.update(index=m["index"], name=m.get("name"), net=m.get("net"))
            log(f"  clean loss {out['clean_loss']:.6f}")
            member_entries.append(out)
        pooled = [[loss for m in member_entries for loss in m["losses"][i]] for i in range(len(sigmas))]
        entries.append({
            "run_dir": run_dir, "label": label, "mode": config.get("mode"),
            "mimicry": config.get("mimicry"), "dataset": config.get("dataset"), "num_images": n,
            "members": member_entries,
            "clean_loss": float(np.mean([m["clean_loss"] for m in member_entries])),
            "mean": [float(np.mean(p)) for p in pooled],
            "std": [float(np.std(p)) for p in pooled],
            "history_ce": _history_ce(results),
        })

    payload = {"split": split, "augmentation": False, "sigmas": sigmas, "draws": draws, "seed": seed,
               "loss": "mean cross-entropy -log p_y (no label smoothing, no regulariser)",
               "noise": "w + sigma * N(0, 1) on every trainable variable, every draw from the original weights",
               "runs": entries}
    fig, (ax_hist, ax_noise) = _common.figure(2)
    for i, e in enumerate(entries):
        if e["history_ce"]:
            ax_hist.plot(range(1, len(e["history_ce"]) + 1), e["history_ce"], color=f"C{i}",
                         label=e["label"])
        mean, std = np.array(e["mean"]), np.array(e["std"])
        ax_noise.errorbar(sigmas, mean, yerr=std, color=f"C{i}", marker="o", capsize=3, label=e["label"])
        ax_noise.fill_between(sigmas, mean - std, mean + std, color=f"C{i}", alpha=0.15)
    ax_hist.set(xlabel="epoch", ylabel="training cross-entropy", title="Training loss (history)")
    ax_noise.set(xlabel="noise std sigma", ylabel=f"{split} loss (no augmentation)",
                 title="Loss after parameter noise")
    for ax in (ax_hist, ax_noise):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _common.write_outputs(output_dir, "noise_robustness", payload, fig, log)
    return payload


if __name__ == "__main__":
    _common.run_tool(compute, define_flags)
