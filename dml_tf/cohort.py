"""The mutual-learning cohort: K Keras models that learn together (Algorithm 1)."""

import keras
import numpy as np
import tensorflow as tf

from dml_tf import losses as dml_losses
from dml_tf.optimizers import CohortOptimizer, member_optimizers

UPDATES = ("sequential", "simultaneous")


def _num_classes(member):
    shape = getattr(member, "output_shape", None) if member.built else None
    if isinstance(shape, tuple) and shape and isinstance(shape[-1], int):
        return shape[-1]
    return None


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
        name="mutual_learning",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self._validate_members(members)
        if update not in UPDATES:
            raise ValueError(f"Unknown update {update!r}; expected one of {UPDATES}.")
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
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{arg}` must be a number >= 0; got {value!r}.")
        if not isinstance(label_smoothing, (int, float)) or not 0 <= label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be in [0, 1); got {label_smoothing!r}.")

        self.members = list(members)
        self.update = update
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
        mean, acc = keras.metrics.Mean, keras.metrics.SparseCategoricalAccuracy
        self._loss_tracker_total = mean(name="loss")
        self._member_trackers = []
        for k in range(len(self.members)):
            self._member_trackers.append({
                f"loss_{k}": mean(name=f"loss_{k}"),
                f"ce_{k}": mean(name=f"ce_{k}"),
                f"mimicry_{k}": mean(name=f"mimicry_{k}"),
                f"accuracy_{k}": acc(name=f"accuracy_{k}"),
            })
        self._ensemble_tracker = acc(name="ensemble_accuracy")

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

    def compile(self, optimizer="sgd", jit_compile="auto", steps_per_execution=1, **kwargs):
        """Configures training.

        Args:
          optimizer: one optimizer per member (a list of K), or a single optimizer
            (instance or name) that is cloned for every member.
          jit_compile, steps_per_execution: as in ``keras.Model.compile``.
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
        cohort_optimizer = CohortOptimizer(self._member_optimizers, self._member_index_of)
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
        }

    def _member_index_of(self, variable):
        for k, member in enumerate(self.members):
            if any(variable is v for v in member.trainable_variables):
                return k
        raise ValueError(f"Variable {variable.path} belongs to no cohort member.")

    def get_compile_config(self):
        return dict(getattr(self, "_dml_compile_config", {}))

    def compile_from_config(self, config):
        config = dict(config)
        config["optimizer"] = [
            keras.saving.deserialize_keras_object(o) for o in config["optimizer"]
        ]
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

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

    def member_loss(self, k, labels, logits, log_probs, features=None):
        """Member k's loss terms given the cohort's current targets.

        Args:
          k: member index.
          labels: integer labels, -1 for unlabelled.
          logits: member k's logits (with gradient).
          log_probs: list of the K members' log-probabilities used as targets
            (entry k is ignored).
          features: list of the K members' features (for ``feature_l2_weight``).

        Returns:
          dict with ``loss`` (the total minimised), ``ce`` and ``mimicry``.
        """
        own = dml_losses.log_probabilities(logits)
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
            trackers[f"{key}_{k}"].update_state(terms[key], sample_weight=batch)
        trackers[f"accuracy_{k}"].update_state(
            tf.maximum(labels, 0), log_probs, sample_weight=dml_losses.labelled_mask(labels)
        )

    @staticmethod
    def _labels(y):
        if y is None:
            raise ValueError("MutualLearningModel needs (images, labels) batches; got no labels.")
        return tf.cast(tf.reshape(y, [-1]), tf.int32)

    # ------------------------------------------------------------------- steps

    def train_step(self, data):
        """One DML iteration on one batch (Algorithm 1, extended to K members)."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        labels = self._labels(y)
        n = self.num_members
        scale = 1.0 / _num_replicas()

        # One training-mode forward per member, recorded on the member's own tape
        # (this is also the forward its gradient uses: its weights do not change
        # before its own update). Static teachers run in inference mode.
        tapes, logits, features = [None] * n, [None] * n, [None] * n
        for k in range(n):
            if self._is_learner(k):
                tapes[k] = tf.GradientTape()
                with tapes[k]:
                    logits[k], features[k] = self._forward(k, x, training=True)
            else:
                logits[k], features[k] = self._forward(k, x, training=False)
        if not self.optimizer.built:  # at trace time, once the members exist
            self.optimizer.build(self.trainable_variables)
        targets = [tf.stop_gradient(dml_losses.log_probabilities(lg)) for lg in logits]
        target_features = list(features)
        trainable = [k for k in range(n) if self._is_learner(k)]

        pending, total = [], 0.0
        for k in range(n):
            if tapes[k] is None:
                terms = self.member_loss(k, labels, logits[k], targets, target_features)
            else:
                with tapes[k]:
                    terms = self.member_loss(k, labels, logits[k], targets, target_features)
                    scaled = terms["loss"] * scale
                variables = self.members[k].trainable_variables
                gradients = tapes[k].gradient(scaled, variables)
                if self.update == "sequential":
                    self._member_optimizers[k].apply(gradients, variables)
                    if any(j > k for j in trainable):
                        new_logits, new_features = self._refresh(k, x)
                        targets[k] = tf.stop_gradient(dml_losses.log_probabilities(new_logits))
                        if new_features is not None:
                            target_features[k] = tf.stop_gradient(new_features)
                else:
                    pending.append((k, gradients, variables))
            self._update_member_metrics(
                k, terms, labels, dml_losses.log_probabilities(logits[k])
            )
            total += terms["loss"]
        for k, gradients, variables in pending:
            self._member_optimizers[k].apply(gradients, variables)
        self.optimizer.iterations.assign_add(1)
        self._loss_tracker_total.update_state(total, sample_weight=tf.shape(labels)[0])
        return self._results(include_ensemble=False)

    def test_step(self, data):
        """Per-member loss, cross-entropy, mimicry and accuracy in inference mode, and
        the accuracy of the ensemble (mean of the members' probabilities)."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        labels = self._labels(y)
        n = self.num_members
        outputs = [self._forward(k, x, training=False) for k in range(n)]
        log_probs = [dml_losses.log_probabilities(lg) for lg, _ in outputs]
        features = [f for _, f in outputs]
        total = 0.0
        for k in range(n):
            terms = self.member_loss(k, labels, outputs[k][0], log_probs, features)
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
        return results

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
        })
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["members"] = [
            keras.saving.deserialize_keras_object(m, custom_objects=custom_objects)
            for m in config["members"]
        ]
        return cls(**config)
