"""Pretrained Keras applications fed as they were trained: the member undoes the run's
standardisation and applies its application's own preprocess_input, inside the model."""

import os
import types

import h5py
import keras
import numpy as np
import pytest
from sklearn.datasets import load_sample_image

from dml_tf import config as cfg
from dml_tf import export, nets, reporting, runner
from dml_tf.data import folder, pipeline
from dml_tf.nets import keras_apps
import helpers_images


def photos(size):
    """scikit-learn's two bundled photographs (real), their mirror images and centre crops,
    resized: uint8 (8, size, size, 3)."""
    images = []
    for name in ("china.jpg", "flower.jpg"):
        image = load_sample_image(name).astype("float32")
        for view in (image, image[:, ::-1], image[100:-100, 150:-150], image[100:-100, 150:-150, ::-1]):
            images.append(keras.ops.image.resize(np.ascontiguousarray(view), (size, size)).numpy())
    return np.round(np.stack(images)).clip(0, 255).astype("uint8")


def standardised(pixels, mean, std):
    return ((pixels / 255.0 - mean) / std).astype("float32")


@pytest.mark.parametrize("name, mode", [("VGG16", "caffe"), ("DenseNet121", "torch"),
                                        ("MobileNetV2", "tf"), ("EfficientNetB0", "none")])
def test_input_layers_equal_the_applications_own_preprocess_input(name, mode, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype("float32")
    mean, std = np.array([0.3, 0.5, 0.6], "float32"), np.array([0.2, 0.25, 0.3], "float32")
    images = keras.Input((5, 7, 3))
    model = keras.Model(images, keras_apps.pretrained_input(f"keras:{name}", images, (mean, std)))
    module = {"VGG16": keras.applications.vgg16, "DenseNet121": keras.applications.densenet,
              "MobileNetV2": keras.applications.mobilenet_v2,
              "EfficientNetB0": keras.applications.efficientnet}[name]
    expected = np.asarray(module.preprocess_input(pixels.copy()))
    got = model.predict(standardised(pixels, mean, std), verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert ("preprocess_input" in [layer.name for layer in model.layers]) == (mode != "none")
    if mode == "caffe":  # BGR: the blue channel minus its ImageNet mean comes first
        np.testing.assert_allclose(got[..., 0], pixels[..., 2] - 103.939, atol=1e-4)
    model.save(tmp_path / "m.keras")  # only Keras layers: reloads without dml_tf
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(again.predict(standardised(pixels, mean, std), verbose=0), got)


def write_legacy_weights(model, path):
    """``model``'s weights as a legacy Keras HDF5 weights file (the keras.applications downloads'
    format: per layer, its trainable then non-trainable weights)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        f.attrs["keras_version"], f.attrs["backend"] = b"3", b"tensorflow"
        for layer in model.layers:
            group = f.create_group(layer.name)
            weights = layer.trainable_weights + layer.non_trainable_weights
            group.attrs["weight_names"] = [f"w{i}".encode() for i in range(len(weights))]
            for i, w in enumerate(weights):
                group[f"w{i}"] = np.asarray(w)


def fake_imagenet_weights(keras_home, monkeypatch, input_shape, file_name, images=None):
    """A MobileNetV2 without top (weights=None, seeded) whose batch-norm statistics are
    those of ``images`` (as a trained network's are; one pass at momentum 0), saved as the
    ImageNet weights file that ``weights="imagenet"`` looks for in ``keras_home``/models,
    which becomes Keras' home (KERAS_HOME). Returns the application."""
    keras.utils.set_random_seed(5)
    application = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=input_shape)
    if images is not None:
        for layer in application.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.0
        application(keras.applications.mobilenet_v2.preprocess_input(images.astype("float32")), training=True)
    os.makedirs(os.path.join(keras_home, "models"))
    write_legacy_weights(application, os.path.join(keras_home, "models", file_name))
    monkeypatch.setattr("keras.src.backend.config.keras_home", lambda: str(keras_home))
    return application


def test_imagenet_weights_prediction_is_unchanged_by_the_wrapping(tmp_path, monkeypatch):
    """The application's own features of real photos, application(preprocess_input(pixels)),
    equal the member's on the standardised photos, with the "ImageNet" weights file (made
    offline from the application itself) loaded through --pretrained=imagenet's path."""
    pixels = photos(96)
    application = fake_imagenet_weights(tmp_path, monkeypatch, (96, 96, 3),
                                        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5", pixels)
    mean, std = pipeline.channel_stats(pixels)
    member = nets.build("keras:MobileNetV2", num_classes=10, input_shape=(96, 96, 3), seed=0,
                        pretrained="imagenet", input_standardisation=(mean, std))
    features = keras.Model(member.input, member.get_layer("features").output)
    got = features.predict(standardised(pixels, mean, std), verbose=0)
    reference = application.predict(keras.applications.mobilenet_v2.preprocess_input(pixels.astype("float32")),
                                    verbose=0).mean(axis=(1, 2))
    assert np.abs(reference).max() > 0.1  # a real signal, not zeros
    np.testing.assert_allclose(got, reference, atol=1e-4)
    # The features depend on the scaling: fed the standardised photos (the old behaviour), the
    # application gives other numbers.
    unscaled = application.predict(standardised(pixels, mean, std), verbose=0).mean(axis=(1, 2))
    assert np.abs(unscaled - reference).max() > 0.1  # measured: 5.3; the wrapping: 4e-5


def test_pretrained_members_mix_with_members_from_scratch():
    config = cfg.TrainConfig(dataset="digits", nets=("keras:MobileNetV2", "mobilenet", "tiny_cnn"),
                             pretrained="imagenet")
    assert config.member_pretrained() == ["imagenet", "imagenet", None]
    assert cfg.TrainConfig(dataset="digits", nets=("tiny_cnn",), pretrained="imagenet").member_pretrained() \
        == ["imagenet"]  # no member has ImageNet weights: its builder's error says so
    assert cfg.TrainConfig(dataset="digits", nets=("tiny_cnn", "resnet20"),
                           pretrained="w.h5").member_pretrained() == ["w.h5", "w.h5"]
    members = [types.SimpleNamespace(name=n, trainable=True) for n in ("a", "b", "c")]
    banner = reporting.describe_run(config.resolved(), members, 10, 5, 1)
    assert "a (keras:MobileNetV2, ImageNet weights), b (mobilenet, ImageNet weights), c (tiny_cnn)" in banner


@pytest.fixture()
def light_graph_optimizer():
    """Grappler off while the test traces a Keras application's steps (halves its time)."""
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    yield
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})


def test_a_pretrained_application_trains_beside_a_network_from_scratch_and_exports(
        tmp_path, monkeypatch, light_graph_optimizer):
    fake_imagenet_weights(tmp_path / "keras", monkeypatch, (32, 32, 3),
                          "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
    helpers_images.write_digit_folder(str(tmp_path / "images"), per_class=6)
    config = cfg.TrainConfig(dataset="folder", data_dir=str(tmp_path / "images"),
                             nets=("keras:MobileNetV2", "tiny_cnn"), pretrained="imagenet", epochs=1,
                             steps_per_epoch=1, batch_size=8, weight_decay=1e-4,
                             model_dir=str(tmp_path / "run"), verbose=0)
    lines = []
    results = runner.run(config, log=lines.append)
    assert "MobileNetV2_0 (keras:MobileNetV2, ImageNet weights), tiny_cnn_1 (tiny_cnn)" in "\n".join(lines)
    member, tiny = (keras.models.load_model(tmp_path / "run" / m["file"]) for m in results["members"])
    # Its own input transform, saved with it: the run's standardisation undone, then [-1, 1].
    mean, std = (np.array(results["preprocessing"][k]) for k in ("mean", "std"))
    np.testing.assert_allclose(member.get_layer("pixels").get_config()["mean"], 255 * mean, rtol=1e-6)
    np.testing.assert_allclose(member.get_layer("pixels").get_config()["variance"], (255 * std) ** 2, rtol=1e-5)
    np.testing.assert_allclose(member.get_layer("preprocess_input").get_weights()[0], np.eye(3) / 127.5,
                               rtol=1e-6)
    assert not member.get_layer("preprocess_input").trainable
    assert not {"pixels", "preprocess_input"} & {layer.name for layer in tiny.layers}
    assert member.get_layer("features").output.shape == (None, 1280)
    assert len(member.losses) > 30  # weight decay on every kernel, kept when saved
    # The exported classifier (standardisation inside) gives each member's own probabilities.
    bundle = runner.load_data(config.resolved())
    x = np.concatenate([b[0] for b in bundle.test.as_numpy_iterator()])
    images = folder.load_arrays(str(tmp_path / "images"))["test_images"]
    outputs = export.classifier(str(tmp_path / "run"), all_outputs=True).predict(images, verbose=0)
    np.testing.assert_allclose(outputs[1], keras.ops.softmax(member.predict(x, verbose=0)), atol=1e-5)
    # A resume rebuilds the same member around the same constants: the checkpoint's variables fit.
    rebuilt = runner.build_members(config.resolved(), bundle)[0]
    assert rebuilt.get_layer("pixels").get_config() == member.get_layer("pixels").get_config()
    assert [tuple(w.shape) for w in rebuilt.weights] == [tuple(w.shape) for w in member.weights]
