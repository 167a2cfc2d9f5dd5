"""Nothing lost, nothing silently wrong: kills at any instant, resumes that check
themselves, damaged run files named, outputs with the user's permissions.

Kills are simulated deterministically: a ``KeyboardInterrupt`` raised at the exact
moment, with the file cut short the way a kill in the middle of writing leaves it.
"""

import json
import os
import shutil
import stat
import zipfile

import keras
import numpy as np
import pytest
from absl import app

import dml_tf
from dml_tf import analysis, checkpoint, evaluate, runner
from dml_tf.config import ConfigError
from dml_tf.errors import RunFileError
from dml_tf.io_utils import atomic_write_bytes, atomic_write_json
from test_train_cli import cifar_dir, run_cli, tiny_config  # noqa: F401  (cifar_dir: fixture)

# ema_decay: the weight average that replaces the weights when training ends must
# also come out exactly the same after a resume.
COMMON = dict(epochs=3, learning_rate=0.05, ema_decay=0.5)


def member_weights(model_dir):
    return [[w.numpy() for w in keras.models.load_model(os.path.join(model_dir, f"member_{k}.keras")).weights]
            for k in range(2)]


@pytest.fixture(scope="module")
def reference(cifar_dir, tmp_path_factory):  # noqa: F811
    """An uninterrupted run: ``(results, member weights)``."""
    model_dir = str(tmp_path_factory.mktemp("reference"))
    results = runner.run(tiny_config(model_dir, cifar_dir, **COMMON), log=lambda s: None)
    return results, member_weights(model_dir)


def assert_same_run(results, model_dir, reference):
    """The same history (every epoch), final weights and test accuracies as the reference."""
    ref_results, ref_weights = reference
    assert sorted(results["history"]) == sorted(ref_results["history"])
    for key, values in ref_results["history"].items():
        np.testing.assert_allclose(results["history"][key], values, rtol=1e-5, atol=1e-6, err_msg=key)
    for ours, theirs in zip(member_weights(model_dir), ref_weights):
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, atol=1e-6)
    for key, value in ref_results["test"].items():
        assert results["test"][key] == pytest.approx(value, abs=1e-6), key


def test_a_kill_while_the_checkpoint_is_written_resumes_from_the_epoch_before(
        cifar_dir, reference, tmp_path, monkeypatch):  # noqa: F811
    model_dir = tmp_path / "run"
    config = tiny_config(model_dir, cifar_dir, **COMMON)
    real_save = keras.Model.save_weights
    saved = []

    def killed_in_the_second_save(self, *args, **kwargs):
        path = kwargs.get("filepath", args[0] if args else None)
        real_save(self, *args, **kwargs)
        saved.append(path)
        if len(saved) == 2:  # epoch 2's checkpoint, cut short by the kill
            with open(path, "r+b") as f:
                f.truncate(0)
            raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save_weights", killed_in_the_second_save)
    with pytest.raises(KeyboardInterrupt):
        runner.run(config, log=lambda s: None)
    monkeypatch.undo()
    assert os.path.getsize(saved[1]) == 0
    messages = []
    results = runner.run(config, log=messages.append)
    assert any("Resuming from the checkpoint of epoch 1" in m for m in messages), messages
    assert results["epochs_run_this_session"] == 2
    assert_same_run(results, model_dir, reference)


def test_a_kill_after_the_last_epoch_does_not_retrain(cifar_dir, reference, tmp_path):  # noqa: F811
    class KilledBeforeResults(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            raise KeyboardInterrupt

    model_dir = tmp_path / "run"
    config = tiny_config(model_dir, cifar_dir, **COMMON)
    with pytest.raises(KeyboardInterrupt):
        runner.run(config, log=lambda s: None, callbacks=[KilledBeforeResults()])
    assert not (model_dir / "results.json").exists()
    messages = []
    results = runner.run(config, log=messages.append)
    assert any("All 3 epochs are in the checkpoint" in m for m in messages), messages
    assert results["epochs_run_this_session"] == 0  # evaluated and saved, not retrained
    assert_same_run(results, model_dir, reference)
    assert not (model_dir / "backup").exists()


def test_a_kill_at_any_step_of_a_save_keeps_the_last_finished_epoch(tmp_path, monkeypatch):
    """Every instant of a save: while the weights are written, while the state is
    committed, after the commit while old files are removed."""
    rng = np.random.RandomState(0)
    x, y = rng.randn(32, 5).astype(np.float32), rng.randint(0, 3, 32)

    def make():
        members = [keras.Sequential([keras.Input((5,)), keras.layers.Dense(
            3, kernel_initializer=keras.initializers.GlorotUniform(k))], name=f"m{k}") for k in range(2)]
        cohort = dml_tf.MutualLearningModel(members)
        cohort.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), run_eagerly=True)  # no tracing
        return cohort

    def fit(cohort, backup_dir):
        backup = checkpoint.TrainingBackup(str(backup_dir), {"run": 1}, checkpoint.read_state(str(backup_dir)))
        cohort.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[backup])
        return backup

    reference = make()
    reference_history = fit(reference, tmp_path / "reference").history
    real_replace, real_remove, real_save = os.replace, os.remove, keras.Model.save_weights

    def kill_at(point):
        commits = []

        def save_weights(self, *args, **kwargs):
            real_save(self, *args, **kwargs)
            path = kwargs.get("filepath", args[0] if args else None)
            if point == "weights" and path.endswith(checkpoint.weights_file(2)):
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
                raise KeyboardInterrupt

        def replace(src, dst):
            if str(dst).endswith(checkpoint.METADATA):
                commits.append(dst)
                if point == "commit" and len(commits) == 2:
                    raise KeyboardInterrupt
            real_replace(src, dst)

        def remove(path):
            if point == "cleanup" and str(path).endswith(checkpoint.weights_file(1)):
                raise KeyboardInterrupt
            real_remove(path)

        monkeypatch.setattr(keras.Model, "save_weights", save_weights)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "remove", remove)

    for point, resumed_at in (("weights", 1), ("commit", 1), ("cleanup", 2)):
        backup_dir = tmp_path / point
        kill_at(point)
        with pytest.raises(KeyboardInterrupt):
            fit(make(), backup_dir)
        monkeypatch.undo()
        assert checkpoint.read_state(str(backup_dir))["epoch"] == resumed_at, point
        resumed = make()
        history = fit(resumed, backup_dir).history
        np.testing.assert_allclose(resumed.predict(x, verbose=0), reference.predict(x, verbose=0),
                                   atol=1e-6, err_msg=point)
        assert history.keys() == reference_history.keys()
        for key, values in reference_history.items():
            np.testing.assert_allclose(history[key], values, rtol=1e-6, err_msg=f"{point}: {key}")
        assert sorted(os.listdir(backup_dir)) == [checkpoint.weights_file(3), checkpoint.METADATA]

    # Weights damaged after the commit (e.g. by the disk) are named, not loaded.
    (backup_dir / checkpoint.weights_file(3)).write_bytes(b"\x89HDF\r\n")
    with pytest.raises(RunFileError, match=rf"checkpoint weights .*{checkpoint.weights_file(3)} cannot be loaded"):
        fit(make(), backup_dir)


def test_resuming_with_other_training_settings_is_refused(cifar_dir, tmp_path):  # noqa: F811
    class Killed(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    model_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # a DML run killed after its first of 2 epochs
        runner.run(tiny_config(model_dir, cifar_dir, epochs=2), log=lambda s: None, callbacks=[Killed()])
    shutil.copytree(model_dir, tmp_path / "copy")
    same = [f"--data_dir={cifar_dir}", "--dataset=cifar100", "--nets=tiny_cnn,tiny_cnn", "--batch_size=16",
            "--verbose=0"]

    with pytest.raises(app.UsageError) as error:
        run_cli(same + [f"--model_dir={model_dir}", "--mode=independent", "--epochs=4"])
    message = str(error.value)
    assert "--mode: dml in the checkpoint, independent now" in message
    assert "--epochs: 2 in the checkpoint, 4 now" in message
    assert "--overwrite" in message and "--model_dir" in message
    assert message.count(" in the checkpoint, ") == 2  # only the flags that differ
    with pytest.raises(app.UsageError, match="--epochs: 2 in the checkpoint, 1 now"):
        run_cli(same + [f"--model_dir={model_dir}", "--epochs=1"])
    with pytest.raises(ConfigError, match="--lr_decay_epochs: 60,120,180 in the checkpoint, 1 now"):
        runner.run(tiny_config(model_dir, cifar_dir, epochs=2, lr_decay_epochs=(1,)), log=lambda s: None)
    assert not (model_dir / "results.json").exists()

    # The same command resumes (run-only flags such as --verbose may differ) ...
    run_cli(same + [f"--model_dir={model_dir}", "--epochs=2", "--verbose=2"])
    results = json.loads((model_dir / "results.json").read_text())
    assert results["epochs_run_this_session"] == 1 and len(results["history"]["loss_0"]) == 2
    # ... and --overwrite starts afresh with the new settings.
    run_cli(same + [f"--model_dir={tmp_path / 'copy'}", "--mode=independent", "--epochs=1", "--overwrite"])
    results = json.loads((tmp_path / "copy" / "results.json").read_text())
    assert results["config"]["mode"] == "independent"
    assert results["epochs_run_this_session"] == 1 and len(results["history"]["loss_0"]) == 1


def test_settings_added_after_a_checkpoint_count_as_their_default():
    saved = {"mode": "dml", "epochs": 2}
    defaults = {"mode": "dml", "epochs": 200, "warmup_epochs": 0}
    current = {"mode": "dml", "epochs": 2, "warmup_epochs": 0}
    assert checkpoint.settings_differences(saved, current, defaults) == []
    assert checkpoint.settings_differences(saved, dict(current, warmup_epochs=5), defaults) == [
        ("warmup_epochs", 0, 5)]


def test_a_checkpoint_in_an_old_spelling_resumes():
    """A run interrupted before --semi=labelled became --semi=labeled resumes as the same run."""
    saved = {"mode": "dml", "semi": "labelled"}
    current = {"mode": "dml", "semi": "labeled"}
    assert checkpoint.settings_differences(saved, current, {}) == []
    assert checkpoint.settings_differences(saved, dict(current, semi="all"), {}) == [
        ("semi", "labeled", "all")]


def test_every_training_field_is_checked_and_run_only_fields_are_not():
    config = tiny_config("runs/x", None).resolved()
    settings = config.training_settings()
    assert {"mode", "epochs", "nets", "seed", "mimicry_weight", "learning_rate", "batch_size"} <= set(settings)
    assert not {"model_dir", "data_dir", "overwrite", "verbose"} & set(settings)
    json.dumps(settings)  # recorded as JSON


@pytest.mark.parametrize("content", [b"", b'{"epoch": 2, "wei', b"[1, 2]", b'{"batch": 0}'])
def test_a_damaged_checkpoint_is_named_with_what_to_do(tmp_path, content):
    backup = tmp_path / "run" / "backup"
    backup.mkdir(parents=True)
    (backup / "training_metadata.json").write_bytes(content)
    with pytest.raises(app.UsageError) as error:
        run_cli(["--nets=tiny_cnn", f"--model_dir={tmp_path / 'run'}", "--epochs=1"])
    assert str(backup / "training_metadata.json") in str(error.value)
    assert "--overwrite" in str(error.value)


def test_a_checkpoint_whose_weights_are_missing_is_named(tmp_path):
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 2, "weights": "epoch_2.weights.h5"}))
    with pytest.raises(RunFileError, match="epoch_2.weights.h5, which is missing"):
        checkpoint.read_state(str(backup))


@pytest.mark.parametrize("content", [b"", b'{"members": [', b'"results"'])
def test_a_damaged_results_json_is_named_with_what_to_do(tmp_path, content):
    (tmp_path / "results.json").write_bytes(content)
    (tmp_path / "member_0.keras").write_bytes(b"")
    path = str(tmp_path / "results.json")
    with pytest.raises(app.UsageError, match="--overwrite") as error:
        evaluate.read_members(str(tmp_path))
    assert path in str(error.value)
    with pytest.raises(RunFileError, match="--overwrite") as error:
        analysis.read_run(str(tmp_path))
    assert path in str(error.value)
    with pytest.raises(RunFileError, match="--overwrite") as error:
        runner.run_or_reuse(tiny_config(tmp_path, None), log=lambda s: None)
    assert path in str(error.value)


def test_outputs_get_the_users_normal_permissions(tmp_path):
    previous = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "results.json", {"a": 1})
        atomic_write_bytes(tmp_path / "plot.png", b"png")
    finally:
        os.umask(previous)
    for name in ("results.json", "plot.png"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640, name
    atomic_write_json(tmp_path / "default.json", {})
    assert stat.S_IMODE(os.stat(tmp_path / "default.json").st_mode) == 0o666 & ~previous


def test_json_outputs_are_strict_json(tmp_path):
    path = tmp_path / "eval.json"
    atomic_write_json(path, {"mAP": float("nan"), "cmc": np.array([np.inf, 0.5], np.float32),
                             "rank1": np.float64(0.25), "n": np.int64(3)})

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "mAP": None, "cmc": [None, 0.5], "rank1": 0.25, "n": 3}


def _zip_without_config(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", "{}")


@pytest.mark.parametrize("write, problem", [
    (lambda p: p.write_bytes(b"not a zip"), "a .keras file is a zip archive"),
    (_zip_without_config, "has no config.json"),
])
def test_a_teacher_that_is_not_a_keras_model_is_named(cifar_dir, tmp_path, write, problem):  # noqa: F811
    teacher = tmp_path / "teacher.keras"
    write(teacher)
    with pytest.raises(app.UsageError) as error:
        run_cli([f"--data_dir={cifar_dir}", "--dataset=cifar100", "--nets=tiny_cnn,tiny_cnn", "--mode=distill",
                 f"--teacher={teacher}", f"--model_dir={tmp_path / 'run'}", "--epochs=1"])
    assert f"--teacher file {teacher} is not a Keras model" in str(error.value)
    assert problem in str(error.value)
