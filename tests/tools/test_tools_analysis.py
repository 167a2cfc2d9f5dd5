"""dml_tf.analysis, tools/posterior_stats.py and tools/noise_robustness.py on tiny runs."""

import hashlib
import json
import os

import numpy as np
import pytest

from helpers_tools import load_tool
from numpy_reference import entropy, softmax

LIMIT = 40


def write_fake_run(run_dir, mode, seeds, mimicry="kl"):
    """A finished-run folder written by dml_tf.run_dir, as the runner writes it, with
    untrained tiny_cnn members."""
    from types import SimpleNamespace

    from dml_tf import nets
    from dml_tf import run_dir as run_folder
    from dml_tf.config import TrainConfig

    os.makedirs(run_dir, exist_ok=True)
    members = [nets.build("tiny_cnn", num_classes=10, input_shape=(32, 32, 3), seed=seed, name=f"tiny_{k}")
               for k, seed in enumerate(seeds)]
    config = TrainConfig(dataset="digits", batch_size=16, mode=mode, mimicry=mimicry,
                         nets=("tiny_cnn",) * len(seeds), model_dir=run_dir)
    bundle = SimpleNamespace(name="digits", num_classes=10, train_size=None, test_size=None, extras={})
    history = {f"ce_{k}": [2.3, 2.0] for k in range(len(seeds))}
    run_folder.save_members(run_dir, members)
    run_folder.write_results(run_dir, run_folder.make_results(
        config, bundle, members, history, epochs_run=2, test={f"accuracy_{k}": 0.1 for k in range(len(seeds))},
        wall_time=1.0))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    dml, ind = str(base / "dml"), str(base / "ind")
    write_fake_run(dml, "dml", [1, 2])
    write_fake_run(ind, "independent", [3])
    return dml, ind


def numpy_probs(path):
    """Member probabilities on the first LIMIT training digits, standardised in NumPy."""
    import keras

    from dml_tf.data import digits

    arrays = digits.load_arrays()
    train = arrays["train_images"].astype(np.float64)
    mean = train.mean(axis=(0, 1, 2))
    std = train.std(axis=(0, 1, 2))
    x = ((train[:LIMIT] - mean) / std).astype(np.float32)
    logits = keras.models.load_model(path, compile=False).predict(x, verbose=0).astype(np.float64)
    return softmax(logits), arrays["train_labels"][:LIMIT]


def test_posterior_statistics_closed_forms():
    from dml_tf import analysis

    uniform = analysis.posterior_statistics(np.full((4, 10), 0.1))
    assert uniform["mean_entropy"] == pytest.approx(np.log(10))
    assert uniform["top_k_mean_probability"] == pytest.approx([0.1] * 5)
    onehot = analysis.posterior_statistics(np.eye(10)[[3, 1, 4]])
    assert onehot["mean_entropy"] == pytest.approx(0.0)
    assert onehot["top_k_mean_probability"] == pytest.approx([1, 0, 0, 0, 0])
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(7), size=30)
    stats = analysis.posterior_statistics(p)
    assert stats["top_k_mean_probability"] == pytest.approx(np.sort(p, axis=1)[:, ::-1][:, :5].mean(0))
    assert stats["mean_entropy"] == pytest.approx(entropy(p).mean())
    with pytest.raises(ValueError):
        analysis.posterior_statistics(np.zeros((0, 3)))


def test_teaching_signal_entropy_matches_numpy():
    from dml_tf import analysis

    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(6) * 0.3, size=(3, 25))
    out = analysis.teaching_signal_entropy(p)
    for k in range(3):
        peers = [l for l in range(3) if l != k]
        assert out["per_member"][k]["dml"] == pytest.approx(np.mean([entropy(p[l]).mean() for l in peers]))
        assert out["per_member"][k]["dml_e"] == pytest.approx(entropy(p[peers].mean(0)).mean())
        assert out["per_member"][k]["dml_e"] >= out["per_member"][k]["dml"]  # concavity
    with pytest.raises(ValueError):
        analysis.teaching_signal_entropy(p[:1])


def test_posterior_stats_tool_matches_numpy(runs, tmp_path):
    tool = load_tool("posterior_stats")
    dml, ind = runs
    lines = []
    payload = tool.compute(f"{dml},{ind}", str(tmp_path), limit=LIMIT, log=lines.append)
    assert any("member 1" in l for l in lines)
    written = json.loads((tmp_path / "posterior_stats.json").read_text())
    assert (tmp_path / "posterior_stats.png").stat().st_size > 1000
    assert written["split"] == "train" and [r["mode"] for r in written["runs"]] == ["dml", "independent"]
    for run_dir, entry in zip(runs, written["runs"]):
        entropies = []
        for m in entry["members"]:
            p, _ = numpy_probs(os.path.join(run_dir, f"member_{m['index']}.keras"))
            assert m["num_images"] == LIMIT
            assert m["mean_entropy"] == pytest.approx(entropy(p).mean(), abs=1e-5)
            assert m["top_k_mean_probability"] == pytest.approx(
                np.sort(p, axis=1)[:, ::-1][:, :5].mean(0), abs=1e-5)
            entropies.append(entropy(p).mean())
        assert entry["mean_entropy"] == pytest.approx(np.mean(entropies), abs=1e-5)
    teach = written["runs"][0]["teaching_signal_entropy"]
    p0, _ = numpy_probs(os.path.join(dml, "member_0.keras"))
    p1, _ = numpy_probs(os.path.join(dml, "member_1.keras"))
    assert teach["dml"] == pytest.approx((entropy(p0).mean() + entropy(p1).mean()) / 2, abs=1e-5)
    # K = 2: each member has one peer, so the peer average IS the peer (DML_e == DML).
    assert teach["dml_e"] == pytest.approx(teach["dml"], abs=1e-9)
    assert written["runs"][1]["teaching_signal_entropy"] is None  # K = 1
    assert payload["paper"]["mean_entropy"]["dml"] == 1.7099


def test_posterior_stats_usage_errors(runs, tmp_path):
    from absl import app

    tool = load_tool("posterior_stats")
    with pytest.raises(app.UsageError, match="--runs"):
        tool.compute("", str(tmp_path))
    with pytest.raises(app.UsageError, match="results.json"):
        tool.compute(str(tmp_path), str(tmp_path / "o"))
    with pytest.raises(app.UsageError, match="--split"):
        tool.compute(runs[0], str(tmp_path), split="val")


def _hashes(run_dir):
    return {n: hashlib.sha256(open(os.path.join(run_dir, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(run_dir))}


def test_noise_robustness_tool(runs, tmp_path):
    tool = load_tool("noise_robustness")
    dml, ind = runs
    before = {r: _hashes(r) for r in runs}
    tool.compute([dml, ind], str(tmp_path), sigmas="0,0.05,0.5", draws=2, limit=LIMIT, log=lambda s: None)
    assert {r: _hashes(r) for r in runs} == before  # saved models untouched
    written = json.loads((tmp_path / "noise_robustness.json").read_text())
    assert (tmp_path / "noise_robustness.png").stat().st_size > 1000
    assert written["sigmas"] == [0.0, 0.05, 0.5]
    for run_dir, entry in zip(runs, written["runs"]):
        assert entry["history_ce"] == [2.3, 2.0]
        for m in entry["members"]:
            p, y = numpy_probs(os.path.join(run_dir, f"member_{m['index']}.keras"))
            clean = -np.log(p[np.arange(LIMIT), y]).mean()
            assert m["clean_loss"] == pytest.approx(clean, abs=1e-5)
            assert len(m["losses"]) == 3 and all(len(r) == 2 for r in m["losses"])
            assert all(abs(l - m["clean_loss"]) <= 1e-6 for l in m["losses"][0])  # sigma = 0
            assert m["losses"][2] != m["losses"][1]
            assert m["mean"][2] == pytest.approx(np.mean(m["losses"][2]))
            assert m["std"][2] == pytest.approx(np.std(m["losses"][2]))
            assert m["mean"][2] > m["clean_loss"]  # large noise hurts


def test_noisy_losses_restores_weights_and_is_seeded():
    from dml_tf import analysis, nets

    import tensorflow as tf

    model = nets.build("tiny_cnn", num_classes=3, input_shape=(8, 8, 3), seed=0)
    x = np.random.default_rng(0).normal(size=(6, 8, 8, 3)).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((x, np.array([0, 1, 2, 0, 1, 2]))).batch(4)
    before = [w.copy() for w in model.get_weights()]
    a = analysis.noisy_losses(model, data, [0.0, 0.3], draws=2, seed=5)
    b = analysis.noisy_losses(model, data, [0.0, 0.3], draws=2, seed=5)
    for w0, w1 in zip(before, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)
    assert a["losses"] == b["losses"]
    assert a["losses"][0] == [a["clean_loss"]] * 2
    with pytest.raises(ValueError):
        analysis.noisy_losses(model, data, [-1.0])


def test_noise_robustness_usage_errors(runs, tmp_path):
    from absl import app

    tool = load_tool("noise_robustness")
    with pytest.raises(app.UsageError, match="--sigmas"):
        tool.compute(runs[0], str(tmp_path), sigmas="0,abc")
    with pytest.raises(app.UsageError, match="--sigmas"):
        tool.compute(runs[0], str(tmp_path), sigmas="-0.1")
    with pytest.raises(app.UsageError, match="--draws"):
        tool.compute(runs[0], str(tmp_path), draws=0)
