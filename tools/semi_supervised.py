r"""Semi-supervised DML (Fig. 6, Sec. 3.4/4.10): accuracy (or mAP) vs labeled data.

    python -m tools.semi_supervised --dataset=cifar100 --data_dir=... --net=resnet32 \
        --fractions=0.1,0.25,0.5,1 --output_dir=runs/semi
    python -m tools.semi_supervised --dataset=market1501 --data_dir=... --net=mobilenet \
        --labeled_ids=100,200,400,751 --output_dir=runs/semi_market

For each labeled amount (``--fractions``: ``TrainConfig.labeled_fraction``, the fraction of
each class's training images that keep their label, CIFAR/digits; or ``--labeled_ids``:
``TrainConfig.labeled_ids``, identities that keep their labels, Market-1501) and seed,
three runs of ``dml_tf.runner.run`` into subfolders of ``--output_dir``:

* ``single``: one network trained on the labeled images only (``semi="labeled"``);
* ``dml_labeled``: a DML pair trained on the labeled images only (``semi="labeled"``);
* ``dml_all``: a DML pair, cross-entropy on the labeled images and the mimicry (KL)
  term on ALL training images (``semi="all"``, the paper's semi-supervised DML).

Finished subfolders (results.json) are reused, so the sweep resumes. Score: the average
member's test top-1 (classification) or single-query mAP (Market, via
``dml_tf.evaluate.evaluate_run``); mean +- std over members and seeds. Writes
``semi_supervised.json`` and ``semi_supervised.png``.
"""

import os
import sys

if __name__ == "__main__" and not __package__:  # started as python tools/NAME.py
    sys.exit(f"Run it from the repository root as: python -m tools.{os.path.basename(__file__)[:-3]}")

from absl import app

from dml_tf import cli_flags
from tools import _common

METHODS = ("single", "dml_labeled", "dml_all")
LABELS = {"single": "single network (labeled)", "dml_labeled": "DML-labeled", "dml_all": "DML-all"}


def define_flags():
    cli_flags.define_sweep_flags()
    cli_flags.define("list", "fractions", None, "Labeled fractions in (0, 1] (CIFAR, digits).")
    cli_flags.define("list", "labeled_ids", None, "Numbers of labeled identities (Market-1501).")
    cli_flags.define("list", "methods", list(METHODS), "Subset of single, dml_labeled, dml_all.")
    cli_flags.define("list", "seeds", ["0"], "Seeds (also choose the labeled subset).")


def make_config(method, amount, seed, output_dir, dataset, net, market, **overrides):
    from dml_tf.config import TrainConfig

    tag = f"ids{amount}" if market else f"frac{amount:g}"
    label_arg = {"labeled_ids": int(amount)} if market else {"labeled_fraction": float(amount)}
    return TrainConfig(dataset=dataset, nets=(net,) if method == "single" else (net, net),
                       mode="independent" if method == "single" else "dml",
                       semi="all" if method == "dml_all" else "labeled", seed=seed,
                       model_dir=os.path.join(output_dir, f"{method}_{tag}_seed{seed}"),
                       **label_arg, **overrides)


def compute(output_dir, dataset="digits", net="resnet32", fractions=None, labeled_ids=None,
            methods=METHODS, seeds=(0,), data_dir=None, epochs=None, steps_per_epoch=None,
            batch_size=None, learning_rate=None, image_size=None, pretrained=None, log=print):
    """Trains (or reuses) every run of the sweep; writes and returns the Fig. 6 data."""
    import numpy as np

    from dml_tf import run_dir, runner

    _common.check_dataset(dataset)
    market = dataset == "market1501"
    if market:
        if fractions:
            raise app.UsageError("--fractions is for CIFAR/digits; use --labeled_ids with market1501.")
        amounts = _common.parse_ints(labeled_ids, "labeled_ids", minimum=1)
    else:
        if labeled_ids:
            raise app.UsageError("--labeled_ids is for market1501; use --fractions with CIFAR/digits.")
        amounts = _common.parse_floats(fractions, "fractions", minimum=0.0)
        if any(not 0 < f <= 1 for f in amounts):
            raise app.UsageError(f"--fractions must be in (0, 1]; got {amounts}.")
    amounts = sorted(set(amounts))
    methods = _common.parse_choices(methods, "methods", METHODS)
    seeds = _common.parse_ints(seeds, "seeds", minimum=0)
    overrides = cli_flags.sweep_overrides(net, data_dir, epochs, steps_per_epoch, batch_size, learning_rate,
                                          image_size, pretrained)
    output_dir = _common.need_output_dir(output_dir)
    total, done = len(methods) * len(amounts) * len(seeds), 0
    curves = {}
    for method in methods:
        points = []
        for amount in amounts:
            scores, run_dirs = [], []
            for seed in seeds:
                config = make_config(method, amount, seed, output_dir, dataset, net, market, **overrides)
                done += 1
                log(f"({done}/{total}) {method} {'labeled_ids' if market else 'labeled_fraction'}={amount} "
                    f"seed={seed}")
                with _common.usage_errors():
                    results = runner.run_or_reuse(config, log=log)
                if market:
                    members, _ = _common.market_scores(config.model_dir, data_dir, batch_size or 64, log=log)
                else:
                    members = run_dir.member_accuracies(results)
                scores.append(members)
                run_dirs.append(os.path.relpath(config.model_dir, output_dir))
            flat = [s for run in scores for s in run]
            points.append({"amount": amount, "runs": run_dirs, "member_scores": scores,
                           "mean": float(np.mean(flat)), "std": float(np.std(flat))})
            log(f"  {method} {amount}: {points[-1]['mean']:.4f} +- {points[-1]['std']:.4f}")
        curves[method] = points

    metric = "single-query mAP" if market else "test top-1 accuracy"
    axis = "labeled identities" if market else "labeled fraction"
    payload = {"dataset": dataset, "net": net, "axis": axis, "amounts": amounts, "seeds": seeds,
               "metric": metric, "values": "fractions in [0, 1]; mean/std over members and seeds",
               "methods": {m: {"description": LABELS[m], "points": p} for m, p in curves.items()}}
    fig, (ax,) = _common.figure(1, width=6)
    for i, (method, points) in enumerate(curves.items()):
        ax.errorbar([p["amount"] for p in points], [p["mean"] for p in points],
                    yerr=[p["std"] for p in points], marker="o", capsize=3, color=f"C{i}", label=LABELS[method])
    ax.set(xlabel=axis, ylabel=metric, title=f"Semi-supervised ({dataset}, {net})")
    ax.legend(fontsize=8)
    _common.write_outputs(output_dir, "semi_supervised", payload, fig, log)
    return payload


if __name__ == "__main__":
    _common.run_tool(compute, define_flags)
