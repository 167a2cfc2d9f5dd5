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


ORIGINAL_ATOL = 2.0 / 255 + 1e-5  # PIL vs tf.image rounding: one grey level, doubled by [-1, 1]


def legacy_bilinear(image, size):
    """TF1's ``tf.image.resize_images`` (bilinear, align_corners=False, no half-pixel
    centres) in NumPy: output pixel i samples the input at i * in / out."""
    height, width = image.shape[:2]
    ys, xs = np.arange(size[0]) * (height / size[0]), np.arange(size[1]) * (width / size[1])
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, height - 1), np.minimum(x0 + 1, width - 1)
    dy, dx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = image[y0][:, x0] * (1 - dx) + image[y0][:, x1] * dx
    bottom = image[y1][:, x0] * (1 - dx) + image[y1][:, x1] * dx
    return top * (1 - dy) + bottom * dy


def original_preprocess(path, size):
    """The original code's Market-1501 pixels, computed independently of dml_tf: its
    conversion's ``scipy.misc.imresize`` to 160x64 (PIL bilinear, uint8), then its
    training-time ``resize_images`` to ``size`` on [0, 1] floats, scaled to [-1, 1]."""
    import tensorflow as tf
    from PIL import Image

    with open(path, "rb") as f:
        pixels = tf.io.decode_jpeg(f.read(), channels=3).numpy()
    stored = np.asarray(Image.fromarray(pixels).resize((64, 160), Image.BILINEAR), np.float64) / 255.0
    return (legacy_bilinear(stored, size) * 2.0 - 1.0).astype(np.float32)
