"""A tiny CNN for fast tests of the rest of dml_tf (not from the paper).

conv3x3(16)-BN-ReLU, conv3x3(32, stride 2)-BN-ReLU, global average pooling
(``features``, 32-d), ``logits`` Dense: 5,562 parameters at 10 classes (``count_params``).
"""

import keras

from dml_tf.nets import _common


def tiny_cnn(num_classes, input_shape=(32, 32, 3), weight_decay=0.0, seed=None, name=None, bn_momentum=None):
    """Builds the tiny test CNN mapping images to logits (same conventions as the paper's nets)."""
    num_classes, input_shape, weight_decay, seed = _common.check_args(num_classes, input_shape, weight_decay, seed)
    f = _common.LayerFactory(weight_decay, seed, bn_momentum=_common.bn_momentum(bn_momentum, 0.9), bn_epsilon=1e-5)
    inputs = _common.images_input(input_shape)
    x = f.conv_bn_relu(inputs, 16, 3, "conv1")
    x = f.conv_bn_relu(x, 32, 3, "conv2", strides=2)
    logits = f.head(x, num_classes)
    return keras.Model(inputs, logits, name=name or "tiny_cnn")
