"""Your own images: a folder with one sub-folder per class (``--dataset=folder``).

    DIR/cat/0001.jpg  DIR/cat/0002.png  DIR/dog/a.jpg ...          (split here)
    DIR/train/cat/... DIR/train/dog/... DIR/test/cat/... DIR/test/dog/...   (your split)

Files are the formats Keras' ``image_dataset_from_directory`` reads (``.jpg``,
``.jpeg``, ``.png``, ``.bmp``, ``.gif``; first frame), listed as it lists them: class
folders in sorted order (the class index), files sorted within a class; other files are
skipped. Each is decoded by ``tf.io.decode_image`` (Keras' own decoder), grayscale
images are repeated to three channels and an alpha channel is dropped (said once, with
a count), and resized to ``image_size`` with ``tf.image.resize`` (bilinear, as Keras'
``Resizing``); without ``image_size`` every image must have the same size.

Split: ``DIR/train`` and ``DIR/test`` when both exist (their classes must be the same);
else the images of ``DIR`` (or ``DIR/train``) are split per class, stratified, by a
fixed seed (``SPLIT_SEED``, independent of the training ``--seed``, so every run and
every arm of a study tests on the same images): ``validation_split`` of each class,
rounded, at least one image, goes to test.

Then as CIFAR (:func:`dml_tf.data.pipeline.classification_bundle`): the images are held
in memory as uint8, standardised per channel with the training images' statistics,
shuffled and augmented per element from ``seed``. Augmentation (``augment``):
``"auto"`` is ``"pad_crop"`` up to 64 pixels (reflect-pad an eighth of the side, random
crop, as the paper's CIFAR recipe) and ``"resized_crop"`` above (a random crop of 35% to
100% of the area, aspect 3/4 to 4/3, resized back: the Inception recipe); both flip
horizontally; ``"none"`` turns augmentation off.
"""

import logging
import math
import os

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


def list_classes(directory):
    """``(class names, [(path, class index)])`` of a one-sub-folder-per-class folder, in
    Keras' order; DataError when it holds no class folder or no image."""
    if not os.path.isdir(directory):
        raise DatasetNotFoundError(f"--data_dir {directory} is not a folder: expected one sub-folder "
                                   "of images per class (or train/ and test/ folders of them).")
    classes = sorted(d for d in os.listdir(directory)
                     if os.path.isdir(os.path.join(directory, d)) and not d.startswith("."))
    if not classes:
        raise DataError(f"{directory} holds no class folder: expected one sub-folder of images per "
                        f"class, e.g. {os.path.join(directory, 'cat', '0001.jpg')}.")
    files = []
    for index, name in enumerate(classes):
        folder = os.path.join(directory, name)
        for root, dirs, names in os.walk(folder, followlinks=True):
            dirs.sort()
            files += [(os.path.join(root, f), index) for f in sorted(names) if f.lower().endswith(FORMATS)]
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


def read_images(files, image_size=None):
    """The ``files`` as uint8 ``(N, H, W, 3)``: decoded, made RGB, resized to ``image_size``
    (H, W) when given. DataError naming a file that is not an image, or, without
    ``image_size``, the first file whose size differs from the first image's."""
    images, converted = [], {}
    for path in files:
        try:
            image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, ValueError) as err:
            raise DataError(f"{path} is not a readable image ({type(err).__name__}: "
                            f"{str(getattr(err, 'message', err)).splitlines()[0][:120]}).") from None
        channels = int(image.shape[-1])
        if channels != 3:
            converted[channels] = converted.get(channels, 0) + 1
            image = tf.image.grayscale_to_rgb(image[..., :1]) if channels in (1, 2) else image[..., :3]
        if image_size is not None:
            image = tf.image.resize(image, image_size, method="bilinear")
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        elif images and image.shape != images[0].shape:
            raise DataError(f"Images differ in size ({files[0]}: {_hw(images[0])}, {path}: {_hw(image)}): "
                            "pass --image_size=H,W to resize them all.")
        images.append(image.numpy())
    for channels, count in converted.items():
        kind = {1: "grayscale", 2: "grayscale with alpha", 4: "RGBA"}.get(channels, f"{channels}-channel")
        logger.warning("%d %s image(s) converted to RGB (e.g. the alpha channel dropped).", count, kind)
    return np.stack(images)


def _hw(image):
    return f"{image.shape[0]}x{image.shape[1]}"


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


def split_kind(data_dir):
    """``"folders"`` (DIR/train and DIR/test) or ``"validation_split"`` (DIR, or DIR/train,
    split here); DataError for a DIR/test without DIR/train."""
    has_train = os.path.isdir(os.path.join(data_dir, "train"))
    has_test = os.path.isdir(os.path.join(data_dir, "test"))
    if has_test and not has_train:
        raise DataError(f"{data_dir} has a test/ folder but no train/ folder: give both, or put the "
                        "class folders directly in it.")
    return "folders" if has_train and has_test else "validation_split"


def load_arrays(data_dir, image_size=None, validation_split=0.2):
    """The folder's ``train_images``/``test_images`` (uint8 NHWC),
    ``train_labels``/``test_labels`` (int32) and ``class_names``, split as the module
    docstring says."""
    if data_dir is None:
        raise DatasetNotFoundError("--dataset=folder needs --data_dir=DIR: a folder with one sub-folder "
                                   "of images per class.")
    train_dir, test_dir = os.path.join(data_dir, "train"), os.path.join(data_dir, "test")
    if split_kind(data_dir) == "folders":
        classes, train_files = list_classes(train_dir)
        test_classes, test_files = list_classes(test_dir)
        if test_classes != classes:
            only_train = sorted(set(classes) - set(test_classes))
            only_test = sorted(set(test_classes) - set(classes))
            raise DataError(f"The classes of {train_dir} and {test_dir} differ: only in train/: "
                            f"{', '.join(only_train) or '-'}; only in test/: {', '.join(only_test) or '-'}.")
        train = (read_images([p for p, _ in train_files], image_size),
                 np.array([i for _, i in train_files], np.int32))
        test = (read_images([p for p, _ in test_files], image_size),
                np.array([i for _, i in test_files], np.int32))
        if train[0].shape[1:] != test[0].shape[1:]:
            raise DataError(f"train/ images are {_hw(train[0][0])} but test/ images {_hw(test[0][0])}: "
                            "pass --image_size=H,W.")
    else:
        source = train_dir if os.path.isdir(train_dir) else data_dir
        classes, files = list_classes(source)
        images = read_images([p for p, _ in files], image_size)
        labels = np.array([i for _, i in files], np.int32)
        train_idx, test_idx = split_test(labels, validation_split)
        train, test = (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])
    return {"train_images": train[0], "train_labels": train[1], "test_images": test[0],
            "test_labels": test[1], "class_names": classes}


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
         train_per_class=None, image_size=None, validation_split=0.2, augment="auto"):
    """Your image folder as a :class:`DatasetBundle` (see the module docstring).

    ``image_size``: (H, W) every image is resized to (None: their common size);
    ``validation_split``: in (0, 1), the test share of each class when the folder has no
    train/ and test/; ``augment``: one of ``AUGMENTATIONS``. Other arguments as
    :func:`dml_tf.data.cifar.load`. ``extras``: ``class_names``, ``augment`` (resolved),
    ``image_size``, and the standardisation ``mean``/``std``.
    """
    if image_size is not None:
        image_size = tuple(pipeline.check_positive_int("image_size", int(v)) for v in image_size)
        if len(image_size) != 2:
            raise ValueError(f"image_size must be (height, width); got {image_size}.")
    if not 0.0 < float(validation_split) < 1.0:
        raise ValueError(f"validation_split must be in (0, 1); got {validation_split!r}.")
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}; got {augment!r}.")
    arrays = load_arrays(data_dir, image_size, float(validation_split))
    size = tuple(int(d) for d in arrays["train_images"].shape[1:3])
    resolved = resolve_augment(augment, size)
    bundle = pipeline.classification_bundle(
        "folder",
        lambda: arrays,
        train_augment_fn(resolved, size),
        num_classes=len(arrays["class_names"]),
        input_shape=size + (3,),
        batch_size=batch_size,
        seed=seed,
        labeled_fraction=labeled_fraction,
        shuffle_buffer=shuffle_buffer,
        train_per_class=train_per_class,
        extras=lambda a: {"class_names": a["class_names"], "augment": resolved, "image_size": list(size),
                          "split": split_kind(data_dir)},
    )
    logger.info("folder %s: %d classes, %d train / %d test images of %s, augment=%s", data_dir,
                bundle.num_classes, bundle.train_size, bundle.test_size, size, resolved)
    return bundle
