"""Market-1501 image preprocessing, as the original re-id implementation's two steps.

Its TFRecord conversion resizes every image to 160x64 (``scipy.misc.imresize``: PIL's
bilinear, rounded to uint8; here ``tf.image.resize(antialias=True)``, within one grey
level of PIL), and training converts to float in [0, 1], resizes that to the network
input with TF1's ``tf.image.resize_images`` (bilinear, no half-pixel centres; 224x224
by default, the MobileNet / Inception v1 size), flips left-right at random (training
only) and scales to [-1, 1]. Images read from the folders take the same first step, so
both sources give the same pixels.
"""

import tensorflow as tf

DEFAULT_IMAGE_SIZE = (224, 224)
STORED_SIZE = (160, 64)  # the original conversion's image size (height, width)


def parse_image_size(image_size):
    """``None`` -> (224, 224); ``"256,128"`` / ``(256, 128)`` -> ``(256, 128)``."""
    if image_size is None:
        return DEFAULT_IMAGE_SIZE
    if isinstance(image_size, str):
        image_size = [s for s in image_size.replace("x", ",").split(",") if s.strip()]
    try:
        size = tuple(int(s) for s in image_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be two positive integers (height, width); got {image_size!r}.")
    return size


def stored_image(image):
    """uint8 (h, w, 3) -> uint8 (160, 64, 3), the original TFRecord conversion's resize
    (PIL bilinear, antialiased when shrinking, rounded); the identity at 160x64."""
    resized = tf.image.resize(image, STORED_SIZE, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def decode_stored(encoded):
    """JPEG or PNG bytes -> the uint8 160x64 :func:`stored_image`."""
    return stored_image(tf.io.decode_image(encoded, channels=3, expand_animations=False))


def preprocess(encoded, image_size, flip=None):
    """JPEG or PNG bytes -> float32 (H, W, 3) in [-1, 1], as the original re-id preprocessing.

    Decode, resize to the stored 160x64 (:func:`stored_image`), convert to [0, 1], resize
    to ``image_size`` as TF1's ``tf.image.resize_images`` (bilinear, no half-pixel
    centres), flip left-right where the boolean tensor ``flip`` is true, scale to [-1, 1].
    """
    image = tf.image.convert_image_dtype(decode_stored(encoded), tf.float32)
    image = tf.compat.v1.image.resize_images(image, image_size, method=tf.compat.v1.image.ResizeMethod.BILINEAR)
    if flip is not None:
        image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    image = (image - 0.5) * 2.0
    image.set_shape((image_size[0], image_size[1], 3))
    return image
