"""The command lines of dml_tf (``python -m dml_tf.train`` / ``evaluate`` / ``compare``,
the ``dml-*`` console scripts and ``tools/``): absl apps that answer bad input in one line.

:func:`run` is ``absl.app.run`` except that

* a usage error (``app.UsageError`` raised by ``main``, or a flag that does not parse)
  prints ``PROG: error: MESSAGE`` and ``See 'PROG --help' for the flags.`` on stderr and exits with
  the error's status (1), instead of the whole help followed by the message;
* ``--help`` (``-h``, ``-?``, ``--helpshort``) prints the program's docstring and its
  own flags on stdout and exits 0, as does ``--helpfull`` with every module's flags
  (absl exits 1 after help, and lists no flags under a console script).
"""

import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
HELP = ("-h", "-?", "-help", "--help", "-helpshort", "--helpshort")
HELPFULL = ("-helpfull", "--helpfull")


def program_name():
    """How the user started this program: ``python -m dml_tf.train``, ``python
    tools/report.py`` or a console script's name (``dml-train``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return f"python -m {spec.name.removesuffix('.__main__')}"
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "program"
    return f"python {argv0}" if argv0.endswith(".py") else os.path.basename(argv0)


def command_line_name(orig_argv=None, argv=None):
    """This process's program name when it was started as one of dml_tf's command lines
    (``python -m dml_tf.X`` or ``tools.X``, a ``dml-*`` console script, ``python
    tools/X.py``), else ``None`` (a library use). Readable while the program is still
    importing dml_tf, before :func:`program_name` knows it."""
    orig_argv = list(getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv)
    argv = list(sys.argv if argv is None else argv)
    if "-m" in orig_argv[1:-1]:
        module = orig_argv[orig_argv.index("-m", 1) + 1]
        return f"python -m {module}" if module.split(".")[0] in ("dml_tf", "tools") else None
    argv0 = argv[0] if argv else ""
    if os.path.basename(argv0).startswith("dml-"):
        return os.path.basename(argv0)
    if argv0.endswith(".py") and os.path.basename(os.path.dirname(os.path.abspath(argv0))) == "tools":
        return f"python {argv0}"
    return None


def fail(message, exitcode=1, prog=None, flags_hint=True):
    """Prints the one-line usage error (and, with ``flags_hint``, where the flags are
    listed) and exits with ``exitcode``."""
    prog = prog or program_name()
    sys.stdout.flush()
    hint = f"See '{prog} --help' for the flags.\n" if flags_hint else ""
    sys.stderr.write(f"{prog}: error: {message}\n{hint}")
    sys.stderr.flush()
    sys.exit(exitcode)


def help_text(doc, modules, full=False):
    """``doc`` followed by the flags the given modules define (all flags if ``full``)."""
    text = (doc or f"USAGE: {program_name()} [flags]\n").strip("\n") + "\n"
    if full:
        flag_help = FLAGS.get_help()
    else:
        defined = FLAGS.flags_by_module_dict()
        flag_help = "\n".join(FLAGS.module_help(m) for m in dict.fromkeys(modules) if m in defined)
    if flag_help:
        text += "\nflags:\n" + flag_help + "\n"
    return text


def _parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as error:
        fail(str(error).strip())


def run(main, doc=None, argv=None):
    """Runs ``main(argv)`` as an absl app (see the module docstring).

    ``doc``: the help's text (default: the ``__main__`` module's docstring).
    """
    argv = list(sys.argv if argv is None else argv)
    options = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    if any(arg in HELP + HELPFULL for arg in options):
        if doc is None:
            doc = getattr(sys.modules.get("__main__"), "__doc__", None)
        app.define_help_flags()  # so --helpfull lists them too
        modules = (argv[0], main.__module__)
        sys.stdout.write(help_text(doc, modules, full=any(arg in HELPFULL for arg in options)))
        sys.exit(0)

    def checked_main(args):
        try:
            return main(args)
        except app.UsageError as error:
            fail(str(error), error.exitcode)

    app.run(checked_main, argv=argv, flags_parser=_parse_flags)
