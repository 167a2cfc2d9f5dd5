"""CIFAR ResNets of He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Sec. 4.2.

ResNet-(6n+2): a 3x3 conv with 16 filters, then 3 stages of n basic blocks
(conv3x3-BN-ReLU-conv3x3-BN, add, ReLU) with 16/32/64 channels and stride 2 at the
first block of stages 2 and 3, global average pooling (``features``, 64-d) and the
``logits`` Dense layer. Shortcuts: option A (default, He et al.'s CIFAR choice:
identity, subsampled and zero-padded in channels where the shape changes, no
parameters) or option B (1x1 conv + BN projection where the shape changes).

ResNet-32 (n=5) with option A has 464,154 trainable parameters at 10 classes (He et al.
report 0.46M) and 470,004 at 100 classes; Keras' ``count_params`` also counts 2,272
batch-norm moving statistics: 472,276, i.e. 0.47M (DML's Table 1 rounds to 0.5M). Option
B adds 2,944 (1x1 kernels and their batch norms). Batch norm uses PyTorch-like momentum 0.9 /
epsilon 1e-5. The design has no stem downsampling, so it is meant for CIFAR-sized inputs.
"""

import keras

from dml_tf.nets import _common


@keras.saving.register_keras_serializable(package="dml_tf")
class ZeroPadShortcut(keras.layers.Layer):
    """Option-A shortcut: spatial subsampling by ``strides`` and zero channels up to ``filters``."""

    def __init__(self, filters, strides=2, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)

    def call(self, x):
        s = self.strides
        if s > 1:
            x = x[:, ::s, ::s, :]
        extra = self.filters - x.shape[-1]
        if extra > 0:
            x = keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])
        return x

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        s = self.strides
        ceil = lambda d: None if d is None else -(-d // s)  # noqa: E731
        return (n, ceil(h), ceil(w), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


def _basic_block(f, x, filters, strides, shortcut, prefix):
    in_filters = x.shape[-1]
    y = f.conv(filters, 3, strides=strides, name=f"{prefix}_conv1")(x)
    y = f.bn(f"{prefix}_bn1")(y)
    y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
    y = f.conv(filters, 3, name=f"{prefix}_conv2")(y)
    y = f.bn(f"{prefix}_bn2")(y)
    if strides == 1 and in_filters == filters:
        s = x
    elif shortcut == "A":
        s = ZeroPadShortcut(filters, strides, name=f"{prefix}_shortcut")(x)
    else:
        s = f.conv(filters, 1, strides=strides, name=f"{prefix}_shortcut")(x)
        s = f.bn(f"{prefix}_shortcut_bn")(s)
    y = keras.layers.Add(name=f"{prefix}_add")([y, s])
    return keras.layers.ReLU(name=f"{prefix}_out")(y)


def cifar_resnet(
    depth,
    num_classes,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    seed=None,
    name=None,
    shortcut="A",
    bn_momentum=None,
):
    """Builds the CIFAR ResNet-``depth`` (depth = 6n + 2) of He et al. 2016 mapping images to logits.

    ``weight_decay`` is the SGD weight-decay coefficient (regulariser L2(weight_decay / 2)
    on conv and dense kernels); ``shortcut`` is "A" (zero-padding, default) or "B" (1x1 projection);
    ``bn_momentum`` defaults to 0.9.
    """
    num_classes, input_shape, weight_decay, seed = _common.check_args(num_classes, input_shape, weight_decay, seed)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 56, 110, ...), got {depth!r}")
    if shortcut not in ("A", "B"):
        raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
    n = (depth - 2) // 6
    f = _common.LayerFactory(weight_decay, seed, bn_momentum=_common.bn_momentum(bn_momentum, 0.9), bn_epsilon=1e-5)
    inputs = _common.images_input(input_shape)
    x = f.conv_bn_relu(inputs, 16, 3, "conv1")
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(1, n + 1):
            strides = 2 if (stage > 1 and block == 1) else 1
            x = _basic_block(f, x, filters, strides, shortcut, f"stage{stage}_block{block}")
    logits = f.head(x, num_classes)
    return keras.Model(inputs, logits, name=name or f"resnet{depth}")
