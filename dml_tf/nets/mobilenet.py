"""MobileNet v1 of Howard et al., "MobileNets: Efficient Convolutional Neural Networks for
Mobile Vision Applications", arXiv:1704.04861, 2017 (width multiplier 1.0).

A 3x3 conv with 32 filters, then 13 depthwise-separable blocks (3x3 depthwise conv-BN-ReLU6,
1x1 conv-BN-ReLU6) with 64, 128, 128, 256, 256, 512 (x6), 1024, 1024 output channels,
global average pooling (``features``, 1024-d, TF-slim's 'PreLogits' used by DML for
re-id), dropout 0.001 (slim's ``dropout_keep_prob=0.999``, also Keras') and the ``logits``
Dense layer. Layer names are those of ``keras.applications.MobileNet``, so its ImageNet
weights load by name (``pretrained="imagenet"``); batch norm has epsilon 1e-3 and slim's
``mobilenet_v1_arg_scope`` decay 0.9997 (Keras' MobileNet uses 0.99).

Strides: the original ones (stride 2 in conv1 and in the depthwise convs of blocks 2, 4,
6 and 12; total stride 32) unless ``small_input`` (default: min(height, width) < 64, e.g.
CIFAR 32x32), where conv1 and block 2 use stride 1 and blocks 4, 6 and 12 keep stride 2
(total stride 8: 32x32 -> 4x4 before pooling). Layer shapes, hence parameters, do not
depend on the strides: ``count_params`` gives 3,331,364 at 100 classes (DML Table 1:
3.3M; 3,228,864 in the backbone, 21,888 of them batch-norm moving statistics) and
3,998,639 at 751 classes (Market-1501). Following TF-slim's MobileNet arg scope (the DML authors' code), the
depthwise kernels are not weight-decayed unless ``regularize_depthwise=True``.
"""

import keras

from dml_tf.nets import _common

SLIM_BN_DECAY = 0.9997  # slim's mobilenet_v1_arg_scope batch-norm decay

# (pointwise filters, depthwise stride in the original network) for blocks 1..13.
_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
# Blocks whose stride is reduced to 1 for small (CIFAR) inputs, besides conv1.
_SMALL_INPUT_STRIDE1_BLOCKS = (2,)


def mobilenet_v1(
    num_classes,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    seed=None,
    name=None,
    small_input=None,
    dropout=1e-3,
    regularize_depthwise=False,
    bn_momentum=None,
):
    """Builds MobileNet v1 (width 1.0) mapping images to logits.

    Pretrained ImageNet weights expect images scaled to [-1, 1]. ``small_input``: None
    (auto: min(height, width) < 64), True (CIFAR strides) or False (original strides).
    ``weight_decay`` is the SGD weight-decay coefficient (regulariser L2(weight_decay / 2)).
    ``bn_momentum``: default slim's 0.9997 (with so slow an average, a run of a few thousand
    steps evaluates with lagging statistics).
    """
    num_classes, input_shape, weight_decay, seed = _common.check_args(num_classes, input_shape, weight_decay, seed)
    small = _common.is_small_input(input_shape, small_input)
    dropout = _common.check_rate(dropout, "dropout")
    f = _common.LayerFactory(weight_decay, seed, bn_momentum=_common.bn_momentum(bn_momentum, SLIM_BN_DECAY),
                             bn_epsilon=1e-3)
    inputs = _common.images_input(input_shape)
    x = f.conv_bn_relu(inputs, 32, 3, "conv1", strides=1 if small else 2, max_value=6.0)
    for block_id, (filters, strides) in enumerate(_BLOCKS, start=1):
        if small and block_id in _SMALL_INPUT_STRIDE1_BLOCKS:
            strides = 1
        x = f.depthwise(f"conv_dw_{block_id}", strides=strides, regularize=regularize_depthwise)(x)
        x = f.bn(f"conv_dw_{block_id}_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"conv_dw_{block_id}_relu")(x)
        x = f.conv_bn_relu(x, filters, 1, f"conv_pw_{block_id}", max_value=6.0)
    logits = f.head(x, num_classes, dropout)
    return keras.Model(inputs, logits, name=name or "mobilenet")
