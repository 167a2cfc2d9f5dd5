"""Handwritten digits: the embedded default data set, no download needed.

scikit-learn's bundled ``sklearn.datasets.load_digits()``: 1,797 real 8x8 grayscale
handwritten digits (values 0..16), 10 classes.

* Split: a fixed stratified 80/20 split -- per class, in class order, the images
  are permuted by ``np.random.default_rng(SPLIT_SEED)`` (``SPLIT_SEED = 20180618``,
  independent of the training ``seed``) and ``round(0.2 * n_class)`` go to test:
  1,438 train / 359 test images, the same on every run.
* Shape: scaled to [0, 1] (``/ 16``), upscaled to 32x32 with ``tf.image.resize``
  (bilinear) and replicated to 3 channels, so the CIFAR networks take them as is;
  then standardised per channel with the training images' mean/std, like CIFAR.
* Training augmentation: the CIFAR reflect-pad-4 + random 32x32 crop, but NO
  horizontal flip: digits are not mirror-invariant (a mirrored 2, 3, 7 is not the
  same digit).  No augmentation at test time.
* ``labeled_fraction``: as for CIFAR (:func:`dml_tf.data.pipeline.select_labeled`).
"""

import logging

import numpy as np

from dml_tf.data import augment, pipeline
from dml_tf.data.base import DatasetBundle

logger = logging.getLogger(__name__)

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
PAD = 4
SPLIT_SEED = 20180618
TEST_FRACTION = 0.2


def split_indices(labels, test_fraction=TEST_FRACTION, split_seed=SPLIT_SEED):
    """Deterministic stratified split: ``(train indices, test indices)``, each sorted.

    Per class, ``round(test_fraction * n_class)`` (half up) images chosen by
    ``np.random.default_rng(split_seed)`` go to test, the rest to train.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(split_seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = int(np.floor(test_fraction * len(members) + 0.5))
        test.extend(rng.permutation(members)[:k])
    test_mask = np.zeros(len(labels), bool)
    test_mask[np.asarray(test, dtype=np.int64)] = True
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)


def to_network_images(images8x8):
    """``(N, 8, 8)`` sklearn digits (0..16) -> float32 ``(N, 32, 32, 3)`` in [0, 1]."""
    import tensorflow as tf

    x = np.asarray(images8x8, np.float32)[..., None] / 16.0
    x = tf.image.resize(x, IMAGE_SHAPE[:2], method="bilinear").numpy()
    return np.clip(np.repeat(x, 3, axis=-1), 0.0, 1.0).astype(np.float32)


def load_arrays():
    """The split digits: dict of ``train_images``/``test_images`` (float32 NHWC in
    [0, 1], 32x32x3) and ``train_labels``/``test_labels`` (int32)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = to_network_images(digits.images)
    labels = digits.target.astype(np.int32)
    train_idx, test_idx = split_indices(labels)
    return {
        "train_images": images[train_idx],
        "train_labels": labels[train_idx],
        "test_images": images[test_idx],
        "test_labels": labels[test_idx],
    }


def train_augment(image, seed):
    """Reflect-pad 4 + random crop; no flip (digits are not mirror-invariant)."""
    return augment.cifar_train_augment(image, seed, pad=PAD, flip=False)


def load(data_dir=None, batch_size=64, seed=0, labeled_fraction=1.0, shuffle_buffer=None):
    """The digits as a :class:`DatasetBundle` (see the module docstring).

    ``data_dir`` is accepted for a uniform command line and ignored: the data ship
    with scikit-learn.  Other arguments as :func:`dml_tf.data.cifar.load`.
    """
    batch_size = pipeline.check_positive_int("batch_size", batch_size)
    seed = pipeline.check_seed(seed)
    fraction = pipeline.check_labeled_fraction(labeled_fraction)
    if shuffle_buffer is not None:
        pipeline.check_positive_int("shuffle_buffer", shuffle_buffer)
    if data_dir is not None:
        logger.warning("digits: data_dir=%s ignored; the digits are bundled with scikit-learn.", data_dir)

    arrays = load_arrays()
    train_labels, mask = pipeline.select_labeled(arrays["train_labels"], fraction, seed)
    mean, std = pipeline.channel_stats(arrays["train_images"])
    train = pipeline.train_dataset(
        arrays["train_images"], train_labels, batch_size, seed, mean, std, train_augment, shuffle_buffer
    )
    test = pipeline.eval_dataset(arrays["test_images"], arrays["test_labels"], batch_size, mean, std)
    return DatasetBundle(
        name="digits",
        train=train,
        test=test,
        num_classes=NUM_CLASSES,
        input_shape=IMAGE_SHAPE,
        train_size=len(arrays["train_images"]),
        test_size=len(arrays["test_images"]),
        labeled_size=int(mask.sum()),
        extras={
            "mean": mean,
            "std": std,
            "labeled_mask": mask,
            "class_names": [str(d) for d in range(NUM_CLASSES)],
            "split_seed": SPLIT_SEED,
        },
    )
