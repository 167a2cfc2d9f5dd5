"""Nothing lost, nothing silently wrong: kills at any instant, resumes that check
themselves, damaged run files named, outputs with the user's permissions.

Kills are simulated deterministically: a ``KeyboardInterrupt`` raised at the exact
moment, with the file cut short the way a kill in the middle of writing leaves it.
"""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import types
import zipfile

import keras
import numpy as np
import pytest
from absl import app

import dml_tf
import dml_tf.nets
from dml_tf.nets import registry
from dml_tf import analysis, checkpoint, evaluate, run_dir, runner
from dml_tf.config import ConfigError
from dml_tf.errors import RunFileError, RunFolderBusyError
from dml_tf.health import TrainingHealth, majority_rate
from dml_tf.io_utils import atomic_output, atomic_write_bytes, atomic_write_json
from helpers_data import write_cifar_archive
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


def test_an_exported_file_or_folder_replaces_the_old_one_whole_or_not_at_all(tmp_path):
    def folder(content, fail=False):
        def write(tmp):
            os.makedirs(tmp)
            with open(os.path.join(tmp, "saved_model.pb"), "w") as f:
                f.write(content)
            if fail:
                raise KeyboardInterrupt
        return write

    def half_file(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    target = tmp_path / "served"
    atomic_output(target, folder("old"))
    atomic_output(target, folder("new"))
    assert (target / "saved_model.pb").read_text() == "new"
    with pytest.raises(KeyboardInterrupt):
        atomic_output(target, folder("half", fail=True))
    assert (target / "saved_model.pb").read_text() == "new"
    with pytest.raises(KeyboardInterrupt):
        atomic_output(tmp_path / "m.tflite", half_file)
    assert sorted(os.listdir(tmp_path)) == ["served"]  # no temporary file or folder left


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


# ---------------------------------------------------------------- issue 21: the run folder


def _fill(variables, rng):
    """Gives every variable new random values (integers for integer state)."""
    for v in variables:
        shape, dtype = tuple(v.shape), np.dtype(v.dtype)
        if np.issubdtype(dtype, np.integer):
            v.assign(rng.integers(1, 10**6, size=shape).astype(dtype))
        elif dtype == bool:
            v.assign(rng.integers(0, 2, size=shape).astype(bool))
        else:
            v.assign(rng.uniform(0.5, 1.5, size=shape).astype(dtype))


def _builder(net):
    builder = registry._BUILDERS[net][0]
    return getattr(builder, "func", builder), getattr(builder, "args", ())


def _family_representative(net):
    """The registered network that stands for ``net``'s builder: the one with the smallest
    depth / width arguments (resnet20 for resnet20/32/56/110, wrn_16_4 for wrn_28_10)."""
    family = [n for n in dml_tf.nets.names() if _builder(n)[0] is _builder(net)[0]]
    return min(family, key=lambda n: _builder(n)[1])


@pytest.mark.parametrize("net", dml_tf.nets.names())
def test_every_registry_network_resumes_all_its_state(net, tmp_path):
    """What a step reads (weights, batch-norm statistics, optimizer slots and steps, weight
    averages, dropout's random-seed state) comes back from the checkpoint bit for bit:
    set at random, committed, overwritten, restored. Each net at 8x8 (the smallest input
    every one takes). A deeper or wider net of the same builder (resnet32/56/110,
    wrn_28_10) has the same kinds of state, so it runs only with DML_TF_TEST_EVERY_NET=1
    (resnet110 alone costs 10 s, wrn_28_10's 36M weights 5 s)."""
    representative = _family_representative(net)
    if net != representative and not os.environ.get("DML_TF_TEST_EVERY_NET"):
        pytest.skip(f"same builder as {representative}; DML_TF_TEST_EVERY_NET=1 runs it")
    # tiny_cnn: a cohort of two with the weight averages of the weights and statistics.
    extra = dict(nets=(net, net), ema_decay=0.5) if net == "tiny_cnn" else dict(nets=(net,))
    config = tiny_config(tmp_path, None, **extra).resolved()
    bundle = types.SimpleNamespace(num_classes=3, input_shape=(8, 8, 3))
    cohort = runner.build_cohort(config, bundle, steps_per_epoch=2)
    cohort.build_training_state()
    state = list(cohort.variables) + list(cohort.optimizer.variables)
    rng = np.random.default_rng(0)
    _fill(state, rng)
    saved = [v.numpy() for v in state]
    backup = checkpoint.TrainingBackup(str(tmp_path / "backup"), {"run": 1})
    backup.set_model(cohort)
    backup.on_train_begin()
    backup.on_epoch_end(0, {"loss": 1.0})
    _fill(state, rng)  # what a fresh session would start from
    resumed = checkpoint.TrainingBackup(str(tmp_path / "backup"), {"run": 1},
                                        checkpoint.read_state(str(tmp_path / "backup")))
    resumed.set_model(cohort)
    resumed.on_train_begin()
    for variable, value in zip(state, saved):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)


class _Killed(keras.callbacks.Callback):
    """A kill at the end of epoch ``at`` (0-based), after its checkpoint is committed, or
    (``at`` None) as training begins, once the checkpoint is restored."""

    def __init__(self, at=0):
        super().__init__()
        self.at = at

    def on_train_begin(self, logs=None):
        if self.at is None:
            raise KeyboardInterrupt

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            raise KeyboardInterrupt


def _killed_run(config, at=0, log=lambda s: None):
    with pytest.raises(KeyboardInterrupt):
        runner.run(config, log=log, callbacks=[_Killed(at)])


def test_a_resume_checks_its_data_and_may_change_only_the_optimizer(cifar_dir, tmp_path):  # noqa: F811
    model_dir = tmp_path / "run"

    def config(data_dir=cifar_dir, **overrides):  # validation_freq: no validation before the kills
        return tiny_config(model_dir, data_dir, **dict(dict(epochs=2, validation_freq=5), **overrides))

    _killed_run(config())
    state = checkpoint.read_state(str(model_dir / "backup"))
    assert state["format"] == checkpoint.FORMAT and state["data"]["train_images"] == 40

    # Other data: more images (the steps per epoch follow), or as many with other labels.
    larger, relabeled = tmp_path / "larger", tmp_path / "relabeled"
    larger.mkdir(), relabeled.mkdir()
    write_cifar_archive(str(larger), name="cifar100", n_train=64, n_test=20, seed=0)
    write_cifar_archive(str(relabeled), name="cifar100", n_train=40, n_test=20, seed=1)
    with pytest.raises(ConfigError) as error:
        runner.run(config(str(larger)), log=lambda s: None)
    message = str(error.value)
    assert "trained on other data: training images: 40 in the checkpoint, 64 now" in message
    assert "steps per epoch: 3 in the checkpoint, 4 now" in message and "--overwrite" in message
    with pytest.raises(ConfigError, match=r"training labels \(fingerprint\): \w+ in the checkpoint"):
        runner.run(config(str(relabeled)), log=lambda s: None)

    # A checkpoint as the code before this one wrote it (no format, data, dropout state) resumes.
    old_dir = tmp_path / "old" / "backup"
    shutil.copytree(model_dir / "backup", old_dir)
    atomic_write_json(old_dir / checkpoint.METADATA, {k: v for k, v in state.items() if k not in (
        "format", "data", "extra_state", "optimizer_changes")})
    lines = []
    _killed_run(tiny_config(tmp_path / "old", cifar_dir, epochs=2, validation_freq=5), at=None, log=lines.append)
    assert sum("the data it was trained on is not recorded" in line for line in lines) == 1
    assert any("Resuming from the checkpoint of epoch 1" in line for line in lines)

    # A new learning rate: refused, unless --new_optimizer_settings (which changes nothing else).
    with pytest.raises(ConfigError, match="--learning_rate: 0.1 in the checkpoint, 0.01 now"):
        runner.run(config(learning_rate=0.01), log=lambda s: None)
    with pytest.raises(ConfigError, match="--epochs: 2 in the checkpoint, 3 now"):
        runner.run(config(epochs=3, learning_rate=0.01, new_optimizer_settings=True), log=lambda s: None)
    lines = []
    _killed_run(config(learning_rate=0.01, new_optimizer_settings=True), at=1, log=lines.append)
    assert any("--learning_rate: 0.1 in the checkpoint, 0.01 now" in line for line in lines), lines
    state = checkpoint.read_state(str(model_dir / "backup"))
    assert state["epoch"] == 2 and state["settings"]["learning_rate"] == 0.01
    assert state["optimizer_changes"] == [{"epoch": 1, "changed": {"learning_rate": [0.1, 0.01]}}]


def test_a_float16_resume_restores_every_loss_scaler_through_the_runner(cifar_dir, tmp_path):  # noqa: F811
    """The runner's path: the restore builds the members' loss scalers before loading (the
    scalers' step counters and scales came back at their initial values, with a warning)."""
    class Recorder(keras.callbacks.Callback):
        def state(self):
            return [[v.numpy() for v in s.variables] for s in self.model._loss_scalers]

    class KilledAfterEpoch1(Recorder):
        def on_epoch_end(self, epoch, logs=None):
            self.saved = self.state()
            self.counters = [int(s.step_counter.numpy()) for s in self.model._loss_scalers]
            raise KeyboardInterrupt

    class Restored(Recorder):
        def on_train_begin(self, logs=None):  # after TrainingBackup's restore
            self.restored = self.state()
            raise KeyboardInterrupt

    config = tiny_config(tmp_path / "run", cifar_dir, epochs=2, steps_per_epoch=2, validation_freq=5,
                         mixed_precision="mixed_float16")
    killed, restored = KilledAfterEpoch1(), Restored()
    try:
        for callback in (killed, restored):
            with pytest.raises(KeyboardInterrupt):
                runner.run(config, log=lambda s: None, callbacks=[callback])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert [len(s) for s in restored.restored] == [len(s) for s in killed.saved]
    for ours, theirs in zip(restored.restored, killed.saved):
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b)
    assert killed.counters == [2, 2]  # each scaler's step counter: 2 finite steps


def _dense_cohort(momentum=0.9):
    members = [keras.Sequential([keras.Input((5,)), keras.layers.Dense(
        3, kernel_initializer=keras.initializers.GlorotUniform(k))], name=f"m{k}") for k in range(2)]
    cohort = dml_tf.MutualLearningModel(members)
    cohort.compile(optimizer=keras.optimizers.SGD(0.1, momentum=momentum), run_eagerly=True)
    return cohort


_X, _Y = np.random.RandomState(0).randn(32, 5).astype(np.float32), np.random.RandomState(1).randint(0, 3, 32)


def _fit(cohort, backup_dir, epochs=2, steps_per_epoch=4, callbacks=()):
    backup = checkpoint.TrainingBackup(str(backup_dir), {"run": 1}, checkpoint.read_state(str(backup_dir)),
                                       steps_per_epoch=steps_per_epoch)
    cohort.fit(_X, _Y, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=[backup, *callbacks])
    return backup


def test_a_checkpoint_that_does_not_fit_the_training_state_is_named(tmp_path):
    _fit(_dense_cohort(), tmp_path / "backup", epochs=1)
    weights = str(tmp_path / "backup" / checkpoint.weights_file(1))
    # Keras would skip the momentum slots with a warning: an error naming the file instead.
    with pytest.raises(RunFileError, match=rf"{weights} do not fit this run's training state.*Skipping"):
        _fit(_dense_cohort(momentum=0.0), tmp_path / "backup")
    # Metadata that says more epochs than the weights file holds.
    path = tmp_path / "backup" / checkpoint.METADATA
    atomic_write_json(path, dict(json.loads(path.read_text()), epoch=2))
    with pytest.raises(RunFileError, match=r"another step \(the cohort's optimizer 4, member 0's "
                                           r"optimizer 4, member 1's optimizer 4\) than the 2 epochs"):
        _fit(_dense_cohort(), tmp_path / "backup", epochs=3)


def test_an_epoch_that_is_not_finite_is_never_committed(tmp_path):
    class PoisonedLastStep(keras.callbacks.Callback):
        """The last update of epoch 2 makes member 1's weights NaN (its loss was finite)."""

        def on_train_batch_end(self, batch, logs=None):
            if self.model.optimizer.iterations.numpy() == 8:
                self.model.members[1].layers[-1].kernel.assign(np.full((5, 3), np.nan, np.float32))

    backup_dir = tmp_path / "backup"
    with pytest.raises(dml_tf.errors.TrainingDivergedError) as error:
        _fit(_dense_cohort(), backup_dir, epochs=3, callbacks=[PoisonedLastStep()])
    assert checkpoint.read_state(str(backup_dir))["epoch"] == 1  # the last finite epoch
    message = str(error.value)
    assert "Training diverged in epoch 2: m1's weights (" in message and "epoch 2 is not saved" in message
    assert f"The checkpoint of epoch 1 (the last finite one) is kept in {backup_dir}" in message
    assert "--new_optimizer_settings" in message and "--overwrite" in message
    # A NaN validation loss is not committed either.
    backup = checkpoint.TrainingBackup(str(backup_dir), {"run": 1}, checkpoint.read_state(str(backup_dir)))
    backup.set_model(_dense_cohort())
    with pytest.raises(dml_tf.errors.TrainingDivergedError, match=r"val_loss_0 = nan"):
        backup.on_epoch_end(1, {"loss": 1.0, "val_loss_0": float("nan")})
    assert checkpoint.read_state(str(backup_dir))["epoch"] == 1


def test_overwrite_leaves_only_what_the_new_run_writes(tmp_path):
    """An earlier run with K=3, evaluated, with logs and a checkpoint; files of the user."""
    model_dir = tmp_path / "run"
    earlier = ["results.json", "eval.json", "cmc.png", "test_predictions.npz", "features_member2.npz",
               "member_0.keras", "member_2.keras", ".tmp_member_1.keras", ".results.json.x1.tmp",
               "backup/training_metadata.json", "backup/epoch_3.weights.h5",
               "logs/member_2/train/events.out.tfevents.1.host", "logs/ensemble/validation/events.out.tfevents.2.h"]
    users = ["notes.txt", "member_0.keras.bak", "logs/mine/events.out.tfevents.3.h", "logs/member_0/train/readme"]
    for name in earlier + users:
        (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / name).write_text("x")
    with pytest.raises(ConfigError, match="already holds a finished run"):
        runner.prepare_model_dir(tiny_config(model_dir, None).resolved())
    runner.prepare_model_dir(tiny_config(model_dir, None, overwrite=True).resolved())
    left = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file())
    assert left == sorted(users)
    assert not (model_dir / "logs" / "member_2").exists() and not (model_dir / "backup").exists()


def test_a_second_run_in_the_same_folder_stops_at_once(tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "results.json").write_text("{}")  # a finished run that --overwrite would remove
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, f'process {os.getpid()} on here'.encode())\n"
         "print('held', flush=True)\n"
         "time.sleep(60)\n", str(model_dir / run_dir.LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(app.UsageError) as error:
            run_cli(["--nets=tiny_cnn", f"--model_dir={model_dir}", "--epochs=1", "--overwrite"])
        assert f"--model_dir={model_dir} is in use by another run (process {holder.pid} on here" in str(error.value)
        assert (model_dir / "results.json").read_text() == "{}"  # nothing removed
    finally:
        holder.kill()
        holder.wait()
    # Killed, its lock file stays (naming it) but blocks nothing.
    assert str(holder.pid) in (model_dir / run_dir.LOCK_FILE).read_text()
    with run_dir.exclusive(str(model_dir)):
        assert str(os.getpid()) in (model_dir / run_dir.LOCK_FILE).read_text()
        with pytest.raises(RunFolderBusyError, match=rf"process {os.getpid()} on "):
            with run_dir.exclusive(str(model_dir)):
                pass  # pragma: no cover
    assert (model_dir / run_dir.LOCK_FILE).read_text() == ""  # released


def test_the_collapse_warning_compares_with_the_majority_class():
    """Market-1501-like labels: 751 classes of 2 to 72 images. A member that predicts the
    largest class scores 72 / 12,936 = 0.0056, far above 1 / 751 = 0.0013."""
    counts = np.r_[72, np.random.default_rng(0).integers(2, 30, 750)]
    labels = np.repeat(np.arange(751), counts)
    rate = majority_rate(np.r_[labels, -1, -1])  # unlabeled images do not count
    assert rate == 72 / len(labels)
    lines = []
    health = TrainingHealth(["mobilenet_0"], num_classes=751, samples_per_epoch=len(labels),
                            log=lines.append, train_chance=rate)
    health.on_epoch_end(0, {"loss_0": 6.0, "accuracy_0": rate})
    assert len(lines) == 1 and f"chance {rate:.4f}: the rate of the most frequent class" in lines[0]
    health.on_epoch_end(1, {"loss_0": 5.0, "accuracy_0": 0.05})  # learning
    assert len(lines) == 1
    bundle = types.SimpleNamespace(num_classes=3, test_size=4, extras={
        "train_labels": np.array([0, 0, 0, 1, -1]), "test_labels": np.array([2, 2, 1, 0])})
    members = [keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization(momentum=0.97)])]
    built = runner.health_check(bundle, members, 5, 7, types.SimpleNamespace(
        committed_epoch=0, backup_dir="b"), print)
    assert (built.train_chance, built.validation_chance, built.bn_momenta, built.steps_per_epoch) == (
        0.75, 0.5, [0.97], 7)


def test_the_batch_norm_warning_follows_the_members_momentum_and_steps():
    logs = {"accuracy_0": 0.30, "accuracy_1": 0.30, "val_accuracy_0": 0.100, "val_accuracy_1": 0.100}
    lines = []
    # The quick start: resnet32 (0.9), 90 steps an epoch: 0.9^90 = 8e-5, caught up: no warning.
    TrainingHealth(["resnet32_0", "resnet32_1"], 10, 1437, validation_samples=359, log=lines.append,
                   bn_momenta=[0.9, 0.9], steps_per_epoch=90).on_epoch_end(0, logs)
    assert lines == []
    # mobilenet (slim's 0.9997) after 3 epochs of 8 steps: 0.9997^24 = 0.993 of the start left.
    TrainingHealth(["mobilenet_0", "tiny_1"], 10, 5000, validation_samples=1000, log=lines.append,
                   bn_momenta=[0.9997, None], steps_per_epoch=8).on_epoch_end(2, logs)
    assert len(lines) == 1
    assert "member 0 (mobilenet_0) predicts the validation set at chance after epoch 3" in lines[0]
    assert "at momentum 0.9997 their initial values still weigh 99% after 24 steps" in lines[0]
    assert "--bn_momentum=0.882 forgets them within 24 steps" in lines[0]  # 0.05 ** (1 / 24) = 0.8826
    assert 0.882 ** 24 < 0.05 < 0.883 ** 24


def test_a_checkpoint_written_before_a_setting_existed_resumes_as_its_code_did():
    cifar = tiny_config("runs/x", None).resolved()  # CIFAR: warmup_epochs 2 by default
    settings, defaults = cifar.training_settings(), cifar.training_settings()
    old = {k: v for k, v in settings.items() if k not in (
        "warmup_epochs", "member_batches", "mimicry_warmup_epochs", "rmsprop_momentum", "rmsprop_epsilon",
        "ema_batch_norm", "bn_momentum", "train_per_class")}
    state = {"epoch": 3, "settings": old}  # no format: before the warm-up existed, none ran
    with pytest.raises(ConfigError, match=r"--warmup_epochs: 0.0 in the checkpoint, 2.0 now\. Resume"):
        checkpoint.check_settings(state, settings, defaults, "b")
    checkpoint.check_settings(state, dict(settings, warmup_epochs=0.0), defaults, "b")
    # Written by this code's format: a missing setting counts as its default.
    checkpoint.check_settings(dict(state, format=2), settings, defaults, "b")
    # Written by the code just before (every setting recorded, no format): unchanged.
    checkpoint.check_settings({"epoch": 3, "settings": settings}, settings, defaults, "b")
    # With a weight average, the statistics were not averaged then.
    with_ema = dict(old, ema_decay=0.5)
    with pytest.raises(ConfigError, match="--ema_batch_norm: False in the checkpoint, True now"):
        checkpoint.check_settings({"epoch": 3, "settings": with_ema}, dict(settings, warmup_epochs=0.0, ema_decay=0.5),
                                  defaults, "b")
    # What today's code cannot reproduce is refused, saying why.
    for changed, reason in ((dict(nets=["mobilenet", "resnet32"]), "no dropout"),
                            (dict(optimizer="rmsprop"), "Keras' (mean square from 0")):
        with pytest.raises(ConfigError, match="earlier dml_tf that this one cannot continue exactly: "
                                              rf".*{re.escape(reason)}"):
            checkpoint.check_settings({"epoch": 3, "settings": dict(old, **changed)}, settings, defaults, "b")
