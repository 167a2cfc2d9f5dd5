"""python -m tools.benchmark --quick runs and writes the documented JSON (fields, not speed);
its worker processes (a --baseline_tree's steps, the PyTorch loop) and paired ratios."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from paths import ROOT



def test_benchmark_quick_writes_json(tmp_path):
    output = tmp_path / "bench.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               KERAS_BACKEND="tensorflow", ONEDNN_MAX_CPU_ISA="AVX2")
    env.pop("ATEN_CPU_CAPABILITY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tools.benchmark", "--quick", "--pytorch=false",
         "--baseline_tree=now=.", "--steps=2", "--pipeline_images=128", f"--output={output}"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "independent" in proc.stdout and "input pipeline" in proc.stdout
    results = json.loads(output.read_text())

    from tools import _cpu
    cpu = results["host"]["cpu"]
    assert cpu == _cpu.describe(environ={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert cpu["isa_caps"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    table = proc.stdout[proc.stdout.index("nets=tiny_cnn,tiny_cnn") - len(_cpu.header(cpu)) - 1:]
    assert table.startswith(_cpu.header(cpu) + "\n")  # the table's first line names the CPU
    assert results["settings"]["nets"] == ["tiny_cnn", "tiny_cnn"]
    assert results["settings"]["quick"] is True
    names = [(r["name"], r["jit_compile"]) for r in results["rows"]]
    assert names == [("independent", False), ("dml_simultaneous", False),
                     ("dml_sequential", False), ("now_simultaneous", False),
                     ("now_sequential", False)]
    assert results["settings"]["baseline_trees"] == {"now": str(ROOT)}
    for row in results["rows"]:
        assert row["error"] is None
        assert row["step_s"] > 0 and row["images_per_s"] > 0
        assert row["ratio_to_independent"] > 0
        assert row["speed_over_pytorch"] is None  # --pytorch=false
        assert row["peak_rss_mib"] > 0
        assert len(row["round_step_s"]) == 2  # --steps rounds
        assert abs(row["step_s"] - sum(row["round_step_s"]) / 2) < 1e-12  # median of 2
        assert row["rss_growth_mib"] is not None
    for row in results["rows"][3:]:  # in a worker, with this checkout's dml_tf
        assert row["worker"] == {"dml_tf": os.path.join(str(ROOT), "dml_tf")}
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


def test_summarise_speed_over_pytorch_is_paired_per_round():
    from tools import benchmark

    times = {"independent": [[1.0], [2.0], [1.0]], "pytorch": [[1.0], [3.0], [1.2]],
             "dml_simultaneous": [[0.8], [2.0], [1.0]]}
    rows = benchmark.summarise(times, batch=8)
    assert rows["pytorch"]["speed_over_pytorch"] == 1.0
    assert abs(rows["dml_simultaneous"]["speed_over_pytorch"] - 1.25) < 1e-12  # of 1.25, 1.5, 1.2


def test_baseline_tree_without_dml_tf_is_a_usage_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tools.benchmark", "--quick", f"--baseline_tree=old={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert f"--baseline_tree=old={tmp_path}: {tmp_path} holds no dml_tf/cohort.py" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_pytorch_loop_is_cross_entropy_plus_kl_to_the_detached_peer():
    torch = pytest.importorskip("torch")
    from tools import torch_dml

    cohort = torch_dml.TorchDML(num_members=2, depth=8, num_classes=5, weight_decay=0.0, seed=0)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 4])
    with torch.no_grad():  # the members' training-mode predictions before the step
        logits = [m(x).double().numpy() for m in cohort.members]
    losses = cohort.step(x, y)

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    log_p = [log_softmax(z) for z in logits]
    for k in (0, 1):
        peer = log_p[1 - k]
        ce = -log_p[k][np.arange(4), y.numpy()].mean()
        kl = (np.exp(peer) * (peer - log_p[k])).sum(axis=1).mean()
        assert abs(losses[k] - (ce + kl)) < 1e-4


def test_profile_sums_op_events_per_type_and_skips_envelopes():
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    from tools import profile_step

    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    names = {1: "resnet/conv1/Conv2D:_MklNativeConv2D", 2: "ExecutorState::Process",
             3: "resnet/bn/mul:Mul", 4: "EagerLocalExecute: __inference_step_1"}
    for key, name in names.items():
        plane.event_metadata[key].name = name
    for line_name, events in (("tf_Compute/1", [(1, 3.0), (2, 9.0), (3, 0.5)]),
                              ("tf_Compute/2", [(1, 1.0), (4, 7.0)])):
        line = plane.lines.add(name=line_name)
        for key, ms in events:
            line.events.add(metadata_id=key, duration_ps=int(ms * 1e9))
    space.planes.add(name="/device:GPU:0").event_metadata[1].name = "x:Conv2D"  # not the host
    totals = profile_step.op_time_by_type(space)
    assert dict(totals) == {"_MklNativeConv2D": 4e-3, "Mul": 0.5e-3}


def test_profile_of_a_real_step_names_its_convolutions():
    import numpy as np
    import tensorflow as tf

    from tools import benchmark, profile_step

    x = tf.constant(np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32))
    y = tf.constant([0, 1, 2, 3])
    step = benchmark.make_step("keras", {"nets": ["tiny_cnn"], "num_classes": 4}, x, y, False)
    wall, by_type = profile_step.profile(step, warmup=1, steps=2)
    assert wall > 0
    assert any("Conv2D" in kind for kind in by_type) and all(s >= 0 for s in by_type.values())
    assert not any("::" in kind for kind in by_type)


def test_benchmark_folder_runs_and_writes_its_figures(tmp_path):
    output = tmp_path / "folder.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", KERAS_BACKEND="tensorflow")
    proc = subprocess.run(
        [sys.executable, "-m", "tools.benchmark_folder", "--num_images=40", "--size=16", "--classes=2",
         f"--folder={tmp_path / 'images'}", "--nets=tiny_cnn,tiny_cnn", "--batch_size=8", "--steps=2",
         "--pipeline_batches=3", "--cores=0", f"--output={output}"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    speed = next(line for line in proc.stdout.splitlines() if line.startswith("speed:"))
    assert "pipeline" in speed and "DML step" in speed and "x (target >= 3x" in speed
    assert "MiB for training (target < 2048 MiB" in proc.stdout and "TensorFlow imported" in proc.stdout
    results = json.loads(output.read_text())
    assert results["images"] == 40 and results["cache"] == "none"
    assert len([f for _, _, files in os.walk(tmp_path / "images") for f in files]) == 40
    assert results["ratio"] == pytest.approx(results["pipeline_images_per_s"] / results["dml_step_images_per_s"])
    assert 0 < results["peak_rss_mib_after_import"] <= results["peak_rss_mib_after_load"] \
        <= results["peak_rss_mib_after_pipeline"] <= results["peak_rss_mib"]


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 sse4_2 avx avx2 fma bmi2

processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 sse4_2 avx avx2 fma bmi2 avx512f
"""


def test_cpu_description_names_the_vector_extensions_and_the_isa_cap(tmp_path):
    from tools import _cpu

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    environ = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "1"}
    cpu = _cpu.describe(str(cpuinfo), environ)
    assert cpu == {"model": "AMD EPYC 7B13", "vector_extensions": ["sse4_2", "avx", "avx2", "fma"],
                   "isa_caps": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}
    assert _cpu.header(cpu) == ("CPU: AMD EPYC 7B13; vector extensions: sse4_2 avx avx2 fma; "
                                "instruction set capped: ONEDNN_MAX_CPU_ISA=AVX2, "
                                "ATEN_CPU_CAPABILITY=avx2")
    native = _cpu.describe(str(cpuinfo), {})
    assert native["isa_caps"] == {} and native["vector_extensions"] == cpu["vector_extensions"]
    assert _cpu.header(native).endswith("; no instruction-set cap")
    missing = _cpu.describe(str(tmp_path / "none"), {})
    assert missing["vector_extensions"] is None
    assert "vector extensions: unknown;" in _cpu.header(missing)
