"""dml_tf.reporting: the run banner, the per-member epoch table and the TensorBoard logs in
which members overlay; and the cohort's metrics, which leave out mimicry when it is not
trained."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import dml_tf
from dml_tf import config as cfg
from dml_tf import reporting

IN, CLASSES = 6, 4


def member(seed, name):
    inputs = keras.Input((IN,))
    init = keras.initializers.RandomNormal(stddev=0.5, seed=seed)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, kernel_initializer=init)(inputs), name=name)


def data(n=32, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, IN).astype(np.float32), rng.randint(0, CLASSES, n).astype(np.int32)


def fit(cohort, callbacks=(), epochs=2):
    x, y = data()
    cohort.compile(optimizer=keras.optimizers.SGD(0.1))
    return cohort.fit(x, y, batch_size=8, epochs=epochs, validation_data=data(16, seed=1),
                      callbacks=list(callbacks), verbose=0).history


def test_member_logs_regroups_a_cohorts_keys():
    logs = {"loss": 3.0, "loss_0": 1.5, "ce_0": 1.25, "mimicry_0": 0.25, "accuracy_0": 0.5,
            "loss_1": 1.5, "ce_1": 1.0, "accuracy_1": 0.75, "val_loss_0": 2.0, "val_accuracy_0": 0.25,
            "val_ensemble_accuracy": 0.375, "learning_rate": 0.1}
    members, ensemble = reporting.member_logs(logs)
    assert members == {0: {"train": {"loss": 1.5, "ce": 1.25, "mimicry": 0.25, "accuracy": 0.5},
                           "validation": {"loss": 2.0, "accuracy": 0.25}},
                       1: {"train": {"loss": 1.5, "ce": 1.0, "accuracy": 0.75}}}
    assert ensemble == {"validation": 0.375}


def test_epoch_table():
    logs = {"loss_0": 0.5, "ce_0": 0.375, "mimicry_0": 0.125, "accuracy_0": 0.875, "val_loss_0": 0.25,
            "val_accuracy_0": 0.9375, "loss_1": 1.0, "ce_1": 0.75, "mimicry_1": 0.25, "accuracy_1": 0.5,
            "val_loss_1": 2.0, "val_accuracy_1": 0.5, "val_ensemble_accuracy": 0.625}
    assert reporting.epoch_table(logs, ["resnet32_0", "mobilenet_1"]).splitlines() == [
        "  member            loss       ce  mimicry      acc  val_loss  val_acc",
        "  resnet32_0      0.5000   0.3750   0.1250   0.8750    0.2500   0.9375",
        "  mobilenet_1     1.0000   0.7500   0.2500   0.5000    2.0000   0.5000",
        "  ensemble                                                      0.6250",
    ]
    independent = {k: v for k, v in logs.items() if "mimicry" not in k}
    header, *_ = reporting.epoch_table(independent, ["a", "a"]).splitlines()
    assert header.split() == ["member", "loss", "ce", "acc", "val_loss", "val_acc"]
    assert reporting.epoch_table(independent, ["a", "a"]).splitlines()[1].split()[0] == "a_0"  # told apart


def test_cohort_logs_mimicry_only_when_trained():
    dml = fit(dml_tf.MutualLearningModel([member(0, "a"), member(1, "b")]), epochs=1)
    independent = fit(dml_tf.MutualLearningModel([member(0, "a"), member(1, "b")], mimicry_weight=0.0),
                      epochs=1)
    alone = fit(dml_tf.MutualLearningModel([member(0, "a")]), epochs=1)
    assert "mimicry_0" in dml and "val_mimicry_1" in dml
    assert sorted(independent) == sorted(k for k in dml if "mimicry" not in k)
    assert sorted(alone) == ["accuracy_0", "ce_0", "loss", "loss_0", "val_accuracy_0", "val_ce_0",
                             "val_ensemble_accuracy", "val_loss", "val_loss_0"]


def test_epoch_table_callback_prints_the_history(tmp_path):
    lines = []
    history = fit(dml_tf.MutualLearningModel([member(0, "a"), member(1, "b")]),
                  [reporting.EpochTable(log=lines.append, progress=False)])
    assert len(lines) == 2
    for epoch, text in enumerate(lines):
        title, header, row_a, row_b, ensemble = text.splitlines()
        assert title.startswith(f"Epoch {epoch + 1}/2  ") and title.endswith("lr 0.1")
        assert row_a.split() == ["a"] + [f"{history[key][epoch]:.4f}" for key in
                                         ("loss_0", "ce_0", "mimicry_0", "accuracy_0", "val_loss_0",
                                          "val_accuracy_0")]
        assert ensemble.split() == ["ensemble", f"{history['val_ensemble_accuracy'][epoch]:.4f}"]


def read_scalars(log_dir):
    """``{run folder: {tag: {step: value}}}`` of the event files under ``log_dir``."""
    out = {}
    for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True):
        run = os.path.relpath(os.path.dirname(path), log_dir)
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                out.setdefault(run, {}).setdefault(value.tag, {})[event.step] = float(
                    tf.make_ndarray(value.tensor))
    return out


@pytest.mark.parametrize("mimicry_weight", [1.0, 0.0])
def test_tensorboard_one_run_per_member_with_shared_tags(tmp_path, mimicry_weight):
    cohort = dml_tf.MutualLearningModel([member(0, "a"), member(1, "b")], mimicry_weight=mimicry_weight)
    history = fit(cohort, [reporting.CohortTensorBoard(str(tmp_path))])
    scalars = read_scalars(str(tmp_path))
    assert sorted(scalars) == ["ensemble/validation", "member_0/train", "member_0/validation",
                               "member_1/train", "member_1/validation"]
    terms = ["accuracy", "ce", "loss"] + (["mimicry"] if mimicry_weight else [])
    for k in range(2):
        train, validation = scalars[f"member_{k}/train"], scalars[f"member_{k}/validation"]
        assert sorted(train) == sorted([f"epoch_{t}" for t in terms] + ["epoch_learning_rate"])
        assert sorted(validation) == [f"epoch_{t}" for t in terms]
        for term in terms:
            np.testing.assert_allclose([train[f"epoch_{term}"][e] for e in (0, 1)], history[f"{term}_{k}"],
                                       rtol=1e-6)
            np.testing.assert_allclose([validation[f"epoch_{term}"][e] for e in (0, 1)],
                                       history[f"val_{term}_{k}"], rtol=1e-6)
        assert train["epoch_learning_rate"] == {0: pytest.approx(0.1), 1: pytest.approx(0.1)}
    np.testing.assert_allclose([scalars["ensemble/validation"]["epoch_accuracy"][e] for e in (0, 1)],
                               history["val_ensemble_accuracy"], rtol=1e-6)


def banner(mode, **overrides):
    values = dict(dataset="digits", nets=("tiny_cnn", "tiny_cnn"), mode=mode, epochs=8)
    if mode == "distill":
        values["teacher"] = ("teacher.keras",)
    values.update(overrides)
    config = cfg.TrainConfig(**values).resolved()
    members = [member(k, f"tiny_cnn_{k}") for k in range(len(config.nets))]
    if mode == "distill":
        members[0].trainable = False
    return reporting.describe_run(config, members, 1438, 359, 23)


def test_banner_says_what_is_trained():
    dml = banner("dml")
    assert dml.splitlines()[0] == ("Training 2 members on digits: 1438 training images, 23 steps of 64 "
                                   "per epoch, 8 epochs; 359 test images.")
    assert "each member on its cross-entropy + 1 x KL from each peer's prediction to its own (Eq. 10)" in dml
    assert "one after the other on each batch (Algorithm 1)" in dml
    assert "lr 0.01 x0.1 after epoch 6" in dml
    independent = banner("independent")
    assert "each member alone on its own cross-entropy (independent training, no mimicry term" in independent
    assert "KL" not in independent and "mimicry=" not in independent
    distill = banner("distill")
    assert "tiny_cnn_1 only, on" not in distill and "tiny_cnn_1 only on its cross-entropy" in distill
    assert "tiny_cnn_0 frozen (not trained)" in distill and "tiny_cnn_0 (tiny_cnn, frozen teacher)" in distill
    assert "(DML_e, Eq. 11)" in banner("dml", mimicry="ensemble")
    assert "mean over the 2 peers" in banner("dml", nets=("tiny_cnn",) * 3)
