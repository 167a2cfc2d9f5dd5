"""Market-1501 (person re-identification) from its folders or from TFRecords.

Layout expected under ``data_dir`` (the unzipped ``Market-1501-v15.09.15``)::

    bounding_box_train/   12,936 images of 751 ids  -> training (751-way classification)
    bounding_box_test/    19,732 images             -> gallery (id 0000 distractors, -1 junk)
    query/                 3,368 images of 750 ids  -> queries
    gt_bbox/              hand-drawn boxes          -> multi-query pooling (optional)

File names are ``PPPP_cCsS_FFFFFF_BB.jpg`` (person id, camera 1..6, sequence, frame,
box), junk images ``-1_cCsS_FFFFFF_BB.jpg``. Only files ending in ``.jpg`` are read;
anything else in a folder (the archive ships ``Thumbs.db`` files) is ignored. A
``.jpg`` whose name does not parse is an error (its label would be a guess) unless
``skip_unparsable=True``, which leaves it out and logs how many were left out.

Training labels: the ids of ``bounding_box_train`` relabelled ``0..N-1`` in sorted order
of the original id (N = 751 on the real set). Junk (-1) and distractor (0000) images do
not belong in ``bounding_box_train``; if some are there they are dropped and counted in
``bundle.info["dropped"]``. :func:`train_labels` is that labelling, shared with
:func:`unaugmented_split`, which serves the analysis tools (Fig. 4 statistics on the
training images, Fig. 5 t-SNE on the gallery) the images without augmentation.

Preprocessing follows the original implementation in its two steps: its TFRecord
conversion resizes every image to 160x64 (``scipy.misc.imresize``: PIL's bilinear,
rounded to uint8; here ``tf.image.resize(antialias=True)``, within one grey level of
PIL), and training converts to float in [0, 1], resizes that to the network input with
TF1's ``tf.image.resize_images`` (bilinear, no half-pixel centres; 224x224 by default,
the MobileNet / Inception v1 size), flips left-right at random (training only) and
scales to [-1, 1]. Images read from the folders take the same first step, so both
sources give the same pixels.

TFRecords (the original's route) are written by ``tools/convert_market1501.py`` (see
:func:`write_tfrecords`) into ``data_dir/tfrecords`` unless told otherwise; ``load``
reads them from ``tfrecord_dir`` (default ``data_dir/tfrecords``) and yields exactly
the same examples, in the same order, as the folders.
"""

import collections
import dataclasses
import glob
import logging
import math
import os
import re

import numpy as np

from dml_tf.data import pipeline
from dml_tf.data.base import DatasetBundle
from dml_tf.errors import DataError, DatasetNotFoundError
from dml_tf.io_utils import atomic_write_json, make_writable_dir

logger = logging.getLogger(__name__)

NAME = "market1501"
FOLDERS = collections.OrderedDict(
    [("train", "bounding_box_train"), ("gallery", "bounding_box_test"), ("query", "query"), ("gt_bbox", "gt_bbox")]
)
REQUIRED_SPLITS = ("train", "gallery", "query")
LAYOUT = (
    "DATA_DIR/bounding_box_train/*.jpg, DATA_DIR/bounding_box_test/*.jpg, DATA_DIR/query/*.jpg "
    "and optionally DATA_DIR/gt_bbox/*.jpg, with names like 0002_c1s1_000451_03.jpg"
)
DOWNLOAD_HINT = (
    "Market-1501 is not downloaded automatically: download Market-1501-v15.09.15.zip, "
    "unzip it and pass --data_dir=.../Market-1501-v15.09.15."
)
DEFAULT_IMAGE_SIZE = (224, 224)
STORED_SIZE = (160, 64)  # the original conversion's image size (height, width)
TFRECORD_SUBDIR = "tfrecords"
MANIFEST = "market1501_tfrecords.json"
MANIFEST_FORMAT = "dml_tf/market1501-tfrecords"
SOURCES = ("auto", "folders", "tfrecords")

_NAME_RE = re.compile(r"^(-1|\d{4})_c([1-6])s(\d)_(\d{6})_(\d{2})\.(?i:jpg)$")
_MAX_BAD_NAMES_SHOWN = 5
_JPEG_MAGIC = b"\xff\xd8\xff"  # start-of-image marker, then the first segment's marker


# --------------------------------------------------------------------------------------
# File names and folder listings.
# --------------------------------------------------------------------------------------
ImageName = collections.namedtuple("ImageName", ["person_id", "camera", "sequence", "frame", "box"])
ImageName.__doc__ = """A parsed Market-1501 file name; ``person_id`` -1 is junk, 0 a distractor."""


def parse_filename(name):
    """``"0002_c1s1_000451_03.jpg"`` -> ``ImageName(2, 1, 1, 451, 3)``.

    Junk images (``-1_c1s1_000401_03.jpg``) get ``person_id`` -1. Raises ``DataError``
    for any other name (a directory part is allowed and ignored).
    """
    base = os.path.basename(os.fspath(name))
    match = _NAME_RE.match(base)
    if not match:
        raise DataError(
            f"Market-1501 file name {base!r} does not follow PPPP_cCsS_FFFFFF_BB.jpg "
            "(person id 0000-9999 or -1, camera 1-6, sequence, 6-digit frame, 2-digit box)."
        )
    pid, cam, seq, frame, box = match.groups()
    return ImageName(int(pid), int(cam), int(seq), int(frame), int(box))


@dataclasses.dataclass
class SplitListing:
    """The parsed, sorted ``.jpg`` files of one split folder."""

    split: str
    folder: str  # absolute path
    filenames: np.ndarray  # base names, sorted
    ids: np.ndarray
    cams: np.ndarray
    num_unparsable_skipped: int = 0

    def __len__(self):
        return len(self.filenames)

    @property
    def paths(self):
        return np.array([os.path.join(self.folder, f) for f in self.filenames])


def _check_data_dir(data_dir):
    if data_dir is None:
        raise DatasetNotFoundError(DOWNLOAD_HINT)
    data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    if not os.path.isdir(data_dir):
        raise DatasetNotFoundError(f"Market-1501 folder {data_dir} does not exist. {DOWNLOAD_HINT}")
    return data_dir


def split_folder(data_dir, split):
    """The folder of ``split`` (``train``, ``gallery``, ``query``, ``gt_bbox``)."""
    if split not in FOLDERS:
        raise ValueError(f"Unknown Market-1501 split {split!r}; expected one of {list(FOLDERS)}.")
    return os.path.join(data_dir, FOLDERS[split])


def list_split(data_dir, split, skip_unparsable=False):
    """Lists and parses the ``.jpg`` files of one split folder, sorted by name.

    Raises:
      DatasetNotFoundError: ``data_dir`` or the split folder is missing (the message
        names the folder and the expected layout).
      DataError: the folder holds no ``.jpg``, (unless ``skip_unparsable``) some
        names do not parse, or some files are not JPEG (:func:`check_jpeg_files`);
        the first few bad names are listed.
    """
    data_dir = _check_data_dir(data_dir)
    folder = split_folder(data_dir, split)
    if not os.path.isdir(folder):
        hint = ""
        nested = os.path.join(data_dir, "Market-1501-v15.09.15")
        if os.path.isdir(nested):
            hint = f" (did you mean --data_dir={nested}?)"
        raise DatasetNotFoundError(
            f"Market-1501 split folder {folder} is missing{hint}. Expected the unzipped "
            f"Market-1501-v15.09.15 layout: {LAYOUT}."
        )
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(".jpg"))
    if not names:
        raise DataError(f"Market-1501 split folder {folder} holds no .jpg images. Expected layout: {LAYOUT}.")
    parsed, good_names, bad = [], [], []
    for name in names:
        try:
            parsed.append(parse_filename(name))
            good_names.append(name)
        except DataError:
            bad.append(name)
    if bad and not skip_unparsable:
        shown = ", ".join(bad[:_MAX_BAD_NAMES_SHOWN]) + (", ..." if len(bad) > _MAX_BAD_NAMES_SHOWN else "")
        raise DataError(
            f"{len(bad)} file name(s) in {folder} do not follow PPPP_cCsS_FFFFFF_BB.jpg: {shown}. "
            "Rename or remove them, or pass skip_unparsable=True to leave them out."
        )
    if bad:
        logger.warning("Market-1501: skipped %d unparsable file name(s) in %s.", len(bad), folder)
    if not good_names:
        raise DataError(f"Market-1501 split folder {folder} holds no image with a parsable name.")
    check_jpeg_files(folder, good_names)
    array = np.array(parsed, dtype=np.int64).reshape(-1, 5)
    return SplitListing(
        split=split,
        folder=folder,
        filenames=np.array(good_names),
        ids=array[:, 0],
        cams=array[:, 1],
        num_unparsable_skipped=len(bad),
    )


def check_jpeg_files(folder, names):
    """Raises ``DataError`` naming the files of ``folder`` that are empty, unreadable
    or not JPEG (they do not start with the JPEG SOI marker FF D8 FF), which would
    otherwise fail inside training with a decoding error that names no file. Reads
    three bytes per file: the 12,936 training images take about 0.3 s (1 s from a
    cold disk cache)."""
    bad = []
    for name in names:
        try:
            with open(os.path.join(folder, name), "rb") as f:
                head = f.read(len(_JPEG_MAGIC))
        except OSError as e:
            bad.append(f"{name} (unreadable: {e.strerror})")
            continue
        if head != _JPEG_MAGIC:
            bad.append(f"{name} ({'empty file' if not head else 'not a JPEG'})")
    if bad:
        shown = ", ".join(bad[:_MAX_BAD_NAMES_SHOWN]) + (", ..." if len(bad) > _MAX_BAD_NAMES_SHOWN else "")
        raise DataError(
            f"{len(bad)} image(s) in {folder} are not readable JPEG files: {shown}. Replace them with the "
            "files of the original Market-1501 archive (or remove them)."
        )


# --------------------------------------------------------------------------------------
# Preprocessing.
# --------------------------------------------------------------------------------------
def parse_image_size(image_size):
    """``None`` -> (224, 224); ``"256,128"`` / ``(256, 128)`` -> ``(256, 128)``."""
    if image_size is None:
        return DEFAULT_IMAGE_SIZE
    if isinstance(image_size, str):
        image_size = [s for s in image_size.replace("x", ",").split(",") if s.strip()]
    try:
        size = tuple(int(s) for s in image_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be two positive integers (height, width); got {image_size!r}.")
    return size


def stored_image(image):
    """uint8 (h, w, 3) -> uint8 (160, 64, 3), the original TFRecord conversion's resize
    (PIL bilinear, antialiased when shrinking, rounded); the identity at 160x64."""
    import tensorflow as tf

    resized = tf.image.resize(image, STORED_SIZE, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def preprocess(encoded, image_size, flip=None):
    """JPEG or PNG bytes -> float32 (H, W, 3) in [-1, 1], as the original re-id preprocessing.

    Decode, resize to the stored 160x64 (:func:`stored_image`), convert to [0, 1], resize
    to ``image_size`` as TF1's ``tf.image.resize_images`` (bilinear, no half-pixel
    centres), flip left-right where the boolean tensor ``flip`` is true, scale to [-1, 1].
    """
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.convert_image_dtype(stored_image(image), tf.float32)
    image = tf.compat.v1.image.resize_images(image, image_size, method=tf.compat.v1.image.ResizeMethod.BILINEAR)
    if flip is not None:
        image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    image = (image - 0.5) * 2.0
    image.set_shape((image_size[0], image_size[1], 3))
    return image


# --------------------------------------------------------------------------------------
# TFRecords.
# --------------------------------------------------------------------------------------
def _record_features():
    import tensorflow as tf

    return {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/label": tf.io.FixedLenFeature([], tf.int64),
        "image/camera": tf.io.FixedLenFeature([], tf.int64),
        "image/filename": tf.io.FixedLenFeature([], tf.string),
    }


def _example(encoded, person_id, camera, filename):
    import tensorflow as tf

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
    import tensorflow as tf

    data_dir = _check_data_dir(data_dir)
    output_dir = os.path.abspath(output_dir or os.path.join(data_dir, TFRECORD_SUBDIR))
    shard_size = pipeline.check_positive_int("shard_size", shard_size)
    listings = _open(data_dir, "folders", None, skip_unparsable)[0]
    make_writable_dir(output_dir, "output_dir")
    manifest_path = os.path.join(output_dir, MANIFEST)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)

    # Version 1 held the JPEG bytes unchanged; it still reads the same (preprocess resizes).
    manifest = {"format": MANIFEST_FORMAT, "version": 2, "data_dir": data_dir,
                "stored_size": list(STORED_SIZE), "splits": {}}
    for split, listing in listings.items():
        num_shards = max(1, math.ceil(len(listing) / shard_size))
        shards = [f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
        for i, shard in enumerate(shards):
            final = os.path.join(output_dir, shard)
            tmp = os.path.join(output_dir, f".{shard}.tmp")
            indices = np.arange(i * shard_size, min((i + 1) * shard_size, len(listing)))
            images = _encoded_dataset(listing, None, indices).map(
                lambda e: tf.io.encode_png(stored_image(tf.io.decode_image(e, channels=3, expand_animations=False))),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            try:
                with tf.io.TFRecordWriter(tmp) as writer:
                    for k, encoded in zip(indices, images.as_numpy_iterator()):
                        writer.write(_example(encoded, listing.ids[k], listing.cams[k], listing.filenames[k]))
                os.replace(tmp, final)
            except BaseException:
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise
        for stale in glob.glob(os.path.join(output_dir, f"{split}-*-of-*.tfrecord")):
            if os.path.basename(stale) not in shards:
                os.remove(stale)
        manifest["splits"][split] = {
            "folder": FOLDERS[split],
            "shards": shards,
            "num_examples": int(len(listing)),
        }
        logger.info("Market-1501: wrote %d %s examples in %d shard(s).", len(listing), split, num_shards)
    atomic_write_json(manifest_path, manifest)
    return manifest


def _read_manifest(tfrecord_dir):
    import json

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


def _tfrecord_listing(tfrecord_dir, manifest, split):
    """Reads a split's ids, cameras and file names back from its records."""
    import tensorflow as tf

    info = manifest["splits"][split]
    shards = [os.path.join(tfrecord_dir, s) for s in info["shards"]]
    meta_spec = {k: v for k, v in _record_features().items() if k != "image/encoded"}
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


# --------------------------------------------------------------------------------------
# Datasets.
# --------------------------------------------------------------------------------------
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


def _encoded_dataset(listing, shards, indices=None):
    """Encoded images (JPEG files or PNG records) of a split in listing order; only the (increasing) ``indices`` if given."""
    import tensorflow as tf

    if shards is None:
        paths = listing.paths if indices is None else listing.paths[indices]
        return tf.data.Dataset.from_tensor_slices(paths).map(tf.io.read_file)
    spec = {"image/encoded": _record_features()["image/encoded"]}
    encoded = tf.data.TFRecordDataset(shards).map(lambda r: tf.io.parse_single_example(r, spec)["image/encoded"])
    if indices is None:
        return encoded
    mask = np.zeros(len(listing), bool)
    mask[indices] = True
    return tf.data.Dataset.zip(encoded, tf.data.Dataset.from_tensor_slices(mask)).filter(lambda e, m: m).map(
        lambda e, m: e
    )


def _eval_split(listing, shards, image_size, batch_size):
    import tensorflow as tf

    images = (
        _encoded_dataset(listing, shards)
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


def _labelled_set(train_ids, labeled_ids, labeled_fraction, labeled_selection, seed):
    """The original ids that keep their labels (all of them when nothing is asked)."""
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


def _open(data_dir, source, tfrecord_dir, skip_unparsable, splits=tuple(FOLDERS)):
    """Lists ``splits`` from the folders or the TFRecords, as ``source`` says.

    ``source="auto"`` reads the TFRecords when a finished conversion is in
    ``tfrecord_dir`` (default ``data_dir/tfrecords``), else the folders. A missing
    ``gt_bbox`` is left out. Returns ``(listings, shards, source, data_dir,
    tfrecord_dir)``; ``shards[split]`` is None for a folder.
    """
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; expected one of {list(SOURCES)}.")
    if tfrecord_dir is None:
        data_dir = _check_data_dir(data_dir)
        tfrecord_dir = os.path.join(data_dir, TFRECORD_SUBDIR)
    tfrecord_dir = os.path.abspath(os.path.expanduser(os.fspath(tfrecord_dir)))
    if source == "auto":
        source = "tfrecords" if os.path.isfile(os.path.join(tfrecord_dir, MANIFEST)) else "folders"

    listings, shards = {}, {}
    if source == "tfrecords":
        manifest = _read_manifest(tfrecord_dir)
        for split in splits:
            if split in manifest["splits"]:
                listings[split], shards[split] = _tfrecord_listing(tfrecord_dir, manifest, split)
            elif split in REQUIRED_SPLITS:
                raise DataError(f"The Market-1501 TFRecords in {tfrecord_dir} have no {split} split; convert again.")
    else:
        data_dir = _check_data_dir(data_dir)
        for split in splits:
            if split == "gt_bbox" and not os.path.isdir(split_folder(data_dir, split)):
                logger.warning("Market-1501: no gt_bbox folder in %s; multi-query evaluation unavailable.", data_dir)
                continue
            listings[split] = list_split(data_dir, split, skip_unparsable)
            shards[split] = None
    return listings, shards, source, data_dir, tfrecord_dir


def train_labels(ids, labeled_ids=None, labeled_fraction=None, labeled_selection="random", seed=0):
    """Class labels of ``bounding_box_train`` images with original person ``ids``.

    Label k is the k-th of ``class_ids``: the sorted training ids (id > 0), or for
    semi-supervised training (Sec. 4.10; ``labeled_ids`` etc. as in :func:`load`) the
    sorted labelled ids. Unlabelled, junk (-1) and distractor (0) images get -1.
    Returns ``(labels int32, class_ids, train_ids, labelled ids or None for all)``.
    """
    ids = np.asarray(ids)
    keep = ids > 0
    if not keep.any():
        raise DataError("Market-1501 bounding_box_train holds no image of a real identity (id > 0).")
    train_ids = np.unique(ids[keep])
    labelled = _labelled_set(train_ids, labeled_ids, labeled_fraction, labeled_selection, seed)
    class_ids = train_ids if labelled is None else labelled
    position = np.minimum(np.searchsorted(class_ids, ids), len(class_ids) - 1)
    labels = np.where(class_ids[position] == ids, position, -1).astype(np.int32)
    labels[~keep] = -1
    return labels, class_ids, train_ids, labelled


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
      seed: seeds the per-epoch shuffle, the random flips and the choice of labelled
        identities; the same seed gives the same batches.
      image_size: network input ``(H, W)``; 224x224 as the original (MobileNet,
        Inception v1); e.g. ``(256, 128)`` keeps the 2:1 aspect.
      labeled_ids: semi-supervised DML (Sec. 4.10): only ``M`` training identities
        keep their labels, the other training images get label -1. As in the paper
        the ``M`` identities are a seeded random choice (``labeled_selection="first"``
        takes the first ``M`` in sorted id order instead). Labels are then
        ``0..M-1`` (labelled ids in sorted order) and ``num_classes`` is ``M``.
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
      each extra is a :class:`Market1501Split`. ``gt_bbox`` is absent when its folder
      (or records) are, and multi-query evaluation is then unavailable. ``info``
      holds the original id of every label (``train_ids``), the labelled ids, counts of
      dropped junk/distractor training images and the source.

    Raises:
      DatasetNotFoundError: ``data_dir`` is None or missing, or a split folder is.
      DataError: malformed names or an incomplete TFRecord conversion.
      ValueError: bad arguments.
    """
    import tensorflow as tf

    batch_size = pipeline.check_positive_int("batch_size", batch_size)
    eval_batch_size = (
        batch_size if eval_batch_size is None else pipeline.check_positive_int("eval_batch_size", eval_batch_size)
    )
    image_size = parse_image_size(image_size)
    seed = 0 if seed is None else int(seed)

    listings, shards, source, data_dir, tfrecord_dir = _open(data_dir, source, tfrecord_dir, skip_unparsable)

    # ---- training labels
    train = listings["train"]
    keep = train.ids > 0
    dropped = {"junk": int((train.ids == -1).sum()), "distractor": int((train.ids == 0).sum())}
    if dropped["junk"] or dropped["distractor"]:
        logger.warning(
            "Market-1501: dropped %d junk and %d distractor image(s) found in bounding_box_train.",
            dropped["junk"],
            dropped["distractor"],
        )
    labels, class_ids, train_ids, labelled = train_labels(
        train.ids, labeled_ids, labeled_fraction, labeled_selection, seed
    )

    num_kept = int(keep.sum())
    kept_labels = labels[keep]
    if shards["train"] is None:
        paths = train.paths[keep]
        examples = (
            tf.data.Dataset.from_tensor_slices((paths, kept_labels))
            .shuffle(num_kept, seed=seed, reshuffle_each_iteration=True)
            .map(lambda p, y: (tf.io.read_file(p), y))
        )
    else:
        examples = tf.data.Dataset.zip(
            _encoded_dataset(train, shards["train"], np.flatnonzero(keep)),
            tf.data.Dataset.from_tensor_slices(kept_labels),
        ).shuffle(num_kept, seed=seed, reshuffle_each_iteration=True)
    flips = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).map(lambda r: r % 2 == 1)
    train_dataset = (
        tf.data.Dataset.zip(examples, flips)
        .map(
            lambda ey, flip: (preprocess(ey[0], image_size, flip), ey[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )

    extras = {
        split: _eval_split(listings[split], shards[split], image_size, eval_batch_size)
        for split in ("query", "gallery", "gt_bbox")
        if split in listings
    }
    info = {
        "source": source,
        "data_dir": data_dir if source == "folders" else None,
        "tfrecord_dir": tfrecord_dir if source == "tfrecords" else None,
        "train_ids": class_ids,
        "all_train_ids": train_ids,
        "labeled_ids": labelled,
        "dropped": dropped,
        "unparsable_skipped": {s: l.num_unparsable_skipped for s, l in listings.items()},
        "image_size": image_size,
        "multi_query": "gt_bbox" in extras,
    }
    return DatasetBundle(
        name=NAME,
        train=train_dataset,
        test=None,
        num_classes=int(len(class_ids)),
        input_shape=(image_size[0], image_size[1], 3),
        train_size=num_kept,
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
    file name) order, labelled as :func:`load` with the same arguments labels them
    (class indices; -1 for the unlabelled ids of a semi-supervised run). ``split="test"``:
    the gallery (``bounding_box_test``) images of real identities (junk -1 and
    distractors 0000 left out), labelled with their ORIGINAL person id (Fig. 5 colours
    by identity). Images are preprocessed as the evaluation splits (:func:`preprocess`,
    no flip); ``source``/``tfrecord_dir`` as in :func:`load`. ``identities`` and
    ``limit`` select images as :func:`dml_tf.data.base.select_images` does.

    Returns ``(tf.data.Dataset of (images, labels int32) batches, number of images)``.
    """
    import tensorflow as tf

    from dml_tf.data.base import select_images

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
    batch_size = pipeline.check_positive_int("batch_size", batch_size)
    image_size = parse_image_size(image_size)
    folder = "train" if split == "train" else "gallery"
    listings, shards = _open(data_dir, source, tfrecord_dir, skip_unparsable, (folder,))[:2]
    listing = listings[folder]
    if split == "train":
        labels = train_labels(listing.ids, labeled_ids, labeled_fraction, labeled_selection, seed)[0]
    else:
        labels = listing.ids.astype(np.int32)
    real = np.flatnonzero(listing.ids > 0)
    if not len(real):
        raise DataError(f"Market-1501 {FOLDERS[folder]} holds no image of a real identity (id > 0).")
    indices = real[select_images(labels[real], identities, limit)]
    images = _encoded_dataset(listing, shards[folder], indices).map(
        lambda e: preprocess(e, image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    dataset = tf.data.Dataset.zip(images, tf.data.Dataset.from_tensor_slices(labels[indices]))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE), len(indices)
