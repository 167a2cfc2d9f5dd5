"""Market-1501 evaluation splits and training labels (semi-supervised included).

Training labels: the ids of ``bounding_box_train`` relabeled ``0..N-1`` in sorted order
of the original id (N = 751 on the real set). Junk (-1) and distractor (0000) images do
not belong in ``bounding_box_train``; :func:`train_labels` gives them label -1 (the
loader drops them). Semi-supervised DML (Sec. 4.10) keeps the labels of ``M``
identities only.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from dml_tf.data import pipeline
from dml_tf.data.market1501.preprocessing import preprocess
from dml_tf.data.market1501.tfrecords import encoded_dataset
from dml_tf.errors import DataError


@dataclasses.dataclass
class Market1501Split:
    """An evaluation split: images in a fixed order plus their ids, cameras, names.

    ``images`` yields batches of float32 ``(B, H, W, 3)`` in [-1, 1], unaugmented, in
    the order of ``filenames`` (sorted); ``ids``/``cams`` are the original person ids
    (-1 junk, 0 distractor) and cameras 1..6.
    """

    name: str
    folder: str
    images: object  # tf.data.Dataset
    ids: np.ndarray
    cams: np.ndarray
    filenames: np.ndarray

    def __len__(self):
        return len(self.ids)


def eval_split(listing, shards, image_size, batch_size):
    """The :class:`Market1501Split` of ``listing`` (folder, or records when ``shards``)."""
    images = (
        encoded_dataset(listing, shards)
        .map(lambda e: preprocess(e, image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    return Market1501Split(
        name=listing.split,
        folder=listing.folder,
        images=images,
        ids=listing.ids,
        cams=listing.cams,
        filenames=listing.filenames,
    )


def _labeled_set(train_ids, labeled_ids, labeled_fraction, labeled_selection, seed):
    """The original ids that keep their labels (None: all of them, when nothing is asked)."""
    num_ids = len(train_ids)
    if labeled_ids is not None and labeled_fraction is not None:
        raise ValueError("Pass labeled_ids or labeled_fraction, not both.")
    if labeled_fraction is not None:
        if not 0.0 < float(labeled_fraction) <= 1.0:
            raise ValueError(f"labeled_fraction must be in (0, 1]; got {labeled_fraction!r}.")
        labeled_ids = max(1, int(round(float(labeled_fraction) * num_ids)))
    if labeled_ids is None:
        return None
    labeled_ids = pipeline.check_positive_int("labeled_ids", labeled_ids)
    if labeled_ids > num_ids:
        raise ValueError(f"labeled_ids={labeled_ids} but the training set has only {num_ids} identities.")
    if labeled_ids == num_ids:
        return None
    if labeled_selection == "first":
        return train_ids[:labeled_ids]
    if labeled_selection == "random":
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(train_ids, labeled_ids, replace=False))
    raise ValueError(f"Unknown labeled_selection {labeled_selection!r}; expected 'random' or 'first'.")


def train_labels(ids, labeled_ids=None, labeled_fraction=None, labeled_selection="random", seed=0):
    """Class labels of ``bounding_box_train`` images with original person ``ids``.

    Label k is the k-th of ``class_ids``: the sorted training ids (id > 0), or for
    semi-supervised training (Sec. 4.10; ``labeled_ids`` etc. as in :func:`load`) the
    sorted labeled ids. Unlabeled, junk (-1) and distractor (0) images get -1.
    Returns ``(labels int32, class_ids, train_ids, labeled ids or None for all)``.
    """
    ids = np.asarray(ids)
    keep = ids > 0
    if not keep.any():
        raise DataError("Market-1501 bounding_box_train holds no image of a real identity (id > 0).")
    train_ids = np.unique(ids[keep])
    labeled = _labeled_set(train_ids, labeled_ids, labeled_fraction, labeled_selection, seed)
    class_ids = train_ids if labeled is None else labeled
    position = np.minimum(np.searchsorted(class_ids, ids), len(class_ids) - 1)
    labels = np.where(class_ids[position] == ids, position, -1).astype(np.int32)
    labels[~keep] = -1
    return labels, class_ids, train_ids, labeled
