"""Using a trained run: dml_tf.predict (top classes by name, CSV/JSON) and the exported
self-contained Keras model, on a folder of real images; Keras Applications as members."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from dml_tf import config as cfg
from dml_tf import export, nets, predict, runner
from dml_tf.data import folder
from dml_tf.errors import DataError
from dml_tf.nets.pretrained import PretrainedWeightsError
import helpers_images
from paths import ROOT


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A short DML run of a ResNet (option-A shortcuts) and a tiny CNN on real digit images."""
    root = tmp_path_factory.mktemp("folder_run")
    helpers_images.write_digit_folder(str(root / "images"), per_class=10, split_folders=True)
    config = cfg.TrainConfig(dataset="folder", data_dir=str(root / "images"), nets=("resnet20", "tiny_cnn"),
                             epochs=2, steps_per_epoch=4, batch_size=16, learning_rate=0.02,
                             warmup_epochs=0.0, model_dir=str(root / "run"), verbose=0)
    results = runner.run(config, log=lambda s: None)
    return root, results


def test_results_record_class_names_and_preprocessing(folder_run):
    _, results = folder_run
    assert results["dataset"]["class_names"] == sorted(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    assert results["preprocessing"]["input_shape"] == [32, 32, 3]
    assert len(results["preprocessing"]["mean"]) == 3


def test_portable_members_compute_the_same_values():
    member = nets.build("resnet20", num_classes=10, seed=3)
    copy = export.portable(member)
    assert not any(type(layer).__module__.startswith("dml_tf") for layer in copy.layers)
    x = np.random.RandomState(0).randn(4, 32, 32, 3).astype(np.float32)
    np.testing.assert_array_equal(member.predict(x, verbose=0), copy.predict(x, verbose=0))


def test_exported_model_matches_the_run_without_dml_tf(folder_run, tmp_path):
    root, results = folder_run
    path = str(tmp_path / "classifier.keras")
    predict.export_model(str(root / "run"), path)
    test_images = folder.load_arrays(str(root / "images"))["test_images"]
    np.save(tmp_path / "images.npy", test_images)
    # A fresh interpreter that never imports dml_tf: the file is self-contained.
    code = ("import sys, numpy as np, keras; "
            f"m = keras.models.load_model({path!r}); "
            f"p = m.predict(np.load({str(tmp_path / 'images.npy')!r}), verbose=0); "
            f"np.save({str(tmp_path / 'probs.npy')!r}, p); "
            "assert not any(k.startswith('dml_tf') for k in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tmp_path),
                   env={**os.environ, "PYTHONPATH": ""}, capture_output=True)
    probs = np.load(tmp_path / "probs.npy")
    with np.load(root / "run" / "test_predictions.npz") as saved:
        np.testing.assert_array_equal(probs.argmax(axis=1), saved["ensemble"])
    # The same probabilities as the cohort's own on its test split.
    bundle = runner.load_data(cfg.TrainConfig(**results["config"]))
    members = [keras.models.load_model(root / "run" / m["file"]) for m in results["members"]]
    x = np.concatenate([b[0] for b in bundle.test.as_numpy_iterator()])
    expected = np.mean([keras.ops.softmax(m.predict(x, verbose=0)).numpy() for m in members], axis=0)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    # Raw images of another size are resized inside the model.
    bigger = keras.ops.image.resize(test_images[:3].astype("float32"), (45, 40)).numpy()
    assert keras.models.load_model(path).predict(bigger, verbose=0).shape == (3, 10)


def test_predict_prints_top_classes_and_writes_csv_and_json(folder_run, tmp_path):
    root, results = folder_run
    images = str(root / "images" / "test" / "three")
    predictions = predict.predict(str(root / "run"), [images], top_k=3)
    assert len(predictions) == len(os.listdir(images))
    first = predictions[0]
    assert [e["class"] for e in first["ensemble"]] == [results["dataset"]["class_names"][e["index"]]
                                                       for e in first["ensemble"]]
    assert len(first["members"]) == 2 and len(first["ensemble"]) == 3
    probs = [e["probability"] for e in first["ensemble"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    predict.write_predictions(str(tmp_path / "p.csv"), predictions, members=True)
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == len(predictions) * 3 * 3 and {r["source"] for r in rows} == {"ensemble", "member_0",
                                                                                    "member_1"}
    predict.write_predictions(str(tmp_path / "p.json"), predictions, members=False)
    assert "members" not in json.loads((tmp_path / "p.json").read_text())[0]
    text = predict.format_predictions(predictions[:1], members=True)
    assert text.startswith(first["image"]) and "member 1:" in text


def test_predict_command_line_errors(folder_run, tmp_path):
    root, _ = folder_run

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "dml_tf.predict", *args], cwd=ROOT,
                              capture_output=True, text=True)

    (tmp_path / "bad.png").write_text("no")
    out = cli(f"--model_dir={root / 'run'}", str(tmp_path / "missing.jpg"))
    assert out.returncode == 1 and "missing.jpg does not exist" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 2  # the error and the pointer to --help
    with pytest.raises(DataError, match="bad.png is not a readable image"):
        predict.predict(str(root / "run"), [str(tmp_path / "bad.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        predict.predict(str(root / "run"), [str(tmp_path / "empty")])


def test_keras_application_names_and_sizes_are_checked():
    with pytest.raises(ValueError, match="unknown Keras application 'MobileNetV9'.*MobileNetV2"):
        nets.build("keras:MobileNetV9", num_classes=3)
    with pytest.raises(ValueError, match="keras:MobileNetV2 needs images of at least 32x32; got 16x16"):
        nets.build("keras:MobileNetV2", num_classes=3, input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match="keras:NAME for a Keras application"):
        nets.build("mobilenet_v9", num_classes=3)


def test_keras_imagenet_weights_offline_name_the_file(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/tensorflow/keras-applications/"
                        "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.mobilenet_v2.file_utils.get_file", offline)
    with pytest.raises(PretrainedWeightsError, match="put mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224"
                                                     "_no_top.h5 in ~/.keras/models/"):
        nets.build("keras:MobileNetV2", num_classes=3, input_shape=(32, 32, 3), pretrained="imagenet")


@pytest.fixture()
def light_graph_optimizer():
    """Grappler off while the test traces two Keras applications' steps (halves its time)."""
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    yield
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})


def test_keras_application_pair_trains_and_exports(tmp_path, light_graph_optimizer):
    helpers_images.write_digit_folder(str(tmp_path / "images"), per_class=6)
    config = cfg.TrainConfig(dataset="folder", data_dir=str(tmp_path / "images"),
                             nets=("keras:MobileNetV3Small", "tiny_cnn"), epochs=1, steps_per_epoch=1,
                             batch_size=8, weight_decay=1e-4, model_dir=str(tmp_path / "run"), verbose=0)
    results = runner.run(config, log=lambda s: None)
    assert [m["net"] for m in results["members"]] == ["keras:MobileNetV3Small", "tiny_cnn"]
    member = keras.models.load_model(tmp_path / "run" / "member_0.keras")
    assert member.get_layer("features").output.shape == (None, 576)
    assert len(member.losses) > 30  # weight decay on every kernel, kept when saved
    model = export.classifier(str(tmp_path / "run"))
    images = folder.load_arrays(str(tmp_path / "images"))["test_images"]
    assert model.predict(images, verbose=0).shape == (len(images), 10)
