r"""Memory and speed of ``--dataset=folder``'s streaming pipeline (a benchmark, not a test).

  python -m tools.benchmark_folder                                # 20,000 JPEGs of 64x64, 10 classes
  python -m tools.benchmark_folder --num_images=2000 --steps=5    # a quick check that it works
  python -m tools.benchmark_folder --cache=memory                 # the in-memory cache instead

It writes a folder of ``--num_images`` JPEGs (``--size`` pixels square, quality 90,
``--classes`` class folders; smooth random colour fields plus noise, so they compress as
photos do, about 2-3 KB each at 64x64) into ``--folder`` (default in /tmp; reused when it
already holds that many; never in the repository), then in this one process:

  load      ``dml_tf.data.load("folder", ...)``: the listing (every header read once) and
            the streamed pass of the statistics; its wall time;
  pipeline  the training stream alone (read, decode, pad-crop and flip, standardise,
            batch), ``--pipeline_batches`` batches after two untimed ones: images/s;
  dml step  the cohort's training step (``MutualLearningModel.train_on_batch``, --nets,
            sequential update) on a batch already in memory, ``--steps`` timed after
            ``--warmup``: images/s (the median step);

and prints both speeds and their ratio (the target: the pipeline delivers at least 3x what
the step consumes), and the peak resident set size of the process (resource.getrusage
ru_maxrss; the target: under 2 GiB whatever the folder's size) split into its parts:
TensorFlow imported (about 640 MiB with TensorFlow 2.21, 390 of it its libraries' code),
then the data (loading and the pipeline, before any model is built; about 40 MiB with
--cache=none, plus the decoded images with --cache=memory), then the DML step's models
(their activations for one batch: resnet32 x2 at 64x64, batch 64, about 1.55 GiB; it
scales with the batch and the image size, not with the folder). With ``--cores=N`` the
process is pinned to N cores (os.sched_setaffinity) and TensorFlow's thread pools sized
to them. A loaded machine slows both speeds; the ratio is measured in one run, the step
and the pipeline one after the other. ``--output`` writes the
figures as JSON.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if __name__ == "__main__" and not __package__:
    sys.exit(f"Run it from the repository root as: python -m tools.{os.path.basename(__file__)[:-3]}")

import statistics  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
RATIO_TARGET = 3.0
RSS_TARGET_MIB = 2048.0


def define_flags():
    flags.DEFINE_integer("num_images", 20000, "JPEGs in the generated folder.")
    flags.DEFINE_integer("size", 64, "Side of every generated image, pixels.")
    flags.DEFINE_integer("classes", 10, "Class folders.")
    flags.DEFINE_string("folder", "/tmp/dml_tf_benchmark_folder", "Where the images are generated.")
    flags.DEFINE_string("cache", "none", "--cache of the loader: none (streaming), memory, auto or a folder.")
    flags.DEFINE_list("nets", ["resnet32", "resnet32"], "Cohort members of the DML step.")
    flags.DEFINE_integer("batch_size", 64, "Images per batch (pipeline and step).")
    flags.DEFINE_integer("steps", 10, "Timed DML steps.")
    flags.DEFINE_integer("warmup", 2, "Untimed DML steps first (tracing).")
    flags.DEFINE_integer("pipeline_batches", 100, "Timed pipeline batches.")
    flags.DEFINE_integer("cores", 2, "Pin the process to this many cores (0: leave it as it is).")
    flags.DEFINE_string("output", None, "Write the figures to this JSON file.")


def pin(cores):
    """Pins the process to ``cores`` cores and sizes TensorFlow's thread pools to them;
    returns the number of cores used."""
    import tensorflow as tf

    available = sorted(os.sched_getaffinity(0))
    if cores:
        os.sched_setaffinity(0, available[:cores])
        tf.config.threading.set_inter_op_parallelism_threads(min(cores, len(available)))
        tf.config.threading.set_intra_op_parallelism_threads(min(cores, len(available)))
    return len(os.sched_getaffinity(0))


def generate(folder, num_images, size, classes):
    """``folder/class_K/NNNNNN.jpg``, ``num_images`` in all; kept when already complete."""
    import numpy as np
    from PIL import Image

    names = [f"class_{k}" for k in range(classes)]
    count = sum(len(os.listdir(os.path.join(folder, n))) for n in names if os.path.isdir(os.path.join(folder, n)))
    if count == num_images:
        return False
    import shutil
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    coarse = max(2, size // 8)
    for i in range(num_images):
        name = names[i % classes]
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        field = Image.fromarray(rng.integers(0, 256, (coarse, coarse, 3), dtype=np.uint8)).resize(
            (size, size), Image.BILINEAR)
        pixels = np.asarray(field, np.int16) + rng.integers(-12, 13, (size, size, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, name, f"{i:06d}.jpg"), quality=90)
    return True


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(folder) for f in files)


def time_pipeline(train, batches):
    """Images/s of ``train`` (repeated) over ``batches`` batches, after two untimed ones."""
    iterator = iter(train.repeat())
    for _ in range(2):
        next(iterator)
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        count += int(next(iterator)[1].shape[0])
    return count / (time.perf_counter() - start)


def time_dml_step(nets, input_shape, num_classes, batch_size, warmup, steps):
    """Images/s of the median DML training step on one batch in memory."""
    import keras
    import numpy as np

    from dml_tf import nets as dml_nets
    from dml_tf.cohort import MutualLearningModel

    members = [dml_nets.build(net, num_classes=num_classes, input_shape=input_shape, seed=k, name=f"{net}_{k}")
               for k, net in enumerate(nets)]
    cohort = MutualLearningModel(members, update="sequential")
    cohort.compile(optimizer=[keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True) for _ in members])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size,) + tuple(input_shape)).astype(np.float32)
    y = rng.integers(0, num_classes, batch_size).astype(np.int32)
    for _ in range(warmup):
        cohort.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        cohort.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def run_benchmark(settings, log=print):
    import dml_tf.data
    from tools._common import peak_rss_mib

    cores = pin(settings["cores"])
    rss_after_import = peak_rss_mib()  # TensorFlow imported, nothing else yet
    start = time.perf_counter()
    made = generate(settings["folder"], settings["num_images"], settings["size"], settings["classes"])
    log(f"{'generated' if made else 'reused'} {settings['num_images']} JPEGs of {settings['size']}x"
        f"{settings['size']} in {settings['folder']} ({time.perf_counter() - start:.0f} s)")
    start = time.perf_counter()
    bundle = dml_tf.data.load("folder", data_dir=settings["folder"], batch_size=settings["batch_size"],
                              cache=settings["cache"])
    load_s = time.perf_counter() - start
    rss_after_load = peak_rss_mib()
    pipeline = time_pipeline(bundle.train, settings["pipeline_batches"])
    rss_after_pipeline = peak_rss_mib()
    step = time_dml_step(settings["nets"], bundle.input_shape, bundle.num_classes, settings["batch_size"],
                         settings["warmup"], settings["steps"])
    images = bundle.train_size + bundle.test_size
    return {
        "settings": settings, "cores": cores, "images": images, "cache": bundle.extras["cache"],
        "jpeg_mib": folder_bytes(settings["folder"]) / 2 ** 20,
        "decoded_mib": images * settings["size"] ** 2 * 3 / 2 ** 20,
        "load_s": load_s, "pipeline_images_per_s": pipeline, "dml_step_images_per_s": step,
        "ratio": pipeline / step, "ratio_target": RATIO_TARGET,
        "peak_rss_mib_after_import": rss_after_import, "peak_rss_mib_after_load": rss_after_load, "peak_rss_mib_after_pipeline": rss_after_pipeline,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_target_mib": RSS_TARGET_MIB,
    }


def format_results(r):
    ok = {True: "met", False: "NOT met"}
    ratio_ok = ok[r["ratio"] >= r["ratio_target"]]
    rss_ok = ok[r["peak_rss_mib"] < r["peak_rss_target_mib"]]
    imported, data = r["peak_rss_mib_after_import"], r["peak_rss_mib_after_pipeline"]
    return "\n".join([
        f"folder: {r['images']} images ({r['jpeg_mib']:.0f} MiB of JPEG, {r['decoded_mib']:.0f} MiB decoded), "
        f"cache={r['cache']}, {r['cores']} core(s); load (listing + statistics pass) {r['load_s']:.1f} s",
        f"speed:     pipeline {r['pipeline_images_per_s']:.0f} images/s, DML step {r['dml_step_images_per_s']:.0f} "
        f"images/s ({'+'.join(r['settings']['nets'])}, batch {r['settings']['batch_size']}): "
        f"{r['ratio']:.1f}x (target >= {r['ratio_target']:.0f}x: {ratio_ok})",
        f"peak RSS:  {r['peak_rss_mib']:.0f} MiB for training (target < {r['peak_rss_target_mib']:.0f} MiB: "
        f"{rss_ok}) = TensorFlow imported {imported:.0f} + the data {data - imported:.0f} (listing, statistics "
        f"pass, pipeline; {r['peak_rss_mib_after_load'] - imported:.0f} after loading) + the DML step's models "
        f"{r['peak_rss_mib'] - data:.0f} (their activations: batch and image size, not the folder)",
    ])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    for name in ("num_images", "size", "classes", "batch_size", "steps", "pipeline_batches"):
        if FLAGS[name].value < 1:
            raise app.UsageError(f"--{name} must be >= 1; got {FLAGS[name].value}.")
    if FLAGS.num_images < 2 * FLAGS.classes:
        raise app.UsageError(f"--num_images must be at least 2 per class (--classes={FLAGS.classes}).")
    settings = {name: FLAGS[name].value for name in ("num_images", "size", "classes", "folder", "cache",
                                                     "batch_size", "steps", "warmup", "pipeline_batches",
                                                     "cores")}
    settings["nets"] = list(FLAGS.nets)
    results = run_benchmark(settings)
    print(format_results(results))
    if FLAGS.output:
        from dml_tf.io_utils import atomic_write_json
        atomic_write_json(FLAGS.output, results)
        print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    from dml_tf import cli

    define_flags()
    cli.run(main)
