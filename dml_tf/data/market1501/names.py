"""Market-1501 file names, split folders and their listing.

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
"""

import collections
import dataclasses
import logging
import os
import re

import numpy as np

from dml_tf.errors import DataError, DatasetNotFoundError

logger = logging.getLogger(__name__)

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

_NAME_RE = re.compile(r"^(-1|\d{4})_c([1-6])s(\d)_(\d{6})_(\d{2})\.(?i:jpg)$")
_MAX_BAD_NAMES_SHOWN = 5
_JPEG_MAGIC = b"\xff\xd8\xff"  # start-of-image marker, then the first segment's marker

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


def check_data_dir(data_dir):
    """``data_dir`` as an absolute path; ``DatasetNotFoundError`` when it is None or missing."""
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


def _shown(names):
    """The first few of ``names``, comma-separated, for an error message."""
    return ", ".join(names[:_MAX_BAD_NAMES_SHOWN]) + (", ..." if len(names) > _MAX_BAD_NAMES_SHOWN else "")


def list_split(data_dir, split, skip_unparsable=False):
    """Lists and parses the ``.jpg`` files of one split folder, sorted by name.

    Raises:
      DatasetNotFoundError: ``data_dir`` or the split folder is missing (the message
        names the folder and the expected layout).
      DataError: the folder holds no ``.jpg``, (unless ``skip_unparsable``) some
        names do not parse, or some files are not JPEG (:func:`check_jpeg_files`);
        the first few bad names are listed.
    """
    data_dir = check_data_dir(data_dir)
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
        raise DataError(
            f"{len(bad)} file name(s) in {folder} do not follow PPPP_cCsS_FFFFFF_BB.jpg: {_shown(bad)}. "
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


def list_folders(data_dir, splits=tuple(FOLDERS), skip_unparsable=False):
    """``{split: SplitListing}`` of ``splits`` (:func:`list_split`); a missing ``gt_bbox``
    folder is left out with a warning (multi-query evaluation is then unavailable)."""
    data_dir = check_data_dir(data_dir)
    listings = {}
    for split in splits:
        if split == "gt_bbox" and not os.path.isdir(split_folder(data_dir, split)):
            logger.warning("Market-1501: no gt_bbox folder in %s; multi-query evaluation unavailable.", data_dir)
            continue
        listings[split] = list_split(data_dir, split, skip_unparsable)
    return listings


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
        raise DataError(
            f"{len(bad)} image(s) in {folder} are not readable JPEG files: {_shown(bad)}. Replace them with the "
            "files of the original Market-1501 archive (or remove them)."
        )
