"""A tiny fake Market-1501 on disk, in the real layout.

``write_market1501(root)`` writes ``root/bounding_box_train``, ``bounding_box_test``,
``query`` and ``gt_bbox`` with small JPEGs (16x8 instead of 128x64) named like the real
ones, ``PPPP_cCsS_FFFFFF_BB.jpg``; the gallery has distractors (``0000_...``) and junk
(``-1_...``, the real set's spelling), and, like the real archive, a ``Thumbs.db`` that
is not an image. Returns a dict describing what was written.
"""

import os
import zlib

import numpy as np

HEIGHT, WIDTH = 16, 8

# original id -> cameras with one image each (ids sparse, so relabelling is visible)
TRAIN = {2: (1, 2, 3), 7: (1, 4), 11: (2, 3, 5), 30: (1, 6)}
# test identities: query (id, camera) pairs and gallery (id, camera) images
QUERY = [(1, 1), (1, 2), (3, 1), (3, 3), (5, 2)]
GALLERY = [
    (1, 1), (1, 2), (1, 3), (1, 3),
    (3, 1), (3, 2), (3, 4),
    (5, 2), (5, 4), (5, 6),
    (0, 1), (0, 5), (0, 3),  # distractors
    (-1, 1), (-1, 3),  # junk
]
GT_EXTRA = 2  # gt_bbox images per query (id, camera) besides the query image itself


def _name(pid, cam, frame, box=1, seq=1):
    person = "-1" if pid == -1 else f"{pid:04d}"
    return f"{person}_c{cam}s{seq}_{frame:06d}_{box:02d}.jpg"


def _image(name):
    """Deterministic, left-right asymmetric pixels (so flips are visible)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3)).astype(np.uint8)
    image[:, : WIDTH // 2] = np.minimum(image[:, : WIDTH // 2], 60)  # dark left half
    image[:, WIDTH // 2 :] = np.maximum(image[:, WIDTH // 2 :], 190)  # bright right half
    return image


def _write(folder, names):
    import tensorflow as tf

    os.makedirs(folder, exist_ok=True)
    for name in names:
        data = tf.io.encode_jpeg(_image(name), quality=95).numpy()
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


def write_market1501(root, gt_bbox=True, train_extra_names=(), gallery_extra_names=()):
    """Writes the fake dataset under ``root``; extra names let a test add odd files."""
    root = os.fspath(root)
    frame = iter(range(100, 100000, 37))
    train = [_name(pid, cam, next(frame)) for pid, cams in TRAIN.items() for cam in cams]
    train += list(train_extra_names)
    query = [_name(pid, cam, next(frame)) for pid, cam in QUERY]
    gallery = [_name(pid, cam, next(frame), box=2) for pid, cam in GALLERY]
    gallery += list(gallery_extra_names)
    gt = []
    for name, (pid, cam) in zip(query, QUERY):
        gt.append(name)
        gt += [_name(pid, cam, next(frame), box=0) for _ in range(GT_EXTRA)]
    _write(os.path.join(root, "bounding_box_train"), train)
    _write(os.path.join(root, "bounding_box_test"), gallery)
    _write(os.path.join(root, "query"), query)
    if gt_bbox:
        _write(os.path.join(root, "gt_bbox"), gt)
    with open(os.path.join(root, "bounding_box_test", "Thumbs.db"), "wb") as f:
        f.write(b"not an image")
    return {
        "train": sorted(train),
        "query": sorted(query),
        "gallery": sorted(gallery),
        "gt_bbox": sorted(gt) if gt_bbox else None,
    }
