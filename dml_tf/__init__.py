"""dml_tf: Deep Mutual Learning (Zhang et al., CVPR 2018) in TensorFlow/Keras.

``MutualLearningModel`` wraps K Keras models into a cohort that learns together
(Algorithm 1); ``dml_tf.nets`` builds the paper's networks, ``dml_tf.data`` its
datasets and ``dml_tf.reid`` scores person re-identification.
"""

import importlib

from dml_tf import _quiet  # noqa: F401  (first: silences TensorFlow's start-up notices)
from dml_tf import losses
from dml_tf.cohort import MutualLearningModel
# Every class a saved member, cohort or teacher file names (the fused BatchNormalization,
# ResNet's ZeroPadShortcut, LinearWarmup, SlimRMSprop) is registered with Keras here, so
# that keras.models.load_model reads those files after a bare ``import dml_tf``. TensorFlow
# is already imported by ``cohort``; these modules add about 20 ms.
from dml_tf import nets as _nets, schedules as _schedules  # noqa: F401

__version__ = "0.1.0"

# Imported on first use (``losses``, ``cohort``, ``nets`` and ``schedules`` are imported above).
_SUBMODULES = ("data", "nets", "reid", "errors", "io_utils", "reporting", "compare")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"dml_tf.{name}")
    raise AttributeError(f"module 'dml_tf' has no attribute {name!r}")


__all__ = ["MutualLearningModel", "losses", "__version__"]
