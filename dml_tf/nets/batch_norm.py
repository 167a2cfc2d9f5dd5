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

The training forward is ``"fused"`` (the one op) or ``"split"``: the batch moments and
the affine normalisation as separate ops, with the fused op's gradient
(``FusedBatchNormGradV3``, given the batch mean and biased variance as the fused
forward saves them). oneDNN's fused forward for channels-last data is fast with
AVX-512 but was slow on an Intel Xeon capped at AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``):
about 10x its AVX-512 time and 30% of a ResNet-32 cohort step, where its backward is
fine; on an AMD Zen 4 capped at AVX2 the two forwards were level
(``tools/ISA_SPEED.md``). ``TRAINING_FORWARD`` is chosen at import: the environment
variable ``DML_TF_BATCH_NORM`` (``fused`` or ``split``) when set, else ``split`` on an
x86 processor whose oneDNN instruction set is at most AVX2 and ``fused`` elsewhere. Any
other value of the variable stops ``import dml_tf`` with an
:class:`~dml_tf.errors.EnvironmentSettingError`, or in dml_tf's command lines with a
one-line usage error.
"""

import logging
import os

import keras
import tensorflow as tf

from keras import ops

from dml_tf import _cpu, cli, errors

ENV_VARIABLE = "DML_TF_BATCH_NORM"
FORWARDS = ("fused", "split")


def default_forward(cpu_flags, environ):
    """The training forward for a processor with /proc/cpuinfo ``cpu_flags`` under
    ``environ``: ``environ[DML_TF_BATCH_NORM]`` when set, else ``split`` where oneDNN
    runs at most AVX2 (:func:`dml_tf._cpu.onednn_at_most_avx2`), else ``fused``."""
    chosen = environ.get(ENV_VARIABLE, "").strip().lower()
    if chosen:
        if chosen not in FORWARDS:
            raise errors.EnvironmentSettingError(
                f"environment variable {ENV_VARIABLE}={environ[ENV_VARIABLE]!r}: expected one of "
                f"{', '.join(FORWARDS)} (or unset: chosen by the processor).")
        return chosen
    return "split" if _cpu.onednn_at_most_avx2(cpu_flags, environ) else "fused"


def _chosen_forward():
    """:func:`default_forward` here; a bad variable in a command line: its usage error."""
    try:
        return default_forward(_cpu.read_cpuinfo()[1], os.environ)
    except errors.EnvironmentSettingError as error:
        prog = cli.command_line_name()
        if prog is not None:
            cli.fail(str(error), prog=prog, flags_hint=False)
        raise


TRAINING_FORWARD = _chosen_forward()
logging.getLogger("dml_tf").debug("batch normalisation: %s training forward", TRAINING_FORWARD)


def _fused(x, scale, offset, mean, variance, epsilon, training):
    """``FusedBatchNormV3`` with Keras' epsilon as given (``tf.nn.fused_batch_norm``
    raises any epsilon below 1.001e-5, a cuDNN limit, to that value)."""
    y, batch_mean, batch_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=scale, offset=offset, mean=mean, variance=variance, epsilon=epsilon,
        data_format="NHWC", is_training=training)
    return y, batch_mean, batch_variance


def _split(x, scale, offset, epsilon):
    """The fused training forward as separate ops, ``(y, batch mean, biased batch
    variance)``; its gradient is the fused op's. The batch statistics are not
    differentiated (they only feed the moving averages), as with the fused op."""

    @tf.custom_gradient
    def forward(x, scale, offset):
        mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
        a = scale * tf.math.rsqrt(variance + epsilon)

        def gradient(dy, *_statistics):
            dx, dscale, doffset, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=dy, x=x, scale=scale, reserve_space_1=mean, reserve_space_2=variance,
                reserve_space_3=tf.zeros([0], x.dtype), epsilon=epsilon, data_format="NHWC",
                is_training=True)
            return dx, dscale, doffset

        return (x * a + (offset - mean * a), mean, variance), gradient

    return forward(x, scale, offset)


def _training_forward(x, scale, offset, epsilon):
    """``(y, batch mean, biased batch variance)`` by ``TRAINING_FORWARD``."""
    if TRAINING_FORWARD == "split":
        return _split(x, scale, offset, epsilon)
    empty = tf.constant([], "float32")
    y, mean, unbiased = _fused(x, scale, offset, empty, empty, epsilon, True)
    count = tf.cast(tf.size(x) // x.shape[-1], "float32")
    return y, mean, unbiased * (tf.maximum(count - 1.0, 1.0) / count)  # Keras': biased


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
            y, mean, variance = _training_forward(x, gamma, beta, self.epsilon)
            m = self.momentum
            self.moving_mean.assign(ops.cast(self.moving_mean, "float32") * m + mean * (1.0 - m))
            self.moving_variance.assign(
                ops.cast(self.moving_variance, "float32") * m + variance * (1.0 - m))
        else:
            y, _, _ = _fused(x, gamma, beta, ops.cast(self.moving_mean, "float32"),
                             ops.cast(self.moving_variance, "float32"), self.epsilon, False)
        return ops.cast(y, self.compute_dtype)
