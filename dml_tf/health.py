"""A callback that says when training goes wrong, instead of finishing a dead run.

* A member whose loss is NaN or infinite stops the run at once with
  :class:`~dml_tf.errors.TrainingDivergedError`, naming the member, the epoch and the
  step (``fit`` then never returns, so no results file is written as if finished).
* A member whose training accuracy over a whole epoch is still indistinguishable from
  chance (within three binomial standard errors of ``1 / num_classes``) gets one
  warning line at the end of that epoch, naming it and what to try.
"""

import math

import keras

from dml_tf.errors import TrainingDivergedError

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
      samples_per_epoch: labelled training images seen per epoch.
      log: where warnings go (``print`` by default).
    """

    def __init__(self, member_names, num_classes, samples_per_epoch, log=print):
        super().__init__()
        self.member_names = list(member_names)
        self.num_classes = int(num_classes)
        self.samples_per_epoch = int(samples_per_epoch)
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
