"""Numerical parts of the paper's analyses (Sec. 4.7-4.8, Fig. 4), used by tools/.

* :func:`posterior_statistics` -- Fig. 4(c): mean probability of the top-5 ranked
  classes (mean over images of the sorted probability vector's first entries) and the
  mean posterior entropy ``H(p) = -sum_m p^m log p^m`` (natural log).
* :func:`teaching_signal_entropy` -- Sec. 4.8: entropy of the targets a member mimics,
  DML (each peer's own probabilities, one KL term per peer) vs DML_e (the average of
  its peers' probabilities, Eq. 11).
* :func:`cross_entropy_loss` / :func:`noisy_losses` -- Fig. 4(a, b): training loss
  (plain cross-entropy, no label smoothing, no regulariser) before and after adding
  independent Gaussian noise of std ``sigma`` to every TRAINABLE parameter (every
  draw from the original weights); the model's weights are restored at the end.
* :func:`unaugmented_dataset` -- a run's data without augmentation (the classification
  sets, and Market-1501: training images for Fig. 4-style statistics, gallery for Fig. 5);
  the run folder itself is read with :mod:`dml_tf.run_dir`.
"""

import numpy as np

from dml_tf.run_dir import load_member, read_run  # noqa: F401  (this module's public names before run_dir)

TOP_K = 5


# --------------------------------------------------------------------------- statistics


def _as_probs(probs):
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"probabilities must have shape (N > 0, C > 0); got {probs.shape}.")
    return probs


def entropies(probs):
    """Per-row entropy (nats) of probability rows ``(N, C)``; ``0 log 0 = 0``."""
    probs = _as_probs(probs)
    logs = np.log(np.where(probs > 0, probs, 1.0))
    return -(probs * logs).sum(axis=1)


def posterior_statistics(probs, top_k=TOP_K):
    """Fig. 4(c) statistics of one member's probabilities ``(N, C)``.

    Returns ``{"top_k_mean_probability": [k values, descending rank], "mean_entropy",
    "num_images", "num_classes"}``; with fewer than ``top_k`` classes the list is shorter.
    """
    probs = _as_probs(probs)
    ranked = -np.sort(-probs, axis=1)[:, :top_k]
    return {
        "top_k_mean_probability": [float(v) for v in ranked.mean(axis=0)],
        "mean_entropy": float(entropies(probs).mean()),
        "num_images": int(probs.shape[0]),
        "num_classes": int(probs.shape[1]),
    }


def fit_statistics(probs, labels):
    """How a member fits images it trained on (Sec. 4.7): ``accuracy``, ``cross_entropy``
    (``-log p_y``, mean over the labeled images) and ``mean_entropy`` (nats, all images)
    of its probabilities ``(N, C)`` against ``labels`` (-1: unlabeled)."""
    probs = _as_probs(probs)
    labels = np.asarray(labels).reshape(-1)
    keep = np.flatnonzero(labels >= 0)
    p_true = probs[keep, labels[keep]]
    return {
        "accuracy": float((probs[keep].argmax(axis=1) == labels[keep]).mean()) if len(keep) else None,
        "cross_entropy": float(-np.log(np.maximum(p_true, 1e-300)).mean()) if len(keep) else None,
        "mean_entropy": float(entropies(probs).mean()),
    }


def teaching_signal_entropy(cohort_probs):
    """Sec. 4.8: mean entropy of the mimicry targets of each member of a cohort.

    ``cohort_probs``: ``(K, N, C)`` with K >= 2. For member k, ``dml`` is the mean
    over its peers l of the mean entropy of ``p_l`` (DML mimics each peer); ``dml_e``
    is the mean entropy of ``mean_{l != k} p_l`` (DML_e mimics the peers' average).
    By concavity of entropy ``dml_e >= dml`` (the averaged target is softer); for K = 2
    the two are equal (a member's only peer is its peer average). Returns
    ``{"per_member": [{"member", "dml", "dml_e"}], "dml", "dml_e"}`` (means over members).
    """
    cohort_probs = np.asarray(cohort_probs, np.float64)
    if cohort_probs.ndim != 3 or cohort_probs.shape[0] < 2:
        raise ValueError(f"teaching_signal_entropy needs (K >= 2, N, C) probabilities; got {cohort_probs.shape}.")
    k_members = cohort_probs.shape[0]
    member_entropy = [float(entropies(p).mean()) for p in cohort_probs]
    per_member = []
    for k in range(k_members):
        peers = [l for l in range(k_members) if l != k]
        dml = float(np.mean([member_entropy[l] for l in peers]))
        dml_e = float(entropies(cohort_probs[peers].mean(axis=0)).mean())
        per_member.append({"member": k, "dml": dml, "dml_e": dml_e})
    return {
        "per_member": per_member,
        "dml": float(np.mean([m["dml"] for m in per_member])),
        "dml_e": float(np.mean([m["dml_e"] for m in per_member])),
    }


# --------------------------------------------------------------------------- model passes


def _logits_fn(model):
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def logits(x):
        return tf.cast(model(x, training=False), tf.float32)

    return logits


def predict_probabilities(model, dataset):
    """``(probs float64 (N, C), labels int (N,))`` of ``model`` over ``(x, y)`` batches."""
    import tensorflow as tf

    logits_fn = _logits_fn(model)
    probs, labels = [], []
    for x, y in dataset:
        probs.append(tf.nn.softmax(logits_fn(x), axis=-1).numpy().astype(np.float64))
        labels.append(np.asarray(y))
    if not probs:
        raise ValueError("The dataset yielded no batch.")
    return np.concatenate(probs), np.concatenate(labels)


def cross_entropy_loss(model, dataset, logits_fn=None):
    """Mean cross-entropy ``-log p_y`` over the labeled (y >= 0) images of ``dataset``."""
    import tensorflow as tf

    logits_fn = logits_fn or _logits_fn(model)
    total, count = 0.0, 0
    for x, y in dataset:
        y = np.asarray(y).reshape(-1)
        log_probs = tf.nn.log_softmax(logits_fn(x), axis=-1).numpy().astype(np.float64)
        keep = y >= 0
        total += float(-log_probs[np.flatnonzero(keep), y[keep]].sum())
        count += int(keep.sum())
    if count == 0:
        raise ValueError("The dataset holds no labeled image.")
    return total / count


def noisy_losses(model, dataset, sigmas, draws=3, seed=0, log=None):
    """Fig. 4(b): training loss after Gaussian noise on every trainable parameter.

    For each ``sigma`` and draw ``d``, every trainable variable is set to ``w + sigma * n``
    with ``w`` its ORIGINAL value and ``n ~ N(0, 1)`` from
    ``np.random.default_rng((seed, i, d))`` (``i`` = index of ``sigma``), and the loss is
    measured. The original values are written back at the end: the model's weights are
    unchanged on return (also on error).

    Returns ``{"clean_loss", "sigmas", "losses": [[loss per draw] per sigma],
    "mean", "std"}``.
    """
    sigmas = [float(s) for s in sigmas]
    if any(s < 0 or not np.isfinite(s) for s in sigmas):
        raise ValueError(f"sigmas must be finite and >= 0; got {sigmas}.")
    if draws < 1:
        raise ValueError(f"draws must be >= 1; got {draws}.")
    logits_fn = _logits_fn(model)
    variables = list(model.trainable_variables)
    originals = [np.array(v.numpy()) for v in variables]
    clean = cross_entropy_loss(model, dataset, logits_fn)
    losses = []
    try:
        for i, sigma in enumerate(sigmas):
            row = []
            for d in range(draws):
                rng = np.random.default_rng((seed, i, d))
                for v, w in zip(variables, originals):
                    noise = rng.standard_normal(w.shape).astype(w.dtype)
                    v.assign(w + np.asarray(sigma, w.dtype) * noise)
                row.append(cross_entropy_loss(model, dataset, logits_fn))
                if log:
                    log(f"  sigma={sigma:g} draw {d + 1}/{draws}: loss {row[-1]:.6f}")
            losses.append(row)
    finally:
        for v, w in zip(variables, originals):
            v.assign(w)
    return {
        "clean_loss": clean,
        "sigmas": sigmas,
        "losses": losses,
        "mean": [float(np.mean(r)) for r in losses],
        "std": [float(np.std(r)) for r in losses],
    }


# --------------------------------------------------------------------------- runs and data

CLASSIFICATION_DATASETS = ("digits", "cifar10", "cifar100", "folder")
# The data options of a classification run that change its images (runner.data_options).
CLASSIFICATION_OPTIONS = ("train_per_class", "seed", "image_size", "validation_split")
MARKET = "market1501"
DATASETS = CLASSIFICATION_DATASETS + (MARKET,)  # what unaugmented_dataset serves
SPLITS = ("train", "test")


def unaugmented_dataset(dataset, split="train", data_dir=None, batch_size=64, limit=None, identities=None,
                        **options):
    """``split`` of a data set in stored order, WITHOUT augmentation.

    Classification sets: images standardised with the training images' per-channel
    mean/std, exactly as the training and test pipelines of ``dml_tf.data`` do; all
    labels are the true ones (a semi-supervised run's unlabeled images included);
    ``options`` are the run's ``CLASSIFICATION_OPTIONS`` (a ``train_per_class`` subset
    drawn by ``seed``; the folder's ``image_size`` and ``validation_split``).
    ``market1501``: :func:`dml_tf.data.market1501.unaugmented_split` (train: the run's
    class labels; test: the gallery's real identities, labeled by person id), which
    takes ``options`` (image_size, labeled_ids, source, ...). ``identities``
    and ``limit`` select images (:func:`dml_tf.data.pipeline.select_images`).
    Returns ``(tf.data.Dataset, number of images)``.
    """
    from dml_tf.data import pipeline
    from dml_tf.data.pipeline import select_images

    if dataset not in DATASETS:
        raise ValueError(f"Dataset {dataset!r} has no analysis split here; expected one of {DATASETS}.")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")
    if dataset == MARKET:
        from dml_tf.data import market1501

        return market1501.unaugmented_split(split, data_dir=data_dir, batch_size=batch_size, limit=limit,
                                            identities=identities, **options)
    unknown = sorted(set(options) - set(CLASSIFICATION_OPTIONS))
    if unknown:
        raise ValueError(f"{unknown} do not apply to {dataset}.")
    if dataset == "digits":
        from dml_tf.data import digits

        arrays = digits.load_arrays()
    elif dataset == "folder":
        from dml_tf.data import folder

        arrays = folder.load_arrays(data_dir, options.get("image_size"), options.get("validation_split", 0.2))
    else:
        from dml_tf.data import cifar

        arrays = cifar.load_arrays(dataset, data_dir)
    if options.get("train_per_class"):
        subset = pipeline.select_per_class(arrays["train_labels"], options["train_per_class"],
                                           options.get("seed", 0))
        arrays = dict(arrays, train_images=arrays["train_images"][subset],
                      train_labels=np.asarray(arrays["train_labels"])[subset])
    mean, std = pipeline.channel_stats(arrays["train_images"])
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    keep = select_images(labels, identities, limit or None)
    if len(keep) < len(labels):
        images, labels = images[keep], labels[keep]
    return pipeline.eval_dataset(images, labels, batch_size, mean, std), len(images)
