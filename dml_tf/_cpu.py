"""The processor's instruction sets, as /proc/cpuinfo and oneDNN's cap name them.

Imported by ``dml_tf.nets.batch_norm`` (which training forward is fast here) and
``tools/_cpu.py`` (the benchmarks' header). Reads no TensorFlow.
"""

# ONEDNN_MAX_CPU_ISA values that allow more than AVX2 ("ALL", or an AVX-512 / AVX10 / AMX name).
_WIDER_THAN_AVX2 = ("ALL", "AVX512", "AVX10", "AMX")


def read_cpuinfo(path="/proc/cpuinfo"):
    """``(model name or None, set of flags)`` of the first processor in ``path``
    (ARM's ``Features`` count as flags; no file: ``(None, set())``)."""
    model, cpu_flags = None, set()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key in ("flags", "features") and not cpu_flags:
                    cpu_flags = set(value.split())
    except OSError:
        pass
    return model, cpu_flags


def onednn_at_most_avx2(cpu_flags, environ):
    """Whether oneDNN runs at most AVX2 kernels: an x86 processor (``avx2`` among its
    flags) without AVX-512, or one whose ``ONEDNN_MAX_CPU_ISA`` caps it at AVX2 or
    below. False where the flags are unknown or not x86's."""
    if "avx2" not in cpu_flags:
        return False
    cap = environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap and not cap.startswith(_WIDER_THAN_AVX2):
        return True
    return "avx512f" not in cpu_flags
