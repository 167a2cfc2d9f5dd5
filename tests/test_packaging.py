"""pyproject.toml: an installable package (``pip install .`` / ``pip install -e .``) whose
requirements are requirements.txt's and whose console scripts exist."""

import fnmatch
import importlib
import os
import re
import tomllib

import dml_tf
from paths import ROOT



def pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_dependencies_are_requirements_txt():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        requirements = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    project = pyproject()["project"]
    assert sorted(project["dependencies"] + project["optional-dependencies"]["test"]) == sorted(requirements)


def test_version_is_the_packages():
    config = pyproject()
    assert "version" in config["project"]["dynamic"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dml_tf.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", dml_tf.__version__)


def test_console_scripts_point_at_the_entry_points():
    scripts = pyproject()["project"]["scripts"]
    assert sorted(scripts) == ["dml-compare", "dml-evaluate", "dml-predict", "dml-study", "dml-train"]
    for script, target in scripts.items():
        module, function = target.split(":")
        assert module == "dml_tf." + script.split("-")[1]
        assert callable(getattr(importlib.import_module(module), function))


def test_every_source_folder_is_a_packaged_package():
    # setuptools' find_packages with these patterns takes every folder with an __init__.py.
    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    for folder, _, files in os.walk(os.path.join(ROOT, "dml_tf")):
        if any(f.endswith(".py") for f in files):
            package = os.path.relpath(folder, ROOT).replace(os.sep, ".")
            assert "__init__.py" in files, folder
            assert any(fnmatch.fnmatchcase(package, pattern) for pattern in include), package
