"""python -m tools.tsne on a fabricated run of untrained tiny_cnn members (digits test split)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers_tools import ROOT, load_tool

TOOLS = ("posterior_stats", "noise_robustness", "report", "cohort_size", "semi_supervised", "tsne")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from test_tools_analysis import write_fake_run

    path = str(tmp_path_factory.mktemp("runs") / "dml")
    write_fake_run(path, "dml", [1, 2])
    return path


def test_tsne_coordinates_and_plot(run_dir, tmp_path):
    import keras

    from dml_tf.data import digits

    tool = load_tool("tsne")
    data = tool.compute(run_dir, str(tmp_path), limit=30, perplexity=5, log=lambda s: None)
    written = json.loads((tmp_path / "tsne.json").read_text())
    assert (tmp_path / "tsne.png").stat().st_size > 1000
    assert written["num_images"] == 30 and [e["member"] for e in written["embeddings"]] == [0, 1]
    test_labels = digits.load_arrays()["test_labels"][:30]
    for e in written["embeddings"]:
        xy = np.asarray(e["coordinates"])
        assert xy.shape == (30, 2) and np.isfinite(xy).all() and xy.std(axis=0).min() > 0
        assert e["labels"] == test_labels.tolist() and e["feature_dim"] == 32
    # Same seed, same embedding; another member gives another one.
    again = tool.compute(run_dir, str(tmp_path / "again"), members="1", limit=30, perplexity=5, log=lambda s: None)
    assert [e["member"] for e in again["embeddings"]] == [1]
    np.testing.assert_allclose(again["embeddings"][0]["coordinates"], data["embeddings"][1]["coordinates"],
                               atol=1e-4)


def test_tsne_identities_keeps_the_first_classes_then_limit(run_dir, tmp_path):
    from dml_tf.data import digits

    labels = digits.load_arrays()["test_labels"]
    data = load_tool("tsne").compute(run_dir, str(tmp_path), members="0", identities=3, limit=25, perplexity=5,
                                     log=lambda s: None)
    assert data["embeddings"][0]["labels"] == labels[np.isin(labels, [0, 1, 2])][:25].tolist()
    assert (data["num_images"], data["identities"]) == (25, 3)


def test_tsne_usage_errors(run_dir, tmp_path):
    from absl import app

    tool = load_tool("tsne")
    with pytest.raises(app.UsageError, match="--perplexity"):
        tool.compute(run_dir, str(tmp_path), limit=30, perplexity=30)
    with pytest.raises(app.UsageError, match="--members"):
        tool.compute(run_dir, str(tmp_path), members="7", limit=30, perplexity=5)


def test_every_tool_has_help():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    started = {name: subprocess.Popen([sys.executable, "-m", f"tools.{name}", "--helpshort"], text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
               for name in TOOLS}  # at once: each pays TensorFlow's import
    for name, running in started.items():
        stdout, stderr = running.communicate(timeout=300)
        proc = subprocess.CompletedProcess(running.args, running.returncode, stdout, stderr)
        assert proc.returncode in (0, 1), proc.stderr  # absl exits 1 after printing help
        assert "Traceback" not in proc.stderr, proc.stderr
        flag = "--runs_dir" if name == "report" else "--output_dir"
        assert flag in proc.stdout and "Writes" in proc.stdout, (name, proc.stdout)


def test_select_images_takes_sorted_identities_then_limit():
    from dml_tf.data.pipeline import select_images

    labels = [5, -1, 3, 5, 9, 3, -1]  # -1: an unlabeled image, no identity
    assert select_images(labels).tolist() == list(range(7))
    assert select_images(labels, identities=2).tolist() == [0, 2, 3, 5]  # ids 3 and 5, not 5 and 3's order
    assert select_images(labels, identities=2, limit=3).tolist() == [0, 2, 3]
    assert select_images(labels, identities=9).tolist() == [0, 2, 3, 4, 5]
    for bad in (dict(identities=0), dict(limit=-1), dict(identities=True)):
        with pytest.raises(ValueError, match="positive integer"):
            select_images(labels, **bad)
    with pytest.raises(ValueError, match="No image is left"):
        select_images([-1, -1], identities=1)
