"""Name -> builder registry behind ``dml_tf.nets.build`` and ``dml_tf.nets.names``."""

from dml_tf.nets import _common, keras_apps, pretrained as _pretrained

_BUILDERS = {}


def register(arch, builder, imagenet=None):
    """Registers ``builder(num_classes, input_shape, weight_decay, seed, name, **kwargs)`` as ``arch``.

    ``imagenet``: None (no ImageNet weights: ``pretrained="imagenet"`` is a ValueError) or a
    callable returning a local weights path (raising PretrainedWeightsError if it cannot).
    """
    if arch in _BUILDERS:
        raise ValueError(f"network {arch!r} is already registered")
    _BUILDERS[arch] = (builder, imagenet)


def has_imagenet(arch):
    """Whether ``pretrained="imagenet"`` has a source for network ``arch`` (every
    ``keras:NAME``; a registered network given an ``imagenet`` source)."""
    return keras_apps.is_application(arch) or (arch in _BUILDERS and _BUILDERS[arch][1] is not None)


def names():
    """Sorted names of the registered networks."""
    return sorted(_BUILDERS)


def build(
    arch,
    /,
    num_classes,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    seed=None,
    name=None,
    pretrained=None,
    input_standardisation=None,
    **kwargs,
):
    """Builds network ``arch``: a functional keras.Model from float32 NHWC images to logits.

    The re-id / analysis feature (output of the last global pooling) is the layer named
    ``features``; the classifier is the Dense layer ``logits``.

    Args:
      arch: a name from ``names()``, or ``keras:NAME`` for ``keras.applications.NAME``
        (:mod:`dml_tf.nets.keras_apps`).
      num_classes: number of logits (>= 1).
      input_shape: (height, width, channels).
      weight_decay: SGD weight-decay coefficient as in the paper / WRN (5e-4 on CIFAR) and
        TF-slim (4e-5): conv and dense kernels get ``keras.regularizers.L2(weight_decay / 2)``,
        i.e. a gradient of ``weight_decay * w``; 0 adds no regulariser.
      seed: None, or an int making the initial weights reproducible (per-layer derived
        seeds; no global random state is touched).
      name: the model's name (default ``arch``), e.g. "resnet32_1" inside a cohort.
      pretrained: None, "imagenet" (mobilenet: Keras' ImageNet weights; inception_v1: an
        error asking for a local file) or a path to a .weights.h5 / .h5 file, loaded by
        layer name into the backbone (see ``dml_tf.nets.pretrained``).
      input_standardisation: for a pretrained ``keras:NAME``, the per-channel ``(mean, std)``
        (of pixels / 255) the images it will be given are standardised with: it maps them
        back to pixels and applies the application's ``preprocess_input`` inside the model
        (None: the images come as RGB pixels 0-255). Other networks ignore it.
      **kwargs: architecture options (e.g. ``small_input``, ``dropout``; every network takes
        ``bn_momentum``, None for its own default).
    """
    if keras_apps.is_application(arch):
        if pretrained not in (None, "imagenet"):
            pretrained = _pretrained.check_path(pretrained)
        return keras_apps.build(arch, num_classes=num_classes, input_shape=input_shape,
                                weight_decay=weight_decay, seed=seed, name=name, pretrained=pretrained,
                                input_standardisation=input_standardisation, **kwargs)
    if not isinstance(arch, str) or arch not in _BUILDERS:
        raise ValueError(f"unknown network {arch!r}; known networks: {', '.join(names())}, or "
                         f"keras:NAME for a Keras application (keras:MobileNetV2, keras:ResNet50, ...)")
    builder, imagenet = _BUILDERS[arch]
    weights_path = None
    if pretrained is not None:
        if isinstance(pretrained, str) and pretrained == "imagenet":
            if imagenet is None:
                have = [n for n in names() if _BUILDERS[n][1] is not None]
                raise ValueError(
                    f"pretrained='imagenet' is not available for {arch!r} (only for {', '.join(have)}); "
                    "pass a path to a weights file instead"
                )
            num_classes, input_shape, _, _ = _common.check_args(num_classes, input_shape, weight_decay, seed)
            if input_shape[-1] != 3:
                raise ValueError(f"pretrained='imagenet' needs RGB images: input_shape must end in 3, got {input_shape}")
            weights_path = imagenet()
        else:
            weights_path = _pretrained.check_path(pretrained)
    model = builder(
        num_classes=num_classes,
        input_shape=input_shape,
        weight_decay=weight_decay,
        seed=seed,
        name=name or arch,
        **kwargs,
    )
    if weights_path is not None:
        _pretrained.load_backbone_weights(model, weights_path)
    return model
