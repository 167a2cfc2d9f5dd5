r"""Where a training step's time goes: TensorFlow's profiler, summed per op type.

  python -m tools.profile_step                              # keras, dml_simultaneous, dml_sequential
  python -m tools.profile_step --configurations=dml_sequential --steps=5 --output=prof.json

For each configuration (as ``tools.benchmark`` builds them, on one random in-memory
batch): ``keras`` is one member trained alone by a plain compiled Keras model,
``dml_simultaneous`` and ``dml_sequential`` the cohort's step. After --warmup untimed
steps, --steps steps run under ``tf.profiler.experimental``; the trace's op events
(XPlane, the file TensorBoard's profile plugin reads) are summed per op type, e.g.
``_MklNativeConv2DBackpropFilter``, over every executor thread. It prints, per
configuration, the wall time of a step, the op time per step (over all threads, so it
can exceed the wall time when ops run side by side), and the op types that take
most of it; the JSON holds every op type. The first line (and the JSON's ``cpu``) names
the CPU, its vector extensions and any instruction-set cap (``tools/_cpu.py``).
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if __name__ == "__main__" and not __package__:  # started as python tools/NAME.py
    sys.exit(f"Run it from the repository root as: python -m tools.{os.path.basename(__file__)[:-3]}")

import collections  # noqa: E402
import glob  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
CONFIGURATIONS = ("keras", "dml_simultaneous", "dml_sequential")


def define_flags():
    flags.DEFINE_list("configurations", list(CONFIGURATIONS), f"Any of {', '.join(CONFIGURATIONS)}.")
    flags.DEFINE_list("nets", ["resnet32", "resnet32"], "Cohort members (keras: the first).")
    flags.DEFINE_integer("batch_size", 64, "Batch size of every step.")
    flags.DEFINE_integer("num_classes", 100, "Classes of the random labels.")
    flags.DEFINE_integer("steps", 3, "Profiled steps per configuration.")
    flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing).")
    flags.DEFINE_boolean("jit_compile", False, "XLA for every configuration.")
    flags.DEFINE_integer("top", 12, "Op types printed per configuration.")
    flags.DEFINE_string("output", None, "Where the JSON goes (none: not written).")


def op_type(event_name):
    """``scope/name:Type`` -> ``Type`` (TensorFlow's op events); None for other events
    (the executor's and eager runtime's envelopes, e.g. ``ExecutorState::Process``)."""
    if ":" not in event_name or "::" in event_name or event_name.startswith("Eager"):
        return None
    return event_name.rsplit(":", 1)[1] or None


def op_time_by_type(xspace):
    """Seconds per op type summed over every line of the host plane of an ``XSpace``."""
    totals = collections.Counter()
    for plane in xspace.planes:
        if not plane.name.startswith("/host:"):
            continue
        for line in plane.lines:
            for event in line.events:
                kind = op_type(plane.event_metadata[event.metadata_id].name)
                if kind is not None:
                    totals[kind] += event.duration_ps * 1e-12
    return totals


def read_xspace(logdir):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    paths = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    if not paths:
        raise RuntimeError(f"The profiler wrote no trace under {logdir}.")
    xspace = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as f:
        xspace.ParseFromString(f.read())
    return xspace


def profile(step, warmup, steps):
    """(wall seconds per step, {op type: seconds per step}) of ``step()``."""
    import tensorflow as tf
    for _ in range(warmup):
        step()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        totals = op_time_by_type(read_xspace(logdir))
    return wall / steps, {kind: seconds / steps for kind, seconds in totals.items()}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    unknown = sorted(set(FLAGS.configurations) - set(CONFIGURATIONS))
    if unknown:
        raise app.UsageError(f"--configurations: unknown {', '.join(unknown)}; "
                             f"expected any of {', '.join(CONFIGURATIONS)}.")
    import numpy as np
    import tensorflow as tf

    from dml_tf.io_utils import atomic_write_json
    from tools import _cpu, benchmark

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(FLAGS.batch_size, 32, 32, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, FLAGS.num_classes, size=(FLAGS.batch_size,)).astype(np.int32))
    settings = {"nets": FLAGS.nets, "num_classes": FLAGS.num_classes}
    cpu = _cpu.describe()
    print(_cpu.header(cpu))
    results = {}
    for name in FLAGS.configurations:
        step = benchmark.make_step(name, settings, x, y, FLAGS.jit_compile)
        wall, by_type = profile(step, FLAGS.warmup, FLAGS.steps)
        ops = sum(by_type.values())
        results[name] = {"wall_s_per_step": wall, "op_s_per_step": ops,
                         "op_s_per_step_by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1]))}
        print(f"{name}: {wall * 1e3:.1f} ms per step (wall), ops {ops * 1e3:.1f} ms (all threads)")
        for kind, seconds in list(results[name]["op_s_per_step_by_type"].items())[:FLAGS.top]:
            print(f"  {kind:<44}{seconds * 1e3:>9.1f} ms {100 * seconds / ops:>6.1f}%")
    if FLAGS.output:
        atomic_write_json(FLAGS.output, {"settings": {**settings, "batch_size": FLAGS.batch_size,
                                                      "jit_compile": FLAGS.jit_compile},
                                         "cpu": cpu, "configurations": results})
        print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    from dml_tf import cli

    define_flags()
    cli.run(main)
