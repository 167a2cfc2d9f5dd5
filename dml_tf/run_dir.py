"""The folder of one training run (``model_dir``): its layout, results.json, reading it back.

``model_dir`` receives:
  backup/        the training state of the last finished epoch (dml_tf/checkpoint.py),
                 written every epoch and kept until results.json exists; a run
                 started again with the same command resumes from it.
  logs/          TensorBoard: a run folder per member (member_K/train, /validation)
                 with the same tags (epoch_loss, epoch_ce, epoch_mimicry, epoch_accuracy,
                 epoch_learning_rate), so members overlay; ensemble/validation.
  member_K.keras each member as a Keras model (loads after `import dml_tf`).
  test_predictions.npz  the class each member and the ensemble predict for every
                 test image, and the labels (dml_tf.compare's paired test).
  results.json   written last and atomically: config, per-epoch history (and the
                 epochs validated), final test accuracy per member and of the
                 ensemble, fit to the training images, class names, wall time.
  eval.json      Market-1501 retrieval scores, written by ``python -m dml_tf.evaluate``
                 (with features_memberK.npz and cmc.png).
  diverged.json  written by ``dml_tf.study`` when the run diverged (NaN): the error and
                 the training settings; the study counts the run as diverged and goes on.
  .lock          held (``fcntl.flock``) by the run training in the folder, with its
                 process id: a second run there stops at once (:func:`exclusive`).

A run is finished when its results.json exists; a folder with only backup/ is an
unfinished run, resumed by training it again. ``--overwrite`` removes every file of
this list (:func:`remove_outputs`) and nothing else.
"""

import contextlib
import dataclasses
import errno
import fcntl
import os
import re
import shutil
import socket

from dml_tf.errors import OutputError, RunFileError, RunFolderBusyError
from dml_tf.io_utils import atomic_write_json, read_json

RESULTS_FILE = "results.json"
EVAL_FILE = "eval.json"
DIVERGED_FILE = "diverged.json"
PREDICTIONS_FILE = "test_predictions.npz"
BACKUP_DIR = "backup"
LOGS_DIR = "logs"
LOCK_FILE = ".lock"
RETRAIN_HINT = "Train the run again: python -m dml_tf.train ... --model_dir={run_dir} --overwrite."
_MEMBER_FILE = re.compile(r"member_(\d+)\.keras")
# The files a run (dml_tf.train, then dml_tf.evaluate) writes at the top of its folder,
# and the temporary files an interrupted atomic write of one leaves (io_utils, save_members).
_OUTPUT_FILE = re.compile(
    r"(results\.json|eval\.json|diverged\.json|test_predictions\.npz|cmc\.png|member_\d+\.keras|"
    r"features_member\d+\.npz)")
_OUTPUT_TEMP = re.compile(r"(\.tmp_member_\d+\.keras|\.(" + _OUTPUT_FILE.pattern + r").*\.tmp)")
_LOG_RUN = re.compile(r"(member_\d+|ensemble)")
_LOG_SPLITS = ("train", "validation")
_EVENTS = re.compile(r"events\.out\.tfevents\..*")


def member_file(k):
    return f"member_{k}.keras"


def results_path(model_dir):
    return os.path.join(model_dir, RESULTS_FILE)


def backup_dir(model_dir):
    return os.path.join(model_dir, BACKUP_DIR)


def is_finished(model_dir):
    """Whether ``model_dir`` holds a finished run (its results.json)."""
    return os.path.isfile(results_path(model_dir))


def is_unfinished(model_dir):
    """Whether ``model_dir`` holds an interrupted run: a backup/, no results.json."""
    return not is_finished(model_dir) and os.path.isdir(backup_dir(model_dir))


# ------------------------------------------------------------------------------- owning


@contextlib.contextmanager
def exclusive(model_dir):
    """Holds ``model_dir`` for one run: an exclusive ``fcntl.flock`` on its ``.lock``
    file, which names the holder (process id and host). A second holder gets a
    ``RunFolderBusyError`` naming the folder and the process at once. The operating
    system releases the lock when the process ends, however it ends, so a lock file left
    by a killed run blocks nothing; the file itself stays (removing it would let two
    runs lock two different files)."""
    path = os.path.join(model_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise OutputError(f"--model_dir={model_dir}: its lock file {path} cannot be opened "
                          f"({e.strerror}).") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"--model_dir={model_dir}: its lock file {path} cannot be "
                                  f"locked ({e.strerror}).") from None
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            raise RunFolderBusyError(
                f"--model_dir={model_dir} is in use by another run ({holder}, holding {path}): "
                "wait for it to finish, or use another --model_dir.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # nobody holds it now
    finally:
        os.close(fd)  # releases the lock


def remove_outputs(model_dir):
    """Removes every output a run writes in ``model_dir`` (the module doc's list, any
    K, and the temporary files of an interrupted write), and nothing else: other files,
    and folders that still hold other files, stay. ``results.json`` goes last, so that
    a kill in between leaves a folder that still says it holds a finished run."""
    for name in sorted(os.listdir(model_dir)):
        if name != RESULTS_FILE and (_OUTPUT_FILE.fullmatch(name) or _OUTPUT_TEMP.fullmatch(name)):
            os.remove(os.path.join(model_dir, name))
    logs = os.path.join(model_dir, LOGS_DIR)
    if os.path.isdir(logs):
        for run in filter(_LOG_RUN.fullmatch, os.listdir(logs)):
            for split in _LOG_SPLITS:
                folder = os.path.join(logs, run, split)
                if os.path.isdir(folder):
                    for name in filter(_EVENTS.fullmatch, os.listdir(folder)):
                        os.remove(os.path.join(folder, name))
                    _remove_if_empty(folder)
            _remove_if_empty(os.path.join(logs, run))
        _remove_if_empty(logs)
    if os.path.isdir(backup_dir(model_dir)):
        shutil.rmtree(backup_dir(model_dir))
    if os.path.exists(results_path(model_dir)):
        os.remove(results_path(model_dir))


def _remove_if_empty(folder):
    with contextlib.suppress(OSError):
        os.rmdir(folder)


# ------------------------------------------------------------------------------- writing


def save_members(model_dir, members):
    """Saves each member as ``member_K.keras`` (atomically: written aside, then renamed)."""
    for k, member in enumerate(members):
        tmp = os.path.join(model_dir, f".tmp_{member_file(k)}")
        member.save(tmp)
        os.replace(tmp, os.path.join(model_dir, member_file(k)))


def _floats(values):
    return None if values is None else [float(v) for v in values]


def make_results(config, bundle, members, history, epochs_run, test, wall_time, training_fit=(),
                 optimizer_changes=(), data=None):
    """results.json's dict: ``config`` (a resolved TrainConfig), the data ``bundle``'s
    sizes and class names, its ``preprocessing`` (input shape; per-channel mean and std
    of the standardisation, None where the loader has its own), the ``members`` (Keras
    models, saved by :func:`save_members`),
    every epoch's ``history`` (None where an epoch has no value: validation skipped by
    ``validation_freq``) and the epochs validated, ``test`` (the cohort's test metrics),
    ``wall_time`` (s) and ``training_fit`` (per member, fit to the unaugmented training
    images: accuracy, cross-entropy, mean posterior entropy; ``runner.training_fit``) and the
    ``optimizer_changes`` of resumes with ``--new_optimizer_settings`` (``[{"epoch", "changed":
    {name: [old, new]}}]``: ``config`` holds the last settings) and the ``data`` record the run
    trained on (``runner.data_record``, the one a resume is checked against; a study checks a
    reused run against it)."""
    return {
        "config": dataclasses.asdict(config),
        "dataset": {"name": bundle.name, "num_classes": bundle.num_classes,
                    "train_size": bundle.train_size, "test_size": bundle.test_size,
                    "class_names": bundle.extras.get("class_names")},
        "preprocessing": {"input_shape": list(bundle.input_shape),
                          "mean": _floats(bundle.extras.get("mean")), "std": _floats(bundle.extras.get("std"))},
        "validation_epochs": validation_epochs(history),
        "training_fit": list(training_fit),
        "members": [{"index": k, "net": config.nets[k], "name": member.name, "file": member_file(k),
                     "trainable": bool(member.trainable), "parameters": _parameters(member),
                     "test_accuracy": test.get(f"accuracy_{k}")}
                    for k, member in enumerate(members)],
        "history": history,
        "epochs_run_this_session": epochs_run,
        "test": test,
        "ensemble_test_accuracy": test.get("ensemble_accuracy"),
        "wall_time_s": wall_time,
        "optimizer_changes": list(optimizer_changes),
        "data": data,
    }


def _parameters(member):
    count = getattr(member, "count_params", None)
    return None if count is None else int(count())


def validation_epochs(history):
    """The epochs (1-based) whose validation metrics ``history`` holds."""
    values = [v for k, v in history.items() if k.startswith("val_")]
    if not values:
        return []
    return [e + 1 for e in range(len(values[0])) if any(v[e] is not None for v in values)]


def write_results(model_dir, results):
    """Writes results.json atomically, which finishes the run: its backup/ goes."""
    atomic_write_json(results_path(model_dir), results)
    shutil.rmtree(backup_dir(model_dir), ignore_errors=True)  # the run is safe in results.json now


# ------------------------------------------------------------------------------- reading


def read_results(model_dir):
    """results.json of the finished run in ``model_dir``; a ``RunFileError`` (a ValueError)
    naming the folder when there is none, or the file when it is damaged."""
    if not os.path.isdir(model_dir):
        raise RunFileError(f"Run folder {model_dir} does not exist.")
    if not is_finished(model_dir):
        raise RunFileError(f"{model_dir} holds no {RESULTS_FILE}: not a finished dml_tf.train run.")
    return read_json(results_path(model_dir), RETRAIN_HINT.format(run_dir=model_dir))


def write_diverged(model_dir, error, settings):
    """Records (atomically) that the run in ``model_dir`` diverged: ``error`` (the message)
    and the training ``settings`` it diverged with."""
    atomic_write_json(os.path.join(model_dir, DIVERGED_FILE), {"error": error, "settings": settings})


def read_diverged(model_dir):
    """The :func:`write_diverged` record of ``model_dir``, None when there is none."""
    path = os.path.join(model_dir, DIVERGED_FILE)
    return read_json(path, "Delete it to train the run again.") if os.path.isfile(path) else None


def read_eval(model_dir, remedy="Delete it to evaluate the run again."):
    """eval.json of ``model_dir`` (``python -m dml_tf.evaluate``), None when there is none;
    ``RunFileError`` naming it when damaged."""
    path = os.path.join(model_dir, EVAL_FILE)
    return read_json(path, remedy) if os.path.isfile(path) else None


def member_entries(results):
    """The ``"members"`` of a results.json dict as new dicts, with the defaults filled in:
    ``"index"`` = position in the list, ``"file"`` = ``member_{index}.keras``."""
    members = []
    for k, entry in enumerate(results.get("members") or []):
        entry = dict(entry)
        entry.setdefault("index", k)
        entry["file"] = entry.get("file") or member_file(entry["index"])
        members.append(entry)
    return members


def member_accuracy(results, k):
    """Test top-1 accuracy (fraction) of member ``k`` (the entry with ``"index"`` k, by
    default its position) of a results.json dict: its ``test_accuracy``, else
    ``test["accuracy_{k}"]``; None when neither is there."""
    for entry in member_entries(results):
        if entry["index"] == k and entry.get("test_accuracy") is not None:
            return float(entry["test_accuracy"])
    acc = (results.get("test") or {}).get(f"accuracy_{k}")
    return None if acc is None else float(acc)


def member_accuracies(results):
    """Test top-1 accuracy of each member (fractions) of a results.json dict; None for a
    member without one (a dataset with no classification test split: Market-1501)."""
    return [member_accuracy(results, k) for k in range(len(results.get("members") or []))]


def frozen_members(results):
    """Per member of a results.json dict, whether it was frozen (a distill run's teacher:
    ``"trainable": false``; where a run does not record it, the first ``len(teacher)``
    members of a ``mode=distill`` run)."""
    config = results.get("config") or {}
    teachers = len(config.get("teacher") or ()) if config.get("mode") == "distill" else 0
    return [not entry["trainable"] if "trainable" in entry else entry["index"] < teachers
            for entry in member_entries(results)]


def data_record(results):
    """The data record (``runner.data_record``) of a results.json dict; for a run written
    before results.json recorded it, what its ``"dataset"`` tells (no label fingerprints)."""
    if results.get("data") is not None:
        return results["data"]
    dataset = results.get("dataset") or {}
    known = {"dataset": dataset.get("name"), "train_images": dataset.get("train_size"),
             "test_images": dataset.get("test_size"), "classes": dataset.get("num_classes")}
    return {k: v for k, v in known.items() if v is not None}


def list_members(model_dir, results=None):
    """Member entries ``{"index", "net", "file", "path", ...}`` of a run: those ``results``
    lists, or (``results`` None) the ``member_K.keras`` files found, by index."""
    if results is not None:
        members = member_entries(results)
    else:
        found = (_MEMBER_FILE.fullmatch(name) for name in os.listdir(model_dir))
        members = sorted(({"index": int(m.group(1)), "net": None, "file": m.group(0)} for m in found if m),
                         key=lambda m: m["index"])
    for entry in members:
        entry["path"] = os.path.join(model_dir, entry["file"])
    return members


def read_run(run_dir):
    """``(results dict, [member entries with "index", "file", "path"])`` of a finished
    ``dml_tf.train`` run.

    Raises ValueError (``RunFileError``, message for the user) when the folder,
    results.json or a member file is missing, or results.json is damaged.
    """
    results = read_results(run_dir)
    members = list_members(run_dir, results)
    for entry in members:
        if not os.path.isfile(entry["path"]):
            raise RunFileError(f"Member file {entry['path']} listed in {results_path(run_dir)} is missing.")
    if not members:
        raise RunFileError(f"{results_path(run_dir)} lists no members.")
    return results, members


def load_member(path, flag=None):
    """A saved member, loaded without its training configuration.

    A file that is not a Keras model (not a ``.keras`` zip archive, no
    ``config.json`` in it, or unreadable) is a ``RunFileError`` naming it
    (as ``flag`` when given, e.g. ``"--teacher"``) and what is wrong.
    """
    import zipfile

    import keras

    import dml_tf.nets  # noqa: F401  (registers the custom layers of the paper's nets)

    path = os.fspath(path)
    name = f"{flag} file {path}" if flag else f"Model file {path}"
    if not os.path.isfile(path):
        raise RunFileError(f"{name} does not exist.")
    if path.endswith(".keras"):
        if not zipfile.is_zipfile(path):
            raise RunFileError(f"{name} is not a Keras model: a .keras file is a zip archive "
                               "(written by model.save), this one is not (damaged or another format).")
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                raise RunFileError(f"{name} is not a Keras model: the archive has no config.json "
                                   "(damaged, or not written by model.save).")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - any failure inside Keras is a bad file
        raise RunFileError(f"{name} cannot be loaded as a Keras model: {type(e).__name__}: {e}") from None
