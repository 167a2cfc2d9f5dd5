"""tools/training_stability.py: the first steps of DML and independent training, measured."""

import json
import math

import pytest
from absl import app

from helpers_tools import load_tool

tool = load_tool("training_stability")


def test_conditions_parse_and_bad_ones_are_named():
    assert tool.parse_condition("dml") == ("dml", {})
    assert tool.parse_condition("independent:warmup=2:lr=0.05") == (
        "independent", {"warmup_epochs": 2.0, "learning_rate": 0.05})
    with pytest.raises(app.UsageError, match="'distill' must start with dml or independent"):
        tool.parse_condition("distill")
    with pytest.raises(app.UsageError, match="'speed=3' in 'dml:speed=3' must be warmup=E or lr=X"):
        tool.parse_condition("dml:speed=3")


def test_measures_dml_and_independent_from_the_same_start(tmp_path):
    json_path, png_path = tool.compute(str(tmp_path), dataset="digits", nets="tiny_cnn,tiny_cnn",
                                       conditions="dml,independent", steps=3, every=2, log=lambda s: None)
    record = json.loads(open(json_path).read())
    assert record["quantities"] == list(tool.QUANTITIES) and open(png_path, "rb").read(4) == b"\x89PNG"
    dml, independent = record["conditions"]["dml"], record["conditions"]["independent"]
    assert dml["steps"] == independent["steps"] == [0, 2]
    for k in range(2):
        first_dml, first_ind = dml["members"][k][0], independent["members"][k][0]
        # same seed, data and weights before the first update: the same cross-entropy and peer KL
        assert first_dml["ce"] == pytest.approx(first_ind["ce"], rel=1e-5)
        assert first_dml["mimicry"] == pytest.approx(first_ind["mimicry"], rel=1e-5) and first_dml["mimicry"] > 0
        # mimicry_weight 0: no mimicry gradient in independent training
        assert first_ind["grad_mimicry"] == 0 and first_dml["grad_mimicry"] > 0
        for row in dml["members"][k] + independent["members"][k]:
            assert all(math.isfinite(v) for v in row.values())
            assert 0 <= row["dead_features"] <= 1 and 0 <= row["relu_zero"] <= 1
            assert -1 - 1e-6 <= row["grad_cosine"] <= 1 + 1e-6
