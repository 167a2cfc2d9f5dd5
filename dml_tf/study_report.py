"""The report of a study (:mod:`dml_tf.study`): what every arm reached over the seeds, the
paired difference of each arm from the baseline, and whether the seeds resolve it.

Read from the finished runs' own results.json only:

* per arm and member: test accuracy per seed, mean and sample standard deviation; the
  member mean (the members' average, per seed) and the ensemble (mean probabilities);
* how the members fit the training images: the last epoch's running training accuracy
  and loss (augmented batches, training mode, as Keras logs them) and, without
  augmentation in inference mode, accuracy, cross-entropy and mean posterior entropy
  (Sec. 4.7: DML's posteriors are more entropic);
* paired by seed (same initial weights and data order): ``arm - baseline`` per seed, its
  mean and the 95% confidence interval ``mean +- t(0.975, n-1) * sd / sqrt(n)``
  (Student's t over the seeds). The difference is *resolved* when the interval
  excludes 0; with one seed there is no interval.

Accuracies are fractions in the JSON and percent in the Markdown and the figure.
"""

import math
import os

import numpy as np

CONFIDENCE = 0.95
# What the report reads of each run's results.json, by name.
MEASURES = ("member_mean", "ensemble")


def t_quantile(p, df):
    """Student's t quantile (scipy, which scikit-learn brings)."""
    from scipy import stats

    return float(stats.t.ppf(p, df))


def summary(values):
    """``{"n", "mean", "std"}`` of ``values`` (sample std, ddof=1; None below 2 values)."""
    values = [float(v) for v in values if v is not None]
    n = len(values)
    return {"n": n, "mean": float(np.mean(values)) if n else None,
            "std": float(np.std(values, ddof=1)) if n > 1 else None}


def paired_interval(differences, confidence=CONFIDENCE):
    """Mean, sample std and the two-sided Student-t ``confidence`` interval of paired
    ``differences`` (``interval`` None below 2 values), and whether it excludes 0."""
    stats = summary(differences)
    n = stats["n"]
    if n < 2:
        return {**stats, "interval": None, "resolved": False}
    half = t_quantile(0.5 + confidence / 2, n - 1) * stats["std"] / math.sqrt(n)
    low, high = stats["mean"] - half, stats["mean"] + half
    return {**stats, "interval": [low, high], "resolved": bool(low > 0 or high < 0)}


# ------------------------------------------------------------------------- one run


def _last(values):
    values = [v for v in (values or []) if v is not None]
    return values[-1] if values else None


def run_entry(results, arm, seed):
    """What the report uses of one finished run's results.json."""
    from dml_tf import run_dir

    accuracies = run_dir.member_accuracies(results)
    history = results.get("history") or {}
    k = len(accuracies)
    fits = {f.get("index"): f for f in results.get("training_fit") or []}
    epochs = len(next(iter(history.values()), []))
    curve = []
    for e in range(epochs):
        values = [(history.get(f"val_accuracy_{i}") or [None] * epochs)[e] for i in range(k)]
        curve.append(None if any(v is None for v in values) else float(np.mean(values)))
    return {
        "arm": arm, "seed": seed, "run_dir": f"{arm}/seed_{seed}",
        "members": accuracies,
        "member_mean": float(np.mean(accuracies)) if all(a is not None for a in accuracies) else None,
        "ensemble": results.get("ensemble_test_accuracy"),
        "final_train_accuracy": [_last(history.get(f"accuracy_{i}")) for i in range(k)],
        "final_train_loss": [_last(history.get(f"loss_{i}")) for i in range(k)],
        "final_train_ce": [_last(history.get(f"ce_{i}")) for i in range(k)],
        "train_fit": [fits.get(i) for i in range(k)],
        "test_accuracy_curve": curve,
        "ensemble_curve": history.get("val_ensemble_accuracy"),
        "wall_time_s": results.get("wall_time_s"),
    }


# ---------------------------------------------------------------------------- report


def _member_summary(entries, key, field=None):
    """Per member index: summary over seeds of ``entry[key][i]`` (``[field]`` of a dict)."""
    k = max((len(e[key]) for e in entries), default=0)

    def value(entry, i):
        item = entry[key][i] if i < len(entry[key]) else None
        return item.get(field) if (field and item) else (None if field else item)
    return [summary([value(e, i) for e in entries]) for i in range(k)]


def arm_summary(entries):
    return {
        "seeds": [e["seed"] for e in entries],
        "members": _member_summary(entries, "members"),
        "member_mean": summary([e["member_mean"] for e in entries]),
        "ensemble": summary([e["ensemble"] for e in entries]),
        "final_train_accuracy": _member_summary(entries, "final_train_accuracy"),
        "final_train_loss": _member_summary(entries, "final_train_loss"),
        "train_fit_accuracy": _member_summary(entries, "train_fit", "accuracy"),
        "train_fit_cross_entropy": _member_summary(entries, "train_fit", "cross_entropy"),
        "train_mean_entropy": _member_summary(entries, "train_fit", "mean_entropy"),
        "wall_time_s": summary([e["wall_time_s"] for e in entries]),
    }


def paired(entries, arm, baseline):
    """``arm - baseline`` per seed both finished, for the member mean, the ensemble and
    each member, with :func:`paired_interval`."""
    by_seed = {a: {e["seed"]: e for e in entries if e["arm"] == a} for a in (arm, baseline)}
    seeds = sorted(set(by_seed[arm]) & set(by_seed[baseline]))
    out = {"arm": arm, "baseline": baseline, "seeds": seeds}
    for measure in MEASURES:
        diffs = [by_seed[arm][s][measure] - by_seed[baseline][s][measure] for s in seeds
                 if by_seed[arm][s][measure] is not None and by_seed[baseline][s][measure] is not None]
        out[measure] = {"per_seed": diffs, **paired_interval(diffs)}
    k = min((len(by_seed[a][s]["members"]) for a in (arm, baseline) for s in seeds), default=0)
    out["members"] = [{"per_seed": d, **paired_interval(d)} for d in (
        [by_seed[arm][s]["members"][i] - by_seed[baseline][s]["members"][i] for s in seeds]
        for i in range(k))]
    return out


def build(runs, baseline):
    """The report of the finished ``runs`` (:class:`dml_tf.study.PlannedRun`)."""
    from dml_tf import run_dir

    entries = [run_entry(run_dir.read_results(r.config.model_dir), r.arm, r.seed)
               for r in runs if run_dir.is_finished(r.config.model_dir)]
    arms = list(dict.fromkeys(r.arm for r in runs))
    config = runs[0].config
    return {
        "setting": {"dataset": config.dataset, "nets": list(config.nets), "epochs": config.epochs,
                    "train_per_class": config.train_per_class, "data_dir": config.data_dir},
        "confidence": CONFIDENCE,
        "planned_runs": len(runs),
        "finished_runs": len(entries),
        "arms": {a: arm_summary([e for e in entries if e["arm"] == a]) for a in arms},
        "paired": [paired(entries, a, baseline) for a in arms if a != baseline],
        "runs": entries,
    }


# --------------------------------------------------------------------------- writing


def _pct(value, digits=2):
    return "-" if value is None else f"{100 * value:.{digits}f}"


def _mean_std(stats, scale=100.0, digits=2):
    if stats["mean"] is None:
        return "-"
    text = f"{scale * stats['mean']:.{digits}f}"
    return text + (f" ± {scale * stats['std']:.{digits}f}" if stats["std"] is not None else "")


def _members_mean(member_stats, scale=100.0, digits=2):
    """The mean over members of their means (one number for a row)."""
    means = [s["mean"] for s in member_stats if s["mean"] is not None]
    return "-" if not means else f"{scale * float(np.mean(means)):.{digits}f}"


def verdict(pair, measure):
    """One plain sentence: does the study resolve ``arm - baseline`` on ``measure``?"""
    d = pair[measure]
    name = {"member_mean": "member mean", "ensemble": "ensemble"}[measure]
    head = f"{pair['arm']} - {pair['baseline']}, {name} test accuracy"
    if d["n"] == 0:
        return f"{head}: no seed finished in both arms yet."
    if d["interval"] is None:
        return (f"{head}: {100 * d['mean']:+.2f} points on one seed; a difference needs two "
                "seeds or more to be judged.")
    low, high = (100 * v for v in d["interval"])
    ci = f"{100 * d['mean']:+.2f} points (95% CI [{low:+.2f}, {high:+.2f}], {d['n']} seeds)"
    if d["resolved"]:
        word = "higher" if d["mean"] > 0 else "lower"
        return f"{head}: {ci}: resolved, {pair['arm']} is {word}."
    return f"{head}: {ci}: NOT resolved, the interval includes 0."


def verdict_lines(report):
    lines = [f"Study: {report['finished_runs']}/{report['planned_runs']} runs finished."]
    for pair in report["paired"]:
        lines += [verdict(pair, m) for m in MEASURES]
    return "\n".join(lines)


def markdown(report):
    s = report["setting"]
    subset = f", {s['train_per_class']} training images per class" if s["train_per_class"] else ""
    width = max((len(a["members"]) for a in report["arms"].values()), default=0)
    lines = [f"# Study: {', '.join(s['nets'])} on {s['dataset']}{subset}, {s['epochs']} epochs", "",
             f"{report['finished_runs']} of {report['planned_runs']} runs finished. Test accuracy "
             "in %, mean ± sample std over seeds; training fit without augmentation, in inference "
             "mode; entropy in nats.", "",
             "| arm | seeds | " + "".join(f"member {i} | " for i in range(width))
             + "member mean | ensemble | last-epoch train acc (augmented) | train acc (clean) | "
               "train CE (clean) | train entropy | wall time (s) |",
             "|---" * (width + 9) + "|"]
    for arm, a in report["arms"].items():
        members = [_mean_std(m) for m in a["members"]] + ["-"] * (width - len(a["members"]))
        lines.append(
            f"| {arm} | {len(a['seeds'])} | " + "".join(f"{m} | " for m in members)
            + f"{_mean_std(a['member_mean'])} | {_mean_std(a['ensemble'])} | "
            f"{_members_mean(a['final_train_accuracy'])} | {_members_mean(a['train_fit_accuracy'])} | "
            f"{_members_mean(a['train_fit_cross_entropy'], 1, 4)} | "
            f"{_members_mean(a['train_mean_entropy'], 1, 4)} | {_mean_std(a['wall_time_s'], 1, 0)} |")
    lines += ["", "## Paired by seed (same initial weights and data order)", "",
              "| difference | measure | per seed (points) | mean | 95% CI |", "|---|---|---|---|---|"]
    for pair in report["paired"]:
        for measure in MEASURES:
            d = pair[measure]
            per_seed = ", ".join(f"{s}: {100 * v:+.2f}" for s, v in zip(pair["seeds"], d["per_seed"]))
            ci = "-" if d["interval"] is None else \
                f"[{100 * d['interval'][0]:+.2f}, {100 * d['interval'][1]:+.2f}]"
            mean = "-" if d["mean"] is None else f"{100 * d['mean']:+.2f}"
            lines.append(f"| {pair['arm']} - {pair['baseline']} | {measure.replace('_', ' ')} | "
                         f"{per_seed or '-'} | {mean} | {ci} |")
    lines += ["", "## Verdict", ""] + [f"- {line}" for line in verdict_lines(report).splitlines()[1:]]
    lines += ["", "## Runs", "", "| arm | seed | members (test %) | ensemble | run |", "|---|---|---|---|---|"]
    for e in report["runs"]:
        lines.append(f"| {e['arm']} | {e['seed']} | {' / '.join(_pct(v) for v in e['members'])} | "
                     f"{_pct(e['ensemble'])} | {e['run_dir']} |")
    return "\n".join(lines) + "\n"


def figure(report):
    """Left: per-epoch test accuracy (member mean) of every run, a colour per arm.
    Right: the paired differences per seed and their mean with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, diffs) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {arm: f"C{i}" for i, arm in enumerate(report["arms"])}
    for e in report["runs"]:
        points = [(i + 1, 100 * v) for i, v in enumerate(e["test_accuracy_curve"]) if v is not None]
        if points:
            x, y = zip(*points)
            label = e["arm"] if e["seed"] == min(r["seed"] for r in report["runs"] if r["arm"] == e["arm"]) \
                else None
            curves.plot(x, y, "-o", markersize=2, color=colours[e["arm"]], alpha=0.8, label=label)
    curves.set(xlabel="epoch", ylabel="test accuracy (%, member mean)",
               title="Test accuracy per epoch, every seed")
    if report["runs"]:
        curves.legend(fontsize=8)
    ticks, names = [], []
    for p, pair in enumerate(report["paired"]):
        for m, measure in enumerate(MEASURES):
            x = p * (len(MEASURES) + 1) + m
            d = pair[measure]
            ticks.append(x)
            names.append(f"{pair['arm']}\n- {pair['baseline']}\n{measure.replace('_', ' ')}")
            diffs.scatter([x] * len(d["per_seed"]), [100 * v for v in d["per_seed"]],
                          color=colours[pair["arm"]], alpha=0.7, s=18)
            if d["interval"] is not None:
                low, high = (100 * v for v in d["interval"])
                diffs.errorbar([x + 0.25], [100 * d["mean"]], yerr=[[100 * d["mean"] - low], [high - 100 * d["mean"]]],
                               fmt="s", color="black", capsize=4, markersize=4)
    diffs.axhline(0, color="grey", lw=0.8)
    diffs.set_xticks(ticks, names, fontsize=7)
    diffs.set(ylabel="difference (points)", title="Paired differences per seed (mean, 95% CI)")
    fig.tight_layout()
    return fig


def write(runs, study_dir, baseline, log=None):
    """Builds the report of ``runs`` and writes study.json, study.md and study.png in
    ``study_dir`` atomically; returns the report."""
    import matplotlib.pyplot as plt

    from dml_tf.io_utils import atomic_savefig, atomic_write_bytes, atomic_write_json

    report = build(runs, baseline)
    atomic_write_json(os.path.join(study_dir, "study.json"), report)
    atomic_write_bytes(os.path.join(study_dir, "study.md"), markdown(report).encode())
    fig = figure(report)
    atomic_savefig(fig, os.path.join(study_dir, "study.png"), dpi=110)
    plt.close(fig)
    if log:
        log(f"Wrote {os.path.join(study_dir, 'study.json')}, study.md and study.png")
    return report
