"""The mutual-learning cohort: K Keras models that learn together (Algorithm 1)."""

import collections
import contextlib
import re

import keras
import numpy as np
import tensorflow as tf

from dml_tf import _keras_compat
from dml_tf import losses as dml_losses
from dml_tf import placement as placement_lib
from dml_tf.errors import check_choice
from dml_tf.optimizers import CohortOptimizer, loss_scalers, member_optimizers, moving_statistics

UPDATES = ("sequential", "simultaneous")
MEMBER_BATCHES = ("shared", "separate")

# One member's forward in a step: its tape (None for a static teacher), logits,
# features (None without feature_l2_weight) and log-probabilities (with gradient).
_Forward = collections.namedtuple("_Forward", "tape logits features log_probs")


def _recording(tape):
    """``tape`` as a context (a no-op for ``None``)."""
    return contextlib.nullcontext() if tape is None else tape


def _num_classes(member):
    shape = getattr(member, "output_shape", None) if member.built else None
    if isinstance(shape, tuple) and shape and isinstance(shape[-1], int):
        return shape[-1]
    return None


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
            f"Labels must be -1 (unlabeled) or a class in [0, {found.group(1)}); the data "
            f"holds {found.group(2)}.") from None


def _num_replicas():
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


def _objective_setting(name):
    return property(lambda self: getattr(self.objective, name),
                    doc=f"The ``{name}`` of the cohort's ``objective``.")


@keras.saving.register_keras_serializable(package="dml_tf")
class MutualLearningModel(keras.Model):
    """A cohort of K networks trained by Deep Mutual Learning (Zhang et al., 2018).

    Member k minimizes its own loss (Eq. 10), ``objective``
    (:class:`dml_tf.losses.MemberObjective`)::

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
      mimicry, mimicry_weight, peer_reduction, label_smoothing, entropy_weight,
        feature_l2_weight: the terms of member k's loss, as in
        :class:`dml_tf.losses.MemberObjective` (the original re-id scripts smooth
        labels by 0.1).
      feature_layer: name of the members' feature layer for ``feature_l2_weight``.
      placement: ``"none"`` (every member where TensorFlow puts it; data parallelism
        via a ``tf.distribute`` strategy) or ``"per_member"`` (model parallelism:
        member k's variables, forward, gradient and update on logical device
        ``k mod N`` of the N GPUs, or CPUs when there is no GPU; see
        :mod:`dml_tf.placement`). A member whose variables are elsewhere is cloned
        onto its device at construction: the cohort's ``members`` are then the
        clones, not the models passed in. Optimizer slots are colocated with their
        variables. Not combinable with a multi-replica strategy.
      member_batches: ``"shared"`` (the paper: every member trains on the same
        mini-batch) or ``"separate"`` (the original code, whose K train ops each
        dequeue their own batch): a batch of n images is cut into K chunks of
        ceil(n / K) (a last, smaller batch wraps around to fill them); member k
        trains on chunk k against its peers' training-mode predictions on chunk k
        from their current weights (their moving statistics untouched), so with
        ``update="sequential"`` the peers before k are already updated. Feed K times
        the per-member batch size.
      mimicry_warmup_steps: 0 (the paper) or S > 0: at iteration t (counted from 0)
        the mimicry term is weighted ``mimicry_weight * min(1, t / S)``, a linear
        ramp from 0 (as ONE, Lan et al. 2018, advise for online distillation).

    Labels equal to -1 mark unlabeled samples (Sec. 3.4): they count in the
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
        placement="none",
        member_batches="shared",
        mimicry_warmup_steps=0,
        name="mutual_learning",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self._validate_members(members)
        check_choice("update", update, UPDATES)
        check_choice("member_batches", member_batches, MEMBER_BATCHES)
        if (isinstance(mimicry_warmup_steps, bool) or not isinstance(mimicry_warmup_steps, int)
                or mimicry_warmup_steps < 0):
            raise ValueError("`mimicry_warmup_steps` must be an integer >= 0; got "
                             f"{mimicry_warmup_steps!r}.")
        self.mimicry_warmup_steps = int(mimicry_warmup_steps)
        self.objective = dml_losses.MemberObjective(
            mimicry=mimicry, mimicry_weight=mimicry_weight, peer_reduction=peer_reduction,
            label_smoothing=label_smoothing, entropy_weight=entropy_weight,
            feature_l2_weight=feature_l2_weight)
        placement_lib.check_placement(placement)

        self.placement = placement
        self._devices = placement_lib.member_devices(placement, len(members))
        if self._devices:
            members = [placement_lib.place(m, d) for m, d in zip(members, self._devices)]
        self.members = list(members)
        self.update = update
        self.member_batches = member_batches
        self.feature_layer = feature_layer
        self._feature_models = self._make_feature_models() if feature_l2_weight else None
        self._make_trackers()
        if all(m.built for m in self.members):
            self.built = True

    mimicry = _objective_setting("mimicry")
    mimicry_weight = _objective_setting("mimicry_weight")
    peer_reduction = _objective_setting("peer_reduction")
    label_smoothing = _objective_setting("label_smoothing")
    entropy_weight = _objective_setting("entropy_weight")
    feature_l2_weight = _objective_setting("feature_l2_weight")

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

    def member_device(self, k):
        """The device of member ``k`` (``None`` without placement)."""
        return self._devices[k] if self._devices else None

    def _on(self, k):
        """A ``tf.device`` scope for member k's work (a no-op without placement)."""
        return placement_lib.device_scope(self.member_device(k))

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
        self._loss_scalers = loss_scalers(self._member_optimizers, self.members)
        cohort_optimizer = CohortOptimizer(
            self._member_optimizers, self._member_index_of,
            statistics=self._moving_statistics if ema_batch_norm else None)
        kwargs.pop("auto_scale_loss", None)
        super().compile(
            optimizer=cohort_optimizer,
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
            # The members' own loss scalers do float16 loss scaling; Keras' automatic
            # wrapper (under a global mixed_float16 policy) would hide the
            # CohortOptimizer from the step.
            auto_scale_loss=False,
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
        return moving_statistics(self.members[k]) if self._is_learner(k) else []

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
        placement_lib.build_member_optimizers(self._member_optimizers, self.members, self._devices)
        self.optimizer.build(self.trainable_variables)
        for k, scaler in enumerate(getattr(self, "_loss_scalers", ())):
            if scaler is not None and not scaler.built:
                with tf.init_scope(), self._on(k):
                    scaler.build(self.members[k].trainable_variables)

    def build_training_state(self):
        """Creates every optimizer variable a step uses (the cohort's, each member's on its
        device, the float16 loss scalers'), as the first step would: what a restore
        (``load_weights``) needs to find them all."""
        with tf.init_scope(), self.distribute_strategy.scope():
            self._build_optimizer()

    def _build_optimizer_once(self):
        """Builds the optimizer at trace time of the first step, once the members exist."""
        if not self.optimizer.built:
            self._build_optimizer()

    def _gradients(self, k, tape, loss):
        """Member k's gradients of ``loss`` recorded on ``tape``. The loss is divided by
        the number of replicas (Keras sums their gradients) and, under float16,
        multiplied by the member's loss scale (its scaler unscales the gradients)."""
        with self._on(k):
            with tape:
                scaled = loss * (1.0 / _num_replicas())
                if self._loss_scalers[k] is not None:
                    scaled = self._loss_scalers[k].scale_loss(scaled)
            return tape.gradient(scaled, self.members[k].trainable_variables)

    def _apply(self, k, gradients):
        """Member k's update (through its loss scaler under float16: unscaled,
        skipped when not finite, the scale adapted), then its statistics' average."""
        with self._on(k):
            scaler = self._loss_scalers[k]
            (scaler or self._member_optimizers[k]).apply(gradients, self.members[k].trainable_variables)
            self.optimizer.update_statistics_average(k)

    # ----------------------------------------------------------------- forward

    def _forward(self, k, x, training):
        """Member k's (logits, features or None)."""
        if self._feature_models is not None:
            logits, features = self._feature_models[k](x, training=training)
            return logits, features
        return self.members[k](x, training=training), None

    def _taped_forward(self, k, x):
        """Member k's forward on its device: in training mode on a fresh tape, or, for a
        static teacher, in inference mode and untaped."""
        learner = self._is_learner(k)
        tape = tf.GradientTape() if learner else None
        with self._on(k), _recording(tape):
            logits, features = self._forward(k, x, training=learner)
            return _Forward(tape, logits, features, dml_losses.log_probabilities(logits))

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

    def _target(self, k, x):
        """Member k's current predictions on ``x`` as its peers' targets: stopped
        (log-probabilities, features or None), from :meth:`_refresh` (a static teacher:
        its inference-mode forward)."""
        with self._on(k):
            logits, features = (self._refresh(k, x) if self._is_learner(k)
                                else self._forward(k, x, training=False))
            return (tf.stop_gradient(dml_losses.log_probabilities(logits)),
                    None if features is None else tf.stop_gradient(features))

    def _later_learner_reads(self, k):
        """Whether a member updated after member k reads member k's predictions."""
        return self.objective.reads_peers and any(
            self._is_learner(j) for j in range(k + 1, self.num_members))

    def call(self, inputs, training=False):
        """Per-member class probabilities, shape (K, batch, classes)."""
        return tf.stack(
            [tf.nn.softmax(tf.cast(m(inputs, training=training), tf.float32)) for m in self.members],
            axis=0,
        )

    # ------------------------------------------------------------------ losses

    def mimicry_ramp(self):
        """The factor of the mimicry weight at this iteration: ``min(1, t / S)`` with
        ``mimicry_warmup_steps`` S > 0, None (the full weight) without a ramp."""
        if not self.mimicry_warmup_steps:
            return None
        step = tf.cast(self.optimizer.iterations, tf.float32)
        return tf.minimum(1.0, step / float(self.mimicry_warmup_steps))

    def member_loss(self, k, labels, logits, log_probs, features=None, own_log_probs=None,
                    mimicry_scale=None):
        """Member k's loss terms (``objective``) given the cohort's current targets.

        Args:
          k: member index.
          labels: integer labels, -1 for unlabeled.
          logits: member k's logits (with gradient).
          log_probs: list of the K members' log-probabilities used as targets
            (entry k is ignored).
          features: list of the K members' features (for ``feature_l2_weight``).
          own_log_probs: ``log_probabilities(logits)`` when already computed (with
            gradient); computed from ``logits`` otherwise.
          mimicry_scale: factor of the mimicry weight (:meth:`mimicry_ramp`); None: 1.

        Returns:
          dict with ``loss`` (the total minimized), ``ce`` and ``mimicry``.
        """
        own = dml_losses.log_probabilities(logits) if own_log_probs is None else own_log_probs
        peers = [tf.stop_gradient(lp) for i, lp in enumerate(log_probs) if i != k]
        own_features, peer_features = None, ()
        if self.feature_l2_weight:
            own_features = features[k]
            peer_features = [tf.stop_gradient(f) for i, f in enumerate(features) if i != k]
        return self.objective(labels, own, peers, own_features, peer_features, self.members[k].losses,
                              mimicry_scale=mimicry_scale)

    def _loss_terms(self, k, labels, forward, targets, features):
        """Member k's loss terms on its device, recorded on its tape."""
        with self._on(k), _recording(forward.tape):
            return self.member_loss(k, labels, forward.logits, targets, features, forward.log_probs,
                                    mimicry_scale=self.mimicry_ramp())

    def _update_member_metrics(self, k, terms, labels, log_probs):
        # Batch means weighted by batch size: epoch values are per-sample means.
        trackers = self._member_trackers[k]
        batch = tf.shape(labels)[0]
        for key in ("loss", "ce", "mimicry"):
            if f"{key}_{k}" in trackers:
                trackers[f"{key}_{k}"].update_state(terms[key], sample_weight=batch)
        trackers[f"accuracy_{k}"].update_state(
            tf.maximum(labels, 0), tf.stop_gradient(log_probs),
            sample_weight=dml_losses.labeled_mask(labels))

    def _end_step(self, total, batch):
        """Counts the iteration and logs the cohort's summed loss (a per-sample mean)."""
        self.optimizer.iterations.assign_add(1)
        self._loss_tracker_total.update_state(total, sample_weight=batch)
        return self._results(include_ensemble=False)

    @staticmethod
    def _labels(y, logits=None, num_classes=None):
        """Integer labels of a batch, checked against ``num_classes`` (or the number of
        classes of ``logits``): -1 (unlabeled) or in [0, classes). Any other label (which
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
        if self.built and self.optimizer is not None and not self.optimizer.built:
            self.build_training_state()  # else the first step's trace creates it, and TF traces again
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
            return self._separate_batches_step(x, y)
        # One forward per member, also the forward of its own gradient (its weights do
        # not change before its update); its peers read stopped copies as targets.
        forwards = [self._taped_forward(k, x) for k in range(self.num_members)]
        labels = self._labels(y, forwards[0].logits)  # checked before any update
        self._build_optimizer_once()
        targets = [tf.stop_gradient(f.log_probs) for f in forwards]
        features = [f.features for f in forwards]
        pending, total = [], 0.0
        for k, forward in enumerate(forwards):
            terms = self._loss_terms(k, labels, forward, targets, features)
            if forward.tape is not None:  # a learner (a static teacher is never updated)
                gradients = self._gradients(k, forward.tape, terms["loss"])
                if self.update == "simultaneous":
                    pending.append((k, gradients))
                else:  # sequential: the later members mimic member k's new predictions
                    self._apply(k, gradients)
                    if self._later_learner_reads(k):
                        targets[k], features[k] = self._target(k, x)
            self._update_member_metrics(k, terms, labels, forward.log_probs)
            total += terms["loss"]
        for k, gradients in pending:
            self._apply(k, gradients)
        return self._end_step(total, tf.shape(labels)[0])

    def _separate_batches_step(self, x, y):
        """One iteration of the original code (``member_batches="separate"``): member k
        trains on chunk k of the batch; its peers predict chunk k with their current
        weights, in training mode, leaving their moving statistics untouched."""
        labels = self._labels(y, num_classes=_num_classes(self.members[0]))
        n = self.num_members
        self._build_optimizer_once()
        size = tf.shape(labels)[0]
        chunk = (size + n - 1) // n
        pending, total = [], 0.0
        for k in range(n):
            rows = (tf.range(chunk) + k * chunk) % size
            xk, yk = tf.gather(x, rows), tf.gather(labels, rows)
            targets, features = [None] * n, [None] * n
            for j in range(n):
                if j != k:
                    targets[j], features[j] = self._target(j, xk)
            forward = self._taped_forward(k, xk)
            features[k] = forward.features
            terms = self._loss_terms(k, yk, forward, targets, features)
            if forward.tape is not None:
                gradients = self._gradients(k, forward.tape, terms["loss"])
                if self.update == "simultaneous":
                    pending.append((k, gradients))
                else:
                    self._apply(k, gradients)
            self._update_member_metrics(k, terms, yk, forward.log_probs)
            total += terms["loss"]
        for k, gradients in pending:
            self._apply(k, gradients)
        return self._end_step(total, chunk)

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
            tf.maximum(labels, 0), mean_probs, sample_weight=dml_losses.labeled_mask(labels)
        )
        return self._results(include_ensemble=True)

    def _results(self, include_ensemble):
        results = {"loss": self._loss_tracker_total.result()}
        for trackers in self._member_trackers:
            results.update({name: t.result() for name, t in trackers.items()})
        if include_ensemble:
            results["ensemble_accuracy"] = self._ensemble_tracker.result()
        return _keras_compat.multi_worker_logs(results, self.distribute_strategy)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if _keras_compat.skip_symbolic_build(self, iterator):
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
            **self.objective.get_config(),
            "feature_layer": self.feature_layer,
            "placement": self.placement,
            "member_batches": self.member_batches,
            "mimicry_warmup_steps": self.mimicry_warmup_steps,
        })
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if config.get("placement") is None:  # saved when "none" was spelled None
            config["placement"] = "none"
        # Under placement, each member is built on its device (no clone needed).
        config["members"] = placement_lib.deserialize_members(
            config["members"], config["placement"], custom_objects)
        return cls(**config)
