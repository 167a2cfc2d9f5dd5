"""A trained run for serving and for phones: a TensorFlow SavedModel, TensorFlow Lite.

    deploy.saved_model(run_dir, "classifier")          # a folder; the ensemble
    deploy.tflite(run_dir, "member.tflite")             # the smallest member, float32
    deploy.tflite(run_dir, "member_int8.tflite", quantize="int8")

**SavedModel** (Keras' ``keras.export.ExportArchive``): the self-contained classifier of
:mod:`dml_tf.export` (the ensemble, or ``member``) behind a serving signature that takes
raw RGB images, ``images``: uint8 ``(batch, height, width, 3)`` of any one size
(resized inside), and returns ``probabilities`` (float32 ``(batch, classes)``, in the
order of the run's class names), ``class_index`` (int32 ``(batch,)``, the most probable
class) and ``class_name`` (string ``(batch,)``, its name). Its ``class_names()`` endpoint
returns every class name. Serve it with TensorFlow Serving, or anywhere::

    model = tf.saved_model.load("classifier")
    out = model.signatures["serving_default"](images=tf.constant(uint8_images))

**TensorFlow Lite** (Keras' ``model.export(format="litert")``, TensorFlow's converter):
one member (default: the smallest by parameter count, the compact network that is the
paper's point for phones), taking images of its input size, ``(batch, H, W, 3)``, with
the run's standardisation inside and TFLite's built-in operators only. float32: pixels
0-255 as float32 in, probabilities out. ``quantize="int8"``: full-integer quantisation
(weights and activations int8, every operator integer), calibrated on the first
``REPRESENTATIVE_IMAGES`` training images of the run's seeded shuffle (with its
augmentation); its input is uint8 pixels and its output uint8 probabilities, each with
the tensor's quantisation scale and zero point (the input's is 1.0 and 0 when the
calibration images span 0-255).
"""

import os
import re

import numpy as np
import tensorflow as tf

from dml_tf import export, run_dir
from dml_tf.io_utils import atomic_output

REPRESENTATIVE_IMAGES = 256
QUANTIZE = ("int8",)


def class_names(results):
    """The run's class names (``results.json``), or the class indices as strings."""
    return (results.get("dataset") or {}).get("class_names") or \
        [str(i) for i in range(results["dataset"]["num_classes"])]


def smallest_member(model_dir):
    """The index of the run's member with the fewest parameters (the first of equals)."""
    _, entries = run_dir.read_run(model_dir)
    sizes = [run_dir.load_member(m["path"]).count_params() for m in entries]
    return int(np.argmin(sizes))


def check_saved_model_folder(path):
    """ValueError unless ``path`` is new, an empty folder or an earlier SavedModel (which an
    export replaces): never a run folder or other files."""
    if os.path.exists(path) and not (os.path.isdir(path) and (
            not os.listdir(path) or os.path.isfile(os.path.join(path, "saved_model.pb")))):
        raise ValueError(f"{path} exists and is not a SavedModel folder: choose a new folder to export to.")


def saved_model(model_dir, path, member=None):
    """Writes the run (the ensemble, or ``member``) to the folder ``path`` as a SavedModel
    with the serving signature of the module docstring; returns the Keras classifier."""
    import keras

    check_saved_model_folder(path)
    results = run_dir.read_results(model_dir)
    model = export.classifier(model_dir, member=member)
    names = tf.constant(class_names(results))
    channels = model.input.shape[-1]

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, channels), tf.uint8, name="images")])
    def serve(images):
        probabilities = model(tf.cast(images, tf.float32), training=False)
        index = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "class_index": index, "class_name": tf.gather(names, index)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve)  # the first endpoint: also "serving_default"
    archive.add_endpoint("class_names", tf.function(lambda: {"class_names": names}, input_signature=[]))
    atomic_output(path, lambda tmp: archive.write_out(tmp, verbose=False))
    return model


def representative_images(model_dir, count=REPRESENTATIVE_IMAGES):
    """float32 pixels 0-255, ``(count or fewer, H, W, C)``: the first training images of the
    run's seeded shuffle, as its pipeline makes them, un-standardised."""
    from dml_tf import config as cfg
    from dml_tf import runner

    results = run_dir.read_results(model_dir)
    _, mean, std = export.preprocessing(results)
    bundle = runner.load_data(cfg.TrainConfig(**results["config"]).resolved())
    batches, taken = [], 0
    for x, _ in bundle.train:
        batches.append(x.numpy())
        taken += len(batches[-1])
        if taken >= count:
            break
    images = np.concatenate(batches)[:count]
    return np.clip((images * std + mean) * 255.0, 0.0, 255.0).astype(np.float32)


def tflite(model_dir, path, member=None, quantize=None):
    """Writes member ``member`` (default :func:`smallest_member`) of the run to ``path``
    (.tflite), float32 or with ``quantize="int8"`` full-integer (module docstring).
    Returns ``(member index, bytes written)``."""
    if not path.endswith(".tflite"):
        raise ValueError(f"a TensorFlow Lite model is a .tflite file; got {path}.")
    if quantize not in (None,) + QUANTIZE:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE)}; got {quantize!r}.")
    member = smallest_member(model_dir) if member is None else member
    model = export.classifier(model_dir, member=member, any_size=False)
    options = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantize == "int8":
        images = representative_images(model_dir)
        options = {"optimizations": [tf.lite.Optimize.DEFAULT],
                   "representative_dataset": lambda: ([image[None]] for image in images),
                   "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
                   "inference_input_type": tf.uint8, "inference_output_type": tf.uint8}
    signature = [tf.TensorSpec((None,) + tuple(model.input.shape[1:]), tf.float32, name="images")]
    atomic_output(path, lambda tmp: model.export(tmp, format="litert", input_signature=signature,
                                                 verbose=False, **options))
    return member, os.path.getsize(path)


def is_saved_model_path(path):
    """Whether ``--export=path`` names a SavedModel folder: no file extension (letters)."""
    return not re.search(r"\.[A-Za-z]\w{0,5}$", os.path.basename(os.path.normpath(path)))
