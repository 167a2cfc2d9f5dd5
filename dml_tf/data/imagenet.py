"""ImageNet (ILSVRC2012) through tensorflow-datasets, for the paper's Fig. 2(a).

ImageNet cannot be downloaded automatically: put ``ILSVRC2012_img_train.tar`` and
``ILSVRC2012_img_val.tar`` (from https://image-net.org/download-images, after
registering) into ``data_dir``; it is tfds' *manual_dir* for "imagenet2012".  The
first call prepares the TFRecords (hours, ~150 GB) under ``tfds_data_dir`` (tfds'
default ``~/tensorflow_datasets`` when None); later calls read them directly and
need no archives.  ``data_dir=None`` uses tfds' default manual dir
``<tfds_data_dir>/downloads/manual``.

Preprocessing (Inception-style; the paper gives none; images scaled to [-1, 1], as the
TF-slim nets expect):

* train: Inception-style random-resized crop -- a box from
  ``tf.image.stateless_sample_distorted_bounding_box`` (area 8%..100% of the image,
  aspect ratio 3/4..4/3, whole image if no box found in 10 attempts) decoded with
  ``decode_and_crop_jpeg``, resized (bilinear) to ``image_size`` -- and a random
  horizontal flip;
* eval (the "validation" split, 50,000 images): shorter side resized to
  ``round(image_size * 256 / 224)`` then a central ``image_size`` crop.

Determinism: file order with ``ReadConfig(shuffle_seed=seed)``, a seeded
reshuffling buffer, and per-image stateless seeds from a zipped
``tf.data.Dataset.random`` (as :mod:`dml_tf.data.pipeline`).

``labeled_fraction < 1``: an image keeps its label when a fingerprint of
``(file_name, seed)`` falls below the fraction -- about that fraction of every
class, decided per image without a pass over the 1.28M labels (so, unlike CIFAR,
not an exact per-class count); the others are labeled -1.
"""

import logging
import os

import tensorflow as tf

from dml_tf.data import augment, pipeline
from dml_tf.data.base import SIGNED_UNIT_RANGE, DatasetBundle
from dml_tf.errors import DataError, DatasetNotFoundError

logger = logging.getLogger(__name__)

# tensorflow_datasets is imported inside _prepare and load only: its import takes seconds,
# and the preprocessing functions here are used (and tested) without it.

NAME = "imagenet2012"
MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
DEFAULT_SHUFFLE_BUFFER = 10_000
_HASH_BUCKETS = 1 << 30


def _not_found_sentence(manual_dir):
    return (
        f"ImageNet (imagenet2012) not found: download {' and '.join(MANUAL_FILES)} from "
        f"https://image-net.org/download-images and put them into --data_dir (tensorflow-datasets' "
        f"manual dir, here {manual_dir})."
    )


def _manual_files_present(manual_dir):
    return all(os.path.isfile(os.path.join(manual_dir, f)) for f in MANUAL_FILES)


def _prepare(builder, data_dir):
    """Makes sure the TFRecords exist (a no-op once prepared), with clear errors."""
    import tensorflow_datasets as tfds

    manual_dir = os.fspath(data_dir) if data_dir is not None else os.path.join(
        os.fspath(builder.data_dir_root), "downloads", "manual"
    )
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as err:
        if not _manual_files_present(manual_dir):
            raise DatasetNotFoundError(_not_found_sentence(manual_dir)) from err
        raise DataError(
            f"tensorflow-datasets could not prepare {NAME} from {manual_dir} ({type(err).__name__}: {str(err)[:300]})."
        ) from err


def _split_size(builder, split, dataset):
    """Examples in ``split``: from the data set info, else (mock data) counted."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError):
        count = int(dataset.cardinality())
        if count >= 0:
            return count
        return int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def eval_resize_size(image_size):
    """The shorter-side size before the central crop: 256 for 224, scaled alike."""
    return int(round(image_size * 256 / 224))


def to_signed_unit(image):
    """Pixel values in [0, 255] -> float32 in [-1, 1]."""
    return tf.clip_by_value(tf.cast(image, tf.float32) / 127.5 - 1.0, -1.0, 1.0)


def preprocess_train(encoded, seed, image_size):
    """JPEG bytes -> random-resized crop + random flip, float32 [-1, 1] (stateless)."""
    box_seed, flip_seed = tf.unstack(augment.split_seed(seed, 2))
    shape = tf.image.extract_jpeg_shape(encoded)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=box_seed,
        min_object_covered=0.1,
        aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return tf.ensure_shape(to_signed_unit(image), (image_size, image_size, 3))


def preprocess_eval(encoded, image_size):
    """JPEG bytes -> shorter side to ``eval_resize_size`` + central crop, [-1, 1]."""
    image = tf.image.decode_jpeg(encoded, channels=3)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = eval_resize_size(image_size) / tf.reduce_min(shape)
    new_size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), image_size)
    image = tf.image.resize(image, new_size, method="bilinear")
    top = (new_size[0] - image_size) // 2
    left = (new_size[1] - image_size) // 2
    image = tf.slice(image, tf.stack([top, left, 0]), [image_size, image_size, 3])
    return tf.ensure_shape(to_signed_unit(image), (image_size, image_size, 3))


def labeled_keep(file_name, labeled_fraction, seed):
    """Whether an image stays labeled: fingerprint of ``file_name:seed`` < fraction."""
    key = tf.strings.join([file_name, tf.constant(f":{seed}")])
    bucket = tf.strings.to_hash_bucket_fast(key, _HASH_BUCKETS)
    return bucket < int(labeled_fraction * _HASH_BUCKETS)


def load(
    data_dir=None,
    batch_size=64,
    seed=0,
    labeled_fraction=1.0,
    image_size=224,
    shuffle_buffer=DEFAULT_SHUFFLE_BUFFER,
    tfds_data_dir=None,
):
    """ImageNet as a :class:`DatasetBundle` (see the module docstring).

    Args:
      data_dir: folder holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar
        (only needed until tfds has prepared the data).
      batch_size, seed, labeled_fraction: as :func:`dml_tf.data.cifar.load`.
      image_size: side of the square network input (224, the TF-slim nets' default).
      shuffle_buffer: examples in the shuffle buffer (after file shuffling).
      tfds_data_dir: where tfds keeps the prepared TFRecords (None = its default).
    """
    import tensorflow_datasets as tfds

    batch_size = pipeline.check_positive_int("batch_size", batch_size)
    seed = pipeline.check_seed(seed)
    fraction = pipeline.check_labeled_fraction(labeled_fraction)
    image_size = pipeline.check_positive_int("image_size", image_size)
    shuffle_buffer = pipeline.check_positive_int("shuffle_buffer", shuffle_buffer)

    builder = tfds.builder(NAME, data_dir=tfds_data_dir)
    _prepare(builder, data_dir)
    decoders = {"image": tfds.decode.SkipDecoding()}
    options = pipeline.deterministic_options()

    raw_train = builder.as_dataset(
        split="train",
        shuffle_files=True,
        decoders=decoders,
        read_config=tfds.ReadConfig(shuffle_seed=seed, options=options),
    )
    raw_test = builder.as_dataset(split="validation", shuffle_files=False, decoders=decoders)

    def train_example(example, random_value):
        element_seed = tf.stack([random_value, tf.strings.to_hash_bucket_fast(example["file_name"], 1 << 62)])
        image = preprocess_train(example["image"], element_seed, image_size)
        label = tf.cast(example["label"], tf.int32)
        if fraction < 1.0:
            label = tf.where(labeled_keep(example["file_name"], fraction, seed), label, -1)
        return image, label

    def test_example(example):
        return preprocess_eval(example["image"], image_size), tf.cast(example["label"], tf.int32)

    randoms = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)
    train = (
        tf.data.Dataset.zip((raw_train.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True), randoms))
        .map(train_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
    test = (
        raw_test.map(test_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
    return DatasetBundle(
        name=NAME,
        train=train,
        test=test,
        num_classes=int(builder.info.features["label"].num_classes),
        input_shape=(image_size, image_size, 3),
        train_size=_split_size(builder, "train", raw_train),
        test_size=_split_size(builder, "validation", raw_test),
        extras={"labeled_fraction": fraction, "eval_resize": eval_resize_size(image_size),
                "standardisation": SIGNED_UNIT_RANGE},
        info=builder.info,
    )
