"""File output that never leaves a half-written file, and reading it back with named errors.

A reader never sees a half-written result file: it is written to a temporary file
in the same folder and renamed into place (atomic on POSIX), so a kill at any
instant leaves the old file or the new one. The file then gets the user's normal
permissions (``0o666`` less the umask), like any file the user creates.
"""

import json
import math
import os
import tempfile

from dml_tf.errors import OutputError, RunFileError


def _umask():
    """The process umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data):
    """Writes ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp creates it 0600
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_output(path, write):
    """``write(tmp)`` writes a file or a folder at a temporary path beside ``path`` (same
    name, so the same suffix, after ``.tmp_``), which then replaces ``path``: a file by an
    atomic rename, a folder by two (the old one is moved aside, then removed). A failure
    leaves ``path`` as it was and no temporary file."""
    import shutil

    def remove(p):
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        elif os.path.lexists(p):
            os.remove(p)

    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp, old = os.path.join(parent, f".tmp_{name}"), os.path.join(parent, f".old_{name}")
    try:
        for leftover in (tmp, old):
            remove(leftover)
        write(tmp)
        if os.path.isdir(tmp) and os.path.isdir(path):
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
        else:
            os.replace(tmp, path)
    finally:
        for leftover in (tmp, old):
            remove(leftover)


def fsync_file(path):
    """Flushes a file written by someone else (e.g. h5py) to disk before it is relied on."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain(obj):
    """``obj`` with NumPy values as Python ones and NaN/inf as None (strict JSON has no NaN)."""
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        obj = obj.tolist()
    elif hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def atomic_write_json(path, obj):
    """Writes ``obj`` as indented, strict JSON to ``path`` atomically; NaN and
    infinite numbers are written as ``null``."""
    text = json.dumps(_plain(obj), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def read_json(path, remedy):
    """The JSON object (dict) in ``path``; a missing, empty or damaged file is a
    ``RunFileError`` naming it and saying what to do (``remedy``)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise RunFileError(f"{path} cannot be read ({e.strerror}). {remedy}") from None
    if not text.strip():
        raise RunFileError(f"{path} is empty (damaged). {remedy}")
    try:
        value = json.loads(text)
    except ValueError as e:
        raise RunFileError(f"{path} is not valid JSON ({e}). {remedy}") from None
    if not isinstance(value, dict):
        raise RunFileError(f"{path} holds a JSON {type(value).__name__}, not an object. {remedy}")
    return value


def os_reason(error):
    """Why an ``OSError`` happened, in a few words on one line: its ``strerror`` (h5py's
    errors carry the system's message inside their text)."""
    import re

    found = re.search(r"error message = '([^']+)'", str(error))
    if found:
        return found.group(1)
    return " ".join(str(error.strerror or error).split())


def make_writable_dir(path, label):
    """Creates folder ``path`` if needed and checks that files can be written in it;
    ``OutputError`` naming ``label=path`` otherwise. Returns the absolute path."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{label}={path} is a file, not a folder.")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write_test")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OutputError(f"{label}={path} is not writable ({e.strerror}).") from None
    return path


def atomic_savefig(figure, path, **kwargs):
    """Saves a matplotlib figure as PNG to ``path`` atomically."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **kwargs)
    atomic_write_bytes(path, buffer.getvalue())
