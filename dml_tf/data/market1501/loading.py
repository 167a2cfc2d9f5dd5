"""Market-1501 loading: which source (folders or TFRecords), :func:`load` for training
and re-id evaluation, :func:`unaugmented_split` for the analyses."""

import dataclasses
import logging
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from dml_tf.data import pipeline
from dml_tf.data.base import SIGNED_UNIT_RANGE, DatasetBundle
from dml_tf.data.market1501.names import FOLDERS, REQUIRED_SPLITS, check_data_dir, list_folders
from dml_tf.data.market1501.preprocessing import DEFAULT_IMAGE_SIZE, parse_image_size, preprocess
from dml_tf.data.market1501.splits import eval_split, train_labels
from dml_tf.data.market1501.tfrecords import (
    TFRECORD_SUBDIR,
    encoded_dataset,
    has_manifest,
    read_manifest,
    tfrecord_listing,
)
from dml_tf.errors import DataError

logger = logging.getLogger(__name__)

NAME = "market1501"
SOURCES = ("auto", "folders", "tfrecords")
EVAL_SPLITS = ("query", "gallery", "gt_bbox")


# --------------------------------------------------------------------------------------
# Source resolution.
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class OpenedSource:
    """The listed splits and where they come from.

    ``kind`` is ``"folders"`` or ``"tfrecords"``; ``shards[split]`` holds the split's
    TFRecord paths, None for a folder.
    """

    kind: str
    data_dir: Optional[str]
    tfrecord_dir: str
    listings: dict
    shards: dict


def _read_records(tfrecord_dir, splits):
    """``(listings, shards)`` of ``splits`` from the TFRecords; a missing optional split is left out."""
    manifest = read_manifest(tfrecord_dir)
    listings, shards = {}, {}
    for split in splits:
        if split in manifest["splits"]:
            listings[split], shards[split] = tfrecord_listing(tfrecord_dir, manifest, split)
        elif split in REQUIRED_SPLITS:
            raise DataError(f"The Market-1501 TFRecords in {tfrecord_dir} have no {split} split; convert again.")
    return listings, shards


def open_source(data_dir, source, tfrecord_dir, skip_unparsable, splits=tuple(FOLDERS)):
    """Lists ``splits`` from the folders or the TFRecords, as ``source`` says.

    ``source="auto"`` reads the TFRecords when a finished conversion is in
    ``tfrecord_dir`` (default ``data_dir/tfrecords``), else the folders. A missing
    ``gt_bbox`` is left out. Returns an :class:`OpenedSource`.
    """
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; expected one of {list(SOURCES)}.")
    if tfrecord_dir is None:
        data_dir = check_data_dir(data_dir)
        tfrecord_dir = os.path.join(data_dir, TFRECORD_SUBDIR)
    tfrecord_dir = os.path.abspath(os.path.expanduser(os.fspath(tfrecord_dir)))
    if source == "auto":
        source = "tfrecords" if has_manifest(tfrecord_dir) else "folders"
    if source == "tfrecords":
        listings, shards = _read_records(tfrecord_dir, splits)
    else:
        data_dir = check_data_dir(data_dir)
        listings = list_folders(data_dir, splits, skip_unparsable)
        shards = dict.fromkeys(listings)
    return OpenedSource(source, data_dir, tfrecord_dir, listings, shards)


# --------------------------------------------------------------------------------------
# Training and evaluation data.
# --------------------------------------------------------------------------------------
def _count_dropped(ids):
    """Junk (-1) and distractor (0) images in ``bounding_box_train``, which training drops."""
    dropped = {"junk": int((ids == -1).sum()), "distractor": int((ids == 0).sum())}
    if dropped["junk"] or dropped["distractor"]:
        logger.warning(
            "Market-1501: dropped %d junk and %d distractor image(s) found in bounding_box_train.",
            dropped["junk"],
            dropped["distractor"],
        )
    return dropped


def _shuffled_examples(listing, shards, keep, labels, seed):
    """``(encoded image, label)`` of the ``keep`` images, reshuffled every epoch by ``seed``."""
    num_kept = int(keep.sum())
    if shards is None:
        return (
            tf.data.Dataset.from_tensor_slices((listing.paths[keep], labels))
            .shuffle(num_kept, seed=seed, reshuffle_each_iteration=True)
            .map(lambda p, y: (tf.io.read_file(p), y))
        )
    return tf.data.Dataset.zip(
        encoded_dataset(listing, shards, np.flatnonzero(keep)),
        tf.data.Dataset.from_tensor_slices(labels),
    ).shuffle(num_kept, seed=seed, reshuffle_each_iteration=True)


def _train_dataset(listing, shards, keep, labels, image_size, batch_size, seed):
    """One epoch of shuffled, randomly flipped, preprocessed ``(images, labels)`` batches."""
    examples = _shuffled_examples(listing, shards, keep, labels, seed)
    flips = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).map(lambda r: r % 2 == 1)
    return (
        tf.data.Dataset.zip(examples, flips)
        .map(
            lambda ey, flip: (preprocess(ey[0], image_size, flip), ey[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def _eval_splits(opened, image_size, batch_size):
    """``{split: Market1501Split}`` of the query, gallery and (when present) gt_bbox images."""
    return {
        split: eval_split(opened.listings[split], opened.shards[split], image_size, batch_size)
        for split in EVAL_SPLITS
        if split in opened.listings
    }


def _source_info(opened):
    """The source part of ``bundle.info``: which source, and its folder."""
    return {
        "source": opened.kind,
        "data_dir": opened.data_dir if opened.kind == "folders" else None,
        "tfrecord_dir": opened.tfrecord_dir if opened.kind == "tfrecords" else None,
    }


def load(
    data_dir=None,
    batch_size=16,
    seed=0,
    image_size=DEFAULT_IMAGE_SIZE,
    labeled_ids=None,
    source="auto",
    tfrecord_dir=None,
    labeled_fraction=None,
    labeled_selection="random",
    eval_batch_size=None,
    skip_unparsable=False,
):
    """Loads Market-1501 for DML training and re-id evaluation.

    Args:
      data_dir: the unzipped ``Market-1501-v15.09.15`` folder.
      batch_size: training batch size (16 in the paper); also the evaluation batch
        size unless ``eval_batch_size`` is given.
      seed: seeds the per-epoch shuffle, the random flips and the choice of labeled
        identities; the same seed gives the same batches.
      image_size: network input ``(H, W)``; 224x224 as the original (MobileNet,
        Inception v1); e.g. ``(256, 128)`` keeps the 2:1 aspect.
      labeled_ids: semi-supervised DML (Sec. 4.10): only ``M`` training identities
        keep their labels, the other training images get label -1. As in the paper
        the ``M`` identities are a seeded random choice (``labeled_selection="first"``
        takes the first ``M`` in sorted id order instead). Labels are then
        ``0..M-1`` (labeled ids in sorted order) and ``num_classes`` is ``M``.
      source: ``"folders"`` (the JPEG folders), ``"tfrecords"`` (the output of
        ``tools/convert_market1501.py``) or ``"auto"`` (TFRecords if a finished
        conversion is found in ``tfrecord_dir``, else the folders).
      tfrecord_dir: where the TFRecords are; default ``data_dir/tfrecords``.
      labeled_fraction: alternative to ``labeled_ids``: the fraction of identities.
      eval_batch_size: batch size of the query/gallery/gt_bbox image datasets.
      skip_unparsable: leave out (and count) ``.jpg`` files whose name does not parse,
        instead of failing.

    Returns:
      ``DatasetBundle(name="market1501", train=..., test=None, num_classes=N,
      input_shape=(H, W, 3), train_size=..., extras={"query", "gallery"[, "gt_bbox"]})``:
      ``train`` is one epoch of shuffled, flipped ``(images, labels)`` batches;
      each extra is a :class:`Market1501Split`, but ``train_labels`` (the label of every
      training image, in stored order; -1 unlabeled) and ``standardisation`` (images in
      [-1, 1]). ``gt_bbox`` is absent when its folder (or records) are, and multi-query
      evaluation is then unavailable. ``info``
      holds the original id of every label (``train_ids``), the labeled ids, counts of
      dropped junk/distractor training images and the source.

    Raises:
      DatasetNotFoundError: ``data_dir`` is None or missing, or a split folder is.
      DataError: malformed names or an incomplete TFRecord conversion.
      ValueError: bad arguments.
    """
    batch_size = pipeline.check_positive_int("batch_size", batch_size)
    eval_batch_size = (
        batch_size if eval_batch_size is None else pipeline.check_positive_int("eval_batch_size", eval_batch_size)
    )
    image_size = parse_image_size(image_size)
    seed = 0 if seed is None else int(seed)
    opened = open_source(data_dir, source, tfrecord_dir, skip_unparsable)

    train = opened.listings["train"]
    dropped = _count_dropped(train.ids)
    labels, class_ids, train_ids, labeled = train_labels(
        train.ids, labeled_ids, labeled_fraction, labeled_selection, seed
    )
    keep = train.ids > 0
    train_dataset = _train_dataset(train, opened.shards["train"], keep, labels[keep], image_size, batch_size, seed)
    extras = {**_eval_splits(opened, image_size, eval_batch_size), "train_labels": labels[keep],
              "standardisation": SIGNED_UNIT_RANGE}
    info = {
        **_source_info(opened),
        "train_ids": class_ids,
        "all_train_ids": train_ids,
        "labeled_ids": labeled,
        "dropped": dropped,
        "unparsable_skipped": {s: listing.num_unparsable_skipped for s, listing in opened.listings.items()},
        "image_size": image_size,
        "multi_query": "gt_bbox" in extras,
    }
    return DatasetBundle(
        name=NAME,
        train=train_dataset,
        test=None,
        num_classes=int(len(class_ids)),
        input_shape=(image_size[0], image_size[1], 3),
        train_size=int(keep.sum()),
        test_size=0,
        labeled_size=int((labels >= 0).sum()),
        extras=extras,
        info=info,
    )


def unaugmented_split(
    split,
    data_dir=None,
    batch_size=64,
    image_size=DEFAULT_IMAGE_SIZE,
    limit=None,
    identities=None,
    labeled_ids=None,
    labeled_fraction=None,
    labeled_selection="random",
    seed=0,
    source="auto",
    tfrecord_dir=None,
    skip_unparsable=False,
):
    """Images of real identities WITHOUT augmentation, for the analyses (Fig. 4, Fig. 5).

    ``split="train"``: the ``bounding_box_train`` images with id > 0 in stored (sorted
    file name) order, labeled as :func:`load` with the same arguments labels them
    (class indices; -1 for the unlabeled ids of a semi-supervised run). ``split="test"``:
    the gallery (``bounding_box_test``) images of real identities (junk -1 and
    distractors 0000 left out), labeled with their ORIGINAL person id (Fig. 5 colours
    by identity). Images are preprocessed as the evaluation splits (:func:`preprocess`,
    no flip); ``source``/``tfrecord_dir`` as in :func:`load`. ``identities`` and
    ``limit`` select images as :func:`dml_tf.data.pipeline.select_images` does.

    Returns ``(tf.data.Dataset of (images, labels int32) batches, number of images)``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
    batch_size = pipeline.check_positive_int("batch_size", batch_size)
    image_size = parse_image_size(image_size)
    folder = "train" if split == "train" else "gallery"
    opened = open_source(data_dir, source, tfrecord_dir, skip_unparsable, (folder,))
    listing = opened.listings[folder]
    if split == "train":
        labels = train_labels(listing.ids, labeled_ids, labeled_fraction, labeled_selection, seed)[0]
    else:
        labels = listing.ids.astype(np.int32)
    real = np.flatnonzero(listing.ids > 0)
    if not len(real):
        raise DataError(f"Market-1501 {FOLDERS[folder]} holds no image of a real identity (id > 0).")
    indices = real[pipeline.select_images(labels[real], identities, limit)]
    images = encoded_dataset(listing, opened.shards[folder], indices).map(
        lambda e: preprocess(e, image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    dataset = tf.data.Dataset.zip(images, tf.data.Dataset.from_tensor_slices(labels[indices]))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE), len(indices)
