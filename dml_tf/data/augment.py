"""Image augmentations of the paper's CIFAR recipe, as small pure functions.

Every random choice is made by a *stateless* TensorFlow op from an explicit
``seed`` (a shape-[2] integer tensor), so the same seed always gives the same
output, whatever ran before, on any device and in any ``tf.data`` map.
Images are single HWC tensors (float in [0, 1] or uint8).

Paper (Sec. 4.1, following WRN): "random crops from the image padded by 4 pixels
on each side, filling missing pixels with reflections of the original image" and
random horizontal flips.  ``reflect_pad_random_crop(image, pad=4, seed)`` is the
first, ``random_flip`` the second; ``reflect_pad_crop`` with explicit offsets is
the deterministic core that the tests compare with ``np.pad(mode="reflect")``.
"""

import tensorflow as tf


def split_seed(seed, num=2):
    """``num`` independent shape-[2] seeds derived from ``seed`` (stateless)."""
    return tf.random.experimental.stateless_split(tf.convert_to_tensor(seed), num)


def reflect_pad(image, pad):
    """Pads an HWC image by ``pad`` pixels on each side by reflection.

    Reflection without repeating the edge pixel (``tf.pad(mode="REFLECT")``, the
    same as ``np.pad(mode="reflect")``); needs ``pad < height`` and ``pad < width``.
    """
    return tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")


def crop_offsets(seed, pad):
    """The (top, left) crop offsets, each uniform in ``[0, 2 * pad]``, that
    :func:`reflect_pad_random_crop` uses for ``seed`` (int32, shape [2])."""
    return tf.random.stateless_uniform([2], seed=seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32)


def reflect_pad_crop(image, pad, offsets):
    """Reflect-pads ``image`` by ``pad`` and crops its original size at ``offsets``.

    ``offsets = (top, left)`` into the padded image, each in ``[0, 2 * pad]``;
    ``(pad, pad)`` gives back the image itself.
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    padded = reflect_pad(image, pad)
    offsets = tf.cast(offsets, tf.int32)
    cropped = tf.slice(padded, tf.stack([offsets[0], offsets[1], 0]), shape)
    return tf.ensure_shape(cropped, image.shape)


def reflect_pad_random_crop(image, pad, seed):
    """Random crop of the image's own size from the image reflect-padded by ``pad``.

    The offsets are :func:`crop_offsets` ``(seed, pad)``: each of the
    ``(2 * pad + 1) ** 2`` positions is equally likely.
    """
    return reflect_pad_crop(image, pad, crop_offsets(seed, pad))


def flip_decision(seed):
    """Whether :func:`random_flip` flips for ``seed`` (a scalar bool, p = 0.5)."""
    return tf.random.stateless_uniform([], seed=seed) < 0.5


def random_flip(image, seed):
    """Mirrors an HWC image left-right with probability 0.5 (decided by ``seed``)."""
    image = tf.convert_to_tensor(image)
    return tf.where(flip_decision(seed), tf.reverse(image, axis=[1]), image)


def standardize(image, mean, std):
    """``(image - mean) / std`` per channel (``mean``, ``std``: one value per channel)."""
    image = tf.convert_to_tensor(image, tf.float32)
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def unstandardize(image, mean, std):
    """The inverse of :func:`standardize`."""
    image = tf.convert_to_tensor(image, tf.float32)
    return image * tf.constant(std, tf.float32) + tf.constant(mean, tf.float32)


def cifar_train_augment(image, seed, pad=4, flip=True):
    """The paper's training augmentation: reflect-pad ``pad`` + random crop, then
    (if ``flip``) a random horizontal flip; one ``seed`` drives both."""
    crop_seed, flip_seed = tf.unstack(split_seed(seed, 2))
    image = reflect_pad_random_crop(image, pad, crop_seed)
    if flip:
        image = random_flip(image, flip_seed)
    return image
