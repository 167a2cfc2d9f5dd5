"""dml_tf.run_dir: a run folder's layout, finished vs unfinished, reading results and members."""

import json
from types import SimpleNamespace

import pytest

from dml_tf import run_dir
from dml_tf.config import TrainConfig
from dml_tf.errors import RunFileError


def test_finished_unfinished_and_empty_folders(tmp_path):
    assert not run_dir.is_finished(tmp_path) and not run_dir.is_unfinished(tmp_path)
    (tmp_path / "backup").mkdir()  # a run interrupted before its end: only its checkpoint
    assert run_dir.is_unfinished(tmp_path) and not run_dir.is_finished(tmp_path)
    with pytest.raises(RunFileError, match="holds no results.json: not a finished"):
        run_dir.read_results(tmp_path)
    run_dir.write_results(tmp_path, {"members": []})  # finishing the run removes its checkpoint
    assert run_dir.is_finished(tmp_path) and not run_dir.is_unfinished(tmp_path)
    assert not (tmp_path / "backup").exists()
    assert run_dir.read_results(tmp_path) == {"members": []}
    with pytest.raises(RunFileError, match="does not exist"):
        run_dir.read_results(tmp_path / "nope")


@pytest.mark.parametrize("content", [b"", b'{"members": [', b"[1, 2]"])
def test_a_damaged_results_json_is_named(tmp_path, content):
    (tmp_path / "results.json").write_bytes(content)
    with pytest.raises(RunFileError, match="--overwrite") as error:
        run_dir.read_results(tmp_path)
    assert str(tmp_path / "results.json") in str(error.value)


def test_a_damaged_eval_json_is_named_and_a_missing_one_is_none(tmp_path):
    assert run_dir.read_eval(tmp_path) is None
    (tmp_path / "eval.json").write_text("{")
    with pytest.raises(RunFileError, match="Delete it") as error:
        run_dir.read_eval(tmp_path)
    assert str(tmp_path / "eval.json") in str(error.value)


def test_members_listed_by_results_or_found_as_files(tmp_path):
    for name in ("member_10.keras", "member_2.keras", "member_x.keras", "other.keras"):
        (tmp_path / name).write_bytes(b"")
    found = run_dir.list_members(str(tmp_path))
    assert [(m["index"], m["file"]) for m in found] == [(2, "member_2.keras"), (10, "member_10.keras")]
    assert found[0]["path"] == str(tmp_path / "member_2.keras")
    listed = run_dir.list_members(str(tmp_path), {"members": [{"net": "a"}, {"index": 5, "file": "f.keras"}]})
    assert [(m["index"], m["file"], m.get("net")) for m in listed] == [(0, "member_0.keras", "a"),
                                                                        (5, "f.keras", None)]


def test_read_run_names_a_missing_member_file(tmp_path):
    run_dir.write_results(tmp_path, {"members": [{"index": 0}, {"index": 1}]})
    (tmp_path / "member_0.keras").write_bytes(b"")
    with pytest.raises(RunFileError, match="member_1.keras listed in .*results.json is missing"):
        run_dir.read_run(str(tmp_path))
    (tmp_path / "member_1.keras").write_bytes(b"")
    results, members = run_dir.read_run(str(tmp_path))
    assert [m["path"] for m in members] == [str(tmp_path / f"member_{k}.keras") for k in (0, 1)]
    run_dir.write_results(tmp_path, {"members": []})
    with pytest.raises(RunFileError, match="lists no members"):
        run_dir.read_run(str(tmp_path))


def test_results_schema_and_member_accuracy(tmp_path):
    config = TrainConfig(dataset="digits", nets=("tiny_cnn", "tiny_cnn"), model_dir=str(tmp_path))
    bundle = SimpleNamespace(name="digits", num_classes=10, train_size=100, test_size=20,
                             input_shape=(32, 32, 3), extras={})
    members = [SimpleNamespace(name=f"m{k}", trainable=k == 1) for k in range(2)]
    test = {"accuracy_0": 0.5, "accuracy_1": 0.75, "ensemble_accuracy": 0.8}
    results = run_dir.make_results(config, bundle, members, {"loss": [1.0]}, 1, test, 2.5)
    assert list(results) == ["config", "dataset", "preprocessing", "validation_epochs", "training_fit", "members",
                             "history", "epochs_run_this_session", "test", "ensemble_test_accuracy",
                             "wall_time_s", "optimizer_changes", "data"]
    assert results["preprocessing"] == {"input_shape": [32, 32, 3], "mean": None, "std": None}
    assert results["validation_epochs"] == [] and results["training_fit"] == []
    assert results["members"][0] == {"index": 0, "net": "tiny_cnn", "name": "m0", "file": "member_0.keras",
                                     "trainable": False, "parameters": None, "test_accuracy": 0.5}
    assert results["data"] is None  # the record is runner.data_record's; none given here
    old = {"dataset": {"name": "digits", "num_classes": 10, "train_size": 100, "test_size": 20}}
    assert run_dir.data_record(old) == {"dataset": "digits", "train_images": 100, "test_images": 20,
                                        "classes": 10}  # written before results.json kept "data"
    assert results["ensemble_test_accuracy"] == 0.8 and results["config"]["model_dir"] == str(tmp_path)
    run_dir.write_results(tmp_path, results)
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results))
    assert run_dir.member_accuracies(results) == [0.5, 0.75]
    results["members"][1]["test_accuracy"] = None  # then test["accuracy_1"]
    assert run_dir.member_accuracy(results, 1) == 0.75 and run_dir.member_accuracy({"members": [{}]}, 0) is None
