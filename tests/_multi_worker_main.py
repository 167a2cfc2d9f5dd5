"""Subprocess entry point for the distribution tests (tests/test_distribute.py).

Logical devices must be configured before TensorFlow initialises, which the
pytest process has already done, so each check runs here in a fresh process:

  python tests/_multi_worker_main.py MODE OUT_DIR

MODE is one of ``mirrored`` (one step under MirroredStrategy on 2 logical CPUs vs
the default strategy, both updates), ``checkpoint`` (weights saved under mirrored
restore under the default strategy), ``placement`` (``placement="per_member"``)
or ``worker`` (one MultiWorkerMirroredStrategy worker; TF_CONFIG set by the
caller). Results go to OUT_DIR as .npz / .json files; the exit status is 0 on
success.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

NUM_DEVICES = 2
IN_DIM, NUM_CLASSES, GLOBAL_BATCH = 6, 4, 8


def configure_devices(n=NUM_DEVICES):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)


def data(labels_with_unlabeled=False):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH, IN_DIM)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=(GLOBAL_BATCH,)).astype("int32")
    return x, y


def member(k):
    import keras
    inputs = keras.Input((IN_DIM,))
    h = keras.layers.Dense(8, activation="tanh", name="hidden")(inputs)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(h)
    model = keras.Model(inputs, logits, name=f"m{k}")
    rng = np.random.default_rng(100 + k)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


def cohort(update, placement="none", members=None, lr=0.5):
    import keras
    from dml_tf.cohort import MutualLearningModel
    model = MutualLearningModel(members or [member(0), member(1)], update=update,
                                placement=placement)
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9))
    return model


def train_one_step(strategy, update, steps=1):
    x, y = data()
    with strategy.scope():
        model = cohort(update)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).repeat(steps)
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    return [w for m in model.members for w in m.get_weights()]


def mode_mirrored(out):
    configure_devices()
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    result = {}
    for update in ("simultaneous", "sequential"):
        single = train_one_step(tf.distribute.get_strategy(), update, steps=2)
        multi = train_one_step(mirrored, update, steps=2)
        result[update] = max(float(np.max(np.abs(a - b))) for a, b in zip(single, multi))
        moved = max(float(np.max(np.abs(a - b)))
                    for a, b in zip(single, [w for k in (0, 1) for w in member(k).get_weights()]))
        result[update + "_moved"] = moved
    with open(os.path.join(out, "mirrored.json"), "w") as f:
        json.dump(result, f)


def mode_checkpoint(out):
    import keras
    configure_devices()
    x, y = data()
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with mirrored.scope():
        model = cohort("sequential")
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH), verbose=0)
    expected = model.predict(x, verbose=0)
    result = {}
    weights_path = os.path.join(out, "cohort.weights.h5")
    keras_path = os.path.join(out, "cohort.keras")
    model.save_weights(weights_path)
    model.save(keras_path)
    # Restore outside any strategy scope (the default strategy).
    fresh = cohort("sequential", members=[member(5), member(6)])
    fresh.build((None, IN_DIM))
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(weights_path)
    result["optimizer_h5"] = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(fresh.optimizer.variables, model.optimizer.variables))
    loaded = keras.models.load_model(keras_path)
    result.update({
        "weights_h5": float(np.max(np.abs(fresh.predict(x, verbose=0) - expected))),
        "keras": float(np.max(np.abs(loaded.predict(x, verbose=0) - expected))),
    })
    # And the reverse: saved on the default strategy, loaded under mirrored.
    with mirrored.scope():
        again = keras.models.load_model(keras_path)
    result["keras_into_mirrored"] = float(
        np.max(np.abs(again.predict(x, verbose=0) - expected)))
    # Training resumes from the restored optimizer state under the other strategy.
    loaded.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH), verbose=0)
    with open(os.path.join(out, "checkpoint.json"), "w") as f:
        json.dump(result, f)


def mode_placement(out):
    configure_devices()
    x, y = data()
    result = {}
    for update in ("sequential", "simultaneous"):
        model = cohort(update, placement="per_member",
                       members=[member(0), member(1), member(2)])
        before = [w for m in model.members for w in m.get_weights()]
        history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0)
        after = [w for m in model.members for w in m.get_weights()]
        result[update] = {
            "devices": [[v.value.device for v in m.variables] for m in model.members],
            "optimizer_devices": [[v.value.device for v in o.variables if len(v.shape)]
                                  for o in model._member_optimizers],
            "loss": float(history.history["loss"][-1]),
            "moved": max(float(np.max(np.abs(a - b))) for a, b in zip(before, after)),
        }
        # The same cohort without placement gives the same step.
        plain = cohort(update, members=[member(0), member(1), member(2)])
        plain.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0)
        result[update]["vs_unplaced"] = max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(after, [w for m in plain.members for w in m.get_weights()]))
    with open(os.path.join(out, "placement.json"), "w") as f:
        json.dump(result, f)


def mode_worker(out):
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    from dml_tf.distribute import make_strategy
    strategy = make_strategy("multi_worker")
    x, y = data()
    steps = 3
    with strategy.scope():
        model = cohort("sequential")
    # Both workers read the same global batches (no auto-sharding); each replica
    # computes on its share of every global batch.
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).repeat(steps)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    ds = ds.with_options(options)
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    weights = [w for m in model.members for w in m.get_weights()]
    initial = [w for k in (0, 1) for w in member(k).get_weights()]
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(weights, initial))
    np.savez(os.path.join(out, f"worker{task}.npz"), *weights, moved=np.float32(moved))


if __name__ == "__main__":
    mode, out_dir = sys.argv[1], sys.argv[2]
    {"mirrored": mode_mirrored, "checkpoint": mode_checkpoint,
     "placement": mode_placement, "worker": mode_worker}[mode](out_dir)
