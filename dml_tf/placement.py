"""Per-member device placement (model parallelism): member k on logical device k mod N.

With ``placement="per_member"`` member k's variables, forward, gradient, update and
optimizer slots live on device ``k mod N`` of the N GPUs (the CPUs when there is no
GPU). With ``"none"`` TensorFlow places everything; data parallelism then comes from a
``tf.distribute`` strategy, which per-member placement cannot be combined with.
"""

import contextlib

import keras
import tensorflow as tf

from dml_tf.errors import check_choice

PLACEMENTS = ("none", "per_member")


def placement_devices():
    """The logical devices ``placement="per_member"`` spreads members over: the
    GPUs if any, else the CPUs (several when configured with
    ``tf.config.set_logical_device_configuration``)."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [d.name for d in devices]


def check_placement(placement):
    """Refuses an unknown placement, and ``"per_member"`` under a multi-replica strategy."""
    check_choice("placement", placement, PLACEMENTS)
    if placement != "none" and tf.distribute.has_strategy() and \
            tf.distribute.get_strategy().num_replicas_in_sync > 1:
        raise ValueError(
            "placement='per_member' places members on devices itself; it cannot be "
            "combined with a multi-replica tf.distribute strategy.")


def member_devices(placement, count):
    """The device of each of ``count`` members (``None`` without placement)."""
    if placement != "per_member":
        return None
    devices = placement_devices()
    return [devices[k % len(devices)] for k in range(count)]


def device_scope(device):
    """A ``tf.device`` scope for ``device`` (a no-op for ``None``)."""
    return tf.device(device) if device else contextlib.nullcontext()


def _on_device(variable, device):
    """Whether ``variable`` lives on ``device`` (compared by its ``TYPE:index`` suffix)."""
    suffix = device.split("device:")[-1].upper()
    value = variable.value if isinstance(variable, keras.Variable) else variable
    return value.device.upper().endswith(suffix)


def place(member, device):
    """``member`` if its variables live on ``device``, else a clone built there.

    Variables are created when a model is built, so a member whose variables are
    elsewhere is cloned under ``tf.device`` (``keras.models.clone_model``) and its
    weights and ``trainable`` flag copied.
    """
    if member.built and all(_on_device(v, device) for v in member.variables):
        return member
    with tf.device(device):
        clone = keras.models.clone_model(member)
        if not clone.built and member.built:
            clone.build(member.input_shape)
    clone.set_weights(member.get_weights())
    clone.trainable = member.trainable
    return clone


def build_member_optimizers(optimizers, members, devices):
    """Builds each member's optimizer on its member's device, so that its slots are
    colocated with the variables they track (no-op without placement)."""
    if not devices:
        return
    for optimizer, member, device in zip(optimizers, members, devices):
        variables = member.trainable_variables
        if variables and not optimizer.built:
            with tf.init_scope(), tf.device(device):
                optimizer.build(variables)


def deserialize_members(configs, placement, custom_objects=None):
    """Members from their serialized configs, each built directly on its device under
    placement (no clone needed)."""
    devices = member_devices(placement, len(configs)) or [None] * len(configs)
    members = []
    for config, device in zip(configs, devices):
        with device_scope(device):
            members.append(keras.saving.deserialize_keras_object(config, custom_objects=custom_objects))
    return members
