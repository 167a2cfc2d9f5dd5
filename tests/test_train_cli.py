"""python -m dml_tf.train end to end: outputs, resume, modes, flagfiles, bad input."""

import dataclasses
import glob
import json
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
from absl import app, flags

from dml_tf import cli_flags
from dml_tf import config as cfg
from dml_tf import runner, study, train
from helpers_data import write_cifar_archive
from paths import ROOT

FLAGS = flags.FLAGS
study.define_flags()  # the study's flagfiles hold its flags too


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cifar")
    write_cifar_archive(str(directory), name="cifar100", n_train=40, n_test=20, seed=0)
    return str(directory)


def tiny_config(model_dir, data_dir, **overrides):
    values = dict(dataset="cifar100", data_dir=data_dir, nets=("tiny_cnn", "tiny_cnn"),
                  model_dir=str(model_dir), epochs=1, batch_size=16, verbose=0)
    values.update(overrides)
    return cfg.TrainConfig(**values)


def run_cli(args):
    """Parses ``args`` as the command line and runs dml_tf.train's main in-process."""
    FLAGS.unparse_flags()
    argv = FLAGS(["dml_tf.train"] + list(args))
    try:
        return train.main(argv)
    finally:
        FLAGS.unparse_flags()


def test_cli_trains_and_writes_results(cifar_dir, tmp_path):
    model_dir = tmp_path / "run"
    run_cli([f"--data_dir={cifar_dir}", "--dataset=cifar100", "--nets=tiny_cnn,tiny_cnn",
             "--epochs=2", "--batch_size=16", f"--model_dir={model_dir}", "--verbose=0"])
    results = json.loads((model_dir / "results.json").read_text())
    assert results["config"]["nets"] == ["tiny_cnn", "tiny_cnn"]
    assert results["config"]["optimizer"] == "sgd" and results["config"]["nesterov"] is True
    assert results["config"]["lr_decay_epochs"] == [60, 120, 180]
    assert results["dataset"] == {"name": "cifar100", "num_classes": 100, "train_size": 40,
                                  "test_size": 20,
                                  "class_names": [f"class_{i:03d}" for i in range(100)]}
    assert results["validation_epochs"] == [1, 2]
    assert [fit["index"] for fit in results["training_fit"]] == [0, 1]
    assert len(results["history"]["loss_0"]) == 2 and "val_ensemble_accuracy" in results["history"]
    assert 0 <= results["ensemble_test_accuracy"] <= 1
    for k, entry in enumerate(results["members"]):
        member = keras.models.load_model(model_dir / entry["file"])
        assert member.output_shape == (None, 100)
        assert entry["test_accuracy"] == results["test"][f"accuracy_{k}"]
    for run in ("member_0/train", "member_1/validation", "ensemble/validation"):
        assert glob.glob(str(model_dir / "logs" / run / "events*"))
    assert not glob.glob(str(model_dir / ".tmp*"))
    with np.load(model_dir / "test_predictions.npz") as predictions:  # dml_tf.compare's paired test
        right = predictions["members"] == predictions["labels"]
        assert predictions["members"].shape == (2, 20)
        np.testing.assert_allclose(right.mean(axis=1), [results["test"]["accuracy_0"],
                                                        results["test"]["accuracy_1"]], atol=1e-6)
        np.testing.assert_allclose(np.mean(predictions["ensemble"] == predictions["labels"]),
                                   results["ensemble_test_accuracy"], atol=1e-6)


def test_resume_after_interruption_reaches_the_same_state(cifar_dir, tmp_path):
    # A step schedule that decays after epoch 2 checks the restored learning rate too.
    # Epochs of 2 steps over passes of 3 batches (40 images, 16 a batch): the first resume
    # starts inside a pass, the second after two whole passes (epoch_stream).
    common = dict(epochs=4, lr_schedule="step", lr_decay_epochs=(2,), learning_rate=0.05,
                  steps_per_epoch=2)
    reference = runner.run(tiny_config(tmp_path / "ref", cifar_dir, **common), log=lambda s: None)

    class Interrupt(keras.callbacks.Callback):
        def __init__(self, at_epoch):
            super().__init__()
            self.at_epoch = at_epoch

        def on_epoch_end(self, epoch, logs=None):
            if epoch == self.at_epoch:
                raise KeyboardInterrupt

    config = tiny_config(tmp_path / "resumed", cifar_dir, **common)
    for at_epoch in (0, 2):  # two interruptions: after epochs 1 and 3
        with pytest.raises(KeyboardInterrupt):
            runner.run(config, log=lambda s: None, callbacks=[Interrupt(at_epoch)])
        assert not (tmp_path / "resumed" / "results.json").exists()  # nothing passes as a result
    messages = []
    resumed = runner.run(config, log=messages.append)
    assert any("Resuming from the checkpoint of epoch 3" in m for m in messages)
    assert resumed["epochs_run_this_session"] == 1
    # The history is whole: every epoch of every session, as the uninterrupted run's.
    assert sorted(resumed["history"]) == sorted(reference["history"])
    for key, values in reference["history"].items():
        assert len(resumed["history"][key]) == 4, key
        np.testing.assert_array_equal(resumed["history"][key], values, err_msg=key)
    assert not (tmp_path / "resumed" / "backup").exists()  # removed once results.json exists
    for k in range(2):  # bit for bit
        a = keras.models.load_model(tmp_path / "ref" / f"member_{k}.keras")
        b = keras.models.load_model(tmp_path / "resumed" / f"member_{k}.keras")
        for wa, wb in zip(a.weights, b.weights):
            np.testing.assert_array_equal(wa.numpy(), wb.numpy())


def test_independent_and_distill_modes(cifar_dir, tmp_path):
    independent = runner.run(tiny_config(tmp_path / "ind", cifar_dir, mode="independent"),
                             log=lambda s: None)
    assert "mimicry_0" not in independent["history"]  # not trained, so not logged
    assert independent["config"]["mode"] == "independent"
    teacher_file = str(tmp_path / "ind" / "member_0.keras")
    distilled = runner.run(tiny_config(tmp_path / "distill", cifar_dir, mode="distill",
                                       teacher=(teacher_file,)), log=lambda s: None)
    assert [m["trainable"] for m in distilled["members"]] == [False, True]
    teacher = keras.models.load_model(teacher_file)
    saved_teacher = keras.models.load_model(tmp_path / "distill" / "member_0.keras")
    for a, b in zip(teacher.weights, saved_teacher.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # the teacher never moved


def test_semi_supervised_labeled_only(cifar_dir, tmp_path):
    results = runner.run(tiny_config(tmp_path / "semi", cifar_dir, labeled_fraction=0.5,
                                     semi="labeled", nets=("tiny_cnn",)), log=lambda s: None)
    assert results["config"]["labeled_fraction"] == 0.5
    assert len(results["history"]["ce_0"]) == 1


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "flags", "*.flags"))))
def test_every_flagfile_parses_and_resolves(path):
    FLAGS.unparse_flags()
    try:
        FLAGS(["dml_tf.train", f"--flagfile={path}"])
        config = train.config_from_flags()
        if config.mode == "distill":
            assert config.teacher, path
        resolved = config.resolved()
        folders = (FLAGS.study_dir or "", FLAGS.export_dir or "")
    finally:
        FLAGS.unparse_flags()
    assert resolved.nets and resolved.epochs > 0
    if os.path.basename(path).startswith("study_"):
        assert folders[0].startswith("runs/") and folders[1].startswith("results/")
    else:
        assert resolved.model_dir.startswith("runs/")


def test_validation_freq_keeps_every_epoch_and_evaluates_at_the_end(cifar_dir, tmp_path):
    lines = []
    results = runner.run(tiny_config(tmp_path / "run", cifar_dir, epochs=3, validation_freq=2,
                                     verbose=None), log=lines.append)
    history = results["history"]
    assert results["validation_epochs"] == [2]
    assert len(history["loss_0"]) == 3 and None not in history["loss_0"]
    assert history["val_accuracy_0"][0] is None and history["val_accuracy_0"][2] is None
    assert history["val_accuracy_0"][1] is not None
    # Epoch 3 was not validated by fit, but the final evaluation always runs.
    assert results["test"]["accuracy_0"] == results["members"][0]["test_accuracy"] is not None
    tables = [line for line in lines if line.startswith("Epoch ")]
    assert len(tables) == 3 and "val_acc" in tables[1] and "val_acc" not in tables[2]


def test_every_setting_is_one_flag_and_every_training_flag_a_setting():
    """The flags of dml_tf.train are made from the TrainConfig fields: same names, types and
    defaults, help from the field, choices listed as absl lists an enum's."""
    fields = {f.name: f for f in dataclasses.fields(cfg.TrainConfig)}
    defined = flags.FlagValues()
    assert cli_flags.define_train_flags(defined) == list(fields)
    assert set(defined) == set(fields)
    for name, field in fields.items():
        flag = defined[name]
        assert flag.flag_type() == FLAGS[name].flag_type(), name  # what dml_tf.train defined
        default = list(field.default) if isinstance(field.default, tuple) else field.default
        assert flag.default == default == FLAGS[name].default, name
        assert field.metadata["help"] in flag.help, name
        if field.metadata["choices"]:
            assert flag.help.startswith(f"<{'|'.join(field.metadata['choices'])}>: "), name


@pytest.mark.parametrize("name,value,message", [
    ("epochs", "-1", "--epochs must be positive; got -1."),
    ("labeled_fraction", "1.5", "--labeled_fraction must be in (0, 1]; got 1.5."),
    ("mode", "mutual", "--mode must be one of dml, independent, distill; got 'mutual'."),
    ("mimicry", "l2", "--mimicry must be one of kl, js, ensemble; got 'l2'."),
    ("semi", "some", "--semi must be one of all, labeled; got 'some'."),
    ("ema_decay", "1", "--ema_decay must be in [0, 1); got 1.0."),
    ("image_size", "16,x", "--image_size must be comma-separated integers; got 16,x."),
])
def test_a_bad_value_gets_the_same_error_by_flag_and_by_config(name, value, message, tmp_path):
    """One check (TrainConfig.check), one message, whichever way the setting comes in."""
    with pytest.raises(app.UsageError) as by_flag:
        run_cli(["--nets=tiny_cnn", f"--model_dir={tmp_path / 'bad'}", f"--{name}={value}"])
    FLAGS.unparse_flags()
    FLAGS(["dml_tf.train", f"--{name}={value}"])
    try:
        parsed = FLAGS[name].value
    finally:
        FLAGS.unparse_flags()
    with pytest.raises(cfg.ConfigError) as by_config:
        cfg.TrainConfig(nets=("tiny_cnn",), **{name: parsed}).resolved()
    assert str(by_flag.value) == str(by_config.value) == message


def test_old_spelling_labelled_is_still_accepted_for_semi(tmp_path):
    """Old flagfiles say --semi=labelled: the same setting as --semi=labeled."""
    FLAGS.unparse_flags()
    try:
        FLAGS(["dml_tf.train", "--semi=labelled"])
        config = train.config_from_flags()
    finally:
        FLAGS.unparse_flags()
    assert config.resolved().semi == "labeled" == cfg.TrainConfig(semi="labelled").resolved().semi
    assert cli_flags.config_from_flags().semi == "all"  # the flag's default again


@pytest.mark.parametrize("args,message", [
    (["--dataset=mnist"], "Unknown dataset 'mnist'"),
    (["--nets=resnet33"], "resnet33"),
    (["--nets="], "--nets must name at least one network"),
    (["--batch_size=0"], "--batch_size must be positive"),
    (["--epochs=-1"], "--epochs must be positive"),
    (["--labeled_fraction=1.5"], "--labeled_fraction must be in (0, 1]"),
    (["--mode=distill", "--nets=tiny_cnn,tiny_cnn"], "one --teacher file per teacher net"),
    (["--lr_decay_epochs=a,b"], "--lr_decay_epochs must be comma-separated integers"),
    (["--labeled_ids=5"], "--labeled_ids is not supported with --dataset=digits"),
    (["--image_size=16,16"], "--image_size is not supported with --dataset=digits"),
    (["--strategy=tpu"], "--strategy=tpu cannot start here"),
    (["--bn_momentum=1.5"], "--bn_momentum must be in [0, 1)"),
    (["--rmsprop_epsilon=0"], "--rmsprop_epsilon must be positive"),
    (["--rmsprop_momentum=1"], "--rmsprop_momentum must be in [0, 1)"),
    (["--mimicry_weight=nan"], "--mimicry_weight must be a finite number; got nan"),
    (["--learning_rate=inf"], "--learning_rate must be a finite number; got inf"),
])
def test_bad_flags_give_a_usage_error(args, message, tmp_path):
    with pytest.raises(app.UsageError) as error:
        run_cli(["--nets=tiny_cnn", f"--model_dir={tmp_path / 'bad'}", "--epochs=1"] + args)
    assert message in str(error.value)
    assert not (tmp_path / "bad" / "results.json").exists()


def test_bad_data_and_model_dirs(cifar_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(app.UsageError, match="cifar-100-python"):
        run_cli(["--dataset=cifar100", f"--data_dir={empty}", "--nets=tiny_cnn",
                 f"--model_dir={tmp_path / 'a'}"])
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b\x08not really a gzip archive")
    with pytest.raises(app.UsageError, match="cifar-100-python.tar.gz"):
        run_cli(["--dataset=cifar100", f"--data_dir={corrupt}", "--nets=tiny_cnn",
                 f"--model_dir={tmp_path / 'b'}"])
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(app.UsageError, match="is not writable"):
        run_cli(["--nets=tiny_cnn", f"--model_dir={blocker / 'run'}"])
    assert not (tmp_path / "a" / "results.json").exists()
    assert not (tmp_path / "b" / "results.json").exists()


def test_finished_run_is_not_overwritten(cifar_dir, tmp_path):
    model_dir = tmp_path / "done"
    model_dir.mkdir()
    (model_dir / "results.json").write_text("{}")
    with pytest.raises(app.UsageError, match="already holds a finished run"):
        run_cli(["--nets=tiny_cnn", f"--model_dir={model_dir}"])
    assert (model_dir / "results.json").read_text() == "{}"


def test_command_line_error_is_one_line_and_nonzero(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "dml_tf.train", "--nets=resnet33", f"--model_dir={tmp_path}/x"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore"))
    assert process.returncode != 0
    assert "Unknown network 'resnet33'" in process.stderr or "resnet33" in process.stderr
    assert "Traceback" not in process.stderr


def test_bn_momentum_flag_sets_every_member(tmp_path):
    """--bn_momentum overrides each net's own batch-norm momentum; unset keeps it."""
    bundle = types.SimpleNamespace(num_classes=3, input_shape=(16, 16, 3))

    def momenta(**overrides):
        config = tiny_config(tmp_path, None, nets=("mobilenet", "tiny_cnn"), **overrides).resolved()
        return [{layer.momentum for layer in member.layers
                 if isinstance(layer, keras.layers.BatchNormalization)}
                for member in runner.build_members(config, bundle)]

    assert momenta() == [{0.9997}, {0.9}]
    assert momenta(bn_momentum=0.7) == [{0.7}, {0.7}]


def test_separate_member_batches_feed_each_member_its_own_batch(cifar_dir, tmp_path):
    """--member_batches=separate: steps take K x batch_size images (each member its own)."""
    lines = []
    results = runner.run(tiny_config(tmp_path / "sep", cifar_dir, batch_size=8, member_batches="separate"),
                         log=lines.append)
    assert "40 training images, 3 steps of 16 (8 per member) per epoch" in lines[0]  # ceil(40 / (2 x 8))
    assert results["config"]["member_batches"] == "separate"
    assert np.isfinite(results["history"]["loss_1"]).all()
    with pytest.raises(cfg.ConfigError, match="--member_batches=separate cannot be used with --mode=distill"):
        tiny_config(tmp_path / "d", cifar_dir, mode="distill", teacher=("t.keras",),
                    member_batches="separate").resolved()


def test_mimicry_ramp_resumes_where_it_stopped(cifar_dir, tmp_path):
    """The ramp reads the cohort's iteration count, which the checkpoint restores: an
    interrupted ramped run continues exactly as the uninterrupted one."""
    common = dict(epochs=3, mimicry_warmup_epochs=2.0, learning_rate=0.05)
    reference = runner.run(tiny_config(tmp_path / "ref", cifar_dir, **common), log=lambda s: None)

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    config = tiny_config(tmp_path / "resumed", cifar_dir, **common)
    with pytest.raises(KeyboardInterrupt):
        runner.run(config, log=lambda s: None, callbacks=[Stop()])
    resumed = runner.run(config, log=lambda s: None)
    for key in ("loss_0", "mimicry_1", "val_loss_1"):
        np.testing.assert_allclose(resumed["history"][key], reference["history"][key], rtol=1e-5, err_msg=key)
    assert reference["history"]["mimicry_0"][0] > 0  # the mimicry term is logged unweighted
