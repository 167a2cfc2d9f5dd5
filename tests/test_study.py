"""dml_tf.study: arms, the paired interval, a whole study on tiny data (both arms, two
seeds, reuse on a second call, the report recomputed from the runs' own files)."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest

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
    assert study_report.paired_interval([0.3]) == {"n": 1, "mean": 0.3, "std": None,
                                                   "interval": None, "resolved": False}
    assert study_report.paired_interval([0.01, 0.011, 0.012])["resolved"]  # tight, above 0


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
        assert saved["arms"][arm]["ensemble"]["mean"] == pytest.approx(np.mean(ens))
        assert saved["arms"][arm]["ensemble"]["std"] == pytest.approx(np.std(ens, ddof=1))
        member0 = [accuracy[arm, s]["members"][0]["test_accuracy"] for s in (0, 1)]
        assert saved["arms"][arm]["members"][0]["mean"] == pytest.approx(np.mean(member0))
        entropy = [accuracy[arm, s]["training_fit"][1]["mean_entropy"] for s in (0, 1)]
        assert saved["arms"][arm]["train_mean_entropy"][1]["mean"] == pytest.approx(np.mean(entropy))
        last_acc = [accuracy[arm, s]["history"]["accuracy_0"][-1] for s in (0, 1)]
        assert saved["arms"][arm]["final_train_accuracy"][0]["mean"] == pytest.approx(np.mean(last_acc))
    pair = next(p for p in saved["paired"] if p["arm"] == "dml")
    diffs = []
    for s in (0, 1):
        mean = {a: np.mean([m["test_accuracy"] for m in accuracy[a, s]["members"]]) for a in ("dml", "independent")}
        diffs.append(mean["dml"] - mean["independent"])
    assert pair["member_mean"]["per_seed"] == pytest.approx(diffs)
    half = T_975[1] * np.std(diffs, ddof=1) / math.sqrt(2)
    assert pair["member_mean"]["interval"] == pytest.approx([np.mean(diffs) - half, np.mean(diffs) + half],
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


def test_verdict_sentences():
    pair = {"arm": "dml", "baseline": "independent",
            "member_mean": {"n": 3, "mean": 0.01, "interval": [0.002, 0.018], "resolved": True},
            "ensemble": {"n": 3, "mean": 0.01, "interval": [-0.01, 0.03], "resolved": False}}
    assert study_report.verdict(pair, "member_mean").endswith("resolved, dml is higher.")
    assert "NOT resolved" in study_report.verdict(pair, "ensemble")
    pair["ensemble"] = {"n": 1, "mean": 0.02, "interval": None, "resolved": False}
    assert "two seeds or more" in study_report.verdict(pair, "ensemble")
