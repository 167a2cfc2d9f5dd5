r"""Our numbers next to the paper's: a Markdown table of finished runs (Tables 2-5).

    python -m tools.report --runs_dir=runs --output=report.md

Every folder under ``--runs_dir`` (at any depth) holding a ``results.json`` written by
``python -m dml_tf.train`` is one run. Its ``config`` (dataset, nets, mode, pretrained,
entropy_weight, feature_l2_weight) picks the paper cell(s) it reproduces:

* Table 2 (CIFAR-10/100 top-1): a dml run of two of resnet32 / mobilenet / wrn_28_10
  (the pair in the paper's order or swapped); an independent run of any of these nets
  (the paper's independent number depends only on the net);
* Table 3 (Market-1501, mobilenet x2, average of the members, SQ/MQ mAP and rank-1,
  with and without ImageNet pretraining) and Table 4/5: these need the run's
  ``eval.json`` from ``python -m dml_tf.evaluate``;
* Table 4: distill runs (the student = last net) on CIFAR-100 (top-1) and Market (mAP);
  Market dml/independent per-member mAP of inception_v1+mobilenet and mobilenet x2;
* Table 5: independent + entropy_weight > 0 ("Independent, Entropy"), dml +
  feature_l2_weight > 0 ("DML, L2"), mobilenet x2 on Market-1501, no pretraining.

Our values are in % (results.json and eval.json store fractions); ``diff`` = ours - paper.
Runs with no paper counterpart are listed after the table. Writes ``--output`` (Markdown)
plus ``.json`` (the rows) and, when some run matches a paper cell, ``.png`` (ours vs paper
scatter) beside it, atomically. The paper's numbers (Zhang et al., "Deep Mutual Learning",
CVPR 2018, Tables 2-5) are in ``dml_tf/paper.py``.
"""

import os
import sys

if __name__ == "__main__" and not __package__:  # started as python tools/NAME.py
    sys.exit(f"Run it from the repository root as: python -m tools.{os.path.basename(__file__)[:-3]}")

from absl import app

from dml_tf import cli_flags
from dml_tf.paper import SOURCE, TABLE2_DML, TABLE2_INDEPENDENT, TABLE3, TABLE4_DISTILL, TABLE4_MARKET, TABLE5
from tools import _common

NO_MATCH = ("No run matches a setting of the paper's Tables 2-5 (nets, dataset and mode), so there "
            "is nothing to plot against the paper.")
NO_RESULT = ("No matched run has a result yet (a Market-1501 run needs the eval.json of "
             "python -m dml_tf.evaluate), so there is nothing to plot against the paper.")


def no_plot_reason(rows):
    """Why there is no ours-vs-paper plot (None when there is one)."""
    if not rows:
        return NO_MATCH
    return None if any(r["ours"] is not None for r in rows) else NO_RESULT

TABLE3_METRICS = (("single_query", "mAP", "SQ mAP"), ("single_query", "rank1", "SQ R1"),
                  ("multi_query", "mAP", "MQ mAP"), ("multi_query", "rank1", "MQ R1"))


def define_flags():
    cli_flags.define("string", "runs_dir", None, "Folder holding finished runs (any depth).")
    cli_flags.define("string", "output", None, "Markdown file to write (plus .json/.png beside it).")


def find_runs(runs_dir):
    """Sorted folders under ``runs_dir`` (itself included) holding a finished run."""
    from dml_tf import run_dir

    found = []
    for root, dirs, files in os.walk(runs_dir):
        dirs[:] = sorted(d for d in dirs if d not in (run_dir.BACKUP_DIR, run_dir.LOGS_DIR))
        if run_dir.RESULTS_FILE in files:
            found.append(root)
    return sorted(found)


def _pct(x):
    return None if x is None else 100.0 * float(x)


def _member_accuracy(results, k):
    from dml_tf import run_dir

    return _pct(run_dir.member_accuracy(results, k))


def _get(d, *keys):
    for key in keys:
        if not isinstance(d, dict) or d.get(key) is None:
            return None
        d = d[key]
    return d


def match_run(results, eval_results=None):
    """Rows ``{"table", "setting", "metric", "ours", "paper"}`` of one run (may be empty)."""
    config = results.get("config") or {}
    dataset, mode = config.get("dataset"), config.get("mode")
    nets = tuple(config.get("nets") or ())
    entropy = float(config.get("entropy_weight") or 0)
    l2 = float(config.get("feature_l2_weight") or 0)
    plain = entropy == 0 and l2 == 0 and config.get("mimicry", "kl") in ("kl", "js")
    pretrained = bool(config.get("pretrained"))
    semi = float(config.get("labeled_fraction") or 1.0) < 1 or config.get("labeled_ids")
    rows = []

    def add(table, setting, metric, ours, paper):
        rows.append({"table": table, "setting": setting, "metric": metric, "ours": ours, "paper": paper})

    if semi:
        return rows
    if dataset in TABLE2_INDEPENDENT and plain:
        if mode == "independent" and all(n in TABLE2_INDEPENDENT[dataset] for n in nets):
            for k, net in enumerate(nets):
                add("2", f"{dataset} independent", f"net{k + 1} {net} top-1",
                    _member_accuracy(results, k), TABLE2_INDEPENDENT[dataset][net])
        elif mode == "dml" and len(nets) == 2:
            order = (0, 1) if nets in TABLE2_DML else (1, 0)
            key = tuple(nets[i] for i in order)
            if key in TABLE2_DML:
                paper = TABLE2_DML[key][dataset]
                for k, net in enumerate(nets):
                    add("2", f"{dataset} DML {nets[0]}+{nets[1]}", f"net{k + 1} {net} top-1",
                        _member_accuracy(results, k), paper[order.index(k)])
    if mode == "distill" and len(nets) == 2 and (dataset, *nets) in TABLE4_DISTILL:
        metric, paper = TABLE4_DISTILL[(dataset, *nets)]
        if dataset == "market1501":
            student = [m for m in (eval_results or {}).get("members") or [] if m.get("index") == 1]
            ours = _pct(_get(student[0], "single_query", "mAP")) if student else None
        else:
            ours = _member_accuracy(results, 1)
        add("4", f"{dataset} distill {nets[0]} -> {nets[1]}", f"student {nets[1]} {metric}", ours, paper)
    if dataset == "market1501" and mode in ("dml", "independent"):
        market_nets = nets == ("mobilenet", "mobilenet")
        if market_nets and plain:
            for (protocol, key, name), paper in zip(TABLE3_METRICS, TABLE3[(mode, pretrained)]):
                add("3", f"market1501 {mode} mobilenet x2, pretrain {'yes' if pretrained else 'no'}",
                    f"mean {name}", _pct(_get(eval_results, "mean", protocol, key)), paper)
        if nets in TABLE4_MARKET and plain and not pretrained:
            members = (eval_results or {}).get("members") or []
            for k, paper in enumerate(TABLE4_MARKET[nets][mode]):
                entry = [m for m in members if m.get("index") == k]
                add("4", f"market1501 {mode} {nets[0]}+{nets[1]}", f"net{k + 1} {nets[k]} SQ mAP",
                    _pct(_get(entry[0], "single_query", "mAP")) if entry else None, paper)
        variant = ("independent+entropy" if mode == "independent" and entropy > 0 and l2 == 0 else
                   "dml+l2" if mode == "dml" and l2 > 0 and entropy == 0 else None)
        if market_nets and variant and not pretrained:
            for (protocol, key, name), paper in zip(TABLE3_METRICS[:2], TABLE5[variant]):
                add("5", f"market1501 {variant} mobilenet x2", f"mean {name}",
                    _pct(_get(eval_results, "mean", protocol, key)), paper)
    return rows


def _fmt(x, signed=False):
    if x is None:
        return "—"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def build(runs_dir, run_dirs=None):
    """``(matched rows, unmatched runs)`` for every run under ``runs_dir`` (``run_dirs``:
    what :func:`find_runs` found there, when it was already called)."""
    from dml_tf import run_dir as run_folder

    rows, unmatched = [], []
    for run_dir in find_runs(runs_dir) if run_dirs is None else run_dirs:
        with _common.usage_errors():
            results, eval_results = run_folder.read_results(run_dir), run_folder.read_eval(run_dir)
        name = os.path.relpath(run_dir, runs_dir)
        matched = match_run(results, eval_results)
        for row in matched:
            row["run"] = name
            row["diff"] = (None if row["ours"] is None or row["paper"] is None
                           else row["ours"] - row["paper"])
        rows.extend(matched)
        if not matched:
            config = results.get("config") or {}
            accs = [_member_accuracy(results, k) for k in range(len(results.get("members") or []))]
            unmatched.append({"run": name, "dataset": config.get("dataset"), "mode": config.get("mode"),
                              "nets": list(config.get("nets") or []), "member_top1": accs,
                              "ensemble_top1": _pct(results.get("ensemble_test_accuracy"))})
    rows.sort(key=lambda r: (r["table"], r["setting"], r["run"], r["metric"]))
    return rows, unmatched


def to_markdown(rows, unmatched):
    lines = [f"Paper numbers: {SOURCE}. Values in %; diff = ours - paper.", "",
             "| Table | Setting | Run | Metric | Ours | Paper | Diff |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['table']} | {r['setting']} | {r['run']} | {r['metric']} | "
                     f"{_fmt(r['ours'])} | {_fmt(r['paper'])} | {_fmt(r['diff'], True)} |")
    if not rows:
        lines.append("| — | no run matches a paper setting | | | | | |")
    if no_plot_reason(rows):
        lines += ["", no_plot_reason(rows)]
    if unmatched:
        lines += ["", "Runs without a counterpart in the paper:", "",
                  "| Run | Dataset | Mode | Nets | Member top-1 | Ensemble top-1 |", "|---|---|---|---|---|---:|"]
        for u in unmatched:
            lines.append(f"| {u['run']} | {u['dataset']} | {u['mode']} | {','.join(u['nets'])} | "
                         f"{' / '.join(_fmt(a) for a in u['member_top1'])} | {_fmt(u['ensemble_top1'])} |")
    return "\n".join(lines) + "\n"


def compute(runs_dir, output=None, log=print):
    """Builds the report; writes ``output`` (+ .json/.png) when given; returns the Markdown."""
    from dml_tf.io_utils import atomic_write_bytes, atomic_write_json

    if not runs_dir:
        raise app.UsageError("--runs_dir is required: a folder of finished dml_tf.train runs.")
    if not os.path.isdir(runs_dir):
        raise app.UsageError(f"--runs_dir={runs_dir} does not exist.")
    run_dirs = find_runs(runs_dir)
    if not run_dirs:
        raise app.UsageError(f"No results.json under --runs_dir={runs_dir}: no finished run.")
    rows, unmatched = build(runs_dir, run_dirs)
    text = to_markdown(rows, unmatched)
    log(text)
    if output:
        stem = os.path.splitext(output)[0]
        atomic_write_bytes(output, text.encode("utf-8"))
        payload = {"source": SOURCE, "units": "%", "rows": rows, "unmatched": unmatched}
        if no_plot_reason(rows):  # no plot (the Markdown says why), nor an earlier one left behind
            atomic_write_json(f"{stem}.json", payload)
            if os.path.exists(f"{stem}.png"):
                os.remove(f"{stem}.png")
            log(f"Wrote {output} and {stem}.json; no plot.")
            return text
        pts = [r for r in rows if r["ours"] is not None]
        fig, (ax,) = _common.figure(1)
        for i, table in enumerate(sorted({r["table"] for r in pts})):
            sel = [r for r in pts if r["table"] == table]
            ax.scatter([r["paper"] for r in sel], [r["ours"] for r in sel], color=f"C{i}", label=f"Table {table}")
        lo = min(min(r["paper"], r["ours"]) for r in pts) - 1
        hi = max(max(r["paper"], r["ours"]) for r in pts) + 1
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.legend(fontsize=7)
        ax.set(xlabel="paper (%)", ylabel="ours (%)", title="Ours vs paper")
        _common.write_outputs(os.path.dirname(os.path.abspath(output)), os.path.basename(stem), payload, fig)
        log(f"Wrote {output}, {stem}.json and {stem}.png")
    return text


if __name__ == "__main__":
    _common.run_tool(compute, define_flags)
