"""The networks of Deep Mutual Learning (Zhang et al., CVPR 2018), Table 1, built by name.

    net = dml_tf.nets.build("resnet32", num_classes=100, input_shape=(32, 32, 3),
                            weight_decay=5e-4, seed=0)
    features = keras.Model(net.input, net.get_layer("features").output)

Every network is a functional keras.Model from float32 NHWC images to logits (no softmax);
the output of its last global pooling layer, the re-id / analysis feature, is the layer
``features``; its classifier is the Dense layer ``logits``. ``names()`` lists:
resnet20/32/56/110 (He et al. 2016, CIFAR), wrn_16_4 / wrn_28_10 (Zagoruyko & Komodakis
2016), mobilenet (Howard et al. 2017), inception_v1 (Szegedy et al. 2015, TF-slim form)
and tiny_cnn (a few thousand parameters, for fast tests). The general builders
``cifar_resnet(depth, ...)``, ``wrn(depth, width, ...)``, ``mobilenet_v1(...)`` and
``inception_v1(...)`` take the same arguments as ``build`` (except ``pretrained``).
"""

import functools

from dml_tf.nets.inception import inception_v1
from dml_tf.nets.mobilenet import mobilenet_v1
from dml_tf.nets.pretrained import PretrainedWeightsError, load_backbone_weights
from dml_tf.nets.registry import build, has_imagenet, names, register
from dml_tf.nets.resnet import cifar_resnet
from dml_tf.nets.tiny import tiny_cnn
from dml_tf.nets.wide_resnet import wrn
from dml_tf.nets import pretrained as _pretrained


def _inception_imagenet():
    raise PretrainedWeightsError(
        "Keras ships no ImageNet weights for inception_v1: pass pretrained='/path/to/weights.h5' "
        "(a .weights.h5 or .h5 file whose layer names follow dml_tf.nets.inception_v1, "
        "e.g. TF-slim's inception_v1 checkpoint converted to Keras)."
    )


for _depth in (20, 32, 56, 110):
    register(f"resnet{_depth}", functools.partial(cifar_resnet, _depth))
for _depth, _width in ((16, 4), (28, 10)):
    register(f"wrn_{_depth}_{_width}", functools.partial(wrn, _depth, _width))
register("mobilenet", mobilenet_v1, imagenet=_pretrained.mobilenet_imagenet_path)
register("inception_v1", inception_v1, imagenet=_inception_imagenet)
register("tiny_cnn", tiny_cnn)
del _depth, _width

__all__ = [
    "build",
    "names",
    "has_imagenet",
    "register",
    "cifar_resnet",
    "wrn",
    "mobilenet_v1",
    "inception_v1",
    "tiny_cnn",
    "load_backbone_weights",
    "PretrainedWeightsError",
]
