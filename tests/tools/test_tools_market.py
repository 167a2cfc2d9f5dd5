"""Market-1501 in the study tools: the unaugmented splits (dml_tf.analysis), posterior
statistics / noise robustness (Fig. 4) and t-SNE by identity (Fig. 5) on a trained run,
and the cohort-size (Fig. 3) and semi-supervised (Fig. 6) sweeps run from the command
line on the fake folders of tests/helpers_market.py (tiny_cnn, 1 epoch, 1 step)."""

import json
import os

import numpy as np
import pytest

import helpers_market
from helpers_tools import check_ok, load_tool, run_cli
from numpy_reference import entropy, softmax

SIZE = (helpers_market.HEIGHT, helpers_market.WIDTH)  # the JPEGs' own size
SWEEP_FLAGS = dict(dataset="market1501", net="tiny_cnn", epochs=1, steps_per_epoch=1, batch_size=4,
                   image_size="16,8")
quiet = {"log": lambda s: None}


def person_id(name):
    return int(name.split("_")[0])


def file_images(data_dir, folder, names):
    """The JPEG files through the Market-1501 preprocessing (unflipped; checked against an
    independent computation in test_market1501_data.py)."""
    import tensorflow as tf

    from dml_tf.data import market1501

    return np.stack([market1501.preprocess(tf.io.read_file(os.path.join(data_dir, folder, n)), SIZE).numpy()
                     for n in names])


def collect(dataset):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(xs), np.concatenate(ys)


def split(data_dir, name, **kwargs):
    from dml_tf import analysis

    dataset, n = analysis.unaugmented_dataset("market1501", name, data_dir, batch_size=3,
                                              **dict({"image_size": SIZE}, **kwargs))
    x, y = collect(dataset)
    assert n == len(y)
    return x, y


def member_probs(run_dir, k, images):
    import keras

    model = keras.models.load_model(os.path.join(run_dir, f"member_{k}.keras"), compile=False)
    logits = model.predict(images, verbose=0).astype(np.float64)
    return softmax(logits)


def eval_sq_maps(run_dir):
    """``(member single-query mAPs, ensemble mAP)`` read from the run's eval.json."""
    with open(os.path.join(run_dir, "eval.json")) as f:
        ev = json.load(f)
    return [m["single_query"]["mAP"] for m in ev["members"]], ev["ensemble"]["single_query"]["mAP"]


# ----------------------------------------------------------------------------- the splits


@pytest.mark.parametrize("source", ["folders", "tfrecords"])
def test_train_split_is_the_training_folder_in_file_order_unflipped(market_data, tmp_path, source):
    from dml_tf.data import market1501

    data_dir, written = market_data
    options = {}
    if source == "tfrecords":
        market1501.write_tfrecords(data_dir, str(tmp_path / "records"))
        options = dict(source="tfrecords", tfrecord_dir=str(tmp_path / "records"))
    x, y = split(data_dir, "train", **options)
    # Sorted file names = sorted ids, each id's cameras in order; label k = k-th smallest id.
    train = helpers_market.TRAIN
    assert y.tolist() == [k for k, pid in enumerate(sorted(train)) for _ in train[pid]]
    assert [person_id(n) for n in written["train"]] == [pid for pid in sorted(train) for _ in train[pid]]
    np.testing.assert_allclose(x, file_images(data_dir, "bounding_box_train", written["train"]), atol=1e-5)
    x4, y4 = split(data_dir, "train", limit=4, **options)
    np.testing.assert_array_equal(x4, x[:4])
    assert y4.tolist() == y[:4].tolist()


def test_default_image_size_is_the_networks_224(market_data):
    from dml_tf import analysis

    dataset, n = analysis.unaugmented_dataset("market1501", "train", market_data[0], batch_size=2)
    assert n == 10 and next(iter(dataset))[0].shape == (2, 224, 224, 3)


def test_train_split_labels_of_a_semi_supervised_run(market_data):
    from dml_tf.data import market1501

    data_dir, written = market_data
    ids = [person_id(n) for n in written["train"]]
    # The first two ids in sorted order (2, 7) keep labels 0, 1; 11 and 30 become -1.
    first = [{2: 0, 7: 1}.get(i, -1) for i in ids]
    assert split(data_dir, "train", labeled_ids=2, labeled_selection="first")[1].tolist() == first
    assert split(data_dir, "train", labeled_fraction=0.5, labeled_selection="first")[1].tolist() == first
    # The paper's random choice: the ids the training loader labels with the same seed.
    chosen = {}
    for seed in (0, 3):
        chosen[seed] = market1501.load(data_dir, image_size=SIZE, labeled_ids=2, seed=seed).info["labeled_ids"]
        expected = [chosen[seed].tolist().index(i) if i in chosen[seed] else -1 for i in ids]
        assert split(data_dir, "train", labeled_ids=2, seed=seed)[1].tolist() == expected
    assert chosen[0].tolist() != chosen[3].tolist()  # the seed matters
    # identities counts labeled identities only (-1 is none): the first one is 2 (label 0).
    assert split(data_dir, "train", labeled_ids=2, labeled_selection="first", identities=1)[1].tolist() == [0] * 3


def test_test_split_is_the_gallerys_real_identities_by_person_id(market_data):
    from dml_tf.data import market1501

    data_dir, written = market_data
    real = [n for n in written["gallery"] if person_id(n) > 0]  # junk -1 and distractors 0000 out
    ids = [person_id(n) for n in real]
    assert sorted(set(ids)) == [1, 3, 5] and len(real) < len(written["gallery"])
    x, y = split(data_dir, "test")
    assert y.tolist() == ids
    np.testing.assert_allclose(x, file_images(data_dir, "bounding_box_test", real), atol=1e-5)
    # Preprocessed exactly as the evaluation's gallery images.
    gallery = market1501.load(data_dir, image_size=SIZE).extras["gallery"]
    np.testing.assert_array_equal(x, np.concatenate(list(gallery.images.as_numpy_iterator()))[gallery.ids > 0])
    # identities: the first N ids in sorted order, applied before limit.
    first_two = [i for i in ids if i in (1, 3)]
    assert split(data_dir, "test", identities=2)[1].tolist() == first_two
    assert split(data_dir, "test", identities=2, limit=5)[1].tolist() == first_two[:5]
    assert split(data_dir, "test", identities=50)[1].tolist() == ids


# ----------------------------------------------------------------------------- tools on a run


def test_posterior_stats_and_noise_on_a_market_run(market_data, market_run, tmp_path):
    data_dir, written = market_data
    images = file_images(data_dir, "bounding_box_train", written["train"])
    train = helpers_market.TRAIN
    labels = np.array([k for k, pid in enumerate(sorted(train)) for _ in train[pid]])
    probs = [member_probs(market_run, k, images) for k in range(2)]

    stats = load_tool("posterior_stats").compute(market_run, str(tmp_path / "post"), **quiet)
    [entry] = stats["runs"]
    assert (entry["dataset"], entry["split"], entry["num_images"]) == ("market1501", "train", 10)
    for m, p in zip(entry["members"], probs):
        assert m["num_classes"] == len(train)
        assert m["mean_entropy"] == pytest.approx(entropy(p).mean(), abs=1e-5)
        assert m["top_k_mean_probability"] == pytest.approx(np.sort(p, axis=1)[:, ::-1][:, :5].mean(0), abs=1e-5)
    assert (tmp_path / "post" / "posterior_stats.png").stat().st_size > 1000

    noise = load_tool("noise_robustness").compute(market_run, str(tmp_path / "noise"), sigmas="0,0.5", draws=1,
                                                  **quiet)
    for m, p in zip(noise["runs"][0]["members"], probs):
        clean = -np.log(p[np.arange(len(labels)), labels]).mean()
        assert m["clean_loss"] == pytest.approx(clean, abs=1e-5)
        assert m["losses"][0] == [pytest.approx(m["clean_loss"], abs=1e-6)] and m["losses"][1][0] != m["clean_loss"]
    assert json.loads((tmp_path / "noise" / "noise_robustness.json").read_text())["runs"][0]["num_images"] == 10


def test_tsne_of_a_market_run_coloured_by_identity(market_data, market_run, tmp_path):
    data_dir, written = market_data
    ids = [person_id(n) for n in written["gallery"] if person_id(n) > 0]
    tool = load_tool("tsne")
    payload = tool.compute(market_run, str(tmp_path), identities=2, perplexity=3, **quiet)
    written_json = json.loads((tmp_path / "tsne.json").read_text())
    assert written_json == json.loads(json.dumps(payload))
    assert (tmp_path / "tsne.png").stat().st_size > 1000
    assert (payload["split"], payload["identities"], payload["num_images"]) == ("test", 2, 7)
    assert [e["member"] for e in payload["embeddings"]] == [0, 1]
    for e in payload["embeddings"]:
        assert e["labels"] == [i for i in ids if i in (1, 3)]
        xy = np.asarray(e["coordinates"])
        assert xy.shape == (7, 2) and np.isfinite(xy).all() and e["feature_dim"] == 32


def test_market_usage_errors(market_run, tmp_path):
    from absl import app

    tsne = load_tool("tsne")
    for bad in (0, -2, True):
        with pytest.raises(app.UsageError, match="--identities must be a positive integer"):
            tsne.compute(market_run, str(tmp_path), identities=bad, perplexity=3)
    with pytest.raises(app.UsageError, match=r"--perplexity=5.* 4 images .*--identities=1"):
        tsne.compute(market_run, str(tmp_path), identities=1, perplexity=5)  # id 1 has 4 images
    with pytest.raises(app.UsageError, match="--data_dir=.*nowhere.*does not exist"):
        load_tool("posterior_stats").compute(market_run, str(tmp_path), data_dir=str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- sweeps (Fig. 3, Fig. 6)


def flags(**values):
    return [f"--{k}={v}" for k, v in dict(SWEEP_FLAGS, **values).items()]


@pytest.fixture(scope="module")
def sweeps(market_data, tmp_path_factory):
    """The two Market-1501 sweeps, run at once from the command line: ``{tool: (folder, stdout)}``."""
    cohort, semi = tmp_path_factory.mktemp("cohort_size"), tmp_path_factory.mktemp("semi")
    procs = run_cli(
        ("cohort_size", flags(data_dir=market_data[0], output_dir=cohort, max_k=2, methods="dml")),
        ("semi_supervised", flags(data_dir=market_data[0], output_dir=semi, labeled_ids="4,2", methods="dml_all")))
    return {"cohort_size": (cohort, check_ok(procs[0])), "semi_supervised": (semi, check_ok(procs[1]))}


def test_cohort_size_on_market_from_the_command_line(market_data, sweeps):
    out, stdout = sweeps["cohort_size"]
    assert stdout.count("[train]") == 2 and stdout.count("[eval]") == 2
    data = json.loads((out / "cohort_size.json").read_text())
    assert (out / "cohort_size.png").stat().st_size > 1000
    assert set(data) == {"dataset", "net", "max_k", "seeds", "metric", "values", "member", "ensemble", "methods"}
    assert (data["dataset"], data["metric"], list(data["methods"])) == ("market1501", "single-query mAP", ["dml"])
    points = data["methods"]["dml"]
    assert [p["runs"] for p in points] == [["k1_seed0"], ["dml_k2_seed0"]]
    for p in points:
        run = out / p["runs"][0]
        members, ensemble = eval_sq_maps(run)
        assert len(members) == p["k"] and p["member_scores"] == [members]
        assert p["member_mean"] == pytest.approx(np.mean(members))
        assert p["ensemble_mean"] == pytest.approx(ensemble)
        config = json.loads((run / "results.json").read_text())["config"]
        assert (config["dataset"], config["image_size"], config["epochs"]) == ("market1501", [16, 8], 1)
    # Started again: every run and its eval.json reused, same numbers.
    lines = []
    again = load_tool("cohort_size").compute(str(out), max_k=2, methods="dml", data_dir=market_data[0],
                                             log=lines.append, **SWEEP_FLAGS)
    assert sum(l.startswith("[skip]") for l in lines) == 2
    assert not [l for l in lines if l.startswith(("[train]", "[eval]"))]
    assert again["methods"] == data["methods"]


def test_semi_supervised_on_market_from_the_command_line(market_data, sweeps):
    out, stdout = sweeps["semi_supervised"]
    assert stdout.count("[train]") == 2 and stdout.count("[eval]") == 2
    data = json.loads((out / "semi_supervised.json").read_text())
    assert (out / "semi_supervised.png").stat().st_size > 1000
    assert set(data) == {"dataset", "net", "axis", "amounts", "seeds", "metric", "values", "methods"}
    assert (data["axis"], data["amounts"], data["metric"]) == ("labeled identities", [2, 4], "single-query mAP")
    assert list(data["methods"]) == ["dml_all"]
    points = data["methods"]["dml_all"]["points"]
    assert [p["runs"] for p in points] == [["dml_all_ids2_seed0"], ["dml_all_ids4_seed0"]]
    for point in points:
        run = out / point["runs"][0]
        results = json.loads((run / "results.json").read_text())
        config = results["config"]
        assert (len(config["nets"]), config["mode"], config["semi"]) == (2, "dml", "all")
        assert config["labeled_ids"] == point["amount"] == results["dataset"]["num_classes"]
        members, _ = eval_sq_maps(run)
        assert point["member_scores"] == [members]
        assert point["mean"] == pytest.approx(np.mean(members))
        assert point["std"] == pytest.approx(np.std(members))
    lines = []
    again = load_tool("semi_supervised").compute(str(out), labeled_ids="2,4", methods="dml_all",
                                                 data_dir=market_data[0], log=lines.append, **SWEEP_FLAGS)
    assert sum(l.startswith("[skip]") for l in lines) == 2
    assert not [l for l in lines if l.startswith(("[train]", "[eval]"))]
    assert again["methods"] == data["methods"]


def test_noise_and_posterior_skip_nothing_but_the_loss_of_unlabeled_ids(market_data, sweeps, tmp_path):
    """A semi-supervised run (2 of 4 ids labeled, seed 0): the loss is over its labeled
    images with its own class indices; the posterior statistics use every image."""
    from absl import app

    from dml_tf.data import market1501

    data_dir, written = market_data
    run = str(sweeps["semi_supervised"][0] / "dml_all_ids2_seed0")
    chosen = market1501.load(data_dir, image_size=SIZE, labeled_ids=2, seed=0).info["labeled_ids"].tolist()
    ids = [person_id(n) for n in written["train"]]
    labels = np.array([chosen.index(i) if i in chosen else -1 for i in ids])
    assert 0 < (labels >= 0).sum() < len(labels)
    images = file_images(data_dir, "bounding_box_train", written["train"])

    noise = load_tool("noise_robustness").compute(run, str(tmp_path), sigmas="0", draws=1, **quiet)
    stats = load_tool("posterior_stats").compute(run, str(tmp_path), **quiet)
    assert stats["runs"][0]["num_images"] == noise["runs"][0]["num_images"] == len(ids)
    for k in range(2):
        p = member_probs(run, k, images)
        assert p.shape[1] == 2
        keep = labels >= 0
        clean = -np.log(p[keep][np.arange(keep.sum()), labels[keep]]).mean()
        assert noise["runs"][0]["members"][k]["clean_loss"] == pytest.approx(clean, abs=1e-5)
        assert stats["runs"][0]["members"][k]["mean_entropy"] == pytest.approx(entropy(p).mean(), abs=1e-5)
    # The first images are of unlabeled ids only: no loss to measure, a usage error.
    unlabeled_prefix = int(np.argmax(labels >= 0))
    assert unlabeled_prefix > 0
    with pytest.raises(app.UsageError, match="--limit=.*no labeled image"):
        load_tool("noise_robustness").compute(run, str(tmp_path), sigmas="0", limit=unlabeled_prefix)
