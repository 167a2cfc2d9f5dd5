"""Tests of dml_tf.nets: the paper's networks (Table 1) built by name."""

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from dml_tf import nets
from dml_tf.errors import DMLError

# DML Table 1 (CIFAR-100); ResNet-32 compared with He et al.'s 0.46M + the 100-way classifier.
TABLE1 = {"resnet32": 0.47e6, "mobilenet": 3.3e6, "wrn_28_10": 36.5e6}
FEATURE_DIMS = {"resnet32": 64, "mobilenet": 1024, "wrn_28_10": 640, "inception_v1": 1024, "tiny_cnn": 32}


@pytest.fixture(scope="module")
def cifar100_nets():
    """Each paper net built once, 100 classes, 32x32 (built only: no forward pass of the big ones)."""
    return {n: nets.build(n, num_classes=100, input_shape=(32, 32, 3), seed=0) for n in FEATURE_DIMS}


def _np(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def _kernels(model):
    """(layer, kernel) of every weight-decayed kernel: conv and dense, not depthwise."""
    out = []
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and not isinstance(
            layer, keras.layers.DepthwiseConv2D
        ):
            out.append((layer, layer.kernel))
    return out


def _backbone(model):
    return keras.Model(model.input, model.get_layer("features").output)


def _write_legacy_h5(model, path):
    """Writes weights in the legacy Keras HDF5 layout of the keras.applications downloads."""
    with h5py.File(path, "w") as f:
        layers = [layer for layer in model.layers if layer.weights]
        f.attrs["layer_names"] = [layer.name.encode("utf8") for layer in layers]
        for layer in layers:
            g = f.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0" for w in layer.weights]
            g.attrs["weight_names"] = [n.encode("utf8") for n in names]
            for n, w in zip(names, layer.weights):
                g.create_dataset(n, data=_np(w))


def test_names_sorted_and_complete():
    names = nets.names()
    assert names == sorted(names)
    for n in ("inception_v1", "mobilenet", "resnet32", "wrn_28_10", "wrn_16_4", "tiny_cnn"):
        assert n in names


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="resnet32") as e:
        nets.build("resnet33", num_classes=10)
    assert "wrn_28_10" in str(e.value) and "resnet33" in str(e.value)


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2.5}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"num_classes": 10, "input_shape": (32, 32)}, "input_shape"),
        ({"num_classes": 10, "input_shape": (0, 32, 3)}, "input_shape"),
        ({"num_classes": 10, "input_shape": "32x32"}, "input_shape"),
        ({"num_classes": 10, "weight_decay": -1e-4}, "weight_decay"),
        ({"num_classes": 10, "seed": -1}, "seed"),
        ({"num_classes": 10, "pretrained": 3}, "pretrained"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        nets.build("tiny_cnn", **kwargs)


@pytest.mark.parametrize("arch", sorted(TABLE1))
def test_parameter_counts_match_table1(cifar100_nets, arch):
    count = cifar100_nets[arch].count_params()
    assert abs(count - TABLE1[arch]) / TABLE1[arch] < 0.03, count


def test_documented_parameter_counts(cifar100_nets):
    assert cifar100_nets["resnet32"].count_params() == 472_276
    assert cifar100_nets["mobilenet"].count_params() == 3_331_364
    assert cifar100_nets["wrn_28_10"].count_params() == 36_554_836
    assert cifar100_nets["inception_v1"].count_params() == 5_709_684
    assert nets.build("tiny_cnn", num_classes=10).count_params() == 5_562


@pytest.mark.parametrize("arch", sorted(FEATURE_DIMS))
def test_feature_layer_and_logits(cifar100_nets, arch):
    net = cifar100_nets[arch]
    assert net.name == arch
    assert isinstance(net.get_layer("logits"), keras.layers.Dense)
    assert tuple(net.get_layer("features").output.shape) == (None, FEATURE_DIMS[arch])
    assert tuple(net.output.shape) == (None, 100)
    assert net.get_layer("logits").activation is keras.activations.linear


@pytest.mark.parametrize("arch", ["tiny_cnn", "resnet32", "mobilenet", "wrn_16_4", "inception_v1"])
def test_forward_shapes(arch):
    net = nets.build(arch, num_classes=7, input_shape=(32, 32, 3), seed=1, name=f"{arch}_1")
    assert net.name == f"{arch}_1"
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    logits = net(x, training=False)
    assert tuple(logits.shape) == (2, 7) and logits.dtype == tf.float32
    feats = _backbone(net)(x, training=False)
    assert tuple(feats.shape) == (2, net.get_layer("features").output.shape[-1])
    assert np.all(np.isfinite(_np(logits)))


def test_mobilenet_strides_depend_on_input_size():
    small = nets.build("mobilenet", num_classes=100, input_shape=(32, 32, 3))
    assert tuple(small.get_layer("conv_pw_13_relu").output.shape) == (None, 4, 4, 1024)
    big = nets.build("mobilenet", num_classes=751, input_shape=(224, 224, 3))
    assert tuple(big.get_layer("conv_pw_13_relu").output.shape) == (None, 7, 7, 1024)
    assert big.count_params() == 3_998_639
    assert tuple(big.get_layer("features").output.shape) == (None, 1024)


def test_seeds():
    a = nets.build("resnet20", num_classes=10, seed=3)
    b = nets.build("resnet20", num_classes=10, seed=3)
    c = nets.build("resnet20", num_classes=10, seed=4)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    kernels_a = [_np(k) for _, k in _kernels(a)]
    kernels_c = [_np(k) for _, k in _kernels(c)]
    assert all(not np.array_equal(ka, kc) for ka, kc in zip(kernels_a, kernels_c))
    # Layers of the same shape get different (per-layer) seeds.
    same_shape = [k for k in kernels_a if k.shape == (3, 3, 16, 16)]
    assert len(same_shape) > 2 and not np.array_equal(same_shape[0], same_shape[1])


def test_weight_decay_convention_and_value():
    wd = 5e-4
    net = nets.build("tiny_cnn", num_classes=10, weight_decay=wd, seed=0)
    kernels = _kernels(net)
    assert len(net.losses) == len(kernels) == 3
    expected = sum(wd / 2 * float(np.sum(np.square(_np(k).astype(np.float64)))) for _, k in kernels)
    np.testing.assert_allclose(float(tf.add_n(net.losses)), expected, rtol=1e-5)
    with tf.GradientTape() as tape:
        reg = tf.add_n(net.losses)
    grads = tape.gradient(reg, [k for _, k in kernels])
    for (_, k), g in zip(kernels, grads):
        np.testing.assert_allclose(_np(g), wd * _np(k), rtol=1e-5, atol=1e-12)
    assert nets.build("tiny_cnn", num_classes=10, weight_decay=0.0).losses == []


def test_mobilenet_depthwise_not_decayed_by_default():
    wd = 4e-5
    net = nets.build("mobilenet", num_classes=10, weight_decay=wd, seed=0)
    kernels = _kernels(net)
    assert len(net.losses) == len(kernels) == 15  # conv1 + 13 pointwise + logits
    expected = sum(wd / 2 * float(np.sum(np.square(_np(k).astype(np.float64)))) for _, k in kernels)
    np.testing.assert_allclose(float(tf.add_n(net.losses)), expected, rtol=1e-5)
    both = nets.build("mobilenet", num_classes=10, weight_decay=wd, regularize_depthwise=True)
    assert len(both.losses) == 28


def test_resnet_config_round_trip():
    net = nets.build("resnet20", num_classes=10, seed=0)
    clone = keras.Model.from_config(net.get_config())
    assert clone.count_params() == net.count_params()
    clone.set_weights(net.get_weights())
    x = np.ones((1, 32, 32, 3), "float32")
    np.testing.assert_allclose(_np(clone(x)), _np(net(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch, suffix", [("inception_v1", ".weights.h5"), ("mobilenet", ".h5")])
def test_pretrained_path_round_trip(tmp_path, arch, suffix):
    source = nets.build(arch, num_classes=10, seed=0)
    path = str(tmp_path / f"backbone{suffix}")
    if suffix == ".weights.h5":
        _backbone(source).save_weights(path)
    else:
        _write_legacy_h5(_backbone(source), path)
    target = nets.build(arch, num_classes=100, seed=1, pretrained=path)
    for ws, wt in zip(_backbone(source).get_weights(), _backbone(target).get_weights()):
        np.testing.assert_array_equal(ws, wt)
    fresh = nets.build(arch, num_classes=100, seed=1)
    np.testing.assert_array_equal(target.get_layer("logits").kernel, fresh.get_layer("logits").kernel)


def test_mobilenet_imagenet_loads_keras_applications_file(tmp_path, monkeypatch):
    app = keras.applications.MobileNet(input_shape=(32, 32, 3), include_top=False, weights=None)
    path = str(tmp_path / "mobilenet_1_0_224_tf_no_top.h5")
    _write_legacy_h5(app, path)
    monkeypatch.setattr(keras.utils, "get_file", lambda *a, **k: path)
    net = nets.build("mobilenet", num_classes=751, input_shape=(64, 64, 3), pretrained="imagenet")
    weighted = [layer for layer in app.layers if layer.weights]
    assert len(weighted) == 4 * 13 + 2
    for layer in weighted:
        for wa, wn in zip(layer.get_weights(), net.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(wa, wn)


def test_imagenet_without_network_gives_clear_error(monkeypatch):
    def fail(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", fail)
    with pytest.raises(nets.PretrainedWeightsError, match="mobilenet_1_0_224_tf_no_top.h5") as e:
        nets.build("mobilenet", num_classes=10, pretrained="imagenet")
    assert isinstance(e.value, DMLError) and isinstance(e.value, OSError)
    assert "pretrained=" in str(e.value)
    with pytest.raises(nets.PretrainedWeightsError, match="local|pretrained='/path"):
        nets.build("inception_v1", num_classes=10, pretrained="imagenet")
    with pytest.raises(ValueError, match="imagenet"):
        nets.build("resnet32", num_classes=10, pretrained="imagenet")


def test_pretrained_missing_or_unrelated_file(tmp_path):
    with pytest.raises(nets.PretrainedWeightsError, match="not found"):
        nets.build("tiny_cnn", num_classes=10, pretrained=str(tmp_path / "nope.weights.h5"))
    path = str(tmp_path / "tiny.weights.h5")
    _backbone(nets.build("tiny_cnn", num_classes=10)).save_weights(path)
    with pytest.raises(nets.PretrainedWeightsError, match="no layer"):
        nets.build("mobilenet", num_classes=10, pretrained=path)


@pytest.mark.parametrize("arch, momentum", [("mobilenet", 0.9997), ("inception_v1", 0.9997), ("resnet20", 0.9),
                                            ("wrn_16_4", 0.9), ("tiny_cnn", 0.9)])
def test_batch_norm_momentum(arch, momentum):
    """slim's batch_norm decay 0.9997 for the slim nets, 0.9 for the PyTorch-style ones; overridable."""
    net = nets.build(arch, num_classes=5, seed=0)
    bns = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and {layer.momentum for layer in bns} == {momentum}
    other = nets.build(arch, num_classes=5, seed=0, bn_momentum=0.5)
    assert {layer.momentum for layer in other.layers
            if isinstance(layer, keras.layers.BatchNormalization)} == {0.5}
    with pytest.raises(ValueError, match="bn_momentum"):
        nets.build(arch, num_classes=5, bn_momentum=1.0)


def test_slim_batch_norm_update_is_decay_0_9997():
    """One training step moves MobileNet's first moving mean by (1 - 0.9997) x the batch mean."""
    net = nets.build("mobilenet", num_classes=5, input_shape=(32, 32, 3), seed=0)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    conv = keras.Model(net.input, net.get_layer("conv1").output)(x).numpy()
    net(x, training=True)
    batch_mean = conv.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(_np(net.get_layer("conv1_bn").moving_mean), (1 - 0.9997) * batch_mean,
                               rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("arch, rate", [("inception_v1", 0.2), ("mobilenet", 0.001)])
def test_slim_dropout_before_logits(arch, rate):
    """slim's dropout_keep_prob: 0.8 (inception_v1), 0.999 (mobilenet), between features and logits."""
    net = nets.build(arch, num_classes=5, seed=0)
    dropout = net.get_layer("dropout")
    assert net.get_layer("logits").input is dropout.output
    assert dropout.input is net.get_layer("features").output
    out = _np(dropout(np.ones((200, 1024), "float32"), training=True))
    kept = out != 0
    np.testing.assert_allclose(out[kept], 1.0 / (1.0 - rate), rtol=1e-6)
    assert abs((1 - kept.mean()) - rate) < max(0.01, 3 * np.sqrt(rate * (1 - rate) / out.size))
    np.testing.assert_array_equal(_np(dropout(np.ones((2, 1024), "float32"), training=False)), 1.0)
    assert "dropout" not in [layer.name for layer in nets.build(arch, num_classes=5, dropout=0.0).layers]
