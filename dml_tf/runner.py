"""One training run: data -> networks -> cohort -> fit -> results in ``model_dir``
(its layout and results.json: :mod:`dml_tf.run_dir`).
"""

import math
import os
import re
import time

import keras
import tensorflow as tf

from dml_tf import analysis
from dml_tf import checkpoint
from dml_tf import data as dml_data
from dml_tf import nets as dml_nets
from dml_tf.nets import keras_apps
from dml_tf import reporting
from dml_tf import run_dir
from dml_tf.compare import save_test_predictions
from dml_tf.cohort import MutualLearningModel
from dml_tf.config import OPTIMIZER_SETTINGS, RUN_ONLY_FIELDS, ConfigError, default_training_settings
from dml_tf.distribute import make_strategy
from dml_tf.errors import OutputError
from dml_tf.health import TrainingHealth, batch_norm_momentum, majority_rate
from dml_tf.io_utils import make_writable_dir, os_reason
from dml_tf.run_dir import RESULTS_FILE, member_file  # noqa: F401  (public here before run_dir)
from dml_tf.schedules import make_optimizer


def backup_dir_of(config):
    return run_dir.backup_dir(config.model_dir)


def writable_model_dir(config):
    """Creates ``model_dir`` and checks that files can be written in it (ConfigError)."""
    try:
        make_writable_dir(config.model_dir, "--model_dir")
    except OutputError as e:
        raise ConfigError(str(e)) from None


def prepare_model_dir(config):
    """Creates ``model_dir`` and checks that it is writable and holds no finished run;
    ``overwrite`` starts afresh: every output of an earlier run (finished or not) is
    removed (:func:`dml_tf.run_dir.remove_outputs`), other files are kept. Call it
    holding the folder (:func:`dml_tf.run_dir.exclusive`)."""
    model_dir = config.model_dir
    writable_model_dir(config)
    if run_dir.is_finished(model_dir) and not config.overwrite:
        raise ConfigError(
            f"--model_dir={model_dir} already holds a finished run ({RESULTS_FILE}); "
            "choose another --model_dir or pass --overwrite."
        )
    if config.overwrite:
        try:
            run_dir.remove_outputs(model_dir)
        except OSError as e:
            raise ConfigError(f"--overwrite cannot remove the earlier run's {e.filename} "
                              f"({e.strerror}).") from None


def checked_state(config, log=print):
    """``(state, changes)``: the checkpoint of an interrupted run in ``model_dir`` (None if
    there is none), after checking that it was trained with ``config``'s training
    settings, and the optimizer settings that ``--new_optimizer_settings`` changes
    (``{name: [old, new]}``)."""
    backup_dir = backup_dir_of(config)
    state = checkpoint.read_state(backup_dir)
    changes = {}
    if state is not None and "settings" not in state:
        log(f"The checkpoint in {backup_dir} was written by an earlier dml_tf: its training "
            "settings are not recorded, so they cannot be checked.")
    elif state is not None:
        defaults = default_training_settings(config.dataset)
        ignore = OPTIMIZER_SETTINGS if config.new_optimizer_settings else ()
        changed = checkpoint.check_settings(state, config.training_settings(), defaults, backup_dir, ignore)
        changes = {name: [old, new] for name, old, new in changed}
        if changed:
            log("Resuming with new optimizer settings (--new_optimizer_settings): "
                + checkpoint.describe_differences(changed, "the checkpoint"))
    return state, changes


def data_record(bundle, train_count, steps_per_epoch):
    """What a run trains on, as its checkpoint records it and a resume must match:
    dataset, image counts, classes, steps per epoch and, where the loader gives the
    label lists, their fingerprints (``checkpoint.label_fingerprint``)."""
    record = {"dataset": bundle.name, "train_images": bundle.train_size,
              "images_per_pass": train_count, "test_images": bundle.test_size,
              "classes": bundle.num_classes, "steps_per_epoch": steps_per_epoch}
    for split in ("train", "test"):
        labels = bundle.extras.get(f"{split}_labels")
        if labels is not None:
            record[f"{split}_labels"] = checkpoint.label_fingerprint(labels)
    return record


def checked_data(config, state, data, log=print):
    """Refuses (ConfigError naming each difference) a checkpoint trained on other data
    than ``data`` (:func:`data_record`); says so when the checkpoint cannot tell."""
    if state is not None and not checkpoint.check_data(state, data, backup_dir_of(config)):
        log(f"The checkpoint in {backup_dir_of(config)} was written by an earlier dml_tf: the data "
            "it was trained on is not recorded, so it cannot be checked.")


def data_options(config):
    """The data loader's arguments that a run's settings imply: ``seed``, and ``data_dir``,
    ``train_per_class``, ``labeled_fraction``, ``labeled_ids``, ``image_size``,
    ``validation_split``, ``augment`` and ``cache`` where set. ``config``: a
    TrainConfig, or the ``"config"`` dict of a run's results.json."""
    get = config.get if isinstance(config, dict) else lambda name: getattr(config, name)
    options = {"seed": get("seed") or 0}
    if get("data_dir"):
        options["data_dir"] = get("data_dir")
    if get("train_per_class") is not None:
        options["train_per_class"] = get("train_per_class")
    if get("labeled_fraction") not in (None, 1.0):
        options["labeled_fraction"] = get("labeled_fraction")
    if get("labeled_ids") is not None:
        options["labeled_ids"] = get("labeled_ids")
    if get("image_size") is not None:
        options["image_size"] = tuple(get("image_size"))
    if get("validation_split") is not None:
        options["validation_split"] = get("validation_split")
    if get("augment") not in (None, "auto"):
        options["augment"] = get("augment")
    if get("cache") not in (None, "auto"):
        options["cache"] = get("cache")
    return options


def load_data(config):
    """The data ``config`` trains on (``dml_tf.data.load``); ConfigError for an option the
    dataset does not take."""
    kwargs = {"batch_size": config.step_batch_size(), **data_options(config)}
    unsupported = sorted(set(kwargs) - dml_data.parameters(config.dataset))
    if unsupported:
        raise ConfigError(f"--{unsupported[0]} is not supported with --dataset={config.dataset}.")
    return dml_data.load(config.dataset, **kwargs)


def labeled_only(dataset, batch_size):
    """``--semi=labeled``: drop the unlabeled (-1) images (Sec. 4.10 "DML-labeled")."""
    return dataset.unbatch().filter(lambda x, y: y >= 0).batch(batch_size)


def build_members(config, bundle):
    """Fresh members for ``config.nets`` (different seeds: "initialise to different
    conditions", Algorithm 1); in distill mode the teachers are loaded and frozen. A
    pretrained ``keras:NAME`` member gets the data's standardisation, to undo it before its
    application's own ``preprocess_input`` (:mod:`dml_tf.nets.keras_apps`)."""
    members = []
    teachers = list(config.teacher) if config.mode == "distill" else []
    net_options = {} if config.bn_momentum is None else {"bn_momentum": config.bn_momentum}
    pretrained = config.member_pretrained()
    if any(p is not None and keras_apps.is_application(net) for p, net in zip(pretrained, config.nets)):
        scale = dml_data.standardisation(bundle)
        if scale is None:
            raise ConfigError(f"--pretrained with a keras:NAME member needs to know how --dataset="
                              f"{config.dataset} scales its images, and its loader does not say.")
        net_options["input_standardisation"] = scale
    for k, net in enumerate(config.nets):
        if k < len(teachers):
            path = teachers[k]
            if not os.path.isfile(path):
                raise ConfigError(f"--teacher file {path} does not exist.")
            teacher = run_dir.load_member(path, flag="--teacher")
            teacher.trainable = False
            members.append(teacher)
            continue
        members.append(dml_nets.build(
            net, num_classes=bundle.num_classes, input_shape=bundle.input_shape,
            weight_decay=config.weight_decay, seed=config.seed * 1000 + k,
            name=f"{re.sub(r'[^A-Za-z0-9_.]', '_', net)}_{k}", pretrained=pretrained[k],
            **net_options))
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


def training_batches(config, bundle):
    """``(train dataset, images per pass)``: with ``--semi=labeled`` and a labeled
    subset, the labeled images only."""
    if config.semi == "labeled" and (config.labeled_fraction < 1 or config.labeled_ids):
        train, count = labeled_only(bundle.train, config.step_batch_size()), bundle.labeled_size
        if count is None:  # the loader cannot tell: count in one pass
            count = sum(int(y.shape[0]) for _, y in train)
        return train, count
    return bundle.train, bundle.train_size


def epoch_plan(config, bundle):
    """``(train dataset, images per pass, batches per pass, steps per epoch)`` of ``config``
    on ``bundle``."""
    train, train_count = training_batches(config, bundle)
    batches_per_pass = math.ceil(train_count / config.step_batch_size())
    return train, train_count, batches_per_pass, config.steps_per_epoch or batches_per_pass


def config_data_record(config):
    """The :func:`data_record` of what ``config`` would train on (its data loaded)."""
    bundle = load_data(config)
    _, train_count, _, steps_per_epoch = epoch_plan(config, bundle)
    return data_record(bundle, train_count, steps_per_epoch)


def build_cohort(config, bundle, steps_per_epoch):
    """The compiled cohort of ``config`` (members, Algorithm 1's settings, one optimizer
    per member with its learning-rate schedule); call it inside the strategy's scope."""
    members = build_members(config, bundle)
    cohort = MutualLearningModel(
        members, update=config.update, mimicry=config.mimicry,
        mimicry_weight=config.member_mimicry_weight(), peer_reduction=config.peer_reduction,
        label_smoothing=config.label_smoothing, entropy_weight=config.entropy_weight,
        feature_l2_weight=config.feature_l2_weight,
        placement=config.placement,
        member_batches=config.member_batches,
        mimicry_warmup_steps=round(config.mimicry_warmup_epochs * steps_per_epoch))
    cohort.compile(
        optimizer=[make_optimizer(config, steps_per_epoch, name=f"{config.optimizer}_{k}")
                   for k in range(len(members))],
        jit_compile=config.jit_compile, ema_batch_norm=config.ema_batch_norm)
    return cohort


def checked_strategy(config):
    """The ``tf.distribute`` strategy of ``config``; ConfigError when it cannot start."""
    try:
        return make_strategy(config.strategy)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise ConfigError(f"--strategy={config.strategy} cannot start here: {e}") from None


def training_backup(config, state, log=print, data=None, steps_per_epoch=None, changes=None):
    """The run's TrainingBackup callback, from the checkpoint ``state`` (None: afresh),
    recording the ``data`` record and checking the restored steps."""
    backup_dir = backup_dir_of(config)
    backup = checkpoint.TrainingBackup(backup_dir, config.training_settings(), state, data=data,
                                       steps_per_epoch=steps_per_epoch, optimizer_changes=changes)
    if backup.initial_epoch >= config.epochs:
        log(f"All {config.epochs} epochs are in the checkpoint in {backup_dir}: "
            "evaluating and saving it.")
    elif backup.initial_epoch:
        log(f"Resuming from the checkpoint of epoch {backup.initial_epoch} in {backup_dir}.")
    return backup


def evaluate_and_save(cohort, bundle, model_dir):
    """The cohort's test metrics (``{}`` without a test split) and test predictions, and
    the members' files, in ``model_dir``."""
    test = {}
    if bundle.test is not None:
        test = {k: float(v) for k, v in
                cohort.evaluate(bundle.test, verbose=0, return_dict=True).items()}
        save_test_predictions(cohort, bundle.test, os.path.join(model_dir, run_dir.PREDICTIONS_FILE))
    run_dir.save_members(model_dir, cohort.members)
    return test


def training_fit(members, bundle):
    """Per member, :func:`dml_tf.analysis.fit_statistics` on the training images without
    augmentation, in inference mode (accuracy, loss and posterior entropy, Sec. 4.7);
    ``[]`` for a dataset whose loader has no such split."""
    make = bundle.extras.get("train_unaugmented")
    if make is None:
        return []
    dataset = make()
    fits = []
    for k, member in enumerate(members):
        probs, labels = analysis.predict_probabilities(member, dataset)
        fits.append({"index": k, **analysis.fit_statistics(probs, labels)})
    return fits


def run(config, log=print, callbacks=()):
    """Trains the cohort described by ``config`` and returns the results dict.

    ``callbacks`` are added after the run's own (TrainingBackup, TensorBoard, the per-member
    epoch table unless ``config.verbose`` is set, and TrainingHealth).
    A run interrupted at any instant resumes from its last finished epoch when
    started again with the same training settings and data (``ConfigError`` otherwise).
    The run holds ``model_dir`` for its whole life (:func:`dml_tf.run_dir.exclusive`): a
    second run there stops at once with ``RunFolderBusyError``.
    """
    config = config.resolved()
    writable_model_dir(config)
    with run_dir.exclusive(config.model_dir):
        return _run_holding_the_folder(config, log, callbacks)


def health_check(bundle, members, samples_per_epoch, steps_per_epoch, backup, log, warmup_epochs=0):
    """The run's TrainingHealth: chance as the majority-class rate of the labels each
    accuracy is measured on, each member's batch-norm momentum, and the divergence
    advice that names the checkpoint kept."""
    train_labels, test_labels = bundle.extras.get("train_labels"), bundle.extras.get("test_labels")
    return TrainingHealth(
        [m.name for m in members], bundle.num_classes, samples_per_epoch,
        validation_samples=bundle.test_size, log=log,
        train_chance=None if train_labels is None else majority_rate(train_labels),
        validation_chance=None if test_labels is None else majority_rate(test_labels),
        bn_momenta=[batch_norm_momentum(m) for m in members], steps_per_epoch=steps_per_epoch,
        advice=lambda: checkpoint.divergence_advice(backup.committed_epoch, backup.backup_dir),
        warmup_epochs=warmup_epochs)


def _run_holding_the_folder(config, log, callbacks):
    prepare_model_dir(config)
    state, changes = checked_state(config, log)
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    strategy = checked_strategy(config)
    bundle = load_data(config)
    train, train_count, batches_per_pass, steps_per_epoch = epoch_plan(config, bundle)
    data = data_record(bundle, train_count, steps_per_epoch)
    checked_data(config, state, data, log)
    with strategy.scope():
        cohort = build_cohort(config, bundle, steps_per_epoch)
    members = cohort.members
    if state is not None and "extra_state" not in state and checkpoint.extra_variables(cohort):
        log(f"The checkpoint in {backup_dir_of(config)} was written by an earlier dml_tf: the random "
            "state of the members' dropout is not recorded, so the resumed run draws other dropout "
            "masks than an uninterrupted run would.")

    backup = training_backup(config, state, log, data=data, steps_per_epoch=steps_per_epoch,
                             changes=changes)
    stream = epoch_stream(train, batches_per_pass, steps_per_epoch, backup.initial_epoch)
    labeled_per_epoch = (bundle.labeled_size or train_count) * steps_per_epoch / batches_per_pass
    callbacks = [
        backup,
        reporting.CohortTensorBoard(os.path.join(config.model_dir, run_dir.LOGS_DIR)),
        *([reporting.EpochTable(log=log)] if config.verbose is None else []),
        # After the table: an epoch's warnings follow the numbers they are about.
        health_check(bundle, members, labeled_per_epoch, steps_per_epoch, backup, log, config.warmup_epochs),
        *callbacks,
    ]
    verbose = 0 if config.verbose is None else config.verbose
    log(reporting.describe_run(config, members, train_count, bundle.test_size, steps_per_epoch))
    start = time.time()
    history = cohort.fit(stream, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                         validation_data=bundle.test, validation_freq=config.validation_freq,
                         callbacks=callbacks, verbose=verbose,
                         shuffle=False)  # the pipeline shuffles, seeded
    wall_time = backup.train_time_s + time.time() - start  # + earlier sessions' epochs

    try:
        test = evaluate_and_save(cohort, bundle, config.model_dir)
        # backup.history: every epoch, earlier sessions' included
        results = run_dir.make_results(config, bundle, members, backup.history, len(history.epoch),
                                       test, wall_time, training_fit(members, bundle),
                                       optimizer_changes=backup.optimizer_changes, data=data)
        run_dir.write_results(config.model_dir, results)
    except OSError as e:  # a full disk, a folder made read-only
        raise OutputError(
            f"The results cannot be written in {config.model_dir} ({os_reason(e)}): the trained "
            f"run is kept in {backup_dir_of(config)} (all {config.epochs} epochs). Make room or make "
            "the folder writable, then run the same command to evaluate and save it.") from None
    log(format_summary(results))
    return results


def describe_nets(nets):
    """``2 x resnet32`` for a cohort of one network, ``mobilenet, resnet32`` otherwise."""
    nets = list(nets)
    return f"{len(nets)} x {nets[0]}" if len(set(nets)) == 1 else ", ".join(nets)


def run_or_reuse(config, log=print):
    """:func:`run` unless ``config.model_dir`` already holds a finished run, whose
    results.json is read instead (``RunFileError`` when damaged): a sweep or a study
    started again resumes, an interrupted run included. A finished run trained with other
    settings, or on other data (:func:`checked_reuse`), is never taken for this one."""
    if not run_dir.is_finished(config.model_dir):
        log(f"[train] {config.model_dir}: {describe_nets(config.nets)}, mode={config.mode}, "
            f"mimicry={config.mimicry}, seed={config.seed}")
        return run(config, log=log)
    results = run_dir.read_results(config.model_dir)
    checked_reuse(config, results, log)
    log(f"[skip] {config.model_dir} is finished; reusing its {RESULTS_FILE}")
    return results


def check_same_settings(config, saved, what):
    """ConfigError naming ``config.model_dir`` (which holds ``what``, e.g. "a finished run")
    and each difference unless the training settings ``saved`` there are ``config``'s."""
    saved = {k: v for k, v in saved.items() if k not in RUN_ONLY_FIELDS}
    differences = checkpoint.settings_differences(saved, config.resolved().training_settings(),
                                                  default_training_settings(config.dataset))
    if differences:
        raise ConfigError(f"{config.model_dir} holds {what} with other settings "
                          f"({checkpoint.describe_differences(differences, 'the run')}): "
                          "give it the settings of that run, or another output folder.")


def checked_reuse(config, results, log=print):
    """ConfigError naming the run and each difference unless the finished run's
    ``results`` were trained with ``config``'s training settings and on the data
    ``config`` gives now (:func:`config_data_record`: dataset, image counts, classes,
    steps, label fingerprints: the record a resume is checked against)."""
    check_same_settings(config, results.get("config") or {}, "a finished run")
    recorded = run_dir.data_record(results)
    differences = checkpoint.data_differences(recorded, config_data_record(config))
    if differences:
        old_dir = (results.get("config") or {}).get("data_dir")
        where = "" if old_dir == config.data_dir else f" (--data_dir: {old_dir} in the run, {config.data_dir} now)"
        raise ConfigError(f"{config.model_dir} holds a finished run trained on other data{where}: "
                          f"{checkpoint.describe_data_differences(differences, 'the run')}. Give it "
                          "the data of that run, or another output folder.")
    if results.get("data") is None:
        log(f"{run_dir.results_path(config.model_dir)} was written by an earlier dml_tf: it records "
            "the dataset's sizes but not its label fingerprints, so only the sizes are checked.")


def format_summary(results):
    lines = ["", f"{'member':<24}{'net':<16}{'test accuracy':>14}"]
    for m in results["members"]:
        acc = m["test_accuracy"]
        lines.append(f"{m['name']:<24}{m['net']:<16}{'-' if acc is None else f'{acc:.4f}':>14}")
    ens = results["ensemble_test_accuracy"]
    if ens is not None:
        lines.append(f"{'ensemble (mean prob.)':<40}{ens:>14.4f}")
    lines.append(f"wall time {results['wall_time_s']:.1f} s; results in "
                 f"{run_dir.results_path(results['config']['model_dir'])}")
    return "\n".join(lines)
