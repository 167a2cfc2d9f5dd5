"""python -m dml_tf.compare on fabricated runs in the format dml_tf.train writes
(results.json and test_predictions.npz)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import app
from scipy import stats

from dml_tf import compare
from paths import ROOT

N = 200
LABELS = np.arange(N) % 10


def predictions_right_on(right, seed):
    """Predictions that are correct exactly where ``right`` is True."""
    wrong = (LABELS + 1 + np.random.RandomState(seed).randint(0, 9, N)) % 10
    return np.where(right, LABELS, wrong).astype(np.int32)


def write_run(path, mode, rights, ensemble_right, curves=None, predictions=True, epochs=3):
    """A finished run whose member k is right on the images ``rights[k]``."""
    path.mkdir(parents=True)
    accs = [float(r.mean()) for r in rights]
    history = {}
    for k, acc in enumerate(accs):
        history[f"val_accuracy_{k}"] = (curves or {}).get(k, [acc] * epochs)
    history["val_ensemble_accuracy"] = [float(ensemble_right.mean())] * epochs
    results = {"config": {"mode": mode, "dataset": "digits", "epochs": epochs, "nets": ["resnet32"] * len(rights)},
               "dataset": {"name": "digits", "test_size": N},
               "members": [{"index": k, "net": "resnet32", "file": f"member_{k}.keras", "test_accuracy": a}
                           for k, a in enumerate(accs)],
               "test": {f"accuracy_{k}": a for k, a in enumerate(accs)},
               "ensemble_test_accuracy": float(ensemble_right.mean()), "history": history}
    (path / "results.json").write_text(json.dumps(results))
    if predictions:
        np.savez(path / compare.PREDICTIONS_FILE, labels=LABELS.astype(np.int32),
                 members=np.stack([predictions_right_on(r, k) for k, r in enumerate(rights)]),
                 ensemble=predictions_right_on(ensemble_right, 9))
    return str(path)


@pytest.fixture()
def runs(tmp_path):
    rng = np.random.RandomState(0)
    a = [rng.rand(N) < 0.9, rng.rand(N) < 0.8]
    b = [rng.rand(N) < 0.85, a[1].copy()]
    b[1][:3] = ~b[1][:3]  # member 1: three images flipped
    ens_a, ens_b = rng.rand(N) < 0.92, rng.rand(N) < 0.7
    dml = write_run(tmp_path / "dml", "dml", a, ens_a, curves={0: [0.5, 0.7, float(a[0].mean())]})
    ind = write_run(tmp_path / "ind", "independent", b, ens_b)
    return dml, ind, (a, ens_a), (b, ens_b)


def test_paired_differences_and_mcnemar(runs):
    dml, ind, (a, ens_a), (b, ens_b) = runs
    result = compare.compare([dml, ind])
    assert result["rows"] == ["member 0", "member 1", "ensemble"]
    diffs = {d["row"]: d for d in result["differences"]}
    for row, x, y in (("member 0", a[0], b[0]), ("member 1", a[1], b[1]), ("ensemble", ens_a, ens_b)):
        d = diffs[row]
        only_a, only_b = int(np.sum(x & ~y)), int(np.sum(~x & y))
        assert d["paired"] and (d["reference_only"], d["other_only"]) == (only_a, only_b)
        assert d["images"] == int(x.sum()) - int(y.sum()) == only_a - only_b
        assert d["difference"] == pytest.approx(x.mean() - y.mean())
        assert d["p_value"] == pytest.approx(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue, rel=1e-9)
    assert diffs["ensemble"]["p_value"] < 0.05 < diffs["member 1"]["p_value"]
    text = compare.format_report(result)
    assert f"{N} test images, 1 image = 0.50 points" in text
    ensemble_row = [line for line in text.splitlines() if line.startswith("ensemble")][0]
    assert ensemble_row.split() == ["ensemble", f"{100 * ens_a.mean():.2f}", f"({ens_a.sum()})",
                                    f"{100 * ens_b.mean():.2f}", f"({ens_b.sum()})",
                                    f"{100 * (ens_a.mean() - ens_b.mean()):+.2f}",
                                    f"({int(ens_a.sum() - ens_b.sum()):+d}", "images)"]
    assert text.splitlines()[1:3] == ["  A = dml (dml)", "  B = ind (independent)"]
    d = diffs["ensemble"]
    assert (f"  ensemble: {d['reference_only']} images right only in A, {d['other_only']} only in B; "
            f"McNemar exact p = {d['p_value']:.2g}: the test set resolves it.") in text.splitlines()
    only_a, only_b = int(np.sum(a[1] & ~b[1])), int(np.sum(~a[1] & b[1]))  # the first 3 images
    assert only_a + only_b == 3
    p = stats.binomtest(only_a, 3, 0.5).pvalue
    assert (f"  member 1: {only_a} image{'s' * (only_a != 1)} right only in A, {only_b} only in B; "
            f"McNemar exact p = {p:.2g}: within test-set noise.") in text.splitlines()
    resolved = sum(d["p_value"] < 0.05 for d in diffs.values())
    assert f"  {resolved} of these 3 differences exceed the test set's noise (p < 0.05)." in text


def test_without_predictions_the_binomial_standard_error(tmp_path, runs):
    dml, _, (a, ens_a), (b, ens_b) = runs
    ind = write_run(tmp_path / "old" / "ind", "independent", b, ens_b, predictions=False)
    d = compare.difference(compare.read_run(dml), compare.read_run(ind), "member 0")
    p, q = a[0].mean(), b[0].mean()
    se = math.sqrt(p * (1 - p) / N + q * (1 - q) / N)
    assert not d["paired"] and d["standard_error"] == pytest.approx(se)
    assert d["p_value"] == pytest.approx(2 * stats.norm.sf(abs(p - q) / se))


def test_curves_are_aligned_to_the_last_epochs(runs):
    dml, ind, (a, _), _ = runs
    run = compare.read_run(dml)
    assert run["curves"]["member 0"] == ([1, 2, 3], [0.5, 0.7, float(a[0].mean())])
    results = json.loads(open(os.path.join(dml, "results.json")).read())
    results["history"] = {k: v[1:] for k, v in results["history"].items()}  # a resumed session
    open(os.path.join(dml, "results.json"), "w").write(json.dumps(results))
    assert compare.read_run(dml)["curves"]["member 0"][0] == [2, 3]


def test_bad_run_folders(tmp_path):
    with pytest.raises(app.UsageError, match="Give the run folders"):
        compare.compare([])
    with pytest.raises(app.UsageError, match="does not exist"):
        compare.compare([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(app.UsageError, match="holds no results.json"):
        compare.compare([str(tmp_path / "empty")])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{")
    with pytest.raises(app.UsageError, match="not valid JSON"):
        compare.compare([str(tmp_path / "broken")])


def test_command_writes_json_and_png(runs, tmp_path):
    dml, ind, _, _ = runs
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "dml_tf.compare", dml, ind, f"--output_dir={out}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.splitlines()[4].split() == ["A", "B", "A", "-", "B"]
    data = json.loads((out / "compare.json").read_text())
    assert [r["name"] for r in data["runs"]] == ["dml", "ind"] and len(data["differences"]) == 3
    assert data["runs"][0]["curves"]["member 0"]["test_accuracy"][:2] == [0.5, 0.7]
    assert (out / "compare.png").stat().st_size > 5000
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # atomic writes leave no temporary file
