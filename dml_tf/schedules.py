"""Optimizers and learning-rate schedules of the paper, from a TrainConfig.

Schedules are ``keras.optimizers.schedules`` indexed by optimizer iterations, so a
run restored from a checkpoint continues with the right learning rate.
"""

import keras

from dml_tf.optimizers import SlimRMSprop


@keras.saving.register_keras_serializable(package="dml_tf")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule(step) * min(1, (step + 1) / warmup_steps)``: a linear ramp from
    ``lr / warmup_steps`` to the schedule's own rate over the first ``warmup_steps``
    steps, the schedule unchanged afterwards (the gradual warm-up of Goyal et al.,
    "Accurate, Large Minibatch SGD", 2017). ``schedule`` is a number or a schedule.

    Why dml_tf uses it by default on CIFAR: README, "Training stability".
    """

    def __init__(self, schedule, warmup_steps, name="linear_warmup"):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"warmup_steps must be a positive integer; got {warmup_steps!r}.")
        self.schedule = schedule
        self.warmup_steps = warmup_steps
        self.name = name

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        base = self.schedule(step) if callable(self.schedule) else self.schedule
        ramp = keras.ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        return keras.ops.cast(base, "float32") * ramp

    def get_config(self):
        schedule = self.schedule
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            schedule = keras.saving.serialize_keras_object(schedule)
        return {"schedule": schedule, "warmup_steps": self.warmup_steps, "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["schedule"], dict):
            config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)


def learning_rate_schedule(config, steps_per_epoch):
    """The configured schedule (``constant``, ``step`` or ``exponential``), behind a
    :class:`LinearWarmup` of ``config.warmup_epochs`` epochs when that is > 0."""
    schedule = _decay_schedule(config, steps_per_epoch)
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    if warmup_steps >= 1:
        schedule = LinearWarmup(schedule, warmup_steps)
    return schedule


def _decay_schedule(config, steps_per_epoch):
    lr = config.learning_rate
    if config.lr_schedule == "constant":
        return lr
    if config.lr_schedule == "step":
        # CIFAR: x lr_decay_rate at each epoch in lr_decay_epochs (0.1 at 60, 120, 180).
        boundaries = [int(e * steps_per_epoch) for e in config.lr_decay_epochs]
        if not boundaries:
            return lr
        values = [lr * config.lr_decay_rate ** i for i in range(len(boundaries) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    # ImageNet: lr * rate ** floor(epoch / lr_decay_every).
    return keras.optimizers.schedules.ExponentialDecay(
        lr, decay_steps=int(config.lr_decay_every * steps_per_epoch),
        decay_rate=config.lr_decay_rate, staircase=True)


def make_optimizer(config, steps_per_epoch, name=None):
    """One member's optimizer; ``ema_decay > 0`` keeps a weight moving average
    (the original re-id code's 0.9999) that replaces the weights when training ends."""
    lr = learning_rate_schedule(config, steps_per_epoch)
    ema = dict(use_ema=config.ema_decay > 0, ema_momentum=config.ema_decay or 0.99)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=config.momentum, nesterov=config.nesterov,
                                    name=name, **ema)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr, beta_1=config.beta1, beta_2=config.beta2,
                                     epsilon=config.adam_epsilon, name=name, **ema)
    # TF1's RMSProp with slim's momentum and epsilon (the ImageNet recipe of Sec. 4.1).
    return SlimRMSprop(lr, rho=config.rmsprop_decay, momentum=config.rmsprop_momentum,
                       epsilon=config.rmsprop_epsilon, name=name, **ema)
