"""One optimizer per cohort member, as one Keras optimizer.

``CohortOptimizer`` is a ``keras.optimizers.MultiOptimizer`` whose sub-optimizers
are the members' own optimizers (Algorithm 1 keeps one per network). Keras sees a
single ``model.optimizer``: it is built, saved, restored (``model.save``,
``BackupAndRestore``, ``ModelCheckpoint``) and finalised (weight EMA) like any
other, and TensorBoard logs each member's learning rate. A member whose optimizer keeps
a weight moving average (``use_ema``) can also have its batch-norm moving statistics
averaged (``statistics``), as the original code averages all model variables. Setting its
``learning_rate`` (``LearningRateScheduler``, ``ReduceLROnPlateau``) sets every
member's.
"""

import keras


def clone_optimizer(optimizer, name):
    """A fresh optimizer with ``optimizer``'s configuration and the given name."""
    config = optimizer.get_config()
    config["name"] = name
    return optimizer.__class__.from_config(config)


def member_optimizers(optimizer, members):
    """Resolves ``compile(optimizer=...)`` to one optimizer per member.

    A single optimizer (instance or name) is cloned for every member; a list must
    hold one distinct optimizer per member.
    """
    k = len(members)
    if isinstance(optimizer, (list, tuple)):
        if len(optimizer) == 1:
            optimizer = optimizer[0]
        elif len(optimizer) != k:
            raise ValueError(
                f"`optimizer` must be one optimizer or a list of {k} (one per member); "
                f"got a list of {len(optimizer)}."
            )
        else:
            optimizers = [keras.optimizers.get(o) for o in optimizer]
            if len({id(o) for o in optimizers}) != k:
                raise ValueError(
                    "`optimizer` lists the same optimizer instance more than once; "
                    "each member needs its own optimizer."
                )
            return optimizers
    if optimizer is None:
        raise ValueError("`optimizer` is required: one optimizer or one per member.")
    base = keras.optimizers.get(optimizer)
    return [clone_optimizer(base, f"{base.name}_member{i}") for i in range(k)]


def needs_loss_scaling(member):
    """Whether ``member`` computes in float16 (``mixed_float16``), which needs loss
    scaling; bfloat16 has float32's range and does not."""
    policy = getattr(member, "dtype_policy", None)
    if getattr(policy, "compute_dtype", None) == "float16":
        return True
    return any(getattr(layer, "compute_dtype", None) == "float16" for layer in member.layers)


def loss_scalers(optimizers, members):
    """Per member: a ``LossScaleOptimizer`` wrapping its optimizer if it computes in
    float16, else None.

    ``MultiOptimizer`` refuses ``LossScaleOptimizer`` children, so the scalers wrap the
    member optimizers outside the ``CohortOptimizer`` (which still builds, saves and
    restores the inner ones).
    """
    return [
        keras.optimizers.LossScaleOptimizer(o, name=f"loss_scale_{k}") if needs_loss_scaling(m) else None
        for k, (m, o) in enumerate(zip(members, optimizers))
    ]


def moving_statistics(layer, seen=None):
    """The moving mean and variance of every BatchNormalization layer in ``layer``
    (what ``CohortOptimizer(statistics=...)`` averages)."""
    seen = set() if seen is None else seen
    if id(layer) in seen:
        return []
    seen.add(id(layer))
    if isinstance(layer, keras.layers.BatchNormalization):
        return [layer.moving_mean, layer.moving_variance]
    return [v for sub in getattr(layer, "layers", ()) for v in moving_statistics(sub, seen)]


@keras.saving.register_keras_serializable(package="dml_tf")
class SlimRMSprop(keras.optimizers.RMSprop):
    """TF1's ``tf.train.RMSPropOptimizer``, which TF-slim's ``train_image_classifier.py``
    (the authors' ImageNet recipe) uses.

    The update is Keras' ``RMSprop``: ``ms = rho * ms + (1 - rho) * g**2``,
    ``mom = momentum * mom + lr * g / sqrt(ms + epsilon)``, ``w -= mom`` (epsilon inside
    the square root in both), but TF1 starts the mean square ``ms`` at 1 where Keras starts
    it at 0. With slim's ``opt_epsilon=1.0`` and ``rmsprop_momentum=0.9`` a weight moves
    by at most about ``lr * |g| / sqrt(1.9)`` in the first step; Keras' defaults (epsilon
    1e-7, momentum 0, ``ms`` 0) move every weight by ``lr / sqrt(1 - rho)`` ~ 0.32 at LR 0.1.
    """

    def add_optimizer_variables(self, trainable_variables, name, initializer="zeros"):
        if name == "velocity":  # Keras' name for the mean square
            initializer = "ones"
        return super().add_optimizer_variables(trainable_variables, name, initializer)


class CohortOptimizer(keras.optimizers.MultiOptimizer):
    """A ``MultiOptimizer`` that routes each member's variables to its own optimizer.

    Args:
      optimizers: one Keras optimizer per member, in member order.
      member_of: callable mapping a variable to its member's index.
      statistics: None, or a callable mapping a member's index to its non-trainable
        variables to average with its weights (batch-norm moving mean and variance).
        Keras' ``use_ema`` averages trainable variables only; the original code's
        ``tf.train.ExponentialMovingAverage`` averages every model variable and
        evaluates with the averages. Each such variable of a member whose optimizer has
        ``use_ema`` gets an average with the same rule and decay as Keras' (the first
        step copies the value, then ``avg = m * avg + (1 - m) * value``), updated by
        :meth:`update_statistics_average` and swapped in by ``finalize_variable_values``
        at the end of ``fit``, together with the weights'.
    """

    def __init__(self, optimizers, member_of, name="cohort_optimizer", statistics=None):
        super().__init__(self._select, name=name)
        self._member_of = member_of
        self._statistics_of = statistics  # a callable: not tracked as optimizer state
        self._inner_optimizers = list(optimizers)

    def _select(self, variable):
        return self._inner_optimizers[self._member_of(variable)]

    def member(self, k):
        """The optimizer of member ``k``."""
        return self._inner_optimizers[k]

    def _averaged_statistics(self, k):
        if self._statistics_of is None or not self._inner_optimizers[k].use_ema:
            return []
        return list(self._statistics_of(k))

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._statistics_averages = [
            [self.add_variable_from_reference(v, name="average") for v in self._averaged_statistics(k)]
            for k in range(len(self._inner_optimizers))
        ]

    def update_statistics_average(self, k):
        """Folds member ``k``'s current statistics into their averages (after its update)."""
        averages = self._statistics_averages[k]
        if not averages:
            return
        first = keras.ops.equal(self.iterations, 0)  # the cohort counts steps after them
        momentum = keras.ops.where(first, 0.0, self._inner_optimizers[k].ema_momentum)
        for value, average in zip(self._averaged_statistics(k), averages):
            average.assign(momentum * average + (1.0 - momentum) * value)

    def finalize_variable_values(self, var_list):
        super().finalize_variable_values(var_list)
        for k, averages in enumerate(getattr(self, "_statistics_averages", ())):
            for value, average in zip(self._averaged_statistics(k), averages):
                value.assign(average)

    @property
    def learning_rate(self):
        """Member 0's learning rate (all members share the schedule by default)."""
        return self._inner_optimizers[0].learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        if not hasattr(self, "_inner_optimizers"):
            return  # the base constructor's placeholder; the members own their rates
        for optimizer in self._inner_optimizers:
            optimizer.learning_rate = value

    def _get_current_learning_rate(self):
        return self._inner_optimizers[0]._get_current_learning_rate()

    def get_config(self):
        return {
            "name": self.name,
            "optimizers": [keras.saving.serialize_keras_object(o) for o in self._inner_optimizers],
        }
