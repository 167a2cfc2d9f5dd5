r"""Does DML help on this data? A controlled, multi-seed study of DML against independent
training, and its report.

    python -m dml_tf.study --study_dir=runs/study --dataset=cifar10 --data_dir=DIR \
        --nets=resnet32,resnet32 --train_per_class=100 --epochs=60 --seeds=0,1,2
    dml-study --flagfile=flags/study_cifar10_sample100_resnet32.flags --data_dir=DIR

For every seed and every arm (``--arm``, default ``independent`` and ``dml``) it trains
one cohort in ``STUDY_DIR/ARM/seed_S`` with the training flags given (as
``python -m dml_tf.train`` takes them), ``--mode`` and ``--seed`` set by the arm and the
seed: within a seed every arm starts from the same initial weights and sees the same
batches in the same order, so the arms differ only in what they learn from. A finished
run is reused (its settings must be the study's), an interrupted one resumes from its
last finished epoch: start the command again after a stop and it goes on.

After every finished run it writes the report of the runs finished so far, atomically,
into ``STUDY_DIR`` (and ``--export_dir``, with a copy of every run's results.json: the
evidence without the weights): ``study.json``, ``study.md`` and ``study.png`` (see
:mod:`dml_tf.study_report`).
"""

import dataclasses
import math
import os

from absl import app, flags

from dml_tf import cli_flags
from dml_tf import config as cfg

FLAGS = flags.FLAGS
# Set per run by the study, not by flags.
STUDY_SET = ("mode", "seed", "model_dir", "overwrite")
DEFAULT_ARMS = ("independent", "dml")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm of a study: its ``label`` (a folder name) and the training settings it
    sets (``mode`` always among them)."""

    label: str
    settings: tuple

    def apply(self, config):
        return dataclasses.replace(config, **dict(self.settings))


def parse_arm(spec):
    """An :class:`Arm` from ``LABEL`` (a mode: ``dml``, ``independent``) or
    ``LABEL:SETTING=VALUE[;SETTING=VALUE...]`` (``dml_ramp:mode=dml;mimicry_warmup_epochs=5``).
    ConfigError naming the spec when it cannot be read."""
    label, _, rest = spec.partition(":")
    label = label.strip()
    if not label or not all(c.isalnum() or c in "_-." for c in label):
        raise cfg.ConfigError(f"--arm {spec!r}: the label must be a folder name (letters, digits, _-.).")
    settings = {}
    for item in filter(None, (part.strip() for part in rest.split(";"))):
        name, equals, value = item.partition("=")
        name = name.strip()
        if not equals or name not in cfg.FIELDS:
            raise cfg.ConfigError(f"--arm {spec!r}: {item!r} is not SETTING=VALUE with a training "
                                  f"setting of python -m dml_tf.train.")
        if name in ("seed", "model_dir", "overwrite"):
            raise cfg.ConfigError(f"--arm {spec!r}: {name} is set by the study, not by an arm.")
        settings[name] = _typed(name, value.strip(), spec)
    if not rest:
        settings["mode"] = label
    if "mode" not in settings:
        raise cfg.ConfigError(f"--arm {spec!r} sets no mode: add ;mode=dml (or independent, distill).")
    cfg.check_setting("mode", settings["mode"])
    return Arm(label, tuple(sorted(settings.items())))


def _typed(name, text, spec):
    """``text`` as the type of the training setting ``name``."""
    kind = cli_flags.flag_kind(cfg.FIELDS[name])
    try:
        if kind == "list":
            return tuple(text.split(","))
        if kind == "boolean":
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        return {"string": str, "integer": int, "float": float}[kind](text)
    except ValueError:
        raise cfg.ConfigError(f"--arm {spec!r}: {name}={text!r} is not a valid {kind}.") from None


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    arm: str
    seed: int
    config: cfg.TrainConfig


def run_folder(study_dir, label, seed):
    """The folder of arm ``label``'s run for ``seed``."""
    return os.path.join(study_dir, label, f"seed_{seed}")


def resolve_teachers(arm, earlier, seed, study_dir):
    """``arm``'s settings with each ``--teacher`` of the form ``@ARM:K`` replaced by member K's
    file of arm ARM's run of the same seed (Table 4: a student distilled from the frozen,
    independently trained peer of its own seed). ARM must be an earlier arm, so that its run
    of the seed is trained first."""
    settings = dict(arm.settings)
    teachers = []
    for teacher in settings.get("teacher", ()):
        if not teacher.startswith("@"):
            teachers.append(teacher)
            continue
        label, colon, index = teacher[1:].partition(":")
        if not colon or not index.isdigit():
            raise cfg.ConfigError(f"--arm {arm.label}: teacher {teacher!r} must be @ARM:K "
                                  f"(member K of arm ARM's run of the same seed).")
        if label not in earlier:
            raise cfg.ConfigError(f"--arm {arm.label}: teacher {teacher!r} names no earlier arm "
                                  f"(earlier: {', '.join(earlier) or 'none'}); list the teacher's "
                                  f"arm first.")
        teachers.append(os.path.join(run_folder(study_dir, label, seed), f"member_{int(index)}.keras"))
    if teachers:
        settings["teacher"] = tuple(teachers)
    return Arm(arm.label, tuple(sorted(settings.items())))


def plan(base, arms, seeds, study_dir):
    """The runs of a study, seed by seed (every arm of seed 0 first, so the first paired
    difference comes early): each a resolved, checked TrainConfig."""
    labels = [arm.label for arm in arms]
    if len(set(labels)) != len(labels):
        raise cfg.ConfigError(f"--arm labels must differ; got {', '.join(labels)}.")
    if not seeds or len(set(seeds)) != len(seeds):
        raise cfg.ConfigError(f"--seeds must list distinct seeds; got {list(seeds)}.")
    runs = []
    for seed in seeds:
        for i, arm in enumerate(arms):
            arm = resolve_teachers(arm, labels[:i], seed, study_dir)
            config = arm.apply(dataclasses.replace(
                base, seed=seed, model_dir=run_folder(study_dir, arm.label, seed)))
            runs.append(PlannedRun(arm.label, seed, config.resolved()))
    return runs


def export_evidence(runs, study_dir, export_dir):
    """Copies the report files and each finished run's results.json (a diverged run's
    diverged.json; no weights) into ``export_dir``, keeping the ``ARM/seed_S/`` layout, so
    that ``--report_only`` on it rebuilds the same report."""
    from dml_tf import run_dir
    from dml_tf.io_utils import atomic_write_bytes

    def copy(source, target):
        with open(source, "rb") as handle:
            atomic_write_bytes(target, handle.read())

    for run in runs:
        if run_dir.is_finished(run.config.model_dir):
            name = run_dir.RESULTS_FILE
        elif run_dir.read_diverged(run.config.model_dir) is not None:
            name = run_dir.DIVERGED_FILE
        else:
            continue
        target = os.path.join(export_dir, os.path.relpath(run.config.model_dir, study_dir))
        os.makedirs(target, exist_ok=True)
        copy(os.path.join(run.config.model_dir, name), os.path.join(target, name))
    for name in ("study.json", "study.md", "study.png"):
        if os.path.isfile(os.path.join(study_dir, name)):
            copy(os.path.join(study_dir, name), os.path.join(export_dir, name))


def _teacher_diverged(run):
    """The folder of the run ``run`` distils from whose training diverged, or None."""
    from dml_tf import run_dir

    for path in run.config.teacher if run.config.mode == "distill" else ():
        if run_dir.read_diverged(os.path.dirname(path)) is not None:
            return os.path.dirname(path)
    return None


def train_run(run, log=print):
    """Trains (or reuses) one run of the study; on Market-1501 it also has
    :mod:`dml_tf.evaluate` score it (eval.json, reused when there). A run that diverges is
    recorded as such (``diverged.json``, :func:`dml_tf.run_dir.write_diverged`) and the
    study goes on; started again, the study reuses that outcome (settings checked)."""
    from dml_tf import evaluate, run_dir, runner, study_report
    from dml_tf.errors import TrainingDivergedError

    config = run.config
    diverged = run_dir.read_diverged(config.model_dir)
    if diverged is not None and not run_dir.is_finished(config.model_dir):
        runner.check_same_settings(config, diverged.get("settings") or {}, "a run that diverged")
        log(f"[skip] {config.model_dir} diverged earlier ({run_dir.DIVERGED_FILE}): counted as diverged")
        return
    teacher = _teacher_diverged(run)
    if teacher is not None:
        error = f"not trained: its teacher's run {teacher} diverged"
        os.makedirs(config.model_dir, exist_ok=True)
        run_dir.write_diverged(config.model_dir, error, config.resolved().training_settings())
        log(f"[diverged] {config.model_dir}: {error}")
        return
    try:
        runner.run_or_reuse(config, log=log)
    except TrainingDivergedError as e:
        run_dir.write_diverged(config.model_dir, str(e), config.resolved().training_settings())
        log(f"[diverged] {config.model_dir}: {e} The study goes on; the run counts as diverged.")
        return
    if config.dataset in study_report.RETRIEVAL_DATASETS:
        evaluate.evaluate_or_reuse(config.model_dir, data_dir=config.data_dir, log=log)


def check_stopping(seeds, target_halfwidth, max_seeds):
    """ConfigError unless ``--target_halfwidth`` (points, > 0) and ``--max_seeds`` (at least
    as many as ``--seeds``) come together or not at all."""
    if (target_halfwidth is None) != (max_seeds is None):
        raise cfg.ConfigError("--target_halfwidth and --max_seeds go together: seeds are added until "
                              "every half-width is at most the target or --max_seeds seeds are done.")
    if target_halfwidth is not None and not (math.isfinite(target_halfwidth) and target_halfwidth > 0):
        raise cfg.ConfigError(f"--target_halfwidth must be a positive number of points; got {target_halfwidth}.")
    if max_seeds is not None and max_seeds < len(seeds):
        raise cfg.ConfigError(f"--max_seeds={max_seeds} is fewer than the {len(seeds)} seeds of --seeds.")


def _baseline_and_target(arms, baseline, target_halfwidth):
    """The baseline arm's label (default: the first arm; ConfigError when it is not an
    arm) and the target half-width as a fraction (``target_halfwidth`` is in points)."""
    from dml_tf import study_report

    baseline = baseline or arms[0].label
    if baseline not in [arm.label for arm in arms]:
        raise cfg.ConfigError(f"--baseline {baseline!r} is not an arm; the arms are "
                              f"{', '.join(arm.label for arm in arms)}.")
    target = study_report.DEFAULT_TARGET if target_halfwidth is None else target_halfwidth / 100
    return baseline, target


def run_study(base, arms, seeds, study_dir, baseline=None, export_dir=None, log=print,
              focus_member=None, target_halfwidth=None, max_seeds=None):
    """Trains (or reuses) every run of the study and writes its report after each; returns
    the report (:func:`dml_tf.study_report.build`). With ``target_halfwidth`` (points) and
    ``max_seeds``, adds seeds (the next integers) until every comparison's 95% half-width is
    at most ``target_halfwidth`` or ``max_seeds`` seeds are done: the width alone decides,
    never the sign of a difference or whether it is resolved."""
    from dml_tf import study_report

    check_stopping(seeds, target_halfwidth, max_seeds)
    baseline, target = _baseline_and_target(arms, baseline, target_halfwidth)
    seeds = list(seeds)
    runs = plan(base, arms, seeds, study_dir)
    os.makedirs(study_dir, exist_ok=True)
    done, report = set(), None
    while True:
        for run in runs:
            if run.config.model_dir in done:
                continue
            log(f"[study {len(done) + 1}/{len(runs)}] arm {run.arm}, seed {run.seed}: {run.config.model_dir}")
            train_run(run, log)
            done.add(run.config.model_dir)
            last = len(done) == len(runs)
            report = study_report.write(runs, study_dir, baseline, log=log if last else None,
                                        focus_member=focus_member, target=target)
            if export_dir:
                export_evidence(runs, study_dir, export_dir)
        widest = study_report.widest_halfwidth(report)
        if target_halfwidth is None or widest <= target or len(seeds) >= max_seeds:
            break
        seeds.append(max(seeds) + 1)
        log(f"[study] widest 95% half-width {100 * widest:.2f} points > {target_halfwidth:.2f}: "
            f"adding seed {seeds[-1]} ({len(seeds)} of at most {max_seeds})")
        runs = plan(base, arms, seeds, study_dir)
    if target_halfwidth is not None:
        log(f"[study] stopped at {len(seeds)} seeds: widest 95% half-width "
            f"{100 * study_report.widest_halfwidth(report):.2f} points (target {target_halfwidth:.2f}).")
    log(study_report.verdict_lines(report))
    return report


def _seeds_trained_after(base, arms, seeds, study_dir, max_seeds):
    """``seeds`` and the seeds :func:`run_study` added after them (the next integers, up to
    ``max_seeds`` in all) that have a finished or diverged run in ``study_dir``."""
    from dml_tf import run_dir

    seeds = list(seeds)
    while max_seeds is not None and len(seeds) < max_seeds:
        nxt = plan(base, arms, [max(seeds) + 1], study_dir)
        if not any(run_dir.is_finished(r.config.model_dir)
                   or run_dir.read_diverged(r.config.model_dir) is not None
                   for r in nxt):
            break
        seeds.append(max(seeds) + 1)
    return seeds


def report_only(base, arms, seeds, study_dir, baseline=None, export_dir=None, log=print,
                focus_member=None, target_halfwidth=None, max_seeds=None):
    """Writes the report of the study's finished runs without training anything (e.g. from a
    published ``results/`` folder, whose ``ARM/seed_S/results.json`` are the runs); returns it.
    With ``target_halfwidth`` and ``max_seeds`` (a study that added seeds) it also reports
    the seeds after ``seeds`` that have runs, as :func:`run_study` reported them."""
    from dml_tf import run_dir, study_report

    check_stopping(seeds, target_halfwidth, max_seeds)
    baseline, target = _baseline_and_target(arms, baseline, target_halfwidth)
    runs = plan(base, arms, _seeds_trained_after(base, arms, seeds, study_dir, max_seeds), study_dir)
    if not any(run_dir.is_finished(r.config.model_dir) for r in runs):
        raise cfg.ConfigError(f"--report_only: {study_dir} holds no finished run of this study "
                              "(ARM/seed_S/results.json).")
    report = study_report.write(runs, study_dir, baseline, log=log, focus_member=focus_member,
                                target=target)
    if export_dir:
        export_evidence(runs, study_dir, export_dir)
    log(study_report.verdict_lines(report))
    return report


# ------------------------------------------------------------------------ command line


def define_flags():
    for name in cfg.FIELDS:
        if name not in STUDY_SET:
            cli_flags.define_setting(name)
    cli_flags.define("string", "study_dir", None, "Folder of the study: one run per ARM/seed_S, "
                     "and the report (study.json, study.md, study.png).")
    cli_flags.define("list", "seeds", ["0", "1", "2"], "Seeds; each trains every arm once.")
    cli_flags.define("multi_string", "arm", list(DEFAULT_ARMS),
                     "An arm: a mode (dml, independent) or LABEL:SETTING=VALUE;... "
                     "(e.g. dml_ramp:mode=dml;mimicry_warmup_epochs=5). Repeat for each arm. "
                     "teacher=@ARM:K distils from member K of an earlier arm's run of the same "
                     "seed (distill:mode=distill;teacher=@independent:0).")
    cli_flags.define("string", "baseline", None, "The arm every other arm is compared with "
                     "(default: the first).")
    cli_flags.define("string", "export_dir", None, "Also copy the report and each run's "
                     "results.json (no weights) here: the evidence to publish.")
    cli_flags.define("integer", "focus_member", None, "The member whose paired comparisons "
                     "come first in the report (default: with members of different networks, the "
                     "one with the fewest parameters; else the member mean first).")
    cli_flags.define("float", "target_halfwidth", None, "With --max_seeds: add seeds until every "
                     "comparison's 95% half-width is at most this many points, or --max_seeds seeds "
                     "are done. Stopping depends only on the width, never on the sign or on "
                     "'resolved': stopping once a result looks significant inflates false positives.")
    cli_flags.define("integer", "max_seeds", None, "With --target_halfwidth: the most seeds to run "
                     "(the seeds after --seeds are the next integers).")
    cli_flags.define("bool", "report_only", False, "Train nothing: write the report of the runs "
                     "already finished in --study_dir (e.g. --study_dir=results/STUDY rebuilds a "
                     "published report from its results.json files).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from dml_tf.errors import DMLError, TrainingDivergedError

    if not FLAGS.study_dir:
        raise app.UsageError("--study_dir is required: the folder of the study's runs and report.")
    try:
        seeds = [int(s) for s in FLAGS.seeds]
    except ValueError:
        raise app.UsageError(f"--seeds must be comma-separated integers; got {','.join(FLAGS.seeds)}.")
    try:
        arms = [parse_arm(spec) for spec in FLAGS.arm]
        base = cfg.TrainConfig(**{name: FLAGS[name].value for name in cfg.FIELDS if name not in STUDY_SET})
        if FLAGS.report_only:
            report_only(base, arms, seeds, FLAGS.study_dir, FLAGS.baseline, FLAGS.export_dir,
                        focus_member=FLAGS.focus_member, target_halfwidth=FLAGS.target_halfwidth,
                        max_seeds=FLAGS.max_seeds)
        else:
            run_study(base, arms, seeds, FLAGS.study_dir, FLAGS.baseline, FLAGS.export_dir,
                      focus_member=FLAGS.focus_member, target_halfwidth=FLAGS.target_halfwidth,
                      max_seeds=FLAGS.max_seeds)
    except TrainingDivergedError as e:
        raise SystemExit(f"dml_tf.study: {e}") from None
    except (DMLError, ValueError) as e:  # cfg.ConfigError is a ValueError
        raise app.UsageError(str(e)) from None


def run():
    from dml_tf import cli

    define_flags()
    cli.run(main, doc=__doc__)


if __name__ == "__main__":
    run()
