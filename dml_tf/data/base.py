"""What every dataset loader returns."""

import dataclasses
from typing import Any, Optional

import tensorflow as tf

SIGNED_UNIT_RANGE = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
"""The ``standardisation`` of images scaled to [-1, 1] (ImageNet, Market-1501)."""


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



def standardisation(bundle):
    """``(mean, std)`` per channel with which ``bundle``'s images were made from RGB pixels:
    ``image = (pixels / 255 - mean) / std``; the training images' statistics
    (``extras["mean"]``, ``["std"]``), else the loader's fixed ``extras["standardisation"]``,
    else None."""
    if bundle.extras.get("mean") is not None:
        return bundle.extras["mean"], bundle.extras["std"]
    return bundle.extras.get("standardisation")
