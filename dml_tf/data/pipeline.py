"""Shared helpers of the loaders: argument checks, the labeled subset and the images an
analysis keeps, and the ``tf.data`` pipelines of the classification datasets
(CIFAR, digits in memory; your image folders streamed from disk).

Determinism (``train``): the same ``seed`` gives the same batches in the same order,
epoch after epoch, in every pipeline built with it.

* Order: ``Dataset.range(n).shuffle(buffer, seed=seed, reshuffle_each_iteration=True)``
  shuffles image *indices*; tf.data derives epoch ``e``'s order from ``seed`` and the
  number of iterations started on that dataset object, so epoch 1, 2, ... of two
  separately built pipelines match.
* Augmentation: the indices are zipped with
  ``Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)`` (one int64 per
  element, re-drawn each epoch the same way); the element's stateless seed is
  ``(that value, image index)`` and every random choice is a ``tf.random.stateless_*``
  op of it (:mod:`dml_tf.data.augment`), so parallel maps cannot reorder randomness.
* :func:`deterministic_options` (``tf.data.Options().deterministic = True``) and
  ``map(..., deterministic=True)``.

As for every seeded TensorFlow op, the streams also depend on TensorFlow's global
seed when one is set (``tf.random.set_seed`` / ``keras.utils.set_random_seed``):
fix both for a repeatable run.

Batches: ``train`` keeps the last, smaller batch (``drop_remainder=False``): every
image is seen once per epoch, and a cohort feeds the same batch to all members, so
a short batch needs no special case.  ``test`` is in the stored order, unaugmented.
"""

import math
import numbers

import numpy as np
import tensorflow as tf

from dml_tf.data import augment
from dml_tf.data.base import DatasetBundle

AUTOTUNE = tf.data.AUTOTUNE


def check_positive_int(name, value):
    """``value`` as an int, or ValueError when it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def check_seed(seed):
    """``seed`` as an int, or ValueError when it is not a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def check_labeled_fraction(labeled_fraction):
    """``labeled_fraction`` as a float in (0, 1], or ValueError."""
    if isinstance(labeled_fraction, bool) or not isinstance(labeled_fraction, numbers.Real):
        raise ValueError(f"labeled_fraction must be a number in (0, 1], got {labeled_fraction!r}.")
    fraction = float(labeled_fraction)
    if not 0.0 < fraction <= 1.0:  # also rejects NaN
        raise ValueError(f"labeled_fraction must be in (0, 1], got {labeled_fraction!r}.")
    return fraction


def per_class_count(class_size, fraction):
    """How many of ``class_size`` images stay labeled: ``fraction * class_size``
    rounded half up, at least 1 (0 for an empty class)."""
    if class_size == 0:
        return 0
    return min(class_size, max(1, int(math.floor(fraction * class_size + 0.5))))


def select_labeled(labels, labeled_fraction, seed):
    """Semi-supervised split: keeps ``labeled_fraction`` of each class labeled.

    For each class ``c`` (ascending), :func:`per_class_count` of its images, drawn
    without replacement by ``np.random.default_rng(seed)``, keep their label; the
    others get label ``-1``.  Returns ``(new int32 labels, labeled boolean mask)``.
    ``labeled_fraction == 1`` returns the labels unchanged.
    """
    fraction = check_labeled_fraction(labeled_fraction)
    labels = np.asarray(labels).astype(np.int32)
    if fraction == 1.0:
        return labels.copy(), np.ones(labels.shape, bool)
    rng = np.random.default_rng(check_seed(seed))
    mask = np.zeros(labels.shape, bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        keep = rng.permutation(members)[: per_class_count(len(members), fraction)]
        mask[keep] = True
    return np.where(mask, labels, np.int32(-1)).astype(np.int32), mask


def select_per_class(labels, per_class, seed):
    """A seeded, stratified training subset: sorted indices of ``per_class`` images of
    every class (``--train_per_class``).

    For each class ``c`` (ascending), ``per_class`` of its images are drawn without
    replacement by ``np.random.default_rng(seed)``. ValueError naming the class when
    one has fewer images than that (the subset would be unbalanced without saying so).
    """
    per_class = check_positive_int("train_per_class", per_class)
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(check_seed(seed))
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"train_per_class={per_class}, but class {c} has only "
                             f"{len(members)} training images.")
        keep.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(keep))


def select_images(labels, identities=None, limit=None):
    """Indices (stored order) of the images an analysis keeps (tools/tsne.py, Fig. 5).

    ``identities``: only images whose label is one of the first ``identities``
    distinct labels >= 0 in sorted order (-1, an unlabeled image, is no identity);
    then ``limit``: the first ``limit`` of those. ValueError when none is left.
    """
    labels = np.asarray(labels).reshape(-1)
    for name, value in (("identities", identities), ("limit", limit)):
        if value is not None:
            check_positive_int(name, value)
    keep = np.arange(len(labels))
    if identities is not None:
        keep = np.flatnonzero(np.isin(labels, np.unique(labels[labels >= 0])[:identities]))
    keep = keep[:limit]
    if not len(keep):
        raise ValueError(f"No image is left to analyse (identities={identities}, limit={limit}).")
    return keep


def to_unit_float(image):
    """uint8 ``[0, 255]`` to float32 ``[0, 1]``; float images pass through as float32."""
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    return tf.cast(image, tf.float32)


def histogram_stats(counts):
    """Per-channel mean and standard deviation, on the [0, 1] scale, of uint8 pixels
    counted in ``counts`` (``(channels, 256)``: how many pixels of each channel have each
    value); two float32 arrays of shape ``(channels,)``."""
    counts = np.asarray(counts, np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    mean = np.zeros(len(counts), np.float64)
    std = np.zeros(len(counts), np.float64)
    for c, channel in enumerate(counts):
        total = channel.sum()
        mean[c] = (channel * values).sum() / total
        std[c] = math.sqrt((channel * (values - mean[c]) ** 2).sum() / total)
    std = np.maximum(std, 1e-6)  # a constant channel must not divide by zero
    return mean.astype(np.float32), std.astype(np.float32)


STORE_CHUNK_BYTES = 2 ** 24  # the images a store fill converts to a tensor at once
STATS_CHUNK_BYTES = 2 ** 20  # the images channel_stats casts at once (bincount: to int64, 8x)


def _chunks(images, chunk_bytes):
    """``(start, images[start:stop])`` over ``images`` (an array), about ``chunk_bytes`` at once."""
    step = max(1, chunk_bytes // max(1, images[:1].nbytes))
    for start in range(0, len(images), step):
        yield start, images[start:start + step]


def channel_stats(images):
    """Per-channel mean and standard deviation of NHWC ``images`` on the [0, 1] scale.

    uint8 images are counted exactly through a 256-bin histogram per channel
    (:func:`histogram_stats`); float images (already in [0, 1]) in float64 (the mean,
    then the mean squared deviation from it). Both go through the images a chunk at a
    time: no integer or float copy of the whole set. Returns two float32 arrays of
    shape ``(channels,)``.
    """
    images = np.asarray(images)
    channels = images.shape[-1]
    if images.dtype == np.uint8:
        counts = np.zeros((channels, 256), np.int64)
        for _, chunk in _chunks(images, STATS_CHUNK_BYTES):
            for c in range(channels):
                counts[c] += np.bincount(chunk[..., c].ravel(), minlength=256)
        return histogram_stats(counts)
    chunks = [chunk.reshape(-1, channels) for _, chunk in _chunks(images, STATS_CHUNK_BYTES)]  # views
    total = max(1, images.size // channels)
    mean = sum((chunk.sum(axis=0, dtype=np.float64) for chunk in chunks), np.zeros(channels)) / total
    var = sum((((chunk - mean) ** 2).sum(axis=0) for chunk in chunks), np.zeros(channels))
    std = np.maximum(np.sqrt(var / total), 1e-6)
    return mean.astype(np.float32), std.astype(np.float32)


def deterministic_options():
    """``tf.data.Options`` with ``deterministic = True`` (the loaders' pipelines)."""
    options = tf.data.Options()
    options.deterministic = True
    return options


def _static_shape(images):
    return tuple(int(d) for d in images.shape[1:])


def image_store(shape, dtype=tf.uint8, name="image_store"):
    """A ``tf.Variable`` of zeros of ``shape`` on the CPU, to be filled in place by
    :func:`store_images`: images held once. A ``tf.constant`` of them would hold them
    three times over (two copies made by ``tf.constant``, one more by the ``tf.data``
    pipelines that capture it); a variable is captured by reference."""
    with tf.init_scope(), tf.device("/cpu:0"):
        return tf.Variable(tf.zeros(shape, dtype), trainable=False, name=name)


def store_images(store, start, images):
    """Writes ``images`` into ``store[start:start + len(images)]`` in place
    (``scatter_update``; a slice assign copies the variable)."""
    store.scatter_update(tf.IndexedSlices(images, tf.range(start, start + len(images))))


class StoredImages:
    """An in-memory array as an image source (see :func:`_fetcher`): its images copied,
    a chunk at a time, into one :func:`image_store`; ``len``, ``shape``, ``dtype``."""

    def __init__(self, images):
        images = np.asarray(images)
        self.shape, self.dtype = images.shape, images.dtype
        self.store = image_store(images.shape, tf.as_dtype(images.dtype), name="in_memory_images")
        for start, chunk in _chunks(images, STORE_CHUNK_BYTES):
            store_images(self.store, start, chunk)

    def __len__(self):
        return self.shape[0]

    def fetch_fn(self):
        """``fetch(index) -> image``, gathered from the store."""
        store = self.store
        return lambda index: tf.gather(store, index)


def _held_once(images):
    """``images`` as an image source: an array copied into a :class:`StoredImages`."""
    return images if hasattr(images, "fetch_fn") else StoredImages(images)


def _fetcher(images):
    """``fetch(index) -> image`` of ``images``: an image source that reads its images
    itself (``images.fetch_fn()``: :class:`StoredImages`, or
    :class:`dml_tf.data.folder.ImageFiles`, which streams them from disk), or an
    in-memory array (copied once into a :class:`StoredImages`)."""
    return _held_once(images).fetch_fn()


def train_dataset(images, labels, batch_size, seed, mean, std, augment_fn, shuffle_buffer=None):
    """One shuffled, augmented, standardised epoch of ``(images, labels)`` per iteration.

    ``images``: NHWC uint8 (or float in [0, 1]) array, or an image source (see
    :func:`_fetcher`); ``labels``: int (``-1`` = unlabeled).  ``augment_fn(image_in_[0,1], seed) -> image`` gets a shape-[2] seed.
    ``shuffle_buffer`` defaults to the whole training set (a full shuffle of indices,
    cheap).  Yields ``(float32 [b, H, W, C], int32 [b])``; see the module docstring
    for how the stream is made deterministic.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    seed = check_seed(seed)
    n = len(images)
    if n == 0:
        raise ValueError("train_dataset needs at least one image.")
    buffer = n if shuffle_buffer is None else check_positive_int("shuffle_buffer", shuffle_buffer)
    shape = _static_shape(images)
    fetch = _fetcher(images)
    labels_t = tf.constant(np.asarray(labels, np.int32))

    def make_example(index, random_value):
        element_seed = tf.stack([random_value, index])
        image = to_unit_float(fetch(index))
        image = augment_fn(image, element_seed)
        image = augment.standardize(image, mean, std)
        return tf.ensure_shape(image, shape), tf.gather(labels_t, index)

    indices = tf.data.Dataset.range(n).shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    randoms = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)
    dataset = (
        tf.data.Dataset.zip((indices, randoms))
        .map(make_example, num_parallel_calls=AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=False)
        .prefetch(AUTOTUNE)
    )
    return dataset.with_options(deterministic_options())


def eval_dataset(images, labels, batch_size, mean, std):
    """``(images, labels)`` in stored order, standardised, no augmentation, batched."""
    batch_size = check_positive_int("batch_size", batch_size)
    shape = _static_shape(images)
    fetch = _fetcher(images)
    labels_t = tf.constant(np.asarray(labels, np.int32))

    def make_example(index):
        image = augment.standardize(to_unit_float(fetch(index)), mean, std)
        return tf.ensure_shape(image, shape), tf.gather(labels_t, index)

    dataset = (
        tf.data.Dataset.range(len(images))
        .map(make_example, num_parallel_calls=AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=False)
        .prefetch(AUTOTUNE)
    )
    return dataset.with_options(deterministic_options())


def classification_bundle(
    name,
    load_arrays,
    augment_fn,
    num_classes,
    input_shape,
    batch_size,
    seed,
    labeled_fraction,
    shuffle_buffer,
    extras=None,
    train_per_class=None,
    prepare=None,
):
    """The :class:`DatasetBundle` of a classification data set (CIFAR, digits, folder).

    Checks the arguments, then calls ``load_arrays()`` for a dict with
    ``train_images``/``test_images`` (NHWC uint8, or float in [0, 1]) and
    ``train_labels``/``test_labels``; keeps ``train_per_class`` training images of
    each class when given (:func:`select_per_class`, drawn by ``seed``); keeps
    ``labeled_fraction`` of each class
    labeled (:func:`select_labeled`, drawn by ``seed``), standardises with the
    training images' :func:`channel_stats`, and builds :func:`train_dataset` (with
    ``augment_fn``) and :func:`eval_dataset`, both of ``batch_size``.

    ``extras`` holds ``mean``/``std`` (per channel, [0, 1] scale), ``labeled_mask``
    (bool per training image), ``train_labels`` / ``test_labels`` (the labels trained on,
    -1 for unlabeled, and the test labels, in stored order), ``train_unaugmented`` (a function returning the
    training images, true labels, as :func:`eval_dataset`: stored order, no
    augmentation) and then whatever ``extras(arrays)`` returns.

    The images may be image sources that stream from disk (:func:`_fetcher`) rather than
    arrays; ``prepare(train_images, test_images) -> (mean, std)`` then replaces
    :func:`channel_stats` (e.g. one streamed pass over the training images). Arrays are
    copied into :class:`StoredImages` and not kept (``extras(arrays)`` sees no
    ``train_images``/``test_images``): the pipelines hold the images once.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    seed = check_seed(seed)
    fraction = check_labeled_fraction(labeled_fraction)
    if shuffle_buffer is not None:
        check_positive_int("shuffle_buffer", shuffle_buffer)
    if train_per_class is not None:
        check_positive_int("train_per_class", train_per_class)

    arrays = dict(load_arrays())  # the images popped: only the stores below keep them
    train_images, test_images = arrays.pop("train_images"), arrays.pop("test_images")
    train_labels = arrays["train_labels"]
    if train_per_class is not None:
        subset = select_per_class(train_labels, train_per_class, seed)
        train_images, train_labels = train_images[subset], np.asarray(train_labels)[subset]
    true_labels = train_labels
    train_labels, mask = select_labeled(train_labels, fraction, seed)
    mean, std = channel_stats(train_images) if prepare is None else prepare(train_images, test_images)
    train_images, test_images = _held_once(train_images), _held_once(test_images)
    train = train_dataset(train_images, train_labels, batch_size, seed, mean, std, augment_fn, shuffle_buffer)
    test = eval_dataset(test_images, arrays["test_labels"], batch_size, mean, std)
    return DatasetBundle(
        name=name,
        train=train,
        test=test,
        num_classes=num_classes,
        input_shape=input_shape,
        train_size=len(train_images),
        test_size=len(test_images),
        labeled_size=int(mask.sum()),
        extras={"mean": mean, "std": std, "labeled_mask": mask,
                "train_labels": train_labels, "test_labels": np.asarray(arrays["test_labels"], np.int32),
                "train_unaugmented": lambda: eval_dataset(train_images, true_labels, batch_size, mean, std),
                **(extras(arrays) if extras else {})},
    )
