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
import tensorflow as tf
from sklearn.datasets import load_digits

from dml_tf.data import augment, pipeline

logger = logging.getLogger(__name__)

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
PAD = 4
SPLIT_SEED = 20180618
TEST_FRACTION = 0.2


def split_indices(labels, test_fraction=TEST_FRACTION, split_seed=SPLIT_SEED):
    """Deterministic stratified split: ``(train indices, test indices)``, each sorted.

    Per class, ``round(test_fraction * n_class)`` (half up, at least one) images
    chosen by ``np.random.default_rng(split_seed)`` go to test, the rest to train:
    the draw of :func:`dml_tf.data.pipeline.select_labeled`, whose "labeled" images
    are the test images here (``test_fraction`` in (0, 1]).
    """
    test_mask = pipeline.select_labeled(labels, test_fraction, split_seed)[1]
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)


def to_network_images(images8x8):
    """``(N, 8, 8)`` sklearn digits (0..16) -> float32 ``(N, 32, 32, 3)`` in [0, 1]."""
    x = np.asarray(images8x8, np.float32)[..., None] / 16.0
    x = tf.image.resize(x, IMAGE_SHAPE[:2], method="bilinear").numpy()
    return np.clip(np.repeat(x, 3, axis=-1), 0.0, 1.0).astype(np.float32)


def load_arrays():
    """The split digits: dict of ``train_images``/``test_images`` (float32 NHWC in
    [0, 1], 32x32x3) and ``train_labels``/``test_labels`` (int32)."""
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


def load(data_dir=None, batch_size=64, seed=0, labeled_fraction=1.0, shuffle_buffer=None,
         train_per_class=None):
    """The digits as a :class:`DatasetBundle` (see the module docstring).

    ``data_dir`` is accepted for a uniform command line and ignored: the data ship
    with scikit-learn.  Other arguments as :func:`dml_tf.data.cifar.load`.
    """

    def arrays():  # called once the arguments are checked
        if data_dir is not None:
            logger.warning("digits: data_dir=%s ignored; the digits are bundled with scikit-learn.", data_dir)
        return load_arrays()

    return pipeline.classification_bundle(
        "digits",
        arrays,
        train_augment,
        num_classes=NUM_CLASSES,
        input_shape=IMAGE_SHAPE,
        batch_size=batch_size,
        seed=seed,
        labeled_fraction=labeled_fraction,
        shuffle_buffer=shuffle_buffer,
        train_per_class=train_per_class,
        extras=lambda _: {"class_names": [str(d) for d in range(NUM_CLASSES)], "split_seed": SPLIT_SEED},
    )
