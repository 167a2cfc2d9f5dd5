"""Initialising a built network's backbone from a weights file, matching layers by name.

Accepted files: Keras 3 ``.weights.h5`` (``model.save_weights``) and legacy Keras HDF5
``.h5`` / ``.hdf5`` weight files such as the ``keras.applications`` downloads. Every
weighted layer of the backbone (everything up to the ``features`` layer; never
``logits``) whose name and weight shapes match an entry of the file is loaded; the
rest keep their initialisation and are reported in a warning (by_name /
skip_mismatch semantics). A file that matches no layer at all is an error.
"""

import os
import warnings

import keras
import numpy as np

from dml_tf.errors import DMLError

MOBILENET_IMAGENET_FILE = "mobilenet_1_0_224_tf_no_top.h5"
MOBILENET_IMAGENET_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/" + MOBILENET_IMAGENET_FILE
)


class PretrainedWeightsError(DMLError, OSError):
    """Pretrained weights could not be obtained or did not fit the network."""


def check_path(path):
    """Validates a weights-file path before anything is built; returns it as str."""
    try:
        path = os.fspath(path)
    except TypeError:
        path = None
    if not isinstance(path, str) or not path.endswith((".h5", ".hdf5")):
        raise ValueError(
            f"pretrained must be None, 'imagenet' or a path to a .weights.h5 / .h5 weights file, got {path!r}"
        )
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"pretrained weights file not found: {path!r}")
    return path


def mobilenet_imagenet_path():
    """Returns the local path of Keras' MobileNet ImageNet weights, downloading them if needed."""
    try:
        return keras.utils.get_file(MOBILENET_IMAGENET_FILE, MOBILENET_IMAGENET_URL, cache_subdir="models")
    except Exception as e:  # no network, proxy, HTTP or checksum errors
        raise PretrainedWeightsError(
            f"could not download the ImageNet weights for mobilenet ({type(e).__name__}: {e}). "
            f"Download {MOBILENET_IMAGENET_URL} on a machine with internet access and pass "
            f"pretrained='/path/to/{MOBILENET_IMAGENET_FILE}' (or put the file in ~/.keras/models/)."
        ) from e


def _decode(s):
    return s.decode("utf8") if isinstance(s, bytes) else str(s)


def _read_weights_by_name(path):
    """Returns {layer name: [arrays]} from a Keras 3 .weights.h5 or a legacy .h5 weights file."""
    import h5py

    index = {}
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise PretrainedWeightsError(f"cannot read {path!r} as an HDF5 weights file: {e}") from e
    with f:
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in group.attrs:  # legacy Keras HDF5 (keras.applications files)
            for layer_name in group.attrs["layer_names"]:
                layer_group = group[_decode(layer_name)]
                names = [_decode(n) for n in layer_group.attrs.get("weight_names", [])]
                index[_decode(layer_name)] = [np.asarray(layer_group[n]) for n in names]
        elif "layers" in f or "vars" in f:  # Keras 3 .weights.h5: ".../vars" groups named after layers
            def visit(group_path, obj):
                if group_path.endswith("vars") and isinstance(obj, h5py.Group) and "name" in obj.attrs:
                    values = [np.asarray(obj[str(i)]) for i in range(len(obj))]
                    if values:
                        index.setdefault(_decode(obj.attrs["name"]), values)

            f.visititems(visit)
        else:
            raise PretrainedWeightsError(f"{path!r} is not a Keras .weights.h5 or legacy .h5 weights file")
    return index


def load_backbone_weights(model, path):
    """Loads weights by layer name from ``path`` into ``model``'s backbone (up to ``features``).

    Returns ``{"loaded": [...], "skipped": [...]}`` (layer names); warns about skipped
    layers; raises PretrainedWeightsError when no layer matches.
    """
    index = _read_weights_by_name(path)
    backbone = keras.Model(model.input, model.get_layer("features").output)
    loaded, skipped = [], []
    for layer in backbone.layers:
        variables = layer.weights
        if not variables:
            continue
        values = index.get(layer.name)
        if values is None or len(values) != len(variables) or any(
            tuple(v.shape) != tuple(a.shape) for v, a in zip(variables, values)
        ):
            skipped.append(layer.name)
            continue
        for v, a in zip(variables, values):
            v.assign(a.astype(v.dtype))
        loaded.append(layer.name)
    if not loaded:
        raise PretrainedWeightsError(
            f"no layer of {model.name!r} matches a layer (name and shapes) in {path!r}; "
            f"the file's layers include {sorted(index)[:5]}"
        )
    if skipped:
        warnings.warn(
            f"{model.name}: {len(skipped)} of {len(loaded) + len(skipped)} weighted backbone layers "
            f"not found (or of another shape) in {path!r} and left at their initialisation: "
            f"{', '.join(skipped[:10])}{' ...' if len(skipped) > 10 else ''}",
            stacklevel=2,
        )
    return {"loaded": loaded, "skipped": skipped}
