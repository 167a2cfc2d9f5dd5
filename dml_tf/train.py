r"""Trains a Deep Mutual Learning cohort from the command line.

  python -m dml_tf.train --dataset=cifar100 --nets=mobilenet,resnet32 --model_dir=runs/x
  python -m dml_tf.train --flagfile=flags/quickstart.flags

Flags left unset take the dataset's defaults: the paper's settings, completed where it is
silent from the authors' code and WRN (dml_tf/paper.py; the README's "Paper vs original
code" table).
"""

from absl import app

from dml_tf import cli_flags
from dml_tf.cli_flags import config_from_flags

cli_flags.define_train_flags()  # one per TrainConfig field (dml_tf/config.py)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from dml_tf import runner
    from dml_tf.errors import DMLError, TrainingDivergedError

    try:
        runner.run(config_from_flags())
    except TrainingDivergedError as e:
        raise SystemExit(f"dml_tf.train: {e}") from None
    except (DMLError, ValueError) as e:  # cfg.ConfigError is a ValueError
        raise app.UsageError(str(e)) from None


def run():
    from dml_tf import cli

    cli.run(main, doc=__doc__)


if __name__ == "__main__":
    run()
