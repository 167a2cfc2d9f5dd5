"""A callback that says when training goes wrong, instead of finishing a dead run.

* A member whose loss is NaN or infinite stops the run at once with
  :class:`~dml_tf.errors.TrainingDivergedError`, naming the member, the epoch and the
  step (``fit`` then never returns, so no results file is written as if finished).
* A member whose training accuracy over a whole epoch is still indistinguishable from
  chance gets one warning line at the end of that epoch, naming it and what to try;
  not during a learning-rate warm-up, whose first epochs are meant to move slowly (a
  20-epoch warm-up is still at 5% of its rate after epoch 1).
  Chance is the majority-class rate of the labels the accuracy is measured on (a
  collapsed network predicts the most frequent class: on unbalanced data such as
  Market-1501 that scores well above ``1 / num_classes``); indistinguishable means
  within three binomial standard errors of it.
* A member that has left chance in training but still predicts the validation set
  at chance gets another warning when its batch-norm moving statistics cannot have
  caught up yet: inference mode uses them, and after t steps at momentum m the
  initial statistics still weigh m**t (TF-slim's 0.9997 for MobileNet and InceptionV1
  weighs 0.99 after 24 steps). The advice names a momentum that forgets them within the
  steps run. When m**t is already small (ResNet-32's 0.9 after 90 steps: 8e-5) no
  batch-norm warning is given: the statistics are not the cause.
"""

import math

import keras
import numpy as np

from dml_tf.errors import TrainingDivergedError

# The weight left to the initial moving statistics below which they have caught up.
FORGOTTEN = 0.05
ADVICE = ("try a learning-rate warm-up (--warmup_epochs), a lower --learning_rate, or check the "
          "input data for NaN/inf values and the labels")


def majority_rate(labels):
    """The fraction of the most frequent class among ``labels`` >= 0 (-1: unlabeled);
    None when there is no labeled one."""
    labels = np.asarray(labels).reshape(-1)
    labels = labels[labels >= 0]
    if not labels.size:
        return None
    return float(np.bincount(labels.astype(np.int64)).max() / labels.size)


def at_chance(accuracy, chance, num_samples):
    """Whether ``accuracy`` over ``num_samples`` is within 3 standard errors of
    ``chance`` (a rate; an int is a number of balanced classes: 1 / chance)."""
    if isinstance(chance, int):
        chance = 1.0 / chance
    return accuracy <= chance + 3.0 * math.sqrt(chance * (1.0 - chance) / max(num_samples, 1))


def batch_norm_momentum(member):
    """The largest (slowest) momentum of ``member``'s batch-norm layers, nested ones
    included; None without batch norm."""
    momenta = [layer.momentum for layer in member._flatten_layers()
               if isinstance(layer, keras.layers.BatchNormalization)]
    return max(momenta) if momenta else None


def forgetting_momentum(steps):
    """The largest momentum (3 decimals, rounded down) whose moving average keeps less
    than :data:`FORGOTTEN` of its initial value after ``steps`` steps."""
    return math.floor(FORGOTTEN ** (1.0 / max(steps, 1)) * 1000) / 1000


class TrainingHealth(keras.callbacks.Callback):
    """Stops on a non-finite loss; warns about members at chance after an epoch.

    Args:
      member_names: the cohort's member names, in order (loss_k, accuracy_k).
      num_classes: number of classes (chance is 1 / num_classes unless given).
      samples_per_epoch: labeled training images seen per epoch.
      validation_samples: labeled images of the validation set (None: no
        validation check).
      log: where warnings go (``print`` by default).
      train_chance, validation_chance: the majority-class rate of the training and
        validation labels (:func:`majority_rate`); None: ``1 / num_classes``.
      bn_momenta: per member, its batch-norm momentum (:func:`batch_norm_momentum`;
        None: no batch norm); None: unknown, no batch-norm warning.
      steps_per_epoch: training steps per epoch (the batch-norm warning counts the
        steps up to the end of each epoch).
      advice: a callable returning what the user can do after a divergence (the
        runner's names the checkpoint kept and the flags); None: general advice.
      warmup_epochs: the learning-rate warm-up's length in epochs; no at-chance
        warning before its last epoch.
    """

    def __init__(self, member_names, num_classes, samples_per_epoch, validation_samples=None,
                 log=print, train_chance=None, validation_chance=None, bn_momenta=None,
                 steps_per_epoch=None, advice=None, warmup_epochs=0):
        super().__init__()
        self.member_names = list(member_names)
        self.num_classes = int(num_classes)
        self.samples_per_epoch = int(samples_per_epoch)
        self.validation_samples = validation_samples
        self.log = log
        self.train_chance = train_chance or 1.0 / self.num_classes
        self.validation_chance = validation_chance or 1.0 / self.num_classes
        self.bn_momenta = None if bn_momenta is None else list(bn_momenta)
        self.steps_per_epoch = steps_per_epoch
        self.advice = advice
        self.warmup_epochs = float(warmup_epochs or 0)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _check_finite(self, logs, where):
        for k, name in enumerate(self.member_names):
            value = (logs or {}).get(f"loss_{k}")
            if value is not None and not math.isfinite(float(value)):
                advice = self.advice() if self.advice else f"The run stopped. To fix it, {ADVICE}."
                raise TrainingDivergedError(
                    f"Training diverged: member {k} ({name}) has loss {float(value)} at {where}. {advice}")

    def on_train_batch_end(self, batch, logs=None):
        self._check_finite(logs, f"epoch {self._epoch + 1}, step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check_finite(logs, f"the end of epoch {epoch + 1}")
        warming_up = epoch + 1 < self.warmup_epochs  # slow by design: no verdict yet
        for k, name in enumerate(self.member_names):
            accuracy = (logs or {}).get(f"accuracy_{k}")
            if warming_up or accuracy is None or \
                    not at_chance(float(accuracy), self.train_chance, self.samples_per_epoch):
                continue
            self.log(f"WARNING: member {k} ({name}) is still at chance after epoch {epoch + 1} "
                     f"(training accuracy {float(accuracy):.4f}, chance {self.train_chance:.4f}: the "
                     f"rate of the most frequent class): its predictions have collapsed; {ADVICE}.")
        self._check_validation(epoch, logs or {})

    def _check_validation(self, epoch, logs):
        """Warns about a member that learns in training but sits at chance in inference
        mode while its batch-norm statistics still hold their initial values."""
        if not self.validation_samples or self.bn_momenta is None or not self.steps_per_epoch:
            return
        steps = (epoch + 1) * self.steps_per_epoch
        for k, name in enumerate(self.member_names):
            train, val = logs.get(f"accuracy_{k}"), logs.get(f"val_accuracy_{k}")
            momentum = self.bn_momenta[k] if k < len(self.bn_momenta) else None
            if train is None or val is None or momentum is None:
                continue
            initial_weight = momentum ** steps
            if initial_weight < FORGOTTEN:
                continue  # the moving statistics have caught up: not the cause
            if at_chance(float(val), self.validation_chance, self.validation_samples) and \
                    not at_chance(float(train), self.train_chance, self.samples_per_epoch):
                faster = forgetting_momentum(steps)
                self.log(f"WARNING: member {k} ({name}) predicts the validation set at chance after "
                         f"epoch {epoch + 1} (validation accuracy {float(val):.4f}, chance "
                         f"{self.validation_chance:.4f}) although its training accuracy is "
                         f"{float(train):.4f}: inference mode uses the batch-norm moving statistics, "
                         f"and at momentum {momentum:g} their initial values still weigh "
                         f"{initial_weight:.0%} after {steps} steps ({momentum:g}^{steps}). A run this "
                         f"short needs a faster average: --bn_momentum={faster:g} forgets them within "
                         f"{steps} steps (or train longer).")
