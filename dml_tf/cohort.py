"""The mutual-learning cohort: K Keras models that learn together (Algorithm 1)."""

import contextlib
import math
import numbers
import re

import keras
import numpy as np
import tensorflow as tf

from dml_tf import losses as dml_losses
from dml_tf.optimizers import CohortOptimizer, member_optimizers

UPDATES = ("sequential", "simultaneous")
MEMBER_BATCHES = ("shared", "separate")
PLACEMENTS = (None, "per_member")


def placement_devices():
    """The logical devices ``placement="per_member"`` spreads members over: the
    GPUs if any, else the CPUs (several when configured with
    ``tf.config.set_logical_device_configuration``)."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [d.name for d in devices]


def _on_device(variable, device):
    """Whether ``variable`` lives on ``device`` (compared by its ``TYPE:index`` suffix)."""
    suffix = device.split("device:")[-1].upper()
    value = variable.value if isinstance(variable, keras.Variable) else variable
    return value.device.upper().endswith(suffix)


def _num_classes(member):
    shape = getattr(member, "output_shape", None) if member.built else None
    if isinstance(shape, tuple) and shape and isinstance(shape[-1], int):
        return shape[-1]
    return None


def _needs_loss_scaling(member):
    """Whether ``member`` computes in float16 (``mixed_float16``), which needs loss
    scaling; bfloat16 has float32's range and does not."""
    policy = getattr(member, "dtype_policy", None)
    if getattr(policy, "compute_dtype", None) == "float16":
        return True
    return any(getattr(layer, "compute_dtype", None) == "float16" for layer in member.layers)


def _moving_statistics(layer, seen=None):
    """The moving mean and variance of every BatchNormalization layer in ``layer``."""
    seen = set() if seen is None else seen
    if id(layer) in seen:
        return []
    seen.add(id(layer))
    if isinstance(layer, keras.layers.BatchNormalization):
        return [layer.moving_mean, layer.moving_variance]
    return [v for sub in getattr(layer, "layers", ()) for v in _moving_statistics(sub, seen)]


def _is_real(value):
    """A real number: Python or NumPy (``np.float32(0.5)``), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


_LABEL_ERROR = "dml_tf: labels must be -1 or in [0, num_classes); num_classes:"


@contextlib.contextmanager
def _label_errors():
    """Turns the failed label check of a step into a ``ValueError`` that says what
    is wrong, instead of a TensorFlow graph error."""
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        found = re.search(re.escape(_LABEL_ERROR) + r"\] \[(\d+)\] \[bad labels:\] \[([^\]]*)\]",
                          error.message)
        if not found:
            raise
        raise ValueError(
            f"Labels must be -1 (unlabelled) or a class in [0, {found.group(1)}); the data "
            f"holds {found.group(2)}.") from None


def _is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()


def _num_replicas():
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


@keras.saving.register_keras_serializable(package="dml_tf")
class MutualLearningModel(keras.Model):
    """A cohort of K networks trained by Deep Mutual Learning (Zhang et al., 2018).

    Member k minimises its own loss (Eq. 10)::

        L_k = CE(y, p_k) + mimicry_weight * mimicry_k + sum(member_k.losses)

    where ``mimicry_k`` compares ``p_k`` with its peers' probabilities, which are
    targets (no gradient flows into a peer), and only member k's optimizer touches
    member k's variables.

    Args:
      members: list of K >= 1 ``keras.Model`` mapping images to logits. A member
        whose ``trainable`` is False is a static teacher: never updated, run in
        inference mode (conventional distillation, Table 4).
      update: ``"sequential"`` (Algorithm 1: members are updated one after the
        other on the same batch and each later member mimics the already-updated
        predictions of the earlier ones) or ``"simultaneous"`` (Sec. 4.5: every
        member's gradient comes from the same initial predictions, all applied
        together).
      mimicry: ``"kl"`` (Eq. 10), ``"js"`` (symmetric, Eq. 7) or ``"ensemble"``
        (DML_e, Eq. 11).
      mimicry_weight: weight of the mimicry term; 0 gives independent training.
      peer_reduction: ``"mean"`` (the 1/(K-1) of Eq. 10) or ``"sum"`` (the
        original code's plain sum over peers).
      label_smoothing: label smoothing of the cross-entropy (the original re-id
        scripts use 0.1).
      entropy_weight: confidence penalty ``- w * H(p_k)`` (Table 5 "Independent,
        Entropy"); 0 disables it.
      feature_l2_weight: weight of an L2 loss between member k's and its peers'
        ``feature_layer`` outputs (Table 5 "DML, L2"); 0 disables it.
      feature_layer: name of the members' feature layer for ``feature_l2_weight``.
      placement: ``None`` (every member where TensorFlow puts it; data parallelism
        via a ``tf.distribute`` strategy) or ``"per_member"`` (model parallelism:
        member k's variables, forward, gradient and update on logical device
        ``k mod N`` of the N GPUs, or CPUs when there is no GPU; see
        ``placement_devices``). Variables are created when a member is built, so a
        member whose variables are elsewhere is cloned onto its device at
        construction (``keras.models.clone_model`` under ``tf.device``, weights
        copied): the cohort's ``members`` are then the clones, not the models
        passed in. Optimizer slots are colocated with their variables. Not
        combinable with a multi-replica strategy.
      member_batches: ``"shared"`` (the paper: every member trains on the same
        mini-batch) or ``"separate"`` (the original code, whose K train ops each
        dequeue their own batch): a batch of n images is cut into K chunks of
        ceil(n / K) (a last, smaller batch wraps around to fill them); member k
        trains on chunk k against its peers' training-mode predictions on chunk k
        from their current weights (their moving statistics untouched), so with
        ``update="sequential"`` the peers before k are already updated. Feed K times
        the per-member batch size.

    Labels equal to -1 mark unlabelled samples (Sec. 3.4): they count in the
    mimicry term but not in the cross-entropy.
    """

    def __init__(
        self,
        members,
        update="sequential",
        mimicry="kl",
        mimicry_weight=1.0,
        peer_reduction="mean",
        label_smoothing=0.0,
        entropy_weight=0.0,
        feature_l2_weight=0.0,
        feature_layer="features",
        placement=None,
        member_batches="shared",
        name="mutual_learning",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self._validate_members(members)
        if update not in UPDATES:
            raise ValueError(f"Unknown update {update!r}; expected one of {UPDATES}.")
        if member_batches not in MEMBER_BATCHES:
            raise ValueError(f"Unknown member_batches {member_batches!r}; expected one of "
                             f"{MEMBER_BATCHES}.")
        if mimicry not in dml_losses.MIMICRY_MODES:
            raise ValueError(
                f"Unknown mimicry {mimicry!r}; expected one of {dml_losses.MIMICRY_MODES}."
            )
        if peer_reduction not in dml_losses.PEER_REDUCTIONS:
            raise ValueError(
                f"Unknown peer_reduction {peer_reduction!r}; expected one of "
                f"{dml_losses.PEER_REDUCTIONS}."
            )
        for arg, value in (
            ("mimicry_weight", mimicry_weight),
            ("entropy_weight", entropy_weight),
            ("feature_l2_weight", feature_l2_weight),
        ):
            if not _is_real(value) or not value >= 0 or not math.isfinite(value):
                raise ValueError(f"`{arg}` must be a finite number >= 0; got {value!r}.")
        if not _is_real(label_smoothing) or not 0 <= label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be in [0, 1); got {label_smoothing!r}.")

        if placement not in PLACEMENTS:
            raise ValueError(f"Unknown placement {placement!r}; expected one of {PLACEMENTS}.")
        if placement is not None and tf.distribute.has_strategy() and \
                tf.distribute.get_strategy().num_replicas_in_sync > 1:
            raise ValueError(
                "placement='per_member' places members on devices itself; it cannot be "
                "combined with a multi-replica tf.distribute strategy.")

        self.placement = placement
        self._devices = None
        if placement == "per_member":
            devices = placement_devices()
            self._devices = [devices[k % len(devices)] for k in range(len(members))]
            members = [self._place(m, d) for m, d in zip(members, self._devices)]
        self.members = list(members)
        self.update = update
        self.member_batches = member_batches
        self.mimicry = mimicry
        self.mimicry_weight = float(mimicry_weight)
        self.peer_reduction = peer_reduction
        self.label_smoothing = float(label_smoothing)
        self.entropy_weight = float(entropy_weight)
        self.feature_l2_weight = float(feature_l2_weight)
        self.feature_layer = feature_layer
        self._feature_models = self._make_feature_models() if feature_l2_weight else None
        self._make_trackers()
        if all(m.built for m in self.members):
            self.built = True

    # ------------------------------------------------------------------ set-up

    @staticmethod
    def _validate_members(members):
        if not isinstance(members, (list, tuple)) or not members:
            raise ValueError(
                f"`members` must be a non-empty list of keras.Model; got {members!r}."
            )
        for i, member in enumerate(members):
            if not isinstance(member, keras.Model):
                raise ValueError(
                    f"`members[{i}]` must be a keras.Model; got {type(member).__name__}."
                )
        if len({id(m) for m in members}) != len(members):
            raise ValueError("`members` lists the same model more than once.")
        classes = [_num_classes(m) for m in members]
        known = {c for c in classes if c is not None}
        if len(known) > 1:
            raise ValueError(
                "All members must predict the same number of classes; got "
                + ", ".join(f"{m.name}: {c}" for m, c in zip(members, classes))
                + "."
            )

    @staticmethod
    def _place(member, device):
        """``member`` if its variables live on ``device``, else a clone built there."""
        if member.built and all(_on_device(v, device) for v in member.variables):
            return member
        with tf.device(device):
            clone = keras.models.clone_model(member)
            if not clone.built and member.built:
                clone.build(member.input_shape)
        clone.set_weights(member.get_weights())
        clone.trainable = member.trainable
        return clone

    def member_device(self, k):
        """The device of member ``k`` (``None`` without placement)."""
        return self._devices[k] if self._devices else None

    def _on(self, k):
        """A ``tf.device`` scope for member k's work (a no-op without placement)."""
        device = self.member_device(k)
        return tf.device(device) if device else contextlib.nullcontext()

    def _make_feature_models(self):
        feature_models = []
        for member in self.members:
            try:
                feature_output = member.get_layer(self.feature_layer).output
            except (ValueError, AttributeError) as e:
                raise ValueError(
                    f"`feature_l2_weight` needs every member to have a layer named "
                    f"{self.feature_layer!r}; {member.name} has none ({e})."
                ) from None
            feature_models.append(
                keras.Model(member.inputs, [member.outputs[0], feature_output],
                            name=f"{member.name}_with_features")
            )
        return feature_models

    def _make_trackers(self):
        """Per member: loss, ce, accuracy, and mimicry when it is trained (a cohort of
        one, or with ``mimicry_weight=0``, i.e. independent training, logs none)."""
        mean, acc = keras.metrics.Mean, keras.metrics.SparseCategoricalAccuracy
        self._loss_tracker_total = mean(name="loss")
        self._member_trackers = []
        terms = ("loss", "ce", "mimicry") if self.trains_mimicry else ("loss", "ce")
        for k in range(len(self.members)):
            trackers = {f"{term}_{k}": mean(name=f"{term}_{k}") for term in terms}
            trackers[f"accuracy_{k}"] = acc(name=f"accuracy_{k}")
            self._member_trackers.append(trackers)
        self._ensemble_tracker = acc(name="ensemble_accuracy")

    @property
    def trains_mimicry(self):
        """Whether the mimicry term is part of the loss (K >= 2, ``mimicry_weight`` > 0)."""
        return len(self.members) > 1 and self.mimicry_weight > 0

    @property
    def metrics(self):
        trackers = [self._loss_tracker_total]
        for member_trackers in self._member_trackers:
            trackers.extend(member_trackers.values())
        return trackers + [self._ensemble_tracker]

    @property
    def num_members(self):
        return len(self.members)

    def _is_learner(self, k):
        return bool(self.members[k].trainable) and bool(self.members[k].trainable_variables)

    def build(self, input_shape):
        for member in self.members:
            if not member.built:
                member.build(input_shape)
        self._validate_members(self.members)
        self.built = True

    def compile(self, optimizer="sgd", jit_compile="auto", steps_per_execution=1,
                ema_batch_norm=True, **kwargs):
        """Configures training.

        Args:
          optimizer: one optimizer per member (a list of K), or a single optimizer
            (instance or name) that is cloned for every member.
          jit_compile, steps_per_execution: as in ``keras.Model.compile``.
          ema_batch_norm: where a member's optimizer keeps a weight moving average
            (``use_ema``), also average its batch-norm moving statistics and evaluate
            with them, as the original code (``CohortOptimizer``); False averages the
            trainable weights only, as Keras does.
          **kwargs: ``loss`` and ``metrics`` are not accepted: the cohort's losses
            and metrics are fixed by DML. Others go to ``keras.Model.compile``.
        """
        for unsupported in ("loss", "metrics", "loss_weights", "weighted_metrics"):
            if kwargs.get(unsupported) is not None:
                raise ValueError(
                    f"MutualLearningModel.compile does not take `{unsupported}`: the "
                    "cross-entropy, mimicry losses and per-member metrics are built in."
                )
            kwargs.pop(unsupported, None)
        self._member_optimizers = member_optimizers(optimizer, self.members)
        # float16 members need loss scaling; MultiOptimizer refuses LossScaleOptimizer
        # children, so the scalers wrap the member optimizers outside the
        # CohortOptimizer (which still builds, saves and restores the inner ones).
        self._loss_scalers = [
            keras.optimizers.LossScaleOptimizer(o, name=f"loss_scale_{k}")
            if _needs_loss_scaling(m) else None
            for k, (m, o) in enumerate(zip(self.members, self._member_optimizers))
        ]
        cohort_optimizer = CohortOptimizer(
            self._member_optimizers, self._member_index_of,
            statistics=self._moving_statistics if ema_batch_norm else None)
        super().compile(
            optimizer=cohort_optimizer,
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
            **kwargs,
        )
        self._dml_compile_config = {
            "optimizer": [keras.saving.serialize_keras_object(o) for o in self._member_optimizers],
            "jit_compile": jit_compile,
            "steps_per_execution": steps_per_execution,
            "ema_batch_norm": ema_batch_norm,
        }

    def _member_index_of(self, variable):
        for k, member in enumerate(self.members):
            if any(variable is v for v in member.trainable_variables):
                return k
        raise ValueError(f"Variable {variable.path} belongs to no cohort member.")

    def _moving_statistics(self, k):
        """Member k's batch-norm moving means and variances (none for a static teacher)."""
        return _moving_statistics(self.members[k]) if self._is_learner(k) else []

    def get_compile_config(self):
        return dict(getattr(self, "_dml_compile_config", {}))

    def compile_from_config(self, config):
        config = dict(config)
        config["optimizer"] = [
            keras.saving.deserialize_keras_object(o) for o in config["optimizer"]
        ]
        self.compile(**config)
        if self.built:
            self._build_optimizer()

    def _build_optimizer(self):
        """Builds the cohort optimizer; under placement, each member's slots are
        created on the member's device first."""
        if self._devices:
            for k, optimizer in enumerate(self._member_optimizers):
                variables = self.members[k].trainable_variables
                if variables and not optimizer.built:
                    with tf.init_scope(), tf.device(self._devices[k]):
                        optimizer.build(variables)
        self.optimizer.build(self.trainable_variables)
        for k, scaler in enumerate(getattr(self, "_loss_scalers", ())):
            if scaler is not None and not scaler.built:
                with tf.init_scope(), self._on(k):
                    scaler.build(self.members[k].trainable_variables)

    def _apply(self, k, gradients, variables):
        """Member k's update (through its loss scaler under float16: unscaled,
        skipped when not finite, the scale adapted), then its statistics' average."""
        scaler = self._loss_scalers[k]
        (scaler or self._member_optimizers[k]).apply(gradients, variables)
        self.optimizer.update_statistics_average(k)

    # ----------------------------------------------------------------- forward

    def _forward(self, k, x, training):
        """Member k's (logits, features or None)."""
        if self._feature_models is not None:
            logits, features = self._feature_models[k](x, training=training)
            return logits, features
        return self.members[k](x, training=training), None

    def _refresh(self, k, x):
        """Member k's training-mode forward with its NEW weights, leaving batch-norm
        moving statistics untouched (they are updated once per iteration)."""
        model = self._feature_models[k] if self._feature_models is not None else self.members[k]
        outputs, _ = model.stateless_call(
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            x,
            training=True,
        )
        if self._feature_models is not None:
            return outputs[0], outputs[1]
        return outputs, None

    def call(self, inputs, training=False):
        """Per-member class probabilities, shape (K, batch, classes)."""
        return tf.stack(
            [tf.nn.softmax(tf.cast(m(inputs, training=training), tf.float32)) for m in self.members],
            axis=0,
        )

    # ------------------------------------------------------------------ losses

    def member_loss(self, k, labels, logits, log_probs, features=None, own_log_probs=None):
        """Member k's loss terms given the cohort's current targets.

        Args:
          k: member index.
          labels: integer labels, -1 for unlabelled.
          logits: member k's logits (with gradient).
          log_probs: list of the K members' log-probabilities used as targets
            (entry k is ignored).
          features: list of the K members' features (for ``feature_l2_weight``).
          own_log_probs: ``log_probabilities(logits)`` when already computed (with
            gradient); computed from ``logits`` otherwise.

        Returns:
          dict with ``loss`` (the total minimised), ``ce`` and ``mimicry``.
        """
        own = dml_losses.log_probabilities(logits) if own_log_probs is None else own_log_probs
        peers = [tf.stop_gradient(lp) for i, lp in enumerate(log_probs) if i != k]
        ce = dml_losses.cross_entropy(labels, own, self.label_smoothing)
        mimicry = dml_losses.mimicry_loss(own, peers, self.mimicry, self.peer_reduction)
        total = ce + self.mimicry_weight * mimicry
        if self.entropy_weight:
            total -= self.entropy_weight * tf.reduce_mean(dml_losses.entropy(own))
        if self.feature_l2_weight:
            peer_features = [tf.stop_gradient(f) for i, f in enumerate(features) if i != k]
            total += self.feature_l2_weight * dml_losses.feature_l2_loss(
                features[k], peer_features, self.peer_reduction
            )
        regularization = self.members[k].losses
        if regularization:
            total += tf.add_n([tf.cast(r, tf.float32) for r in regularization])
        return {"loss": total, "ce": ce, "mimicry": mimicry}

    def _update_member_metrics(self, k, terms, labels, log_probs):
        # Batch means weighted by batch size: epoch values are per-sample means.
        trackers = self._member_trackers[k]
        batch = tf.shape(labels)[0]
        for key in ("loss", "ce", "mimicry"):
            if f"{key}_{k}" in trackers:
                trackers[f"{key}_{k}"].update_state(terms[key], sample_weight=batch)
        trackers[f"accuracy_{k}"].update_state(
            tf.maximum(labels, 0), log_probs, sample_weight=dml_losses.labelled_mask(labels)
        )

    @staticmethod
    def _labels(y, logits=None, num_classes=None):
        """Integer labels of a batch, checked against ``num_classes`` (or the number of
        classes of ``logits``): -1 (unlabelled) or in [0, classes). Any other label (which
        the cross-entropy would silently score 0 or drop) fails the step; ``fit`` and
        ``evaluate`` turn that into a ``ValueError`` (:func:`_label_errors`)."""
        if y is None:
            raise ValueError("MutualLearningModel needs (images, labels) batches; got no labels.")
        labels = tf.cast(tf.reshape(y, [-1]), tf.int32)
        if num_classes is None:
            num_classes = logits.shape[-1] if logits.shape[-1] is not None else tf.shape(logits)[-1]
        bad = tf.logical_or(labels < -1, labels >= num_classes)
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(bad)),
            [_LABEL_ERROR, num_classes, "bad labels:", tf.boolean_mask(labels, bad)], summarize=5)
        with tf.control_dependencies([check] if check is not None else []):
            return tf.identity(labels)

    def fit(self, *args, **kwargs):
        with _label_errors():
            return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with _label_errors():
            return super().evaluate(*args, **kwargs)

    # ------------------------------------------------------------------- steps

    def train_step(self, data):
        """One DML iteration on one batch (Algorithm 1, extended to K members)."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        if self.member_batches == "separate":
            return self._separate_batches_step(x, self._labels(y, num_classes=_num_classes(self.members[0])))
        n = self.num_members
        scale = 1.0 / _num_replicas()

        # One training-mode forward per member, recorded on the member's own tape
        # (this is also the forward its gradient uses: its weights do not change
        # before its own update). Static teachers run in inference mode.
        # Each member's log-probabilities are computed once: with gradient for its
        # own loss and metrics, and (stopped) as its peers' targets.
        tapes, logits, features, own = [None] * n, [None] * n, [None] * n, [None] * n
        for k in range(n):
            with self._on(k):
                if self._is_learner(k):
                    tapes[k] = tf.GradientTape()
                    with tapes[k]:
                        logits[k], features[k] = self._forward(k, x, training=True)
                        own[k] = dml_losses.log_probabilities(logits[k])
                else:
                    logits[k], features[k] = self._forward(k, x, training=False)
                    own[k] = dml_losses.log_probabilities(logits[k])
        labels = self._labels(y, logits[0])  # checked before any update
        if not self.optimizer.built:  # at trace time, once the members exist
            self._build_optimizer()
        targets = [tf.stop_gradient(lp) for lp in own]
        target_features = list(features)
        trainable = [k for k in range(n) if self._is_learner(k)]
        # Later members read member k's new predictions only through the peer terms.
        refresh = self.trains_mimicry or bool(self.feature_l2_weight)

        pending, total = [], 0.0
        for k in range(n):
            with self._on(k):
                if tapes[k] is None:
                    terms = self.member_loss(k, labels, logits[k], targets, target_features, own[k])
                else:
                    with tapes[k]:
                        terms = self.member_loss(
                            k, labels, logits[k], targets, target_features, own[k])
                        scaled = terms["loss"] * scale
                        if self._loss_scalers[k] is not None:
                            scaled = self._loss_scalers[k].scale_loss(scaled)
                    variables = self.members[k].trainable_variables
                    gradients = tapes[k].gradient(scaled, variables)
                    if self.update == "sequential":
                        self._apply(k, gradients, variables)
                        if refresh and any(j > k for j in trainable):
                            new_logits, new_features = self._refresh(k, x)
                            targets[k] = tf.stop_gradient(dml_losses.log_probabilities(new_logits))
                            if new_features is not None:
                                target_features[k] = tf.stop_gradient(new_features)
                    else:
                        pending.append((k, gradients, variables))
            self._update_member_metrics(k, terms, labels, tf.stop_gradient(own[k]))
            total += terms["loss"]
        for k, gradients, variables in pending:
            with self._on(k):
                self._apply(k, gradients, variables)
        self.optimizer.iterations.assign_add(1)
        self._loss_tracker_total.update_state(total, sample_weight=tf.shape(labels)[0])
        return self._results(include_ensemble=False)

    def _separate_batches_step(self, x, labels):
        """One iteration of the original code (``member_batches="separate"``): member k
        trains on chunk k of the batch; its peers predict chunk k with their current
        weights, in training mode, leaving their moving statistics untouched."""
        n = self.num_members
        scale = 1.0 / _num_replicas()
        if not self.optimizer.built:
            self._build_optimizer()
        size = tf.shape(labels)[0]
        chunk = (size + n - 1) // n
        pending, total = [], 0.0
        for k in range(n):
            rows = (tf.range(chunk) + k * chunk) % size
            xk, yk = tf.gather(x, rows), tf.gather(labels, rows)
            targets, features = [None] * n, [None] * n
            for j in range(n):
                if j != k:
                    with self._on(j):
                        logits, feats = (self._refresh(j, xk) if self._is_learner(j)
                                         else self._forward(j, xk, training=False))
                    targets[j] = tf.stop_gradient(dml_losses.log_probabilities(logits))
                    features[j] = None if feats is None else tf.stop_gradient(feats)
            with self._on(k):
                tape = tf.GradientTape() if self._is_learner(k) else contextlib.nullcontext()
                with tape:
                    logits, features[k] = self._forward(k, xk, training=self._is_learner(k))
                    own = dml_losses.log_probabilities(logits)
                    terms = self.member_loss(k, yk, logits, targets, features, own)
                    scaled = terms["loss"] * scale
                    if self._loss_scalers[k] is not None:
                        scaled = self._loss_scalers[k].scale_loss(scaled)
                if self._is_learner(k):
                    variables = self.members[k].trainable_variables
                    gradients = tape.gradient(scaled, variables)
                    if self.update == "sequential":
                        self._apply(k, gradients, variables)
                    else:
                        pending.append((k, gradients, variables))
            self._update_member_metrics(k, terms, yk, tf.stop_gradient(own))
            total += terms["loss"]
        for k, gradients, variables in pending:
            with self._on(k):
                self._apply(k, gradients, variables)
        self.optimizer.iterations.assign_add(1)
        self._loss_tracker_total.update_state(total, sample_weight=chunk)
        return self._results(include_ensemble=False)

    def test_step(self, data):
        """Per-member loss, cross-entropy, mimicry and accuracy in inference mode, and
        the accuracy of the ensemble (mean of the members' probabilities)."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        n = self.num_members
        outputs = []
        for k in range(n):
            with self._on(k):
                outputs.append(self._forward(k, x, training=False))
        labels = self._labels(y, outputs[0][0])
        log_probs = [dml_losses.log_probabilities(lg) for lg, _ in outputs]
        features = [f for _, f in outputs]
        total = 0.0
        for k in range(n):
            terms = self.member_loss(k, labels, outputs[k][0], log_probs, features, log_probs[k])
            self._update_member_metrics(k, terms, labels, log_probs[k])
            total += terms["loss"]
        self._loss_tracker_total.update_state(total, sample_weight=tf.shape(labels)[0])
        mean_probs = tf.add_n([tf.exp(lp) for lp in log_probs]) / float(n)
        self._ensemble_tracker.update_state(
            tf.maximum(labels, 0), mean_probs, sample_weight=dml_losses.labelled_mask(labels)
        )
        return self._results(include_ensemble=True)

    def _results(self, include_ensemble):
        results = {"loss": self._loss_tracker_total.result()}
        for trackers in self._member_trackers:
            results.update({name: t.result() for name, t in trackers.items()})
        if include_ensemble:
            results["ensemble_accuracy"] = self._ensemble_tracker.result()
        if _is_multi_worker(self.distribute_strategy):
            # Keras 3.15 reduces multi-worker logs with strategy.reduce("MEAN", v,
            # axis=0), which rejects scalars: give it shape-[1] values (the mean over
            # workers of these synchronised values is again a scalar).
            results = {k: tf.reshape(v, [1]) for k, v in results.items()}
        return results

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and _is_multi_worker(self.distribute_strategy):
            # Keras 3.15's symbolic build eagerly reduces the first distributed batch
            # (strategy.reduce("MEAN", PerReplica)), which fails under
            # MultiWorkerMirroredStrategy. The cohort needs only its optimizer built.
            if self.built:
                with self.distribute_strategy.scope():
                    self._build_optimizer()
            return None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        # (batch, K, classes): Keras concatenates predict outputs along axis 0.
        return tf.transpose(self(x, training=False), [1, 0, 2])

    def predict(self, x, *args, **kwargs):
        """Per-member class probabilities, shape (K, num_samples, classes)."""
        return np.transpose(super().predict(x, *args, **kwargs), (1, 0, 2))

    # ----------------------------------------------------------- serialization

    def get_config(self):
        config = super().get_config()
        config.update({
            "members": [keras.saving.serialize_keras_object(m) for m in self.members],
            "update": self.update,
            "mimicry": self.mimicry,
            "mimicry_weight": self.mimicry_weight,
            "peer_reduction": self.peer_reduction,
            "label_smoothing": self.label_smoothing,
            "entropy_weight": self.entropy_weight,
            "feature_l2_weight": self.feature_l2_weight,
            "feature_layer": self.feature_layer,
            "placement": self.placement,
            "member_batches": self.member_batches,
        })
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        devices = placement_devices() if config.get("placement") else None
        members = []
        for k, member in enumerate(config["members"]):
            # Under placement, build each member on its device (no clone needed).
            with tf.device(devices[k % len(devices)]) if devices else contextlib.nullcontext():
                members.append(
                    keras.saving.deserialize_keras_object(member, custom_objects=custom_objects))
        config["members"] = members
        return cls(**config)
