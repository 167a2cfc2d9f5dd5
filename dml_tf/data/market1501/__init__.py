"""Market-1501 (person re-identification) from its folders or from TFRecords.

One module per topic:

* :mod:`~dml_tf.data.market1501.names`: the expected folder layout, file-name parsing
  (``PPPP_cCsS_FFFFFF_BB.jpg``), split listings and JPEG checks;
* :mod:`~dml_tf.data.market1501.preprocessing`: the original implementation's two
  resize steps (stored 160x64, then the network input), flip, scale to [-1, 1];
* :mod:`~dml_tf.data.market1501.tfrecords`: writing and reading the sharded TFRecords
  of ``tools/convert_market1501.py``, which give the same examples as the folders;
* :mod:`~dml_tf.data.market1501.splits`: the evaluation splits and the training labels
  (semi-supervised: Sec. 4.10);
* :mod:`~dml_tf.data.market1501.loading`: which source to read, :func:`load` (training
  and re-id evaluation) and :func:`unaugmented_split` (the analyses of Fig. 4 and 5).

Junk (-1) and distractor (0000) images found in ``bounding_box_train`` are dropped from
training and counted in ``bundle.info["dropped"]``.
"""

from dml_tf.data.market1501.loading import NAME, SOURCES, load, unaugmented_split
from dml_tf.data.market1501.names import (
    DOWNLOAD_HINT,
    FOLDERS,
    LAYOUT,
    REQUIRED_SPLITS,
    ImageName,
    SplitListing,
    check_jpeg_files,
    list_split,
    parse_filename,
    split_folder,
)
from dml_tf.data.market1501.preprocessing import (
    DEFAULT_IMAGE_SIZE,
    STORED_SIZE,
    parse_image_size,
    preprocess,
    stored_image,
)
from dml_tf.data.market1501.splits import Market1501Split, train_labels
from dml_tf.data.market1501.tfrecords import MANIFEST, MANIFEST_FORMAT, TFRECORD_SUBDIR, write_tfrecords

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DOWNLOAD_HINT",
    "FOLDERS",
    "ImageName",
    "LAYOUT",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "Market1501Split",
    "NAME",
    "REQUIRED_SPLITS",
    "SOURCES",
    "STORED_SIZE",
    "SplitListing",
    "TFRECORD_SUBDIR",
    "check_jpeg_files",
    "list_split",
    "load",
    "parse_filename",
    "parse_image_size",
    "preprocess",
    "split_folder",
    "stored_image",
    "train_labels",
    "unaugmented_split",
    "write_tfrecords",
]
