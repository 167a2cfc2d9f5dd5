"""The optimizers of the paper's recipes (dml_tf.schedules, dml_tf.optimizers)."""

import keras
import numpy as np
import tensorflow as tf

from dml_tf import MutualLearningModel, nets
from dml_tf.config import TrainConfig
from dml_tf.optimizers import SlimRMSprop
from dml_tf.schedules import make_optimizer

def _np(variable):
    return keras.ops.convert_to_numpy(variable)


GRADS = ([0.5, -3.0, 0.0], [1.0, 2.0, -0.1], [-0.2, 0.4, 5.0])


def _tf1_rmsprop_numpy(w, grads, lr, rho, momentum, epsilon):
    """tf.train.RMSPropOptimizer (TF1): ms starts at 1, epsilon inside the square root."""
    w, ms, mom = np.array(w, np.float64), np.ones(len(w)), np.zeros(len(w))
    for g in grads:
        g = np.array(g, np.float64)
        ms = rho * ms + (1 - rho) * g * g
        mom = momentum * mom + lr * g / np.sqrt(ms + epsilon)
        w = w - mom
    return w


def _apply(optimizer, w, grads):
    v = tf.Variable(w, dtype=tf.float32)
    for g in grads:
        optimizer.apply([tf.constant(g, tf.float32)], [v])
    return v.numpy()


def test_slim_rmsprop_is_tf1_rmsprop():
    w = [1.0, -2.0, 0.3]
    for lr, rho, momentum, epsilon in ((0.1, 0.9, 0.9, 1.0), (0.01, 0.8, 0.0, 1e-3)):
        ours = _apply(SlimRMSprop(lr, rho=rho, momentum=momentum, epsilon=epsilon), w, GRADS)
        np.testing.assert_allclose(ours, _tf1_rmsprop_numpy(w, GRADS, lr, rho, momentum, epsilon), rtol=1e-5)
        v = tf.Variable(w)
        tf1 = tf.compat.v1.train.RMSPropOptimizer(lr, decay=rho, momentum=momentum, epsilon=epsilon)
        for g in GRADS:
            tf1.apply_gradients([(tf.constant(g), v)])
        np.testing.assert_allclose(ours, v.numpy(), rtol=1e-5)
    # Keras' own RMSprop starts the mean square at 0: a different first step.
    keras_step = _apply(keras.optimizers.RMSprop(0.1, rho=0.9, momentum=0.9, epsilon=1.0), w, GRADS[:1])
    assert not np.allclose(keras_step, _tf1_rmsprop_numpy(w, GRADS[:1], 0.1, 0.9, 0.9, 1.0), rtol=1e-3)


def test_imagenet_recipe_optimizer():
    """RMSProp decay 0.9, LR 0.1 x 0.16 every 20 epochs (Sec. 4.1) with slim's momentum 0.9, epsilon 1.0."""
    config = TrainConfig(dataset="imagenet2012").resolved()
    optimizer = make_optimizer(config, steps_per_epoch=10)
    assert isinstance(optimizer, SlimRMSprop)
    assert (optimizer.rho, optimizer.momentum, optimizer.epsilon) == (0.9, 0.9, 1.0)
    schedule = optimizer._learning_rate
    assert float(schedule(199)) == np.float32(0.1) and np.isclose(float(schedule(200)), 0.016)
    custom = make_optimizer(TrainConfig(dataset="imagenet2012", rmsprop_momentum=0.0,
                                        rmsprop_epsilon=1e-7).resolved(), 10)
    assert (custom.momentum, custom.epsilon) == (0.0, 1e-7)


def test_imagenet_recipe_steps_stay_bounded():
    """A few steps of the ImageNet recipe (LR 0.1) on small data: finite, no blow-up. Keras'
    RMSprop defaults (epsilon 1e-7, no momentum) move every weight by ~0.32 per step here and
    double the loss after one step."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 10, 48).astype("int32")
    config = TrainConfig(dataset="imagenet2012").resolved()
    members = [nets.build("tiny_cnn", num_classes=10, input_shape=(16, 16, 3),
                          weight_decay=config.weight_decay, seed=k) for k in range(2)]
    cohort = MutualLearningModel(members)
    cohort.compile(optimizer=[make_optimizer(config, steps_per_epoch=3) for _ in members])
    losses = []
    for step in range(5):
        i = (step % 3) * 16
        logs = cohort.train_on_batch(x[i:i + 16], y[i:i + 16], return_dict=True)
        losses.append([logs["loss_0"], logs["loss_1"]])
    losses = np.array(losses)
    assert np.isfinite(losses).all()
    assert (losses[1:] < 1.5 * losses[0]).all(), losses
    assert max(float(np.abs(w).max()) for m in members for w in m.get_weights()) < 3.0


def test_slim_rmsprop_survives_save_and_load(tmp_path):
    member = nets.build("tiny_cnn", num_classes=3, input_shape=(8, 8, 3), seed=0)
    cohort = MutualLearningModel([member])
    cohort.compile(optimizer=SlimRMSprop(0.1, momentum=0.9, epsilon=1.0))
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    cohort.train_on_batch(x, np.array([0, 1, 2, 0]))
    cohort.save(tmp_path / "cohort.keras")
    loaded = keras.models.load_model(tmp_path / "cohort.keras")
    optimizer = loaded.optimizer.member(0)
    assert isinstance(optimizer, SlimRMSprop) and (optimizer.momentum, optimizer.epsilon) == (0.9, 1.0)
    for a, b in zip(cohort.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(_np(a), _np(b))


class _Record(keras.callbacks.Callback):
    """Each member's weights and batch-norm moving statistics after every step."""

    def __init__(self, members):
        super().__init__()
        self.members, self.steps = members, []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([[_np(v) for v in m.weights] for m in self.members])


def _hand_ema(values, momentum):
    average = values[0]
    for value in values[1:]:
        average = momentum * average + (1 - momentum) * value
    return average


def test_weight_average_includes_batch_norm_statistics(tmp_path):
    """The original code averages every model variable (weights and batch-norm moving
    statistics) and evaluates with the averages; so does the cohort with use_ema."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 12).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)

    def train(ema_batch_norm):
        members = [nets.build("tiny_cnn", num_classes=3, input_shape=(8, 8, 3), seed=k) for k in range(2)]
        cohort = MutualLearningModel(members)
        cohort.compile(optimizer=[keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=m) for m in (0.5, 0.8)],
                       ema_batch_norm=ema_batch_norm)
        record = _Record(members)
        cohort.fit(data, epochs=1, verbose=0, callbacks=[record], shuffle=False)
        return cohort, members, record.steps

    cohort, members, steps = train(True)
    assert len(steps) == 3
    for k, (member, momentum) in enumerate(zip(members, (0.5, 0.8))):
        for i, variable in enumerate(member.weights):
            expected = _hand_ema([step[k][i] for step in steps], momentum)
            assert "moving" in variable.path or variable.trainable
            np.testing.assert_allclose(_np(variable), expected, rtol=1e-5, atol=1e-6, err_msg=variable.path)
        moving = [i for i, v in enumerate(member.weights) if "moving" in v.path]
        assert len(moving) == 4  # two batch norms
        assert not np.allclose(_np(member.weights[moving[0]]), steps[-1][k][moving[0]])  # not the last value
    cohort.save(tmp_path / "cohort.keras")
    loaded = keras.models.load_model(tmp_path / "cohort.keras")
    assert len(loaded.optimizer.variables) == len(cohort.optimizer.variables)
    for a, b in zip(cohort.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(_np(a), _np(b))

    _, members, steps = train(False)  # Keras' use_ema: the statistics keep their last values
    for k, member in enumerate(members):
        for i, variable in enumerate(member.weights):
            if "moving" in variable.path:
                np.testing.assert_array_equal(_np(variable), steps[-1][k][i])
