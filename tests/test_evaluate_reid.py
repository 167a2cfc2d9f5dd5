"""python -m dml_tf.evaluate on a tiny generated Market-1501 and two tiny saved members."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import app, flags

from dml_tf import evaluate as evaluate_module
import helpers_market
from paths import ROOT

SIZE = (8, 4)


def _member(seed):
    inputs = keras.Input((*SIZE, 3))
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu",
                            kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    outputs = keras.layers.Dense(4, name="logits")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data_dir = root / "Market-1501-v15.09.15"
    helpers_market.write_market1501(data_dir)
    model_dir = root / "run"
    model_dir.mkdir()
    members = []
    for k in range(2):
        _member(k).save(model_dir / f"member_{k}.keras")
        members.append({"index": k, "net": "tiny", "file": f"member_{k}.keras"})
    results = {"members": members, "config": {"dataset": "market1501", "data_dir": str(data_dir)}}
    (model_dir / "results.json").write_text(json.dumps(results))
    return str(data_dir), str(model_dir)


def _check_summary(summary, num_queries):
    assert set(summary) == {"mAP", "rank1", "rank5", "rank10", "rank20", "num_queries", "num_skipped"}
    for key in ("mAP", "rank1", "rank5", "rank10", "rank20"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["rank1"] <= summary["rank5"] <= summary["rank10"] <= summary["rank20"] == 1.0
    assert summary["num_queries"] + summary["num_skipped"] == num_queries


def test_main_writes_eval_json_features_and_plot(run_dir, tmp_path, capsys):
    data_dir, model_dir = run_dir
    output_dir = tmp_path / "out"
    argv = ["evaluate", "--dataset=market1501", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
            f"--output_dir={output_dir}", "--batch_size=7", "--verbose=0", "--mq_pool=max"]
    defined = evaluate_module.define_flags()
    try:
        flags.FLAGS(argv)
        assert evaluate_module.main(["evaluate"]) == 0
    finally:
        flags.FLAGS.unparse_flags()
        for name in defined:  # leave the process's flags as they were
            delattr(flags.FLAGS, name)
    table = capsys.readouterr().out
    assert "ensemble (concat, 6-d)" in table and "mean of members" in table

    with open(output_dir / "eval.json") as f:
        results = json.load(f)
    num_queries = len(helpers_market.QUERY)
    assert results["num_members"] == 2 and results["mq_pool"] == "max"
    assert results["image_size"] == list(SIZE)  # read from the members' input shape
    assert results["num_images"] == {"query": 5, "gallery": 15, "gt_bbox": 15}
    for entry in results["members"] + [results["ensemble"], results["mean"]]:
        for protocol in ("single_query", "multi_query"):
            summary = entry[protocol]
            if entry is results["mean"]:
                summary = dict(summary, num_queries=num_queries, num_skipped=0)
            _check_summary(summary, num_queries)
    assert results["ensemble"]["feature_dim"] == 6
    members_map = [m["single_query"]["mAP"] for m in results["members"]]
    assert results["mean"]["single_query"]["mAP"] == pytest.approx(np.mean(members_map))

    for k in range(2):
        npz = np.load(output_dir / f"features_member{k}.npz")
        assert npz["query_features"].shape == (5, 3)
        assert npz["gallery_features"].shape == (15, 3)
        assert npz["gt_bbox_features"].shape == (15, 3)
        assert list(npz["gallery_filenames"]) == sorted(npz["gallery_filenames"])
        assert set(npz["gallery_ids"]) == {-1, 0, 1, 3, 5}
        assert npz["query_cams"].shape == (5,)
    assert (output_dir / "cmc.png").read_bytes()[:4] == b"\x89PNG"
    assert not (os.path.exists(os.path.join(model_dir, "eval.json")))


def test_scores_match_direct_evaluation(run_dir, tmp_path):
    from dml_tf.data import market1501
    from dml_tf.reid import evaluate, extract_features

    data_dir, model_dir = run_dir
    results = evaluate_module.evaluate_run(model_dir, output_dir=str(tmp_path), verbose=0, ap_mode="standard",
                                           l2_normalize=False)  # data_dir from results.json
    bundle = market1501.load(data_dir, image_size=SIZE)
    q, g = bundle.extras["query"], bundle.extras["gallery"]
    model = keras.saving.load_model(os.path.join(model_dir, "member_1.keras"))
    qf, gf = extract_features(model, q.images, verbose=0), extract_features(model, g.images, verbose=0)
    direct = evaluate(qf, gf, q.ids, q.cams, g.ids, g.cams, ap_mode="standard")
    assert results["members"][1]["single_query"]["mAP"] == pytest.approx(direct["mAP"], rel=1e-5)
    assert results["members"][1]["single_query"]["rank1"] == pytest.approx(direct["cmc"][0])


def test_cli_loads_members_with_custom_layers(run_dir, tmp_path):
    """A resnet member (its ZeroPadShortcut is a dml_tf.nets layer) loads in a fresh
    ``python -m dml_tf.evaluate``, where nothing else imported dml_tf.nets."""
    from dml_tf import nets

    data_dir, _ = run_dir
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    member = nets.build("resnet20", num_classes=4, input_shape=(16, 8, 3), seed=0)
    assert any(type(layer).__name__ == "ZeroPadShortcut" for layer in member.layers)
    member.save(model_dir / "member_0.keras")
    (model_dir / "results.json").write_text(json.dumps({"members": [{"index": 0, "net": "resnet20"}]}))
    root = ROOT
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "dml_tf.evaluate", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
         "--verbose=0"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(model_dir / "eval.json") as f:
        results = json.load(f)
    assert results["image_size"] == [16, 8] and results["members"][0]["net"] == "resnet20"


def test_usage_errors(tmp_path):
    with pytest.raises(app.UsageError, match="--model_dir is required"):
        evaluate_module.read_members(None)
    with pytest.raises(app.UsageError, match="does not exist"):
        evaluate_module.read_members(str(tmp_path / "nope"))
    with pytest.raises(app.UsageError, match="No member files"):
        evaluate_module.read_members(str(tmp_path))
    (tmp_path / "results.json").write_text(json.dumps({"members": [{"index": 0, "file": "member_0.keras"}]}))
    with pytest.raises(app.UsageError, match="missing"):
        evaluate_module.read_members(str(tmp_path))
    os.remove(tmp_path / "results.json")
    (tmp_path / "member_1.keras").write_bytes(b"")
    (tmp_path / "member_0.keras").write_bytes(b"")
    members, _ = evaluate_module.read_members(str(tmp_path))  # no results.json: the files found
    assert [m["index"] for m in members] == [0, 1]


def test_no_query_with_a_match_is_an_error_not_a_table_of_nan(run_dir, tmp_path):
    data_dir, model_dir = run_dir
    copy = tmp_path / "Market-1501-v15.09.15"
    shutil.copytree(data_dir, copy)
    query_ids = {pid for pid, _ in helpers_market.QUERY}
    for name in os.listdir(copy / "bounding_box_test"):  # the gallery keeps no query identity
        if name.endswith(".jpg") and int(name.split("_")[0]) in query_ids:
            os.remove(copy / "bounding_box_test" / name)
    output_dir = tmp_path / "out"
    with pytest.raises(app.UsageError, match=r"None of the 5 queries in .*query has a true match"):
        evaluate_module.evaluate_run(model_dir, data_dir=str(copy), output_dir=str(output_dir), verbose=0)
    assert not (output_dir / "eval.json").exists()


def test_market_flagfiles_are_well_formed():
    folder = os.path.join(ROOT, "flags")
    names = [n for n in os.listdir(folder) if n.startswith("market1501_")]
    assert len(names) == 9
    for name in names:
        with open(os.path.join(folder, name)) as f:
            lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        values = dict(line[2:].split("=", 1) for line in lines)
        assert all(line.startswith("--") and "=" in line for line in lines), name
        assert values["dataset"] == "market1501" and values["epochs"] == "248"
        assert values["learning_rate"] == "0.0002" and values["batch_size"] == "16"
        assert values["model_dir"] == "runs/" + name[: -len(".flags")]
        assert ("pretrained" in values) == ("pretrained" in name)
        assert ("teacher" in values) == (values["mode"] == "distill")


def test_extract_features_needs_a_features_layer():
    from dml_tf.reid import extract_features

    inputs = keras.Input((*SIZE, 3))
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="no layer named 'features'"):
        extract_features(model, None)
