r"""What happens in the first steps of training: DML against independent training.

    python -m tools.training_stability --dataset=cifar10 --data_dir=DIR \
        --nets=resnet32,resnet32 --steps=300 --conditions=dml,independent --output_dir=out/stability

For each condition (``dml``, ``independent``; add ``:warmup=E`` for a linear learning-rate
warm-up over E epochs, ``:lr=X`` for another learning rate, e.g. ``dml:warmup=2``) the tool
builds the cohort exactly as ``python -m dml_tf.train`` does (same data order, members,
optimizers and schedule) and trains it with the cohort's own ``train_step``. Every
``--every`` steps, before that step's update, it measures each member on the step's batch
in training mode (batch-norm moving statistics untouched):

* ``ce``, ``mimicry``, ``batch_accuracy``;
* ``logit_std`` (std of the logits) and ``feature_norm`` (mean L2 norm of the ``features``
  layer, the global average pool);
* ``dead_features``: fraction of ``features`` channels that are 0 for every image of the
  batch (a ReLU that no longer fires anywhere: its channel passes no gradient);
* ``relu_zero``: fraction of zeros in the activation that feeds the pool;
* ``grad_ce``, ``grad_mimicry``: global norms of the gradients of the cross-entropy and of
  the weighted mimicry term w.r.t. the member's weights, and ``grad_cosine`` between them;
* ``weight_norm``: L2 norm of the member's kernels (they grow when updates are large:
  batch norm makes a kernel's scale irrelevant to the output, so each large step adds to
  it).

Writes ``training_stability.json`` and ``training_stability.png`` (one panel a quantity,
one line a member and condition).
"""

import os
import sys

if __name__ == "__main__" and not __package__:  # started as python tools/NAME.py
    sys.exit(f"Run it from the repository root as: python -m tools.{os.path.basename(__file__)[:-3]}")

from absl import app

from dml_tf import cli_flags
from tools import _common

QUANTITIES = ("ce", "mimicry", "batch_accuracy", "logit_std", "feature_norm", "dead_features",
              "relu_zero", "grad_ce", "grad_mimicry", "grad_cosine", "weight_norm")


def define_flags():
    cli_flags.define("string", "dataset", "cifar10", "Dataset (as dml_tf.train).")
    cli_flags.define("string", "data_dir", None, "Local copy of the dataset.")
    cli_flags.define("list", "nets", ["resnet32", "resnet32"], "Comma list of networks.")
    cli_flags.define("list", "conditions", ["dml", "independent"],
                     "Comma list of dml / independent, each optionally with :warmup=E and :lr=X.")
    cli_flags.define("integer", "steps", 300, "Training steps per condition.")
    cli_flags.define("integer", "every", 5, "Measure every this many steps.")
    cli_flags.define("integer", "seed", 0, "Seed (as dml_tf.train).")
    cli_flags.define("string", "output_dir", None, "Where training_stability.json/.png go.")


def parse_condition(text):
    """``"dml:warmup=2:lr=0.05"`` -> ``("dml", {"warmup_epochs": 2.0, "learning_rate": 0.05})``."""
    mode, *options = text.split(":")
    if mode not in ("dml", "independent"):
        raise app.UsageError(f"--conditions: {text!r} must start with dml or independent.")
    overrides = {}
    keys = {"warmup": "warmup_epochs", "lr": "learning_rate"}
    for option in options:
        key, _, value = option.partition("=")
        try:
            overrides[keys[key]] = float(value)
        except (KeyError, ValueError):
            raise app.UsageError(f"--conditions: {option!r} in {text!r} must be warmup=E or lr=X.") from None
    return mode, overrides


def _probe_models(members):
    """Per member, a model giving (logits, features, the activation that feeds the pool)."""
    import keras

    probes = []
    for member in members:
        pool = member.get_layer("features")
        probes.append(keras.Model(member.inputs, [member.outputs[0], pool.output, pool.input]))
    return probes


def make_measure(cohort, probes):
    """A compiled function ``(x, y) -> [per-member dict of the quantities]`` (module docstring)."""
    import tensorflow as tf

    from dml_tf import losses

    def forward(probe, x):
        outputs, _ = probe.stateless_call([v.value for v in probe.trainable_variables],
                                          [v.value for v in probe.non_trainable_variables], x, training=True)
        return outputs

    @tf.function
    def measure(x, y):
        labels = tf.cast(y, tf.int32)
        targets = [tf.stop_gradient(losses.log_probabilities(forward(p, x)[0])) for p in probes]
        rows = []
        for k, probe in enumerate(probes):
            variables = probe.trainable_variables
            with tf.GradientTape(persistent=True) as tape:
                logits, features, pre_pool = forward(probe, x)
                own = losses.log_probabilities(logits)
                terms = cohort.member_loss(k, labels, logits, targets, None, own)
                mimicry = cohort.mimicry_weight * terms["mimicry"]
            g_ce = tape.gradient(terms["ce"], variables)
            g_mim = tape.gradient(mimicry, variables, unconnected_gradients="zero")
            del tape
            flat_ce = tf.concat([tf.reshape(g, [-1]) for g in g_ce], 0)
            flat_mim = tf.concat([tf.reshape(g, [-1]) for g in g_mim], 0)
            norm_ce, norm_mim = tf.norm(flat_ce), tf.norm(flat_mim)
            kernels = [v for v in variables if "kernel" in v.path]
            correct = tf.cast(tf.equal(tf.argmax(own, -1, output_type=tf.int32), labels), tf.float32)
            rows.append({
                "ce": terms["ce"], "mimicry": terms["mimicry"], "batch_accuracy": tf.reduce_mean(correct),
                "logit_std": tf.math.reduce_std(logits),
                "feature_norm": tf.reduce_mean(tf.norm(features, axis=-1)),
                "dead_features": tf.reduce_mean(tf.cast(tf.reduce_all(features <= 0, 0), tf.float32)),
                "relu_zero": tf.reduce_mean(tf.cast(pre_pool <= 0, tf.float32)),
                "grad_ce": norm_ce, "grad_mimicry": norm_mim,
                "grad_cosine": tf.math.divide_no_nan(tf.reduce_sum(flat_ce * flat_mim), norm_ce * norm_mim),
                "weight_norm": tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(v)) for v in kernels])),
            })
        return rows

    def run(x, y):
        return [{key: float(value) for key, value in row.items()} for row in measure(x, y)]

    return run


def run_condition(condition, dataset, data_dir, nets, steps, every, seed, log=print):
    """Trains one condition for ``steps`` steps; returns ``{"steps": [...], "members": [...]}``."""
    import keras

    from dml_tf import config as cfg
    from dml_tf import runner

    mode, overrides = parse_condition(condition)
    config = cfg.TrainConfig(dataset=dataset, data_dir=data_dir, nets=tuple(nets), mode=mode, seed=seed,
                             **overrides).resolved()
    keras.utils.set_random_seed(seed)
    bundle = runner.load_data(config)
    steps_per_epoch = -(-bundle.train_size // config.batch_size)
    cohort = runner.build_cohort(config, bundle, steps_per_epoch)
    members = cohort.members
    measure = make_measure(cohort, _probe_models(members))
    record = {"steps": [], "members": [[] for _ in members]}
    stream = iter(bundle.train.repeat())
    for step in range(steps):
        x, y = next(stream)
        if step % every == 0:
            for k, row in enumerate(measure(x, y)):
                record["members"][k].append(row)
            record["steps"].append(step)
            accs = " ".join(f"{r[-1]['batch_accuracy']:.2f}" for r in record["members"])
            log(f"{condition} step {step}: batch accuracy {accs}")
        cohort.train_on_batch(x, y)
    return record


def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = -(-len(QUANTITIES) // cols)
    figure, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows))
    for ax, quantity in zip(axes.flat, QUANTITIES):
        for condition, record in results.items():
            for k, member in enumerate(record["members"]):
                ax.plot(record["steps"], [r[quantity] for r in member], label=f"{condition} #{k}",
                        linestyle="-" if k == 0 else "--")
        ax.set_title(quantity)
        ax.set_xlabel("step")
        if quantity in ("grad_ce", "grad_mimicry"):
            ax.set_yscale("symlog", linthresh=1e-3)
    for ax in list(axes.flat)[len(QUANTITIES):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    return figure


def compute(output_dir, dataset="cifar10", data_dir=None, nets=("resnet32", "resnet32"),
            conditions=("dml", "independent"), steps=300, every=5, seed=0, log=print):
    output_dir = _common.need_output_dir(output_dir)
    conditions = _common.split_list(conditions)
    for condition in conditions:
        parse_condition(condition)
    if steps < 1 or every < 1:
        raise app.UsageError("--steps and --every must be positive.")
    results, paths = {}, None
    for condition in conditions:  # outputs rewritten after each condition: an interrupted run keeps them
        results[condition] = run_condition(condition, dataset, data_dir, _common.split_list(nets), steps, every,
                                           seed, log)
        payload = {"dataset": dataset, "nets": list(_common.split_list(nets)), "seed": seed,
                   "quantities": list(QUANTITIES), "conditions": results}
        paths = _common.write_outputs(output_dir, "training_stability", payload, plot(results), log)
    return paths


if __name__ == "__main__":
    _common.run_tool(compute, define_flags)
