"""Saved files load where users load them: every network's member file and a cohort file
after a bare ``import dml_tf``; without dml_tf, Keras' error names what to import, and an
exported (portable) copy loads with no dml_tf at all. One fresh interpreter does it all."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dml_tf import MutualLearningModel, config as cfg, export, nets, schedules
from paths import ROOT

APPLICATION = "keras:MobileNetV2"

_CHILD = r"""
import json, sys
import numpy as np
import keras

files, x = json.loads(sys.argv[1]), np.load(sys.argv[2])
expected = np.load(sys.argv[3])
out = {"bare_modules": sorted(k for k in sys.modules if k.startswith("dml_tf"))}
try:  # no dml_tf imported: Keras' own error
    keras.models.load_model(files["members"]["resnet20"], compile=False)
    out["bare_error"] = None
except Exception as e:
    out["bare_error"] = f"{type(e).__name__}: {e}"
out["portable"] = {name: float(np.abs(np.asarray(keras.models.load_model(path)(x, training=False))
                                      - expected["portable_" + name]).max())
                   for name, path in files["portable"].items()}
out["portable_modules"] = sorted(k for k in sys.modules if k.startswith("dml_tf"))

import dml_tf  # noqa: E402  (a bare import: nothing else of dml_tf)

out["members"] = {}
for name, path in files["members"].items():
    model = keras.models.load_model(path, compile=False)
    out["members"][name] = {
        "max_abs": float(np.abs(np.asarray(model(x, training=False)) - expected["member_" + name]).max()),
        "batch_norms": sorted({type(l).__module__ for l in model._flatten_layers()
                               if type(l).__name__ == "BatchNormalization"})}
cohort = keras.models.load_model(files["cohort"])  # compiled: its optimizers and schedules
out["cohort"] = {"type": type(cohort).__name__,
                 "max_abs": float(max(np.abs(np.asarray(m(x, training=False)) - e).max()
                                      for m, e in zip(cohort.members, expected["cohort"]))),
                 "schedules": sorted({type(o._learning_rate).__name__
                                      for o in (cohort.optimizer.member(k) for k in range(2))})}
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    files, expected = {"members": {}, "portable": {}}, {}
    for name in nets.names() + [APPLICATION]:
        member = nets.build(name, num_classes=3, input_shape=(32, 32, 3), seed=0)
        key = name.replace(":", "_")
        files["members"][key] = str(root / f"{key}.keras")
        member.save(files["members"][key])
        expected[f"member_{key}"] = np.asarray(member(x, training=False))
        if name in ("resnet20", APPLICATION):
            copy = export.portable(member)
            files["portable"][key] = str(root / f"portable_{key}.keras")
            copy.save(files["portable"][key])
            expected[f"portable_{key}"] = expected[f"member_{key}"]
    # A cohort compiled as the runner compiles it (SGD behind the LinearWarmup schedule).
    config = cfg.TrainConfig(dataset="digits", warmup_epochs=1.0).resolved()
    members = [nets.build(n, num_classes=3, input_shape=(32, 32, 3), seed=k)
               for k, n in enumerate(("tiny_cnn", "resnet20"))]
    cohort = MutualLearningModel(members)
    cohort.compile(optimizer=[schedules.make_optimizer(config, 4) for _ in members])
    files["cohort"] = str(root / "cohort.keras")
    cohort.save(files["cohort"])
    expected["cohort"] = np.stack([np.asarray(m(x, training=False)) for m in members])
    np.save(root / "x.npy", x)
    np.savez(root / "expected.npz", **expected)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(files), str(root / "x.npy"), str(root / "expected.npz")],
        env={**os.environ, "PYTHONPATH": ROOT}, cwd=str(root), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_every_network_loads_after_a_bare_import_dml_tf(saved):
    assert sorted(saved["members"]) == sorted(n.replace(":", "_") for n in nets.names() + [APPLICATION])
    for name, loaded in saved["members"].items():
        assert loaded["max_abs"] < 1e-5, name
        # The fused batch norm comes back as itself, not as Keras' layer.
        assert loaded["batch_norms"] == ["dml_tf.nets.batch_norm"], name


def test_a_cohort_file_loads_after_a_bare_import_dml_tf(saved):
    assert saved["cohort"]["type"] == "MutualLearningModel"
    assert saved["cohort"]["max_abs"] < 1e-5
    assert saved["cohort"]["schedules"] == ["LinearWarmup"]


def test_without_dml_tf_keras_names_what_to_import(saved):
    assert saved["bare_modules"] == []
    error = saved["bare_error"]
    assert error is not None and error.startswith("TypeError")
    # Keras' own message: the class, and the module and registered name that bring it.
    assert "Could not locate class 'BatchNormalization'" in error
    assert "'module': 'dml_tf.nets.batch_norm'" in error and "dml_tf>BatchNormalization" in error


def test_exported_copies_load_with_no_dml_tf(saved):
    assert saved["portable_modules"] == []
    assert all(v < 1e-5 for v in saved["portable"].values()), saved["portable"]
