r"""Throughput of DML against independent training, and of the input pipeline.

  python tools/benchmark.py --output=bench.json                 # resnet32 x2, batch 64
  python tools/benchmark.py --quick --output=/tmp/bench.json    # tiny_cnn, a few steps

In one process, on random 32x32x3 data, it times (median over --steps timed steps,
after --warmup untimed ones that trace and compile):

  independent       each member trained alone as a plain Keras model, one after the
                    other; its step time is the SUM of the members' median step times
                    (the cost of training the K networks independently);
  dml_simultaneous  the MutualLearningModel step, update="simultaneous";
  dml_sequential    the MutualLearningModel step, update="sequential" (Algorithm 1);

each without and with XLA (jit_compile), and the input pipeline alone
(dml_tf.data.pipeline.train_dataset + cifar_train_augment on random uint8 images).
Steps are run with ``train_on_batch`` on a batch already in memory, so the model
timings exclude input. It prints a table (images/s, ratio to the independent cost at
the same XLA setting, and the pipeline's speed over the fastest DML step's
consumption) with the targets (not asserted), and writes the figures as JSON.

Memory: ``peak_rss_mib`` is the process's peak resident set size so far
(resource.getrusage ru_maxrss), read after each measurement: it only grows, so it
bounds, rather than isolates, each configuration's memory.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gc  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("nets", ["resnet32", "resnet32"], "Cohort members (K = their number).")
flags.DEFINE_integer("batch_size", 64, "Batch size of every step.")
flags.DEFINE_integer("num_classes", 100, "Classes of the random labels.")
flags.DEFINE_integer("steps", 10, "Timed steps per configuration (median reported).")
flags.DEFINE_integer("warmup", 2, "Untimed steps first (tracing, XLA compilation).")
flags.DEFINE_list("jit_compile", ["false", "true"], "XLA settings to measure.")
flags.DEFINE_integer("pipeline_images", 4096, "Random images in the input-pipeline benchmark.")
flags.DEFINE_boolean("quick", False, "A tiny run: tiny_cnn x2, batch 16, 3 steps, no XLA "
                     "unless --jit_compile is given explicitly.")
flags.DEFINE_string("output", "benchmark.json", "Where the JSON results go.")

TARGETS = {
    "dml_simultaneous": 1.05,  # step time / independent step time, at most
    "dml_sequential": 1.25,
    "pipeline_over_dml": 5.0,  # pipeline images/s / fastest DML images/s, at least
}


def peak_rss_mib():
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _settings():
    settings = {
        "nets": list(FLAGS.nets), "batch_size": FLAGS.batch_size,
        "num_classes": FLAGS.num_classes, "steps": FLAGS.steps, "warmup": FLAGS.warmup,
        "jit_compile": [v.lower() in ("1", "true", "yes") for v in FLAGS.jit_compile],
        "pipeline_images": FLAGS.pipeline_images, "quick": FLAGS.quick,
    }
    if FLAGS.quick:
        if not FLAGS["nets"].present:
            settings["nets"] = ["tiny_cnn", "tiny_cnn"]
        if not FLAGS["batch_size"].present:
            settings["batch_size"] = 16
        if not FLAGS["steps"].present:
            settings["steps"] = 3
        if not FLAGS["warmup"].present:
            settings["warmup"] = 1
        if not FLAGS["num_classes"].present:
            settings["num_classes"] = 10
        if not FLAGS["jit_compile"].present:
            settings["jit_compile"] = [False]
        if not FLAGS["pipeline_images"].present:
            settings["pipeline_images"] = 256
    return settings


def _time_steps(step, warmup, steps):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def _members(settings):
    from dml_tf import nets as dml_nets
    return [dml_nets.build(net, num_classes=settings["num_classes"], input_shape=(32, 32, 3),
                           seed=k, name=f"{net}_{k}")
            for k, net in enumerate(settings["nets"])]


def _sgd():
    import keras
    return keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)


def bench_independent(settings, x, y, jit):
    import keras
    member_times = []
    for member in _members(settings):
        member.compile(optimizer=_sgd(),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       jit_compile=jit)
        median, _ = _time_steps(lambda: member.train_on_batch(x, y), settings["warmup"],
                                settings["steps"])
        member_times.append(median)
    return {"step_s": sum(member_times), "member_step_s": member_times}


def bench_dml(settings, x, y, jit, update):
    from dml_tf.cohort import MutualLearningModel
    cohort = MutualLearningModel(_members(settings), update=update)
    cohort.compile(optimizer=_sgd(), jit_compile=jit)
    median, _ = _time_steps(lambda: cohort.train_on_batch(x, y), settings["warmup"],
                            settings["steps"])
    return {"step_s": median}


def bench_pipeline(settings):
    import numpy as np
    from dml_tf.data import augment, pipeline
    rng = np.random.default_rng(0)
    n, batch = settings["pipeline_images"], settings["batch_size"]
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, settings["num_classes"], size=(n,)).astype(np.int32)
    mean, std = pipeline.channel_stats(images)
    dataset = pipeline.train_dataset(images, labels, batch, seed=0, mean=mean, std=std,
                                     augment_fn=augment.cifar_train_augment).repeat()
    iterator = iter(dataset)
    for _ in range(max(2, settings["warmup"])):
        next(iterator)
    num_batches = max(4, n // batch)
    start = time.perf_counter()
    count = 0
    for _ in range(num_batches):
        images_batch, _ = next(iterator)
        count += int(images_batch.shape[0])
    elapsed = time.perf_counter() - start
    return {"images_per_s": count / elapsed, "batches": num_batches, "seconds": elapsed}


def run_benchmark(settings, log=print):
    import keras
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    batch = settings["batch_size"]
    x = tf.constant(rng.normal(size=(batch, 32, 32, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, settings["num_classes"], size=(batch,)).astype(np.int32))

    rows = []
    for jit in settings["jit_compile"]:
        measured = {}
        for name, fn in (("independent", lambda: bench_independent(settings, x, y, jit)),
                         ("dml_simultaneous", lambda: bench_dml(settings, x, y, jit,
                                                                "simultaneous")),
                         ("dml_sequential", lambda: bench_dml(settings, x, y, jit,
                                                              "sequential"))):
            log(f"timing {name} (jit_compile={jit}) ...")
            try:
                row = fn()
                row["error"] = None
            except Exception as e:  # XLA may be unavailable for some op on some device
                row = {"step_s": None, "error": f"{type(e).__name__}: {e}"[:500]}
            row.update(name=name, jit_compile=jit, peak_rss_mib=peak_rss_mib())
            row["images_per_s"] = batch / row["step_s"] if row["step_s"] else None
            measured[name] = row
            rows.append(row)
            keras.backend.clear_session()
            gc.collect()
        base = measured["independent"]["step_s"]
        for row in measured.values():
            row["ratio_to_independent"] = (row["step_s"] / base
                                           if row["step_s"] and base else None)

    log("timing the input pipeline ...")
    pipe = bench_pipeline(settings)
    pipe["peak_rss_mib"] = peak_rss_mib()
    dml_speeds = [r["images_per_s"] for r in rows
                  if r["name"].startswith("dml_") and r["images_per_s"]]
    fastest = max(dml_speeds) if dml_speeds else None
    pipe["over_fastest_dml_consumption"] = pipe["images_per_s"] / fastest if fastest else None

    return {
        "settings": settings,
        "host": {"platform": platform.platform(), "python": platform.python_version(),
                 "tensorflow": tf.__version__, "keras": keras.__version__,
                 "cpu_count": os.cpu_count(),
                 "devices": [d.name for d in tf.config.list_logical_devices()]},
        "rows": rows,
        "pipeline": pipe,
        "targets": TARGETS,
        "peak_rss_mib": peak_rss_mib(),
        "memory_note": "peak_rss_mib: resource.getrusage(RUSAGE_SELF).ru_maxrss, the "
                       "process's peak resident set so far (monotonic across the run).",
    }


def format_table(results):
    batch = results["settings"]["batch_size"]
    lines = [f"nets={','.join(results['settings']['nets'])} batch={batch} "
             f"steps={results['settings']['steps']} (median step; model steps on an "
             f"in-memory batch)",
             f"{'configuration':<20}{'XLA':<6}{'step ms':>10}{'images/s':>11}"
             f"{'x indep.':>10}{'target':>9}{'peak RSS MiB':>14}"]
    for row in results["rows"]:
        if row["step_s"] is None:
            lines.append(f"{row['name']:<20}{str(row['jit_compile']):<6}  failed: {row['error']}")
            continue
        target = TARGETS.get(row["name"])
        ratio = row["ratio_to_independent"]
        lines.append(
            f"{row['name']:<20}{str(row['jit_compile']):<6}{row['step_s'] * 1e3:>10.1f}"
            f"{row['images_per_s']:>11.1f}{'-' if ratio is None else f'{ratio:.3f}':>10}"
            f"{'<= ' + str(target) if target else '':>9}{row['peak_rss_mib']:>14.0f}")
    pipe = results["pipeline"]
    over = pipe["over_fastest_dml_consumption"]
    lines.append(
        f"{'input pipeline':<26}{'':>10}{pipe['images_per_s']:>11.1f}"
        f"{'-' if over is None else f'{over:.2f}':>10}"
        f"{'>= ' + str(TARGETS['pipeline_over_dml']):>9}{pipe['peak_rss_mib']:>14.0f}")
    lines.append("x indep.: step time over the independent cost (sum of the members' "
                 "plain-Keras steps, same XLA setting); for the pipeline: its images/s over "
                 "the fastest DML step's. Targets are printed, not asserted.")
    lines.append(results["memory_note"])
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from dml_tf.io_utils import atomic_write_json
    settings = _settings()
    results = run_benchmark(settings)
    print(format_table(results))
    atomic_write_json(FLAGS.output, results)
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
