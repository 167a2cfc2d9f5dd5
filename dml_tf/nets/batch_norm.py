"""Keras' ``BatchNormalization`` computed by TensorFlow's fused kernel.

Keras 3 normalises with separate ops on TensorFlow (``tf.nn.moments``, then
``tf.nn.batch_normalization``): about a dozen element-wise ops and their gradients per
layer, 40% of a CIFAR ResNet's training step on the CPU (``tools/profile_step.py``).
``BatchNormalization`` here computes the same function with ``FusedBatchNormV3`` (one
op forward, one backward, oneDNN's on x86), as Keras 2 and TF-slim did by default. Same
configuration, weights and semantics as Keras' layer: training normalises with the
batch's biased variance and folds it into the moving variance (the fused op's Bessel
correction is undone), inference uses the moving statistics, float16 and bfloat16
inputs are normalised in float32. Where the fused kernel does not apply (not a 4-D
channels-last float input, a mask, ``renorm``, ``synchronized``) it is Keras' layer.
The numbers differ from Keras' only by float rounding (tests/nets/test_batch_norm.py).
"""

import keras
import tensorflow as tf

from keras import ops


def _fused(x, scale, offset, mean, variance, epsilon, training):
    """``FusedBatchNormV3`` with Keras' epsilon as given (``tf.nn.fused_batch_norm``
    raises any epsilon below 1.001e-5, a cuDNN limit, to that value)."""
    y, batch_mean, batch_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=scale, offset=offset, mean=mean, variance=variance, epsilon=epsilon,
        data_format="NHWC", is_training=training)
    return y, batch_mean, batch_variance


@keras.saving.register_keras_serializable(package="dml_tf")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` on TensorFlow's fused kernel (see the module).

    It keeps Keras' class name: Keras keys a layer's weights in a weights file by its
    class name, so checkpoints and ``.keras`` files of either layer load into the other."""

    def _fusable(self, inputs, mask):
        return (mask is None and not self.renorm and not self.synchronized
                and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and keras.backend.standardize_dtype(inputs.dtype) in ("float32", "float16", "bfloat16"))

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, "float32")
        channels = x.shape[-1]
        gamma = ops.cast(self.gamma, "float32") if self.scale else tf.ones([channels], "float32")
        beta = ops.cast(self.beta, "float32") if self.center else tf.zeros([channels], "float32")
        if training and self.trainable:
            empty = tf.constant([], "float32")
            y, mean, unbiased = _fused(x, gamma, beta, empty, empty, self.epsilon, True)
            count = tf.cast(tf.size(x) // channels, "float32")
            variance = unbiased * (tf.maximum(count - 1.0, 1.0) / count)  # Keras': biased
            m = self.momentum
            self.moving_mean.assign(ops.cast(self.moving_mean, "float32") * m + mean * (1.0 - m))
            self.moving_variance.assign(
                ops.cast(self.moving_variance, "float32") * m + variance * (1.0 - m))
        else:
            y, _, _ = _fused(x, gamma, beta, ops.cast(self.moving_mean, "float32"),
                             ops.cast(self.moving_variance, "float32"), self.epsilon, False)
        return ops.cast(y, self.compute_dtype)
