"""ImageNet loader on tfds mock data, its preprocessing, and the missing-archives error."""

import numpy as np
import pytest
import tensorflow as tf

from dml_tf.data import imagenet
from dml_tf.errors import DatasetNotFoundError

tfds = pytest.importorskip("tensorflow_datasets")


def _jpeg(height, width, value=None, seed=0):
    if value is None:
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        pixels = np.full((height, width, 3), value, np.uint8)
    return tf.io.encode_jpeg(pixels, quality=100)


def test_mock_data_bundle(tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        bundle = imagenet.load(data_dir=tmp_path, batch_size=4, image_size=32, tfds_data_dir=tmp_path, seed=1)
        assert (bundle.name, bundle.num_classes, bundle.input_shape) == ("imagenet2012", 1000, (32, 32, 3))
        assert (bundle.train_size, bundle.test_size) == (6, 6)
        batches = [(x.numpy(), y.numpy()) for x, y in bundle.train]
        assert [b[0].shape for b in batches] == [(4, 32, 32, 3), (2, 32, 32, 3)]
        for x, y in batches:
            assert x.dtype == np.float32 and y.dtype == np.int32
            assert x.min() >= -1.0 and x.max() <= 1.0
            assert y.min() >= 0 and y.max() < 1000
        x, y = next(iter(bundle.test))
        assert x.shape == (4, 32, 32, 3) and x.dtype == tf.float32 and y.dtype == tf.int32
        unlabeled = imagenet.load(data_dir=tmp_path, batch_size=6, image_size=32, tfds_data_dir=tmp_path,
                                   labeled_fraction=1e-9)
        _, y = next(iter(unlabeled.train))
        assert np.all(y.numpy() == -1)


def test_missing_archives_one_clear_sentence(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        imagenet.load(data_dir=manual, tfds_data_dir=tmp_path / "tfds")
    message = str(info.value)
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert str(manual) in message and "--data_dir" in message
    assert isinstance(info.value, FileNotFoundError)


def test_eval_preprocessing_resizes_shorter_side_and_center_crops():
    assert imagenet.eval_resize_size(224) == 256 and imagenet.eval_resize_size(32) == 37
    out = imagenet.preprocess_eval(_jpeg(60, 90, value=255), 32)
    assert out.shape == (32, 32, 3)
    np.testing.assert_allclose(out.numpy(), 1.0, atol=1e-6)
    # a left-dark / right-bright image: the central crop holds both halves
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, 40:] = 255
    out = imagenet.preprocess_eval(tf.io.encode_jpeg(pixels, quality=100), 32).numpy()
    assert out[:, :8].max() < -0.9 and out[:, -8:].min() > 0.9


def test_train_preprocessing_is_seeded():
    encoded = _jpeg(50, 70, seed=3)
    seed = tf.constant([5, 6], tf.int64)
    a = imagenet.preprocess_train(encoded, seed, 24).numpy()
    b = imagenet.preprocess_train(encoded, seed, 24).numpy()
    c = imagenet.preprocess_train(encoded, tf.constant([5, 7], tf.int64), 24).numpy()
    assert a.shape == (24, 24, 3) and a.min() >= -1 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
