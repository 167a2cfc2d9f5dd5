"""Helpers shared by the study tools (posterior_stats, noise_robustness, report, ...).

Every tool is an absl app whose work lives in a plain function (tests call it
directly) and whose flags ``dml_tf.cli_flags`` defines; this module holds argument checks
that raise ``app.UsageError``, the library's errors as usage errors, and the atomic JSON/PNG
output. The run folders are read by :mod:`dml_tf.run_dir`, trained by :mod:`dml_tf.runner`.
"""

import contextlib
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS


def check_dataset(dataset):
    """UsageError unless ``dataset`` is one the tools can read (``dml_tf.analysis.DATASETS``)."""
    from dml_tf import analysis

    if dataset not in analysis.DATASETS:
        names = analysis.DATASETS
        raise app.UsageError(f"--dataset must be {', '.join(names[:-1])} or {names[-1]}; got {dataset!r}.")


def split_list(value):
    """A comma list flag value (list or string) as a list of non-empty strings."""
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    items = [str(v).strip() for v in value if str(v).strip()]
    return items


def parse_choices(value, name, choices):
    """The comma list ``--name`` as a non-empty list of ``choices``; UsageError otherwise."""
    items = split_list(value)
    if not items or any(item not in choices for item in items):
        raise app.UsageError(f"--{name} must be a subset of {list(choices)}; got {items}.")
    return items


def _parse_numbers(value, name, convert, noun, minimum=None):
    """The comma list ``--name`` as numbers (``convert``: int or float; ``noun``: "an
    integer" or "a number"), each finite and >= ``minimum``; UsageError otherwise."""
    items = split_list(value)
    if not items:
        raise app.UsageError(f"--{name} must list at least one {noun.split()[-1]}.")
    out = []
    for item in items:
        try:
            number = convert(item)
        except ValueError:
            raise app.UsageError(f"--{name}: {item!r} is not {noun}.") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise app.UsageError(f"--{name}: {item!r} is not finite.")
        if minimum is not None and number < minimum:
            raise app.UsageError(f"--{name}: {item!r} must be >= {minimum}.")
        out.append(number)
    return out


def parse_floats(value, name, minimum=None):
    return _parse_numbers(value, name, float, "a number", minimum)


def parse_ints(value, name, minimum=None):
    return _parse_numbers(value, name, int, "an integer", minimum)


def check_split_and_limit(split, limit):
    """UsageError unless ``split`` is a known split and ``limit`` is None or positive."""
    from dml_tf import analysis

    if split not in analysis.SPLITS:
        raise app.UsageError(f"--split must be one of {analysis.SPLITS}; got {split!r}.")
    if limit is not None and limit < 1:
        raise app.UsageError(f"--limit must be positive; got {limit}.")


def need_output_dir(output_dir):
    if not output_dir:
        raise app.UsageError("--output_dir is required.")
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise app.UsageError(f"--output_dir={output_dir} cannot be created ({e.strerror}).") from None
    return output_dir


def read_runs(runs):
    """``[(run_dir, results, members)]`` for the ``--runs`` folders; UsageError when bad."""
    from dml_tf import run_dir as run_folder

    runs = split_list(runs)
    if not runs:
        raise app.UsageError("--runs must list at least one run folder written by dml_tf.train.")
    out = []
    for run_dir in runs:
        try:
            results, members = run_folder.read_run(run_dir)
        except ValueError as e:
            raise app.UsageError(f"--runs: {e}") from None
        out.append((run_dir, results, members))
    return out


def run_label(run_dir, config):
    mode = config.get("mode", "?")
    if mode == "dml" and config.get("mimicry") == "ensemble":
        mode = "dml_e"
    return f"{os.path.basename(os.path.normpath(run_dir))} ({mode})"


def run_data(config, split, batch_size=None, data_dir=None, limit=None, identities=None):
    """The unaugmented ``split`` of the run's dataset, labeled as the run was trained
    (a Market-1501 run: its image size and labeled identities); UsageError when it
    is unsupported or cannot be read."""
    from dml_tf import analysis, runner

    dataset = config.get("dataset")
    if dataset not in analysis.DATASETS:
        raise app.UsageError(
            f"Dataset {dataset!r} of the run is not supported here; expected one of "
            f"{', '.join(analysis.DATASETS)}.")
    options = runner.data_options(config)  # labeled and subset as the run's training data
    options.pop("data_dir", None)
    if dataset != analysis.MARKET:
        options = {k: v for k, v in options.items() if k in analysis.CLASSIFICATION_OPTIONS}
    data_dir = data_dir or config.get("data_dir")
    try:
        return analysis.unaugmented_dataset(dataset, split=split, data_dir=data_dir,
                                            batch_size=batch_size or config.get("batch_size") or 64,
                                            limit=limit, identities=identities, **options)
    except ValueError as e:  # dml_tf.errors.DataError included
        raise app.UsageError(f"--data_dir={data_dir} ({dataset}, {split} split): {e}") from None


def run_tool(compute, define_flags):
    """Runs a tool as an absl app (``dml_tf.cli.run``: a usage error is one line):
    ``define_flags()``, then ``compute`` called with the flags named like its
    parameters (``log`` keeps its default)."""
    import inspect

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
        names = [n for n in inspect.signature(compute).parameters if n != "log"]
        compute(**{name: FLAGS[name].value for name in names})

    from dml_tf import cli

    define_flags()
    cli.run(main, doc=sys.modules["__main__"].__doc__)


def runs_with_data(runs, split, batch_size=None, data_dir=None, limit=None, identities=None):
    """For each ``--runs`` folder (all checked first): ``(run_dir, results, config,
    members, dataset, number of images, label)`` with the run's unaugmented ``split``."""
    for run_dir, results, members in read_runs(runs):
        config = results.get("config") or {}
        dataset, n = run_data(config, split, batch_size, data_dir, limit, identities)
        yield run_dir, results, config, members, dataset, n, run_label(run_dir, config)


def write_outputs(output_dir, stem, payload, figure, log=None):
    """Writes ``stem.json`` and ``stem.png`` atomically (logging where, when ``log`` is
    given); returns their paths."""
    import matplotlib.pyplot as plt

    from dml_tf.io_utils import atomic_savefig, atomic_write_json

    json_path = os.path.join(output_dir, f"{stem}.json")
    png_path = os.path.join(output_dir, f"{stem}.png")
    atomic_write_json(json_path, payload)
    figure.tight_layout()
    atomic_savefig(figure, png_path, dpi=110)
    plt.close(figure)
    if log is not None:
        log(f"Wrote {json_path} and {png_path}")
    return json_path, png_path


def figure(ncols=1, width=5.0, height=4.0, nrows=1):
    """``(figure, [axes, row by row])``: ``nrows`` x ``ncols`` panels of ``width`` x ``height``
    inches each, drawn with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, list(axes.flat)


@contextlib.contextmanager
def usage_errors():
    """The library's errors for bad input (ConfigError, DMLError) raised inside as
    ``app.UsageError``: a tool answers them in one line."""
    from dml_tf.config import ConfigError
    from dml_tf.errors import DMLError

    try:
        yield
    except (ConfigError, DMLError) as e:
        raise app.UsageError(str(e)) from None


def peak_rss_mib():
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux,
    bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def market_scores(model_dir, data_dir=None, batch_size=64, log=print):
    """``(member mAPs, ensemble mAP)`` (single query, fractions) of a Market-1501 run:
    ``dml_tf.evaluate.evaluate_or_reuse`` (its eval.json, else an evaluation)."""
    from dml_tf import evaluate

    with usage_errors():
        ev = evaluate.evaluate_or_reuse(model_dir, data_dir=data_dir, batch_size=batch_size, log=log)
    members = [float(m["single_query"]["mAP"]) for m in ev["members"] if m.get("trainable", True)]
    return members, float(ev["ensemble"]["single_query"]["mAP"])
