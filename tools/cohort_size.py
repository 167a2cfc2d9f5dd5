r"""Cohort size study (Fig. 3): 1..K members trained with DML, DML_e and independently.

    python -m tools.cohort_size --dataset=market1501 --data_dir=.../Market-1501-v15.09.15 \
        --net=mobilenet --max_k=5 --output_dir=runs/cohort_size
    python -m tools.cohort_size --dataset=digits --net=tiny_cnn --max_k=3 --epochs=2 \
        --output_dir=/tmp/cohort_size

Every cohort is one ``dml_tf.runner.run`` of a ``TrainConfig`` (``--net`` repeated K
times; the dataset's paper settings unless overridden) into its own subfolder of
``--output_dir``: ``k1_seed{S}`` (a single network, shared by all methods) and
``{method}_k{K}_seed{S}`` for K = 2..max_k, method ``dml`` (Eq. 10), ``dml_e``
(``mimicry="ensemble"``, Eq. 11; for K = 2 it is the same objective as dml) and
``independent``. A subfolder with results.json is reused, so an interrupted sweep
resumes (an unfinished one resumes from its own checkpoint).

Scores: classification -> test top-1; Market-1501 -> single-query mAP from
``dml_tf.evaluate.evaluate_run`` (eval.json in the run folder). ``member`` = average over
the members (std over all members of all seeds); ``ensemble`` = mean-probability
ensemble (classification) or concatenated features (Market), std over seeds.
Writes ``cohort_size.json`` and ``cohort_size.png`` (two panels, mean +- std vs K).
"""

import os
import sys

if __name__ == "__main__" and not __package__:  # started as python tools/NAME.py
    sys.exit(f"Run it from the repository root as: python -m tools.{os.path.basename(__file__)[:-3]}")

from absl import app

from dml_tf import cli_flags
from tools import _common

METHODS = ("dml", "dml_e", "independent")


def define_flags():
    cli_flags.define_sweep_flags()
    cli_flags.define("integer", "max_k", 5, "Largest cohort size.")
    cli_flags.define("list", "methods", list(METHODS), "Subset of dml, dml_e, independent.")
    cli_flags.define("list", "seeds", ["0"], "Seeds; one cohort per seed and size.")


def run_dir_name(method, k, seed):
    return f"k1_seed{seed}" if k == 1 else f"{method}_k{k}_seed{seed}"


def make_config(method, k, seed, output_dir, dataset, net, **overrides):
    from dml_tf.config import TrainConfig

    mode = "independent" if (k == 1 or method == "independent") else "dml"
    return TrainConfig(dataset=dataset, nets=(net,) * k, mode=mode,
                       mimicry="ensemble" if (method == "dml_e" and k > 1) else "kl",
                       seed=seed, model_dir=os.path.join(output_dir, run_dir_name(method, k, seed)),
                       **overrides)


def _ensemble(results, accs):
    value = results.get("ensemble_test_accuracy")
    return float(accs[0] if value is None else value)


def compute(output_dir, dataset="digits", net="resnet32", max_k=5, methods=METHODS, seeds=(0,),
            data_dir=None, epochs=None, steps_per_epoch=None, batch_size=None, learning_rate=None,
            image_size=None, pretrained=None, log=print):
    """Trains (or reuses) every cohort, writes and returns the Fig. 3 data."""
    import numpy as np

    from dml_tf import run_dir, runner

    methods = _common.parse_choices(methods, "methods", METHODS)
    seeds = _common.parse_ints(seeds, "seeds", minimum=0)
    if max_k is None or max_k < 1:
        raise app.UsageError(f"--max_k must be >= 1; got {max_k}.")
    _common.check_dataset(dataset)
    overrides = cli_flags.sweep_overrides(net, data_dir, epochs, steps_per_epoch, batch_size, learning_rate,
                                          image_size, pretrained)
    output_dir = _common.need_output_dir(output_dir)
    market = dataset == "market1501"
    total = len(seeds) * (1 + (max_k - 1) * len(methods))  # distinct runs
    done = 0
    curves, cache = {}, {}  # cache: the K = 1 run is shared by every method
    for method in methods:
        points = []
        for k in range(1, max_k + 1):
            member_scores, ensemble_scores, run_dirs = [], [], []
            for seed in seeds:
                config = make_config(method, k, seed, output_dir, dataset, net, **overrides)
                if config.model_dir not in cache:
                    done += 1
                    log(f"({done}/{total}) {method} K={k} seed={seed}")
                    with _common.usage_errors():
                        results = runner.run_or_reuse(config, log=log)
                    if market:
                        cache[config.model_dir] = _common.market_scores(config.model_dir, data_dir,
                                                                        batch_size or 64, log=log)
                    else:
                        accs = run_dir.member_accuracies(results)
                        cache[config.model_dir] = (accs, _ensemble(results, accs))
                members, ensemble = cache[config.model_dir]
                member_scores.append(members)
                ensemble_scores.append(ensemble)
                run_dirs.append(os.path.relpath(config.model_dir, output_dir))
            flat = [s for run in member_scores for s in run]
            points.append({"k": k, "runs": run_dirs, "member_scores": member_scores,
                           "ensemble_scores": ensemble_scores,
                           "member_mean": float(np.mean(flat)), "member_std": float(np.std(flat)),
                           "ensemble_mean": float(np.mean(ensemble_scores)),
                           "ensemble_std": float(np.std(ensemble_scores))})
            log(f"  {method} K={k}: member {points[-1]['member_mean']:.4f}, "
                f"ensemble {points[-1]['ensemble_mean']:.4f}")
        curves[method] = points

    metric = "single-query mAP" if market else "test top-1 accuracy"
    payload = {"dataset": dataset, "net": net, "max_k": max_k, "seeds": seeds, "metric": metric,
               "values": "fractions in [0, 1]",
               "member": "average over members; std over all members of all seeds",
               "ensemble": ("concatenated features" if market else "mean probabilities") + "; std over seeds",
               "methods": curves}
    fig, (ax_member, ax_ens) = _common.figure(2)
    labels = {"dml": "DML", "dml_e": "DML_e", "independent": "Independent"}
    for i, (method, points) in enumerate(curves.items()):
        ks = [p["k"] for p in points]
        for ax, key in ((ax_member, "member"), (ax_ens, "ensemble")):
            ax.errorbar(ks, [p[f"{key}_mean"] for p in points], yerr=[p[f"{key}_std"] for p in points],
                        marker="o", capsize=3, color=f"C{i}", label=labels[method])
    for ax, title in ((ax_member, "Average member"), (ax_ens, "Ensemble")):
        ax.set(xlabel="cohort size K", ylabel=metric, title=f"{title} ({dataset}, {net})")
        ax.set_xticks(range(1, max_k + 1))
        ax.legend(fontsize=7)
    _common.write_outputs(output_dir, "cohort_size", payload, fig, log)
    return payload


if __name__ == "__main__":
    _common.run_tool(compute, define_flags)
