r"""Re-id evaluation of a trained cohort on Market-1501 (Table 3-5, Fig. 3).

    python -m dml_tf.evaluate --dataset=market1501 --data_dir=.../Market-1501-v15.09.15 \
        --model_dir=runs/market1501_mobilenet_dml [--mq_pool=mean --ap_mode=market1501]

Reads ``results.json`` of the run (``"members": [{"index", "net", "file"}]``, and its
``"config"`` for the run's data_dir / image_size; without it, the ``member_{k}.keras``
files found; :mod:`dml_tf.run_dir`), loads every member, and extracts the output of
its layer ``features`` (global average pooling, TF-slim's 'PreLogits') for ``query``,
``bounding_box_test`` and ``gt_bbox``. It then scores:

* each member alone, single query (SQ) and multi-query (MQ, ``gt_bbox`` features of the
  query's id and camera pooled by ``--mq_pool``);
* ``mean``: the average of the members' metrics (what Table 3 reports; members that
  results.json marks ``"trainable": false``, a distill run's frozen teachers, are left
  out);
* ``ensemble``: the members' features CONCATENATED (Fig. 3b, and the original code's
  evaluation).

As the Market-1501 MATLAB kit does when it loads feature matrices, every image's feature
vector (a member's, or a concatenation) is L2-normalized before pooling and Euclidean
matching (``--nol2_normalize`` to match raw features). Writes into ``--output_dir``
(default: the model dir) ``features_member{k}.npz`` (raw features, ids, cams, file names
per split), ``eval.json`` (mAP and rank-1/5/10/20 as fractions) and ``cmc.png``, and
prints a table in %.

The flags are defined by :func:`define_flags` when run as a program (importing the
module defines none; names ``dml_tf.train`` already defined are reused).
:func:`evaluate_run` does the work without flags.
"""

import io
import os
import sys

import numpy as np
from absl import app, flags, logging

from dml_tf import run_dir
from dml_tf.errors import RunFileError
from dml_tf.io_utils import atomic_write_bytes, atomic_write_json

FLAGS = flags.FLAGS
SPLITS = ("query", "gallery", "gt_bbox")
RANKS = (1, 5, 10, 20)


def define_flags():
    """Defines this tool's flags (``dml_tf.cli_flags``); returns the names it defined.
    Called by ``run()``, not at import."""
    from dml_tf import cli_flags

    return cli_flags.define_evaluate_flags()


# --------------------------------------------------------------------------------------
# Run folder.
# --------------------------------------------------------------------------------------
def read_members(model_dir):
    """``(members, run_config)`` of a training run: members as ``[{"index", "net", "file",
    "path"}]`` (those results.json lists, else the member files found), and the run's
    ``config`` (``{}`` without results.json).

    Raises ``app.UsageError`` for a missing folder, missing member files or no members.
    """
    if not model_dir:
        raise app.UsageError("--model_dir is required: the training run's folder (results.json, member_*.keras).")
    if not os.path.isdir(model_dir):
        raise app.UsageError(f"--model_dir={model_dir} does not exist.")
    results = None
    if run_dir.is_finished(model_dir):
        try:
            results = run_dir.read_results(model_dir)
        except RunFileError as error:
            raise app.UsageError(str(error)) from None
    members = run_dir.list_members(model_dir, results)
    if not members:
        raise app.UsageError(
            f"No member files in --model_dir={model_dir}: expected results.json listing members "
            "and member_{k}.keras files written by python -m dml_tf.train."
        )
    missing = [m["file"] for m in members if not os.path.isfile(m["path"])]
    if missing:
        raise app.UsageError(f"Member file(s) {missing} listed in {run_dir.results_path(model_dir)} "
                             f"are missing from {model_dir}.")
    return members, (results or {}).get("config") or {}


def _input_size(model):
    shape = model.inputs[0].shape
    if len(shape) == 4 and shape[1] is not None and shape[2] is not None:
        return int(shape[1]), int(shape[2])
    return None


def _save_npz(path, arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


# --------------------------------------------------------------------------------------
# Scoring.
# --------------------------------------------------------------------------------------
def _summary(result):
    from dml_tf.reid import cmc_at

    out = {"mAP": result["mAP"], **cmc_at(result, RANKS)}
    out["num_queries"] = result["num_queries"]
    out["num_skipped"] = result["num_skipped"]
    return out


def score_features(features, splits, mq_pool="mean", ap_mode="market1501", metric="euclidean", l2_normalize=True):
    """SQ and MQ results for one set of features.

    ``features``: ``{split: (N, D) array}`` for ``query``, ``gallery`` and optionally
    ``gt_bbox``; ``splits``: ``{split: object with ids, cams}``. Returns
    ``{"single_query": result, "multi_query": result or None}`` (full ``evaluate``
    results, CMC arrays included).
    """
    from dml_tf.reid import evaluate, pool_multi_query
    from dml_tf.reid.metrics import l2_normalize as normalize

    feats = {s: (normalize(f) if l2_normalize else f) for s, f in features.items()}
    q, g = splits["query"], splits["gallery"]
    common = dict(ap_mode=ap_mode, metric=metric)
    out = {"single_query": evaluate(feats["query"], feats["gallery"], q.ids, q.cams, g.ids, g.cams, **common)}
    out["multi_query"] = None
    if "gt_bbox" in feats and "gt_bbox" in splits:
        mq = splits["gt_bbox"]
        pooled = pool_multi_query(q.ids, q.cams, feats["gt_bbox"], mq.ids, mq.cams, mq_pool, feats["query"])
        out["multi_query"] = evaluate(pooled, feats["gallery"], q.ids, q.cams, g.ids, g.cams, **common)
    return out


def matchable_queries(query, gallery):
    """How many queries have a true match in the gallery (same person id, another
    camera, not junk): the queries the Market-1501 protocol can score."""
    cams_of = {}
    for pid, cam in zip(gallery.ids, gallery.cams):
        if pid != -1:
            cams_of.setdefault(int(pid), set()).add(int(cam))
    return sum(bool(cams_of.get(int(pid), set()) - {int(cam)}) for pid, cam in zip(query.ids, query.cams))


def _mean_of(summaries):
    keys = [k for k in summaries[0] if k not in ("num_queries", "num_skipped")]
    return {k: float(np.mean([s[k] for s in summaries])) for k in keys}


def _load_models(members, image_size=None, run_image_size=None):
    """``(models, image size)``: each member loaded, and the input size they share
    (``image_size``, else the first member's, else the run's ``run_image_size``)."""
    from dml_tf.data.market1501 import parse_image_size

    models = []
    for member in members:
        try:
            models.append(run_dir.load_member(member["path"]))  # registers dml_tf.nets' custom layers first
        except RunFileError as error:
            raise app.UsageError(str(error)) from None
    sizes = [_input_size(model) for model in models]
    if image_size is None or len(image_size) == 0:
        image_size = sizes[0] or parse_image_size(run_image_size)
    image_size = parse_image_size(image_size)
    for member, size in zip(members, sizes):
        if size is not None and size != image_size:
            raise app.UsageError(
                f"--image_size={image_size[0]},{image_size[1]} but {member['file']} takes "
                f"{size[0]}x{size[1]} images."
            )
    return models, image_size


def _load_splits(data_dir, batch_size, image_size, source, tfrecord_dir):
    """``(bundle, {split: evaluation split})`` of Market-1501; UsageError when nothing can be scored."""
    from dml_tf import data
    from dml_tf.errors import DataError

    try:
        bundle = data.load("market1501", data_dir=data_dir, batch_size=batch_size, image_size=image_size,
                           source=source, tfrecord_dir=tfrecord_dir)
    except DataError as error:
        raise app.UsageError(str(error)) from error
    splits = {s: bundle.extras[s] for s in SPLITS if s in bundle.extras}
    if not matchable_queries(splits["query"], splits["gallery"]):
        raise app.UsageError(
            f"None of the {len(splits['query'])} queries in {splits['query'].folder} has a true match in "
            f"the gallery {splits['gallery'].folder} (the same person id from another camera): there is "
            "nothing to score. Check that --data_dir holds the query and bounding_box_test folders of "
            "one Market-1501 set."
        )
    if "gt_bbox" not in splits:
        logging.warning("No gt_bbox split: multi-query results are left out.")
    return bundle, splits


def _extract(member, model, splits, output_dir, verbose):
    """``{split: features}`` of one member, also saved as ``features_member{k}.npz``."""
    from dml_tf.reid import extract_features
    from dml_tf.reid.features import feature_model

    try:
        model = feature_model(model)  # one extractor (one traced predict) for all splits
    except ValueError as error:
        raise app.UsageError(f"{member['file']}: {error}") from error
    feats, arrays = {}, {}
    for split, extra in splits.items():
        if verbose:
            print(f"member {member['index']}: extracting {split} features ({len(extra)} images)", flush=True)
        feats[split] = extract_features(model, extra.images, verbose=verbose)
        if len(feats[split]) != len(extra):
            raise RuntimeError(f"Got {len(feats[split])} {split} features for {len(extra)} images.")
        arrays[f"{split}_features"] = feats[split]
        arrays[f"{split}_ids"] = extra.ids
        arrays[f"{split}_cams"] = extra.cams
        arrays[f"{split}_filenames"] = extra.filenames
    _save_npz(os.path.join(output_dir, f"features_member{member['index']}.npz"), arrays)
    return feats


def _score_cohort(members, member_features, splits, mq_pool, **options):
    """``(eval.json's scores: members, ensemble, mean; CMC curves to plot)``."""
    results, curves = {"members": []}, {}
    for member, feats in zip(members, member_features):
        scored = score_features(feats, splits, mq_pool=mq_pool, **options)
        entry = {"index": member["index"], "net": member.get("net"), "file": member["file"]}
        entry["trainable"] = bool(member.get("trainable", True))
        entry["feature_dim"] = int(feats["query"].shape[1])
        for protocol, result in scored.items():
            entry[protocol] = None if result is None else _summary(result)
        results["members"].append(entry)
        curves[f"member {member['index']} SQ"] = scored["single_query"]["cmc"]
    concatenated = {s: np.concatenate([f[s] for f in member_features], axis=1) for s in splits}
    ensemble = score_features(concatenated, splits, mq_pool=mq_pool, **options)
    results["ensemble"] = {p: None if r is None else _summary(r) for p, r in ensemble.items()}
    results["ensemble"]["feature_dim"] = int(concatenated["query"].shape[1])
    # Mean over the members trained in this run: a distill run's frozen teachers are left out.
    averaged = [m for m in results["members"] if m["trainable"]] or results["members"]
    results["mean"] = {
        p: None if averaged[0][p] is None else _mean_of([m[p] for m in averaged])
        for p in ("single_query", "multi_query")
    }
    results["mean"]["members"] = [m["index"] for m in averaged]
    curves["ensemble SQ"] = ensemble["single_query"]["cmc"]
    if ensemble["multi_query"] is not None:
        curves[f"ensemble MQ ({mq_pool})"] = ensemble["multi_query"]["cmc"]
    return results, curves


def evaluate_run(
    model_dir,
    data_dir=None,
    output_dir=None,
    batch_size=64,
    image_size=None,
    mq_pool="mean",
    ap_mode="market1501",
    metric="euclidean",
    l2_normalize=True,
    source="auto",
    tfrecord_dir=None,
    verbose=1,
):
    """Extracts, saves and scores the features of every member of a run; returns eval.json's dict."""
    from dml_tf.reid import plot_cmc

    members, run_config = read_members(model_dir)
    output_dir = output_dir or model_dir
    models, image_size = _load_models(members, image_size, run_config.get("image_size"))
    bundle, splits = _load_splits(data_dir or run_config.get("data_dir"), batch_size, image_size, source,
                                  tfrecord_dir)
    member_features = [_extract(m, model, splits, output_dir, verbose) for m, model in zip(members, models)]
    results, curves = _score_cohort(members, member_features, splits, mq_pool=mq_pool, ap_mode=ap_mode,
                                    metric=metric, l2_normalize=l2_normalize)
    results.update(
        {
            "dataset": "market1501",
            "model_dir": os.path.abspath(model_dir),
            "data_dir": bundle.info.get("data_dir"),
            "source": bundle.info.get("source"),
            "image_size": list(image_size),
            "ap_mode": ap_mode,
            "metric": metric,
            "l2_normalize": bool(l2_normalize),
            "mq_pool": mq_pool,
            "num_members": len(members),
            "num_images": {s: len(e) for s, e in splits.items()},
            "ranks": list(RANKS),
            "values": "fractions in [0, 1]; mean = average of the members' metrics; "
            "ensemble = members' features concatenated",
        }
    )
    atomic_write_json(os.path.join(output_dir, run_dir.EVAL_FILE), results)
    plot_cmc(curves, os.path.join(output_dir, "cmc.png"), max_rank=20, title=f"Market-1501 CMC ({len(members)} members)")
    return results


def evaluate_or_reuse(model_dir, data_dir=None, batch_size=64, log=print):
    """The run's eval.json (``RunFileError`` when damaged), or :func:`evaluate_run` (quiet,
    default options) when there is none yet."""
    results = run_dir.read_eval(model_dir)
    if results is None:
        log(f"[eval] {model_dir}: Market-1501 re-id evaluation")
        results = evaluate_run(model_dir, data_dir=data_dir, batch_size=batch_size, verbose=0)
    return results


def format_table(results):
    """The results as a text table in %."""
    header = f"{'':28s} {'SQ mAP':>7s} " + " ".join(f"{'R' + str(r):>6s}" for r in RANKS)
    header += f" | {'MQ mAP':>7s} " + " ".join(f"{'R' + str(r):>6s}" for r in RANKS)
    lines = [header, "-" * len(header)]

    def row(label, entry):
        cells = []
        for protocol in ("single_query", "multi_query"):
            summary = entry.get(protocol)
            if summary is None:
                cells.append(f"{'-':>7s} " + " ".join(f"{'-':>6s}" for _ in RANKS))
            else:
                cells.append(
                    f"{100 * summary['mAP']:7.2f} " + " ".join(f"{100 * summary[f'rank{r}']:6.2f}" for r in RANKS)
                )
        return f"{label:28s} " + " | ".join(cells)

    for member in results["members"]:
        lines.append(row(f"member {member['index']} ({member.get('net') or '?'})", member))
    lines.append(row(f"mean of members {results['mean'].get('members', '')}", results["mean"]))
    lines.append(row(f"ensemble (concat, {results['ensemble']['feature_dim']}-d)", results["ensemble"]))
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.dataset != "market1501":
        raise app.UsageError(
            f"--dataset={FLAGS.dataset}: dml_tf.evaluate scores re-id retrieval, only market1501; "
            "classification accuracy is reported by dml_tf.train."
        )
    output_dir = FLAGS.output_dir or FLAGS.model_dir
    results = evaluate_run(
        FLAGS.model_dir,
        data_dir=FLAGS.data_dir,
        output_dir=output_dir,
        batch_size=FLAGS.batch_size or 64,
        image_size=FLAGS.image_size,
        mq_pool=FLAGS.mq_pool,
        ap_mode=FLAGS.ap_mode,
        metric=FLAGS.metric,
        l2_normalize=FLAGS.l2_normalize,
        source=FLAGS.source,
        tfrecord_dir=FLAGS.tfrecord_dir,
        verbose=1 if FLAGS.verbose is None else FLAGS.verbose,
    )
    print(format_table(results))
    print(f"Wrote {os.path.join(output_dir, 'eval.json')} and cmc.png")
    return 0


def run():
    from dml_tf import cli

    define_flags()
    cli.run(main, doc=__doc__)


if __name__ == "__main__":
    sys.exit(run())
