"""tf.distribute strategies by name (--strategy).

  default       the current (default, single-device) strategy.
  mirrored      tf.distribute.MirroredStrategy over the local GPUs (or CPU).
  multi_worker  tf.distribute.MultiWorkerMirroredStrategy; the cluster comes from
                the TF_CONFIG environment variable of each worker.
  tpu           tf.distribute.TPUStrategy on the TPU found by TPUClusterResolver.

Data parallelism and the cohort: each replica computes every member's loss on its
local share of the global batch, scaled by 1/num_replicas_in_sync (dml_tf/cohort.py),
and the optimizers sum the replicas' gradients. This equals the single-device step
on the global batch when the global batch splits into equal local batches (and, with
-1 unlabeled labels, equal labeled counts per replica): keep the global batch
divisible by the number of replicas. tests/test_distribute.py checks the equality on
two logical CPUs, for both update orders.

Model parallelism is separate: MutualLearningModel(placement="per_member") puts member
k on device k mod N (see dml_tf.placement.placement_devices); it is used with the
default strategy only.
"""

import tensorflow as tf

from dml_tf.config import STRATEGIES as STRATEGY_NAMES


def make_strategy(name, devices=None):
    """The strategy called ``name`` (one of ``STRATEGY_NAMES``).

    Args:
      name: strategy name.
      devices: for ``mirrored`` only, the devices to mirror over (default: all
        local GPUs, else the CPU).
    """
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name in (None, "default"):
        return tf.distribute.get_strategy()
    raise ValueError(f"Unknown strategy {name!r}; expected one of {STRATEGY_NAMES}.")
