"""Market-1501 end to end: train a 2-member cohort a few steps, then evaluate the run."""

import json

import numpy as np

import helpers_market
from dml_tf import config as cfg
from dml_tf import runner
from dml_tf.evaluate import evaluate_run


def test_train_then_evaluate_on_the_real_folder_layout(tmp_path):
    data_dir = tmp_path / "Market-1501-v15.09.15"
    helpers_market.write_market1501(data_dir)
    model_dir = tmp_path / "run"
    config = cfg.TrainConfig(
        dataset="market1501", data_dir=str(data_dir), nets=("tiny_cnn", "tiny_cnn"),
        model_dir=str(model_dir), epochs=1, steps_per_epoch=2, batch_size=4,
        image_size=(32, 16), ema_decay=0.9, verbose=0)
    results = runner.run(config, log=lambda s: None)
    assert results["config"]["optimizer"] == "adam" and results["config"]["beta1"] == 0.5
    assert results["config"]["label_smoothing"] == 0.1
    assert results["dataset"]["num_classes"] == len(helpers_market.TRAIN)
    assert results["test"] == {}  # re-id is scored by dml_tf.evaluate

    scores = evaluate_run(str(model_dir), verbose=0)
    saved = json.loads((model_dir / "eval.json").read_text())
    assert saved["num_members"] == 2
    for entry in saved["members"] + [saved["ensemble"]]:
        for protocol in ("single_query", "multi_query"):
            assert 0.0 <= entry[protocol]["mAP"] <= 1.0
    assert saved["ensemble"]["feature_dim"] == 2 * 32  # concatenated tiny_cnn features
    assert (model_dir / "cmc.png").stat().st_size > 0
    for k in range(2):
        npz = np.load(model_dir / f"features_member{k}.npz")
        assert npz["query_features"].shape == (len(helpers_market.QUERY), 32)
        assert npz["gallery_features"].shape[1] == 32
    assert scores["num_members"] == 2
