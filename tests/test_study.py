"""dml_tf.study: arms, the paired interval, a whole study on tiny data (both arms, two
seeds, reuse on a second call, the report recomputed from the runs' own files)."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
from pathlib import Path

from dml_tf import config as cfg
from dml_tf import run_dir, study, study_report

import helpers_images

# Student's t, 97.5% quantile, from a printed table (not computed by the code under test).
T_975 = {1: 12.7062, 2: 4.3027, 4: 2.7764}


def test_parse_arm():
    assert study.parse_arm("dml") == study.Arm("dml", (("mode", "dml"),))
    arm = study.parse_arm("dml_ramp:mode=dml;mimicry_warmup_epochs=5;nets=resnet20,resnet20")
    assert dict(arm.settings) == {"mode": "dml", "mimicry_warmup_epochs": 5.0,
                                  "nets": ("resnet20", "resnet20")}
    for spec, words in [("mutual", "--mode must be one of"), ("x:mimicry_weight=2", "sets no mode"),
                        ("x:mode=dml;seed=3", "set by the study"), ("x:mode=dml;lr=3", "not SETTING=VALUE"),
                        ("x:mode=dml;epochs=many", "not a valid integer"), ("a/b", "folder name")]:
        with pytest.raises(cfg.ConfigError, match=words):
            study.parse_arm(spec)


@pytest.mark.parametrize("values", [[0.01, -0.004, 0.02], [0.5, 0.7], [1.0, 2.0, 3.0, 4.0, 5.5]])
def test_paired_interval_against_t_table(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T_975[n - 1] * sd / math.sqrt(n)
    got = study_report.paired_interval(values)
    assert got["n"] == n and got["mean"] == pytest.approx(mean) and got["std"] == pytest.approx(sd)
    assert got["interval"] == pytest.approx([mean - half, mean + half], rel=1e-4)
    assert got["resolved"] == (mean - half > 0 or mean + half < 0)


def test_paired_interval_needs_two_values():
    got = study_report.paired_interval([0.3])
    assert (got["n"], got["mean"], got["std"], got["interval"], got["resolved"]) == (1, 0.3, None, None, False)
    assert study_report.paired_interval([0.01, 0.011, 0.012])["resolved"]  # tight, above 0


def test_a_verdict_needs_three_seeds_and_a_spread():
    """Two seeds, or seeds that all give the same difference (an interval of width 0: a
    small test set), are not judged, however far from 0 the difference is."""
    two = study_report.paired_interval([0.5, 0.51])
    assert two["interval"] is not None and two["interval"][0] > 0  # excludes 0, but 2 seeds
    assert not two["judged"] and not two["resolved"]
    same = study_report.paired_interval([0.02, 0.02, 0.02])
    assert same["interval"] == pytest.approx([0.02, 0.02]) and same["half_width"] == 0
    assert not same["judged"] and not same["resolved"]
    pair = {"arm": "dml", "baseline": "independent"}
    assert "a verdict needs 3 seeds or more" in study_report.verdict(
        pair, {**two, "label": "member mean", "metric": "accuracy"})
    sentence = study_report.verdict(pair, {**same, "label": "member mean", "metric": "accuracy"})
    assert "not judged" in sentence and "width 0" in sentence and "resolved," not in sentence


def test_the_verdict_says_when_the_difference_is_one_test_image():
    # 50 test images: 1 image = 2 points; a +2-point difference is one image.
    c = study_report.paired_interval([0.02, 0.0, 0.04], granularity=1 / 50)
    assert c["coarse"]
    sentence = study_report.verdict({"arm": "dml", "baseline": "independent"},
                                    {**c, "label": "ensemble", "metric": "accuracy", "granularity": 1 / 50})
    assert "2.00 points: one image" in sentence
    assert not study_report.paired_interval([0.05, 0.03, 0.04], granularity=1 / 50)["coarse"]


def test_seeds_needed_for_a_target_half_width_against_the_t_table():
    # sd 2 points, target 2 points: t(5) 2.5706 * 2 / sqrt(6) = 2.099 > 2; t(6) 2.4469 * 2 / sqrt(7) = 1.850.
    assert study_report.seeds_needed(0.02, 0.02) == 7
    # sd 1, target 1: t(2) 4.3027 / sqrt(3) = 2.48, t(3) 3.1824 / 2 = 1.59, t(4) 2.7764 / sqrt(5) = 1.24,
    # t(5) 2.5706 / sqrt(6) = 1.049, t(6) 2.4469 / sqrt(7) = 0.925.
    assert study_report.seeds_needed(1.0, 1.0) == 7
    assert study_report.seeds_needed(0.0, 0.01) == 3  # a verdict needs 3 seeds whatever the sd
    assert study_report.seeds_needed(None, 0.01) is None and study_report.seeds_needed(1.0, 1e-4) is None
    c = study_report.paired_interval([0.01, -0.004, 0.02], target=0.01)
    sd = np.std([0.01, -0.004, 0.02], ddof=1)
    assert c["half_width"] == pytest.approx(T_975[2] * sd / math.sqrt(3), rel=1e-4)
    assert c["seeds_for_target"] == study_report.seeds_needed(sd, 0.01)


def test_plan_refuses_repeated_arms_and_seeds(tmp_path):
    base = cfg.TrainConfig(dataset="digits")
    with pytest.raises(cfg.ConfigError, match="labels must differ"):
        study.plan(base, [study.parse_arm("dml"), study.parse_arm("dml")], [0], str(tmp_path))
    with pytest.raises(cfg.ConfigError, match="distinct seeds"):
        study.plan(base, [study.parse_arm("dml")], [1, 1], str(tmp_path))


def test_plan_resolves_a_teacher_from_an_earlier_arm_of_the_same_seed(tmp_path):
    base = cfg.TrainConfig(dataset="digits", nets=("tiny_cnn", "resnet20"))
    arms = [study.parse_arm("independent"),
            study.parse_arm("distill:mode=distill;teacher=@independent:0")]
    runs = study.plan(base, arms, [3, 5], str(tmp_path))
    distill = [run for run in runs if run.arm == "distill"]
    assert [run.config.teacher for run in distill] == [
        (os.path.join(str(tmp_path), "independent", f"seed_{seed}", "member_0.keras"),)
        for seed in (3, 5)]
    assert [run.config.model_dir for run in runs] == [
        os.path.join(str(tmp_path), arm, f"seed_{seed}")
        for seed in (3, 5) for arm in ("independent", "distill")]
    for arm_specs, words in [(["distill:mode=distill;teacher=@independent:0", "independent"],
                              "names no earlier arm"),
                             (["independent", "distill:mode=distill;teacher=@independent"],
                              "must be @ARM:K")]:
        with pytest.raises(cfg.ConfigError, match=words):
            study.plan(base, [study.parse_arm(spec) for spec in arm_specs], [0], str(tmp_path))


def _base(**overrides):
    settings = dict(dataset="digits", nets=("tiny_cnn", "tiny_cnn"), epochs=2, steps_per_epoch=2,
                    batch_size=16, train_per_class=6, verbose=0, validation_freq=2)
    return cfg.TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    arms = [study.parse_arm("independent"), study.parse_arm("dml")]
    lines = []
    report = study.run_study(_base(), arms, [0, 1], str(root / "s"), export_dir=str(root / "export"),
                             log=lines.append)
    return root, arms, report, lines


def test_study_trains_every_arm_and_seed(tiny_study):
    root, arms, report, _ = tiny_study
    assert report["finished_runs"] == report["planned_runs"] == 4
    for arm in ("independent", "dml"):
        for seed in (0, 1):
            results = run_dir.read_results(str(root / "s" / arm / f"seed_{seed}"))
            assert results["config"]["seed"] == seed
            assert results["dataset"]["train_size"] == 60  # 6 per class
            assert results["validation_epochs"] == [2]
    # Within a seed the arms differ in their mode only: the same initial weights (members are
    # seeded by --seed) and the same batches (the pipeline is seeded by --seed).
    runs = study.plan(_base(), arms, [0, 1], str(root / "s"))
    for a, b in zip(runs[0::2], runs[1::2]):
        assert a.seed == b.seed and a.config.mode != b.config.mode
        assert dataclasses.replace(a.config, mode=b.config.mode, model_dir=b.config.model_dir) == b.config


def test_report_numbers_come_from_the_runs(tiny_study):
    root, _, report, _ = tiny_study
    saved = json.loads((root / "s" / "study.json").read_text())
    accuracy = {(arm, seed): run_dir.read_results(str(root / "s" / arm / f"seed_{seed}"))
                for arm in ("independent", "dml") for seed in (0, 1)}
    for arm in ("independent", "dml"):
        ens = [accuracy[arm, s]["ensemble_test_accuracy"] for s in (0, 1)]
        scores = saved["arms"][arm]["scores"]["accuracy"]
        assert scores["ensemble"]["mean"] == pytest.approx(np.mean(ens))
        assert scores["ensemble"]["std"] == pytest.approx(np.std(ens, ddof=1))
        member0 = [accuracy[arm, s]["members"][0]["test_accuracy"] for s in (0, 1)]
        assert scores["members"][0]["mean"] == pytest.approx(np.mean(member0))
        entropy = [accuracy[arm, s]["training_fit"][1]["mean_entropy"] for s in (0, 1)]
        assert saved["arms"][arm]["train_mean_entropy"][1]["mean"] == pytest.approx(np.mean(entropy))
        last_acc = [accuracy[arm, s]["history"]["accuracy_0"][-1] for s in (0, 1)]
        assert saved["arms"][arm]["final_train_accuracy"][0]["mean"] == pytest.approx(np.mean(last_acc))
    pair = next(p for p in saved["paired"] if p["arm"] == "dml")
    diffs = []
    for s in (0, 1):
        mean = {a: np.mean([m["test_accuracy"] for m in accuracy[a, s]["members"]]) for a in ("dml", "independent")}
        diffs.append(mean["dml"] - mean["independent"])
    member_mean = study_report.comparison(pair, "member_mean")
    assert member_mean["per_seed"] == pytest.approx(diffs)
    half = T_975[1] * np.std(diffs, ddof=1) / math.sqrt(2)
    assert member_mean["interval"] == pytest.approx([np.mean(diffs) - half, np.mean(diffs) + half],
                                                            rel=1e-4, abs=1e-9)
    md = (root / "s" / "study.md").read_text()
    assert "## Paired by seed" in md and "dml - independent" in md
    assert (root / "s" / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_holds_results_without_weights(tiny_study):
    root = tiny_study[0]
    files = sorted(os.path.relpath(os.path.join(d, f), root / "export")
                   for d, _, fs in os.walk(root / "export") for f in fs)
    assert files == sorted(["study.json", "study.md", "study.png"] +
                           [f"{a}/seed_{s}/results.json" for a in ("independent", "dml") for s in (0, 1)])


def test_second_call_reuses_and_other_settings_are_refused(tiny_study):
    root, arms, report, _ = tiny_study
    before = os.path.getmtime(root / "s" / "dml" / "seed_1" / "results.json")
    lines = []
    again = study.run_study(_base(), arms, [0, 1], str(root / "s"), log=lines.append)
    assert sum(line.startswith("[skip]") for line in lines) == 4
    assert not any(line.startswith("Training ") for line in lines)
    assert os.path.getmtime(root / "s" / "dml" / "seed_1" / "results.json") == before
    assert again["arms"] == report["arms"]
    with pytest.raises(cfg.ConfigError, match="--epochs: 2 in the run, 3 now"):
        study.run_study(_base(epochs=3), arms, [0, 1], str(root / "s"), log=lines.append)


def test_study_on_a_folder_of_images(tmp_path):
    """A user's own images (one sub-folder per class, JPEG and PNG) go through the study as
    the paper's datasets do: a seeded stratified subset, both arms, the report."""
    helpers_images.write_digit_folder(str(tmp_path / "images"), per_class=8, classes=range(3))
    base = _base(dataset="folder", data_dir=str(tmp_path / "images"), validation_split=0.25,
                 train_per_class=4, batch_size=6, epochs=1, validation_freq=1)
    report = study.run_study(base, [study.parse_arm("independent"), study.parse_arm("dml")], [0],
                             str(tmp_path / "s"), log=lambda line: None)
    assert report["finished_runs"] == 2
    for arm in ("independent", "dml"):
        results = run_dir.read_results(str(tmp_path / "s" / arm / "seed_0"))
        assert results["dataset"]["train_size"] == 12 and results["dataset"]["num_classes"] == 3
        assert 0.0 <= results["ensemble_test_accuracy"] <= 1.0
    assert "folder" in (tmp_path / "s" / "study.md").read_text()
    saw = json.loads((tmp_path / "s" / "study.json").read_text())["runs"][0]["data"]
    assert saw["dataset"] == "folder" and saw["train_images"] == 12 and len(saw["train_labels"]) == 16
    # The same study on other images (or on the folder after images were added, which moves
    # the split) must not reuse these runs.
    helpers_images.write_digit_folder(str(tmp_path / "more"), per_class=12, classes=range(3))
    with pytest.raises(cfg.ConfigError) as error:
        study.run_study(dataclasses.replace(base, data_dir=str(tmp_path / "more")),
                        [study.parse_arm("independent"), study.parse_arm("dml")], [0],
                        str(tmp_path / "s"), log=lambda line: None)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 's' / 'independent' / 'seed_0'} holds a finished run trained "
                              f"on other data (--data_dir: {tmp_path / 'images'} in the run, "
                              f"{tmp_path / 'more'} now): ")
    assert "test images: 6 in the run, 9 now" in message
    helpers_images.write_digit_folder(str(tmp_path / "images"), per_class=12, classes=range(3))
    with pytest.raises(cfg.ConfigError, match="holds a finished run trained on other data: test images: 6"):
        study.run_study(base, [study.parse_arm("independent")], [0], str(tmp_path / "s"), log=lambda line: None)


def test_a_diverging_run_is_recorded_and_the_study_goes_on(tmp_path):
    """A run whose loss becomes NaN stops neither the study nor its restart: it is an
    outcome of its arm, named in the report, and not trained again."""
    arms = [study.parse_arm("independent"), study.parse_arm("dml:mode=dml;learning_rate=1e30")]
    base = _base(epochs=1, steps_per_epoch=1, validation_freq=1)
    lines = []
    report = study.run_study(base, arms, [0], str(tmp_path), log=lines.append)
    assert report["finished_runs"] == 1 and report["diverged_runs"] == 1
    assert report["diverged"][0]["error"].startswith("Training diverged in epoch 1")
    assert any(line.startswith("[diverged]") for line in lines)
    assert "dml, seed 0: diverged (Training diverged in epoch 1" in (tmp_path / "study.md").read_text()
    lines.clear()
    again = study.run_study(base, arms, [0], str(tmp_path), log=lines.append)
    assert again["diverged_runs"] == 1 and not any(line.startswith("Training ") for line in lines)
    assert any("diverged earlier" in line for line in lines)
    with pytest.raises(cfg.ConfigError, match="holds a run that diverged with other settings"):
        study.run_study(base, [arms[0], study.parse_arm("dml:mode=dml;learning_rate=1e20")], [0],
                        str(tmp_path), log=lines.append)


def test_verdict_sentences():
    pair = {"arm": "dml", "baseline": "independent"}
    common = {"label": "member mean", "metric": "accuracy", "coarse": False}
    resolved = {**common, "n": 3, "mean": 0.01, "interval": [0.002, 0.018], "judged": True, "resolved": True}
    assert study_report.verdict(pair, resolved).endswith("resolved, dml is higher.")
    assert "NOT resolved" in study_report.verdict(pair, {**resolved, "interval": [-0.01, 0.03], "resolved": False})
    one = {**common, "n": 1, "mean": 0.02, "interval": None, "judged": False, "resolved": False}
    assert "on one seed; a verdict needs 3 seeds or more" in study_report.verdict(pair, one)


# ------------------------------------------------------- reports of hand-written runs


def _write_run(run, members, ensemble, parameters=(3_000_000, 400_000), test_size=1000, evaluation=None):
    """A finished run's results.json (and eval.json) in ``run``'s folder, written by hand:
    ``members`` the test accuracies; a distill run's member 0 is its frozen teacher."""
    config = run.config
    teachers = len(config.teacher) if config.mode == "distill" else 0
    results = {
        "config": dataclasses.asdict(config),
        "dataset": {"name": config.dataset, "num_classes": 10, "train_size": 100, "test_size": test_size},
        "preprocessing": {"input_shape": [32, 32, 3]},
        "members": [{"index": k, "net": net, "trainable": k >= teachers, "parameters": parameters[k],
                     "test_accuracy": acc} for k, (net, acc) in enumerate(zip(config.nets, members))],
        "ensemble_test_accuracy": ensemble, "wall_time_s": 1.0,
        "data": {"dataset": config.dataset, "test_images": test_size},
    }
    run_dir.write_results(config.model_dir, results)
    if evaluation is not None:
        (Path(config.model_dir) / "eval.json").write_text(json.dumps(evaluation))


def _compact_study(root, seeds=(0, 1, 2)):
    base = cfg.TrainConfig(dataset="cifar10", nets=("mobilenet", "resnet32"))
    arms = [study.parse_arm("independent"), study.parse_arm("dml"),
            study.parse_arm("distill:mode=distill;teacher=@independent:0")]
    return study.plan(base, arms, list(seeds), str(root))


# Test accuracies (member 0 = mobilenet, member 1 = resnet32) and ensemble, per arm and seed.
COMPACT = {("independent", 0): ([0.50, 0.55], 0.56), ("independent", 1): ([0.52, 0.54], 0.57),
           ("independent", 2): ([0.48, 0.53], 0.55),
           ("dml", 0): ([0.51, 0.58], 0.59), ("dml", 1): ([0.53, 0.55], 0.58), ("dml", 2): ([0.50, 0.57], 0.58),
           ("distill", 0): ([0.50, 0.56], 0.57), ("distill", 1): ([0.52, 0.56], 0.58),
           ("distill", 2): ([0.48, 0.55], 0.56)}


@pytest.fixture
def compact_runs(tmp_path):
    runs = _compact_study(tmp_path)
    for run in runs:
        _write_run(run, *COMPACT[run.arm, run.seed])
    return runs


def test_per_member_comparisons_with_the_compact_member_first(compact_runs):
    report = study_report.build(compact_runs, "independent")
    assert report["focus"]["member"] == 1 and report["focus"]["label"] == "resnet32 (member 1)"
    assert "fewest parameters" in report["focus"]["why"]
    dml = next(p for p in report["paired"] if p["arm"] == "dml")
    assert [c["label"] for c in dml["comparisons"]] == [
        "resnet32 (member 1)", "member mean", "ensemble", "mobilenet (member 0)"]
    resnet = study_report.comparison(dml, "member_1")
    want = [COMPACT["dml", s][0][1] - COMPACT["independent", s][0][1] for s in (0, 1, 2)]
    assert resnet["per_seed"] == pytest.approx(want)  # +3, +1, +4 points
    sd = np.std(want, ddof=1)
    assert resnet["std"] == pytest.approx(sd) and resnet["half_width"] == pytest.approx(
        T_975[2] * sd / math.sqrt(3), rel=1e-4)
    md = study_report.markdown(report)
    assert md.index("| dml - independent | resnet32 (member 1) |") < md.index("| dml - independent | member mean |")
    assert "Comparisons of resnet32 (member 1) come first: the member with the fewest parameters" in md
    verdicts = study_report.verdict_lines(report).splitlines()
    assert verdicts[1].startswith("dml - independent, resnet32 (member 1), test accuracy")
    # --focus_member=0 puts mobilenet first; a member the cohort lacks is refused.
    first = study_report.build(compact_runs, "independent", focus_member=0)["paired"][0]["comparisons"][0]
    assert first["label"] == "mobilenet (member 0)"
    with pytest.raises(cfg.ConfigError, match="--focus_member=2: the cohort has members 0 to 1"):
        study_report.build(compact_runs, "independent", focus_member=2)


def test_a_frozen_teacher_is_not_in_the_member_mean_nor_compared(compact_runs):
    report = study_report.build(compact_runs, "independent")
    distill = report["arms"]["distill"]
    assert distill["frozen"] == [True, False]
    # The member mean of the distill arm is its student alone (ResNet-32), not the teacher's average.
    assert distill["scores"]["accuracy"]["member_mean"]["mean"] == pytest.approx(np.mean([0.56, 0.56, 0.55]))
    pair = next(p for p in report["paired"] if p["arm"] == "distill")
    assert [c["label"] for c in pair["comparisons"]] == ["resnet32 (member 1)", "ensemble"]
    assert study_report.comparison(pair, "member_1")["per_seed"] == pytest.approx([0.01, 0.02, 0.02])
    assert "distill: mobilenet (member 0) is a frozen teacher" in study_report.markdown(report)
    # Without "trainable" (an earlier results.json), the distill run's first len(teacher) members.
    results = run_dir.read_results(compact_runs[2].config.model_dir)
    for member in results["members"]:
        del member["trainable"]
    assert run_dir.frozen_members(results) == [True, False]


def test_homogeneous_members_keep_the_member_mean_first(tmp_path):
    base = cfg.TrainConfig(dataset="cifar10", nets=("resnet32", "resnet32"))
    runs = study.plan(base, [study.parse_arm("independent"), study.parse_arm("dml")], [0, 1, 2], str(tmp_path))
    for run in runs:
        _write_run(run, *COMPACT[run.arm, run.seed], parameters=(466_426, 466_426))
    report = study_report.build(runs, "independent")
    assert report["focus"] is None
    assert [c["label"] for c in report["paired"][0]["comparisons"]] == [
        "member mean", "ensemble", "resnet32 (member 0)", "resnet32 (member 1)"]


def test_a_market1501_study_reports_map_and_rank1(tmp_path):
    """A re-id run has no test accuracy (results.json's test is {}): the report reads the
    eval.json beside it (mAP, rank-1, single query) instead of failing on None."""
    base = cfg.TrainConfig(dataset="market1501", nets=("mobilenet", "mobilenet"))
    runs = study.plan(base, [study.parse_arm("independent"), study.parse_arm("dml")], [0, 1, 2], str(tmp_path))
    scores = {}
    for run in runs:
        offset = 0.05 * (run.arm == "dml") + 0.01 * run.seed
        members = [{"index": k, "trainable": True, "single_query": {"mAP": 0.4 + offset + 0.01 * k,
                                                                    "rank1": 0.6 + offset - 0.01 * k}}
                   for k in range(2)]
        evaluation = {"members": members, "ensemble": {"single_query": {"mAP": 0.5 + offset, "rank1": 0.7 + offset}}}
        scores[run.arm, run.seed] = evaluation
        _write_run(run, [None, None], None, parameters=(3_000_000, 3_000_000), evaluation=evaluation)
    report = study_report.build(runs, "independent")
    assert report["metrics"] == ["mAP", "rank1"]
    pair = report["paired"][0]
    for metric, base_value in (("mAP", 0.4), ("rank1", 0.6)):
        mean = study_report.comparison(pair, "member_mean", metric)
        assert mean["per_seed"] == pytest.approx([0.05] * 3)
        ens = study_report.comparison(pair, "ensemble", metric)
        assert ens["per_seed"] == pytest.approx([0.05] * 3)
    assert report["arms"]["dml"]["scores"]["mAP"]["member_mean"]["mean"] == pytest.approx(0.4 + 0.05 + 0.01 + 0.005)
    md = study_report.markdown(report)
    assert "mAP (single query)" in md and "| dml - independent | member mean, rank1 |" in md
    # The training run itself has no accuracy to read.
    assert run_dir.member_accuracies(run_dir.read_results(runs[0].config.model_dir)) == [None, None]


def test_a_diverged_run_is_counted_and_named(compact_runs):
    diverged = compact_runs[4]  # dml, seed 1
    assert (diverged.arm, diverged.seed) == ("dml", 1)
    os.remove(run_dir.results_path(diverged.config.model_dir))
    run_dir.write_diverged(diverged.config.model_dir, "Training diverged in epoch 3: loss = nan", {})
    report = study_report.build(compact_runs, "independent")
    assert report["finished_runs"] == 8 and report["diverged_runs"] == 1
    assert report["arms"]["dml"]["diverged"] == [{"seed": 1, "error": "Training diverged in epoch 3: loss = nan"}]
    assert study_report.comparison(report["paired"][0], "member_1")["seeds"] == [0, 2]
    lines = study_report.verdict_lines(report)
    assert lines.splitlines()[0] == "Study: 8/9 runs finished, 1 diverged."
    assert "dml, seed 1: diverged (Training diverged in epoch 3: loss = nan)" in lines
    assert "| dml | 1 | diverged |" in study_report.markdown(report)
    # The published evidence keeps the outcome: a report rebuilt from it counts it too.
    export = Path(compact_runs[0].config.model_dir).parents[1] / "out"
    study.export_evidence(compact_runs, str(export.parent), str(export))
    assert (export / "dml" / "seed_1" / run_dir.DIVERGED_FILE).is_file()
    assert not (export / "dml" / "seed_1" / run_dir.RESULTS_FILE).exists()
    rebuilt = study_report.build(_compact_study(export), "independent")
    assert rebuilt["finished_runs"] == 8 and rebuilt["diverged"] == report["diverged"]


def test_target_halfwidth_adds_seeds_until_every_interval_is_narrow(tmp_path, monkeypatch):
    """Stopping looks at the widths only: the differences here are far from 0 (resolved at
    3 seeds) but wide, and the study goes on until they are narrow."""
    written = []

    def fake_train(run, log):  # dml - independent: +10 points, +-1 point by seed parity
        written.append((run.arm, run.seed))
        acc = 0.5 + (0.10 + (0.01 if run.seed % 2 else -0.01)) * (run.arm == "dml")
        _write_run(run, [acc, acc], acc, parameters=(1, 1))

    monkeypatch.setattr(study, "train_run", fake_train)
    monkeypatch.setattr(study_report, "write", lambda runs, study_dir, baseline, log=None, **kw:
                        study_report.build(runs, baseline, kw["focus_member"], kw["target"]))
    base = cfg.TrainConfig(dataset="cifar10", nets=("resnet32", "resnet32"))
    arms = [study.parse_arm("independent"), study.parse_arm("dml")]
    # Differences 9, 11, 9, 11, ... points: sd(3) = 1.155 -> half-width 2.87; sd(4) = 1.155 -> 1.84;
    # sd(5) = 1.095 -> 1.36; sd(6) = 1.095 -> 1.15; sd(7) = 1.069 -> 0.99.
    report = study.run_study(base, arms, [0, 1, 2], str(tmp_path), log=lambda line: None,
                             target_halfwidth=1.0, max_seeds=10)
    assert sorted({s for _, s in written}) == list(range(7))
    assert study_report.comparison(report["paired"][0], "member_mean")["half_width"] <= 0.01
    written.clear()
    study.run_study(base, arms, [0, 1, 2], str(tmp_path / "capped"), log=lambda line: None,
                    target_halfwidth=1.0, max_seeds=4)
    assert sorted({s for _, s in written}) == [0, 1, 2, 3]
    for kwargs, words in [({"target_halfwidth": 1.0}, "go together"),
                          ({"target_halfwidth": -1.0, "max_seeds": 5}, "positive number"),
                          ({"target_halfwidth": 1.0, "max_seeds": 2}, "fewer than the 3 seeds")]:
        with pytest.raises(cfg.ConfigError, match=words):
            study.run_study(base, arms, [0, 1, 2], str(tmp_path), **kwargs)


def test_report_only_of_a_study_that_added_seeds_reports_them_all(tmp_path, monkeypatch):
    """The study's flagfile lists the first seeds; --report_only with its --target_halfwidth
    and --max_seeds reports the seeds the study added too, as the study itself did (it
    reported 3 of 10 seeds before)."""
    def fake_train(run, log):  # dml - independent: 9, 11, 9, 11, ... points (as above)
        acc = 0.5 + (0.10 + (0.01 if run.seed % 2 else -0.01)) * (run.arm == "dml")
        _write_run(run, [acc, acc], acc, parameters=(1, 1))

    monkeypatch.setattr(study, "train_run", fake_train)
    base = cfg.TrainConfig(dataset="cifar10", nets=("resnet32", "resnet32"))
    arms = [study.parse_arm("independent"), study.parse_arm("dml")]
    quiet = dict(log=lambda line: None)
    trained = study.run_study(base, arms, [0, 1, 2], str(tmp_path), target_halfwidth=1.0, max_seeds=10, **quiet)
    assert trained["arms"]["dml"]["seeds"] == list(range(7))
    monkeypatch.setattr(study, "train_run", lambda run, log: pytest.fail(f"trained {run.config.model_dir}"))
    rebuilt = study.report_only(base, arms, [0, 1, 2], str(tmp_path), export_dir=str(tmp_path / "out"),
                                target_halfwidth=1.0, max_seeds=10, **quiet)
    assert json.loads(json.dumps(rebuilt)) == json.loads(json.dumps(trained))
    assert (tmp_path / "out" / "dml" / "seed_6" / "results.json").is_file()
    assert study.report_only(base, arms, [0, 1, 2], str(tmp_path), target_halfwidth=1.0, max_seeds=5,
                             **quiet)["arms"]["dml"]["seeds"] == [0, 1, 2, 3, 4]
    assert study.report_only(base, arms, [0, 1, 2], str(tmp_path), **quiet)["arms"]["dml"]["seeds"] == [0, 1, 2]
    with pytest.raises(cfg.ConfigError, match="go together"):
        study.report_only(base, arms, [0, 1, 2], str(tmp_path), max_seeds=10, **quiet)


def test_train_line_names_mixed_nets_as_they_are(tmp_path, monkeypatch):
    from dml_tf import runner

    monkeypatch.setattr(runner, "run", lambda config, log: {})
    for nets, words in [(("mobilenet", "resnet32"), "mobilenet, resnet32,"), (("resnet32",) * 2, "2 x resnet32,")]:
        lines = []
        runner.run_or_reuse(cfg.TrainConfig(dataset="digits", nets=nets, model_dir=str(tmp_path)), log=lines.append)
        assert lines == [f"[train] {tmp_path}: {words} mode=dml, mimicry=kl, seed=0"]


def test_report_only_rebuilds_the_report_from_finished_runs_and_trains_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "train_run", lambda run, log: pytest.fail(f"trained {run.config.model_dir}"))
    runs = _compact_study(tmp_path)
    for run in runs[:6]:  # seeds 0 and 1 finished, seed 2 not started
        _write_run(run, *COMPACT[run.arm, run.seed])
    base = cfg.TrainConfig(dataset="cifar10", nets=("mobilenet", "resnet32"))
    arms = [study.parse_arm("independent"), study.parse_arm("dml"),
            study.parse_arm("distill:mode=distill;teacher=@independent:0")]
    lines = []
    report = study.report_only(base, arms, [0, 1, 2], str(tmp_path), export_dir=str(tmp_path / "out"),
                               log=lines.append)
    assert report["planned_runs"] == 9 and report["finished_runs"] == 6
    written = json.loads((tmp_path / "study.json").read_text())
    assert written == json.loads(json.dumps(study_report.build(runs, "independent")))
    resnet = study_report.comparison(report["paired"][0], "member_1")
    assert resnet["per_seed"] == pytest.approx([0.03, 0.01])
    assert "not judged, a verdict needs 3 seeds" in lines[-1]
    assert (tmp_path / "out" / "study.md").is_file()
    assert (tmp_path / "out" / "dml" / "seed_1" / "results.json").is_file()
    assert not (tmp_path / "out" / "dml" / "seed_2").exists()
    with pytest.raises(cfg.ConfigError, match="holds no finished run of this study"):
        study.report_only(base, arms, [0, 1, 2], str(tmp_path / "empty"), log=lines.append)
    with pytest.raises(cfg.ConfigError, match="--baseline 'teacher' is not an arm"):
        study.report_only(base, arms, [0, 1, 2], str(tmp_path), baseline="teacher", log=lines.append)
