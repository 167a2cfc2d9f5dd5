r"""Finished runs side by side: test accuracy of each member and of the ensemble, how
large each difference is against the test set, and the per-epoch test accuracy curves.

    python -m dml_tf.compare runs/quickstart_dml runs/quickstart_independent [--output_dir=DIR]

Reads RUN_DIR/results.json of every run (and test_predictions.npz, the predicted class
of every test image, which dml_tf.train writes beside it). The first run is the
reference: each other run's accuracies are compared with it, row by row (member k with
member k, ensemble with ensemble):

* difference in points and in images (on a test set of n images one image is 100/n
  points);
* paired, when both runs have test_predictions.npz for the same test images: the images
  only the first run gets right (b) and only the other gets right (c), and the exact
  McNemar test, p = P(a fair coin over b + c images splits at least as unevenly);
* otherwise the standard error of the difference of two independent binomial
  proportions, sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2).

p < 0.05 reads "the test set resolves it", else "within test-set noise". Both measure
the test set's sampling noise only: one training seed per run says nothing about
seed-to-seed variation (train again with other --seed values to see it).

Prints the table and writes into --output_dir (default: the folder that holds the first
run) compare.json and compare.png (test accuracy per epoch: a colour per run, the
ensemble solid, members dashed), atomically.
"""

import io
import math
import os

import numpy as np
from absl import app, flags

from dml_tf import run_dir as run_folder
from dml_tf.errors import RunFileError
from dml_tf.io_utils import atomic_savefig, atomic_write_bytes, atomic_write_json

FLAGS = flags.FLAGS
PREDICTIONS_FILE = run_folder.PREDICTIONS_FILE
SIGNIFICANCE = 0.05


# ------------------------------------------------------------------ predictions of a run


def test_predictions(cohort, test):
    """``{"labels": (N,), "members": (K, N), "ensemble": (N,)}`` int32: the labels of the
    ``(images, labels)`` batches of ``test`` and the class each member and the ensemble
    (mean of the members' probabilities, as ``ensemble_accuracy``) predict."""
    labels = np.concatenate([np.asarray(y).reshape(-1) for _, y in test])
    probs = cohort.predict(test, verbose=0)  # (K, N, classes)
    return {"labels": labels.astype(np.int32), "members": probs.argmax(-1).astype(np.int32),
            "ensemble": probs.mean(0).argmax(-1).astype(np.int32)}


def save_test_predictions(cohort, test, path):
    """Writes :func:`test_predictions` to ``path`` (.npz) atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **test_predictions(cohort, test))
    atomic_write_bytes(path, buffer.getvalue())


# ------------------------------------------------------------------------- statistics


def mcnemar_p_value(b, c):
    """Exact two-sided McNemar p-value: ``min(1, 2 P(X <= min(b, c)))``, X ~ Bin(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def accuracy_standard_error(accuracy, n):
    """Binomial standard error ``sqrt(p (1 - p) / n)`` of an accuracy on ``n`` images."""
    return math.sqrt(accuracy * (1 - accuracy) / n) if n else float("nan")


# ------------------------------------------------------------------------------- runs


def _fraction(value):
    return None if value is None else float(value)


def read_run(run_dir):
    """One run as ``{"name", "run_dir", "mode", "dataset", "test_size", "rows", "curves",
    "predictions"}``; ``rows``: ``{"member k": {"net", "accuracy", "correct"}, "ensemble":
    ...}``; ``curves``: the same keys, per-epoch test accuracy ``(epochs, values)``.
    UsageError when the folder is not a finished dml_tf.train run."""
    try:
        results = run_folder.read_results(run_dir)
    except RunFileError as e:
        raise app.UsageError(str(e)) from None
    members = run_folder.member_entries(results)
    if not members:
        raise app.UsageError(f"{run_folder.results_path(run_dir)} lists no members: "
                             "not a results.json of dml_tf.train.")
    config = results.get("config") or {}
    test_size = (results.get("dataset") or {}).get("test_size") or None
    predictions = None
    path = os.path.join(run_dir, PREDICTIONS_FILE)
    if os.path.isfile(path):
        with np.load(path) as data:
            predictions = {key: data[key] for key in data.files}
        test_size = len(predictions["labels"])

    rows = {}
    for entry in members:
        k = entry["index"]
        accuracy = run_folder.member_accuracy(results, k)
        correct = None
        if predictions is not None and k < len(predictions["members"]):
            correct = int(np.sum(predictions["members"][k] == predictions["labels"]))
        elif accuracy is not None and test_size:
            correct = int(round(accuracy * test_size))
        rows[f"member {k}"] = {"net": entry.get("net"), "accuracy": accuracy, "correct": correct}
    accuracy = _fraction(results.get("ensemble_test_accuracy"))
    if accuracy is not None:
        correct = (int(np.sum(predictions["ensemble"] == predictions["labels"])) if predictions is not None
                   else int(round(accuracy * test_size)) if test_size else None)
        rows["ensemble"] = {"net": None, "accuracy": accuracy, "correct": correct}

    # results.json holds the epochs of the last session: a resumed run's end of training.
    history = results.get("history") or {}
    total = int(config.get("epochs") or 0)
    curves = {}
    for key, name in [(f"val_accuracy_{e['index']}", f"member {e['index']}") for e in members] + \
            [("val_ensemble_accuracy", "ensemble")]:
        values = [float(v) for v in history.get(key) or []]
        if values:
            first = max(total - len(values), 0) + 1
            curves[name] = (list(range(first, first + len(values))), values)
    return {"name": os.path.basename(os.path.normpath(run_dir)), "run_dir": run_dir,
            "mode": config.get("mode"), "dataset": config.get("dataset"), "test_size": test_size,
            "rows": rows, "curves": curves, "predictions": predictions}


def _pair_vectors(run, row):
    """The per-image predictions behind ``row`` of ``run`` (None when not saved)."""
    predictions = run["predictions"]
    if predictions is None:
        return None
    if row == "ensemble":
        return predictions["ensemble"]
    k = int(row.split()[-1])
    return predictions["members"][k] if k < len(predictions["members"]) else None


def difference(reference, other, row):
    """How ``reference`` and ``other`` differ on ``row`` (dict; None if either lacks it)."""
    a, b = reference["rows"].get(row), other["rows"].get(row)
    if not a or not b or a["accuracy"] is None or b["accuracy"] is None:
        return None
    out = {"row": row, "reference": reference["name"], "other": other["name"],
           "difference": a["accuracy"] - b["accuracy"],
           "images": (a["correct"] - b["correct"]) if None not in (a["correct"], b["correct"]) else None,
           "paired": False, "reference_only": None, "other_only": None, "p_value": None,
           "standard_error": None}
    if reference["dataset"] != other["dataset"] or reference["test_size"] != other["test_size"]:
        out["note"] = "different test sets: not comparable image by image"
        return out
    x, y = _pair_vectors(reference, row), _pair_vectors(other, row)
    labels_a = reference["predictions"]["labels"] if x is not None else None
    labels_b = other["predictions"]["labels"] if y is not None else None
    if x is not None and y is not None and np.array_equal(labels_a, labels_b):
        right_a, right_b = x == labels_a, y == labels_b
        out.update(paired=True, reference_only=int(np.sum(right_a & ~right_b)),
                   other_only=int(np.sum(~right_a & right_b)))
        out["p_value"] = mcnemar_p_value(out["reference_only"], out["other_only"])
    elif reference["test_size"]:
        n = reference["test_size"]
        out["standard_error"] = math.hypot(accuracy_standard_error(a["accuracy"], n),
                                           accuracy_standard_error(b["accuracy"], n))
        z = out["difference"] / out["standard_error"] if out["standard_error"] else 0.0
        out["p_value"] = math.erfc(abs(z) / math.sqrt(2))  # two-sided, normal approximation
    return out


def compare(run_dirs):
    """``{"runs": [...], "differences": [...]}`` of the runs (the first is the reference)."""
    if not run_dirs:
        raise app.UsageError("Give the run folders to compare: python -m dml_tf.compare RUN_DIR [RUN_DIR ...].")
    runs = [read_run(d) for d in run_dirs]
    if len({run["name"] for run in runs}) < len(runs):  # same folder names: tell them apart by path
        for run in runs:
            run["name"] = os.path.normpath(run["run_dir"])
    rows = list(dict.fromkeys(row for run in runs for row in run["rows"]))
    rows.sort(key=lambda r: (r == "ensemble", int(r.split()[-1]) if r != "ensemble" else 0))
    differences = [d for other in runs[1:] for row in rows if (d := difference(runs[0], other, row))]
    return {"runs": runs, "rows": rows, "differences": differences}


# ----------------------------------------------------------------------------- output


def _pct(fraction):
    return f"{100 * fraction:.2f}"


def _images(count):
    return f"{count:+d} image{'' if abs(count) == 1 else 's'}"


def run_letter(i):
    """The table's short name of run ``i``: A, B, ..."""
    return chr(ord("A") + i) if i < 26 else f"R{i + 1}"


def verdict(diff, reference="the first run", other="the other"):
    """One sentence on whether the test set resolves ``diff`` (runs called as given)."""
    if diff.get("note"):
        return diff["note"]
    p = diff["p_value"]
    if p is None:
        return "no test-set size known: no estimate of its noise"
    if diff["paired"]:
        b, c = diff["reference_only"], diff["other_only"]
        basis = (f"{b} image{'s' if b != 1 else ''} right only in {reference}, {c} only in {other}; "
                 f"McNemar exact p = {p:.2g}")
    else:
        basis = f"standard error of the difference {100 * diff['standard_error']:.2f} points, p ~ {p:.2g}"
    judged = "the test set resolves it" if p < SIGNIFICANCE else "within test-set noise"
    return f"{basis}: {judged}"


def format_report(comparison):
    """The table (runs as columns A, B, ...) and a statement on each difference, as text."""
    runs, rows = comparison["runs"], comparison["rows"]
    sizes = {run["test_size"] for run in runs}
    lines = []
    if len(sizes) == 1 and None not in sizes:
        n = sizes.pop()
        datasets = ", ".join(sorted({str(run["dataset"]) for run in runs}))
        lines.append(f"Test accuracy in % (correct images) on {datasets}: {n} test images, "
                     f"1 image = {100 / n:.2f} points.")
    else:
        lines.append("Test accuracy in % (correct images); the runs' test sets differ.")
    letters = [run_letter(i) for i in range(len(runs))]
    lines += [f"  {letter} = {run['name']} ({run['mode']})" for letter, run in zip(letters, runs)]
    lines.append("")

    def label(row):
        nets = {run["rows"][row]["net"] for run in runs if run["rows"].get(row, {}).get("net")}
        return f"{row} ({nets.pop()})" if len(nets) == 1 else row

    def cell(run, row):
        entry = run["rows"].get(row)
        if not entry or entry["accuracy"] is None:
            return "-"
        count = "" if entry["correct"] is None else f" ({entry['correct']})"
        return _pct(entry["accuracy"]) + count

    by_key = {(d["other"], d["row"]): d for d in comparison["differences"]}
    table = [[""] + letters + [f"{letters[0]} - {letter}" for letter in letters[1:]]]
    for row in rows:
        diffs = []
        for run in runs[1:]:
            d = by_key.get((run["name"], row))
            diffs.append("-" if d is None else f"{100 * d['difference']:+.2f}"
                         + ("" if d["images"] is None else f" ({_images(d['images'])})"))
        table.append([label(row)] + [cell(run, row) for run in runs] + diffs)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for letter, run in zip(letters[1:], runs[1:]):
        found = [d for d in (by_key.get((run["name"], row)) for row in rows) if d is not None]
        lines += ["", f"{letters[0]} vs {letter}:"]
        lines += [f"  {d['row']}: {verdict(d, letters[0], letter)}." for d in found]
        tested = [d for d in found if d["p_value"] is not None and not d.get("note")]
        if tested:
            resolved = sum(d["p_value"] < SIGNIFICANCE for d in tested)
            lines.append(f"  {resolved} of these {len(tested)} differences exceed the test set's noise "
                         f"(p < {SIGNIFICANCE:g}).")
    lines.append("")
    lines.append("This is the test set's sampling noise only: one training seed per run does not show\n"
                 "seed-to-seed variation (train again with other --seed values to see it).")
    return "\n".join(lines)


def plot_curves(comparison, path):
    """Per-epoch test accuracy of every run (a colour each; ensemble solid, members
    dashed) to ``path``; returns False (nothing written) when no run has curves."""
    runs = comparison["runs"]
    if not any(run["curves"] for run in runs):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    styles = ["--", ":", "-.", (0, (5, 1)), (0, (1, 3))]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, run in enumerate(runs):
        for j, (row, (epochs, values)) in enumerate(run["curves"].items()):
            ensemble = row == "ensemble"
            ax.plot(epochs, [100 * v for v in values], color=f"C{i}",
                    linestyle="-" if ensemble else styles[j % len(styles)],
                    linewidth=2.2 if ensemble else 1.2, marker="o" if ensemble else None, markersize=3,
                    label=f"{run['name']} ({run['mode']}): {row}")
    sizes = {run["test_size"] for run in runs}
    title = "Test accuracy per epoch" + (f" ({sizes.pop()} test images)" if len(sizes) == 1 and None not in sizes
                                         else "")
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=title)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return True


def to_json(comparison):
    """compare.json's content (predictions left out; fractions in [0, 1])."""
    runs = [{key: run[key] for key in ("name", "run_dir", "mode", "dataset", "test_size", "rows")}
            | {"curves": {row: {"epochs": e, "test_accuracy": v} for row, (e, v) in run["curves"].items()},
               "paired_predictions": run["predictions"] is not None}
            for run in comparison["runs"]]
    return {"runs": runs, "rows": comparison["rows"], "differences": comparison["differences"],
            "significance_level": SIGNIFICANCE,
            "values": "accuracies and differences are fractions; correct and images are image counts"}


def write(comparison, output_dir, log=print):
    """Writes compare.json and compare.png (when there are curves) into ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, "compare.json")
    png_path = os.path.join(output_dir, "compare.png")
    atomic_write_json(json_path, to_json(comparison))
    if plot_curves(comparison, png_path):
        log(f"Wrote {json_path} and {png_path}")
    else:
        log(f"Wrote {json_path} (no per-epoch test accuracy in these runs: no plot)")


def define_flags():
    from dml_tf import cli_flags

    cli_flags.define_compare_flags()


def main(argv):
    run_dirs = argv[1:]
    comparison = compare(run_dirs)
    print(format_report(comparison))
    output_dir = FLAGS.output_dir or os.path.dirname(os.path.abspath(run_dirs[0]))
    try:
        write(comparison, output_dir)
    except OSError as e:
        raise app.UsageError(f"--output_dir={output_dir} is not writable ({e.strerror}).") from None
    return 0


def run():
    from dml_tf import cli

    define_flags()
    cli.run(main, doc=__doc__)


if __name__ == "__main__":
    run()
