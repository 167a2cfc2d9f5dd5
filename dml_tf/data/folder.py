"""Your own images: a folder with one sub-folder per class (``--dataset=folder``).

    DIR/cat/0001.jpg  DIR/cat/0002.png  DIR/dog/a.jpg ...          (split here)
    DIR/train/cat/... DIR/train/dog/... DIR/test/cat/... DIR/test/dog/...   (your split)

Files are the formats Keras' ``image_dataset_from_directory`` reads (``.jpg``,
``.jpeg``, ``.png``, ``.bmp``, ``.gif``; first frame), listed as it lists them: class
folders in sorted order (the class index), files sorted within a class; other files are
skipped, and so are hidden names at every depth (a leading dot: ``.thumbnails/``,
macOS' ``._x.jpg``; Synology's ``@eaDir/``, ``#recycle/``; ``__MACOSX/``). Symbolic links
are followed, each folder once (no loop). Each image's header is read once when listed
(Pillow: its size and EXIF orientation; a file that is not an image is named then).

Decoding, in ``tf.data`` maps: ``tf.io.decode_image`` (Keras' own decoder), turned
upright by its EXIF orientation (phone photos; TensorFlow's decoder ignores it),
grayscale repeated to three channels, transparency (RGBA, grayscale + alpha) composited
onto white (each said once, with a count), and resized to ``image_size`` with
``tf.image.resize`` (bilinear, as Keras' ``Resizing``); without ``image_size`` every
image must have the same size.

Split: ``DIR/train`` and ``DIR/test`` when both exist (their classes must be the same;
``DIR/val`` or ``DIR/validation`` stands for a missing ``DIR/test``, and the log says
which folder was used); else the images of ``DIR`` (or ``DIR/train``) are split per
class, stratified, by a fixed seed (``SPLIT_SEED``, independent of the training
``--seed``, so every run and every arm of a study tests on the same images):
``validation_split`` of each class, rounded, at least one image, goes to test.

Streaming: the images are never all decoded at once. Only the file list is held; the
training pipeline (:func:`dml_tf.data.pipeline.train_dataset`) shuffles image *indices*
per epoch from ``seed`` and reads, decodes, augments and standardises each image in
parallel maps, so order, augmentation and exact resume are those of the in-memory
datasets. One streamed pass at the start counts every training pixel (256-bin
histograms: the standardisation statistics, exactly those of the decoded images held
at once) and checks that every file decodes. ``cache``: ``"memory"`` keeps the decoded
uint8 images in memory after that pass, a folder path keeps them there as raw files
(reused by later runs of the same files and size), ``"none"`` decodes every image at
every epoch; ``"auto"`` is ``"memory"`` when the decoded images (train and test) take
less than ``AUTO_CACHE_BYTES`` (1 GiB), else ``"none"``. The cache changes no number.

Augmentation (``augment``): ``"auto"`` is ``"pad_crop"`` up to 64 pixels (reflect-pad
an eighth of the side, random crop, as the paper's CIFAR recipe) and ``"resized_crop"``
above (a random crop of 35% to 100% of the area, aspect 3/4 to 4/3, resized back: the
Inception recipe); both flip horizontally; ``"none"`` turns augmentation off.
"""

import hashlib
import json
import logging
import math
import os
import shutil

import numpy as np
import tensorflow as tf

from dml_tf.data import augment as augment_lib
from dml_tf.data import pipeline
from dml_tf.errors import DataError, DatasetNotFoundError

logger = logging.getLogger(__name__)

FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # keras.utils.image_dataset_from_directory's
SPLIT_SEED = 20180618
AUGMENTATIONS = ("auto", "pad_crop", "resized_crop", "none")
SMALL_IMAGE = 64  # "auto": pad_crop up to this side, resized_crop above
SKIPPED_NAMES = ("@eaDir", "#recycle", "__MACOSX")  # Synology's metadata and bin, macOS zip archives'
TEST_FOLDERS = ("test", "val", "validation")
CACHES = ("auto", "memory", "none")  # or a folder
AUTO_CACHE_BYTES = 2 ** 30
SCAN_BATCH = 64
_ORIENTATION_TAG = 0x0112  # EXIF
_CACHE_FORMAT = 1


def hidden(name):
    """Whether a listing skips the file or folder ``name`` (see the module docstring)."""
    return name.startswith(".") or name in SKIPPED_NAMES


def walk_images(folder):
    """The image files (``FORMATS``) under ``folder``, in Keras' order (files sorted within
    a folder, then its sub-folders in sorted order), hidden names skipped at every depth,
    symbolic links followed and each folder visited once."""
    files, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back to a folder already listed: a loop, or a second way in
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not hidden(d))
        files += [os.path.join(root, f) for f in sorted(names) if not hidden(f) and f.lower().endswith(FORMATS)]
    return files


def list_classes(directory):
    """``(class names, [(path, class index)])`` of a one-sub-folder-per-class folder, in
    Keras' order; DataError when it holds no class folder or no image."""
    if not os.path.isdir(directory):
        raise DatasetNotFoundError(f"--data_dir {directory} is not a folder: expected one sub-folder "
                                   "of images per class (or train/ and test/ folders of them).")
    classes = sorted(d for d in os.listdir(directory)
                     if os.path.isdir(os.path.join(directory, d)) and not hidden(d))
    if not classes:
        raise DataError(f"{directory} holds no class folder: expected one sub-folder of images per "
                        f"class, e.g. {os.path.join(directory, 'cat', '0001.jpg')}.")
    files = [(path, index) for index, name in enumerate(classes)
             for path in walk_images(os.path.join(directory, name))]
    counts = np.bincount([i for _, i in files], minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if not files:
        raise DataError(f"{directory} holds no image ({', '.join(FORMATS)}) in its class folders "
                        f"({', '.join(classes[:5])}{'...' if len(classes) > 5 else ''}).")
    if empty:
        raise DataError(f"Class folder(s) {', '.join(empty)} in {directory} hold no image "
                        f"({', '.join(FORMATS)}).")
    if len(classes) < 2:
        raise DataError(f"{directory} holds a single class ({classes[0]}): classification needs two or more "
                        "class folders.")
    return classes, files


def _unreadable(path, err):
    return DataError(f"{path} is not a readable image ({type(err).__name__}: "
                     f"{str(getattr(err, 'message', err)).splitlines()[0][:120] if str(err) else ''}).")


def inspect(path):
    """``(height, width, EXIF orientation)`` of the image file ``path``, the size as shown
    (upright), from its header (Pillow); DataError when it is not a readable image."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = int(image.getexif().get(_ORIENTATION_TAG, 1))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from None
    orientation = orientation if 1 <= orientation <= 8 else 1
    return (width, height, orientation) if orientation >= 5 else (height, width, orientation)


def _upright(image, orientation):
    """``image`` (HWC) turned as EXIF ``orientation`` (1-8) says, as Pillow's
    ``ImageOps.exif_transpose``: each orientation is a transpose (5-8) followed by a
    left-right (2, 3, 6, 7) and an upside-down (3, 4, 7, 8) flip. Branch-free: a
    ``tf.switch_case`` makes every ``tf.data`` pipeline slower to start by half a second."""
    orientation = tf.cast(orientation, tf.int32)
    image = tf.transpose(image, tf.where(orientation >= 5, [1, 0, 2], [0, 1, 2]))
    flip_lr = tf.reduce_any(tf.equal(orientation, [2, 3, 6, 7]))
    flip_ud = tf.reduce_any(tf.equal(orientation, [3, 4, 7, 8]))
    return tf.reverse(image, tf.boolean_mask([1, 0], [flip_lr, flip_ud]))


def _rgb(image):
    """A decoded uint8 image (1 to 4 channels) as RGB: gray repeated, transparency (the
    last of 2 or 4 channels) composited onto white. Branch-free, as :func:`_upright`."""
    channels = tf.shape(image)[-1]
    color = tf.gather(image, tf.where(channels < 3, [0, 0, 0], [0, 1, 2]), axis=2)
    opaque = tf.not_equal(channels % 2, 0)
    alpha = tf.where(opaque, 1.0, tf.cast(tf.gather(image, [channels - 1], axis=2), tf.float32) / 255.0)
    mixed = tf.cast(color, tf.float32) * alpha + 255.0 * (1.0 - alpha)  # opaque: the color, exactly
    rgb = tf.cast(tf.clip_by_value(tf.round(mixed), 0, 255), tf.uint8)
    rgb.set_shape([None, None, 3])
    return rgb


def _resized(image, size):
    image = tf.image.resize(image, size, method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _raw_name(index):
    return f"{index:08d}.u8"


class ImageFiles:
    """Image files as an image source of :mod:`dml_tf.data.pipeline`: ``len``, ``shape``
    (N, H, W, 3), ``files[indices]`` (a subset), ``fetch_fn()`` (index -> uint8 image, in a
    ``tf.data`` map). The images are decoded on demand, or read from the cache that
    :meth:`load` fills."""

    def __init__(self, paths, orientations, size, resize):
        self.paths = list(paths)
        self.orientations = np.asarray(orientations, np.int32)
        self.size, self.resize = tuple(int(v) for v in size), bool(resize)
        self.shape = (len(self.paths),) + self.size + (3,)
        self.cache = "none"
        self._backing = None  # the decoded images (a uint8 variable), or the cache folder

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, indices):
        indices = np.asarray(indices)
        return ImageFiles([self.paths[i] for i in indices], self.orientations[indices], self.size, self.resize)

    @property
    def nbytes(self):
        """The bytes of the decoded uint8 images."""
        return int(np.prod(self.shape, dtype=np.int64))

    def decode_fn(self):
        """``decode(index) -> (uint8 image (H, W, 3), channels of the file)``."""
        paths, orientations = tf.constant(self.paths or [""]), tf.constant(self.orientations)
        shape, turned = self.shape[1:], bool((self.orientations != 1).any())

        def decode(index):
            raw = tf.io.decode_image(tf.io.read_file(paths[index]), expand_animations=False)
            image = _rgb(raw)
            if turned:
                image = _upright(image, orientations[index])
            if self.resize:
                image = _resized(image, self.size)
            return tf.ensure_shape(image, shape), tf.shape(raw)[-1]

        return decode

    def fetch_fn(self):
        """``fetch(index) -> uint8 image (H, W, 3)``: from the cache, else decoded."""
        if isinstance(self._backing, tf.Variable):
            images = self._backing
            return lambda index: tf.gather(images, index)
        if isinstance(self._backing, str):
            names = tf.constant([os.path.join(self._backing, _raw_name(i)) for i in range(len(self))] or [""])
            shape = self.shape[1:]
            return lambda index: tf.reshape(tf.io.decode_raw(tf.io.read_file(names[index]), tf.uint8), shape)
        decode = self.decode_fn()
        return lambda index: decode(index)[0]

    def batches(self, batch_size, histogram=False):
        """The decoded images in order, ``(images, channels[, histograms])`` per batch of
        ``batch_size``; a file that does not decode is a DataError naming it."""
        decode = self.decode_fn()

        def element(index):
            image, channels = decode(index)
            if not histogram:
                return image, channels
            counts = [tf.math.bincount(tf.reshape(tf.cast(image[..., c], tf.int32), [-1]), minlength=256,
                                       maxlength=256, dtype=tf.int64) for c in range(3)]
            return image, channels, tf.stack(counts)

        dataset = (tf.data.Dataset.range(len(self))
                   .map(element, num_parallel_calls=pipeline.AUTOTUNE, deterministic=True)
                   .batch(batch_size).prefetch(2)
                   .with_options(pipeline.deterministic_options()))
        done = 0
        iterator = iter(dataset)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except tf.errors.OpError as err:
                raise self._decode_error(done, batch_size, err) from None
            done += int(batch[0].shape[0])
            yield batch

    def _decode_error(self, start, count, err):
        decode = self.decode_fn()
        for index in range(start, min(start + count, len(self))):
            try:
                decode(tf.constant(index, tf.int64))
            except tf.errors.OpError as file_err:
                return _unreadable(self.paths[index], file_err)
        return _unreadable(self.paths[start], err)

    def scan(self, histogram=False, keep=None):
        """One pass over the images: ``(pixel histograms (3, 256) or None, {channels: count})``;
        ``keep(start, uint8 images)`` gets every batch."""
        counts, channels, start = np.zeros((3, 256), np.int64), {}, 0
        for batch in self.batches(SCAN_BATCH, histogram):
            for c, n in zip(*np.unique(batch[1].numpy(), return_counts=True)):
                channels[int(c)] = channels.get(int(c), 0) + int(n)
            if histogram:
                counts += batch[2].numpy().sum(axis=0)
            if keep is not None:
                keep(start, batch[0].numpy())
            start += int(batch[0].shape[0])
        return (counts if histogram else None), channels

    def to_array(self):
        """All the images decoded, uint8 ``(N, H, W, 3)``, and ``{channels: count}``."""
        array = np.empty(self.shape, np.uint8)
        _, channels = self.scan(keep=lambda start, images: array.__setitem__(slice(start, start + len(images)),
                                                                              images))
        return array, channels

    def load(self, cache, histogram=False):
        """Checks that every image decodes and fills ``cache`` ("memory", "none" or a
        folder) in one pass; returns :meth:`scan`'s ``(histograms, channels)``."""
        self.cache = cache
        if cache == "none":
            return self.scan(histogram)
        if cache == "memory":
            store = pipeline.image_store(self.shape, name="folder_image_cache")
            result = self.scan(histogram, keep=lambda start, images: pipeline.store_images(store, start, images))
            self._backing = store
            return result
        return self._load_folder(cache, histogram)

    def cache_key(self):
        """A digest of the files (paths, sizes, modification times, orientations) and the size."""
        stats = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in self.paths]
        record = [_CACHE_FORMAT, list(self.size), self.resize, stats, self.orientations.tolist()]
        return hashlib.sha256(json.dumps(record).encode()).hexdigest()[:20]

    def _load_folder(self, cache_dir, histogram):
        folder = os.path.join(cache_dir, f"images-{self.cache_key()}")
        meta_path = os.path.join(folder, "meta.json")
        if not os.path.isfile(meta_path):
            tmp = f"{folder}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)

            def keep(start, images):
                for i, image in enumerate(images):
                    with open(os.path.join(tmp, _raw_name(start + i)), "wb") as f:
                        f.write(image.tobytes())

            try:
                counts, channels = self.scan(histogram=True, keep=keep)
                with open(os.path.join(tmp, "meta.json"), "w") as f:
                    json.dump({"histogram": counts.tolist(), "channels": channels, "shape": list(self.shape)}, f)
                os.rename(tmp, folder)
            except OSError:
                if not os.path.isfile(meta_path):  # not another run's, finished meanwhile
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        with open(meta_path) as f:
            meta = json.load(f)
        self._backing = folder
        return (np.asarray(meta["histogram"], np.int64) if histogram else None), \
            {int(k): v for k, v in meta["channels"].items()}


def image_files(paths, image_size=None):
    """:class:`ImageFiles` of ``paths``, listed (headers read); without ``image_size``, a
    DataError names the first file whose size differs from the first's."""
    shapes = [inspect(p) for p in paths]
    turned = sum(o != 1 for _, _, o in shapes)
    if turned:
        logger.info("%d image(s) turned upright by their EXIF orientation.", turned)
    if image_size is None and shapes:
        first = shapes[0][:2]
        for path, (h, w, _) in zip(paths, shapes):
            if (h, w) != first:
                raise DataError(f"Images differ in size ({paths[0]}: {first[0]}x{first[1]}, {path}: {h}x{w}): "
                                "pass --image_size=H,W to resize them all.")
    size = image_size if image_size is not None else (shapes[0][:2] if shapes else (1, 1))
    return ImageFiles(paths, [o for _, _, o in shapes], size, resize=image_size is not None)


def say_conversions(*counts):
    """Logs, once, how many images were made RGB (``{channels: count}``, summed over ``counts``)."""
    channels = {c: sum(n.get(c, 0) for n in counts) for c in set().union(*counts)}
    kinds = {1: "grayscale image(s) converted to RGB (the gray channel repeated)",
             2: "grayscale image(s) with transparency converted to RGB (composited onto white)",
             4: "RGBA image(s) converted to RGB (composited onto white)"}
    for c in sorted(channels):
        if c != 3:
            logger.warning("%d %s.", channels[c], kinds.get(c, f"{c}-channel image(s) converted to RGB"))


def read_images(files, image_size=None):
    """The ``files`` decoded as training decodes them (see the module docstring), uint8
    ``(N, H, W, 3)``, all in memory. DataError naming a file that is not an image, or,
    without ``image_size``, the first file whose size differs from the first image's."""
    images, channels = image_files(files, image_size).to_array()
    say_conversions(channels)
    return images


def split_test(labels, validation_split, split_seed=SPLIT_SEED):
    """Stratified split: ``(train indices, test indices)``. Per class,
    ``validation_split`` of its images (rounded half up, at least one) go to test, drawn
    by ``np.random.default_rng(split_seed)``; DataError naming a class that would be left
    without a training or a test image."""
    labels = np.asarray(labels)
    for c in np.unique(labels):
        n = int((labels == c).sum())
        if n < 2 or pipeline.per_class_count(n, validation_split) >= n:
            raise DataError(f"Class {c} has {n} image(s): validation_split={validation_split} would leave "
                            "it without a training or a test image; add images, or give train/ and test/ "
                            "folders.")
    test_mask = pipeline.select_labeled(labels, validation_split, split_seed)[1]
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)


def find_test_folder(data_dir):
    """The first of ``DIR/test``, ``DIR/val``, ``DIR/validation`` that is a folder, or None."""
    return next((os.path.join(data_dir, name) for name in TEST_FOLDERS
                 if os.path.isdir(os.path.join(data_dir, name))), None)


def split_kind(data_dir):
    """``"folders"`` (DIR/train and DIR/test, or DIR/val) or ``"validation_split"`` (DIR,
    or DIR/train, split here); DataError for a test folder without DIR/train."""
    has_train = os.path.isdir(os.path.join(data_dir, "train"))
    test_dir = find_test_folder(data_dir)
    if test_dir is not None and not has_train:
        raise DataError(f"{data_dir} has a {os.path.basename(test_dir)}/ folder but no train/ folder: give "
                        "both, or put the class folders directly in it.")
    return "folders" if has_train and test_dir is not None else "validation_split"


def load_sources(data_dir, image_size=None, validation_split=0.2):
    """The folder's ``train_images``/``test_images`` (:class:`ImageFiles`, nothing decoded
    yet), ``train_labels``/``test_labels`` (int32), ``class_names`` and ``test_folder`` (the
    folder of the test split, None when split here), split as the module docstring says."""
    if data_dir is None:
        raise DatasetNotFoundError("--dataset=folder needs --data_dir=DIR: a folder with one sub-folder "
                                   "of images per class.")
    train_dir, test_dir = os.path.join(data_dir, "train"), find_test_folder(data_dir)
    if split_kind(data_dir) == "folders":
        if os.path.basename(test_dir) != "test":
            logger.warning("%s has no test/ folder: %s/ is the test split.", data_dir, os.path.basename(test_dir))
        classes, train_files = list_classes(train_dir)
        test_classes, test_files = list_classes(test_dir)
        if test_classes != classes:
            only_train = sorted(set(classes) - set(test_classes))
            only_test = sorted(set(test_classes) - set(classes))
            name = os.path.basename(test_dir)
            raise DataError(f"The classes of {train_dir} and {test_dir} differ: only in train/: "
                            f"{', '.join(only_train) or '-'}; only in {name}/: {', '.join(only_test) or '-'}.")
        train = (image_files([p for p, _ in train_files], image_size),
                 np.array([i for _, i in train_files], np.int32))
        test = (image_files([p for p, _ in test_files], image_size),
                np.array([i for _, i in test_files], np.int32))
        if train[0].shape[1:] != test[0].shape[1:]:
            raise DataError(f"train/ images are {_hw(train[0])} but {os.path.basename(test_dir)}/ images "
                            f"{_hw(test[0])}: pass --image_size=H,W.")
    else:
        test_dir = None
        source = train_dir if os.path.isdir(train_dir) else data_dir
        classes, files = list_classes(source)
        images = image_files([p for p, _ in files], image_size)
        labels = np.array([i for _, i in files], np.int32)
        train_idx, test_idx = split_test(labels, validation_split)
        train, test = (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])
    return {"train_images": train[0], "train_labels": train[1], "test_images": test[0],
            "test_labels": test[1], "class_names": classes, "test_folder": test_dir}


def _hw(files):
    return f"{files.size[0]}x{files.size[1]}"


def load_arrays(data_dir, image_size=None, validation_split=0.2):
    """:func:`load_sources` with the images decoded into memory (uint8 NHWC arrays)."""
    sources = load_sources(data_dir, image_size, validation_split)
    (train, train_channels), (test, test_channels) = (sources["train_images"].to_array(),
                                                      sources["test_images"].to_array())
    say_conversions(train_channels, test_channels)
    return {**sources, "train_images": train, "test_images": test}


def resolve_cache(cache, nbytes):
    """``cache`` made concrete for decoded images of ``nbytes``: "memory", "none" or a
    folder (made if missing); ValueError for a path that is not a folder."""
    if cache == "auto":
        return "memory" if nbytes < AUTO_CACHE_BYTES else "none"
    if cache in CACHES:
        return cache
    if not isinstance(cache, str) or not cache:
        raise ValueError(f"cache must be one of {', '.join(CACHES)} or a folder; got {cache!r}.")
    if os.path.exists(cache) and not os.path.isdir(cache):
        raise ValueError(f"--cache={cache} is not a folder: expected memory, none, auto or a folder for "
                         "the decoded images.")
    os.makedirs(cache, exist_ok=True)
    return cache


def _prepare(cache, record):
    """The ``prepare`` of :func:`dml_tf.data.pipeline.classification_bundle`: one pass
    over the training images (their statistics) and the test images (checked), filling
    the cache; ``record["cache"]``: the cache used."""
    def prepare(train, test):
        record["cache"] = resolve_cache(cache, train.nbytes + test.nbytes)
        counts, train_channels = train.load(record["cache"], histogram=True)
        _, test_channels = test.load(record["cache"])
        say_conversions(train_channels, test_channels)
        return pipeline.histogram_stats(counts)

    return prepare


def resolve_augment(augment, image_size):
    """``augment`` with ``"auto"`` made concrete for images of ``image_size`` (H, W)."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}; got {augment!r}.")
    if augment == "auto":
        return "pad_crop" if min(image_size) <= SMALL_IMAGE else "resized_crop"
    return augment


def random_resized_crop(image, seed, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    """A random crop of ``scale`` of the area and aspect ``ratio`` (log-uniform), resized
    back to the image's size (bilinear): the Inception training crop, stateless."""
    shape = image.shape
    h, w = float(shape[0]), float(shape[1])
    area_seed, ratio_seed, offset_seed = tf.unstack(augment_lib.split_seed(seed, 3))
    area = tf.random.stateless_uniform([], area_seed, scale[0], scale[1]) * h * w
    log_ratio = tf.random.stateless_uniform([], ratio_seed, math.log(ratio[0]), math.log(ratio[1]))
    aspect = tf.exp(log_ratio)
    crop_h = tf.clip_by_value(tf.round(tf.sqrt(area / aspect)), 1.0, h)
    crop_w = tf.clip_by_value(tf.round(tf.sqrt(area * aspect)), 1.0, w)
    offsets = tf.random.stateless_uniform([2], offset_seed, 0.0, 1.0)
    top = tf.cast(offsets[0] * (h - crop_h + 1), tf.int32)
    left = tf.cast(offsets[1] * (w - crop_w + 1), tf.int32)
    crop = tf.slice(image, tf.stack([top, left, 0]),
                    tf.stack([tf.cast(crop_h, tf.int32), tf.cast(crop_w, tf.int32), shape[2]]))
    return tf.ensure_shape(tf.image.resize(crop, shape[:2], method="bilinear"), shape)


def train_augment_fn(augment, image_size):
    """The per-image training augmentation (image in [0, 1], shape-[2] seed) of ``augment``."""
    augment = resolve_augment(augment, image_size)
    pad = max(1, min(image_size) // 8)

    def pad_crop(image, seed):
        return augment_lib.cifar_train_augment(image, seed, pad=pad, flip=True)

    def resized_crop(image, seed):
        crop_seed, flip_seed = tf.unstack(augment_lib.split_seed(seed, 2))
        return augment_lib.random_flip(random_resized_crop(image, crop_seed), flip_seed)

    return {"pad_crop": pad_crop, "resized_crop": resized_crop, "none": lambda image, seed: image}[augment]


def load(data_dir=None, batch_size=64, seed=0, labeled_fraction=1.0, shuffle_buffer=None,
         train_per_class=None, image_size=None, validation_split=0.2, augment="auto", cache="auto"):
    """Your image folder as a :class:`DatasetBundle`, streamed from disk (see the module
    docstring).

    ``image_size``: (H, W) every image is resized to (None: their common size);
    ``validation_split``: in (0, 1), the test share of each class when the folder has no
    train/ and test/; ``augment``: one of ``AUGMENTATIONS``; ``cache``: one of ``CACHES`` or
    a folder. Other arguments as :func:`dml_tf.data.cifar.load`. ``extras``:
    ``class_names``, ``augment`` (resolved), ``image_size``, ``split``, ``test_folder``,
    ``cache`` (resolved), and the standardisation ``mean``/``std``.
    """
    if image_size is not None:
        image_size = tuple(pipeline.check_positive_int("image_size", int(v)) for v in image_size)
        if len(image_size) != 2:
            raise ValueError(f"image_size must be (height, width); got {image_size}.")
    if not 0.0 < float(validation_split) < 1.0:
        raise ValueError(f"validation_split must be in (0, 1); got {validation_split!r}.")
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}; got {augment!r}.")
    if cache not in CACHES:
        resolve_cache(cache, 0)  # a bad path fails before the listing
    sources = load_sources(data_dir, image_size, float(validation_split))
    size = tuple(int(d) for d in sources["train_images"].shape[1:3])
    resolved, record = resolve_augment(augment, size), {}
    bundle = pipeline.classification_bundle(
        "folder",
        lambda: sources,
        train_augment_fn(resolved, size),
        num_classes=len(sources["class_names"]),
        input_shape=size + (3,),
        batch_size=batch_size,
        seed=seed,
        labeled_fraction=labeled_fraction,
        shuffle_buffer=shuffle_buffer,
        train_per_class=train_per_class,
        prepare=_prepare(cache, record),
        extras=lambda a: {"class_names": a["class_names"], "augment": resolved, "image_size": list(size),
                          "split": split_kind(data_dir), "test_folder": a["test_folder"],
                          "cache": record["cache"]},
    )
    logger.info("folder %s: %d classes, %d train / %d test images of %s, augment=%s, cache=%s", data_dir,
                bundle.num_classes, bundle.train_size, bundle.test_size, size, resolved, record["cache"])
    return bundle
