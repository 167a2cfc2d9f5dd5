"""What a training run tells its user: the banner, a per-member table each epoch, and
TensorBoard scalars in which the members overlay.

A cohort's logs hold ``loss`` (the members' sum) and, per member k, ``loss_k``,
``ce_k``, ``accuracy_k`` and ``mimicry_k`` (only when the mimicry term is trained),
plus ``ensemble_accuracy`` on validation; validation values carry the ``val_`` prefix.
:func:`member_logs` regroups them per member.
"""

import math
import os
import re
import sys
import time

import keras
import numpy as np
import tensorflow as tf

TERMS = ("loss", "ce", "mimicry", "accuracy")
_MEMBER_KEY = re.compile(r"^(val_)?(loss|ce|mimicry|accuracy)_(\d+)$")
ENSEMBLE = "ensemble"


def _value(value):
    """A log value as a float (a shape-[1] value under multi-worker training included)."""
    return float(np.mean(np.asarray(value, dtype=np.float64)))


def member_logs(logs):
    """``({k: {split: {term: value}}}, {split: ensemble accuracy})`` from a cohort's
    Keras logs; ``split`` is ``"train"`` or ``"validation"``."""
    members, ensemble = {}, {}
    for key, value in (logs or {}).items():
        match = _MEMBER_KEY.match(key)
        if match:
            split = "validation" if match.group(1) else "train"
            members.setdefault(int(match.group(3)), {}).setdefault(split, {})[match.group(2)] = \
                _value(value)
        elif key in ("ensemble_accuracy", "val_ensemble_accuracy"):
            ensemble["validation" if key.startswith("val_") else "train"] = _value(value)
    return dict(sorted(members.items())), ensemble


def member_learning_rates(model):
    """Each member's current learning rate (``CohortOptimizer.member(k)``), or the one
    rate of a plain optimizer for every member; ``[]`` without an optimizer."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return []
    count = len(getattr(model, "members", ())) or 1
    if hasattr(optimizer, "member"):
        optimizers = [optimizer.member(k) for k in range(count)]
    else:
        optimizers = [optimizer] * count
    return [float(tf.convert_to_tensor(o.learning_rate)) for o in optimizers]


# ------------------------------------------------------------------------------ console


def _number(value):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def epoch_table(logs, names, ensemble_name=ENSEMBLE):
    """The per-member table of one epoch's logs: a row per member (``names[k]``) and
    the ensemble; columns loss, ce, mimicry (when logged), acc, val_loss, val_acc."""
    members, ensemble = member_logs(logs)
    train_terms = [t for t in TERMS if any(t in m.get("train", {}) for m in members.values())]
    val_terms = [t for t in ("loss", "accuracy")
                 if any(t in m.get("validation", {}) for m in members.values())]
    columns = [("train", t, "acc" if t == "accuracy" else t) for t in train_terms]
    columns += [("validation", t, "val_acc" if t == "accuracy" else f"val_{t}") for t in val_terms]
    labels = [names[k] if k < len(names) else f"member_{k}" for k in members]
    if len(set(labels)) < len(labels):  # members named alike: number them
        labels = [f"{label}_{k}" for label, k in zip(labels, members)]
    width = max([len("member"), len(ensemble_name)] + [len(label) for label in labels]) + 2
    cells = [max(9, len(title) + 2) for _, _, title in columns]
    lines = ["  " + "member".ljust(width) + "".join(t.rjust(c) for (_, _, t), c in zip(columns, cells))]
    for label, k in zip(labels, members):
        row = [_number(members[k].get(split, {}).get(term)) for split, term, _ in columns]
        lines.append("  " + label.ljust(width) + "".join(v.rjust(c) for v, c in zip(row, cells)))
    if "validation" in ensemble and columns:
        row = [_number(ensemble["validation"]) if (split, term) == ("validation", "accuracy") else ""
               for split, term, _ in columns]
        lines.append("  " + ensemble_name.ljust(width) + "".join(v.rjust(c) for v, c in zip(row, cells)))
    return "\n".join(lines)


class EpochTable(keras.callbacks.Callback):
    """Logs, after every epoch, ``Epoch e/E  time  lr`` and :func:`epoch_table` (the
    readable replacement of Keras' one-line summary of every metric).

    Args:
      names: the members' names (default: the cohort members' ``name``).
      log: where the table goes (default ``print``).
      progress: show ``step i/N`` on one updated line of stdout during an epoch
        (default: when logging with ``print`` to a terminal).
    """

    def __init__(self, names=None, log=None, progress=None):
        super().__init__()
        self._names = list(names) if names is not None else None
        self._log = log or print
        if progress is None:
            progress = self._log is print and sys.stdout.isatty()
        self._progress = progress
        self._shown = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._shown = time.time()
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        now = time.time()
        if self._progress and now - self._shown >= 0.5:
            self._shown = now
            sys.stdout.write(f"\r  epoch {self._epoch + 1}/{self.params.get('epochs')}  "
                             f"step {batch + 1}/{self.params.get('steps') or '?'}  "
                             f"{now - self._epoch_start:.0f} s")
            sys.stdout.flush()

    def on_epoch_end(self, epoch, logs=None):
        if self._progress:
            sys.stdout.write("\r" + " " * 60 + "\r")
        names = self._names or [m.name for m in getattr(self.model, "members", [])]
        rates = sorted(set(member_learning_rates(self.model)))
        lr = f"  lr {', '.join(f'{r:.4g}' for r in rates)}" if rates else ""
        self._log(f"Epoch {epoch + 1}/{self.params.get('epochs')}  "
                  f"{time.time() - self._epoch_start:.1f} s{lr}\n{epoch_table(logs, names)}")


def describe_run(config, members, train_count, test_count, steps_per_epoch):
    """The banner of a run: what is trained, on what, and how (a few lines)."""
    k = len(members)
    start = {"imagenet": ", ImageNet weights", None: ""}
    names = ", ".join(f"{m.name} ({net}{start.get(p, ', initial weights from a file')}"
                      f"{'' if m.trainable else ', frozen teacher'})"
                      for m, net, p in zip(members, config.nets, config.member_pretrained()))
    step = config.step_batch_size()
    batch = f"{step} ({config.batch_size} per member)" if step != config.batch_size else f"{step}"
    lines = [f"Training {k} member{'s' if k > 1 else ''} on {config.dataset}: {train_count} training "
             f"images, {steps_per_epoch} steps of {batch} per epoch, {config.epochs} epochs"
             + (f"; {test_count} test images." if test_count else "."),
             f"  members: {names}"]
    learners = [m.name for m in members if m.trainable]
    teachers = [m.name for m in members if not m.trainable]
    weight = config.member_mimicry_weight()
    if k == 1 or weight == 0:
        objective = ("each member alone on its own cross-entropy (independent training, no mimicry"
                     + (" term; same networks, seeds and data order as DML)" if k > 1 else ")"))
    else:
        target = {"kl": "KL from each peer's prediction to its own (Eq. 10)",
                  "js": "symmetric KL between each peer's prediction and its own (Eq. 7)",
                  "ensemble": "KL from the peers' mean prediction to its own (DML_e, Eq. 11)",
                  }[config.mimicry]
        if k > 2 and config.mimicry != "ensemble":
            target += f", {config.peer_reduction} over the {k - 1} peers"
        who = "each member" if not teachers else f"{', '.join(learners)} only"
        objective = f"{who} on its cross-entropy + {weight:g} x {target}"
        if config.mimicry_warmup_epochs:
            objective += f" (its weight ramped up from 0 over {config.mimicry_warmup_epochs:g} epochs)"
        if teachers:
            objective += f"; {', '.join(teachers)} frozen (not trained)"
        elif config.update == "sequential":
            objective += "; members updated one after the other on each batch (Algorithm 1)"
        else:
            objective += "; members updated together from the same predictions (Sec. 4.5)"
    extras = []
    if config.label_smoothing:
        extras.append(f"label smoothing {config.label_smoothing:g}")
    if config.entropy_weight:
        extras.append(f"- {config.entropy_weight:g} x entropy (confidence penalty)")
    if config.feature_l2_weight:
        extras.append(f"+ {config.feature_l2_weight:g} x feature L2 to the peers")
    if config.labeled_fraction < 1 or config.labeled_ids:
        extras.append("semi-supervised: cross-entropy on labeled images, mimicry on "
                      + ("labeled images only" if config.semi == "labeled" else "all"))
    lines.append(f"  trains: {objective}" + (f"; {'; '.join(extras)}" if extras else ""))
    optimizer = f"  optimizer: {config.optimizer}, lr {config.learning_rate:g}"
    if config.warmup_epochs:
        optimizer += f" after a {config.warmup_epochs:g}-epoch linear warm-up"
    decays = [e for e in config.lr_decay_epochs if e < config.epochs]
    if config.lr_schedule == "step" and decays:
        optimizer += (f" x{config.lr_decay_rate:g} after epoch{'s' if len(decays) > 1 else ''} "
                      + ", ".join(str(e) for e in decays))
    elif config.lr_schedule == "exponential":
        optimizer += f" x{config.lr_decay_rate:g} every {config.lr_decay_every} epochs"
    optimizer += f", weight decay {config.weight_decay:g}"
    if config.ema_decay:
        optimizer += f", weight moving average {config.ema_decay:g} for the final weights"
    lines.append(optimizer)
    return "\n".join(lines)


# --------------------------------------------------------------------------- TensorBoard


class CohortTensorBoard(keras.callbacks.Callback):
    """Epoch scalars of a cohort for TensorBoard, one run folder per member so that the
    members (and the ensemble) overlay in one chart per quantity.

    ``log_dir/member_K/train`` and ``log_dir/member_K/validation`` hold ``epoch_loss``,
    ``epoch_ce``, ``epoch_mimicry`` (when trained) and ``epoch_accuracy``, and the
    train run ``epoch_learning_rate``; ``log_dir/ensemble/validation`` holds
    ``epoch_accuracy``. Steps are epochs counted from 0, as Keras' ``TensorBoard``.
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir
        self._writers = {}

    def _writer(self, run):
        if run not in self._writers:
            self._writers[run] = tf.summary.create_file_writer(os.path.join(self.log_dir, *run))
        return self._writers[run]

    def _scalars(self, run, values, step):
        with self._writer(run).as_default():
            for tag, value in values.items():
                tf.summary.scalar(f"epoch_{tag}", value, step=step)

    def on_epoch_end(self, epoch, logs=None):
        members, ensemble = member_logs(logs)
        rates = member_learning_rates(self.model)
        for k, splits in members.items():
            for split, values in splits.items():
                values = dict(values)
                if split == "train" and k < len(rates):
                    values["learning_rate"] = rates[k]
                self._scalars((f"member_{k}", split), values, epoch)
        if "validation" in ensemble:
            self._scalars((ENSEMBLE, "validation"), {"accuracy": ensemble["validation"]}, epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
