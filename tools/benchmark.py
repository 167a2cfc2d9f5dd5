r"""Throughput of DML against independent training, and of the input pipeline.

  python -m tools.benchmark --output=bench.json                 # resnet32 x2, batch 64
  python -m tools.benchmark --quick --output=/tmp/bench.json    # tiny_cnn, a few steps
  python -m tools.benchmark --baseline_tree=old=../old          # also an older checkout's steps

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
exclude input.

Two more configurations run in worker processes, driven step by step in the same
rounds: ``pytorch``, the usual PyTorch DML loop on the same networks, batch and
optimizer (``tools/torch_dml.py``; when ``torch`` is installed, ``pip install -e
".[bench]"``), and with ``--baseline_tree=LABEL=DIR`` the two DML steps of the dml_tf
in DIR (a ``git worktree`` of an older commit): ``LABEL_simultaneous`` and
``LABEL_sequential``. Each row then also has its speed over PyTorch's (the median over
rounds of PyTorch's step time over the row's, paired). A worker costs a pipe round
trip per step (well under a millisecond); ``--baseline_tree=now=.`` times this
checkout's own steps in workers, to see that the two ways agree. It prints a table (images/s, ratio to the independent cost at the
same XLA setting, the pipeline's speed over the fastest DML step's consumption) with
the targets (printed, not asserted), and writes the figures as JSON. The table's
first line, and the JSON's ``host.cpu``, name the CPU model, its vector extensions
(/proc/cpuinfo's flags: avx2, avx512f, ...) and any instruction-set cap in force
(``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``: ``tools/_cpu.py``), so that a reader
knows which kind of processor a row was measured on.

Memory: ``peak_rss_mib`` is the process's peak resident set size so far
(resource.getrusage ru_maxrss), read after each measurement: it only grows, so it
bounds, rather than isolates, each configuration's memory; ``rss_growth_mib`` is how
much the resident set grew while one XLA setting's three configurations were built,
warmed up and timed (the same value on its three rows).
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__" and not __package__:
    if sys.argv[1:] == ["--serve"]:  # a --baseline_tree worker: that tree's dml_tf first
        sys.path[0] = os.getcwd()
    else:  # started as python tools/NAME.py
        sys.exit(f"Run it from the repository root as: python -m tools.{os.path.basename(__file__)[:-3]}")

import copy  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402



def peak_rss_mib():
    from tools._common import peak_rss_mib as peak  # not imported by a --baseline_tree worker
    return peak()

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
    flags.DEFINE_float("weight_decay", 5e-4, "SGD weight decay of every member (the CIFAR recipe's).")
    flags.DEFINE_boolean("pytorch", None, "Also time the usual PyTorch DML loop (tools/torch_dml.py) "
                         "in a worker process; default: when torch is installed. Only for "
                         "resnet{20,32,56,110} cohorts.")
    flags.DEFINE_multi_string("baseline_tree", [], "[LABEL=]DIR: a checkout of another dml_tf "
                              "(e.g. a git worktree of an older commit); its DML steps are timed "
                              "in worker processes in the same rounds, as LABEL_simultaneous and "
                              "LABEL_sequential (LABEL: DIR's name). Repeatable.")
    flags.DEFINE_string("output", "benchmark.json", "Where the JSON results go.")


TARGETS = {
    "dml_simultaneous": 1.05,  # step time / independent step time, at most
    "dml_sequential": 1.25,
    "pipeline_over_dml": 5.0,  # pipeline images/s / fastest DML images/s, at least
}
OVER_PYTORCH_TARGETS = {  # images/s over the PyTorch loop's, at least
    "dml_simultaneous": 1.10,
    "dml_sequential": 0.95,
}


# --quick: these settings, each unless its flag is given explicitly.
QUICK = {"nets": ["tiny_cnn", "tiny_cnn"], "batch_size": 16, "steps": 3, "warmup": 1,
         "num_classes": 10, "jit_compile": [False], "pipeline_images": 256}


def _settings():
    settings = {
        "nets": list(FLAGS.nets), "batch_size": FLAGS.batch_size,
        "weight_decay": FLAGS.weight_decay,
        "baseline_trees": dict(_baseline_tree(spec) for spec in FLAGS.baseline_tree),
        "num_classes": FLAGS.num_classes, "steps": FLAGS.steps, "warmup": FLAGS.warmup,
        "jit_compile": [v.lower() in ("1", "true", "yes") for v in FLAGS.jit_compile],
        "pipeline_images": FLAGS.pipeline_images, "quick": FLAGS.quick,
    }
    if FLAGS.quick:
        settings.update({name: copy.deepcopy(value) for name, value in QUICK.items() if not FLAGS[name].present})
    settings["pytorch"] = _pytorch_wanted(FLAGS.pytorch, settings["nets"])
    return settings


def _baseline_tree(spec):
    """``[LABEL=]DIR`` -> ``(LABEL, DIR)``; a usage error when DIR holds no dml_tf."""
    label, _, tree = spec.rpartition("=")
    tree = os.path.abspath(os.path.expanduser(tree))
    if not os.path.isfile(os.path.join(tree, "dml_tf", "cohort.py")):
        raise app.UsageError(f"--baseline_tree={spec}: {tree} holds no dml_tf/cohort.py; expected a "
                             "checkout of dml_tf (git worktree add DIR COMMIT).")
    return label or os.path.basename(tree), tree


def _torch_installed():
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def _torch_depth(nets):
    """The ResNet depth of a cohort of equal CIFAR ResNets, else None."""
    depths = {n[len("resnet"):] for n in nets if n.startswith("resnet")}
    if len(depths) == 1 and len(nets) > 1 and all(n.startswith("resnet") for n in nets):
        depth = depths.pop()
        return int(depth) if depth.isdigit() else None
    return None


def _pytorch_wanted(flag, nets):
    if flag is False:
        return False
    if flag and not _torch_installed():
        raise app.UsageError("--pytorch: torch is not installed (pip install -e \".[bench]\").")
    if flag and _torch_depth(nets) is None:
        raise app.UsageError(f"--pytorch: the PyTorch loop has equal CIFAR ResNets only; --nets is "
                             f"{','.join(nets)}.")
    return _torch_installed() and _torch_depth(nets) is not None


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
                           weight_decay=settings.get("weight_decay", 0.0), seed=k,
                           name=f"{tag}_{net}_{k}")
            for k, net in enumerate(settings["nets"])]


def _sgd():
    import keras
    return keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)


def _keras_step(member, x, y, jit):
    import keras
    member.compile(optimizer=_sgd(),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   jit_compile=jit)
    return lambda: member.train_on_batch(x, y)


def make_step(name, settings, x, y, jit):
    """One step callable: ``keras`` (the first member trained alone, a plain compiled
    Keras model) or ``dml_simultaneous`` / ``dml_sequential`` (the cohort's step)."""
    from dml_tf.cohort import MutualLearningModel

    if name == "keras":
        return _keras_step(_members(settings, name)[0], x, y, jit)
    update = name[len("dml_"):]
    cohort = MutualLearningModel(_members(settings, update), update=update)
    cohort.compile(optimizer=_sgd(), jit_compile=jit)
    return lambda: cohort.train_on_batch(x, y)


def make_configurations(settings, x, y, jit):
    """``{name: [step callables]}``: one callable per member for ``independent``
    (each a plain compiled Keras model), one for each DML update."""
    configurations = {"independent": [_keras_step(member, x, y, jit)
                                      for member in _members(settings, "independent")]}
    for name in ("dml_simultaneous", "dml_sequential"):
        configurations[name] = [make_step(name, settings, x, y, jit)]
    return configurations


class Worker:
    """A configuration in a child process (``python -m tools.torch_dml --serve`` or this
    module's ``--serve``): one JSON command per line; ``step()`` runs one step there."""

    def __init__(self, argv, setup, env=None, cwd=None):
        import json
        import subprocess
        self._json = json
        self._process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True, env=env, cwd=cwd)
        self.info = self._ask({"op": "setup", **setup})

    def _ask(self, command):
        self._process.stdin.write(self._json.dumps(command) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self._process.args} stopped "
                               f"(exit status {self._process.wait()})")
        answer = self._json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"benchmark worker: {answer['error']}")
        return answer

    def step(self):
        return self._ask({"op": "step"})["seconds"]

    def close(self):
        try:
            self._process.stdin.write('{"op": "quit"}\n')
            self._process.stdin.close()
        except OSError:
            pass
        self._process.wait()


def serve_steps(setup, stdin=sys.stdin, stdout=sys.stdout):
    """A worker's loop (the other end of :class:`Worker`): one JSON command per line,
    one JSON answer per line. ``setup(command)`` builds the configuration and returns
    ``(step, info)``; ``step`` commands run ``step()`` and answer its seconds."""
    import json

    step = None
    for line in stdin:
        command = json.loads(line)
        if command["op"] == "setup":
            step, answer = setup(command)
        elif command["op"] == "step":
            start = time.perf_counter()
            step()
            answer = {"seconds": time.perf_counter() - start}
        elif command["op"] == "quit":
            return
        else:
            answer = {"error": f"unknown op {command['op']!r}"}
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()


def serve():
    """The worker of ``--baseline_tree``: the dml_tf importable here (the tree's) builds
    one DML configuration (``setup``) and runs its steps."""
    import numpy as np
    import tensorflow as tf

    def setup(command):
        rng = np.random.default_rng(0)
        batch, classes = command["batch_size"], command["num_classes"]
        x = tf.constant(rng.normal(size=(batch, 32, 32, 3)).astype(np.float32))
        y = tf.constant(rng.integers(0, classes, size=(batch,)).astype(np.int32))
        step = make_step(command["name"], command, x, y, command["jit_compile"])
        import dml_tf
        return step, {"dml_tf": os.path.dirname(os.path.abspath(dml_tf.__file__))}

    serve_steps(setup)


def make_workers(settings, jit):
    """``{name: Worker}``: ``pytorch`` when wanted (without XLA only), and each
    ``--baseline_tree``'s DML steps."""
    workers = {}
    common = {"batch_size": settings["batch_size"], "num_classes": settings["num_classes"]}
    if settings["pytorch"] and not jit:
        workers["pytorch"] = Worker(
            [sys.executable, "-m", "tools.torch_dml", "--serve"],
            {**common, "num_members": len(settings["nets"]), "depth": _torch_depth(settings["nets"]),
             "weight_decay": settings["weight_decay"]}, cwd=_REPOSITORY)
    for label, tree in settings["baseline_trees"].items():
        for update in ("simultaneous", "sequential"):
            workers[f"{label}_{update}"] = Worker(
                [sys.executable, os.path.abspath(__file__), "--serve"],
                {**common, "name": f"dml_{update}", "nets": settings["nets"],
                 "weight_decay": settings["weight_decay"], "jit_compile": jit},
                env={**os.environ, "PYTHONPATH": tree}, cwd=tree)
    return workers


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
    """Rows of step time (median over rounds of the round's total), images/s, the
    ratio to ``independent`` (median over rounds of the paired per-round ratio) and,
    with a ``pytorch`` configuration, the speed over PyTorch's (median over rounds of
    PyTorch's step time over the row's)."""
    independent = [sum(row) for row in times["independent"]]
    pytorch = [sum(row) for row in times["pytorch"]] if "pytorch" in times else None
    rows = {}
    for name, per_round in times.items():
        totals = [sum(row) for row in per_round]
        step = statistics.median(totals)
        row = {"step_s": step, "images_per_s": batch / step,
               "ratio_to_independent": statistics.median(
                   t / i for t, i in zip(totals, independent)),
               "speed_over_pytorch": None if pytorch is None else statistics.median(
                   p / t for t, p in zip(totals, pytorch)),
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

    from tools import _cpu

    cpu = _cpu.describe()
    log(_cpu.header(cpu))

    rng = np.random.default_rng(0)
    batch = settings["batch_size"]
    x = tf.constant(rng.normal(size=(batch, 32, 32, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, settings["num_classes"], size=(batch,)).astype(np.int32))

    rows = []
    for jit in settings["jit_compile"]:
        log(f"building and warming up (jit_compile={jit}) ...")
        rss_before = current_rss_mib()
        workers = {}
        try:
            configurations = make_configurations(settings, x, y, jit)
            workers = make_workers(settings, jit)
            configurations.update({name: [w.step] for name, w in workers.items()})
            log(f"timing {', '.join(configurations)} in turns, {settings['steps']} rounds ...")
            times = time_interleaved(configurations, settings["warmup"], settings["steps"])
            measured = summarise(times, batch)
            error = None
        except Exception as e:  # XLA may be unavailable for some op on some device
            measured, error = {}, f"{type(e).__name__}: {e}"[:500]
        finally:
            for worker in workers.values():
                worker.close()
        rss_after = current_rss_mib()
        names = ["independent", "dml_simultaneous", "dml_sequential"]
        names += [n for n in measured if n not in names]
        for name in names:
            row = measured.get(name) or {"step_s": None, "images_per_s": None,
                                         "ratio_to_independent": None, "speed_over_pytorch": None}
            if name in workers:
                row["worker"] = workers[name].info
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
                 "processor": cpu["model"], "cpu": cpu, "cpu_count": os.cpu_count(),
                 "devices": [d.name for d in tf.config.list_logical_devices()]},
        "rows": rows,
        "pipeline": pipe,
        "targets": TARGETS,
        "targets_over_pytorch": OVER_PYTORCH_TARGETS,
        "peak_rss_mib": peak_rss_mib(),
        "memory_note": "peak_rss_mib: resource.getrusage(RUSAGE_SELF).ru_maxrss, the "
                       "process's peak resident set so far (monotonic across the run); "
                       "rss_growth_mib: growth of the resident set while one XLA setting's "
                       "configurations were built, warmed up and timed.",
    }


def _number(value, spec, prefix=""):
    return "-" if value is None else f"{prefix}{value:{spec}}"


def format_table(results):
    batch = results["settings"]["batch_size"]
    from tools import _cpu

    lines = [_cpu.header(results["host"]["cpu"]),
             f"nets={','.join(results['settings']['nets'])} batch={batch} "
             f"rounds={results['settings']['steps']} (configurations timed in turns; median "
             f"step; model steps on an in-memory batch)",
             f"{'configuration':<30}{'XLA':<6}{'step ms':>10}{'images/s':>11}"
             f"{'x indep.':>10}{'target':>9}{'x PyTorch':>11}{'target':>9}{'peak RSS MiB':>14}"]
    for row in results["rows"]:
        if row["step_s"] is None:
            lines.append(f"{row['name']:<30}{str(row['jit_compile']):<6}  failed: {row['error']}")
            continue
        target = TARGETS.get(row["name"])
        over_target = OVER_PYTORCH_TARGETS.get(row["name"])
        rss = None if "worker" in row else row["peak_rss_mib"]
        lines.append(
            f"{row['name']:<30}{str(row['jit_compile']):<6}{row['step_s'] * 1e3:>10.1f}"
            f"{row['images_per_s']:>11.1f}{_number(row['ratio_to_independent'], '.3f'):>10}"
            f"{_number(target, '', '<= ') if target else '':>9}"
            f"{_number(row.get('speed_over_pytorch'), '.3f'):>11}"
            f"{_number(over_target, '', '>= ') if over_target else '':>9}{_number(rss, '.0f'):>14}")
    pipe = results["pipeline"]
    over = pipe["over_fastest_dml_consumption"]
    lines.append(
        f"{'input pipeline':<36}{'':>10}{pipe['images_per_s']:>11.1f}"
        f"{'-' if over is None else f'{over:.2f}':>10}"
        f"{'>= ' + str(TARGETS['pipeline_over_dml']):>9}{'':>20}{pipe['peak_rss_mib']:>14.0f}")
    lines.append("x indep.: median over rounds of the step time over the same round's "
                 "independent cost (sum of the members' plain-Keras steps, same XLA "
                 "setting); for the pipeline: its images/s over the fastest DML step's. "
                 "x PyTorch: median over rounds of the PyTorch loop's step time over the "
                 "row's (a speed ratio; rows in worker processes: pytorch, baseline trees). "
                 f"Targets are printed, not asserted. {results['host']['cpu_count']} cores.")
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


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
elif __name__ == "__main__":
    from dml_tf import cli

    define_flags()
    cli.run(main)
