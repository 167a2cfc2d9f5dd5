"""Digits (scikit-learn's bundled 8x8 handwritten digits): shapes, split, no flip."""

import numpy as np
import pytest
import tensorflow as tf

import dml_tf.data
from dml_tf.data import augment, digits


@pytest.fixture(scope="module")
def bundle():
    return digits.load(batch_size=128, seed=0)


def _collect(dataset):
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in dataset))
    return np.concatenate(xs), np.concatenate(ys)


def test_shapes_and_split_sizes(bundle):
    assert (bundle.name, bundle.num_classes, bundle.input_shape) == ("digits", 10, (32, 32, 3))
    assert bundle.train_size + bundle.test_size == 1797
    assert (bundle.train_size, bundle.test_size) == (1438, 359)
    x, y = next(iter(bundle.train))
    assert x.shape == (128, 32, 32, 3) and x.dtype == tf.float32 and y.dtype == tf.int32
    images, labels = _collect(bundle.test)
    assert images.shape == (359, 32, 32, 3) and set(labels.tolist()) == set(range(10))
    raw = images * bundle.extras["std"] + bundle.extras["mean"]  # back to [0, 1]
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    np.testing.assert_allclose(raw[..., 0], raw[..., 2], atol=1e-6)  # grey replicated to 3 channels


def test_split_is_stratified_fixed_and_independent_of_seed(bundle):
    from sklearn.datasets import load_digits

    target = load_digits().target
    train_idx, test_idx = digits.split_indices(target)
    assert len(np.intersect1d(train_idx, test_idx)) == 0 and len(train_idx) + len(test_idx) == 1797
    for c in range(10):
        n = (target == c).sum()
        assert (target[test_idx] == c).sum() == int(np.floor(0.2 * n + 0.5))
    np.testing.assert_array_equal(digits.split_indices(target)[1], test_idx)
    other = digits.load(batch_size=128, seed=5)
    for a, b in zip(_collect(bundle.test), _collect(other.test)):
        np.testing.assert_array_equal(a, b)
    # the test images are the sklearn images at test_idx, upscaled
    expected = digits.to_network_images(load_digits().images[test_idx[:5]])
    got = next(iter(bundle.test))[0].numpy()[:5] * bundle.extras["std"] + bundle.extras["mean"]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_training_augmentation_crops_but_never_flips():
    image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="reflect")
    offsets = set()
    for s in range(30):
        seed = tf.constant([s, 3], tf.int64)
        crop_seed = augment.split_seed(seed)[0]
        dy, dx = augment.crop_offsets(crop_seed, 4).numpy()
        offsets.add((dy, dx))
        np.testing.assert_array_equal(digits.train_augment(image, seed).numpy(), padded[dy : dy + 32, dx : dx + 32])
        # the CIFAR augmentation with the same seed does flip sometimes; digits never
    assert len(offsets) > 10
    flips = {bool(augment.flip_decision(augment.split_seed(tf.constant([s, 3], tf.int64))[1])) for s in range(30)}
    assert flips == {True, False}


def test_train_deterministic_and_labeled_fraction():
    a = dml_tf.data.load("digits", batch_size=256, seed=4, labeled_fraction=0.1)
    b = digits.load(batch_size=256, seed=4, labeled_fraction=0.1)
    xa, ya = next(iter(a.train))
    xb, yb = next(iter(b.train))
    np.testing.assert_array_equal(xa.numpy(), xb.numpy())
    np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    mask = a.extras["labeled_mask"]
    from sklearn.datasets import load_digits

    train_labels = load_digits().target[digits.split_indices(load_digits().target)[0]]
    for c in range(10):
        assert mask[train_labels == c].sum() == int(np.floor(0.1 * (train_labels == c).sum() + 0.5))
    assert a.labeled_size == mask.sum() < 160
    with pytest.raises(ValueError):
        digits.load(labeled_fraction=2)
    with pytest.raises(TypeError):
        digits.load(image_size=32)


def test_registry_knows_each_loaders_parameters():
    from dml_tf import data

    assert "name" not in data.parameters("cifar100")  # fixed by the registry
    assert {"data_dir", "labeled_fraction"} <= data.parameters("cifar100")
    assert "labeled_ids" in data.parameters("market1501")
    assert "labeled_ids" not in data.parameters("digits")
    with pytest.raises(TypeError, match="does not take labeled_ids"):
        data.load("digits", labeled_ids=5)
    with pytest.raises(ValueError, match="Unknown dataset 'mnist'"):
        data.parameters("mnist")
