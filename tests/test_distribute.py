"""tf.distribute and device placement of the cohort (issue 5).

The checks that need several logical devices or processes run in fresh
subprocesses (tests/_multi_worker_main.py): logical devices can only be
configured before TensorFlow initialises, which this pytest process already did.

The mirrored equivalence rests on the cohort's loss scaling: every replica
minimises ``loss / num_replicas_in_sync`` with the cross-entropy and mimicry
terms averaged over its LOCAL batch, and the optimizer sums the replicas'
gradients. That equals the single-device gradient of the global-batch mean when
the global batch splits into equal local batches (Keras' distributed datasets
do this for a global batch divisible by the replica count) and, with -1
(unlabeled) labels, when each replica holds the same number of labeled samples.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from dml_tf.distribute import make_strategy, STRATEGY_NAMES

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_multi_worker_main.py")
ROOT = os.path.dirname(HERE)


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               KERAS_BACKEND="tensorflow", PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _run(mode, tmp_path, timeout=120):
    proc = subprocess.run([sys.executable, WORKER, mode, str(tmp_path)], env=_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(tmp_path, f"{mode}.json")) as f:
        return json.load(f)


def test_make_strategy_names():
    assert make_strategy("default").num_replicas_in_sync == 1
    assert set(STRATEGY_NAMES) >= {"default", "mirrored", "multi_worker", "tpu"}
    with pytest.raises(ValueError, match="Unknown strategy"):
        make_strategy("nope")


def test_mirrored_step_equals_single_device_step(tmp_path):
    result = _run("mirrored", tmp_path)
    for update in ("simultaneous", "sequential"):
        assert result[update + "_moved"] > 1e-2  # the two steps did train
        assert result[update] < 1e-5, result


def test_checkpoint_written_under_mirrored_restores_on_default(tmp_path):
    result = _run("checkpoint", tmp_path)
    assert result["weights_h5"] < 1e-6
    assert result["optimizer_h5"] < 1e-6
    assert result["keras"] < 1e-6
    assert result["keras_into_mirrored"] < 1e-6


def test_per_member_placement(tmp_path):
    result = _run("placement", tmp_path)
    for update, r in result.items():
        for k, devices in enumerate(r["devices"]):
            assert devices and all(d.endswith(f"CPU:{k % 2}") for d in devices), (update, k)
        for k, devices in enumerate(r["optimizer_devices"]):
            assert devices and all(d.endswith(f"CPU:{k % 2}") for d in devices), (update, k)
        assert np.isfinite(r["loss"]) and r["moved"] > 1e-2
        assert r["vs_unplaced"] < 1e-5


def _dense_member(k):
    import keras
    inputs = keras.Input((6,))
    return keras.Model(inputs, keras.layers.Dense(4)(inputs), name=f"d{k}")


def test_placement_argument_and_config_round_trip():
    from dml_tf.cohort import MutualLearningModel
    from dml_tf.placement import placement_devices
    with pytest.raises(ValueError, match="placement"):
        MutualLearningModel([_dense_member(0), _dense_member(1)], placement="bogus")
    cohort = MutualLearningModel([_dense_member(0), _dense_member(1)], placement="per_member")
    devices = placement_devices()
    assert [cohort.member_device(k) for k in range(2)] == [devices[k % len(devices)]
                                                             for k in range(2)]
    config = cohort.get_config()
    assert config["placement"] == "per_member"
    clone = MutualLearningModel.from_config(config)
    assert clone.placement == "per_member"
    config = MutualLearningModel([_dense_member(2)]).get_config()
    assert config["placement"] == "none"
    config["placement"] = None  # as saved before "none" was the one spelling
    assert MutualLearningModel.from_config(config).placement == "none"


def _free_ports(n):
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_mirrored_two_processes(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, WORKER, "worker", str(tmp_path)], env=_env(TF_CONFIG=tf_config),
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errors, timed_out = [], False
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=120)
            errors.append(err)
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        pytest.skip("MultiWorkerMirroredStrategy workers did not finish within 120 s "
                    "(slow or contended CPU); not a correctness failure.")
    for proc, err in zip(procs, errors):
        assert proc.returncode == 0, err[-4000:]
    w0 = np.load(os.path.join(tmp_path, "worker0.npz"))
    w1 = np.load(os.path.join(tmp_path, "worker1.npz"))
    assert len(w0.files) == len(w1.files) > 1
    assert float(w0["moved"]) > 1e-2  # the workers did train
    for name in w0.files:
        np.testing.assert_array_equal(w0[name], w1[name])


def _policy_member(k, policy):
    import keras
    # Seeded: whether a 6e4 input overflows float16 depends on the weights drawn.
    seeded = dict(kernel_initializer=keras.initializers.GlorotUniform(seed=10 + k))
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", dtype=policy, **seeded)(inputs)
    logits = keras.layers.Dense(4, dtype=policy, **seeded)(h)
    return keras.Model(inputs, logits, name=f"{policy}_{k}")


def test_mixed_precision_members_train_with_float32_losses():
    import keras
    import tensorflow as tf
    from dml_tf.cohort import MutualLearningModel

    members = [_policy_member(0, "mixed_float16"), _policy_member(1, "mixed_bfloat16")]
    assert members[0].layers[-1].compute_dtype == "float16"
    cohort = MutualLearningModel(members, update="sequential")
    cohort.compile(optimizer=keras.optimizers.SGD(0.1))
    scaler0, scaler1 = cohort._loss_scalers
    assert scaler0 is not None and scaler1 is None  # bfloat16 needs no loss scaling
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 4, size=(16,)).astype("int32")
    before = [w.copy() for m in members for w in m.get_weights()]
    logs = cohort.train_on_batch(x, y, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values()), logs
    after = [w for m in members for w in m.get_weights()]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    assert all(w.dtype == np.float32 for w in after)  # float32 variables
    assert float(scaler0.dynamic_scale.numpy()) == scaler0.initial_scale  # a finite step
    terms = cohort.member_loss(0, tf.constant(y), members[0](x), [
        tf.nn.log_softmax(tf.cast(m(x), tf.float32)) for m in members])
    assert all(t.dtype == tf.float32 for t in terms.values())


def test_float16_non_finite_step_is_skipped():
    import keras
    from dml_tf.cohort import MutualLearningModel

    members = [_policy_member(0, "mixed_float16"), _policy_member(1, "mixed_float16")]
    cohort = MutualLearningModel(members, update="simultaneous")
    cohort.compile(optimizer=keras.optimizers.SGD(0.1))
    x = np.full((4, 6), 6e4, "float32")  # overflows float16 activations
    y = np.zeros((4,), "int32")
    before = [w.copy() for m in members for w in m.get_weights()]
    cohort.train_on_batch(x, y)
    after = [w for m in members for w in m.get_weights()]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    for scaler in cohort._loss_scalers:
        assert float(scaler.dynamic_scale.numpy()) == scaler.initial_scale / 2


def test_float16_loss_scale_is_checkpointed(tmp_path):
    """The dynamic loss scale is part of the weights BackupAndRestore saves, so a
    resumed float16 run continues with the scale it had reached."""
    import keras
    from dml_tf.cohort import MutualLearningModel

    def make():
        members = [_policy_member(0, "mixed_float16"), _policy_member(1, "mixed_float16")]
        cohort = MutualLearningModel(members, update="sequential")
        cohort.compile(optimizer=keras.optimizers.SGD(0.1))
        return cohort

    y = np.zeros((4,), "int32")
    cohort = make()
    overflow = np.full((4, 6), 6e4, "float32")
    cohort.train_on_batch(overflow, y)
    cohort.train_on_batch(overflow, y)  # two skipped steps: scale / 4
    reached = [float(s.dynamic_scale.numpy()) for s in cohort._loss_scalers]
    assert reached == [cohort._loss_scalers[0].initial_scale / 4] * 2
    path = str(tmp_path / "cohort.weights.h5")
    cohort.save_weights(path)

    restored = make()
    restored.train_on_batch(np.zeros((4, 6), "float32"), y)  # builds; a finite step
    assert float(restored._loss_scalers[0].dynamic_scale.numpy()) == reached[0] * 4
    restored.load_weights(path)
    assert [float(s.dynamic_scale.numpy()) for s in restored._loss_scalers] == reached
    for a, b in zip(cohort.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(a, b)
