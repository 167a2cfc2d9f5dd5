"""Re-id features: the output of a member's layer named ``features`` (global pooling)."""

import numpy as np

FEATURE_LAYER = "features"


def feature_model(model, layer_name=FEATURE_LAYER):
    """A ``keras.Model`` from ``model``'s input to its layer ``layer_name``'s output."""
    import keras

    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        raise ValueError(
            f"Model {model.name!r} has no layer named {layer_name!r}; re-id features are read "
            "from the global-pooling layer, which dml_tf.nets names 'features'."
        ) from None
    return keras.Model(model.inputs, layer.output, name=f"{model.name}_{layer_name}")


def extract_features(model, dataset, verbose=1, layer_name=FEATURE_LAYER):
    """Runs ``dataset`` through ``model`` up to layer ``layer_name``.

    Args:
      model: a functional ``keras.Model`` with a layer named ``features`` (or one that
        ends there, as :func:`feature_model` builds: pass that to reuse it over splits).
      dataset: a batched ``tf.data.Dataset`` of images, or of ``(images, ...)``
        tuples (the rest is ignored), in the order the features should come out.
      verbose: Keras progress bar (1), one line per call (2) or silent (0).

    Returns:
      ``(N, D)`` float32 array, one row per image (pooled maps flattened to ``D``).
    """
    if model.layers and model.layers[-1].name == layer_name and len(model.outputs) == 1:
        extractor = model  # already a feature model (e.g. from feature_model): reuse its predict function
    else:
        extractor = feature_model(model, layer_name)
    features = extractor.predict(dataset, verbose=verbose)
    features = np.asarray(features, dtype=np.float32)
    return features.reshape(len(features), -1)
