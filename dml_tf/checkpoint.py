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
* ``train_time_s``: training wall time of the finished epochs, over all sessions.

A kill at any instant therefore leaves the last committed epoch restorable: before
the commit the previous metadata names the previous (untouched) weights file; after
it the new one. Older weights files are removed after the commit. The folder is
kept when ``fit`` ends (``delete_checkpoint=False``); the runner removes it once
``results.json`` is written.
"""

import glob
import os
import time

import keras
import numpy as np

from dml_tf.config import FIELDS, ConfigError, current_spelling
from dml_tf.errors import RunFileError
from dml_tf.io_utils import atomic_write_json, fsync_file, read_json

METADATA = "training_metadata.json"
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
    state.setdefault("weights", _LEGACY_WEIGHTS)  # written by keras' BackupAndRestore
    state.setdefault("history", {})
    state.setdefault("train_time_s", 0.0)
    weights = os.path.join(backup_dir, state["weights"])
    if not os.path.isfile(weights):
        raise RunFileError(f"{path} names the weights file {weights}, which is missing. {remedy}")
    return state


def settings_differences(saved, current, defaults):
    """``[(name, saved value, current value)]`` of the training settings that differ.

    A setting the checkpoint does not record (added to ``TrainConfig`` after it was
    written) counts as its ``defaults`` value; a value recorded in an old spelling
    (``--semi=labelled``) counts as today's.
    """
    missing = object()
    differences = []
    for name, value in current.items():
        old = saved.get(name, missing)
        if old is missing:
            old = defaults.get(name, missing)
        elif name in FIELDS:
            old = current_spelling(name, old)
        if old != value:
            differences.append((name, None if old is missing else old, value))
    return differences


def check_settings(state, current, defaults, backup_dir):
    """Raises ``ConfigError`` unless the checkpoint's training settings equal
    ``current``; the message names each differing flag, old and new."""
    differences = settings_differences(state.get("settings", {}), current, defaults)
    if not differences:
        return
    listed = "; ".join(f"--{name}: {_flag(old)} in the checkpoint, {_flag(new)} now"
                       for name, old, new in differences)
    raise ConfigError(
        f"{backup_dir} holds an interrupted run (epoch {state['epoch']}) trained with other "
        f"settings: {listed}. Resume with the original settings, or {_START_AFRESH}.")


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


class TrainingBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose every save is atomic and carries the run's settings,
    history and training time (module doc). Saves at the end of every epoch.

    Args:
      backup_dir: the folder of the state.
      settings: the run's training settings (JSON values) to record.
      state: the state to resume from, as :func:`read_state` returns it (None: a
        fresh start).
    """

    def __init__(self, backup_dir, settings, state=None):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
        self.settings = settings
        self.state = state
        previous = state or {}
        self.history = {k: list(v) for k, v in previous.get("history", {}).items()}
        self.train_time_s = float(previous.get("train_time_s", 0.0))
        self._session_start = None

    @property
    def initial_epoch(self):
        return self.state["epoch"] if self.state else 0

    def on_train_begin(self, logs=None):
        self._session_start = time.monotonic()
        self._load_model()

    def _load_model(self):
        if not self.state:
            return
        if not self.model.built:
            raise ValueError("To use TrainingBackup, the model must be built before fit().")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        path = os.path.join(self.backup_dir, self.state["weights"])
        try:
            self.model.load_weights(path)
        except (OSError, ValueError, KeyError) as e:
            raise RunFileError(
                f"The checkpoint weights {path} cannot be loaded ({e}): {_START_AFRESH}."
            ) from None
        self.model._initial_epoch = self.state["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        append_epoch(self.history, logs)
        super().on_epoch_end(epoch, logs)  # -> _save_model

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        name = weights_file(self._current_epoch)
        path = os.path.join(self.backup_dir, name)
        self.model.save_weights(path, overwrite=True)
        fsync_file(path)
        elapsed = self.train_time_s + time.monotonic() - self._session_start
        state = {"epoch": self._current_epoch, "batch": 0, "weights": name,
                 "settings": self.settings, "history": self.history, "train_time_s": elapsed}
        atomic_write_json(os.path.join(self.backup_dir, METADATA), state)  # the commit
        self.state = state
        for stale in glob.glob(os.path.join(glob.escape(self.backup_dir), "*.weights.h5")):
            if os.path.basename(stale) != name:
                os.remove(stale)
