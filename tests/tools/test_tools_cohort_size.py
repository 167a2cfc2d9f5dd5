"""tools/cohort_size.py: a tiny digits sweep (tiny_cnn, K <= 2, 1 epoch, 2 steps)."""

import json
import os

import numpy as np
import pytest

from helpers_tools import load_tool


def test_cohort_size_sweep_and_resume(digits_sweep):
    tool = load_tool("cohort_size")
    out, lines, kwargs = digits_sweep  # conftest.py: the sweep, run once (its runs serve other tests)
    assert sum(l.startswith("[train]") for l in lines) == 4  # k1 shared + 3 methods at K=2
    assert sorted(os.listdir(out)) == sorted(["k1_seed0", "dml_k2_seed0", "dml_e_k2_seed0",
                                              "independent_k2_seed0", "cohort_size.json", "cohort_size.png"])
    data = json.loads((out / "cohort_size.json").read_text())
    assert (out / "cohort_size.png").stat().st_size > 1000
    assert set(data["methods"]) == {"dml", "dml_e", "independent"}
    for method, points in data["methods"].items():
        assert [p["k"] for p in points] == [1, 2]
        for p in points:
            run = json.loads((out / p["runs"][0] / "results.json").read_text())
            accs = [m["test_accuracy"] for m in run["members"]]
            assert len(accs) == p["k"]
            assert p["member_mean"] == pytest.approx(np.mean(accs))
            assert p["member_std"] == pytest.approx(np.std(accs))
            assert p["ensemble_mean"] == pytest.approx(run["ensemble_test_accuracy"])
            assert 0 <= p["member_mean"] <= 1
    configs = {d: json.loads((out / d / "results.json").read_text())["config"]
               for d in ("dml_k2_seed0", "dml_e_k2_seed0", "independent_k2_seed0", "k1_seed0")}
    assert (configs["dml_k2_seed0"]["mode"], configs["dml_k2_seed0"]["mimicry"]) == ("dml", "kl")
    assert (configs["dml_e_k2_seed0"]["mode"], configs["dml_e_k2_seed0"]["mimicry"]) == ("dml", "ensemble")
    assert configs["independent_k2_seed0"]["mode"] == "independent"
    assert configs["k1_seed0"]["nets"] == ["tiny_cnn"] and configs["k1_seed0"]["steps_per_epoch"] == 2
    # Started again: every run is reused, nothing retrained, same numbers.
    lines = []
    again = tool.compute(str(out), log=lines.append, **kwargs)
    assert not any(l.startswith("[train]") for l in lines)
    assert sum(l.startswith("[skip]") for l in lines) == 4
    assert again["methods"] == data["methods"]
    # Started again with other settings: refused, naming the difference, not silently reused.
    from absl import app

    with pytest.raises(app.UsageError, match="k1_seed0 holds a finished run with other settings "
                                             r"\(--batch_size: 32 in the run, 16 now\)"):
        tool.compute(str(out), log=lines.append, **dict(kwargs, batch_size=16))


def test_cohort_size_usage_errors(tmp_path):
    from absl import app

    tool = load_tool("cohort_size")
    with pytest.raises(app.UsageError, match="--methods"):
        tool.compute(str(tmp_path), methods="dml,bogus")
    with pytest.raises(app.UsageError, match="--max_k"):
        tool.compute(str(tmp_path), max_k=0)
    with pytest.raises(app.UsageError, match="--net"):
        tool.compute(str(tmp_path), net="resnet9000")
    with pytest.raises(app.UsageError, match="--seeds"):
        tool.compute(str(tmp_path), seeds="x")
    with pytest.raises(app.UsageError, match="--dataset"):
        tool.compute(str(tmp_path), dataset="mnist")
