"""One training run: data -> networks -> cohort -> fit -> results in ``model_dir``.

``model_dir`` receives:
  backup/        the training state of the last finished epoch (dml_tf/checkpoint.py),
                 written every epoch and kept until results.json exists; a run
                 started again with the same command resumes from it.
  logs/          TensorBoard: a run folder per member (member_K/train, /validation)
                 with the same tags (epoch_loss, epoch_ce, epoch_mimicry, epoch_accuracy,
                 epoch_learning_rate), so members overlay; ensemble/validation.
  member_K.keras each member as a plain Keras model.
  test_predictions.npz  the class each member and the ensemble predict for every
                 test image, and the labels (dml_tf.compare's paired test).
  results.json   written last and atomically: config, per-epoch history, final
                 test accuracy per member and of the ensemble, wall time.
"""

import dataclasses
import math
import os
import shutil
import time

import keras
import tensorflow as tf

from dml_tf import checkpoint
from dml_tf import data as dml_data
from dml_tf import nets as dml_nets
from dml_tf.analysis import load_member
from dml_tf import reporting
from dml_tf.compare import PREDICTIONS_FILE, save_test_predictions
from dml_tf.cohort import MutualLearningModel
from dml_tf.config import ConfigError, TrainConfig
from dml_tf.distribute import make_strategy
from dml_tf.errors import OutputError
from dml_tf.health import TrainingHealth
from dml_tf.io_utils import atomic_write_json, make_writable_dir
from dml_tf.schedules import make_optimizer

RESULTS_FILE = "results.json"


def member_file(k):
    return f"member_{k}.keras"


def backup_dir_of(config):
    return os.path.join(config.model_dir, "backup")


def prepare_model_dir(config):
    """Creates ``model_dir`` and checks that it is writable and holds no finished run;
    ``overwrite`` starts afresh: a finished run and any checkpoint are discarded."""
    model_dir = config.model_dir
    try:
        make_writable_dir(model_dir, "--model_dir")
    except OutputError as e:
        raise ConfigError(str(e)) from None
    finished = os.path.join(model_dir, RESULTS_FILE)
    if os.path.exists(finished) and not config.overwrite:
        raise ConfigError(
            f"--model_dir={model_dir} already holds a finished run ({RESULTS_FILE}); "
            "choose another --model_dir or pass --overwrite."
        )
    if config.overwrite:
        shutil.rmtree(backup_dir_of(config), ignore_errors=True)  # first: no stale resume
        if os.path.exists(finished):
            os.remove(finished)


def checked_state(config, log=print):
    """The checkpoint of an interrupted run in ``model_dir`` (None if there is none),
    after checking that it was trained with ``config``'s training settings."""
    backup_dir = backup_dir_of(config)
    state = checkpoint.read_state(backup_dir)
    if state is not None and "settings" not in state:
        log(f"The checkpoint in {backup_dir} was written by an earlier dml_tf: its training "
            "settings are not recorded, so they cannot be checked.")
    elif state is not None:
        defaults = TrainConfig(dataset=config.dataset).resolved().training_settings()
        checkpoint.check_settings(state, config.training_settings(), defaults, backup_dir)
    return state


def load_data(config):
    kwargs = {"batch_size": config.step_batch_size(), "seed": config.seed}
    if config.data_dir:
        kwargs["data_dir"] = config.data_dir
    if config.labeled_fraction != 1.0:
        kwargs["labeled_fraction"] = config.labeled_fraction
    if config.labeled_ids is not None:
        kwargs["labeled_ids"] = config.labeled_ids
    if config.image_size is not None:
        kwargs["image_size"] = tuple(config.image_size)
    unsupported = sorted(set(kwargs) - dml_data.parameters(config.dataset))
    if unsupported:
        raise ConfigError(f"--{unsupported[0]} is not supported with --dataset={config.dataset}.")
    return dml_data.load(config.dataset, **kwargs)


def labelled_only(dataset, batch_size):
    """``--semi=labeled``: drop the unlabelled (-1) images (Sec. 4.10 "DML-labelled")."""
    return dataset.unbatch().filter(lambda x, y: y >= 0).batch(batch_size)


def build_members(config, bundle):
    """Fresh members for ``config.nets`` (different seeds: "initialise to different
    conditions", Algorithm 1); in distill mode the teachers are loaded and frozen."""
    members = []
    teachers = list(config.teacher) if config.mode == "distill" else []
    net_options = {} if config.bn_momentum is None else {"bn_momentum": config.bn_momentum}
    for k, net in enumerate(config.nets):
        if k < len(teachers):
            path = teachers[k]
            if not os.path.isfile(path):
                raise ConfigError(f"--teacher file {path} does not exist.")
            teacher = load_member(path, flag="--teacher")
            teacher.trainable = False
            members.append(teacher)
            continue
        members.append(dml_nets.build(
            net, num_classes=bundle.num_classes, input_shape=bundle.input_shape,
            weight_decay=config.weight_decay, seed=config.seed * 1000 + k,
            name=f"{net}_{k}", pretrained=config.pretrained, **net_options))
    return members


def epoch_stream(train, batches_per_pass, steps_per_epoch, initial_epoch):
    """One long-lived stream of training batches for ``fit(steps_per_epoch=...)``.

    ``train`` reshuffles and re-draws its augmentation at every pass
    (dml_tf/data/pipeline.py), so pass p is a fixed function of the seed and p.
    A resumed run first advances the stream past the batches already consumed
    (whole passes by opening and dropping an iterator, which costs nothing), so
    it sees exactly the batches an uninterrupted run would have seen.
    """
    consumed = initial_epoch * steps_per_epoch
    for _ in range(consumed // batches_per_pass):
        iter(train)
    stream = train.repeat()
    if consumed % batches_per_pass:
        stream = stream.skip(consumed % batches_per_pass)
    return stream


def run(config, log=print, callbacks=()):
    """Trains the cohort described by ``config`` and returns the results dict.

    ``callbacks`` are added after the run's own (TrainingBackup, TensorBoard, TrainingHealth
    and, unless ``config.verbose`` is set, the per-member epoch table).
    A run interrupted at any instant resumes from its last finished epoch when
    started again with the same training settings (``ConfigError`` otherwise).
    """
    config = config.resolved()
    prepare_model_dir(config)
    state = checked_state(config, log)
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    try:
        strategy = make_strategy(config.strategy)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise ConfigError(f"--strategy={config.strategy} cannot start here: {e}") from None
    bundle = load_data(config)
    train, train_count = bundle.train, bundle.train_size
    if config.semi == "labeled" and (config.labeled_fraction < 1 or config.labeled_ids):
        train = labelled_only(train, config.step_batch_size())
        train_count = bundle.labeled_size
        if train_count is None:  # the loader cannot tell: count in one pass
            train_count = sum(int(y.shape[0]) for _, y in train)
    batches_per_pass = math.ceil(train_count / config.step_batch_size())
    steps_per_epoch = config.steps_per_epoch or batches_per_pass

    with strategy.scope():
        members = build_members(config, bundle)
        cohort = MutualLearningModel(
            members, update=config.update, mimicry=config.mimicry,
            mimicry_weight=config.member_mimicry_weight(), peer_reduction=config.peer_reduction,
            label_smoothing=config.label_smoothing, entropy_weight=config.entropy_weight,
            feature_l2_weight=config.feature_l2_weight,
            placement=None if config.placement == "none" else config.placement,
            member_batches=config.member_batches)
        cohort.compile(
            optimizer=[make_optimizer(config, steps_per_epoch, name=f"{config.optimizer}_{k}")
                       for k in range(len(members))],
            jit_compile=config.jit_compile, ema_batch_norm=config.ema_batch_norm)

    backup_dir = backup_dir_of(config)
    backup = checkpoint.TrainingBackup(backup_dir, config.training_settings(), state)
    initial_epoch = backup.initial_epoch
    if initial_epoch >= config.epochs:
        log(f"All {config.epochs} epochs are in the checkpoint in {backup_dir}: "
            "evaluating and saving it.")
    elif initial_epoch:
        log(f"Resuming from the checkpoint of epoch {initial_epoch} in {backup_dir}.")
    stream = epoch_stream(train, batches_per_pass, steps_per_epoch, initial_epoch)
    labelled_per_epoch = (bundle.labeled_size or train_count) * steps_per_epoch / batches_per_pass
    callbacks = [
        backup,
        reporting.CohortTensorBoard(os.path.join(config.model_dir, "logs")),
        TrainingHealth([m.name for m in members], bundle.num_classes, labelled_per_epoch, log=log),
        *([reporting.EpochTable(log=log)] if config.verbose is None else []),
        *callbacks,
    ]
    verbose = 0 if config.verbose is None else config.verbose
    log(reporting.describe_run(config, members, train_count, bundle.test_size, steps_per_epoch))
    start = time.time()
    history = cohort.fit(stream, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                         validation_data=bundle.test, callbacks=callbacks, verbose=verbose,
                         shuffle=False)  # the pipeline shuffles, seeded
    wall_time = backup.train_time_s + time.time() - start  # + earlier sessions' epochs

    test = {}
    if bundle.test is not None:
        test = {k: float(v) for k, v in
                cohort.evaluate(bundle.test, verbose=0, return_dict=True).items()}
        save_test_predictions(cohort, bundle.test, os.path.join(config.model_dir, PREDICTIONS_FILE))
    member_entries = []
    for k, member in enumerate(members):
        path = os.path.join(config.model_dir, member_file(k))
        tmp = os.path.join(config.model_dir, f".tmp_{member_file(k)}")
        member.save(tmp)
        os.replace(tmp, path)
        member_entries.append({"index": k, "net": config.nets[k], "name": member.name,
                               "file": member_file(k), "trainable": bool(member.trainable),
                               "test_accuracy": test.get(f"accuracy_{k}")})
    results = {
        "config": dataclasses.asdict(config),
        "dataset": {"name": bundle.name, "num_classes": bundle.num_classes,
                    "train_size": bundle.train_size, "test_size": bundle.test_size},
        "members": member_entries,
        "history": backup.history,  # every epoch, earlier sessions' included
        "epochs_run_this_session": len(history.epoch),
        "test": test,
        "ensemble_test_accuracy": test.get("ensemble_accuracy"),
        "wall_time_s": wall_time,
    }
    atomic_write_json(os.path.join(config.model_dir, RESULTS_FILE), results)
    shutil.rmtree(backup_dir, ignore_errors=True)  # the run is safe in results.json now
    log(format_summary(results))
    return results


def format_summary(results):
    lines = ["", f"{'member':<24}{'net':<16}{'test accuracy':>14}"]
    for m in results["members"]:
        acc = m["test_accuracy"]
        lines.append(f"{m['name']:<24}{m['net']:<16}{'-' if acc is None else f'{acc:.4f}':>14}")
    ens = results["ensemble_test_accuracy"]
    if ens is not None:
        lines.append(f"{'ensemble (mean prob.)':<40}{ens:>14.4f}")
    lines.append(f"wall time {results['wall_time_s']:.1f} s; results in "
                 f"{os.path.join(results['config']['model_dir'], RESULTS_FILE)}")
    return "\n".join(lines)
