"""Using a trained run: dml_tf.predict (top classes by name, CSV/JSON), the exported
self-contained Keras model, TensorFlow SavedModel and TensorFlow Lite models, on a folder of
real images; Keras Applications' names and sizes (pretrained members:
tests/nets/test_keras_apps_pretrained.py)."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from dml_tf import config as cfg
from dml_tf import deploy, export, nets, predict, runner
from dml_tf.data import folder
from dml_tf.errors import DataError
from dml_tf.nets.pretrained import PretrainedWeightsError
import helpers_images
from paths import ROOT


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A DML run of a ResNet (option-A shortcuts) and a tiny CNN on 400 real digit images
    (16x16), trained for 40 steps: the ResNet reaches about 94% test accuracy (measured;
    as with 80 steps), so that its predictions have margins and the int8 agreement means
    something."""
    root = tmp_path_factory.mktemp("folder_run")
    helpers_images.write_digit_folder(str(root / "images"), per_class=40, size=16, split_folders=True)
    config = cfg.TrainConfig(dataset="folder", data_dir=str(root / "images"), nets=("resnet20", "tiny_cnn"),
                             epochs=4, batch_size=32, learning_rate=0.05, lr_decay_epochs=(), augment="none",
                             warmup_epochs=0.0, model_dir=str(root / "run"), verbose=0)
    results = runner.run(config, log=lambda s: None)
    return root, results


@pytest.fixture(scope="module")
def expected_probabilities(folder_run):
    """Each member's probabilities on the run's test split, as the cohort computes them
    (its own pipeline's standardised images)."""
    root, results = folder_run
    bundle = runner.load_data(cfg.TrainConfig(**results["config"]))
    members = [keras.models.load_model(root / "run" / m["file"]) for m in results["members"]]
    x = np.concatenate([b[0] for b in bundle.test.as_numpy_iterator()])
    return [keras.ops.softmax(m.predict(x, verbose=0)).numpy() for m in members]


# Uses every export in a fresh interpreter that never imports dml_tf: the files are self-contained.
CONSUMER = """
import sys, warnings
import numpy as np, tensorflow as tf, keras
warnings.filterwarnings("ignore")  # tf.lite.Interpreter's deprecation notice
out = sys.argv[1]
images = np.load(f"{out}/images.npy")
bigger = np.round(tf.image.resize(images[:3].astype("float32"), (45, 40)).numpy()).astype("uint8")
r = {}
classifier = keras.models.load_model(f"{out}/classifier.keras")
r["keras"], r["keras_bigger"] = classifier.predict(images, verbose=0), classifier.predict(bigger, verbose=0)
served = tf.saved_model.load(f"{out}/served")
outputs = served.signatures["serving_default"](images=tf.constant(images))
r["saved_probabilities"], r["saved_class_index"] = outputs["probabilities"].numpy(), outputs["class_index"].numpy()
r["saved_class_name"] = np.array([s.decode() for s in outputs["class_name"].numpy()])
r["saved_class_names"] = np.array([s.decode() for s in served.class_names()["class_names"].numpy()])
r["saved_bigger"] = served.serve(tf.constant(bigger))["probabilities"].numpy()
for kind in ("float32", "int8"):
    interpreter = tf.lite.Interpreter(f"{out}/member_{kind}.tflite")
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], images.shape)
    interpreter.allocate_tensors()
    (scale, zero), dtype = inp["quantization"], inp["dtype"]
    x = images.astype(dtype) if not scale else np.round(images / scale + zero).clip(0, 255).astype(dtype)
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    y, (scale, zero) = interpreter.get_tensor(outp["index"]), outp["quantization"]
    r[kind] = y if not scale else (y.astype("float32") - zero) * scale
    r[kind + "_io"] = np.array([str(np.dtype(inp["dtype"])), str(np.dtype(outp["dtype"]))])
    r[kind + "_input_quantization"] = np.array(inp["quantization"], "float64")
    r[kind + "_tensor_types"] = np.array(sorted({str(np.dtype(t["dtype"])) for t in interpreter.get_tensor_details()}))
assert not any(k.startswith("dml_tf") for k in sys.modules)
np.savez(f"{out}/outputs.npz", **r)
"""


@pytest.fixture(scope="module")
def exported(folder_run, tmp_path_factory):
    """The run exported as .keras (the ensemble), SavedModel (the ensemble), TFLite float32
    (the default member: the smallest) and TFLite int8 (member 0, the ResNet), then used on
    the raw test images by :data:`CONSUMER`: ``(folder, images, its outputs)``."""
    root, _ = folder_run
    out = tmp_path_factory.mktemp("exported")
    run = str(root / "run")
    predict.export_model(run, str(out / "classifier.keras"))
    predict.export_model(run, str(out / "served"))
    predict.export_model(run, str(out / "member_float32.tflite"))
    predict.export_model(run, str(out / "member_int8.tflite"), member=0, quantize="int8")
    images = folder.load_arrays(str(root / "images"))["test_images"]
    np.save(out / "images.npy", images)
    subprocess.run([sys.executable, "-c", CONSUMER, str(out)], check=True, cwd=str(out),
                   env={**os.environ, "PYTHONPATH": ""}, capture_output=True)
    with np.load(out / "outputs.npz") as outputs:
        return out, images, dict(outputs)


def test_results_record_class_names_and_preprocessing(folder_run):
    _, results = folder_run
    assert results["dataset"]["class_names"] == sorted(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    assert results["preprocessing"]["input_shape"] == [16, 16, 3]
    assert len(results["preprocessing"]["mean"]) == 3


def test_portable_members_compute_the_same_values():
    member = nets.build("resnet20", num_classes=10, seed=3)
    copy = export.portable(member)
    assert not any(type(layer).__module__.startswith("dml_tf") for layer in copy.layers)
    x = np.random.RandomState(0).randn(4, 32, 32, 3).astype(np.float32)
    np.testing.assert_array_equal(member.predict(x, verbose=0), copy.predict(x, verbose=0))


def test_exported_model_matches_the_run_without_dml_tf(folder_run, exported, expected_probabilities):
    root, results = folder_run
    _, images, outputs = exported
    with np.load(root / "run" / "test_predictions.npz") as saved:
        np.testing.assert_array_equal(outputs["keras"].argmax(axis=1), saved["ensemble"])
    # The same probabilities as the cohort's own on its test split.
    expected = np.mean(expected_probabilities, axis=0)
    np.testing.assert_allclose(outputs["keras"], expected, atol=1e-5)
    # Raw images of another size are resized inside the model.
    assert outputs["keras_bigger"].shape == (3, 10)


def test_saved_model_serves_the_runs_predictions_and_class_names(folder_run, exported, expected_probabilities):
    root, results = folder_run
    out, images, outputs = exported
    expected = np.mean(expected_probabilities, axis=0)
    np.testing.assert_allclose(outputs["saved_probabilities"], expected, atol=1e-4)
    names = results["dataset"]["class_names"]
    np.testing.assert_array_equal(outputs["saved_class_index"], expected.argmax(axis=1))
    assert list(outputs["saved_class_name"]) == [names[i] for i in expected.argmax(axis=1)]
    assert list(outputs["saved_class_names"]) == names
    np.testing.assert_allclose(outputs["saved_bigger"], outputs["keras_bigger"], atol=1e-5)
    # Never into a folder of other files (the run's own, here).
    with pytest.raises(ValueError, match="is not a SavedModel folder"):
        predict.export_model(str(root / "run"), str(root / "run"))
    assert os.path.isfile(root / "run" / "results.json")


def test_tflite_members_match_the_run(folder_run, exported, expected_probabilities):
    root, results = folder_run
    out, images, outputs = exported
    probabilities = expected_probabilities
    # The default member is the smallest: the tiny CNN, member 1.
    sizes = [keras.models.load_model(root / "run" / m["file"]).count_params() for m in results["members"]]
    assert deploy.smallest_member(str(root / "run")) == 1 and sizes[1] < sizes[0]
    assert list(outputs["float32_io"]) == ["float32", "float32"]
    np.testing.assert_allclose(outputs["float32"], probabilities[1], atol=1e-4)
    # int8: integer tensors only, uint8 pixels in (scale 1, zero point 0: the calibration
    # images span 0-255), and the float member's top class on at least 95% of the test
    # images (measured: 100 of 100, the ResNet member at 94% accuracy).
    assert list(outputs["int8_io"]) == ["uint8", "uint8"]
    assert set(outputs["int8_tensor_types"]) <= {"int8", "uint8", "int32"}
    np.testing.assert_allclose(outputs["int8_input_quantization"], [1.0, 0.0], atol=1e-6)
    agreement = np.mean(outputs["int8"].argmax(axis=1) == probabilities[0].argmax(axis=1))
    assert agreement >= 0.95, agreement
    # A byte per weight, not float32's four (measured: 0.31 MB for the ResNet's 1.10 MB).
    assert os.path.getsize(out / "member_int8.tflite") < 0.4 * 4 * sizes[0]


def test_export_arguments_are_checked(folder_run, tmp_path):
    run = str(folder_run[0] / "run")
    with pytest.raises(ValueError, match="--quantize needs --export=FILE.tflite"):
        predict.export_model(run, str(tmp_path / "m.keras"), quantize="int8")
    with pytest.raises(ValueError, match="FILE.keras, FILE.tflite or a folder"):
        predict.export_model(run, str(tmp_path / "m.h5"))
    with pytest.raises(ValueError, match=r"member must be in \[0, 2\)"):
        predict.export_model(run, str(tmp_path / "m.tflite"), member=2)
    assert not os.listdir(tmp_path)


@pytest.fixture(scope="module")
def threes(folder_run):
    """``(folder, predict.predict of it, top 3)``: the test images of class three."""
    images = str(folder_run[0] / "images" / "test" / "three")
    return images, predict.predict(str(folder_run[0] / "run"), [images], top_k=3)


def test_predict_prints_top_classes_and_writes_csv_and_json(folder_run, threes, tmp_path):
    root, results = folder_run
    images, predictions = threes
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


def test_predict_streams_batches_and_writes_as_it_goes(folder_run, threes, tmp_path, monkeypatch):
    root, _ = folder_run
    images, whole = threes  # top 3 at once; the stream's top 2 are its first two
    classify, sizes = export.classifier, []

    def recording(*args, **kwargs):
        model = classify(*args, **kwargs)
        on_batch = model.predict_on_batch
        model.predict_on_batch = lambda x: (sizes.append(len(x)), on_batch(x))[1]
        return model

    monkeypatch.setattr(export, "classifier", recording)
    stream = predict.iter_predictions(str(root / "run"), [images], top_k=2, batch_size=4)
    writer = predict.PredictionWriter(str(tmp_path / "p.csv"), members=False)
    first = next(stream)
    writer.write(first)
    assert sizes == [4]  # one batch classified so far, not the folder
    assert [r["image"] for r in csv.DictReader(open(tmp_path / "p.csv.partial"))] == [first["image"]] * 2
    assert not os.path.exists(tmp_path / "p.csv")
    rest = list(stream)
    for p in rest:
        writer.write(p)
    writer.close()
    assert sizes == [4, 4, 2] and not os.path.exists(tmp_path / "p.csv.partial")
    assert len(list(csv.DictReader(open(tmp_path / "p.csv")))) == 2 * len(whole)
    for streamed, at_once in zip([first] + rest, whole):
        assert streamed["image"] == at_once["image"]
        assert len(streamed["ensemble"]) == 2
        np.testing.assert_allclose([e["probability"] for e in streamed["ensemble"]],
                                   [e["probability"] for e in at_once["ensemble"][:2]], atol=1e-6)


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
