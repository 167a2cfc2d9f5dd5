"""The folder of one training run (``model_dir``): its layout, results.json, reading it back.

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
  results.json   written last and atomically: config, per-epoch history (and the
                 epochs validated), final test accuracy per member and of the
                 ensemble, fit to the training images, class names, wall time.
  eval.json      Market-1501 retrieval scores, written by ``python -m dml_tf.evaluate``.

A run is finished when its results.json exists; a folder with only backup/ is an
unfinished run, resumed by training it again.
"""

import dataclasses
import os
import re
import shutil

from dml_tf.errors import RunFileError
from dml_tf.io_utils import atomic_write_json, read_json

RESULTS_FILE = "results.json"
EVAL_FILE = "eval.json"
PREDICTIONS_FILE = "test_predictions.npz"
BACKUP_DIR = "backup"
LOGS_DIR = "logs"
RETRAIN_HINT = "Train the run again: python -m dml_tf.train ... --model_dir={run_dir} --overwrite."
_MEMBER_FILE = re.compile(r"member_(\d+)\.keras")


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


# ------------------------------------------------------------------------------- writing


def save_members(model_dir, members):
    """Saves each member as ``member_K.keras`` (atomically: written aside, then renamed)."""
    for k, member in enumerate(members):
        tmp = os.path.join(model_dir, f".tmp_{member_file(k)}")
        member.save(tmp)
        os.replace(tmp, os.path.join(model_dir, member_file(k)))


def _floats(values):
    return None if values is None else [float(v) for v in values]


def make_results(config, bundle, members, history, epochs_run, test, wall_time, training_fit=()):
    """results.json's dict: ``config`` (a resolved TrainConfig), the data ``bundle``'s
    sizes and class names, its ``preprocessing`` (input shape; per-channel mean and std
    of the standardisation, None where the loader has its own), the ``members`` (Keras models, saved by :func:`save_members`),
    every epoch's ``history`` (None where an epoch has no value: validation skipped by
    ``validation_freq``) and the epochs validated, ``test`` (the cohort's test metrics),
    ``wall_time`` (s) and ``training_fit`` (per member, fit to the unaugmented training
    images: accuracy, cross-entropy, mean posterior entropy; ``runner.training_fit``)."""
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
                     "trainable": bool(member.trainable), "test_accuracy": test.get(f"accuracy_{k}")}
                    for k, member in enumerate(members)],
        "history": history,
        "epochs_run_this_session": epochs_run,
        "test": test,
        "ensemble_test_accuracy": test.get("ensemble_accuracy"),
        "wall_time_s": wall_time,
    }


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
    """Test top-1 accuracy of each member (fractions) of a results.json dict."""
    return [float(member_accuracy(results, k)) for k in range(len(results.get("members") or []))]


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
