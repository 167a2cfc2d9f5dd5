"""The crash-safe, self-describing training state of a run (``model_dir/backup``).

Keras' ``BackupAndRestore`` rewrites ``latest.weights.h5`` in place at every epoch,
so a kill during that write leaves no usable checkpoint (``double_checkpoint`` keeps
a copy, but the copy and the epoch counter are still written in place). Here every
epoch's weights go to a new file, ``epoch_{N}.weights.h5``, and the state is
committed by atomically replacing ``training_metadata.json``, which names that file
and records with it:

* ``epoch``: the epochs finished (Keras' meaning: training resumes at this epoch);
* ``settings``: the run's training configuration
  (:meth:`dml_tf.config.TrainConfig.training_settings`), compared with the command's
  on resume;
* ``history``: every finished epoch's logs, so a resumed run reports them all;
* ``train_time_s``: training wall time of the finished epochs, over all sessions;
* ``format``: this layout's version (:data:`FORMAT`; none before it was recorded);
* ``data``: what the run trains on (``runner.data_record``: dataset, image counts,
  classes, steps per epoch, fingerprints of the label lists), compared on resume;
* ``extra_state``: the values of the variables Keras' weights files leave out
  (dropout's random-seed state), so that a resumed run draws the same masks;
* ``optimizer_changes``: the resumes that changed the optimizer settings
  (``--new_optimizer_settings``).

An epoch is committed only when every member's weights and the epoch's losses
(training and validation) are finite: a diverged run keeps its last finite epoch.

A kill at any instant therefore leaves the last committed epoch restorable: before
the commit the previous metadata names the previous (untouched) weights file; after
it the new one. Older weights files are removed after the commit. The folder is
kept when ``fit`` ends (``delete_checkpoint=False``); the runner removes it once
``results.json`` is written.
"""

import contextlib
import glob
import os
import time
import warnings

import keras
import numpy as np

from dml_tf.config import FIELDS, ConfigError, current_spelling
from dml_tf.errors import OutputError, RunFileError, TrainingDivergedError
from dml_tf.io_utils import atomic_write_json, fsync_file, os_reason, read_json

METADATA = "training_metadata.json"
FORMAT = 2  # 1 (unrecorded): settings without the fields added after them; no data record
_LEGACY_WEIGHTS = "latest.weights.h5"  # keras.callbacks.BackupAndRestore's file
_START_AFRESH = "pass --overwrite to discard it and start afresh, or use a new --model_dir"


def weights_file(epoch):
    return f"epoch_{epoch}.weights.h5"


def _scalar(value):
    return float(np.asarray(value, np.float64).reshape(-1)[0])


def read_state(backup_dir):
    """The committed state in ``backup_dir`` (a dict, see the module doc), or None
    when no epoch was committed. A damaged state is a ``RunFileError`` naming the
    file and how to start afresh."""
    path = os.path.join(backup_dir, METADATA)
    if not os.path.exists(path):
        return None
    remedy = f"The checkpoint in {backup_dir} cannot be resumed: {_START_AFRESH}."
    state = read_json(path, remedy)
    epoch = state.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise RunFileError(f"{path} holds no epoch count (got {state!r}). {remedy}")
    version = state.get("format", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT:
        raise RunFileError(f"{path} has format {version!r}; this dml_tf reads formats 1 to {FORMAT} "
                           f"(a newer dml_tf wrote it?). {remedy}")
    state.setdefault("weights", _LEGACY_WEIGHTS)  # written by keras' BackupAndRestore
    state.setdefault("history", {})
    state.setdefault("train_time_s", 0.0)
    weights = os.path.join(backup_dir, state["weights"])
    if not os.path.isfile(weights):
        raise RunFileError(f"{path} names the weights file {weights}, which is missing. {remedy}")
    return state


def settings_differences(saved, current, defaults, legacy=None):
    """``[(name, saved value, current value)]`` of the training settings that differ.

    A setting the checkpoint does not record (added to ``TrainConfig`` after it was
    written) counts as its ``legacy`` value (what the code did before the setting
    existed, :func:`legacy_settings`) when it has one, else as its ``defaults`` value;
    a value recorded in an old spelling (``--semi=labelled``) counts as today's.
    """
    missing = object()
    legacy = legacy or {}
    differences = []
    for name, value in current.items():
        old = saved.get(name, missing)
        if old is missing:
            old = legacy.get(name, defaults.get(name, missing))
        elif name in FIELDS:
            old = current_spelling(name, old)
        if old != value:
            differences.append((name, None if old is missing else old, value))
    return differences


def legacy_settings(state):
    """``(values, obstacles)`` of a checkpoint written before :data:`FORMAT` was recorded:
    the value each setting it does not record took in the code that wrote it, where that
    differs from today's default, and the reasons (if any) that today's code cannot
    continue its training exactly. ``({}, [])`` for a checkpoint with a format version,
    whose missing settings count as their defaults.

    The settings added after checkpoints began recording theirs (3e7f791), with the
    behaviour before them: ``warmup_epochs`` (no warm-up: 0), ``ema_batch_norm`` (Keras'
    weight average only: False; it matters only with ``ema_decay``), ``rmsprop_momentum``
    and ``rmsprop_epsilon`` (Keras' RMSprop, whose mean square starts at 0 where today's
    TF1 RMSProp starts it at 1), ``bn_momentum`` (mobilenet and inception_v1 had batch-norm
    momentum 0.99 and no dropout). ``member_batches``, ``mimicry_warmup_epochs`` and
    ``train_per_class`` were added with a default equal to the behaviour before them.
    """
    if "format" in state:
        return {}, []
    saved = state.get("settings") or {}
    values, obstacles = {}, []
    if "warmup_epochs" not in saved:
        values["warmup_epochs"] = 0.0
    if "ema_batch_norm" not in saved and saved.get("ema_decay"):
        values["ema_batch_norm"] = False
    if "rmsprop_momentum" not in saved and saved.get("optimizer") == "rmsprop":
        obstacles.append("its RMSProp was Keras' (mean square from 0, no momentum); today's is "
                         "TF1's (mean square from 1)")
    if "bn_momentum" not in saved and {"mobilenet", "inception_v1"} & set(saved.get("nets") or ()):
        obstacles.append("its mobilenet / inception_v1 had batch-norm momentum 0.99 and no "
                         "dropout; today's have TF-slim's 0.9997 and dropout")
    return values, obstacles


def check_settings(state, current, defaults, backup_dir, ignore=()):
    """Raises ``ConfigError`` unless the checkpoint's training settings equal
    ``current`` (but for the names in ``ignore``); the message names each differing
    flag, old and new. Returns the differences of the ``ignore`` settings."""
    legacy, obstacles = legacy_settings(state)
    if obstacles:
        raise ConfigError(
            f"{backup_dir} holds a checkpoint (epoch {state['epoch']}) written by an earlier "
            f"dml_tf that this one cannot continue exactly: {'; '.join(obstacles)}. "
            f"Finish it with the dml_tf that wrote it, or {_START_AFRESH}.")
    differences = settings_differences(state.get("settings", {}), current, defaults, legacy)
    refused = [d for d in differences if d[0] not in ignore]
    if not refused:
        return [d for d in differences if d[0] in ignore]
    listed = describe_differences(refused, "the checkpoint")
    raise ConfigError(
        f"{backup_dir} holds an interrupted run (epoch {state['epoch']}) trained with other "
        f"settings: {listed}. Resume with the original settings, or {_START_AFRESH}.")


DATA_NAMES = {"dataset": "dataset", "train_images": "training images",
              "images_per_pass": "training images per pass", "test_images": "test images",
              "classes": "classes", "steps_per_epoch": "steps per epoch",
              "train_labels": "training labels (fingerprint)", "test_labels": "test labels (fingerprint)"}


def label_fingerprint(labels):
    """A short fingerprint of a label list (order included): the first 16 hex digits
    of the SHA-256 of its int64 values."""
    import hashlib

    values = np.ascontiguousarray(np.asarray(labels).reshape(-1), dtype="<i8")
    return hashlib.sha256(values.tobytes()).hexdigest()[:16]


def check_data(state, data, backup_dir):
    """Raises ``ConfigError`` naming each difference unless the checkpoint was trained on
    ``data`` (``runner.data_record``); returns False when the checkpoint records no data
    (written before it did: it cannot be checked), True otherwise."""
    saved = state.get("data")
    if saved is None:
        return False
    differences = data_differences(saved, data)
    if differences:
        listed = describe_data_differences(differences, "the checkpoint")
        raise ConfigError(
            f"{backup_dir} holds an interrupted run (epoch {state['epoch']}) trained on other "
            f"data: {listed}. Resume with the data it was trained on (the same --data_dir), "
            f"or {_START_AFRESH}.")
    return True


def data_differences(saved, data):
    """``[(name, saved value, current value)]`` of the entries of two data records
    (``runner.data_record``) that differ; an entry only one of them records is not compared."""
    return [(name, saved[name], value) for name, value in data.items()
            if name in saved and saved[name] != value]


def describe_data_differences(differences, where):
    """``training images: OLD in WHERE, NEW now; ...`` for :func:`data_differences`' list."""
    return "; ".join(f"{DATA_NAMES.get(name, name)}: {_flag(old)} in {where}, {_flag(new)} now"
                     for name, old, new in differences)


def describe_differences(differences, where):
    """``--NAME: OLD in WHERE, NEW now; ...`` for :func:`settings_differences`' list."""
    return "; ".join(f"--{name}: {_flag(old)} in {where}, {_flag(new)} now"
                     for name, old, new in differences)


def _flag(value):
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "(empty)"
    return str(value)


def append_epoch(history, logs):
    """Appends one epoch's ``logs`` to ``history`` (name -> list, one entry per epoch),
    keeping every list one entry per epoch: a value missing from this epoch's logs (the
    validation metrics of an epoch that ``validation_freq`` skips) is None, and so are
    the earlier epochs of a name first logged now."""
    epochs = max((len(v) for v in history.values()), default=0)
    for key, value in (logs or {}).items():
        history.setdefault(key, [None] * epochs).append(_scalar(value))
    for values in history.values():
        if len(values) == epochs:
            values.append(None)
    return history


def extra_variables(model):
    """The variables of ``model`` that its weights file leaves out (Keras saves
    ``model.weights`` and the optimizer's variables): the state of each dropout layer's
    seed generator, which decides the masks of the coming steps."""
    saved = {id(v) for v in model.weights}
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        saved |= {id(v) for v in optimizer.variables}
    metrics = {id(v) for m in getattr(model, "metrics", ()) for v in m.variables}
    return [v for v in model.variables if id(v) not in saved and id(v) not in metrics]


def non_finite(model, logs):
    """What is not finite at the end of an epoch: the names of the losses in ``logs``
    (training and validation) and the members' variables (weights and batch-norm
    statistics) holding NaN or inf; ``[]`` when all are finite."""
    found = [f"{key} = {float(np.asarray(value).reshape(-1)[0])}" for key, value in (logs or {}).items()
             if "loss" in key and value is not None and not np.all(np.isfinite(np.asarray(value, np.float64)))]
    for member in getattr(model, "members", [model]):
        bad = [v.path for v in member.weights if not np.all(np.isfinite(v.numpy()))]
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            found.append(f"{member.name}'s weights ({bad[0]}{more})")
    return found


def divergence_advice(kept_epoch, backup_dir):
    """What a user can do after a divergence, given the epoch kept in ``backup_dir``."""
    cures = "a lower --learning_rate or a learning-rate warm-up (--warmup_epochs)"
    if kept_epoch:
        return (f"The checkpoint of epoch {kept_epoch} (the last finite one) is kept in {backup_dir}. "
                f"To continue from it with {cures}, run the same command with those flags and "
                f"--new_optimizer_settings (a plain restart repeats the divergence exactly); to start "
                f"afresh, add --overwrite. Also check the input data for NaN/inf values and the labels.")
    return (f"No epoch finished with finite values, so no checkpoint is kept: run again with "
            f"{cures}, and check the input data for NaN/inf values and the labels.")


class TrainingBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose every save is atomic and carries the run's settings,
    data record, history and training time (module doc). Saves at the end of every
    epoch whose weights and losses are finite; stops the run otherwise
    (``TrainingDivergedError``), keeping the last finite epoch.

    Restoring builds the whole training state first (for a cohort, the members'
    optimizers on their devices and their float16 loss scalers), then refuses (a
    ``RunFileError`` naming the file) a weights file from which Keras would skip a
    variable, or whose step counts are not ``epoch x steps_per_epoch``.

    Args:
      backup_dir: the folder of the state.
      settings: the run's training settings (JSON values) to record.
      state: the state to resume from, as :func:`read_state` returns it (None: a
        fresh start).
      data: the run's data record (JSON values; ``runner.data_record``), or None.
      steps_per_epoch: the steps of an epoch, to check the restored step counts
        (None: not checked).
      optimizer_changes: ``{name: [old, new]}`` of the optimizer settings this
        session changed (``--new_optimizer_settings``), recorded with the epoch
        it resumed from.
    """

    def __init__(self, backup_dir, settings, state=None, data=None, steps_per_epoch=None,
                 optimizer_changes=None):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
        self.settings = settings
        self.state = state
        self.data = data
        self.steps_per_epoch = steps_per_epoch
        previous = state or {}
        self.history = {k: list(v) for k, v in previous.get("history", {}).items()}
        self.train_time_s = float(previous.get("train_time_s", 0.0))
        self.optimizer_changes = [dict(c) for c in previous.get("optimizer_changes", [])]
        if optimizer_changes:
            self.optimizer_changes.append({"epoch": self.initial_epoch,
                                           "changed": {k: list(v) for k, v in optimizer_changes.items()}})
        self._session_start = None

    @property
    def initial_epoch(self):
        return self.state["epoch"] if self.state else 0

    @property
    def committed_epoch(self):
        """The last epoch committed to ``backup_dir`` (0: none)."""
        return self.state["epoch"] if self.state else 0

    def on_train_begin(self, logs=None):
        self._session_start = time.monotonic()
        self._load_model()

    def _build_training_state(self):
        model = self.model
        build = getattr(model, "build_training_state", None)
        if build is not None:
            build()
        elif model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)

    def _load_model(self):
        if not self.state:
            return
        if not self.model.built:
            raise ValueError("To use TrainingBackup, the model must be built before fit().")
        self._build_training_state()
        path = os.path.join(self.backup_dir, self.state["weights"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self.model.load_weights(path)
            except (OSError, ValueError, KeyError) as e:
                raise RunFileError(
                    f"The checkpoint weights {path} cannot be loaded ({e}): {_START_AFRESH}."
                ) from None
        skipped = [str(w.message).strip() for w in caught
                   if "Skipping" in str(w.message) or "could not be loaded" in str(w.message)]
        if skipped:
            raise RunFileError(
                f"The checkpoint weights {path} do not fit this run's training state, so part of "
                f"it would restart silently ({skipped[0]}). Resume with the settings it was trained "
                f"with, or {_START_AFRESH}.")
        self._restore_extra_state(path)
        self._check_steps(path)
        self.model._initial_epoch = self.state["epoch"]

    def _restore_extra_state(self, path):
        saved = self.state.get("extra_state")
        if saved is None:
            return  # written before dropout states were recorded: they start afresh
        variables = extra_variables(self.model)
        shapes = [tuple(v.shape) for v in variables]
        if [tuple(s["shape"]) for s in saved] != shapes:
            raise RunFileError(
                f"The checkpoint {os.path.join(self.backup_dir, METADATA)} records {len(saved)} random-"
                f"state variables that do not fit this model's {len(variables)} ({path}): "
                f"{_START_AFRESH}.")
        for variable, entry in zip(variables, saved):
            variable.assign(np.asarray(entry["value"], dtype=variable.dtype).reshape(variable.shape))

    def _check_steps(self, path):
        """Every optimizer restored counts ``epoch x steps_per_epoch`` steps (a member
        whose float16 steps were skipped, fewer; a static teacher, none)."""
        if self.steps_per_epoch is None:
            return
        expected = self.state["epoch"] * self.steps_per_epoch
        counts = [("the cohort's optimizer", int(self.model.optimizer.iterations), False)]
        members = getattr(self.model, "members", ())
        for k, member in enumerate(members):
            learner = getattr(self.model, "_is_learner", lambda k: False)(k)
            optimizer = self.model.optimizer.member(k) if hasattr(self.model.optimizer, "member") else None
            if learner and optimizer is not None:
                scaled = (getattr(self.model, "_loss_scalers", None) or [None] * len(members))[k] is not None
                counts.append((f"member {k}'s optimizer", int(optimizer.iterations), scaled))
        wrong = [(name, count) for name, count, at_most in counts
                 if count > expected or (count < expected and not at_most)]
        if wrong:
            listed = ", ".join(f"{name} {count}" for name, count in wrong)
            raise RunFileError(
                f"The checkpoint weights {path} hold the optimizer state of another step "
                f"({listed}) than the {self.state['epoch']} epochs x {self.steps_per_epoch} steps "
                f"= {expected} that {os.path.join(self.backup_dir, METADATA)} records: "
                f"{_START_AFRESH}.")

    def on_epoch_end(self, epoch, logs=None):
        problems = non_finite(self.model, logs)
        if problems:
            raise TrainingDivergedError(
                f"Training diverged in epoch {epoch + 1}: {'; '.join(problems)} not finite; epoch "
                f"{epoch + 1} is not saved. {divergence_advice(self.committed_epoch, self.backup_dir)}")
        append_epoch(self.history, logs)
        super().on_epoch_end(epoch, logs)  # -> _save_model

    def _save_model(self):
        name = weights_file(self._current_epoch)
        path = os.path.join(self.backup_dir, name)
        try:
            self._write(name, path)
        except OSError as e:  # a full disk, a folder made read-only
            with contextlib.suppress(OSError):
                os.remove(path)
            kept = (f"the checkpoint of epoch {self.committed_epoch} is kept" if self.committed_epoch
                    else "no epoch was saved")
            raise OutputError(
                f"The checkpoint of epoch {self._current_epoch} cannot be written in {self.backup_dir} "
                f"({os_reason(e)}); {kept}. Make room or make the folder writable, then run the "
                f"same command to resume.") from None
        for stale in glob.glob(os.path.join(glob.escape(self.backup_dir), "*.weights.h5")):
            if os.path.basename(stale) != name:
                os.remove(stale)

    def _write(self, name, path):
        os.makedirs(self.backup_dir, exist_ok=True)
        self.model.save_weights(path, overwrite=True)
        fsync_file(path)
        elapsed = self.train_time_s + time.monotonic() - self._session_start
        extra = [{"path": v.path, "dtype": str(v.numpy().dtype), "shape": list(v.shape),
                  "value": v.numpy().reshape(-1).tolist()} for v in extra_variables(self.model)]
        state = {"format": FORMAT, "epoch": self._current_epoch, "batch": 0, "weights": name,
                 "settings": self.settings, "data": self.data, "extra_state": extra,
                 "optimizer_changes": self.optimizer_changes, "history": self.history,
                 "train_time_s": elapsed}
        atomic_write_json(os.path.join(self.backup_dir, METADATA), state)  # the commit
        self.state = state
