"""Datasets by name: ``dml_tf.data.load("cifar100", data_dir=..., batch_size=64)``.

Each loader returns a :class:`DatasetBundle`. Modules are imported on first use, so
``tensorflow_datasets`` is only imported by the loaders that need it.
"""

import importlib
import inspect

from dml_tf.data.base import DatasetBundle, standardisation

# name -> (module, function, fixed keyword arguments)
_LOADERS = {
    "digits": ("dml_tf.data.digits", "load", {}),
    "cifar10": ("dml_tf.data.cifar", "load", {"name": "cifar10"}),
    "cifar100": ("dml_tf.data.cifar", "load", {"name": "cifar100"}),
    "imagenet2012": ("dml_tf.data.imagenet", "load", {}),
    "market1501": ("dml_tf.data.market1501", "load", {}),
    "folder": ("dml_tf.data.folder", "load", {}),
}


def names():
    """The dataset names ``load`` accepts, sorted."""
    return sorted(_LOADERS)


def _loader(name):
    if name not in _LOADERS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {names()}.")
    module, function, fixed = _LOADERS[name]
    return getattr(importlib.import_module(module), function), fixed


def _accepted(loader, fixed):
    return frozenset(inspect.signature(loader).parameters) - set(fixed)


def parameters(name):
    """The keyword arguments ``load(name, ...)`` accepts (its loader's parameters)."""
    return _accepted(*_loader(name))


def load(name, **kwargs):
    """Loads dataset ``name``; keyword arguments go to its loader.

    Common keywords: ``data_dir``, ``batch_size``, ``seed``, ``labeled_fraction``,
    ``image_size``.
    """
    loader, fixed = _loader(name)
    accepted = _accepted(loader, fixed)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(f"Dataset {name!r} does not take {', '.join(unknown)}; it takes "
                        f"{', '.join(sorted(accepted))}.")
    return loader(**fixed, **kwargs)


__all__ = ["DatasetBundle", "load", "names", "parameters", "standardisation"]
