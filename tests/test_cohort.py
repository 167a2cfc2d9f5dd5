"""MutualLearningModel: Algorithm 1 step by step, equivalences, BN, saving, errors."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import dml_tf
from numpy_reference import softmax

IN, CLASSES, BATCH = 6, 4, 8




def linear_member(seed, name, batch_norm=False, dropout=0.0):
    inputs = keras.Input((IN,))
    h = inputs
    if batch_norm:
        h = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(h)
    if dropout:
        h = keras.layers.Dropout(dropout)(h)
    init = keras.initializers.RandomNormal(stddev=0.5, seed=seed)
    outputs = keras.layers.Dense(CLASSES, kernel_initializer=init,
                                 bias_initializer=keras.initializers.RandomNormal(seed=seed + 99),
                                 name=f"{name}_dense")(h)
    return keras.Model(inputs, outputs, name=name)


def data(n=BATCH, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, IN).astype(np.float32), rng.randint(0, CLASSES, n).astype(np.int32)


def reference_step(weights, x, y, lr, update, weight=1.0, reduction="mean", mode="kl",
                   smoothing=0.0):
    """Algorithm 1 for linear members, written independently with analytic gradients.

    For z = xW + b: d CE / dz = (p - t) / B and d KL(q || p) / dz = (p - q) / B
    (q a constant target), so every step is exact NumPy.
    """
    k_count = len(weights)
    weights = [(w.astype(np.float64).copy(), b.astype(np.float64).copy()) for w, b in weights]
    b_size = len(x)
    targets = np.eye(CLASSES)[y] * (1 - smoothing) + smoothing / CLASSES
    probs = [softmax(x @ w + b) for w, b in weights]
    scale = 1.0 / (k_count - 1) if (reduction == "mean" and k_count > 1) else 1.0
    new = []
    for k in range(k_count):
        w, b = weights[k]
        p = softmax(x @ w + b)
        grad_z = (p - targets) / b_size
        peers = [probs[l] for l in range(k_count) if l != k]
        if mode == "ensemble" and peers:
            grad_z += weight * (p - np.mean(peers, axis=0)) / b_size
        else:
            for q in peers:
                grad_z += weight * scale * (p - q) / b_size
        w = w - lr * x.T @ grad_z
        b = b - lr * grad_z.sum(axis=0)
        new.append((w, b))
        if update == "sequential":
            probs[k] = softmax(x @ w + b)  # later members see the updated member k
    return new


def member_weights(model):
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)][0]
    return dense.kernel.numpy(), dense.bias.numpy()


@pytest.mark.parametrize("k_count", [2, 3])
@pytest.mark.parametrize("update", ["sequential", "simultaneous"])
def test_one_step_matches_algorithm_1(k_count, update):
    members = [linear_member(i, f"m{i}") for i in range(k_count)]
    start = [member_weights(m) for m in members]
    x, y = data()
    cohort = dml_tf.MutualLearningModel(members, update=update)
    cohort.compile(optimizer=keras.optimizers.SGD(0.5))
    cohort.train_on_batch(x, y)
    expected = reference_step(start, x, y, 0.5, update)
    for member, (w, b) in zip(members, expected):
        got_w, got_b = member_weights(member)
        np.testing.assert_allclose(got_w, w, atol=2e-6)
        np.testing.assert_allclose(got_b, b, atol=2e-6)


def test_sequential_and_simultaneous_differ_only_after_member_one():
    x, y = data()
    results = {}
    for update in ("sequential", "simultaneous"):
        members = [linear_member(i, f"m{i}") for i in range(2)]
        cohort = dml_tf.MutualLearningModel(members, update=update)
        cohort.compile(optimizer=keras.optimizers.SGD(0.5))
        cohort.train_on_batch(x, y)
        results[update] = [member_weights(m)[0] for m in members]
    np.testing.assert_allclose(results["sequential"][0], results["simultaneous"][0], atol=1e-7)
    assert np.abs(results["sequential"][1] - results["simultaneous"][1]).max() > 1e-4


@pytest.mark.parametrize("mode,reduction,smoothing", [
    ("kl", "sum", 0.0), ("ensemble", "mean", 0.0), ("kl", "mean", 0.1)])
def test_step_variants_match_reference(mode, reduction, smoothing):
    members = [linear_member(i, f"m{i}") for i in range(3)]
    start = [member_weights(m) for m in members]
    x, y = data()
    cohort = dml_tf.MutualLearningModel(members, mimicry=mode, peer_reduction=reduction,
                                        mimicry_weight=0.7, label_smoothing=smoothing)
    cohort.compile(optimizer=keras.optimizers.SGD(0.3))
    cohort.train_on_batch(x, y)
    expected = reference_step(start, x, y, 0.3, "sequential", weight=0.7,
                              reduction=reduction, mode=mode, smoothing=smoothing)
    for member, (w, b) in zip(members, expected):
        np.testing.assert_allclose(member_weights(member)[0], w, atol=2e-6)
        np.testing.assert_allclose(member_weights(member)[1], b, atol=2e-6)


def test_frozen_member_is_a_static_teacher():
    teacher = linear_member(0, "teacher", batch_norm=True, dropout=0.5)
    student = linear_member(1, "student")
    x, y = data(32)
    teacher.trainable = False
    before = [v.numpy().copy() for v in teacher.weights]
    teacher_probs = softmax(teacher(x, training=False).numpy())
    start = member_weights(student)
    cohort = dml_tf.MutualLearningModel([teacher, student])
    cohort.compile(optimizer=keras.optimizers.SGD(0.5))
    cohort.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    for b, a in zip(before, teacher.weights):
        np.testing.assert_array_equal(b, a.numpy())  # incl. BN moving statistics
    # The student's step used the teacher's inference-mode (deterministic) output.
    w, b = start
    p = softmax(x @ w + b)
    grad_z = (p - np.eye(CLASSES)[y]) / 32 + (p - teacher_probs) / 32
    np.testing.assert_allclose(member_weights(student)[0], w - 0.5 * x.T @ grad_z, atol=2e-6)


def _train_alone(member, x, y, epochs=2):
    member.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    member.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)


def _regularized_member(seed, name):
    inputs = keras.Input((IN,))
    h = keras.layers.Dense(8, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-2),
                           kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
    h = keras.layers.BatchNormalization()(h)
    outputs = keras.layers.Dense(CLASSES, kernel_initializer=keras.initializers.GlorotUniform(seed + 1))(h)
    return keras.Model(inputs, outputs, name=name)


@pytest.mark.parametrize("k_count,weight", [(1, 1.0), (2, 0.0)])
def test_independent_training_equals_keras_fit(k_count, weight):
    x, y = data(64, seed=3)
    cohort_members = [_regularized_member(10 * i, f"c{i}") for i in range(k_count)]
    alone = [_regularized_member(10 * i, f"a{i}") for i in range(k_count)]
    cohort = dml_tf.MutualLearningModel(cohort_members, mimicry_weight=weight)
    cohort.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
    cohort.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for member, reference in zip(cohort_members, alone):
        _train_alone(reference, x, y)
        for a, b in zip(member.weights, reference.weights):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_unlabeled_samples_get_mimicry_but_no_cross_entropy():
    members = [linear_member(i, f"m{i}") for i in range(2)]
    start = [member_weights(m) for m in members]
    x, y = data()
    y_semi = y.copy()
    y_semi[::2] = -1
    cohort = dml_tf.MutualLearningModel(members, update="simultaneous")
    cohort.compile(optimizer=keras.optimizers.SGD(0.5))
    logs = cohort.train_on_batch(x, y_semi, return_dict=True)
    labeled = y_semi >= 0
    probs = [softmax(x @ w + b) for w, b in start]
    for k, (w, b) in enumerate(start):
        p = probs[k]
        ce_grad = np.zeros_like(p)
        ce_grad[labeled] = (p - np.eye(CLASSES)[y])[labeled] / labeled.sum()
        grad_z = ce_grad + (p - probs[1 - k]) / len(x)  # mimicry over ALL samples
        np.testing.assert_allclose(member_weights(members[k])[0], w - 0.5 * x.T @ grad_z, atol=2e-6)
    expected_ce0 = -np.log(probs[0][labeled, y[labeled]]).mean()
    np.testing.assert_allclose(logs["ce_0"], expected_ce0, rtol=1e-5)


def test_batch_norm_statistics_update_once_per_iteration():
    members = [linear_member(i, f"bn{i}", batch_norm=True) for i in range(3)]
    x, y = data(16)
    cohort = dml_tf.MutualLearningModel(members, update="sequential")
    cohort.compile(optimizer=keras.optimizers.SGD(0.5))
    cohort.train_on_batch(x, y)
    # momentum 0.9 from mean 0 / variance 1: exactly one update with this batch.
    expected_mean = 0.1 * x.mean(axis=0)
    expected_var = 0.9 + 0.1 * x.var(axis=0, ddof=0)
    for member in members:
        bn = member.get_layer(f"{member.name}_bn")
        np.testing.assert_allclose(bn.moving_mean.numpy(), expected_mean, atol=1e-6)
        np.testing.assert_allclose(bn.moving_variance.numpy(), expected_var, atol=1e-4)


def test_metrics_names_evaluate_and_predict_shape():
    members = [linear_member(i, f"m{i}") for i in range(3)]
    x, y = data(40)
    cohort = dml_tf.MutualLearningModel(members)
    cohort.compile(optimizer="sgd")
    history = cohort.fit(x, y, batch_size=8, epochs=1, validation_data=(x, y), verbose=0)
    for k in range(3):
        for name in (f"loss_{k}", f"ce_{k}", f"mimicry_{k}", f"accuracy_{k}"):
            assert name in history.history and f"val_{name}" in history.history
    assert "val_ensemble_accuracy" in history.history
    probs = cohort.predict(x, batch_size=16, verbose=0)
    assert probs.shape == (3, 40, CLASSES)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    for k, member in enumerate(members):
        np.testing.assert_allclose(probs[k], softmax(member.predict(x, verbose=0)), atol=1e-5)
    results = cohort.evaluate(x, y, verbose=0, return_dict=True)
    ensemble = np.argmax(probs.mean(0), -1)
    np.testing.assert_allclose(results["ensemble_accuracy"], np.mean(ensemble == y), atol=1e-6)
    for k in range(3):
        np.testing.assert_allclose(results[f"accuracy_{k}"], np.mean(probs[k].argmax(-1) == y), atol=1e-6)
        others = [probs[l] for l in range(3) if l != k]
        expected = np.mean([np.sum(q * np.log(q / probs[k]), -1).mean() for q in others])
        np.testing.assert_allclose(results[f"mimicry_{k}"], expected, rtol=1e-4)


def test_save_load_round_trip_and_member_files(tmp_path):
    members = [_regularized_member(i, f"s{i}") for i in range(2)]
    x, y = data(32)
    cohort = dml_tf.MutualLearningModel(members, mimicry="js", label_smoothing=0.1)
    cohort.compile(optimizer=[keras.optimizers.SGD(0.1, momentum=0.9), keras.optimizers.Adam(1e-3)])
    cohort.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "cohort.keras")
    cohort.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, dml_tf.MutualLearningModel)
    assert (loaded.mimicry, loaded.label_smoothing) == ("js", 0.1)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), cohort.predict(x, verbose=0), atol=1e-6)
    assert [type(o).__name__ for o in loaded._member_optimizers] == ["SGD", "Adam"]
    assert [type(loaded.optimizer.member(k)).__name__ for k in range(2)] == ["SGD", "Adam"]
    for a, b in zip(cohort.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy())
    # Training goes on identically from the restored state.
    cohort.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), cohort.predict(x, verbose=0), atol=1e-5)
    # Each member stays a plain Keras model that saves and works alone.
    member_path = str(tmp_path / "member0.keras")
    cohort.members[0].save(member_path)
    alone = keras.models.load_model(member_path)
    np.testing.assert_allclose(alone.predict(x, verbose=0), members[0].predict(x, verbose=0), atol=1e-6)


def test_callbacks_and_jit_compile(tmp_path):
    x, y = data(64)
    members = [_regularized_member(i, f"j{i}") for i in range(2)]
    cohort = dml_tf.MutualLearningModel(members)
    cohort.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=True)
    logdir = tmp_path / "tb"
    callbacks = [
        keras.callbacks.TensorBoard(str(logdir)),
        keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="val_loss",
                                        save_best_only=True),
        keras.callbacks.EarlyStopping(monitor="val_ensemble_accuracy", mode="max", patience=5),
        keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.05 * 0.5 ** epoch),
    ]
    history = cohort.fit(x, y, batch_size=16, epochs=3, validation_data=(x, y),
                         callbacks=callbacks, verbose=0)
    assert len(history.history["loss_0"]) == 3
    assert os.listdir(logdir / "train") and os.listdir(logdir / "validation")
    assert (tmp_path / "best.keras").exists()
    # The scheduler set every member's learning rate.
    for optimizer in cohort._member_optimizers:
        np.testing.assert_allclose(float(optimizer.learning_rate.numpy()), 0.05 * 0.25)


def test_backup_and_restore_resumes_to_the_same_state(tmp_path):
    x, y = data(64)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    def make():
        members = [_regularized_member(i, f"b{i}") for i in range(2)]
        cohort = dml_tf.MutualLearningModel(members)
        cohort.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        return cohort

    reference = make()
    reference.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    interrupted = make()
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                        callbacks=[backup, Interrupt()])
    resumed = make()
    history = resumed.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                          callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    assert len(history.history["loss_0"]) == 2  # epochs 3 and 4 only
    np.testing.assert_allclose(resumed.predict(x, verbose=0), reference.predict(x, verbose=0),
                               atol=1e-5)


def test_feature_l2_and_entropy_terms_enter_the_loss():
    def net(seed, name):
        inputs = keras.Input((IN,))
        f = keras.layers.Dense(3, name="features",
                               kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
        return keras.Model(inputs, keras.layers.Dense(CLASSES, name="logits")(f), name=name)

    members = [net(0, "f0"), net(1, "f1")]
    x, y = data(16)
    plain = dml_tf.MutualLearningModel(members)
    plain.compile(optimizer="sgd")
    extra = dml_tf.MutualLearningModel(members, entropy_weight=0.3, feature_l2_weight=0.2)
    extra.compile(optimizer="sgd")
    base = plain.evaluate(x, y, verbose=0, return_dict=True)
    got = extra.evaluate(x, y, verbose=0, return_dict=True)
    feats = [keras.Model(m.input, m.get_layer("features").output).predict(x, verbose=0) for m in members]
    probs = [softmax(m.predict(x, verbose=0)) for m in members]
    for k in range(2):
        ent = -np.sum(probs[k] * np.log(probs[k]), -1).mean()
        l2 = np.sum((feats[k] - feats[1 - k]) ** 2, -1).mean()
        np.testing.assert_allclose(got[f"loss_{k}"], base[f"loss_{k}"] - 0.3 * ent + 0.2 * l2, rtol=1e-4)
    extra.fit(x, y, batch_size=8, epochs=1, verbose=0)


def test_bad_input_raises_value_error():
    a, b = linear_member(0, "a"), linear_member(1, "b")
    with pytest.raises(ValueError, match="non-empty list"):
        dml_tf.MutualLearningModel([])
    with pytest.raises(ValueError, match="keras.Model"):
        dml_tf.MutualLearningModel([a, "resnet"])
    with pytest.raises(ValueError, match="same model more than once"):
        dml_tf.MutualLearningModel([a, a])
    other = keras.Sequential([keras.Input((IN,)), keras.layers.Dense(CLASSES + 1)])
    with pytest.raises(ValueError, match="same number of classes"):
        dml_tf.MutualLearningModel([a, other])
    for kwargs, match in [({"update": "async"}, "update"), ({"mimicry": "l2"}, "mimicry"),
                          ({"peer_reduction": "max"}, "peer_reduction"),
                          ({"mimicry_weight": -1}, "mimicry_weight"),
                          ({"label_smoothing": 1.5}, "label_smoothing")]:
        with pytest.raises(ValueError, match=match):
            dml_tf.MutualLearningModel([a, b], **kwargs)
    cohort = dml_tf.MutualLearningModel([a, b])
    with pytest.raises(ValueError, match="list of 2"):
        cohort.compile(optimizer=["sgd", "sgd", "sgd"])
    with pytest.raises(ValueError, match="same optimizer instance"):
        opt = keras.optimizers.SGD()
        cohort.compile(optimizer=[opt, opt])
    with pytest.raises(ValueError, match="does not take `loss`"):
        cohort.compile(optimizer="sgd", loss="mse")


@pytest.mark.parametrize("arg", ["mimicry_weight", "entropy_weight", "feature_l2_weight", "label_smoothing"])
def test_numbers_are_checked_and_numpy_scalars_accepted(arg):
    a, b = linear_member(0, "a"), linear_member(1, "b")
    for bad in (float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(ValueError, match=arg):
            dml_tf.MutualLearningModel([a, b], **{arg: bad})
    # (a positive feature_l2_weight needs members with a "features" layer)
    goods = (np.float32(0.0), np.int64(0)) if arg == "feature_l2_weight" else (np.float32(0.5), np.float64(0.25))
    for good in goods:
        cohort = dml_tf.MutualLearningModel([a, b], **{arg: good})
        assert getattr(cohort, arg) == float(good) and type(getattr(cohort, arg)) is float


@pytest.mark.parametrize("bad_label", [CLASSES, 15, -2, -5])
def test_labels_out_of_range_are_refused(bad_label):
    """Labels are -1 (unlabeled) or classes in [0, CLASSES): label 15 of 4 classes
    would count as labeled with zero cross-entropy, -5 as unlabeled."""
    members = [linear_member(i, f"m{i}") for i in range(2)]
    start = [member_weights(m) for m in members]
    x, y = data(16)
    y[5] = bad_label
    cohort = dml_tf.MutualLearningModel(members)
    cohort.compile(optimizer=keras.optimizers.SGD(0.5))
    with pytest.raises(ValueError, match=rf"-1 \(unlabeled\) or a class in \[0, {CLASSES}\).*{bad_label}"):
        cohort.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for member, (w, b) in zip(members, start):  # no update was applied
        np.testing.assert_array_equal(member_weights(member)[0], w)
    with pytest.raises(ValueError, match=rf"in \[0, {CLASSES}\)"):
        cohort.evaluate(x, y, verbose=0)
    y[5] = -1  # unlabeled: fine
    cohort.fit(x, y, batch_size=16, epochs=1, verbose=0)


class _CountingMember(keras.Model):
    """A linear member that counts its forward passes (Python calls, run eagerly)."""

    def __init__(self, seed, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(
            CLASSES, kernel_initializer=keras.initializers.RandomNormal(seed=seed))
        self.forwards = 0

    def call(self, x, training=False):
        self.forwards += 1
        return self.dense(x)


@pytest.mark.parametrize("update,mimicry_weight,expected", [
    ("sequential", 1.0, [2, 2, 1]), ("simultaneous", 1.0, [1, 1, 1]), ("sequential", 0.0, [1, 1, 1])])
def test_forward_passes_per_iteration(update, mimicry_weight, expected):
    """Sec. 3 / Algorithm 1: K forward+backward passes, plus K-1 refresh forwards for
    the sequential update (the last member's new predictions are never needed), and
    none for independent training (mimicry_weight=0: no member reads its peers)."""
    members = [_CountingMember(seed=k, name=f"count_{k}") for k in range(3)]
    for m in members:
        m.build((None, IN))
    cohort = dml_tf.MutualLearningModel(members, update=update, mimicry_weight=mimicry_weight)
    cohort.compile(optimizer=keras.optimizers.SGD(0.1), run_eagerly=True)
    x, y = data()
    cohort.train_on_batch(x, y)  # builds the optimizer and metrics
    for m in members:
        m.forwards = 0
    cohort.train_on_batch(x, y)
    assert [m.forwards for m in members] == expected


def separate_batches_reference(weights, x, y, lr, update):
    """The original code's iteration, in NumPy: member k's train op takes its own batch
    (chunk k) and mimics its peers' predictions on it with their current weights."""
    k_count = len(weights)
    size = len(x) // k_count
    current = [(w.astype(np.float64).copy(), b.astype(np.float64).copy()) for w, b in weights]
    start = [(w.copy(), b.copy()) for w, b in current]
    for k in range(k_count):
        xk, yk = x[k * size:(k + 1) * size], y[k * size:(k + 1) * size]
        peers = current if update == "sequential" else start
        w, b = start[k]
        p = softmax(xk @ w + b)
        grad_z = (p - np.eye(CLASSES)[yk]) / size
        for j in range(k_count):
            if j != k:
                q = softmax(xk @ peers[j][0] + peers[j][1])
                grad_z += (p - q) / (k_count - 1) / size
        current[k] = (w - lr * xk.T @ grad_z, b - lr * grad_z.sum(axis=0))
    return current


@pytest.mark.parametrize("k_count", [2, 3])
@pytest.mark.parametrize("update", ["sequential", "simultaneous"])
def test_separate_member_batches_match_the_original_code(k_count, update):
    members = [linear_member(i, f"m{i}") for i in range(k_count)]
    start = [member_weights(m) for m in members]
    x, y = data(n=BATCH * k_count)
    cohort = dml_tf.MutualLearningModel(members, update=update, member_batches="separate")
    cohort.compile(optimizer=keras.optimizers.SGD(0.5))
    logs = cohort.train_on_batch(x, y, return_dict=True)
    expected = separate_batches_reference(start, x, y, 0.5, update)
    for member, (w, b) in zip(members, expected):
        np.testing.assert_allclose(member_weights(member)[0], w, atol=2e-6)
        np.testing.assert_allclose(member_weights(member)[1], b, atol=2e-6)
    # member k's metrics are on its own chunk: its accuracy before the update
    for k, (w, b) in enumerate(start):
        chunk = slice(k * BATCH, (k + 1) * BATCH)
        accuracy = np.mean(np.argmax(x[chunk] @ w + b, axis=1) == y[chunk])
        np.testing.assert_allclose(logs[f"accuracy_{k}"], accuracy, atol=1e-6)
    # the shared default trains every member on the whole batch instead
    shared = [linear_member(i, f"s{i}") for i in range(k_count)]
    cohort = dml_tf.MutualLearningModel(shared, update=update)
    cohort.compile(optimizer=keras.optimizers.SGD(0.5))
    cohort.train_on_batch(x, y)
    assert np.abs(member_weights(shared[0])[0] - expected[0][0]).max() > 1e-4


def test_separate_member_batches_wrap_a_short_batch():
    """A last batch of n < K*B images gives every member ceil(n/K) rows, wrapping around."""
    members = [linear_member(i, f"m{i}") for i in range(2)]
    start = [member_weights(m) for m in members]
    x, y = data(n=3)
    cohort = dml_tf.MutualLearningModel(members, member_batches="separate")
    cohort.compile(optimizer=keras.optimizers.SGD(0.5))
    cohort.train_on_batch(x, y)
    rows = [0, 1, 2, 0]  # chunks [0, 1] and [2, 0]
    expected = separate_batches_reference(start, x[rows], y[rows], 0.5, "sequential")
    for member, (w, b) in zip(members, expected):
        np.testing.assert_allclose(member_weights(member)[0], w, atol=2e-6)
    with pytest.raises(ValueError, match="member_batches"):
        dml_tf.MutualLearningModel(members, member_batches="own")
    config = dml_tf.MutualLearningModel(members, member_batches="separate").get_config()
    assert dml_tf.MutualLearningModel.from_config(config).member_batches == "separate"


def _cohort_pair(warmup_steps, weight=0.8):
    members = [linear_member(i, f"m{i}") for i in range(2)]
    cohort = dml_tf.MutualLearningModel(members, mimicry_weight=weight,
                                        mimicry_warmup_steps=warmup_steps)
    cohort.compile(optimizer=keras.optimizers.SGD(0.5))
    return cohort, members


def test_fit_traces_the_step_once(monkeypatch):
    """The optimizer is built before the first step: its trace creates no variable, so
    TensorFlow does not trace the step a second time (a second trace of a ResNet cohort
    costs seconds per run)."""
    cohort = dml_tf.MutualLearningModel([linear_member(i, f"t{i}") for i in range(2)])
    cohort.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))  # slots: variables to build
    traces, step = [], dml_tf.MutualLearningModel.train_step
    monkeypatch.setattr(dml_tf.MutualLearningModel, "train_step",
                        lambda self, data: (traces.append(1), step(self, data))[1])
    x, y = data()
    cohort.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert len(traces) == 1 and cohort.optimizer.built


def test_mimicry_ramp_weight_per_step():
    cohort, _ = _cohort_pair(warmup_steps=4)
    assert dml_tf.MutualLearningModel(
        [linear_member(0, "a"), linear_member(1, "b")]).mimicry_ramp() is None  # the paper: no ramp
    x, y = data()
    seen = []
    for _ in range(6):
        seen.append(float(cohort.mimicry_ramp()))
        cohort.train_on_batch(x, y)
    assert seen == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    with pytest.raises(ValueError, match="mimicry_warmup_steps"):
        dml_tf.MutualLearningModel([linear_member(0, "c")], mimicry_warmup_steps=-1)


@pytest.mark.parametrize("step", [0, 1, 3])
def test_mimicry_ramp_step_matches_algorithm_1_with_the_ramped_weight(step):
    """At iteration t the step is Algorithm 1 with weight w * min(1, t / S): at t = 0 it is
    independent training, from t = S the paper's step."""
    x, y = data(seed=step)
    cohort, members = _cohort_pair(warmup_steps=2)
    cohort.optimizer.iterations.assign(step)
    start = [member_weights(m) for m in members]
    cohort.train_on_batch(x, y)
    expected = reference_step(start, x, y, 0.5, "sequential", weight=0.8 * min(1.0, step / 2))
    for member, (w, b) in zip(members, expected):
        np.testing.assert_allclose(member_weights(member)[0], w, atol=2e-6)
        np.testing.assert_allclose(member_weights(member)[1], b, atol=2e-6)


def test_no_ramp_is_exactly_the_paper_step():
    x, y = data()
    weights = []
    for warmup in (0, 1):
        cohort, members = _cohort_pair(warmup_steps=warmup)
        cohort.optimizer.iterations.assign(5)  # past the ramp: factor 1
        cohort.train_on_batch(x, y)
        weights.append([member_weights(m) for m in members])
    for (w0, b0), (w1, b1) in zip(*weights):
        np.testing.assert_array_equal(w0, w1)
        np.testing.assert_array_equal(b0, b1)
    restored = dml_tf.MutualLearningModel.from_config(_cohort_pair(3)[0].get_config())
    assert restored.mimicry_warmup_steps == 3
