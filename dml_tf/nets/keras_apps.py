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

The members see the images as the pipeline makes them (standardised per channel), not
the input scaling the application was pretrained with: fine-tuning adapts, but expect
a slower start than with the application's own ``preprocess_input``.
"""

import re

import keras

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


def build(spec, num_classes, input_shape=(224, 224, 3), weight_decay=0.0, seed=None, name=None,
          pretrained=None, bn_momentum=None):
    """``keras:NAME`` as a dml_tf network (see the module docstring)."""
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
    logits = f.head(backbone(inputs), num_classes)
    return keras.Model(inputs, logits, name=name or spec[len(PREFIX):].lower())
