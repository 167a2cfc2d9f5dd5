"""Keras Applications as cohort members: ``--nets=keras:MobileNetV2,resnet32``.

``keras:NAME`` is ``keras.applications.NAME`` without its top (``include_top=False``)
followed by the head every dml_tf network has: global average pooling (the ``features``
layer) and the ``logits`` Dense layer, so evaluation, feature extraction and the
analysis tools work unchanged. Weight decay goes on every convolution and dense kernel
as for the paper's networks (``L2(weight_decay / 2)``); its batch norms become
:class:`dml_tf.nets.batch_norm.BatchNormalization` (same weights, TensorFlow's fused
kernel) and ``bn_momentum`` sets their momentum. ``pretrained="imagenet"`` loads Keras' ImageNet weights
(from ``~/.keras/models/`` or downloaded); a weights file is given to the application
as its ``weights`` (a no-top file of that application).

A pretrained member (``pretrained`` set) is fed as its application was trained: two
fixed layers in front of the backbone, saved with the member, take the images the
pipeline makes (standardised per channel with ``input_standardisation``, the run's
mean and std) back to RGB pixels 0-255 (``pixels``, Keras' ``Normalization`` inverted)
and apply the application's own ``keras.applications.<module>.preprocess_input``
(``preprocess_input``, a frozen per-channel affine ``Dense``: caffe-style BGR mean
subtraction for VGG / ResNet, [-1, 1] for MobileNet / Inception / Xception / NASNet /
ResNetV2, ImageNet mean and std for DenseNet; absent for EfficientNet(V2), ConvNeXt
and MobileNetV3, which rescale inside). A member trained from scratch
sees the standardised images as they are.
"""

import re

import keras
import numpy as np

from dml_tf.nets import _common
from dml_tf.nets import batch_norm
from dml_tf.nets.pretrained import PretrainedWeightsError

PREFIX = "keras:"


def is_application(name):
    return isinstance(name, str) and name.startswith(PREFIX)


def application_names():
    """The ``keras.applications`` model constructors (``MobileNetV2``, ``ResNet50``, ...)."""
    return sorted(n for n in dir(keras.applications) if n[:1].isupper() and callable(getattr(keras.applications, n)))


def _constructor(spec):
    name = spec[len(PREFIX):]
    if name not in application_names():
        raise ValueError(f"unknown Keras application {name!r} in {spec!r}; keras.applications has "
                         f"{', '.join(application_names())}")
    return name, getattr(keras.applications, name)


def check(spec):
    """ValueError unless ``spec`` names a Keras application (``keras:MobileNetV2``)."""
    _constructor(spec)


def _backbone(spec, input_shape, weights):
    name, constructor = _constructor(spec)
    try:
        return constructor(include_top=False, weights=weights, input_shape=tuple(input_shape), pooling=None)
    except ValueError as e:
        size = re.search(r"at least (\d+)x(\d+)|should not be smaller than (\d+)", str(e))
        if size:
            minimum = size.group(1) or size.group(3)
            raise ValueError(f"{spec} needs images of at least {minimum}x{minimum}; got "
                             f"{input_shape[0]}x{input_shape[1]} (set --image_size).") from None
        raise ValueError(f"{spec} cannot be built for input shape {tuple(input_shape)}: {e}") from None
    except Exception as e:  # the ImageNet weights could not be fetched
        if weights is None:
            raise
        file = re.search(r"https?://\S+/([^/\s]+\.h5)", str(e))
        where = f"put {file.group(1)} in ~/.keras/models/ (from {file.group(0)})" if file else \
            "put Keras' weights file for it in ~/.keras/models/"
        raise PretrainedWeightsError(
            f"the ImageNet weights of {spec} could not be obtained ({type(e).__name__}): {where}, or "
            f"pass --pretrained=FILE.") from None


def _with_fused_batch_norm(backbone):
    """``backbone`` with every Keras ``BatchNormalization`` computed by the fused kernel
    (:mod:`dml_tf.nets.batch_norm`): same configuration and weights."""
    return _common.rebuild(backbone, lambda layer: (
        batch_norm.BatchNormalization.from_config(layer.get_config())
        if type(layer) is keras.layers.BatchNormalization else None))


def preprocess_input_map(spec):
    """``(kernel, bias)`` with ``preprocess_input(x) == x @ kernel + bias`` for RGB pixels
    ``x`` (0-255, last axis) under the application's own ``preprocess_input``; None where
    it is the identity. Read off the function itself (the images of the unit pixels), then
    checked on random pixels."""
    module = getattr(keras.applications, _constructor(spec)[1].__module__.rsplit(".", 1)[-1])
    probe = np.concatenate([np.zeros((1, 3)), 255.0 * np.eye(3)])[None, None]  # (1, 1, 4, 3)
    out = np.asarray(module.preprocess_input(probe.copy()), np.float64)[0, 0]
    bias, kernel = out[0], (out[1:] - out[0]) / 255.0
    pixels = np.random.default_rng(0).uniform(0, 255, (1, 2, 5, 3))
    if not np.allclose(np.asarray(module.preprocess_input(pixels.copy()), np.float64), pixels @ kernel + bias,
                       atol=1e-4):
        raise ValueError(f"{spec}: preprocess_input is not a per-channel affine map of the pixels")
    if np.allclose(kernel, np.eye(3)) and np.allclose(bias, 0):
        return None
    return kernel.astype(np.float32), bias.astype(np.float32)


def pretrained_input(spec, images, input_standardisation):
    """``images`` (standardised with ``input_standardisation`` = per-channel ``(mean, std)``
    of pixels / 255; None: already RGB pixels 0-255) as ``spec``'s application was trained
    on them: back to pixels, then its ``preprocess_input`` (see the module docstring)."""
    x = images
    if input_standardisation is not None:
        mean, std = (np.asarray(v, np.float64).reshape(-1) for v in input_standardisation)
        if mean.shape != (3,) or std.shape != (3,) or not np.all(std > 0):
            raise ValueError("input_standardisation must be (mean, std), 3 values each, std > 0; "
                             f"got {input_standardisation!r}")
        x = keras.layers.Normalization(mean=(255 * mean).tolist(), variance=((255 * std) ** 2).tolist(),
                                       invert=True, dtype="float32", name="pixels")(x)
    affine = preprocess_input_map(spec)
    if affine is not None:
        layer = keras.layers.Dense(3, trainable=False, dtype="float32", name="preprocess_input")
        x = layer(x)
        layer.set_weights(list(affine))
    return x


def build(spec, num_classes, input_shape=(224, 224, 3), weight_decay=0.0, seed=None, name=None,
          pretrained=None, bn_momentum=None, input_standardisation=None):
    """``keras:NAME`` as a dml_tf network (see the module docstring); ``input_standardisation``:
    with ``pretrained``, the per-channel ``(mean, std)`` (pixels / 255) the images it is given
    are standardised with (None: they come as RGB pixels 0-255)."""
    num_classes, input_shape, weight_decay, seed = _common.check_args(num_classes, input_shape, weight_decay, seed)
    if pretrained == "imagenet" and input_shape[-1] != 3:
        raise ValueError(f"pretrained='imagenet' needs RGB images: input_shape must end in 3, got {input_shape}")
    if seed is not None:
        keras.utils.set_random_seed(seed)  # the applications' initialisers are unseeded
    backbone = _with_fused_batch_norm(_backbone(spec, input_shape, pretrained))
    f = _common.LayerFactory(weight_decay, seed)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and bn_momentum is not None:
            layer.momentum = _common.check_rate(bn_momentum, "bn_momentum")
        kernel = getattr(layer, "kernel", None)
        if f.regularizer is not None and kernel is not None and getattr(kernel, "trainable", False):
            kernel.regularizer = f.regularizer
            for attribute in ("kernel_regularizer", "depthwise_regularizer"):
                if hasattr(layer, attribute):
                    setattr(layer, attribute, f.regularizer)
    inputs = _common.images_input(input_shape)
    x = inputs if pretrained is None else pretrained_input(spec, inputs, input_standardisation)
    logits = f.head(backbone(x), num_classes)
    return keras.Model(inputs, logits, name=name or spec[len(PREFIX):].lower())
