"""CIFAR-10 / CIFAR-100 with the paper's augmentation (Sec. 4.1).

Sources, in this order:

* ``data_dir`` given: the official "python version" archives as distributed by
  https://www.cs.toronto.edu/~kriz/cifar.html -- ``cifar-100-python.tar.gz`` /
  ``cifar-10-python.tar.gz`` -- or their extracted folders ``cifar-100-python/``
  (``train``, ``test``, ``meta``) / ``cifar-10-batches-py/`` (``data_batch_1..5``,
  ``test_batch``, ``batches.meta``).  ``data_dir`` may also be the extracted folder
  itself or the archive file.  The batches are pickles (``encoding="bytes"``):
  ``b"data"`` uint8 ``(N, 3072)``, each row the 32x32 red plane, then green, then
  blue (row-major CHW); labels in ``b"fine_labels"`` (CIFAR-100) or ``b"labels"``
  (CIFAR-10).  They are read with a restricted unpickler that only builds NumPy
  arrays, lists, dicts and strings (a tampered file cannot run code).
* ``data_dir=None``: ``tensorflow_datasets`` ("cifar100" / "cifar10"), read whole
  into NumPy.  If the data set is not prepared there and the download host is
  unreachable, the loader fails at once instead of after tfds' retries.

Preprocessing: images are scaled to [0, 1] and standardised per channel (as WRN,
Zagoruyko & Komodakis 2016, whose CIFAR settings the paper follows; the DML paper
itself does not mention it) with the mean and standard deviation of the *loaded
training images* (computed here, not
hard-coded; for the full CIFAR-100 training set about mean (0.507, 0.487, 0.441),
std (0.267, 0.256, 0.276)); they are in ``bundle.extras["mean"]`` / ``["std"]``.
Training augmentation exactly as the paper: reflect-pad 4 pixels, random 32x32 crop,
random horizontal flip (:mod:`dml_tf.data.augment`); none at test time.
Shuffling/augmentation determinism: :mod:`dml_tf.data.pipeline`.
"""

import importlib
import io
import logging
import os
import pickle
import socket
import tarfile
import zlib

import numpy as np

from dml_tf.data import augment, pipeline
from dml_tf.errors import DataError, DatasetNotFoundError

logger = logging.getLogger(__name__)

IMAGE_SHAPE = (32, 32, 3)
PAD = 4
DOWNLOAD_HOST = "www.cs.toronto.edu"

# name -> layout of the official python-version archive.
_LAYOUT = {
    "cifar100": {
        "title": "CIFAR-100",
        "archive": "cifar-100-python.tar.gz",
        "folder": "cifar-100-python",
        "train": ("train",),
        "test": ("test",),
        "meta": "meta",
        "label_key": b"fine_labels",
        "names_key": b"fine_label_names",
        "num_classes": 100,
    },
    "cifar10": {
        "title": "CIFAR-10",
        "archive": "cifar-10-python.tar.gz",
        "folder": "cifar-10-batches-py",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "meta": "batches.meta",
        "label_key": b"labels",
        "names_key": b"label_names",
        "num_classes": 10,
    },
}
for _entry in _LAYOUT.values():
    _entry["required"] = _entry["train"] + _entry["test"]  # the batches every copy must hold
    _entry["files"] = _entry["required"] + (_entry["meta"],)  # everything read (meta optional)
del _entry


def _layout(name):
    if name not in _LAYOUT:
        raise ValueError(f"Unknown CIFAR variant {name!r}; expected 'cifar10' or 'cifar100'.")
    return _LAYOUT[name]


def download_url(name):
    """The official download address of ``name``'s python-version archive."""
    return f"https://{DOWNLOAD_HOST}/~kriz/{_layout(name)['archive']}"


def _not_found_sentence(name, where):
    layout = _layout(name)
    return (
        f"{layout['title']} not found{where}: download {download_url(name)} and pass "
        f"--data_dir=DIR containing it (or its extracted {layout['folder']} folder)."
    )


# --------------------------------------------------------------------------- pickles


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only reconstructs NumPy arrays/dtypes (and latin-1 strings)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]
        return getattr(importlib.import_module(module), name)


_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


class _ArchiveReadError(Exception):
    """Reading an archive member failed: the archive is broken, not the pickle in it."""


class _MemberReader:
    """A tar member's file object for the unpickler: its read errors are
    :class:`_ArchiveReadError` (a truncated pickle also ends in EOFError)."""

    def __init__(self, file):
        self._file = file

    def _guarded(self, method, *args):
        try:
            return method(*args)
        except _ARCHIVE_ERRORS as err:
            raise _ArchiveReadError(err) from err

    def read(self, *args):
        return self._guarded(self._file.read, *args)

    def readline(self, *args):
        return self._guarded(self._file.readline, *args)

    def readinto(self, buffer):
        return self._guarded(self._file.readinto, buffer)


def _unpickle(raw, source):
    """The object pickled in ``raw`` (bytes, or a binary file read as it goes: the
    pickle is never held twice); DataError naming ``source`` when it is not readable."""
    try:
        return _RestrictedUnpickler(io.BytesIO(raw) if isinstance(raw, (bytes, bytearray)) else raw,
                                    encoding="bytes").load()
    except _ArchiveReadError:
        raise
    except Exception as err:  # pickle raises many types on bad input
        raise DataError(f"{source} is not a readable CIFAR pickle ({type(err).__name__}: {err}).") from err


def _get(batch, key):
    """``batch[key]`` for bytes keys (official files) or str keys (re-pickled files)."""
    if key in batch:
        return batch[key]
    return batch.get(key.decode("ascii"))


def _to_nhwc(rows):
    """CIFAR rows (N, 3072), CHW order -> a (N, 32, 32, 3) HWC view of them."""
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _batch_rows(raw, source, label_key):
    """One pickled CIFAR batch (bytes or a binary file) -> ``(b"data" uint8 (N, 3072),
    labels int32 (N,))``, checked; :func:`_to_nhwc` views the rows as images."""
    batch = _unpickle(raw, source)
    if not isinstance(batch, dict):
        raise DataError(f"{source}: expected a pickled dict with b'data' and {label_key!r}, got {type(batch).__name__}.")
    data, labels = _get(batch, b"data"), _get(batch, label_key)
    if data is None or labels is None:
        keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
        raise DataError(f"{source}: expected keys b'data' and {label_key!r}, found {keys}.")
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise DataError(f"{source}: b'data' must be a uint8 array of shape (N, 3072), got {data.dtype} {data.shape}.")
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{source}: {label_key!r} must hold {data.shape[0]} integer labels, got {labels.dtype} {labels.shape}.")
    return data, labels.astype(np.int32)


def _names(raw, source, names_key):
    meta = _unpickle(raw, source)
    names = _get(meta, names_key) if isinstance(meta, dict) else None
    if names is None:
        return None
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


# --------------------------------------------------------------------------- files


def _find_source(name, data_dir):
    """``("folder" | "archive", path)`` for ``data_dir``, or DatasetNotFoundError."""
    layout = _layout(name)
    data_dir = os.fspath(data_dir)
    required = layout["required"]
    if os.path.isfile(data_dir):
        return "archive", data_dir
    if not os.path.isdir(data_dir):
        raise DatasetNotFoundError(_not_found_sentence(name, f" (--data_dir {data_dir} does not exist)"))
    folder = os.path.join(data_dir, layout["folder"])
    for candidate in (folder, data_dir):
        if any(os.path.exists(os.path.join(candidate, f)) for f in required):
            missing = [f for f in required if not os.path.isfile(os.path.join(candidate, f))]
            if missing:
                raise DatasetNotFoundError(
                    f"{layout['title']} folder {candidate} is incomplete: missing {', '.join(missing)} "
                    f"(expected {', '.join(required)}); re-extract {download_url(name)} there."
                )
            return "folder", candidate
    archive = os.path.join(data_dir, layout["archive"])
    if os.path.isfile(archive):
        return "archive", archive
    raise DatasetNotFoundError(
        _not_found_sentence(
            name, f" in {data_dir} (expected {layout['archive']} or {layout['folder']}/ with {', '.join(required)})"
        )
    )


def _parse_archive(name, path, parse):
    """``{file name: parse(file name, file object)}`` of the batches (and meta) in the
    archive, each parsed as it is read; DataError when the archive cannot be read or
    lacks a batch."""
    layout = _layout(name)
    wanted = {f"{layout['folder']}/{f}": f for f in layout["files"]}
    found = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    f = wanted[member.name]
                    found[f] = parse(f, _MemberReader(tar.extractfile(member)))
    except (_ArchiveReadError, *_ARCHIVE_ERRORS) as err:
        err = err.__cause__ if isinstance(err, _ArchiveReadError) else err
        raise DataError(
            f"Could not read {path} ({type(err).__name__}: {err}): expected the intact {layout['archive']} "
            f"from {download_url(name)}; it may be truncated or corrupt -- download it again."
        ) from err
    missing = [f for f in layout["required"] if f not in found]
    if missing:
        raise DataError(
            f"{path} lacks {', '.join(layout['folder'] + '/' + f for f in missing)}: expected the official "
            f"{layout['archive']} from {download_url(name)}."
        )
    return found


def _parse_folder(name, folder, parse):
    """``{file name: parse(file name, open file)}`` of the batches (and meta, if present)
    in ``folder``."""
    found = {}
    for f in _layout(name)["files"]:
        path = os.path.join(folder, f)
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                found[f] = parse(f, handle)
    return found


def _stacked(parts):
    """The images of ``parts`` (a list of ``(CIFAR rows, labels)``, emptied as it goes) in
    one uint8 NHWC array: each batch is copied once, HWC, and dropped."""
    images = np.empty((sum(len(rows) for rows, _ in parts),) + IMAGE_SHAPE, np.uint8)
    start = 0
    while parts:
        rows, _ = parts.pop(0)
        np.copyto(images[start:start + len(rows)], _to_nhwc(rows))
        start += len(rows)
    return images


def read_arrays(name, data_dir):
    """Reads the official archive or folder in ``data_dir`` into NumPy.

    Returns a dict with ``train_images``/``test_images`` (uint8 NHWC, RGB),
    ``train_labels``/``test_labels`` (int32) and ``class_names`` (list or None).
    Raises DatasetNotFoundError when the files are not there, DataError when they
    are malformed. Each file is parsed as it is read and each image copied once (HWC):
    the images are held at most twice while reading (the pickled rows, the array).
    """
    layout = _layout(name)
    kind, path = _find_source(name, data_dir)

    def source(f):
        return f"{path}:{layout['folder']}/{f}" if kind == "archive" else os.path.join(path, f)

    def parse(f, file):
        if f == layout["meta"]:
            return _names(file, source(f), layout["names_key"])
        return _batch_rows(file, source(f), layout["label_key"])

    batches = (_parse_archive if kind == "archive" else _parse_folder)(name, path, parse)
    arrays = {"class_names": batches.pop(layout["meta"], None)}
    for split in ("train", "test"):
        parts = [batches.pop(f) for f in layout[split]]
        labels = np.concatenate([p[1] for p in parts])
        if labels.size and (labels.min() < 0 or labels.max() >= layout["num_classes"]):
            raise DataError(
                f"{source(layout[split][0])}: labels must lie in [0, {layout['num_classes']}), "
                f"found [{labels.min()}, {labels.max()}]."
            )
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = _stacked(parts), labels
    return arrays


# --------------------------------------------------------------------------- tfds


def _host_reachable(host=DOWNLOAD_HOST, port=443, timeout=5.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _read_tfds(name):
    """Reads ``name`` from tensorflow-datasets; DatasetNotFoundError when it cannot."""
    sentence = _not_found_sentence(name, " (tensorflow-datasets could not provide it)")
    try:
        import tensorflow_datasets as tfds

        builder = tfds.builder(name)
        if not builder.is_prepared() and not _host_reachable():
            raise DatasetNotFoundError(
                _not_found_sentence(name, f" (not prepared in tensorflow-datasets and {DOWNLOAD_HOST} is unreachable)")
            )
        splits = tfds.load(name, split=["train", "test"], as_supervised=True, batch_size=-1)
        (train_x, train_y), (test_x, test_y) = tfds.as_numpy(splits)
        names = None
        try:
            names = list(builder.info.features["label"].names)
        except Exception:  # class names are a nicety
            pass
    except DatasetNotFoundError:
        raise
    except Exception as err:
        raise DatasetNotFoundError(f"{sentence[:-1]} [{type(err).__name__}: {str(err)[:200]}].") from err
    return {
        "train_images": np.asarray(train_x, np.uint8),
        "train_labels": np.asarray(train_y, np.int32),
        "test_images": np.asarray(test_x, np.uint8),
        "test_labels": np.asarray(test_y, np.int32),
        "class_names": names,
    }


def load_arrays(name, data_dir=None):
    """The raw CIFAR arrays (see :func:`read_arrays`) from ``data_dir`` or, when it is
    None, from tensorflow-datasets (both validate ``name``)."""
    arrays = read_arrays(name, data_dir) if data_dir is not None else _read_tfds(name)
    for split in ("train", "test"):
        images = arrays[f"{split}_images"]
        if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{name} {split} images must have shape (N, 32, 32, 3), got {images.shape}.")
    return arrays


# --------------------------------------------------------------------------- load


def load(name, data_dir=None, batch_size=64, seed=0, labeled_fraction=1.0, shuffle_buffer=None,
         train_per_class=None):
    """CIFAR-10/100 as a :class:`DatasetBundle` with the paper's augmentation.

    Args:
      name: "cifar10" or "cifar100".
      data_dir: folder with the official archive or its extracted folder; None
        reads through tensorflow-datasets.
      batch_size: images per batch (train and test).
      seed: drives shuffling, augmentation and the labeled subset.
      labeled_fraction: in (0, 1]; keeps that fraction of each class labeled
        (rounded, at least one image per class, chosen by ``seed``) and labels the
        rest -1 (semi-supervised DML).
      shuffle_buffer: tf.data shuffle buffer; None = the whole training set.
      train_per_class: train on this many images of each class only (a stratified
        subset drawn by ``seed``; the statistics are the subset's); None = all.

    ``extras``: ``mean``/``std`` (per channel, [0, 1] scale, of the training
    images), ``labeled_mask`` (bool per training image),
    ``class_names``, ``source`` ("data_dir" or "tfds").
    """
    layout = _layout(name)

    def train_augment(image, element_seed):
        return augment.cifar_train_augment(image, element_seed, pad=PAD, flip=True)

    bundle = pipeline.classification_bundle(
        name,
        lambda: load_arrays(name, data_dir),
        train_augment,
        num_classes=layout["num_classes"],
        input_shape=IMAGE_SHAPE,
        batch_size=batch_size,
        seed=seed,
        labeled_fraction=labeled_fraction,
        shuffle_buffer=shuffle_buffer,
        train_per_class=train_per_class,
        extras=lambda arrays: {
            "class_names": arrays["class_names"],
            "source": "tfds" if data_dir is None else "data_dir",
        },
    )
    logger.info(
        "%s: %d train / %d test images, mean %s std %s",
        name,
        bundle.train_size,
        bundle.test_size,
        bundle.extras["mean"],
        bundle.extras["std"],
    )
    return bundle
