"""--dataset=folder: your own images in one sub-folder per class, read as Keras reads them."""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import dml_tf.data
from dml_tf.data import folder
from dml_tf.errors import DataError, DatasetNotFoundError
import helpers_images
from helpers_data import collect

NAMES = sorted(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits_folder")
    written = helpers_images.write_digit_folder(str(root), per_class=8)
    return str(root), written


def keras_decoded(path):
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False).numpy()


def test_classes_files_and_labels_follow_keras_order(digit_folder):
    root, written = digit_folder
    classes, files = folder.list_classes(root)
    assert classes == NAMES  # sorted folder names are the class indices, as Keras does
    assert [p for p, _ in files] == sorted(written, key=lambda p: (NAMES.index(written[p]), p))
    assert all(classes[i] == written[p] for p, i in files)


def test_split_is_stratified_and_the_same_for_every_training_seed(digit_folder):
    root, written = digit_folder
    bundles = [dml_tf.data.load("folder", data_dir=root, batch_size=5, seed=seed, validation_split=0.25)
               for seed in (0, 1)]
    for bundle in bundles:
        assert bundle.num_classes == 10 and bundle.input_shape == (32, 32, 3)
        assert bundle.train_size == 60 and bundle.test_size == 20  # 2 of 8 per class to test
        assert bundle.extras["class_names"] == NAMES and bundle.extras["split"] == "validation_split"
        assert bundle.extras["augment"] == "pad_crop"
    tests = [collect(b.test) for b in bundles]
    np.testing.assert_array_equal(tests[0][0], tests[1][0])
    assert np.bincount(tests[0][1], minlength=10).tolist() == [2] * 10
    # The test images are the files' pixels, standardised with the training images' statistics.
    arrays = folder.load_arrays(root, validation_split=0.25)
    x = tests[0][0] * bundles[0].extras["std"] + bundles[0].extras["mean"]
    np.testing.assert_allclose(x * 255, arrays["test_images"], atol=1e-3)
    pngs = [p for p in written if p.endswith(".png")]
    np.testing.assert_array_equal(folder.read_images(pngs[:3]),
                                  np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs[:3]]))
    # Every test image is a file as Keras' reader decodes it (JPEG decoders differ from PIL's).
    on_disk = [keras_decoded(p) for p in written]
    for image in arrays["test_images"]:
        assert any(np.array_equal(image, d) for d in on_disk)


def test_train_and_test_folders_are_used_as_given(tmp_path):
    helpers_images.write_digit_folder(str(tmp_path), per_class=8, split_folders=True)
    bundle = dml_tf.data.load("folder", data_dir=str(tmp_path), batch_size=4, train_per_class=3)
    assert bundle.extras["split"] == "folders"
    assert bundle.train_size == 30 and bundle.test_size == 20  # 6 + 2 per class on disk


def test_image_size_resizes_and_chooses_the_augmentation(digit_folder):
    root, _ = digit_folder
    bundle = dml_tf.data.load("folder", data_dir=root, batch_size=4, image_size=(72, 80))
    assert bundle.input_shape == (72, 80, 3) and bundle.extras["augment"] == "resized_crop"
    x, _ = next(iter(bundle.train))
    assert x.shape == (4, 72, 80, 3)
    bundle = dml_tf.data.load("folder", data_dir=root, batch_size=4, augment="none")
    x_train, _ = collect(bundle.train.take(1))
    assert {tuple(np.round(v, 4).ravel()[:20]) for v in collect(bundle.extras["train_unaugmented"]())[0]} >= \
        {tuple(np.round(v, 4).ravel()[:20]) for v in x_train}  # no augmentation: training images as stored


def test_random_resized_crop_is_seeded_and_keeps_the_shape():
    image = tf.random.stateless_uniform((40, 50, 3), seed=(1, 2))
    a = folder.random_resized_crop(image, tf.constant([3, 4]))
    b = folder.random_resized_crop(image, tf.constant([3, 4]))
    c = folder.random_resized_crop(image, tf.constant([5, 4]))
    assert a.shape == (40, 50, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_grayscale_and_rgba_are_converted_and_said_once(tmp_path, caplog):
    for c in ("a", "b"):
        os.makedirs(tmp_path / c)
        for i in range(3):
            Image.fromarray(np.full((6, 6), 40 * i, np.uint8), mode="L").save(tmp_path / c / f"g{i}.png")
        Image.fromarray(np.full((6, 6, 4), 200, np.uint8), mode="RGBA").save(tmp_path / c / "rgba.png")
    with caplog.at_level(logging.WARNING):
        arrays = folder.load_arrays(str(tmp_path), validation_split=0.25)
    assert arrays["train_images"].shape[1:] == (6, 6, 3)
    messages = [r.getMessage() for r in caplog.records if "converted to RGB" in r.getMessage()]
    assert sorted(messages) == ["1 RGBA image(s) converted to RGB (e.g. the alpha channel dropped).",
                                "6 grayscale image(s) converted to RGB (e.g. the alpha channel dropped)."] or \
        sorted(messages) == ["2 RGBA image(s) converted to RGB (e.g. the alpha channel dropped).",
                             "6 grayscale image(s) converted to RGB (e.g. the alpha channel dropped)."]
    rgba = folder.read_images([str(tmp_path / "a" / "rgba.png")])
    assert rgba.shape == (1, 6, 6, 3) and rgba.max() == 200


def _classes(root, spec):
    for name, count in spec.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(count):
            Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(os.path.join(root, name, f"{i}.png"))


@pytest.mark.parametrize("make,error,words", [
    (lambda r: None, DataError, "holds no class folder"),
    (lambda r: os.makedirs(os.path.join(r, "cat")), DataError, "holds no image"),
    (lambda r: _classes(r, {"cat": 4}), DataError, "a single class (cat)"),
    (lambda r: _classes(r, {"cat": 4, "dog": 1}), DataError, "Class 1 has 1 image(s)"),
    (lambda r: (_classes(r, {"cat": 3, "dog": 3}), os.makedirs(os.path.join(r, "cow"))), DataError,
     "cow in"),
    (lambda r: (_classes(r, {"cat": 3, "dog": 3}),
                open(os.path.join(r, "dog", "notes.jpg"), "w").write("not an image")), DataError,
     "notes.jpg is not a readable image"),
    (lambda r: (_classes(r, {"cat": 3, "dog": 3}),
                Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(os.path.join(r, "dog", "big.png"))),
     DataError, "pass --image_size=H,W"),
    (lambda r: (_classes(os.path.join(r, "train"), {"cat": 3, "dog": 3}),
                _classes(os.path.join(r, "test"), {"cat": 1, "cow": 1})), DataError,
     "only in train/: dog; only in test/: cow"),
    (lambda r: _classes(os.path.join(r, "test"), {"cat": 3, "dog": 3}), DataError, "no train/ folder"),
])
def test_bad_folders_are_named(tmp_path, make, error, words):
    make(str(tmp_path))
    with pytest.raises(error, match=None) as info:
        dml_tf.data.load("folder", data_dir=str(tmp_path), validation_split=0.5)
    assert words in str(info.value)


def test_missing_folder_and_bad_options(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="needs --data_dir"):
        dml_tf.data.load("folder")
    with pytest.raises(DatasetNotFoundError, match="is not a folder"):
        dml_tf.data.load("folder", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="validation_split must be in"):
        dml_tf.data.load("folder", data_dir=str(tmp_path), validation_split=1.0)
    with pytest.raises(ValueError, match="augment must be one of"):
        dml_tf.data.load("folder", data_dir=str(tmp_path), augment="big")
