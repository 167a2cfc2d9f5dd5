"""Inception v1 (GoogLeNet) of Szegedy et al., "Going Deeper with Convolutions", CVPR 2015,
in the TF-slim form used by the DML authors (``nets/inception_v1.py``): batch norm after
every conv (no bias, no BN scale; slim's ``inception_arg_scope`` batch-norm decay 0.9997,
epsilon 1e-3), no local response
normalisation, no auxiliary classifiers, and -- as in TF-slim -- 3x3 instead of 5x5
kernels in the third branch of each Inception module (``branch3_kernel=5`` gives the
original GoogLeNet). Layer names follow TF-slim's scopes with "/" replaced by "_"
(e.g. ``Mixed_4b_Branch_1_Conv2d_0b_3x3``), ending in global average pooling
(``features``, 1024-d), slim's dropout 0.2 (``dropout_keep_prob=0.8``) and the ``logits``
Dense layer.

Strides: the original ones (Conv2d_1a_7x7 stride 2, 3x3/2 max pools MaxPool_2a, MaxPool_3a,
MaxPool_4a and 2x2/2 MaxPool_5a; total stride 32) unless ``small_input`` (default:
min(height, width) < 64, e.g. CIFAR 32x32), where Conv2d_1a_7x7 has stride 1 and
MaxPool_2a / MaxPool_3a are dropped, so Mixed_3 runs at 32x32, Mixed_4 at 16x16 and
Mixed_5 at 8x8 (as in common CIFAR GoogLeNets). Layer shapes, hence parameters and
pretrained weights, do not depend on the strides.

Parameters (``count_params``, including 14,560 batch-norm moving statistics): 5,709,684 at
100 classes, 6,633,209 at 1001 classes (TF-slim's own 6.6M), 6,090,612 at 100 classes
with ``branch3_kernel=5``. DML's Table 1 gives 7.8M for InceptionV1 at 100 classes, 27%
more than ours; neither TF-slim's network nor the original GoogLeNet (without auxiliary
heads, which would add over 2M each) reaches that, and the paper does not say how it
counted, so we keep the TF-slim architecture the authors trained.
"""

import keras

from dml_tf.nets import _common

SLIM_BN_DECAY = 0.9997  # slim's inception_arg_scope batch_norm_decay

# name: (Branch_0 1x1, Branch_1 1x1 reduce, Branch_1 3x3, Branch_2 1x1 reduce, Branch_2 3x3 (5x5), Branch_3 pool proj)
_MIXED = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("MaxPool_4a_3x3", None),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("MaxPool_5a_2x2", None),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)


def _mixed(f, x, name, filters, branch3_kernel):
    b0, b1r, b1, b2r, b2, b3 = filters
    k = branch3_kernel
    y0 = f.conv_bn_relu(x, b0, 1, f"{name}_Branch_0_Conv2d_0a_1x1", scale=False)
    y1 = f.conv_bn_relu(x, b1r, 1, f"{name}_Branch_1_Conv2d_0a_1x1", scale=False)
    y1 = f.conv_bn_relu(y1, b1, 3, f"{name}_Branch_1_Conv2d_0b_3x3", scale=False)
    y2 = f.conv_bn_relu(x, b2r, 1, f"{name}_Branch_2_Conv2d_0a_1x1", scale=False)
    y2 = f.conv_bn_relu(y2, b2, k, f"{name}_Branch_2_Conv2d_0b_{k}x{k}", scale=False)
    y3 = keras.layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_Branch_3_MaxPool_0a_3x3")(x)
    y3 = f.conv_bn_relu(y3, b3, 1, f"{name}_Branch_3_Conv2d_0b_1x1", scale=False)
    return keras.layers.Concatenate(name=name)([y0, y1, y2, y3])


def inception_v1(
    num_classes,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    seed=None,
    name=None,
    small_input=None,
    dropout=0.2,
    branch3_kernel=3,
    bn_momentum=None,
):
    """Builds Inception v1 (TF-slim GoogLeNet) mapping images to logits.

    ``small_input``: None (auto: min(height, width) < 64), True (CIFAR strides) or False
    (original strides). ``weight_decay`` is the SGD weight-decay coefficient (regulariser
    L2(weight_decay / 2)); ``branch3_kernel`` is 3 (TF-slim) or 5 (original GoogLeNet);
    ``dropout`` before the logits is slim's 0.2; ``bn_momentum`` (default slim's 0.9997; with
    so slow an average, a run of a few thousand steps evaluates with lagging statistics).
    """
    num_classes, input_shape, weight_decay, seed = _common.check_args(num_classes, input_shape, weight_decay, seed)
    small = _common.is_small_input(input_shape, small_input)
    dropout = _common.check_rate(dropout, "dropout")
    if branch3_kernel not in (3, 5):
        raise ValueError(f"branch3_kernel must be 3 or 5, got {branch3_kernel!r}")
    f = _common.LayerFactory(weight_decay, seed, bn_momentum=_common.bn_momentum(bn_momentum, SLIM_BN_DECAY),
                             bn_epsilon=1e-3)
    inputs = _common.images_input(input_shape)
    x = f.conv_bn_relu(inputs, 64, 7, "Conv2d_1a_7x7", strides=1 if small else 2, scale=False)
    if not small:
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="MaxPool_2a_3x3")(x)
    x = f.conv_bn_relu(x, 64, 1, "Conv2d_2b_1x1", scale=False)
    x = f.conv_bn_relu(x, 192, 3, "Conv2d_2c_3x3", scale=False)
    if not small:
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="MaxPool_3a_3x3")(x)
    for block, filters in _MIXED:
        if filters is None:
            size = 3 if block.endswith("3x3") else 2
            x = keras.layers.MaxPooling2D(size, strides=2, padding="same", name=block)(x)
        else:
            x = _mixed(f, x, block, filters, branch3_kernel)
    logits = f.head(x, num_classes, dropout)
    return keras.Model(inputs, logits, name=name or "inception_v1")
