"""Folders of REAL images for the folder dataset's tests: scikit-learn's handwritten digits
(real scans, 8x8) written as JPEG and PNG files in one sub-folder per class, the layout
``--dataset=folder`` reads."""

import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def digit_images(per_class=None, size=32):
    """``(uint8 RGB images (N, size, size, 3), labels)`` of the digits, upscaled."""
    digits = load_digits()
    keep = np.arange(len(digits.target))
    if per_class is not None:
        keep = np.concatenate([np.flatnonzero(digits.target == c)[:per_class] for c in range(10)])
    images = []
    for image in digits.images[keep]:
        gray = Image.fromarray(np.uint8(np.round(image / 16.0 * 255)), mode="L").resize((size, size), Image.BILINEAR)
        images.append(np.asarray(gray.convert("RGB")))
    return np.stack(images), digits.target[keep].astype(np.int32)


def write_digit_folder(root, per_class=12, size=32, classes=None, split_folders=False, formats=("jpg", "png")):
    """Writes ``root/CLASS/NNNN.jpg|png`` (``root/train/...`` and ``root/test/...``, the last
    quarter of each class, with ``split_folders``); returns ``{path: label}``. Class folder
    names are the digits' names (``zero``, ``one``, ...), so their sorted order differs
    from the digits' order."""
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    images, labels = digit_images(per_class, size)
    written = {}
    for c in (classes if classes is not None else range(10)):
        items = np.flatnonzero(labels == c)
        for j, i in enumerate(items):
            part = ("test" if j >= len(items) * 3 // 4 else "train") if split_folders else ""
            folder = os.path.join(root, part, names[c])
            os.makedirs(folder, exist_ok=True)
            fmt = formats[j % len(formats)]
            path = os.path.join(folder, f"{j:04d}.{fmt}")
            Image.fromarray(images[i]).save(path, quality=95) if fmt == "jpg" else Image.fromarray(images[i]).save(path)
            written[path] = names[c]
    return written
