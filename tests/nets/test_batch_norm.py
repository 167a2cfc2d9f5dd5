"""dml_tf.nets.batch_norm.BatchNormalization computes Keras' BatchNormalization (TensorFlow's fused kernel):
outputs, gradients and moving statistics equal to float rounding with either training
forward (fused, split), Keras' layer where the kernel does not apply, saving, and the
networks use it; which forward a processor gets."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dml_tf import errors, nets
from dml_tf.nets import batch_norm
from dml_tf.nets.batch_norm import BatchNormalization as FusedBatchNormalization

RTOL, ATOL = 2e-5, 2e-5


@pytest.fixture(params=batch_norm.FORWARDS)
def forward(request, monkeypatch):
    """Each training forward in turn."""
    monkeypatch.setattr(batch_norm, "TRAINING_FORWARD", request.param)
    return request.param


def _pair(shape, seed=0, **config):
    """A Keras layer and a fused one with the same configuration and random weights."""
    keras_bn = keras.layers.BatchNormalization(**config)
    fused = FusedBatchNormalization(**config)
    keras_bn.build(shape)
    fused.build(shape)
    rng = np.random.default_rng(seed)
    weights = []
    for v in keras_bn.weights:
        w = rng.normal(size=v.shape).astype(np.float32) * 0.2
        if "gamma" in v.path or "variance" in v.path:
            w = np.abs(w) + 0.5
        weights.append(w)
    keras_bn.set_weights(weights)
    fused.set_weights(weights)
    return keras_bn, fused


def _run(layer, x, training):
    """Output, gradients of a nonlinear loss to the input and the trainable weights."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.cos(tf.cast(y, tf.float32)))
    return y, tape.gradient(loss, [x] + layer.trainable_weights)


def _images(shape=(6, 5, 4, 3), seed=1):
    return tf.constant((np.random.default_rng(seed).normal(size=shape) * 3 + 1).astype(np.float32))


@pytest.mark.parametrize("scale,center", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("training", [True, False])
def test_same_outputs_gradients_and_moving_statistics_as_keras(scale, center, training, forward):
    x = _images()
    keras_bn, fused = _pair(x.shape, momentum=0.9, epsilon=1e-5, scale=scale, center=center)
    for _ in range(2):  # the second step starts from the first's moving statistics
        y_keras, g_keras = _run(keras_bn, x, training)
        y_fused, g_fused = _run(fused, x, training)
        np.testing.assert_allclose(y_fused, y_keras, rtol=RTOL, atol=ATOL)
        assert len(g_fused) == len(g_keras) == 1 + int(scale) + int(center)
        for a, b in zip(g_fused, g_keras):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        for a, b in zip(fused.non_trainable_weights, keras_bn.non_trainable_weights):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=RTOL, atol=ATOL)


def test_moving_variance_is_the_biased_batch_variance_as_keras(forward):
    x = _images((2, 3, 1, 2))  # 6 values per channel: n / (n - 1) = 1.2 would show
    layer = FusedBatchNormalization(momentum=0.0)
    layer(x, training=True)
    expected = np.var(x.numpy().reshape(-1, 2), axis=0)  # ddof=0
    np.testing.assert_allclose(layer.moving_variance.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), x.numpy().reshape(-1, 2).mean(0), rtol=1e-5)


def test_epsilon_below_the_fused_wrappers_floor_is_kept(forward):
    # tf.nn.fused_batch_norm would raise epsilon to 1.001e-5; a tiny-variance channel shows it.
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 3, 3, 2)).astype(np.float32) * 1e-3)
    keras_bn, fused = _pair(x.shape, epsilon=1e-7)
    np.testing.assert_allclose(fused(x, training=True), keras_bn(x, training=True), rtol=1e-4, atol=1e-4)


def test_float16_policy_normalises_in_float32_and_returns_float16(forward):
    x = _images()
    keras_bn = keras.layers.BatchNormalization(dtype="mixed_float16")
    fused = FusedBatchNormalization(dtype="mixed_float16")
    x16 = tf.cast(x, tf.float16)
    for training in (True, False):
        y_fused, y_keras = fused(x16, training=training), keras_bn(x16, training=training)
        assert y_fused.dtype == tf.float16
        np.testing.assert_allclose(tf.cast(y_fused, tf.float32), tf.cast(y_keras, tf.float32),
                                   rtol=2e-3, atol=2e-3)
    assert fused.moving_mean.dtype == "float32"


@pytest.mark.parametrize("shape,axis", [((6, 5), -1), ((6, 3, 5, 4), 1), ((2, 3, 4, 5, 2), -1)])
def test_keras_layer_where_the_fused_kernel_does_not_apply(shape, axis):
    x = _images(shape)
    keras_bn, fused = _pair(x.shape, axis=axis)
    for training in (True, False):
        np.testing.assert_array_equal(fused(x, training=training), keras_bn(x, training=training))


def test_stateless_call_returns_statistics_and_leaves_variables_alone(forward):
    """What the cohort's refresh forward (Algorithm 1) relies on."""
    x = _images()
    keras_bn, fused = _pair(x.shape)
    before = [v.numpy() for v in fused.non_trainable_weights]
    outputs = []
    for layer in (keras_bn, fused):
        y, statistics = layer.stateless_call([v.value for v in layer.trainable_weights],
                                             [v.value for v in layer.non_trainable_weights],
                                             x, training=True)
        outputs.append((y, statistics))
    np.testing.assert_allclose(outputs[1][0], outputs[0][0], rtol=RTOL, atol=ATOL)
    for a, b in zip(outputs[1][1], outputs[0][1]):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    for v, b in zip(fused.non_trainable_weights, before):
        np.testing.assert_array_equal(v.numpy(), b)


@pytest.mark.parametrize("save_fused", [True, False])
def test_weights_files_of_either_layer_load_into_the_other(tmp_path, save_fused):
    """Checkpoints written before the fused layer resume with it, and back."""
    def model(kind):
        inputs = keras.Input((5, 4, 3))
        x = kind(name="bn_a")(inputs)
        return keras.Model(inputs, kind(name="bn_b")(keras.layers.ReLU()(x)))

    saved = model(FusedBatchNormalization if save_fused else keras.layers.BatchNormalization)
    saved(_images(), training=True)  # moving statistics away from their initial values
    saved.save_weights(str(tmp_path / "w.weights.h5"))
    loaded = model(keras.layers.BatchNormalization if save_fused else FusedBatchNormalization)
    loaded.load_weights(str(tmp_path / "w.weights.h5"))
    for a, b in zip(saved.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_saved_and_loaded_with_its_class_and_weights(tmp_path):
    inputs = keras.Input((5, 4, 3))
    model = keras.Model(inputs, FusedBatchNormalization(momentum=0.8, epsilon=1e-5, name="bn")(inputs))
    x = _images()
    model(x, training=True)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.get_layer("bn")
    assert type(layer) is FusedBatchNormalization
    assert (layer.momentum, layer.epsilon) == (0.8, 1e-5)
    np.testing.assert_array_equal(loaded(x, training=False), model(x, training=False))


@pytest.mark.parametrize("arch", ["resnet20", "wrn_16_4", "mobilenet", "inception_v1", "tiny_cnn"])
def test_every_network_builder_uses_the_fused_layer(arch):
    member = nets.build(arch, num_classes=10, seed=0)
    norms = [layer for layer in member.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is FusedBatchNormalization for layer in norms)


def test_keras_application_batch_norms_become_fused_with_their_weights():
    from dml_tf import export
    from dml_tf.nets import keras_apps

    backbone = keras.applications.MobileNetV3Small(include_top=False, weights=None,
                                                   input_shape=(32, 32, 3))
    fused = keras_apps._with_fused_batch_norm(backbone)
    norms = [layer for layer in export.all_layers(fused)
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is FusedBatchNormalization for layer in norms)
    x = _images((2, 32, 32, 3))
    np.testing.assert_allclose(fused(x, training=False), backbone(x, training=False),
                               rtol=1e-4, atol=1e-4)
    member = nets.build("keras:MobileNetV3Small", num_classes=4, input_shape=(32, 32, 3),
                        seed=0, bn_momentum=0.5)
    norms = [layer for layer in export.all_layers(member)
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(type(layer) is FusedBatchNormalization and layer.momentum == 0.5 for layer in norms)
    assert not any(type(layer) is FusedBatchNormalization
                   for layer in export.all_layers(export.portable(member)))


def test_split_forward_is_the_fused_ops_function_and_gradient_in_a_tf_function():
    x = _images((8, 6, 6, 16))
    dy = _images((8, 6, 6, 16), seed=2)
    scale, offset = tf.constant(np.linspace(0.5, 2.0, 16, dtype=np.float32)), tf.zeros([16]) + 0.3

    @tf.function
    def run(split):
        with tf.GradientTape() as tape:
            tape.watch([x, scale, offset])
            if split:
                y, mean, variance = batch_norm._split(x, scale, offset, 1e-3)
            else:
                y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                    x=x, scale=scale, offset=offset, mean=tf.constant([], tf.float32),
                    variance=tf.constant([], tf.float32), epsilon=1e-3, is_training=True)
        return (y, mean), tape.gradient(y, [x, scale, offset], output_gradients=dy)

    (y_split, mean_split), g_split = run(True)
    (y_fused, mean_fused), g_fused = run(False)
    np.testing.assert_allclose(y_split, y_fused, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(mean_split, mean_fused, rtol=RTOL, atol=ATOL)
    for a, b in zip(g_split, g_fused):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


AVX2 = {"fpu", "sse4_2", "avx", "avx2", "fma"}
AVX512 = AVX2 | {"avx512f", "avx512bw"}


@pytest.mark.parametrize("cpu_flags,environ,expected", [
    (AVX2, {}, "split"),  # e.g. AMD Zen 2 / 3
    (AVX512, {}, "fused"),
    (AVX512, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "split"),  # an AVX2 processor emulated
    (AVX512, {"ONEDNN_MAX_CPU_ISA": "avx512_core"}, "fused"),
    (AVX512, {"ONEDNN_MAX_CPU_ISA": "ALL"}, "fused"),
    ({"fp", "asimd"}, {}, "fused"),  # ARM
    (set(), {}, "fused"),  # no /proc/cpuinfo
    (AVX2, {"DML_TF_BATCH_NORM": "fused"}, "fused"),  # the user's choice wins
    (AVX512, {"DML_TF_BATCH_NORM": " Split "}, "split"),
])
def test_default_forward_is_split_where_onednn_runs_at_most_avx2(cpu_flags, environ, expected):
    assert batch_norm.default_forward(cpu_flags, environ) == expected


def test_default_forward_names_a_bad_variable():
    with pytest.raises(errors.EnvironmentSettingError,
                       match="DML_TF_BATCH_NORM='cudnn': expected one of fused, split"):
        batch_norm.default_forward(AVX2, {"DML_TF_BATCH_NORM": "cudnn"})
