"""The documentation tells the truth: README pointers resolve, documented flags exist."""

import glob
import os
import re

from absl import flags

from dml_tf import train  # noqa: F401  (defines the flags)
from paths import ROOT



def _readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def _section(text, title):
    start = text.index(f"**{title}.**")
    end = text.find("\n## ", start)
    return text[start:end if end >= 0 else None]


def test_readme_pointers_in_the_code_name_a_readme_section():
    """A docstring that sends the reader to the README names a section the README has."""
    readme = _readme()
    pointers = []
    for path in glob.glob(os.path.join(ROOT, "dml_tf", "**", "*.py"), recursive=True):
        with open(path) as f:
            text = " ".join(f.read().split())
        for match in re.finditer(r"README[^.]*", text):
            pointers.append((os.path.relpath(path, ROOT), match.group(0)))
    assert pointers
    for path, pointer in pointers:
        titles = re.findall(r'"([^"]+)"', pointer)
        assert titles, f"{path}: {pointer!r} names no README section"
        for title in titles:
            assert f"**{title}.**" in readme or f"## {title}" in readme, (path, title)


def test_paper_vs_code_table_flags_exist():
    """Every flag in the README's "Paper vs original code" section is a dml_tf.train flag."""
    section = _section(_readme(), "Paper vs original code")
    assert section.count("\n|") >= 10  # the table: one row per departure
    names = set(re.findall(r"`--(?:no)?([a-z0-9_]+)", section))
    assert {"peer_reduction", "member_batches", "rmsprop_momentum", "rmsprop_epsilon", "ema_decay",
            "ema_batch_norm", "bn_momentum", "feature_l2_weight"} <= names
    for name in names:
        assert name in flags.FLAGS, name
