"""Test-wide settings (quiet TensorFlow, CPU only, small thread pools) and shared fixtures."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# One OpenMP thread (scikit-learn's t-SNE): on a loaded 2-core machine its spinning
# threads made a 7-point embedding take seconds. Inherited by the tools' subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys

# The repository (dml_tf, tools) and this folder (the shared helpers, imported by the
# tests in the subfolders that mirror the package: data/, nets/, reid/, tools/).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def market_data(tmp_path_factory):
    """``(data_dir, written)``: the fake Market-1501 of tests/helpers_market.py, in the real layout."""
    import helpers_market

    root = tmp_path_factory.mktemp("market") / "Market-1501-v15.09.15"
    return str(root), helpers_market.write_market1501(root)


@pytest.fixture(scope="session")
def market_run(market_data, tmp_path_factory):
    """A finished 2 x tiny_cnn DML run on ``market_data`` (1 epoch, 2 steps), as dml_tf.train makes it."""
    import helpers_market
    from dml_tf import config as cfg
    from dml_tf import runner

    model_dir = str(tmp_path_factory.mktemp("market_runs") / "dml")
    config = cfg.TrainConfig(dataset="market1501", data_dir=market_data[0], nets=("tiny_cnn", "tiny_cnn"),
                             model_dir=model_dir, epochs=1, steps_per_epoch=2, batch_size=4,
                             image_size=(helpers_market.HEIGHT, helpers_market.WIDTH), verbose=0)
    runner.run(config, log=lambda s: None)
    return model_dir


@pytest.fixture(scope="session")
def digits_sweep(tmp_path_factory):
    """tools/cohort_size.py on digits (tiny_cnn, K <= 2, 1 epoch of 2 steps), run once:
    ``(folder, its log lines, its arguments)``. Its trained runs (``k1_seed0``: one network,
    ``dml_k2_seed0``: a DML pair, ...) also serve the tool command tests."""
    from helpers_tools import load_tool

    kwargs = dict(dataset="digits", net="tiny_cnn", max_k=2, methods="dml,dml_e,independent", seeds="0",
                  epochs=1, steps_per_epoch=2, batch_size=32)
    out, lines = tmp_path_factory.mktemp("digits_sweep") / "sweep", []
    load_tool("cohort_size").compute(str(out), log=lines.append, **kwargs)
    return out, lines, kwargs
