"""Pieces shared by the network builders: argument checks, seeded layers, L2, the head.

Weight-decay convention (all builders): ``weight_decay`` is the SGD weight-decay
coefficient as in WRN [Zagoruyko & Komodakis 2016] / PyTorch, i.e. the regulariser is
``keras.regularizers.L2(weight_decay / 2)`` (loss ``weight_decay/2 * sum(w**2)``, gradient
``weight_decay * w``). This is also exactly TF-slim's ``l2_regularizer(weight_decay)``
(``weight_decay * tf.nn.l2_loss(w)``) used by the DML authors' code. It is put on
convolution and dense kernels only (not biases, not batch-norm parameters);
``weight_decay=0`` adds no regulariser at all.
"""

import math
import numbers

import keras
import numpy as np

from dml_tf.nets import batch_norm


def check_args(num_classes, input_shape, weight_decay, seed):
    """Validates the common builder arguments; returns them normalised."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if (
        shape is None
        or isinstance(input_shape, str)
        or len(shape) != 3
        or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in shape)
    ):
        raise ValueError(
            f"input_shape must be (height, width, channels) of positive integers (NHWC), got {input_shape!r}"
        )
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, numbers.Real)
        or not math.isfinite(weight_decay)
        or weight_decay < 0
    ):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ValueError(f"seed must be None or an integer >= 0, got {seed!r}")
    return int(num_classes), tuple(int(d) for d in shape), float(weight_decay), (None if seed is None else int(seed))


class LayerFactory:
    """Makes the layers of one build: per-layer seeds derived from ``seed``, shared L2.

    Each weighted layer gets its own initialiser seed drawn from a NumPy generator
    seeded with ``seed`` (same seed -> identical weights, different seeds -> different
    weights, layers of equal shape differ); ``seed=None`` leaves initialisers unseeded.
    No global random state is touched.
    """

    def __init__(self, weight_decay=0.0, seed=None, bn_momentum=0.9, bn_epsilon=1e-5):
        self._rng = None if seed is None else np.random.default_rng(seed)
        self.regularizer = keras.regularizers.L2(weight_decay / 2.0) if weight_decay > 0 else None
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon

    def seed(self):
        return None if self._rng is None else int(self._rng.integers(0, 2**31 - 1))

    def conv_init(self):
        # He et al. 2015 normal init, fan-out mode (as in the ResNet / WRN reference code).
        return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal", seed=self.seed())

    def conv(self, filters, kernel, name, strides=1):
        return keras.layers.Conv2D(
            filters,
            kernel,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer=self.conv_init(),
            kernel_regularizer=self.regularizer,
            name=name,
        )

    def depthwise(self, name, strides=1, regularize=True):
        return keras.layers.DepthwiseConv2D(
            3,
            strides=strides,
            padding="same",
            use_bias=False,
            depthwise_initializer=self.conv_init(),
            depthwise_regularizer=self.regularizer if regularize else None,
            name=name,
        )

    def bn(self, name, scale=True):
        return batch_norm.BatchNormalization(
            momentum=self.bn_momentum, epsilon=self.bn_epsilon, scale=scale, name=name
        )

    def conv_bn_relu(self, x, filters, kernel, name, strides=1, scale=True, max_value=None):
        """``name`` conv -> ``{name}_bn`` -> ``{name}_relu`` (ReLU6 with ``max_value=6``)."""
        x = self.conv(filters, kernel, strides=strides, name=name)(x)
        x = self.bn(f"{name}_bn", scale=scale)(x)
        return keras.layers.ReLU(max_value, name=f"{name}_relu")(x)

    def head(self, x, num_classes, dropout=0.0):
        """Global average pool (the ``features`` layer), optional dropout, ``logits`` Dense."""
        x = keras.layers.GlobalAveragePooling2D(name="features")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, seed=self.seed(), name="dropout")(x)
        return keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.GlorotUniform(seed=self.seed()),
            kernel_regularizer=self.regularizer,
            dtype="float32",  # logits stay float32 under a mixed-precision policy
            name="logits",
        )(x)


def images_input(input_shape):
    return keras.Input(shape=input_shape, dtype="float32", name="images")


def check_rate(value, arg):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{arg} must be a number in [0, 1), got {value!r}")
    return float(value)


def bn_momentum(value, default):
    """A builder's ``bn_momentum``: ``None`` gives the network's ``default``.

    Keras' ``BatchNormalization(momentum=m)`` updates ``moving = m * moving + (1 - m) * batch``,
    which is TF-slim's ``batch_norm(decay=m)``.
    """
    return default if value is None else check_rate(value, "bn_momentum")


def is_small_input(input_shape, small_input):
    """``small_input=None`` means: CIFAR-style strides when min(height, width) < 64."""
    if small_input is None:
        return min(input_shape[0], input_shape[1]) < 64
    if not isinstance(small_input, bool):
        raise ValueError(f"small_input must be None, True or False, got {small_input!r}")
    return small_input


def rebuild(model, replace):
    """A copy of ``model`` (nested models included) with the same weights, where
    ``replace(layer)`` gives the new layer, or None for a fresh copy of the same class."""
    def clone(layer):
        new = replace(layer)
        return layer.__class__.from_config(layer.get_config()) if new is None else new

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy
