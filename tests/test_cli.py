"""What a user sees from the commands: one error line for bad input, --help on stdout with
status 0, the flags' choices listed, and none of TensorFlow's start-up notices
(dml_tf/cli.py, dml_tf/_quiet.py)."""

import logging
import os
import re

import pytest
from absl import logging as absl_logging

from dml_tf import _quiet, cli
from dml_tf import nets as dml_nets
from dml_tf.config import DATASET_DEFAULTS
from helpers_tools import run_processes
from paths import ROOT


# Lines TensorFlow 2.21 printed on a CPU machine before dml_tf._quiet (one of each).
NOTICES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1795978309.778985    3722 port.cc:153] oneDNN custom operations are on. You may see "
    "slightly different numerical results due to floating-point round-off errors from different "
    "computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n",
    "I0000 00:00:1795978309.852192    3722 cpu_feature_guard.cc:227] This TensorFlow binary is optimized "
    "to use available CPU instructions in performance-critical operations.\n",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.\n",
]
NO_GPU = [
    "I0000 00:00:1795978309.779404    3722 cudart_stub.cc:31] Could not find cuda drivers on your "
    "machine, GPU will not be used.\n",
    "E0000 00:00:1795978313.478011    3722 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA "
    "error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
]
REAL = [
    "E0000 00:00:1795978313.478011    3722 op_kernel.cc:1857] OP_REQUIRES failed: out of memory\n",
    "/x/keras/src/trainers/trainer.py:1: UserWarning: something the user must see\n",
]


def test_notice_filter_keeps_real_lines():
    text = "".join(NOTICES + NO_GPU + REAL)
    assert _quiet.filter_lines(text, _quiet.notice_pattern(gpu_driver=False)) == "".join(REAL)
    # with an NVIDIA driver loaded, a CUDA failure is a real problem: kept
    assert _quiet.filter_lines(text, _quiet.notice_pattern(gpu_driver=True)) == "".join(NO_GPU + REAL)


def test_filtered_stderr_captures_file_descriptor_2(capfd):
    def noisy():
        for line in NOTICES + NO_GPU + REAL:
            os.write(2, line.encode())  # as TensorFlow's C++ code writes, below sys.stderr
        return 42

    assert _quiet.run_with_filtered_stderr(noisy, _quiet.notice_pattern(gpu_driver=False)) == 42
    assert capfd.readouterr().err == "".join(REAL)


def test_unprepared_tfds_folder_warning_is_dropped(caplog):
    with caplog.at_level(logging.WARNING):
        absl_logging.warning("Variant folder %s has no %s", "/d/cifar10/3.0.2", "dataset_info.json")
        absl_logging.warning("Variant folder %s has invalid version %s", "/d/cifar10/x", "x")
    assert [r.getMessage() for r in caplog.records] == ["Variant folder /d/cifar10/x has invalid version x"]


def run_all(*commands, timeout=300):
    """Runs every ``[args]`` from the repository root at once, as a user would:
    TF_CPP_MIN_LOG_LEVEL unset. CompletedProcess list."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = ROOT
    return run_processes(commands, env, timeout)


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    where = tmp_path_factory.mktemp("cli")
    todo = {
        "bad_net": ["-m", "dml_tf.train", "--nets=resnet33", f"--model_dir={where}/a"],
        "bad_enum": ["-m", "dml_tf.train", "--mode=mutual", f"--model_dir={where}/b"],
        "help": ["-m", "dml_tf.train", "--help"],
        "evaluate_no_run": ["-m", "dml_tf.evaluate", f"--model_dir={where}/none"],
        "compare_no_run": ["-m", "dml_tf.compare", f"{where}/none"],
        "tool_no_runs": ["-m", "tools.report", f"--runs_dir={where}/none"],
        "tool_help": ["-m", "tools.report", "-h"],
    }
    return dict(zip(todo, run_all(*todo.values())))


@pytest.mark.parametrize("key,program,message", [
    ("bad_net", "python -m dml_tf.train",
     "--nets: unknown network 'resnet33'; expected one of " + ", ".join(dml_nets.names())
     + ", or keras:NAME (a Keras application)."),
    ("bad_enum", "python -m dml_tf.train", "--mode must be one of dml, independent, distill; got 'mutual'."),
    ("evaluate_no_run", "python -m dml_tf.evaluate", "does not exist"),
    ("compare_no_run", "python -m dml_tf.compare", "does not exist"),
    ("tool_no_runs", "python -m tools.report", "--runs_dir="),
])
def test_a_usage_error_is_one_line_and_a_pointer_to_help(commands, key, program, message):
    proc = commands[key]
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    error, pointer = proc.stderr.splitlines()  # nothing else: no help text, no start-up notices
    assert error.startswith(f"{program}: error: ") and message in error, error
    assert pointer == f"See '{program} --help' for the flags."


def test_help_lists_the_flags_and_their_choices_and_exits_0(commands):
    proc = commands["help"]
    assert (proc.returncode, proc.stderr) == (0, "")
    text = " ".join(proc.stdout.split())  # absl wraps the help text
    assert text.startswith("Trains a Deep Mutual Learning cohort from the command line.")
    nets, dataset = (re.search(rf"--{flag}:(.*?) --\w+:", text).group(1) for flag in ("nets", "dataset"))
    assert all(name in nets for name in dml_nets.names()), nets
    assert all(name in dataset for name in DATASET_DEFAULTS), dataset
    assert "--helpfull" not in text and "--only_check_flags" not in text  # the program's own flags only


def test_tool_help(commands):
    proc = commands["tool_help"]
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith("Our numbers next to the paper's") and "--runs_dir:" in proc.stdout


def test_a_bad_batch_norm_variable_is_one_line_in_a_command_and_typed_in_the_library():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHONPATH=ROOT, DML_TF_BATCH_NORM="fast")
    command, library = run_processes(
        [["-m", "dml_tf.train", "--help"],
         ["-c", "try:\n import dml_tf\nexcept ValueError as error:\n"
                " print(type(error).__module__, type(error).__name__, error)"]], env)
    message = ("environment variable DML_TF_BATCH_NORM='fast': expected one of fused, split "
               "(or unset: chosen by the processor).")
    assert (command.returncode, command.stdout) == (1, "")
    assert command.stderr == f"python -m dml_tf.train: error: {message}\n"  # no traceback, no notices
    assert (library.returncode, library.stdout, library.stderr) == (
        0, f"dml_tf.errors EnvironmentSettingError {message}\n", "")


@pytest.mark.parametrize("orig_argv,argv,expected", [
    (["python", "-m", "dml_tf.train", "--help"], ["-m"], "python -m dml_tf.train"),
    (["python", "-X", "dev", "-m", "tools.benchmark"], ["-m"], "python -m tools.benchmark"),
    (["python", "-m", "pytest", "tests"], ["/v/pytest"], None),
    (["/v/bin/python", "/v/bin/dml-train", "--x"], ["/v/bin/dml-train", "--x"], "dml-train"),
    (["python", "tools/report.py"], ["tools/report.py"], "python tools/report.py"),
    (["python", "my_script.py"], ["my_script.py"], None),
    (["python", "-c", "import dml_tf"], ["-c"], None),
])
def test_command_line_name_tells_dml_tf_commands_from_library_use(orig_argv, argv, expected):
    assert cli.command_line_name(orig_argv, argv) == expected
