"""What every dataset loader returns, and the image selection of the analysis tools."""

import dataclasses
from typing import Any, Optional

import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class DatasetBundle:
    """A dataset ready for ``MutualLearningModel.fit``.

    ``train`` yields batched ``(images float32 NHWC, labels int32)`` for one epoch
    (shuffled and augmented; label -1 marks an unlabelled image); ``test`` yields
    the same without augmentation, in a fixed order (``None`` where the dataset
    has no classification test split, e.g. Market-1501, whose evaluation is
    retrieval and lives in ``extras``). ``labeled_size`` is the number of training
    images that keep a label (all of them unless semi-supervised); ``None`` where
    the loader cannot tell without a pass over the data (ImageNet's hashed subset).
    """

    name: str
    train: tf.data.Dataset
    test: Optional[tf.data.Dataset]
    num_classes: int
    input_shape: tuple
    train_size: int
    test_size: int = 0
    extras: dict = dataclasses.field(default_factory=dict)
    info: Any = None
    labeled_size: Optional[int] = None


def select_images(labels, identities=None, limit=None):
    """Indices (stored order) of the images an analysis keeps (tools/tsne.py, Fig. 5).

    ``identities``: only images whose label is one of the first ``identities``
    distinct labels >= 0 in sorted order (-1, an unlabelled image, is no identity);
    then ``limit``: the first ``limit`` of those. ValueError when none is left.
    """
    from dml_tf.data.pipeline import check_positive_int  # not at the top: pipeline imports this module

    labels = np.asarray(labels).reshape(-1)
    for name, value in (("identities", identities), ("limit", limit)):
        if value is not None:
            check_positive_int(name, value)
    keep = np.arange(len(labels))
    if identities is not None:
        keep = np.flatnonzero(np.isin(labels, np.unique(labels[labels >= 0])[:identities]))
    keep = keep[:limit]
    if not len(keep):
        raise ValueError(f"No image is left to analyse (identities={identities}, limit={limit}).")
    return keep
