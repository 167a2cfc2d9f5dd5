"""Datasets by name: ``dml_tf.data.load("cifar100", data_dir=..., batch_size=64)``.

Each loader returns a :class:`DatasetBundle`. Modules are imported on first use, so
``tensorflow_datasets`` is only imported by the loaders that need it.
"""

import importlib

from dml_tf.data.base import DatasetBundle

# name -> (module, function, fixed keyword arguments)
_LOADERS = {
    "digits": ("dml_tf.data.digits", "load", {}),
    "cifar10": ("dml_tf.data.cifar", "load", {"name": "cifar10"}),
    "cifar100": ("dml_tf.data.cifar", "load", {"name": "cifar100"}),
    "imagenet2012": ("dml_tf.data.imagenet", "load", {}),
    "market1501": ("dml_tf.data.market1501", "load", {}),
}


def names():
    """The dataset names ``load`` accepts, sorted."""
    return sorted(_LOADERS)


def load(name, **kwargs):
    """Loads dataset ``name``; keyword arguments go to its loader.

    Common keywords: ``data_dir``, ``batch_size``, ``seed``, ``labeled_fraction``,
    ``image_size``.
    """
    if name not in _LOADERS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {names()}.")
    module, function, fixed = _LOADERS[name]
    loader = getattr(importlib.import_module(module), function)
    return loader(**fixed, **kwargs)


__all__ = ["DatasetBundle", "load", "names"]
