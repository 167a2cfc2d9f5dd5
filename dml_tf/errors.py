"""Typed exceptions raised by dml_tf.

Every error a user can cause with bad input is one of these (or a plain
``ValueError`` for bad arguments to a constructor), with a message that names the
input and what was expected.
"""


def check_choice(name, value, choices):
    """``ValueError`` ("Unknown NAME 'value'; expected one of CHOICES.") unless ``value``
    is one of ``choices``: the constructors' check of a string option."""
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {choices}.")


class DMLError(Exception):
    """Base class of dml_tf's own errors."""


class EnvironmentSettingError(DMLError, ValueError):
    """An environment variable that dml_tf reads (``DML_TF_BATCH_NORM``) has a value it
    does not accept."""


class DataError(DMLError, ValueError):
    """A dataset on disk is missing, incomplete or malformed."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset could not be downloaded nor found locally."""


class TrainingDivergedError(DMLError, RuntimeError):
    """A loss became NaN or infinite during training."""


class RunFileError(DMLError, ValueError):
    """A file of a training run (checkpoint, results, saved model) is missing,
    damaged or not what it should be."""


class OutputError(DMLError, ValueError):
    """An output folder cannot be created or written."""


class RunFolderBusyError(DMLError, RuntimeError):
    """A run folder is held by another run (its lock file is locked)."""
