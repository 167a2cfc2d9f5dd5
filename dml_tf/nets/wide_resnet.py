"""Wide ResNets of Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.

WRN-depth-width: a 3x3 conv with 16 filters, then 3 groups of (depth - 4) / 6
pre-activation blocks (BN-ReLU-conv3x3[-dropout]-BN-ReLU-conv3x3) with 16*width,
32*width, 64*width channels (stride 2 at groups 2 and 3; a 1x1 conv shortcut on the
pre-activated input where the shape changes), then BN-ReLU, global average pooling
(``features``, 64*width-d) and the ``logits`` Dense layer; convolutions have no bias.
Dropout between the convolutions is off by default (``dropout=0``; the WRN paper's
dropout variant used 0.3).

WRN-28-10 has 36,536,884 trainable parameters at 100 classes (36,479,194 at 10 classes,
as in the WRN reference code); Keras' ``count_params`` also counts 17,952 batch-norm
moving statistics: 36,554,836. DML's Table 1 gives 36.5M. Batch norm uses PyTorch-like momentum 0.9 /
epsilon 1e-5. The design has no stem downsampling, so it is meant for CIFAR-sized inputs.
"""

import keras

from dml_tf.nets import _common


def _block(f, x, filters, strides, dropout, prefix):
    in_filters = x.shape[-1]
    o = f.bn(f"{prefix}_bn1")(x)
    o = keras.layers.ReLU(name=f"{prefix}_relu1")(o)
    y = f.conv(filters, 3, strides=strides, name=f"{prefix}_conv1")(o)
    y = f.bn(f"{prefix}_bn2")(y)
    y = keras.layers.ReLU(name=f"{prefix}_relu2")(y)
    if dropout:
        y = keras.layers.Dropout(dropout, seed=f.seed(), name=f"{prefix}_dropout")(y)
    y = f.conv(filters, 3, name=f"{prefix}_conv2")(y)
    if strides == 1 and in_filters == filters:
        s = x
    else:
        s = f.conv(filters, 1, strides=strides, name=f"{prefix}_shortcut")(o)
    return keras.layers.Add(name=f"{prefix}_add")([y, s])


def wrn(
    depth,
    width,
    num_classes,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    seed=None,
    name=None,
    dropout=0.0,
    bn_momentum=None,
):
    """Builds WRN-``depth``-``width`` (depth = 6n + 4) mapping images to logits.

    ``weight_decay`` is the SGD weight-decay coefficient (regulariser L2(weight_decay / 2)
    on conv and dense kernels; the WRN paper uses 5e-4); ``dropout`` is the in-block rate;
    ``bn_momentum`` defaults to 0.9.
    """
    num_classes, input_shape, weight_decay, seed = _common.check_args(num_classes, input_shape, weight_decay, seed)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth!r}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an integer >= 1, got {width!r}")
    dropout = _common.check_rate(dropout, "dropout")
    n = (depth - 4) // 6
    f = _common.LayerFactory(weight_decay, seed, bn_momentum=_common.bn_momentum(bn_momentum, 0.9), bn_epsilon=1e-5)
    inputs = _common.images_input(input_shape)
    x = f.conv(16, 3, name="conv1")(inputs)
    for group, filters in enumerate((16 * width, 32 * width, 64 * width), start=1):
        for block in range(1, n + 1):
            strides = 2 if (group > 1 and block == 1) else 1
            x = _block(f, x, filters, strides, dropout, f"group{group}_block{block}")
    x = f.bn("bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    logits = f.head(x, num_classes)
    return keras.Model(inputs, logits, name=name or f"wrn_{depth}_{width}")
