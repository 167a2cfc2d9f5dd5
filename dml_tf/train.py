r"""Trains a Deep Mutual Learning cohort from the command line.

  python -m dml_tf.train --dataset=cifar100 --nets=mobilenet,resnet32 --model_dir=runs/x
  python -m dml_tf.train --flagfile=flags/quickstart.flags

Flags left unset take the dataset's defaults: the paper's settings, completed where it is
silent from the authors' code and WRN (dml_tf/config.py; the README's "Paper vs original
code" table).
"""

from absl import app, flags

from dml_tf import config as cfg
from dml_tf import losses
from dml_tf import nets as dml_nets
from dml_tf.cohort import MEMBER_BATCHES, UPDATES

FLAGS = flags.FLAGS

flags.DEFINE_string("dataset", "digits", "One of " + ", ".join(sorted(cfg.DATASET_DEFAULTS)) +
                    "; digits is embedded (scikit-learn's, no download).")
flags.DEFINE_string("data_dir", None, "Local copy of the dataset (archives or folders).")
flags.DEFINE_list("nets", ["resnet32", "resnet32"], "Comma list of networks, each one of "
                  + ", ".join(dml_nets.names()) + "; K = its length.")
flags.DEFINE_string("model_dir", "runs/default", "Output folder (checkpoints, logs, results).")
flags.DEFINE_enum("mode", "dml", cfg.MODES, "dml; independent (same nets and data order, no "
                  "mimicry); distill (last net learns from the frozen earlier ones, --teacher).")
flags.DEFINE_list("teacher", [], "Saved teacher member files (.keras), one per teacher net.")
flags.DEFINE_enum("update", "sequential", list(UPDATES),
                  "Algorithm 1 (sequential) or the distributed variant of Sec. 4.5.")
flags.DEFINE_enum("member_batches", "shared", list(MEMBER_BATCHES),
                  "shared: every member trains on the same mini-batch (the paper); separate: "
                  "each on its own --batch_size images, one after the other (the original "
                  "code's one train op per network); an epoch is then 1/K the steps.")
flags.DEFINE_enum("mimicry", "kl", list(losses.MIMICRY_MODES),
                  "kl (Eq. 10), js (Eq. 7) or ensemble (DML_e, Eq. 11).")
flags.DEFINE_float("mimicry_weight", 1.0, "Weight of the mimicry term.")
flags.DEFINE_enum("peer_reduction", "mean", list(losses.PEER_REDUCTIONS),
                  "mean: 1/(K-1) as Eq. 10; sum: the original code.")
flags.DEFINE_float("entropy_weight", 0.0, "Confidence penalty (Table 5 'Independent, Entropy').")
flags.DEFINE_float("feature_l2_weight", 0.0, "L2 between members' features (Table 5 'DML, L2').")
flags.DEFINE_float("label_smoothing", None, "Label smoothing (dataset default).")
flags.DEFINE_float("weight_decay", None, "L2 weight decay (dataset default).")
flags.DEFINE_integer("epochs", None, "Training epochs (dataset default).")
flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch (default: one pass).")
flags.DEFINE_integer("batch_size", None, "Global batch size (dataset default).")
flags.DEFINE_integer("seed", 0, "Seed of data order, augmentation and initialisation.")
flags.DEFINE_enum("optimizer", None, list(cfg.OPTIMIZERS), "Optimizer (dataset default).")
flags.DEFINE_float("learning_rate", None, "Initial learning rate (dataset default).")
flags.DEFINE_float("momentum", None, "SGD momentum.")
flags.DEFINE_boolean("nesterov", None, "SGD Nesterov momentum.")
flags.DEFINE_float("beta1", None, "Adam beta1.")
flags.DEFINE_float("beta2", None, "Adam beta2.")
flags.DEFINE_float("adam_epsilon", None, "Adam epsilon.")
flags.DEFINE_float("rmsprop_decay", None, "RMSProp decay (rho).")
flags.DEFINE_float("rmsprop_momentum", None, "RMSProp momentum (default 0.9, TF-slim's).")
flags.DEFINE_float("rmsprop_epsilon", None, "RMSProp epsilon, inside the square root as in TF1 "
                   "(default 1.0, TF-slim's opt_epsilon).")
flags.DEFINE_enum("lr_schedule", None, list(cfg.LR_SCHEDULES),
                  "constant; step (x lr_decay_rate at lr_decay_epochs); exponential "
                  "(x lr_decay_rate every lr_decay_every epochs).")
flags.DEFINE_list("lr_decay_epochs", None, "Epochs at which a step schedule decays.")
flags.DEFINE_float("lr_decay_rate", None, "Decay factor of the schedule.")
flags.DEFINE_integer("lr_decay_every", None, "Epochs between exponential decays.")
flags.DEFINE_float("warmup_epochs", None, "Linear learning-rate warm-up over this many epochs, "
                   "DML and independent alike (dataset default; 0: the paper's exact schedule; "
                   'see the README, "Training stability").')
flags.DEFINE_float("ema_decay", None, "Decay of the weight moving average that replaces the "
                   "weights at the end (0: off; dataset default: 0.9999 for Market-1501, as "
                   "the original code, else 0).")
flags.DEFINE_boolean("ema_batch_norm", True, "With --ema_decay, average the batch-norm moving "
                     "statistics too, as the original code (all model variables); False: the "
                     "trainable weights only, as Keras.")
flags.DEFINE_list("image_size", None, "H,W network input (Market-1501, ImageNet).")
flags.DEFINE_string("pretrained", None, "'imagenet' or a weights file for the members.")
flags.DEFINE_float("bn_momentum", None, "Batch-norm momentum (= TF-slim decay) of every member; "
                   "default each net's own: 0.9997 for mobilenet / inception_v1 (TF-slim), 0.9 else.")
flags.DEFINE_float("labeled_fraction", 1.0, "Fraction of training images labelled (CIFAR).")
flags.DEFINE_integer("labeled_ids", None, "Labelled identities (Market-1501).")
flags.DEFINE_enum("semi", "all", list(cfg.SEMI),
                  "all: mimicry on all data (DML-all); labelled: labelled data only.")
flags.DEFINE_enum("strategy", "default", list(cfg.STRATEGIES), "tf.distribute strategy.")
flags.DEFINE_boolean("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_enum("placement", "none", list(cfg.PLACEMENTS),
                  "none, or per_member: member k on device k mod N (Sec. 4.5).")
flags.DEFINE_enum("mixed_precision", "float32", list(cfg.PRECISIONS), "Keras dtype policy.")
flags.DEFINE_boolean("overwrite", False, "Start afresh in --model_dir: replace a finished run "
                     "and discard the checkpoint of an interrupted one.")
flags.DEFINE_integer("verbose", None, "Default: a table per epoch, a row per member (and a step "
                     "counter on a terminal); 0: silent; 1 / 2: Keras' progress bar / line of "
                     "every metric.")


def config_from_flags():
    """A TrainConfig from the parsed flags."""
    values = {}
    for field in cfg.TrainConfig.__dataclass_fields__:
        values[field] = FLAGS[field].value
    for key in ("lr_decay_epochs", "image_size"):
        if values[key] is not None:
            try:
                values[key] = [int(v) for v in values[key]]
            except ValueError:
                raise app.UsageError(f"--{key} must be comma-separated integers; "
                                     f"got {','.join(values[key])}.") from None
    return cfg.TrainConfig(**values)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from dml_tf import runner
    from dml_tf.errors import DMLError, TrainingDivergedError

    config = config_from_flags()
    try:
        runner.run(config)
    except TrainingDivergedError as e:
        raise SystemExit(f"dml_tf.train: {e}") from None
    except (DMLError, ValueError) as e:  # cfg.ConfigError is a ValueError
        raise app.UsageError(str(e)) from None


def run():
    from dml_tf import cli

    cli.run(main, doc=__doc__)


if __name__ == "__main__":
    run()
