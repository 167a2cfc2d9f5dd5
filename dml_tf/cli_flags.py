"""The command-line flags of every dml_tf program, defined in one module.

``python -m dml_tf.train`` / ``evaluate`` / ``compare`` and the tools call the
``define_*`` function of their flags (absl's ``flags.DEFINE_*``); ``dml_tf.cli`` runs
them and answers a bad flag in one line. The training flags are made from the
``TrainConfig`` fields (name, type, default, help text and choices: ``dml_tf.config``),
so a setting is declared once and checked once, by ``TrainConfig.check``, whichever way
it comes in.
"""

import collections.abc
import dataclasses
import sys
import typing

from absl import app, flags

from dml_tf import config as cfg

FLAGS = flags.FLAGS
KINDS = {str: "string", int: "integer", float: "float", bool: "boolean"}
# The training settings a sweep (tools/cohort_size.py, semi_supervised.py) can override.
SWEEP_SETTINGS = ("data_dir", "epochs", "steps_per_epoch", "batch_size", "learning_rate", "image_size",
                  "pretrained")


def define(kind, name, default, *args, flag_values=FLAGS, **kwargs):
    """``flags.DEFINE_{kind}(name, default, *args)`` unless ``name`` is already defined
    in this process (then the first definition is kept); returns whether it defined it.
    The flag is registered as the main program's, so its --help lists it."""
    if name in flag_values:
        return False
    kwargs.setdefault("module_name", sys.argv[0])
    getattr(flags, f"DEFINE_{kind}")(name, default, *args, flag_values=flag_values, **kwargs)
    return True


def flag_kind(field):
    """The absl flag type of a ``TrainConfig`` field, from its annotation:
    ``Sequence[...]`` -> list, else string / integer / float / boolean."""
    annotation = field.type
    if typing.get_origin(annotation) is typing.Union:  # Optional[X]
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is collections.abc.Sequence:
        return "list"
    return KINDS[annotation]


def define_setting(name, flag_values=FLAGS):
    """The flag of the ``TrainConfig`` field ``name``: its type, default and help (its
    choices first, ``<a|b>: ...``, as absl writes an enum's). Returns whether defined."""
    field = cfg.FIELDS[name]
    kind, default, meta = flag_kind(field), field.default, field.metadata
    if kind == "list" and default is not None:
        default = list(default)
    help_text = meta["help"]
    if meta["choices"]:
        help_text = f"<{'|'.join(meta['choices'])}>: {help_text}"
    return define(kind, name, default, help_text, flag_values=flag_values)


def define_train_flags(flag_values=FLAGS):
    """``python -m dml_tf.train``: one flag per ``TrainConfig`` field. Returns the names defined."""
    return [name for name in cfg.FIELDS if define_setting(name, flag_values)]


def config_from_flags():
    """A TrainConfig from the parsed training flags (checked when resolved)."""
    return cfg.TrainConfig(**{name: FLAGS[name].value for name in cfg.FIELDS})


def define_evaluate_flags():
    """``python -m dml_tf.evaluate``. Names already defined in the process (e.g. by
    ``dml_tf.train``: dataset, data_dir, model_dir, batch_size, image_size, verbose) are
    reused as they are. Returns the names defined."""
    defined = []

    def add(kind, name, default, *args):
        if define(kind, name, default, *args):
            defined.append(name)

    add("string", "dataset", "market1501", "Dataset to evaluate on; only market1501 (re-id) is supported.")
    add("string", "data_dir", None, "The unzipped Market-1501-v15.09.15 folder (default: the run's data_dir).")
    add("string", "model_dir", None, "The training run's folder (results.json, member_{k}.keras).")
    add("integer", "batch_size", 64, "Images per batch for feature extraction.")
    add("list", "image_size", None, "Network input height,width; default: the members' input shape.")
    add("enum", "mq_pool", "mean", ["mean", "max"], "Multi-query pooling over gt_bbox.")
    add("enum", "ap_mode", "market1501", ["market1501", "standard"], "AP: MATLAB kit trapezoid or non-interpolated.")
    add("enum", "metric", "euclidean", ["euclidean", "cosine"], "Distance used for ranking.")
    add("bool", "l2_normalize", True, "L2-normalize features before matching, as the Market-1501 MATLAB kit.")
    add("string", "output_dir", None, "Where to write eval.json, cmc.png and features; default --model_dir.")
    add("enum", "source", "auto", ["auto", "folders", "tfrecords"], "Market-1501 input: folders or TFRecords.")
    add("string", "tfrecord_dir", None, "TFRecords folder (default DATA_DIR/tfrecords).")
    add("integer", "verbose", 1, "Keras progress bar: 0 silent, 1 bar, 2 one line per split.")
    return defined


def define_compare_flags():
    """``python -m dml_tf.compare`` (the run folders are its arguments)."""
    define("string", "output_dir", None, "Where compare.json and compare.png go "
           "(default: the folder holding the first run).")


def define_sweep_flags():
    """The flags the training sweeps (cohort_size, semi_supervised) share: what to
    train on, where, and the training settings that override the dataset's defaults
    (``SWEEP_SETTINGS``, as ``python -m dml_tf.train`` has them)."""
    from dml_tf import analysis
    from dml_tf import nets as dml_nets

    define("string", "dataset", "digits", f"One of {', '.join(analysis.DATASETS)}.")
    define("string", "net", "resnet32", f"Network of every member, one of {', '.join(dml_nets.names())}.")
    define("string", "output_dir", None, "Sweep folder (one subfolder per run) and outputs.")
    for name in SWEEP_SETTINGS:
        define_setting(name)


def sweep_overrides(net, data_dir=None, epochs=None, steps_per_epoch=None, batch_size=None,
                    learning_rate=None, image_size=None, pretrained=None):
    """Checks the sweep flags of :func:`define_sweep_flags` (UsageError naming the flag, as
    ``TrainConfig`` words it) and returns the TrainConfig settings they override."""
    from dml_tf import nets as dml_nets

    if net not in dml_nets.names():
        raise app.UsageError(f"--net must be one of {dml_nets.names()}; got {net!r}.")
    overrides = dict(data_dir=data_dir, epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                     learning_rate=learning_rate, image_size=image_size, pretrained=pretrained)
    overrides = {key: value for key, value in overrides.items() if value is not None}
    try:
        if "image_size" in overrides:
            overrides["image_size"] = cfg.integers("image_size", overrides["image_size"])
        for name, value in overrides.items():
            cfg.check_setting(name, value)
    except cfg.ConfigError as e:
        raise app.UsageError(str(e)) from None
    return overrides
