"""The report of a study (:mod:`dml_tf.study`): what every arm reached over the seeds, the
paired difference of each arm from the baseline, and whether the seeds resolve it.

Read from the finished runs' own results.json (and, on Market-1501, the eval.json the
study has :mod:`dml_tf.evaluate` write beside it) only:

* the metrics: test accuracy, or on Market-1501 single-query mAP and rank-1;
* per arm and member (labelled by network and index, ``resnet32 (member 1)``): each metric
  per seed, mean and sample standard deviation; the member mean (the average, per seed,
  of the members trained in the run: a distill run's frozen teachers, ``"trainable":
  false`` in results.json, are left out) and the ensemble (mean probabilities; on
  Market-1501 the members' features concatenated);
* how the members fit the training images: the last epoch's running training accuracy
  and loss (augmented batches, training mode, as Keras logs them) and, without
  augmentation in inference mode, accuracy, cross-entropy and mean posterior entropy
  (Sec. 4.7: DML's posteriors are more entropic);
* paired by seed (same initial weights and data order): ``arm - baseline`` per seed for
  the focus member (``--focus_member``; with members of different networks, by default
  the one with the fewest parameters), the member mean, the ensemble and every other
  member, each with its mean, sample std ``sd`` and 95% confidence interval
  ``mean +- t(0.975, n-1) * sd / sqrt(n)`` (Student's t over the seeds). Its half-width
  is the smallest difference the study can resolve at its n seeds; the seeds a target
  half-width P needs is the smallest n >= 3 with ``t(0.975, n-1) * sd / sqrt(n) <= P``,
  using the observed sd (an estimate: the true sd may be larger).
* a verdict per comparison: *resolved* when the interval excludes 0, judged only from
  :data:`MIN_SEEDS` seeds on and with a non-zero sd (every seed giving the same
  difference is an interval of width 0, which measures nothing); it says when the
  difference is no larger than one test image (1 image = 100/N points of accuracy);
* runs that diverged (NaN): counted per arm and named; the pairs use the seeds both arms
  finished.

Accuracies are fractions in the JSON and percent (points) in the Markdown and the figure.
"""

import functools
import math
import os

import numpy as np

CONFIDENCE = 0.95
MIN_SEEDS = 3  # a verdict needs this many seeds
DEFAULT_TARGET = 0.01  # the half-width the report plans seeds for without --target_halfwidth
SEEDS_LIMIT = 1000  # beyond this many seeds, "seeds needed" is given as None
RETRIEVAL_DATASETS = ("market1501",)  # scored by dml_tf.evaluate (eval.json), not test accuracy
METRIC_NAMES = {"accuracy": "test accuracy", "mAP": "mAP (single query)",
                "rank1": "rank-1 (single query)"}


def metrics_of(dataset):
    """The metrics a study on ``dataset`` reports, the first the main one."""
    return ("mAP", "rank1") if dataset in RETRIEVAL_DATASETS else ("accuracy",)


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


def half_width(sd, n, confidence=CONFIDENCE):
    """``t(0.5 + confidence / 2, n - 1) * sd / sqrt(n)``: the half-width of the interval."""
    return t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)


def seeds_needed(sd, target, confidence=CONFIDENCE):
    """The smallest n >= :data:`MIN_SEEDS` whose interval half-width with standard deviation
    ``sd`` is at most ``target`` (None: no sd yet, or more than :data:`SEEDS_LIMIT`)."""
    from scipy import stats

    if sd is None or target is None:
        return None
    n = np.arange(MIN_SEEDS, SEEDS_LIMIT + 1)
    widths = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / np.sqrt(n)
    fits = np.flatnonzero(widths <= target)
    return int(n[fits[0]]) if len(fits) else None


def paired_interval(differences, confidence=CONFIDENCE, granularity=None, target=DEFAULT_TARGET):
    """Mean, sample std and the two-sided Student-t ``confidence`` interval of paired
    ``differences`` (``interval`` None below 2 values) with its ``half_width`` (the smallest
    difference resolvable at n seeds), whether the study can judge it (``judged``: at least
    :data:`MIN_SEEDS` values, sd > 0) and, if so, whether it excludes 0 (``resolved``);
    ``coarse``: the mean is no larger than ``granularity`` (one test image); the
    ``seeds_for_target`` half-width ``target`` needs (:func:`seeds_needed`)."""
    stats = summary(differences)
    n, sd = stats["n"], stats["std"]
    out = {**stats, "interval": None, "half_width": None, "judged": False, "resolved": False,
           "coarse": bool(granularity is not None and n and abs(stats["mean"]) <= granularity + 1e-12),
           "target_halfwidth": target, "seeds_for_target": seeds_needed(sd, target, confidence)}
    if n < 2:
        return out
    half = half_width(sd, n, confidence)
    low, high = stats["mean"] - half, stats["mean"] + half
    out.update(interval=[low, high], half_width=half, judged=bool(n >= MIN_SEEDS and sd > 0))
    out["resolved"] = bool(out["judged"] and (low > 0 or high < 0))
    return out


# ------------------------------------------------------------------------- one run


def _last(values):
    values = [v for v in (values or []) if v is not None]
    return values[-1] if values else None


def _mean_of_trained(values, frozen):
    """The mean of ``values`` over the members not ``frozen`` (None if one is missing)."""
    trained = [v for v, f in zip(values, frozen) if not f]
    return float(np.mean(trained)) if trained and all(v is not None for v in trained) else None


def run_scores(results, evaluation=None):
    """``{metric: {"members": [...], "member_mean", "ensemble"}}`` of one run: test accuracy
    from its results.json, or mAP and rank-1 (single query) from its ``evaluation``
    (eval.json) on a retrieval dataset."""
    from dml_tf import run_dir

    frozen = run_dir.frozen_members(results)
    if results.get("dataset", {}).get("name") in RETRIEVAL_DATASETS:
        members = (evaluation or {}).get("members") or [{} for _ in frozen]
        ensemble = (evaluation or {}).get("ensemble") or {}
        raw = {m: ([(e.get("single_query") or {}).get(m) for e in members],
                   (ensemble.get("single_query") or {}).get(m)) for m in ("mAP", "rank1")}
    else:
        raw = {"accuracy": (run_dir.member_accuracies(results), results.get("ensemble_test_accuracy"))}
    return {metric: {"members": members, "member_mean": _mean_of_trained(members, frozen),
                     "ensemble": ensemble} for metric, (members, ensemble) in raw.items()}


def run_entry(results, arm, seed, evaluation=None):
    """What the report uses of one finished run's results.json (and eval.json)."""
    from dml_tf import run_dir

    members = run_dir.member_entries(results)
    history = results.get("history") or {}
    k = len(members)
    fits = {f.get("index"): f for f in results.get("training_fit") or []}
    epochs = len(next(iter(history.values()), []))
    curve = []
    for e in range(epochs):
        values = [(history.get(f"val_accuracy_{i}") or [None] * epochs)[e] for i in range(k)]
        curve.append(None if any(v is None for v in values) else float(np.mean(values)))
    test_size = (results.get("dataset") or {}).get("test_size")
    return {
        "arm": arm, "seed": seed, "run_dir": f"{arm}/seed_{seed}", "outcome": "finished",
        "nets": [m.get("net") for m in members], "frozen": run_dir.frozen_members(results),
        "parameters": [m.get("parameters") for m in members],
        "scores": run_scores(results, evaluation),
        "test_images": test_size,
        "input_shape": (results.get("preprocessing") or {}).get("input_shape"),
        "data": run_dir.data_record(results),
        "data_dir": (results.get("config") or {}).get("data_dir"),
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


def _score_summary(entries, metric):
    scores = [e["scores"][metric] for e in entries]
    return {"members": _member_summary(scores, "members"),
            "member_mean": summary([s["member_mean"] for s in scores]),
            "ensemble": summary([s["ensemble"] for s in scores])}


def arm_summary(entries, metrics, diverged=()):
    first = entries[0] if entries else {"nets": [], "frozen": []}
    return {
        "seeds": [e["seed"] for e in entries],
        "diverged": [{"seed": d["seed"], "error": d["error"]} for d in diverged],
        "nets": first["nets"], "frozen": first["frozen"],
        "scores": {m: _score_summary(entries, m) for m in metrics},
        "final_train_accuracy": _member_summary(entries, "final_train_accuracy"),
        "final_train_loss": _member_summary(entries, "final_train_loss"),
        "train_fit_accuracy": _member_summary(entries, "train_fit", "accuracy"),
        "train_fit_cross_entropy": _member_summary(entries, "train_fit", "cross_entropy"),
        "train_mean_entropy": _member_summary(entries, "train_fit", "mean_entropy"),
        "wall_time_s": summary([e["wall_time_s"] for e in entries]),
    }


def member_label(nets, k):
    """``resnet32 (member 1)``."""
    net = nets[k] if k < len(nets) else None
    return f"{net} (member {k})" if net else f"member {k}"


def _quantities(nets, frozen, focus):
    """``[(key, label)]`` of a pair's comparisons: the focus member first, the member mean
    (of the members trained in both arms; left out when that is one member, whose own
    comparison it would repeat), the ensemble, then every other member; frozen members
    (teachers) are not compared."""
    members = [(f"member_{k}", member_label(nets, k)) for k in range(len(nets)) if not frozen[k]]
    head = [(key, label) for key, label in members if focus is not None and key == f"member_{focus}"]
    rest = [(key, label) for key, label in members if (key, label) not in head]
    mean = [("member_mean", "member mean")] if len(members) > 1 else []
    return head + mean + [("ensemble", "ensemble")] + rest


def _value(entry, metric, key, trained):
    """``entry``'s ``metric`` for ``key``; the member mean is over the ``trained`` indices."""
    scores = entry["scores"][metric]
    if key == "member_mean":
        values = [scores["members"][k] if k < len(scores["members"]) else None for k in trained]
        return float(np.mean(values)) if values and None not in values else None
    if key.startswith("member_"):
        k = int(key.split("_")[1])
        return scores["members"][k] if k < len(scores["members"]) else None
    return scores[key]


def _granularity(key, trained, test_images):
    """The step of an accuracy difference on ``test_images`` images: one image (a member,
    the ensemble), one image of one member for the member mean of ``len(trained)``."""
    return 1.0 / (test_images * (len(trained) if key == "member_mean" else 1))


def paired(entries, arm, baseline, metrics, focus=None, target=DEFAULT_TARGET):
    """``arm - baseline`` per seed both finished, per metric, for every quantity of
    :func:`_quantities` (members compared by index; a member frozen in either arm is not),
    each with :func:`paired_interval`."""
    by_seed = {a: {e["seed"]: e for e in entries if e["arm"] == a} for a in (arm, baseline)}
    seeds = sorted(set(by_seed[arm]) & set(by_seed[baseline]))
    out = {"arm": arm, "baseline": baseline, "seeds": seeds, "comparisons": []}
    if not seeds:
        return out
    first, base = by_seed[arm][seeds[0]], by_seed[baseline][seeds[0]]
    k = min(len(first["nets"]), len(base["nets"]))
    frozen = [first["frozen"][i] or base["frozen"][i] for i in range(k)]
    nets = [first["nets"][i] if first["nets"][i] == base["nets"][i]
            else f"{first['nets'][i]} vs {base['nets'][i]}" for i in range(k)]
    test_images = base.get("test_images")
    trained = [i for i in range(k) if not frozen[i]]
    for metric in metrics:
        for key, label in _quantities(nets, frozen, focus):
            granularity = _granularity(key, trained, test_images) if metric == "accuracy" and test_images \
                else None
            kept, diffs = [], []
            for s in seeds:
                a = _value(by_seed[arm][s], metric, key, trained)
                b = _value(by_seed[baseline][s], metric, key, trained)
                if a is not None and b is not None:
                    kept.append(s)
                    diffs.append(a - b)
            out["comparisons"].append({
                "metric": metric, "quantity": key, "label": label, "seeds": kept, "per_seed": diffs,
                "granularity": granularity, **paired_interval(diffs, granularity=granularity, target=target)})
    return out


def comparison(pair, quantity, metric=None):
    """The comparison of ``pair`` for ``quantity`` (``member_mean``, ``ensemble``,
    ``member_K``) and ``metric`` (default: the pair's first)."""
    for c in pair["comparisons"]:
        if c["quantity"] == quantity and (metric is None or c["metric"] == metric):
            return c
    raise KeyError(f"{pair['arm']} - {pair['baseline']} has no comparison {quantity} ({metric}).")


@functools.lru_cache(maxsize=None)
def net_parameters(net, num_classes, input_shape):
    """The parameter count (``count_params``) of network ``net`` built afresh."""
    from dml_tf import nets as dml_nets

    return int(dml_nets.build(net, num_classes=num_classes, input_shape=input_shape, seed=0).count_params())


def member_parameters(entry):
    """Each member's parameter count: results.json's ``"parameters"``, else counted on a
    freshly built member of its network (an earlier results.json does not record it)."""
    shape = tuple(entry["input_shape"] or (32, 32, 3))
    return [net_parameters(net, entry["data"].get("classes", 10), shape) if count is None else count
            for net, count in zip(entry["nets"], entry["parameters"])]


def resolve_focus(focus_member, entries, baseline):
    """``{"member", "label", "why"}`` of the member whose comparisons come first, or None:
    ``focus_member`` when given; else, when the members are different networks, the one
    with the fewest parameters (the compact member); else None (the member mean first)."""
    base = next((e for e in entries if e["arm"] == baseline), None)
    if base is None:
        return None
    nets = base["nets"]
    if focus_member is not None:
        if not 0 <= focus_member < len(nets):
            from dml_tf.config import ConfigError

            raise ConfigError(f"--focus_member={focus_member}: the cohort has members 0 to "
                              f"{len(nets) - 1} ({', '.join(map(str, nets))}).")
        return {"member": focus_member, "label": member_label(nets, focus_member), "why": "--focus_member"}
    if len(set(nets)) < 2:
        return None
    counts = member_parameters(base)
    k = int(np.argmin(counts))
    return {"member": k, "label": member_label(nets, k), "parameters": counts,
            "why": "the member with the fewest parameters (" + ", ".join(
                f"{member_label(nets, i)}: {c:,}" for i, c in enumerate(counts)) + ")"}


def _diverged_entry(model_dir, arm, seed):
    from dml_tf import run_dir

    record = run_dir.read_diverged(model_dir)
    return None if record is None else {"arm": arm, "seed": seed, "run_dir": f"{arm}/seed_{seed}",
                                        "outcome": "diverged", "error": record.get("error")}


def build(runs, baseline, focus_member=None, target=DEFAULT_TARGET):
    """The report of the finished ``runs`` (:class:`dml_tf.study.PlannedRun`)."""
    from dml_tf import run_dir

    entries, diverged = [], []
    for r in runs:
        if run_dir.is_finished(r.config.model_dir):
            results = run_dir.read_results(r.config.model_dir)
            evaluation = run_dir.read_eval(r.config.model_dir) \
                if r.config.dataset in RETRIEVAL_DATASETS else None
            entries.append(run_entry(results, r.arm, r.seed, evaluation))
        elif (d := _diverged_entry(r.config.model_dir, r.arm, r.seed)) is not None:
            diverged.append(d)
    arms = list(dict.fromkeys(r.arm for r in runs))
    config = runs[0].config
    metrics = metrics_of(config.dataset)
    focus = resolve_focus(focus_member, entries, baseline)
    return {
        "setting": {"dataset": config.dataset, "nets": list(config.nets), "epochs": config.epochs,
                    "train_per_class": config.train_per_class, "data_dir": config.data_dir},
        "confidence": CONFIDENCE, "min_seeds": MIN_SEEDS, "metrics": list(metrics),
        "target_halfwidth": target, "focus": focus,
        "planned_runs": len(runs),
        "finished_runs": len(entries),
        "diverged_runs": len(diverged),
        "arms": {a: arm_summary([e for e in entries if e["arm"] == a], metrics,
                                [d for d in diverged if d["arm"] == a]) for a in arms},
        "paired": [paired(entries, a, baseline, metrics, None if focus is None else focus["member"], target)
                   for a in arms if a != baseline],
        "runs": entries,
        "diverged": diverged,
    }


def widest_halfwidth(report):
    """The largest half-width over every comparison of ``report``; inf while one has fewer
    than :data:`MIN_SEEDS` seeds (what ``--target_halfwidth`` stops on: the width only)."""
    widths = [c["half_width"] if c["n"] >= MIN_SEEDS and c["half_width"] is not None else math.inf
              for pair in report["paired"] for c in pair["comparisons"]]
    return max(widths, default=math.inf)


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


def verdict(pair, c):
    """One plain sentence: does the study resolve ``arm - baseline`` on comparison ``c``?"""
    head = f"{pair['arm']} - {pair['baseline']}, {c['label']}, {METRIC_NAMES[c['metric']]}"
    if c["n"] == 0:
        return f"{head}: no seed finished in both arms yet."
    coarse = ""
    if c["coarse"]:
        coarse = (f" The difference is no larger than the test set's step ({100 * c['granularity']:.2f} "
                  "points: one image): the test set is too small to measure it.")
    if c["interval"] is None:
        return (f"{head}: {100 * c['mean']:+.2f} points on one seed; a verdict needs {MIN_SEEDS} "
                f"seeds or more.{coarse}")
    low, high = (100 * v for v in c["interval"])
    ci = f"{100 * c['mean']:+.2f} points (95% CI [{low:+.2f}, {high:+.2f}], {c['n']} seeds)"
    if c["n"] < MIN_SEEDS:
        return f"{head}: {ci}: not judged, a verdict needs {MIN_SEEDS} seeds or more.{coarse}"
    if not c["judged"]:
        return (f"{head}: {ci}: not judged, every seed gives the same difference, so the interval "
                f"has width 0 and measures no spread.{coarse}")
    if c["resolved"]:
        word = "higher" if c["mean"] > 0 else "lower"
        return f"{head}: {ci}: resolved, {pair['arm']} is {word}.{coarse}"
    return f"{head}: {ci}: NOT resolved, the interval includes 0.{coarse}"


def verdict_lines(report):
    lines = [f"Study: {report['finished_runs']}/{report['planned_runs']} runs finished"
             + (f", {report['diverged_runs']} diverged." if report["diverged_runs"] else ".")]
    for pair in report["paired"]:
        lines += [verdict(pair, c) for c in pair["comparisons"]]
    lines += [f"{d['arm']}, seed {d['seed']}: diverged ({d['error']})" for d in report["diverged"]]
    return "\n".join(lines)


def _score_cells(a, metric, width):
    s = a["scores"][metric]
    members = [_mean_std(m) + (" (frozen)" if i < len(a["frozen"]) and a["frozen"][i] else "")
               for i, m in enumerate(s["members"])]
    return members + ["-"] * (width - len(members)) + [_mean_std(s["member_mean"]), _mean_std(s["ensemble"])]


def _arm_table(report, width):
    metrics = report["metrics"]
    nets = report["setting"]["nets"]
    header = ["arm", "seeds", "diverged"]
    for metric in metrics:
        tag = "" if metric == "accuracy" else f" {metric}"
        header += [member_label(nets, i) + tag for i in range(width)] + [f"member mean{tag}", f"ensemble{tag}"]
    header += ["last-epoch train acc (augmented)", "train acc (clean)", "train CE (clean)",
               "train entropy", "wall time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for arm, a in report["arms"].items():
        cells = [arm, str(len(a["seeds"])), str(len(a["diverged"]))]
        for metric in metrics:
            cells += _score_cells(a, metric, width)
        cells += [_members_mean(a["final_train_accuracy"]), _members_mean(a["train_fit_accuracy"]),
                  _members_mean(a["train_fit_cross_entropy"], 1, 4),
                  _members_mean(a["train_mean_entropy"], 1, 4), _mean_std(a["wall_time_s"], 1, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _points(value, sign=True):
    return "-" if value is None else (f"{100 * value:+.2f}" if sign else f"{100 * value:.2f}")


def _paired_table(report):
    target = 100 * report["target_halfwidth"]
    lines = [f"| difference | measure | per seed (points) | mean | sd | 95% CI | smallest resolvable (±) "
             f"| seeds for ±{target:.2f} |", "|---" * 8 + "|"]
    for pair in report["paired"]:
        for c in pair["comparisons"]:
            per_seed = ", ".join(f"{s}: {100 * v:+.2f}" for s, v in zip(c["seeds"], c["per_seed"]))
            ci = "-" if c["interval"] is None else f"[{100 * c['interval'][0]:+.2f}, {100 * c['interval'][1]:+.2f}]"
            tag = "" if c["metric"] == "accuracy" else f", {c['metric']}"
            needed = c["seeds_for_target"] if c["seeds_for_target"] is not None else (
                "-" if c["std"] is None else f"> {SEEDS_LIMIT}")
            lines.append(f"| {pair['arm']} - {pair['baseline']} | {c['label']}{tag} | {per_seed or '-'} | "
                         f"{_points(c['mean'])} | {_points(c['std'], False)} | {ci} | "
                         f"{_points(c['half_width'], False)} | {needed} |")
    return lines


def _notes(report):
    notes = []
    focus = report["focus"]
    if focus:
        notes.append(f"Comparisons of {focus['label']} come first: {focus['why']}.")
    for arm, a in report["arms"].items():
        teachers = [member_label(a["nets"], i) for i, f in enumerate(a["frozen"]) if f]
        if teachers:
            notes.append(f"{arm}: {', '.join(teachers)} is a frozen teacher (not trained in the run): "
                         "not compared, and not in its member mean (its ensemble includes it).")
    return notes


def markdown(report):
    s = report["setting"]
    subset = f", {s['train_per_class']} training images per class" if s["train_per_class"] else ""
    width = max((len(a["nets"]) for a in report["arms"].values()), default=0)
    unit = "in %" if report["metrics"] == ["accuracy"] else "mAP and rank-1 (single query) in %"
    diverged = f", {report['diverged_runs']} diverged" if report["diverged_runs"] else ""
    lines = [f"# Study: {', '.join(s['nets'])} on {s['dataset']}{subset}, {s['epochs']} epochs", "",
             f"{report['finished_runs']} of {report['planned_runs']} runs finished{diverged}. Test "
             f"{'accuracy ' if unit == 'in %' else ''}{unit}, mean ± sample std over seeds; training fit "
             "without augmentation, in inference mode; entropy in nats.", ""]
    lines += [f"- {note}" for note in _notes(report)] + ([""] if _notes(report) else [])
    lines += _arm_table(report, width)
    lines += ["", "## Paired by seed (same initial weights and data order)", "",
              f"sd: the sample standard deviation of the paired differences. Smallest resolvable: the "
              f"half-width t(0.975, n-1) · sd / √n at this study's n seeds. Seeds for ±"
              f"{100 * report['target_halfwidth']:.2f}: the smallest n ≥ {MIN_SEEDS} whose half-width "
              "is at most that, using the observed sd (an estimate: the true sd may be larger).", ""]
    lines += _paired_table(report)
    lines += ["", "## Verdict", ""] + [f"- {line}" for line in verdict_lines(report).splitlines()[1:]]
    lines += ["", "## Runs", "", "| arm | seed | members | ensemble | run |", "|---|---|---|---|---|"]
    main = report["metrics"][0]
    for e in report["runs"]:
        scores = e["scores"][main]
        lines.append(f"| {e['arm']} | {e['seed']} | {' / '.join(_pct(v) for v in scores['members'])} | "
                     f"{_pct(scores['ensemble'])} | {e['run_dir']} |")
    for d in report["diverged"]:
        lines.append(f"| {d['arm']} | {d['seed']} | diverged | - | {d['run_dir']} |")
    return "\n".join(lines) + "\n"


def figure(report):
    """Left: per-epoch test accuracy (member mean) of every run, a colour per arm.
    Right: the paired differences per seed of the main metric and their mean with its
    95% interval, per comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = report["paired"]
    main = report["metrics"][0]
    count = max((sum(c["metric"] == main for c in p["comparisons"]) for p in pairs), default=1)
    fig, (curves, diffs) = plt.subplots(1, 2, figsize=(11 + 0.5 * max(0, count * len(pairs) - 6), 4.2))
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
    if curves.get_legend_handles_labels()[0]:
        curves.legend(fontsize=8)
    ticks, names = [], []
    for p, pair in enumerate(pairs):
        for m, c in enumerate(c for c in pair["comparisons"] if c["metric"] == main):
            x = p * (count + 1) + m
            ticks.append(x)
            names.append(f"{pair['arm']}\n- {pair['baseline']}\n{c['label'].replace(' (', chr(10) + '(')}")
            diffs.scatter([x] * len(c["per_seed"]), [100 * v for v in c["per_seed"]],
                          color=colours[pair["arm"]], alpha=0.7, s=18)
            if c["interval"] is not None:
                low, high = (100 * v for v in c["interval"])
                diffs.errorbar([x + 0.25], [100 * c["mean"]], yerr=[[100 * c["mean"] - low], [high - 100 * c["mean"]]],
                               fmt="s", color="black", capsize=4, markersize=4)
    diffs.axhline(0, color="grey", lw=0.8)
    diffs.set_xticks(ticks, names, fontsize=6)
    diffs.set(ylabel=f"difference (points, {METRIC_NAMES[main]})",
              title="Paired differences per seed (mean, 95% CI)")
    fig.tight_layout()
    return fig


def write(runs, study_dir, baseline, log=None, focus_member=None, target=DEFAULT_TARGET):
    """Builds the report of ``runs`` and writes study.json, study.md and study.png in
    ``study_dir`` atomically; returns the report."""
    import matplotlib.pyplot as plt

    from dml_tf.io_utils import atomic_savefig, atomic_write_bytes, atomic_write_json

    report = build(runs, baseline, focus_member, target)
    atomic_write_json(os.path.join(study_dir, "study.json"), report)
    atomic_write_bytes(os.path.join(study_dir, "study.md"), markdown(report).encode())
    fig = figure(report)
    atomic_savefig(fig, os.path.join(study_dir, "study.png"), dpi=110)
    plt.close(fig)
    if log:
        log(f"Wrote {os.path.join(study_dir, 'study.json')}, study.md and study.png")
    return report
