"""Atomic file output: a reader never sees a half-written result file."""

import json
import os
import tempfile


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
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _to_builtin(obj):
    """json.dumps ``default=`` hook: NumPy scalars and arrays become Python values."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path, obj):
    """Writes ``obj`` as indented JSON to ``path`` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_to_builtin)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def atomic_savefig(figure, path, **kwargs):
    """Saves a matplotlib figure as PNG to ``path`` atomically."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **kwargs)
    atomic_write_bytes(path, buffer.getvalue())
