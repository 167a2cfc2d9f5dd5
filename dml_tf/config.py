"""Training configuration: every setting of a run, declared once, resolved and checked.

A ``TrainConfig`` holds every setting of one run. Each field carries its help text, its
choices or range and, when it has one, the value it falls back to when the dataset sets
none (``dataclasses.field(metadata=...)``, see :func:`setting`): ``dml_tf.cli_flags``
makes the absl flags of ``python -m dml_tf.train`` from them, and :meth:`TrainConfig.check`
validates with them. Library users build a ``TrainConfig`` directly and call
``dml_tf.runner.run(config)``. Fields left ``None`` take the dataset's default from
``dml_tf.paper.DATASET_DEFAULTS`` (the paper's settings, Sec. 4.1).
"""

import dataclasses
import math
from typing import Optional, Sequence

from dml_tf import nets as dml_nets
from dml_tf.nets import keras_apps
from dml_tf.cohort import MEMBER_BATCHES, UPDATES
from dml_tf.losses import MIMICRY_MODES, PEER_REDUCTIONS
from dml_tf.paper import DATASET_DEFAULTS
from dml_tf.placement import PLACEMENTS

MODES = ("dml", "independent", "distill")
OPTIMIZERS = ("sgd", "adam", "rmsprop")
LR_SCHEDULES = ("constant", "step", "exponential")
SEMI = ("all", "labeled")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


class ConfigError(ValueError):
    """A setting is out of range or inconsistent with the others."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The values from ``low`` to ``high`` (None: unbounded); ``closed`` says which ends belong."""

    low: float
    high: Optional[float] = None
    closed: str = "[)"

    def __contains__(self, value):
        above = value >= self.low if self.closed[0] == "[" else value > self.low
        below = self.high is None or (value <= self.high if self.closed[1] == "]" else value < self.high)
        return above and below

    def __str__(self):
        if self.high is None:
            return "positive" if (self.low, self.closed[0]) == (0, "(") else f">= {self.low}"
        return f"in {self.closed[0]}{self.low}, {self.high}{self.closed[1]}"


POSITIVE = Range(0, closed="()")
NON_NEGATIVE = Range(0)
UNIT = Range(0, 1, "[)")  # [0, 1): decays, momenta, smoothing
FRACTION = Range(0, 1, "(]")  # (0, 1]


def setting(default, help, choices=None, range=None, fallback=None, aliases=None, run_only=False):
    """A ``TrainConfig`` field: its ``default``, the ``help`` of its flag, the allowed
    ``choices`` or ``range`` (checked unless the value is None), the ``fallback`` a
    ``None`` takes when the dataset sets none, old spellings (``aliases``: old -> new)
    and ``run_only``: it says where and how a run executes, not what it computes (a run
    resumed with another value continues the same training)."""
    return dataclasses.field(default=default, metadata=dict(
        help=help, choices=choices, range=range, fallback=fallback, aliases=aliases or {},
        run_only=run_only))


@dataclasses.dataclass
class TrainConfig:
    dataset: str = setting("digits", "One of " + ", ".join(sorted(DATASET_DEFAULTS)) +
                           "; digits is embedded (scikit-learn's, no download).")
    nets: Sequence[str] = setting(("resnet32", "resnet32"), "Comma list of networks, each one of "
                                  + ", ".join(dml_nets.names()) + ", or keras:NAME (a Keras "
                                  "application, e.g. keras:MobileNetV2); K = its length.")
    model_dir: str = setting("runs/default", "Output folder (checkpoints, logs, results).", run_only=True)
    data_dir: Optional[str] = setting(None, "Local copy of the dataset (archives or folders).",
                                      run_only=True)
    mode: str = setting("dml", "dml; independent (same nets and data order, no mimicry); distill "
                        "(last net learns from the frozen earlier ones, --teacher).", choices=MODES)
    teacher: Sequence[str] = setting((), "Saved teacher member files (.keras), one per teacher net.")
    update: str = setting("sequential", "Algorithm 1 (sequential) or the distributed variant of "
                          "Sec. 4.5.", choices=UPDATES)
    member_batches: str = setting(
        "shared", "shared: every member trains on the same mini-batch (the paper); separate: each "
        "on its own --batch_size images, one after the other (the original code's one train op "
        "per network); an epoch is then 1/K the steps.", choices=MEMBER_BATCHES)
    mimicry: str = setting("kl", "kl (Eq. 10), js (Eq. 7) or ensemble (DML_e, Eq. 11).",
                           choices=MIMICRY_MODES)
    mimicry_weight: float = setting(1.0, "Weight of the mimicry term.", range=NON_NEGATIVE)
    peer_reduction: str = setting("mean", "mean: 1/(K-1) as Eq. 10; sum: the original code.",
                                  choices=PEER_REDUCTIONS)
    mimicry_warmup_epochs: float = setting(
        0.0, "Raise the mimicry weight linearly from 0 to --mimicry_weight over this many "
        "epochs (as ONE, Lan et al. 2018, advise for online distillation); 0: the paper, "
        "full weight from the first step.", range=NON_NEGATIVE)
    entropy_weight: float = setting(0.0, "Confidence penalty (Table 5 'Independent, Entropy').",
                                    range=NON_NEGATIVE)
    feature_l2_weight: float = setting(0.0, "L2 between members' features (Table 5 'DML, L2').",
                                       range=NON_NEGATIVE)
    label_smoothing: Optional[float] = setting(None, "Label smoothing (dataset default).", range=UNIT)
    weight_decay: Optional[float] = setting(None, "L2 weight decay (dataset default).", range=NON_NEGATIVE)
    epochs: Optional[int] = setting(None, "Training epochs (dataset default).", range=POSITIVE)
    steps_per_epoch: Optional[int] = setting(None, "Steps per epoch (default: one pass).", range=POSITIVE)
    batch_size: Optional[int] = setting(None, "Global batch size (dataset default).", range=POSITIVE)
    seed: int = setting(0, "Seed of data order, augmentation and initialization.")
    optimizer: Optional[str] = setting(None, "Optimizer (dataset default).", choices=OPTIMIZERS)
    learning_rate: Optional[float] = setting(None, "Initial learning rate (dataset default).",
                                             range=POSITIVE)
    momentum: Optional[float] = setting(None, "SGD momentum.", fallback=0.9)
    nesterov: Optional[bool] = setting(None, "SGD Nesterov momentum.", fallback=False)
    beta1: Optional[float] = setting(None, "Adam beta1.", fallback=0.9)
    beta2: Optional[float] = setting(None, "Adam beta2.", fallback=0.999)
    adam_epsilon: Optional[float] = setting(None, "Adam epsilon.", fallback=1e-7)
    rmsprop_decay: Optional[float] = setting(None, "RMSProp decay (rho).", fallback=0.9)
    rmsprop_momentum: Optional[float] = setting(None, "RMSProp momentum (default 0.9, TF-slim's).",
                                                range=UNIT, fallback=0.9)
    rmsprop_epsilon: Optional[float] = setting(None, "RMSProp epsilon, inside the square root as "
                                               "in TF1 (default 1.0, TF-slim's opt_epsilon).",
                                               range=POSITIVE, fallback=1.0)
    lr_schedule: Optional[str] = setting(None, "constant; step (x lr_decay_rate at lr_decay_epochs); "
                                         "exponential (x lr_decay_rate every lr_decay_every epochs).",
                                         choices=LR_SCHEDULES)
    lr_decay_epochs: Optional[Sequence[int]] = setting(None, "Epochs at which a step schedule decays.",
                                                       range=POSITIVE, fallback=())
    lr_decay_rate: Optional[float] = setting(None, "Decay factor of the schedule.", fallback=0.1)
    lr_decay_every: Optional[int] = setting(None, "Epochs between exponential decays.",
                                            range=POSITIVE, fallback=1)
    warmup_epochs: Optional[float] = setting(
        None, "Linear learning-rate warm-up over this many epochs, DML and independent alike "
        '(dataset default; 0: the paper\'s exact schedule; see the README, "Training stability").',
        range=NON_NEGATIVE, fallback=0.0)
    ema_decay: Optional[float] = setting(
        None, "Decay of the weight moving average that replaces the weights at the end (0: off; "
        "dataset default: 0.9999 for Market-1501, as the original code, else 0).",
        range=UNIT, fallback=0.0)
    ema_batch_norm: bool = setting(True, "With --ema_decay, average the batch-norm moving statistics "
                                   "too, as the original code (all model variables); False: the "
                                   "trainable weights only, as Keras.")
    image_size: Optional[Sequence[int]] = setting(None, "H,W network input (Market-1501, ImageNet; "
                                                  "folder: every image resized to it).",
                                                  range=POSITIVE)
    pretrained: Optional[str] = setting(None, "'imagenet' (Keras' ImageNet weights for every member "
                                        "that has them: keras:NAME, mobilenet; the others from "
                                        "scratch) or a weights file for the members.")
    bn_momentum: Optional[float] = setting(None, "Batch-norm momentum (= TF-slim decay) of every "
                                           "member; default each net's own: 0.9997 for mobilenet / "
                                           "inception_v1 (TF-slim), 0.9 else.", range=UNIT)
    train_per_class: Optional[int] = setting(
        None, "Train on this many images of each class only: a stratified subset drawn by "
        "--seed (CIFAR, digits, folder); default all.", range=POSITIVE)
    validation_split: Optional[float] = setting(
        None, "--dataset=folder without train/ and test/: the share of each class held out "
        "for testing (dataset default 0.2; split by a fixed seed).", range=Range(0, 1, "()"))
    augment: str = setting("auto", "--dataset=folder training augmentation: pad_crop (reflect-pad, "
                           "random crop, flip), resized_crop (random resized crop, flip), none; auto: "
                           "pad_crop up to 64 pixels, resized_crop above.",
                           choices=("auto", "pad_crop", "resized_crop", "none"))
    cache: str = setting("auto", "--dataset=folder: keep the decoded images in memory, in a folder "
                         "(DIR: raw files, reused by later runs of the same files), or none (decode "
                         "every epoch); auto: memory when they take under 1 GiB, else none. Changes no "
                         "number.", run_only=True)
    labeled_fraction: float = setting(1.0, "Fraction of training images labeled (CIFAR).", range=FRACTION)
    labeled_ids: Optional[int] = setting(None, "Labeled identities (Market-1501).", range=POSITIVE)
    semi: str = setting("all", "all: mimicry on all data (DML-all); labeled: labeled data only "
                        "(DML-labeled; 'labelled' is accepted too).", choices=SEMI,
                        aliases={"labelled": "labeled"})
    strategy: str = setting("default", "tf.distribute strategy.", choices=STRATEGIES, run_only=True)
    jit_compile: bool = setting(False, "Compile the train step with XLA.", run_only=True)
    placement: str = setting("none", "none, or per_member: member k on device k mod N (Sec. 4.5).",
                             choices=PLACEMENTS, run_only=True)
    mixed_precision: str = setting("float32", "Keras dtype policy.", choices=PRECISIONS)
    validation_freq: int = setting(
        1, "Evaluate on the test split every this many epochs (Keras fit's validation_freq; "
        "the final evaluation always runs).", range=POSITIVE, run_only=True)
    overwrite: bool = setting(False, "Start afresh in --model_dir: replace a finished run and "
                              "discard the checkpoint of an interrupted one (every file a run "
                              "writes there is removed; other files are kept).", run_only=True)
    new_optimizer_settings: bool = setting(
        False, "Resume the checkpoint in --model_dir although its optimizer settings (learning "
        "rate, schedule, warm-up, momentum, betas, epsilons) differ from this command's, e.g. "
        "after a divergence, from the last finite epoch with a lower --learning_rate; the "
        "optimizer's state (steps, slots) is kept, every other setting must match, and "
        "results.json records the change (optimizer_changes).", run_only=True)
    verbose: Optional[int] = setting(None, "Default: a table per epoch, a row per member (and a step "
                                     "counter on a terminal); 0: silent; 1 / 2: Keras' progress "
                                     "bar / line of every metric.", run_only=True)

    def resolved(self):
        """A copy with the dataset defaults filled in, checked; raises ConfigError."""
        if self.dataset not in DATASET_DEFAULTS:
            raise ConfigError(
                f"Unknown dataset {self.dataset!r}; expected one of {sorted(DATASET_DEFAULTS)}."
            )
        defaults = dict(GENERIC_DEFAULTS, **DATASET_DEFAULTS[self.dataset])
        values = dataclasses.asdict(self)
        for key, default in defaults.items():
            if values.get(key) is None:
                values[key] = default
        for name, value in values.items():
            values[name] = current_spelling(name, value)
        config = TrainConfig(**values)
        config.nets = tuple(config.nets)
        config.teacher = tuple(config.teacher or ())
        config.lr_decay_epochs = integers("lr_decay_epochs", config.lr_decay_epochs)
        if config.image_size is not None:
            config.image_size = integers("image_size", config.image_size)
        config.check()
        return config

    def check(self):
        """Raises ConfigError naming the first setting out of its choices or range, or
        inconsistent with the others."""
        def need(condition, message):
            if not condition:
                raise ConfigError(message)

        need(len(self.nets) >= 1 and all(self.nets), "--nets must name at least one network.")
        for net in self.nets:
            if keras_apps.is_application(net):
                try:
                    keras_apps.check(net)
                except ValueError as e:
                    raise ConfigError(f"--nets: {e}.") from None
            else:
                need(net in dml_nets.names(), f"--nets: unknown network {net!r}; expected one of "
                     f"{', '.join(dml_nets.names())}, or keras:NAME (a Keras application).")
        for name, value in dataclasses.asdict(self).items():
            check_setting(name, value)
        need(self.member_batches == "shared" or self.mode != "distill",
             "--member_batches=separate cannot be used with --mode=distill (a static teacher "
             "takes no batch of its own).")
        need(self.placement == "none" or self.strategy == "default",
             "--placement=per_member needs --strategy=default.")
        need(list(self.lr_decay_epochs) == sorted(set(self.lr_decay_epochs)),
             "--lr_decay_epochs must be increasing positive epochs.")
        need(self.image_size is None or len(self.image_size) == 2,
             f"--image_size must be H,W with positive sizes; got {self.image_size}.")
        if self.mode == "distill":
            need(len(self.nets) >= 2, "--mode=distill needs --nets=TEACHER,...,STUDENT.")
            need(len(self.teacher) == len(self.nets) - 1,
                 f"--mode=distill needs one --teacher file per teacher net "
                 f"({len(self.nets) - 1}); got {len(self.teacher)}.")
        else:
            need(not self.teacher, "--teacher is only used with --mode=distill.")

    def step_batch_size(self):
        """Images per training step: ``batch_size``, times K with ``--member_batches=separate``
        (each member trains on its own ``batch_size`` images)."""
        return self.batch_size * (len(self.nets) if self.member_batches == "separate" else 1)

    def training_settings(self):
        """The fields that determine the training (all but ``RUN_ONLY_FIELDS``) as
        JSON values: what a checkpoint records and a resumed run must match."""
        values = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in values.items() if k not in RUN_ONLY_FIELDS}

    def member_pretrained(self):
        """Each member's ``pretrained``: ``imagenet`` for the members whose network has
        ImageNet weights (``keras:NAME``, ``mobilenet``), the others from scratch (when no
        member has them, every member gets it and its builder says why not); a weights
        file for every member."""
        if self.pretrained != "imagenet" or not any(map(dml_nets.has_imagenet, self.nets)):
            return [self.pretrained] * len(self.nets)
        return [self.pretrained if dml_nets.has_imagenet(net) else None for net in self.nets]

    def member_mimicry_weight(self):
        """Independent training is the same cohort without the mimicry term."""
        return 0.0 if self.mode == "independent" else self.mimicry_weight


def default_training_settings(dataset):
    """The training settings of ``dataset`` with every flag at its default: what a setting a
    saved run or checkpoint does not record is compared as."""
    return TrainConfig(dataset=dataset).resolved().training_settings()


FIELDS = {field.name: field for field in dataclasses.fields(TrainConfig)}
# What a None takes when the dataset's defaults set nothing.
GENERIC_DEFAULTS = {name: f.metadata["fallback"] for name, f in FIELDS.items()
                    if f.metadata["fallback"] is not None}
# Every other field (new ones included) must match the checkpoint's on resume.
RUN_ONLY_FIELDS = tuple(name for name, f in FIELDS.items() if f.metadata["run_only"])
# What --new_optimizer_settings lets a resume change: the update rule's numbers, not its
# state's layout (--optimizer and --ema_decay change which slots exist).
OPTIMIZER_SETTINGS = ("learning_rate", "lr_schedule", "lr_decay_epochs", "lr_decay_rate",
                      "lr_decay_every", "warmup_epochs", "momentum", "nesterov", "beta1", "beta2",
                      "adam_epsilon", "rmsprop_decay", "rmsprop_momentum", "rmsprop_epsilon")


def check_setting(name, value):
    """ConfigError unless ``value`` is finite (a float) and within the choices or range of
    the field ``name`` (each of its values, for a sequence; None always passes: the
    dataset's default)."""
    meta = FIELDS[name].metadata
    value = current_spelling(name, value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"--{name} must be a finite number; got {value}.")
    if value is None:
        return
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ConfigError(f"--{name} must be one of {', '.join(meta['choices'])}; got {value!r}.")
    values = value if isinstance(value, (list, tuple)) else [value]
    if meta["range"] is not None and not all(v in meta["range"] for v in values):
        raise ConfigError(f"--{name} must be {meta['range']}; got {value}.")


def current_spelling(name, value):
    """``value`` of the field ``name``, an old spelling replaced by today's (``labeled``
    -> ``labeled``: old flagfiles and scripts keep working)."""
    return FIELDS[name].metadata["aliases"].get(value, value) if isinstance(value, str) else value


def integers(name, values):
    """``values`` (a sequence, or a comma string) as a tuple of ints; ConfigError naming
    ``--name`` otherwise."""
    items = values.split(",") if isinstance(values, str) else list(values)
    try:
        return tuple(int(v) for v in items)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name} must be comma-separated integers; "
                          f"got {','.join(str(v) for v in items)}.") from None
