"""One training run: data -> networks -> cohort -> fit -> results in ``model_dir``.

``model_dir`` receives:
  backup/        BackupAndRestore state, written every epoch; a run started again
                 with the same command resumes from the last finished epoch.
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
import json
import math
import os
import shutil
import time

import keras
import tensorflow as tf

from dml_tf import data as dml_data
from dml_tf import nets as dml_nets
from dml_tf import reporting
from dml_tf.compare import PREDICTIONS_FILE, save_test_predictions
from dml_tf.cohort import MutualLearningModel
from dml_tf.config import ConfigError
from dml_tf.distribute import make_strategy
from dml_tf.io_utils import atomic_write_json
from dml_tf.schedules import make_optimizer

RESULTS_FILE = "results.json"


def member_file(k):
    return f"member_{k}.keras"


def prepare_model_dir(config):
    """Creates ``model_dir`` and checks that it is writable and holds no finished run."""
    model_dir = config.model_dir
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--model_dir={model_dir} is not writable ({e.strerror}).") from None
    finished = os.path.join(model_dir, RESULTS_FILE)
    if os.path.exists(finished):
        if not config.overwrite:
            raise ConfigError(
                f"--model_dir={model_dir} already holds a finished run ({RESULTS_FILE}); "
                "choose another --model_dir or pass --overwrite."
            )
        os.remove(finished)
        shutil.rmtree(os.path.join(model_dir, "backup"), ignore_errors=True)


def load_data(config):
    kwargs = {"batch_size": config.batch_size, "seed": config.seed}
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
    """``--semi=labelled``: drop the unlabelled (-1) images (Sec. 4.10 "DML-labelled")."""
    return dataset.unbatch().filter(lambda x, y: y >= 0).batch(batch_size)


def build_members(config, bundle):
    """Fresh members for ``config.nets`` (different seeds: "initialise to different
    conditions", Algorithm 1); in distill mode the teachers are loaded and frozen."""
    members = []
    teachers = list(config.teacher) if config.mode == "distill" else []
    for k, net in enumerate(config.nets):
        if k < len(teachers):
            path = teachers[k]
            if not os.path.isfile(path):
                raise ConfigError(f"--teacher file {path} does not exist.")
            teacher = keras.models.load_model(path, compile=False)
            teacher.trainable = False
            members.append(teacher)
            continue
        members.append(dml_nets.build(
            net, num_classes=bundle.num_classes, input_shape=bundle.input_shape,
            weight_decay=config.weight_decay, seed=config.seed * 1000 + k,
            name=f"{net}_{k}", pretrained=config.pretrained))
    return members


def resumed_epoch(backup_dir):
    """The epoch BackupAndRestore will resume from (0 for a fresh run)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f).get("epoch", 0))  # epochs completed


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

    ``callbacks`` are added after the run's own (BackupAndRestore, TensorBoard and,
    unless ``config.verbose`` is set, the per-member epoch table).
    """
    config = config.resolved()
    prepare_model_dir(config)
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    try:
        strategy = make_strategy(config.strategy)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise ConfigError(f"--strategy={config.strategy} cannot start here: {e}") from None
    bundle = load_data(config)
    train, train_count = bundle.train, bundle.train_size
    if config.semi == "labelled" and (config.labeled_fraction < 1 or config.labeled_ids):
        train = labelled_only(train, config.batch_size)
        train_count = bundle.labeled_size
        if train_count is None:  # the loader cannot tell: count in one pass
            train_count = sum(int(y.shape[0]) for _, y in train)
    batches_per_pass = math.ceil(train_count / config.batch_size)
    steps_per_epoch = config.steps_per_epoch or batches_per_pass

    with strategy.scope():
        members = build_members(config, bundle)
        cohort = MutualLearningModel(
            members, update=config.update, mimicry=config.mimicry,
            mimicry_weight=config.member_mimicry_weight(), peer_reduction=config.peer_reduction,
            label_smoothing=config.label_smoothing, entropy_weight=config.entropy_weight,
            feature_l2_weight=config.feature_l2_weight,
            placement=None if config.placement == "none" else config.placement)
        cohort.compile(
            optimizer=[make_optimizer(config, steps_per_epoch, name=f"{config.optimizer}_{k}")
                       for k in range(len(members))],
            jit_compile=config.jit_compile)

    backup_dir = os.path.join(config.model_dir, "backup")
    initial_epoch = resumed_epoch(backup_dir)
    if initial_epoch:
        log(f"Resuming from the checkpoint of epoch {initial_epoch} in {backup_dir}.")
    stream = epoch_stream(train, batches_per_pass, steps_per_epoch, initial_epoch)
    callbacks = [
        keras.callbacks.BackupAndRestore(backup_dir),
        reporting.CohortTensorBoard(os.path.join(config.model_dir, "logs")),
        *([reporting.EpochTable(log=log)] if config.verbose is None else []),
        *callbacks,
    ]
    verbose = 0 if config.verbose is None else config.verbose
    log(reporting.describe_run(config, members, train_count, bundle.test_size, steps_per_epoch))
    start = time.time()
    history = cohort.fit(stream, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                         validation_data=bundle.test, callbacks=callbacks, verbose=verbose,
                         shuffle=False)  # the pipeline shuffles, seeded
    wall_time = time.time() - start

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
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
        "epochs_run_this_session": len(history.epoch),
        "test": test,
        "ensemble_test_accuracy": test.get("ensemble_accuracy"),
        "wall_time_s": wall_time,
    }
    atomic_write_json(os.path.join(config.model_dir, RESULTS_FILE), results)
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
