"""Quiet start-up: TensorFlow's import-time notices are not the user's business.

Imported first by ``dml_tf/__init__.py``, so before TensorFlow, by every entry point
(``python -m dml_tf.train`` / ``evaluate`` / ``compare``, the tools, ``import dml_tf``).

* ``TF_CPP_MIN_LOG_LEVEL`` defaults to 2: TensorFlow's C++ INFO and WARNING lines are
  off, its errors stay.
* TensorFlow is imported (unless it was already) and its devices listed (where a CUDA
  build tries ``cuInit``) with file descriptor 2 captured; every captured line is then written back except
  these start-up notices: absl's "All log messages before absl::InitializeLog() ..."
  banner, the oneDNN and CPU-instruction notices (oneDNN stays on), and, on a machine
  without an NVIDIA driver only, "Could not find cuda drivers" and "failed call to
  cuInit" (a CPU machine has no GPU to find; where a driver is present they mean a
  broken GPU set-up and are kept).
* tensorflow-datasets' "Variant folder ... has no dataset_info.json" warning (a folder
  of an unprepared dataset) is dropped: the CIFAR loader then says what is missing.
* Keras' DeprecationWarnings about NumPy 2's ``__array__(copy=...)``, raised inside
  Keras, and its warning that ``fit``'s default ``shuffle=True`` does not apply to a
  ``tf.data.Dataset`` (whose pipeline shuffles) are ignored.

``TF_CPP_MIN_LOG_LEVEL=0`` shows everything (no line is dropped).
"""

import logging
import os
import re
import sys
import tempfile
import warnings

_START_UP_NOTICES = (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"\] oneDNN custom operations are on\.",
    r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    r"^To enable the following instructions: .* rebuild TensorFlow",
)
_NO_GPU_NOTICES = (
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
    r"failed call to cuInit",
)
_NVIDIA_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg")


def has_nvidia_driver():
    """Whether an NVIDIA driver is loaded (Linux, or WSL's GPU bridge)."""
    return any(os.path.exists(path) for path in _NVIDIA_DRIVER_PATHS)


def notice_pattern(gpu_driver):
    """The regular expression matching the start-up lines that are dropped."""
    notices = _START_UP_NOTICES + (() if gpu_driver else _NO_GPU_NOTICES)
    return re.compile("|".join(notices))


def filter_lines(text, pattern):
    """``text`` without its lines matched by ``pattern``."""
    return "".join(line for line in text.splitlines(keepends=True) if not pattern.search(line))


def run_with_filtered_stderr(function, pattern):
    """Calls ``function()`` with file descriptor 2 redirected to a temporary file, then
    writes the captured output, less the lines ``pattern`` matches, to stderr."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no usable stderr: nothing to filter
        return function()
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            return function()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = filter_lines(capture.read().decode("utf-8", "replace"), pattern)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _DropUnpreparedTfdsFolder(logging.Filter):
    """Drops tensorflow-datasets' warning about a dataset folder without dataset_info.json."""

    def filter(self, record):
        return record.msg != "Variant folder %s has no %s"


def _import_tensorflow():
    import tensorflow as tf

    tf.config.list_physical_devices()


def quiet():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"keras\..*")
    warnings.filterwarnings("ignore", category=UserWarning, message=re.escape(
        "`shuffle=True` was passed, but will be ignored since the data `x` was provided as a "
        "tf.data.Dataset"))
    if os.environ["TF_CPP_MIN_LOG_LEVEL"].strip() == "0":
        return
    logging.getLogger("absl").addFilter(_DropUnpreparedTfdsFolder())
    # Where TensorFlow was imported earlier its import notices are out already; the
    # device listing (cuInit) may still be to come.
    run_with_filtered_stderr(_import_tensorflow, notice_pattern(has_nvidia_driver()))


quiet()
