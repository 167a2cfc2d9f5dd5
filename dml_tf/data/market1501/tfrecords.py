"""Market-1501 as sharded TFRecords (the original's input route): writing and reading.

``tools/convert_market1501.py`` writes them (:func:`write_tfrecords`) into
``data_dir/tfrecords`` unless told otherwise; :func:`dml_tf.data.market1501.load`
reads them and yields exactly the same examples, in the same order, as the folders.
:func:`encoded_dataset` gives a split's encoded images from either source.
"""

import glob
import json
import logging
import math
import os

import numpy as np
import tensorflow as tf

from dml_tf.data import pipeline
from dml_tf.data.market1501.names import FOLDERS, SplitListing, check_data_dir, list_folders, parse_filename
from dml_tf.data.market1501.preprocessing import STORED_SIZE, decode_stored
from dml_tf.errors import DataError
from dml_tf.io_utils import atomic_write_json, make_writable_dir

logger = logging.getLogger(__name__)

TFRECORD_SUBDIR = "tfrecords"
MANIFEST = "market1501_tfrecords.json"
MANIFEST_FORMAT = "dml_tf/market1501-tfrecords"
# Version 1 held the JPEG bytes unchanged; it still reads the same (preprocess resizes).
MANIFEST_VERSION = 2

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/label": tf.io.FixedLenFeature([], tf.int64),
    "image/camera": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string),
}


def _example(encoded, person_id, camera, filename):
    """One serialized ``tf.train.Example`` of an image (see :func:`write_tfrecords`)."""

    def _bytes(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": _bytes(encoded),
                "image/format": _bytes(b"png"),
                "image/label": _int(person_id),
                "image/camera": _int(camera),
                "image/filename": _bytes(filename.encode("utf-8")),
            }
        )
    ).SerializeToString()


def _write_shard(listing, indices, path):
    """Writes the examples ``indices`` of ``listing`` to ``path`` via a temporary file."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    images = encoded_dataset(listing, None, indices).map(
        lambda e: tf.io.encode_png(decode_stored(e)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for k, encoded in zip(indices, images.as_numpy_iterator()):
                writer.write(_example(encoded, listing.ids[k], listing.cams[k], listing.filenames[k]))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_split(listing, output_dir, shard_size):
    """Writes one split's shards, removes its stale ones; returns its manifest entry."""
    split = listing.split
    num_shards = max(1, math.ceil(len(listing) / shard_size))
    shards = [f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    for i, shard in enumerate(shards):
        indices = np.arange(i * shard_size, min((i + 1) * shard_size, len(listing)))
        _write_shard(listing, indices, os.path.join(output_dir, shard))
    for stale in glob.glob(os.path.join(output_dir, f"{split}-*-of-*.tfrecord")):
        if os.path.basename(stale) not in shards:
            os.remove(stale)
    logger.info("Market-1501: wrote %d %s examples in %d shard(s).", len(listing), split, num_shards)
    return {"folder": FOLDERS[split], "shards": shards, "num_examples": int(len(listing))}


def write_tfrecords(data_dir, output_dir=None, shard_size=2000, skip_unparsable=False):
    """Writes every split of ``data_dir`` as sharded TFRecords (the original's route).

    Each example holds ``image/encoded`` (the image resized to 160x64 as the original's
    conversion, :func:`stored_image`, as PNG), ``image/format``,
    ``image/label`` (the ORIGINAL person id, -1 for junk), ``image/camera`` and
    ``image/filename``; examples are in sorted file-name order, shard after shard
    (``{split}-00000-of-00007.tfrecord``). Every shard is written to a temporary file
    and renamed into place, and the manifest ``market1501_tfrecords.json`` is removed
    first and written last (atomically), so a reader never uses a half-converted set.
    ``gt_bbox`` is converted when its folder exists.

    Returns:
      The manifest (a dict).
    """
    data_dir = check_data_dir(data_dir)
    output_dir = os.path.abspath(output_dir or os.path.join(data_dir, TFRECORD_SUBDIR))
    shard_size = pipeline.check_positive_int("shard_size", shard_size)
    listings = list_folders(data_dir, skip_unparsable=skip_unparsable)
    make_writable_dir(output_dir, "output_dir")
    manifest_path = os.path.join(output_dir, MANIFEST)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)

    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "data_dir": data_dir,
                "stored_size": list(STORED_SIZE), "splits": {}}
    for split, listing in listings.items():
        manifest["splits"][split] = _write_split(listing, output_dir, shard_size)
    atomic_write_json(manifest_path, manifest)
    return manifest


def has_manifest(tfrecord_dir):
    """Whether ``tfrecord_dir`` holds a finished conversion (its manifest is written last)."""
    return os.path.isfile(os.path.join(tfrecord_dir, MANIFEST))


def read_manifest(tfrecord_dir):
    """The manifest of ``tfrecord_dir``; ``DataError`` when it or a shard is missing."""
    path = os.path.join(tfrecord_dir, MANIFEST)
    if not os.path.isfile(path):
        raise DataError(
            f"No Market-1501 TFRecords in {tfrecord_dir} ({MANIFEST} is missing, or a conversion did not "
            "finish). Write them with: python tools/convert_market1501.py --data_dir=DATA_DIR "
            "[--output_dir=DIR], or use source='folders'."
        )
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path} is not a dml_tf Market-1501 TFRecord manifest.")
    missing = [
        shard
        for split in manifest["splits"].values()
        for shard in split["shards"]
        if not os.path.isfile(os.path.join(tfrecord_dir, shard))
    ]
    if missing:
        raise DataError(f"Market-1501 TFRecord shard(s) listed in {path} are missing: {missing[:5]}.")
    return manifest


def tfrecord_listing(tfrecord_dir, manifest, split):
    """Reads a split's ids, cameras and file names back from its records.

    Returns ``(SplitListing, shard paths)``.
    """
    info = manifest["splits"][split]
    shards = [os.path.join(tfrecord_dir, s) for s in info["shards"]]
    meta_spec = {k: v for k, v in _FEATURES.items() if k != "image/encoded"}
    dataset = tf.data.TFRecordDataset(shards).map(lambda r: tf.io.parse_single_example(r, meta_spec)).batch(4096)
    ids, cams, names = [], [], []
    for batch in dataset.as_numpy_iterator():
        ids.append(batch["image/label"])
        cams.append(batch["image/camera"])
        names.extend(n.decode("utf-8") for n in batch["image/filename"])
    if len(names) != info["num_examples"]:
        raise DataError(
            f"Market-1501 TFRecords of split {split} in {tfrecord_dir} hold {len(names)} examples, "
            f"the manifest says {info['num_examples']}; convert again."
        )
    for name in names:
        parse_filename(name)  # DataError for a record whose file name does not parse
    return SplitListing(
        split=split,
        folder=tfrecord_dir,
        filenames=np.array(names),
        ids=np.concatenate(ids).astype(np.int64),
        cams=np.concatenate(cams).astype(np.int64),
    ), shards


def encoded_dataset(listing, shards, indices=None):
    """Encoded images of a split in listing order: its JPEG files (``shards`` None) or the
    PNG of its records; only the (increasing) ``indices`` if given."""
    if shards is None:
        paths = listing.paths if indices is None else listing.paths[indices]
        return tf.data.Dataset.from_tensor_slices(paths).map(tf.io.read_file)
    spec = {"image/encoded": _FEATURES["image/encoded"]}
    encoded = tf.data.TFRecordDataset(shards).map(lambda r: tf.io.parse_single_example(r, spec)["image/encoded"])
    if indices is None:
        return encoded
    mask = np.zeros(len(listing), bool)
    mask[indices] = True
    return tf.data.Dataset.zip(encoded, tf.data.Dataset.from_tensor_slices(mask)).filter(lambda e, m: m).map(
        lambda e, m: e
    )
