r"""Posterior statistics of trained cohorts (Fig. 4c, Sec. 4.8).

    python -m tools.posterior_stats --runs=runs/c100_dml,runs/c100_ind --output_dir=out/posterior

For every run folder written by ``python -m dml_tf.train`` (results.json + member_k.keras;
its config gives dataset, data_dir, batch size and, for Market-1501, the image size) and
every member, over the TRAINING images WITHOUT augmentation (``--split=train``, the
default: stored order, preprocessed like training; or ``--split=test``, for Market-1501
the gallery's real identities):

* ``top_k_mean_probability``: the mean over images of the sorted probability vector's
  first 5 entries (Fig. 4c, left);
* ``mean_entropy``: mean posterior entropy in nats (Fig. 4c, right; the paper: DML
  1.7099 vs independent 0.2602 for ResNet-32 on CIFAR-100);
* for cohorts of K >= 2, the teaching-signal entropy (Sec. 4.8): mean entropy of each
  peer's probabilities (the DML targets) vs of the average of the peers (DML_e targets);
  the two differ only for K >= 3 (with K = 2 the peer average is the one peer).

Writes ``posterior_stats.json`` and ``posterior_stats.png`` (bar charts) atomically.
Datasets: digits, cifar10, cifar100 and market1501 (``dml_tf.analysis.unaugmented_dataset``;
the probabilities need no labels, so a semi-supervised run's unlabeled images count too).
"""

import os
import sys

if __name__ == "__main__" and not __package__:  # started as python tools/NAME.py
    sys.exit(f"Run it from the repository root as: python -m tools.{os.path.basename(__file__)[:-3]}")

from absl import app

from dml_tf import cli_flags
from dml_tf.paper import POSTERIOR_ENTROPY as PAPER
from tools import _common


def define_flags():
    cli_flags.define("list", "runs", [], "Comma list of run folders written by dml_tf.train.")
    cli_flags.define("string", "output_dir", None, "Where posterior_stats.json/.png go.")
    cli_flags.define("enum", "split", "train", ["train", "test"],
                     "train: training images without augmentation (Fig. 4c); test: test split.")
    cli_flags.define("integer", "batch_size", None, "Evaluation batch size (default: the run's).")
    cli_flags.define("integer", "limit", None, "Use only the first N images (quick looks).")
    cli_flags.define("string", "data_dir", None, "Override the runs' data_dir.")


def compute(runs, output_dir, split="train", batch_size=None, limit=None, data_dir=None, log=print):
    """Computes, writes and returns the statistics (see the module docstring)."""
    import numpy as np

    from dml_tf import analysis

    _common.check_split_and_limit(split, limit)
    if batch_size is not None and batch_size < 1:
        raise app.UsageError(f"--batch_size must be positive; got {batch_size}.")
    output_dir = _common.need_output_dir(output_dir)
    entries = []
    for run_dir, results, config, members, dataset, n, label in _common.runs_with_data(
            runs, split, batch_size, data_dir, limit):
        log(f"{label}: {len(members)} member(s), {n} {split} images of {config.get('dataset')}")
        member_stats, cohort = [], []
        for m in members:
            probs, _ = analysis.predict_probabilities(analysis.load_member(m["path"]), dataset)
            stats = analysis.posterior_statistics(probs)
            stats.update(index=m["index"], name=m.get("name"), net=m.get("net"))
            member_stats.append(stats)
            cohort.append(probs)
            log(f"  member {m['index']}: mean entropy {stats['mean_entropy']:.4f}, top-5 "
                + " ".join(f"{v:.4f}" for v in stats["top_k_mean_probability"]))
        entry = {
            "run_dir": run_dir, "label": label, "dataset": config.get("dataset"),
            "mode": config.get("mode"), "mimicry": config.get("mimicry"), "split": split,
            "num_images": n, "members": member_stats,
            "mean_entropy": float(np.mean([s["mean_entropy"] for s in member_stats])),
            "top_k_mean_probability": [float(v) for v in np.mean(
                [s["top_k_mean_probability"] for s in member_stats], axis=0)],
            "teaching_signal_entropy": (analysis.teaching_signal_entropy(np.stack(cohort))
                                        if len(cohort) >= 2 else None),
        }
        if entry["teaching_signal_entropy"]:
            t = entry["teaching_signal_entropy"]
            log(f"  teaching signal entropy: DML {t['dml']:.4f}, DML_e {t['dml_e']:.4f}")
        entries.append(entry)

    payload = {"split": split, "augmentation": False, "entropy_units": "nats",
               "runs": entries, "paper": PAPER,
               "definitions": {
                   "top_k_mean_probability": "mean over images of the k-th largest probability",
                   "mean_entropy": "mean over images of -sum_m p_m log p_m, averaged over members",
                   "teaching_signal_entropy": "dml: mean entropy of each peer's probabilities; "
                                              "dml_e: entropy of the mean of the peers' probabilities"}}
    fig, (ax_top, ax_ent, ax_teach) = _common.figure(3, width=4.6)
    width = 0.8 / len(entries)
    for i, e in enumerate(entries):
        ranks = np.arange(1, len(e["top_k_mean_probability"]) + 1)
        ax_top.bar(ranks + (i - (len(entries) - 1) / 2) * width, e["top_k_mean_probability"], width,
                   label=e["label"])
    ax_top.set(xlabel="rank", ylabel="mean probability", title=f"Top-5 posterior ({split} set)")
    ax_top.legend(fontsize=7)
    ax_ent.bar(range(len(entries)), [e["mean_entropy"] for e in entries],
               color=[f"C{i}" for i in range(len(entries))])
    ax_ent.set_xticks(range(len(entries)), [e["label"] for e in entries], rotation=20, fontsize=7)
    ax_ent.set(ylabel="mean entropy (nats)", title="Posterior entropy")
    teach = [e for e in entries if e["teaching_signal_entropy"]]
    for i, e in enumerate(teach):
        t = e["teaching_signal_entropy"]
        ax_teach.bar([i - 0.2, i + 0.2], [t["dml"], t["dml_e"]], 0.4, color=["C0", "C1"],
                     label=["peer (DML)", "peer average (DML_e)"] if i == 0 else None)
    ax_teach.set_xticks(range(len(teach)), [e["label"] for e in teach], rotation=20, fontsize=7)
    ax_teach.set(ylabel="target entropy (nats)", title="Teaching signal entropy")
    if teach:
        ax_teach.legend(fontsize=7)
    _common.write_outputs(output_dir, "posterior_stats", payload, fig, log)
    return payload


if __name__ == "__main__":
    _common.run_tool(compute, define_flags)
