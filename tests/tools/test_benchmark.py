"""python -m tools.benchmark --quick runs and writes the documented JSON (fields, not speed)."""

import json
import os
import subprocess
import sys
from paths import ROOT



def test_benchmark_quick_writes_json(tmp_path):
    output = tmp_path / "bench.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               KERAS_BACKEND="tensorflow")
    proc = subprocess.run(
        [sys.executable, "-m", "tools.benchmark", "--quick",
         "--steps=2", "--pipeline_images=128", f"--output={output}"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "independent" in proc.stdout and "input pipeline" in proc.stdout
    results = json.loads(output.read_text())

    assert results["settings"]["nets"] == ["tiny_cnn", "tiny_cnn"]
    assert results["settings"]["quick"] is True
    names = [(r["name"], r["jit_compile"]) for r in results["rows"]]
    assert names == [("independent", False), ("dml_simultaneous", False),
                     ("dml_sequential", False)]
    for row in results["rows"]:
        assert row["error"] is None
        assert row["step_s"] > 0 and row["images_per_s"] > 0
        assert row["ratio_to_independent"] > 0
        assert row["peak_rss_mib"] > 0
        assert len(row["round_step_s"]) == 2  # --steps rounds
        assert abs(row["step_s"] - sum(row["round_step_s"]) / 2) < 1e-12  # median of 2
        assert row["rss_growth_mib"] is not None
    independent = results["rows"][0]
    assert len(independent["member_step_s"]) == 2
    assert independent["ratio_to_independent"] == 1.0
    pipeline = results["pipeline"]
    assert pipeline["images_per_s"] > 0 and pipeline["over_fastest_dml_consumption"] > 0
    assert set(results["targets"]) == {"dml_simultaneous", "dml_sequential",
                                       "pipeline_over_dml"}
    assert results["peak_rss_mib"] > 0 and "ru_maxrss" in results["memory_note"]


def test_summarise_pairs_each_round_with_its_independent_cost():
    from tools import benchmark

    # Round 2 is a slow spell for everything; paired ratios ignore it.
    times = {"independent": [[1.0, 1.0], [4.0, 4.0], [1.0, 1.2]],
             "dml_simultaneous": [[2.1], [8.4], [2.2]]}
    rows = benchmark.summarise(times, batch=64)
    assert rows["independent"]["round_step_s"] == [2.0, 8.0, 2.2]
    assert rows["independent"]["step_s"] == 2.2
    assert rows["independent"]["member_step_s"] == [1.0, 1.2]
    assert rows["independent"]["ratio_to_independent"] == 1.0
    sim = rows["dml_simultaneous"]
    assert sim["step_s"] == 2.2 and sim["images_per_s"] == 64 / 2.2
    assert abs(sim["ratio_to_independent"] - 1.05) < 1e-12  # median of 1.05, 1.05, 1.0
    assert "member_step_s" not in sim
