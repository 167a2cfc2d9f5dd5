"""tools/semi_supervised.py: a tiny digits sweep (tiny_cnn, 1 epoch, 2 steps)."""

import json

import numpy as np
import pytest

from helpers_tools import load_tool


def test_semi_supervised_sweep(tmp_path):
    tool = load_tool("semi_supervised")
    out = tmp_path / "semi"
    lines = []
    data = tool.compute(str(out), dataset="digits", net="tiny_cnn", fractions="0.5,0.1", seeds="0",
                        epochs=1, steps_per_epoch=2, batch_size=32, log=lines.append)
    assert sum(l.startswith("[train]") for l in lines) == 6
    written = json.loads((out / "semi_supervised.json").read_text())
    assert written == json.loads(json.dumps(data))
    assert (out / "semi_supervised.png").stat().st_size > 1000
    assert written["amounts"] == [0.1, 0.5] and written["axis"] == "labeled fraction"
    expected = {"single": (1, "independent", "labeled"), "dml_labeled": (2, "dml", "labeled"),
                "dml_all": (2, "dml", "all")}
    for method, (k, mode, semi) in expected.items():
        for point in written["methods"][method]["points"]:
            run = json.loads((out / point["runs"][0] / "results.json").read_text())
            cfg = run["config"]
            assert (len(cfg["nets"]), cfg["mode"], cfg["semi"]) == (k, mode, semi)
            assert cfg["labeled_fraction"] == point["amount"]
            accs = [m["test_accuracy"] for m in run["members"]]
            assert point["mean"] == pytest.approx(np.mean(accs))
            assert point["std"] == pytest.approx(np.std(accs))
    lines = []
    tool.compute(str(out), dataset="digits", net="tiny_cnn", fractions="0.1,0.5", methods="dml_all",
                 epochs=1, steps_per_epoch=2, batch_size=32, log=lines.append)
    assert sum(l.startswith("[skip]") for l in lines) == 2 and not any(l.startswith("[train]") for l in lines)


def test_semi_supervised_usage_errors(tmp_path):
    from absl import app

    tool = load_tool("semi_supervised")
    with pytest.raises(app.UsageError, match="--fractions must be in"):
        tool.compute(str(tmp_path), fractions="0,0.5")
    with pytest.raises(app.UsageError, match="--fractions"):
        tool.compute(str(tmp_path), fractions=None)
    with pytest.raises(app.UsageError, match="--labeled_ids is for market1501"):
        tool.compute(str(tmp_path), fractions="0.5", labeled_ids="10")
    with pytest.raises(app.UsageError, match="--labeled_ids"):
        tool.compute(str(tmp_path), dataset="market1501", labeled_ids="0")
    with pytest.raises(app.UsageError, match="--methods"):
        tool.compute(str(tmp_path), fractions="0.5", methods="single,triple")
