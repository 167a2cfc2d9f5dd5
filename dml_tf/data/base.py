"""What every dataset loader returns."""

import dataclasses
from typing import Any, Optional

import tensorflow as tf


@dataclasses.dataclass
class DatasetBundle:
    """A dataset ready for ``MutualLearningModel.fit``.

    ``train`` yields batched ``(images float32 NHWC, labels int32)`` for one epoch
    (shuffled and augmented; label -1 marks an unlabeled image); ``test`` yields
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

