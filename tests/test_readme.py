"""The README's Python API example runs as written (executed in a fresh process, as a user
would paste it), and the commands it shows exist."""

import ast
import os
import re
import subprocess
import sys

import keras
from paths import ROOT



def readme_section(title):
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_python_api_example_runs_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", readme_section("Python API"), re.S)
    assert len(blocks) == 1
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = ROOT
    proc = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "absl::InitializeLog" not in proc.stderr and "oneDNN" not in proc.stderr  # quiet start-up
    lines = proc.stdout.splitlines()
    assert [line.split("  ")[0] for line in lines if line.startswith("Epoch")] == ["Epoch 1/3", "Epoch 2/3",
                                                                                    "Epoch 3/3"]
    assert sum(line.split()[:1] == ["cnn"] for line in lines) == 3
    evaluated = ast.literal_eval(lines[-1])  # the printed evaluate(..., return_dict=True)
    expected = {"loss", "ensemble_accuracy"} | {f"{t}_{k}" for t in ("loss", "ce", "mimicry", "accuracy")
                                                for k in range(2)}
    assert set(evaluated) == expected
    assert all(0 <= evaluated[key] <= 1 for key in expected if "accuracy" in key)
    # As the README says: it loads with keras.models.load_model after a bare import dml_tf, in
    # a fresh interpreter (this process may or may not have imported dml_tf through other tests).
    load = ("import dml_tf, keras; m = keras.models.load_model('cnn.keras'); "
            "print(m.output_shape, type(m.get_layer('conv1_bn')).__module__)")
    proc = subprocess.run([sys.executable, "-c", load], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["(None,", "10)", "dml_tf.nets.batch_norm"]


def test_quick_start_and_test_commands():
    commands = re.findall(r"```bash\n(.*?)\n```", readme_section("Quick start (fresh machine, no download)"), re.S)
    steps = commands[0].split(" && ")
    assert steps[2] == "pip install -e ." and os.path.isfile(os.path.join(ROOT, "pyproject.toml"))
    flagfile = os.path.join(ROOT, "flags", "quickstart.flags")
    assert steps[3] == "python -m dml_tf.train --flagfile=flags/quickstart.flags" and os.path.isfile(flagfile)
    assert steps[-1] == "python -m dml_tf.compare runs/quickstart_dml runs/quickstart_independent"
    with open(flagfile) as f:
        assert "--model_dir=runs/quickstart_dml" in f.read()
    test_command = re.findall(r"```bash\n(.*?)\n```", readme_section("Tests"), re.S)[0]
    assert test_command.split(" && ")[2:] == ['pip install -e ".[test]"', "python -m pytest -q -n 2 --dist loadscope tests"]


def test_your_own_data_commands_run_on_a_folder_of_real_images(tmp_path):
    """The "Your own data" command chain, as written, on real JPEG/PNG digit images in
    my_images/; the training commands are shortened by flags appended to them."""
    import helpers_images

    helpers_images.write_digit_folder(str(tmp_path / "my_images"), per_class=8)
    chain = re.findall(r"```bash\n(.*?)\n```", readme_section("Your own data"), re.S)[0]
    shorter = ["--nets=tiny_cnn,tiny_cnn", "--epochs=1", "--steps_per_epoch=2", "--batch_size=8"]
    commands = []
    for command in chain.split(" && "):
        args = command.split()
        assert args[:2] == ["python", "-m"]
        commands.append([sys.executable] + args[1:] + (shorter if args[2] == "dml_tf.train" else []))
    assert [c[2] for c in commands] == ["dml_tf.train", "dml_tf.train", "dml_tf.compare", "dml_tf.predict",
                                        "dml_tf.predict"]
    env = {**os.environ, "PYTHONPATH": ROOT}

    def run_together(group):  # commands that do not read each other's output, at once
        started = [subprocess.Popen(c, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE) for c in group]
        results = [(p, *p.communicate(timeout=600)) for p in started]
        for (p, _, stderr), command in zip(results, group):
            assert p.returncode == 0, (command, stderr[-2000:])
        return [stdout for _, stdout, _ in results]

    outputs = run_together(commands[:2]) + run_together(commands[2:])
    assert (tmp_path / "runs" / "compare.json").exists()
    predicted = [line for line in outputs[3].splitlines() if line.startswith("my_images/")]
    assert len(predicted) == 80 and all(len(line.split(", ")) == 3 for line in predicted)
    exported = keras.models.load_model(tmp_path / "runs" / "mine_dml" / "classifier.keras")
    assert exported.output_shape == (None, 10)
