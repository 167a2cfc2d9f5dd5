"""A trained run as one self-contained Keras model: raw images in, class probabilities out.

    model = export.classifier(run_dir)            # the ensemble (mean of the members' probabilities)
    model = export.classifier(run_dir, member=1)  # one member
    model.save("classifier.keras")
    # anywhere, without dml_tf:  keras.models.load_model("classifier.keras").predict(images)

The model takes a batch of RGB images of any one size with pixel values 0-255 (uint8 or
float), and does inside what the run's pipeline did before its members: ``Resizing`` to
the members' input size (bilinear), ``Rescaling`` by 1/255 and ``Normalization`` with the
training images' per-channel mean and variance (recorded in results.json). Only Keras'
own layers are used: the option-A ResNet shortcut (``dml_tf.nets.resnet.ZeroPadShortcut``)
is rebuilt from pooling, permutation and zero padding, which compute the same values, and
the fused batch norm (``dml_tf.nets.batch_norm``) becomes Keras' own, so
``keras.models.load_model`` needs no dml_tf import.
"""

import keras
import numpy as np

from dml_tf import run_dir
from dml_tf.errors import RunFileError
from dml_tf.nets import _common, batch_norm
from dml_tf.nets.resnet import ZeroPadShortcut


def _shortcut_from_keras_layers(layer):
    """Keras layers computing ``ZeroPadShortcut``: subsample by the stride, zero-pad channels."""
    steps = []
    if layer.strides > 1:
        steps.append(keras.layers.MaxPooling2D(pool_size=1, strides=layer.strides))
    extra = layer.filters - layer.input.shape[-1]
    if extra > 0:  # channels become a spatial axis to be padded, then come back
        steps += [keras.layers.Permute((3, 1, 2)),
                  keras.layers.ZeroPadding2D(((extra // 2, extra - extra // 2), (0, 0))),
                  keras.layers.Permute((2, 3, 1))]
    return keras.Sequential(steps or [keras.layers.Identity()], name=layer.name)


def portable(member):
    """A copy of ``member`` (same weights, same outputs) made of Keras' own layers only."""
    if not any(isinstance(layer, (ZeroPadShortcut, batch_norm.BatchNormalization))
               for layer in all_layers(member)):
        return member

    def replace(layer):
        if isinstance(layer, ZeroPadShortcut):
            return _shortcut_from_keras_layers(layer)
        if isinstance(layer, batch_norm.BatchNormalization):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return None

    return _common.rebuild(member, replace)


def all_layers(model):
    """Every layer of ``model``, those of nested models included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


def preprocessing(results):
    """``(input_shape, mean, std)`` of a finished run, from its results.json; RunFileError
    when the run does not record them (a run of an older dml_tf, or a dataset with its own
    preprocessing such as Market-1501)."""
    recorded = results.get("preprocessing")
    if not recorded or recorded.get("mean") is None:
        raise RunFileError(
            f"{results['config'].get('model_dir')}: results.json records no input standardisation "
            "(trained by an older dml_tf, or on a dataset with its own preprocessing): retrain the run "
            "with this version to export or predict with it.")
    return tuple(recorded["input_shape"]), np.asarray(recorded["mean"]), np.asarray(recorded["std"])


def classifier(model_dir, member=None, all_outputs=False, any_size=True):
    """The run in ``model_dir`` as one Keras model from raw images to probabilities: the
    ensemble (``member=None``), member ``member``, or with ``all_outputs`` a list
    ``[ensemble, member 0, member 1, ...]``. ``any_size=False``: images of the members'
    input size only, no ``Resizing`` (TensorFlow Lite)."""
    results, entries = run_dir.read_run(model_dir)
    shape, mean, std = preprocessing(results)
    members = [portable(run_dir.load_member(m["path"])) for m in entries]
    if member is not None and not 0 <= member < len(members):
        raise ValueError(f"member must be in [0, {len(members)}); the run has {len(members)} members.")
    images = keras.Input(shape=(None, None, shape[-1]) if any_size else shape, name="images")
    x = keras.layers.Resizing(shape[0], shape[1], interpolation="bilinear", name="resize")(images) \
        if any_size else images
    x = keras.layers.Rescaling(1.0 / 255, name="to_unit_range")(x)
    x = keras.layers.Normalization(mean=mean.tolist(), variance=(std ** 2).tolist(), name="standardize")(x)
    probs = [keras.layers.Softmax(name=f"probabilities_{k}")(m(x)) for k, m in enumerate(members)]
    ensemble = probs[0] if len(probs) == 1 else keras.layers.Average(name="ensemble")(probs)
    if all_outputs:
        return keras.Model(images, [ensemble] + probs, name="dml_cohort")
    if member is not None:
        return keras.Model(images, probs[member], name=f"dml_member_{member}")
    return keras.Model(images, ensemble, name="dml_ensemble")
