"""Shared by the tool tests: a tool as a module, or run as commands."""

import importlib
import os
import subprocess
import sys
import tempfile
import time
from paths import ROOT



def load_tool(name):
    """The module ``tools.NAME`` (its ``compute`` is called in process)."""
    return importlib.import_module(f"tools.{name}")


def run_processes(arg_lists, env, timeout=300):
    """Runs every ``[args]`` (``sys.executable``'s arguments) from the repository root at
    once (each process mostly imports TensorFlow: they overlap well), with ``env``, and
    returns their ``subprocess.CompletedProcess`` in order. Fails past ``timeout`` s."""
    started, deadline = [], time.monotonic() + timeout
    try:
        for args in arg_lists:
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            started.append((subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=out,
                                             stderr=err, text=True), args, out, err))
        done = []
        for proc, args, out, err in started:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            out.seek(0)
            err.seek(0)
            done.append(subprocess.CompletedProcess(args, proc.returncode, out.read(), err.read()))
        return done
    finally:
        for proc, _, out, err in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()
            err.close()


def run_cli(*commands, timeout=300):
    """Runs every ``(NAME, [flags])`` as ``python -m tools.NAME FLAGS`` (see
    :func:`run_processes`)."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return run_processes([["-m", f"tools.{name}", *flags] for name, flags in commands], env, timeout)


def check_ok(proc):
    """``proc.stdout`` of a command that must have succeeded (else its output in the failure)."""
    assert proc.returncode == 0, f"{proc.args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stdout
