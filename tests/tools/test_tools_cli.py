"""The study tools as commands (``python -m tools.NAME --flag=...``) on runs trained once
(conftest.py): a tiny digits DML pair and single network, and a Market-1501 DML pair. The
sweeps' commands (cohort_size, semi_supervised) are in test_tools_market.py."""

import json
import os

import numpy as np
import pytest

import helpers_market
from helpers_tools import check_ok, run_cli

LIMIT = 40
TRAIN_IMAGES = sum(len(cams) for cams in helpers_market.TRAIN.values())  # all kept: fewer than LIMIT


@pytest.fixture(scope="module")
def digits_runs(digits_sweep):
    """``(runs folder, DML pair, one network)``: trained runs of the digits sweep (conftest.py)."""
    base = digits_sweep[0]
    return base, str(base / "dml_k2_seed0"), str(base / "k1_seed0")


@pytest.fixture(scope="module")
def commands(digits_runs, market_run, tmp_path_factory):
    """Every tool's command, and two with a bad flag, run at once: ``{key: (out dir, process)}``."""
    runs_dir, dml, ind = digits_runs
    where = tmp_path_factory.mktemp("cli")
    out = {key: where / key for key in
           ("posterior_stats", "noise_robustness", "tsne", "report", "bad_identities", "bad_sigmas")}
    runs = f"--runs={dml},{ind},{market_run}"
    todo = {  # key: (tool, flags)
        "posterior_stats": ("posterior_stats", [runs, f"--limit={LIMIT}"]),
        "noise_robustness": ("noise_robustness", [runs, f"--limit={LIMIT}", "--sigmas=0,0.5", "--draws=2"]),
        "tsne": ("tsne", [f"--runs={dml},{market_run}", "--members=1", "--identities=2", f"--limit={LIMIT}",
                          "--perplexity=3"]),
        "bad_identities": ("tsne", [f"--runs={dml}", "--identities=0"]),
        "bad_sigmas": ("noise_robustness", [f"--runs={dml}", "--sigmas=0,-1"]),
    }
    commands = [(tool, flags + [f"--output_dir={out[key]}"]) for key, (tool, flags) in todo.items()]
    commands.append(("report", [f"--runs_dir={runs_dir}", f"--output={out['report'] / 'report.md'}"]))
    os.makedirs(out["report"])
    procs = run_cli(*commands)
    return {key: (out[key], proc) for key, proc in zip(list(todo) + ["report"], procs)}


def outputs(out, stem, keys):
    assert (out / f"{stem}.png").stat().st_size > 1000
    data = json.loads((out / f"{stem}.json").read_text())
    assert set(data) == set(keys)
    return data


def test_posterior_stats_command(commands, digits_runs, market_run):
    out, proc = commands["posterior_stats"]
    check_ok(proc)
    data = outputs(out, "posterior_stats", {"split", "augmentation", "entropy_units", "runs", "paper", "definitions"})
    assert (data["split"], data["augmentation"]) == ("train", False)
    assert [r["run_dir"] for r in data["runs"]] == [digits_runs[1], digits_runs[2], market_run]
    assert [(r["dataset"], r["num_images"], len(r["members"])) for r in data["runs"]] == [
        ("digits", LIMIT, 2), ("digits", LIMIT, 1), ("market1501", TRAIN_IMAGES, 2)]
    assert [m["num_classes"] for m in data["runs"][2]["members"]] == [len(helpers_market.TRAIN)] * 2
    assert data["runs"][1]["teaching_signal_entropy"] is None and data["runs"][0]["teaching_signal_entropy"]


def test_noise_robustness_command(commands):
    out, proc = commands["noise_robustness"]
    check_ok(proc)
    data = outputs(out, "noise_robustness", {"split", "augmentation", "sigmas", "draws", "seed", "loss", "noise",
                                             "runs"})
    assert (data["sigmas"], data["draws"]) == ([0.0, 0.5], 2)
    assert [(r["dataset"], r["num_images"]) for r in data["runs"]] == [
        ("digits", LIMIT), ("digits", LIMIT), ("market1501", TRAIN_IMAGES)]
    for run in data["runs"]:
        assert len(run["history_ce"]) == 1  # one epoch trained
        for m in run["members"]:
            assert m["losses"][0] == [pytest.approx(m["clean_loss"], abs=1e-6)] * 2  # sigma = 0
            assert len(set(m["losses"][1])) == 2  # two different noise draws


def test_tsne_command_by_identity(commands, digits_runs, market_run):
    from dml_tf.data import digits as digits_data

    out, proc = commands["tsne"]
    check_ok(proc)
    data = outputs(out, "tsne", {"split", "num_images", "identities", "limit", "perplexity", "seed",
                                 "feature_layer", "embeddings"})
    assert (data["split"], data["identities"], data["limit"]) == ("test", 2, LIMIT)
    digits, market = data["embeddings"]
    assert (digits["run_dir"], digits["member"], market["run_dir"], market["member"]) == (
        digits_runs[1], 1, market_run, 1)
    # digits: the first 40 test images of classes 0 and 1; Market: the gallery images of ids 1 and 3
    test_labels = np.asarray(digits_data.load_arrays()["test_labels"])
    assert digits["labels"] == test_labels[np.isin(test_labels, [0, 1])][:LIMIT].tolist()
    assert market["labels"] == [pid for pid, _ in sorted(helpers_market.GALLERY) if pid in (1, 3)]
    assert [len(e["coordinates"]) for e in (digits, market)] == [LIMIT, 7]
    assert [e["num_images"] for e in (digits, market)] == [LIMIT, 7]
    assert data["num_images"] is None  # the runs' counts differ


def test_report_command(commands):
    out, proc = commands["report"]
    check_ok(proc)
    markdown = (out / "report.md").read_text()
    assert "Runs without a counterpart" in markdown and "dml_e_k2_seed0" in markdown
    assert "No run matches a setting of the paper's Tables 2-5" in markdown
    assert not (out / "report.png").exists()  # nothing to plot against the paper
    data = json.loads((out / "report.json").read_text())
    assert set(data) == {"source", "units", "rows", "unmatched"}
    runs = ["dml_e_k2_seed0", "dml_k2_seed0", "independent_k2_seed0", "k1_seed0"]
    assert sorted(u["run"] for u in data["unmatched"]) == runs and not data["rows"]  # tiny_cnn: no paper cell


@pytest.mark.parametrize("key,flag", [("bad_identities", "--identities"), ("bad_sigmas", "--sigmas")])
def test_a_bad_flag_is_a_usage_error_not_a_traceback(commands, key, flag):
    out, proc = commands[key]
    assert proc.returncode != 0
    assert flag in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not os.path.exists(out)  # refused before anything is written


def test_a_tool_started_as_a_script_says_how_to_run_it():
    import subprocess
    import sys

    from helpers_tools import ROOT

    proc = subprocess.run([sys.executable, os.path.join("tools", "report.py"), "--runs_dir=runs"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "Run it from the repository root as: python -m tools.report\n"
