"""A callback that says when training goes wrong, instead of finishing a dead run.

* A member whose loss is NaN or infinite stops the run at once with
  :class:`~dml_tf.errors.TrainingDivergedError`, naming the member, the epoch and the
  step (``fit`` then never returns, so no results file is written as if finished).
* A member whose training accuracy over a whole epoch is still indistinguishable from
  chance (within three binomial standard errors of ``1 / num_classes``) gets one
  warning line at the end of that epoch, naming it and what to try.
* A member that has left chance in training but still predicts the validation set
  at chance gets another warning: inference mode uses the batch-norm moving
  statistics, which lag the weights when their decay is slow for the run's length
  (TF-slim's 0.9997 for MobileNet and InceptionV1 averages over ~3,300 steps).
"""

import math

import keras

from dml_tf.errors import TrainingDivergedError

BN_ADVICE = ("inference mode uses the batch-norm moving statistics, which have not caught up "
             "with the weights (a decay close to 1, such as TF-slim's 0.9997 for mobilenet and "
             "inception_v1, needs thousands of steps); a run this short needs a faster average, "
             "e.g. --bn_momentum=0.99")
ADVICE = ("try a learning-rate warm-up (--warmup_epochs), a lower --learning_rate, or check the "
          "input data for NaN/inf values and the labels")


def at_chance(accuracy, num_classes, num_samples):
    """Whether ``accuracy`` over ``num_samples`` is within 3 standard errors of chance."""
    chance = 1.0 / num_classes
    return accuracy <= chance + 3.0 * math.sqrt(chance * (1.0 - chance) / max(num_samples, 1))


class TrainingHealth(keras.callbacks.Callback):
    """Stops on a non-finite loss; warns about members at chance after an epoch.

    Args:
      member_names: the cohort's member names, in order (loss_k, accuracy_k).
      num_classes: number of classes (chance is 1 / num_classes).
      samples_per_epoch: labeled training images seen per epoch.
      validation_samples: labeled images of the validation set (None: no
        validation check).
      log: where warnings go (``print`` by default).
    """

    def __init__(self, member_names, num_classes, samples_per_epoch, validation_samples=None,
                 log=print):
        super().__init__()
        self.member_names = list(member_names)
        self.num_classes = int(num_classes)
        self.samples_per_epoch = int(samples_per_epoch)
        self.validation_samples = validation_samples
        self.log = log
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _check_finite(self, logs, where):
        for k, name in enumerate(self.member_names):
            value = (logs or {}).get(f"loss_{k}")
            if value is not None and not math.isfinite(float(value)):
                raise TrainingDivergedError(
                    f"Training diverged: member {k} ({name}) has loss {float(value)} at {where}. "
                    f"The run stopped; the last finished epoch's checkpoint is kept. To fix it, "
                    f"{ADVICE}.")

    def on_train_batch_end(self, batch, logs=None):
        self._check_finite(logs, f"epoch {self._epoch + 1}, step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check_finite(logs, f"the end of epoch {epoch + 1}")
        for k, name in enumerate(self.member_names):
            accuracy = (logs or {}).get(f"accuracy_{k}")
            if accuracy is None or not at_chance(float(accuracy), self.num_classes, self.samples_per_epoch):
                continue
            self.log(f"WARNING: member {k} ({name}) is still at chance after epoch {epoch + 1} "
                     f"(training accuracy {float(accuracy):.4f}, chance {1 / self.num_classes:.4f}): "
                     f"its predictions have collapsed; {ADVICE}.")
        self._check_validation(epoch, logs or {})

    def _check_validation(self, epoch, logs):
        """Warns about a member that learns in training but sits at chance in inference mode."""
        if not self.validation_samples:
            return
        for k, name in enumerate(self.member_names):
            train, val = logs.get(f"accuracy_{k}"), logs.get(f"val_accuracy_{k}")
            if train is None or val is None:
                continue
            if at_chance(float(val), self.num_classes, self.validation_samples) and \
                    not at_chance(float(train), self.num_classes, self.samples_per_epoch):
                self.log(f"WARNING: member {k} ({name}) predicts the validation set at chance "
                         f"after epoch {epoch + 1} (validation accuracy {float(val):.4f}) although "
                         f"its training accuracy is {float(train):.4f}: {BN_ADVICE}.")
