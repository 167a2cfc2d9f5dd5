r"""Throughput of DML against independent training, and of the input pipeline.

  python -m tools.benchmark --output=bench.json                 # resnet32 x2, batch 64
  python -m tools.benchmark --quick --output=/tmp/bench.json    # tiny_cnn, a few steps

In one process, on random 32x32x3 data, it builds three configurations:

  independent       each member trained alone as a plain Keras model, one after the
                    other (the cost of training the K networks independently);
  dml_simultaneous  the MutualLearningModel step, update="simultaneous";
  dml_sequential    the MutualLearningModel step, update="sequential" (Algorithm 1);

runs --warmup untimed steps of each (tracing, XLA compilation) and then --steps
rounds; every round times one step of each configuration in turn (independent: one
step of every member, summed), rotating which goes first, so that a busy spell of a
shared machine slows all of them alike. A configuration's step time is the median
over rounds; its ratio to the independent cost is the median over rounds of the
per-round ratio (paired, so drift between rounds cancels). This is done without and
with XLA (jit_compile), then the input pipeline alone is timed
(dml_tf.data.pipeline.train_dataset + cifar_train_augment on random uint8 images).
Model steps are run with ``train_on_batch`` on a batch already in memory, so they
exclude input. It prints a table (images/s, ratio to the independent cost at the
same XLA setting, the pipeline's speed over the fastest DML step's consumption) with
the targets (printed, not asserted), and writes the figures as JSON.

Memory: ``peak_rss_mib`` is the process's peak resident set size so far
(resource.getrusage ru_maxrss), read after each measurement: it only grows, so it
bounds, rather than isolates, each configuration's memory; ``rss_growth_mib`` is how
much the resident set grew while one XLA setting's three configurations were built,
warmed up and timed (the same value on its three rows).
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if __name__ == "__main__" and not __package__:  # started as python tools/NAME.py
    sys.exit(f"Run it from the repository root as: python -m tools.{os.path.basename(__file__)[:-3]}")

import copy  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

from tools._common import peak_rss_mib  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """The command-line flags (defined by ``main`` only, so importing defines none)."""
    flags.DEFINE_list("nets", ["resnet32", "resnet32"], "Cohort members (K = their number).")
    flags.DEFINE_integer("batch_size", 64, "Batch size of every step.")
    flags.DEFINE_integer("num_classes", 100, "Classes of the random labels.")
    flags.DEFINE_integer("steps", 15, "Timed rounds (one step of each configuration per round; "
                         "medians reported).")
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


# --quick: these settings, each unless its flag is given explicitly.
QUICK = {"nets": ["tiny_cnn", "tiny_cnn"], "batch_size": 16, "steps": 3, "warmup": 1,
         "num_classes": 10, "jit_compile": [False], "pipeline_images": 256}


def _settings():
    settings = {
        "nets": list(FLAGS.nets), "batch_size": FLAGS.batch_size,
        "num_classes": FLAGS.num_classes, "steps": FLAGS.steps, "warmup": FLAGS.warmup,
        "jit_compile": [v.lower() in ("1", "true", "yes") for v in FLAGS.jit_compile],
        "pipeline_images": FLAGS.pipeline_images, "quick": FLAGS.quick,
    }
    if FLAGS.quick:
        settings.update({name: copy.deepcopy(value) for name, value in QUICK.items() if not FLAGS[name].present})
    return settings


def current_rss_mib():
    """Resident set size now, MiB (/proc/self/statm; None where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024.0 * 1024.0)


def _members(settings, tag):
    from dml_tf import nets as dml_nets
    return [dml_nets.build(net, num_classes=settings["num_classes"], input_shape=(32, 32, 3),
                           seed=k, name=f"{tag}_{net}_{k}")
            for k, net in enumerate(settings["nets"])]


def _sgd():
    import keras
    return keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)


def make_configurations(settings, x, y, jit):
    """``{name: [step callables]}``: one callable per member for ``independent``
    (each a plain compiled Keras model), one for each DML update."""
    import keras

    from dml_tf.cohort import MutualLearningModel

    configurations = {}
    independent = []
    for member in _members(settings, "independent"):
        member.compile(optimizer=_sgd(),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       jit_compile=jit)
        independent.append(lambda member=member: member.train_on_batch(x, y))
    configurations["independent"] = independent
    for update in ("simultaneous", "sequential"):
        cohort = MutualLearningModel(_members(settings, update), update=update)
        cohort.compile(optimizer=_sgd(), jit_compile=jit)
        configurations[f"dml_{update}"] = [lambda cohort=cohort: cohort.train_on_batch(x, y)]
    return configurations


def time_interleaved(configurations, warmup, rounds):
    """Per-round step times of every configuration, measured in turns.

    After ``warmup`` untimed steps of each (tracing, XLA compilation), every round
    times one step of each configuration (for ``independent``, one step of each
    member, one after the other), rotating which goes first, so that a slow spell of
    a shared machine hits all configurations alike. Returns
    ``{name: [[seconds per callable] per round]}``.
    """
    names = list(configurations)
    for name in names:
        for _ in range(warmup):
            for step in configurations[name]:
                step()
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            row = []
            for step in configurations[name]:
                start = time.perf_counter()
                step()
                row.append(time.perf_counter() - start)
            times[name].append(row)
    return times


def summarise(times, batch):
    """Rows of step time (median over rounds of the round's total), images/s and the
    ratio to ``independent`` (median over rounds of the paired per-round ratio)."""
    independent = [sum(row) for row in times["independent"]]
    rows = {}
    for name, per_round in times.items():
        totals = [sum(row) for row in per_round]
        step = statistics.median(totals)
        row = {"step_s": step, "images_per_s": batch / step,
               "ratio_to_independent": statistics.median(
                   t / i for t, i in zip(totals, independent)),
               "round_step_s": totals}
        if name == "independent":
            row["member_step_s"] = [statistics.median(col) for col in zip(*per_round)]
        rows[name] = row
    return rows


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
        log(f"building and warming up (jit_compile={jit}) ...")
        rss_before = current_rss_mib()
        try:
            configurations = make_configurations(settings, x, y, jit)
            log(f"timing {', '.join(configurations)} in turns, {settings['steps']} rounds ...")
            times = time_interleaved(configurations, settings["warmup"], settings["steps"])
            measured = summarise(times, batch)
            error = None
        except Exception as e:  # XLA may be unavailable for some op on some device
            measured, error = {}, f"{type(e).__name__}: {e}"[:500]
        rss_after = current_rss_mib()
        for name in ("independent", "dml_simultaneous", "dml_sequential"):
            row = measured.get(name) or {"step_s": None, "images_per_s": None,
                                         "ratio_to_independent": None}
            row.update(name=name, jit_compile=jit, error=error, peak_rss_mib=peak_rss_mib(),
                       rss_growth_mib=(rss_after - rss_before
                                       if rss_after is not None and rss_before is not None
                                       else None))
            rows.append(row)
        configurations = None
        keras.backend.clear_session()
        gc.collect()

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
                       "process's peak resident set so far (monotonic across the run); "
                       "rss_growth_mib: growth of the resident set while one XLA setting's "
                       "configurations were built, warmed up and timed.",
    }


def format_table(results):
    batch = results["settings"]["batch_size"]
    lines = [f"nets={','.join(results['settings']['nets'])} batch={batch} "
             f"rounds={results['settings']['steps']} (configurations timed in turns; median "
             f"step; model steps on an in-memory batch)",
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
    lines.append("x indep.: median over rounds of the step time over the same round's "
                 "independent cost (sum of the members' plain-Keras steps, same XLA "
                 "setting); for the pipeline: its images/s over the fastest DML step's. "
                 "Targets are printed, not asserted.")
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
    from dml_tf import cli

    define_flags()
    cli.run(main)
