"""Optimizers and learning-rate schedules of the paper, from a TrainConfig.

Schedules are ``keras.optimizers.schedules`` indexed by optimizer iterations, so a
run restored from a checkpoint continues with the right learning rate.
"""

import keras

from dml_tf.optimizers import SlimRMSprop


def learning_rate_schedule(config, steps_per_epoch):
    """The configured schedule (``constant``, ``step`` or ``exponential``)."""
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
