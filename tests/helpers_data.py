"""Small CIFAR archives in the REAL distributed layout, for tests.

``write_cifar_archive(tmp_path, "cifar100", n_train=40, n_test=20)`` writes
``cifar-100-python.tar.gz`` with members ``cifar-100-python/{train,test,meta}``
(``cifar-10-python.tar.gz`` with ``cifar-10-batches-py/{data_batch_1..5,
test_batch,batches.meta}`` for "cifar10"): pickled dicts with bytes keys, ``b"data"``
uint8 (N, 3072) rows in CHW order (1024 red, 1024 green, 1024 blue values), labels
as Python lists, file names and batch labels as bytes -- as the official files,
including their NumPy 1.x global names (``numpy.core.multiarray``).
"""

import io
import os
import pickle
import tarfile

import numpy as np

LAYOUTS = {
    "cifar100": {
        "archive": "cifar-100-python.tar.gz",
        "folder": "cifar-100-python",
        "num_classes": 100,
    },
    "cifar10": {
        "archive": "cifar-10-python.tar.gz",
        "folder": "cifar-10-batches-py",
        "num_classes": 10,
    },
}


def pickle_like_cifar(obj):
    """Protocol-2 pickle whose NumPy globals read ``numpy.core.*`` as in the real files."""
    data = pickle.dumps(obj, protocol=2)
    return data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def to_cifar_rows(images):
    """NHWC uint8 (N, 32, 32, 3) -> CIFAR rows (N, 3072) in CHW order."""
    return np.ascontiguousarray(np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(images), 3072))


def _labels(rng, n, num_classes):
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def cifar_members(name="cifar100", n_train=40, n_test=20, seed=0):
    """``({member file name: bytes}, arrays)`` of a small data set in the real layout.

    ``arrays``: ``train_images``/``test_images`` uint8 NHWC and
    ``train_labels``/``test_labels`` int64, in file order.  Labels are
    ``arange(n) % num_classes`` permuted, so every class is equally frequent.
    """
    layout = LAYOUTS[name]
    rng = np.random.default_rng(seed)
    num_classes = layout["num_classes"]
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        "train_labels": _labels(rng, n_train, num_classes),
        "test_images": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        "test_labels": _labels(rng, n_test, num_classes),
    }
    names = [f"class_{i:03d}".encode() for i in range(num_classes)]

    def batch(images, labels, batch_label, offset):
        out = {b"batch_label": batch_label}
        if name == "cifar100":
            out[b"fine_labels"] = [int(v) for v in labels]
            out[b"coarse_labels"] = [int(v) // 5 for v in labels]
        else:
            out[b"labels"] = [int(v) for v in labels]
        out[b"data"] = to_cifar_rows(images)
        out[b"filenames"] = [f"img_{offset + i:05d}.png".encode() for i in range(len(labels))]
        return pickle_like_cifar(out)

    members = {}
    if name == "cifar100":
        members["train"] = batch(arrays["train_images"], arrays["train_labels"], b"training batch 1 of 1", 0)
        members["test"] = batch(arrays["test_images"], arrays["test_labels"], b"testing batch 1 of 1", 0)
        members["meta"] = pickle_like_cifar(
            {b"fine_label_names": names, b"coarse_label_names": [f"super_{i}".encode() for i in range(20)]}
        )
    else:
        parts = np.array_split(np.arange(n_train), 5)
        for i, part in enumerate(parts, start=1):
            members[f"data_batch_{i}"] = batch(
                arrays["train_images"][part], arrays["train_labels"][part], f"training batch {i} of 5".encode(),
                int(part[0]) if len(part) else 0,
            )
        members["test_batch"] = batch(arrays["test_images"], arrays["test_labels"], b"testing batch 1 of 1", 0)
        members["batches.meta"] = pickle_like_cifar(
            {b"num_cases_per_batch": max(1, n_train // 5), b"label_names": names, b"num_vis": 3072}
        )
    return members, arrays


def write_cifar_archive(directory, name="cifar100", n_train=40, n_test=20, seed=0, extracted=False, members=None):
    """Writes a small CIFAR data set into ``directory`` -> ``(path, arrays)``.

    ``extracted=False``: the ``.tar.gz`` (path = the archive); ``True``: the
    extracted folder (path = ``directory/<folder>``).  ``members`` replaces or adds
    member files ({file name: bytes}, ``None`` value = leave the member out), for
    corrupt-data tests.
    """
    layout = LAYOUTS[name]
    files, arrays = cifar_members(name, n_train, n_test, seed)
    for key, value in (members or {}).items():
        if value is None:
            files.pop(key, None)
        else:
            files[key] = value
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    if extracted:
        folder = os.path.join(directory, layout["folder"])
        os.makedirs(folder, exist_ok=True)
        for file_name, data in files.items():
            with open(os.path.join(folder, file_name), "wb") as f:
                f.write(data)
        return folder, arrays
    path = os.path.join(directory, layout["archive"])
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(layout["folder"])
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        for file_name, data in files.items():
            info = tarfile.TarInfo(f"{layout['folder']}/{file_name}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path, arrays


def collect(dataset):
    """All ``(images, labels)`` of a ``tf.data`` dataset of batches, as two NumPy arrays."""
    images, labels = [], []
    for x, y in dataset:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)
