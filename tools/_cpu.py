"""The processor a benchmark ran on: model, vector extensions, instruction-set caps.

Speed ratios between TensorFlow and PyTorch depend on the processor's vector
extensions (oneDNN picks its kernels for the widest one present), so ``tools.benchmark``
and ``tools.profile_step`` print and store them. ``describe()`` reads /proc/cpuinfo's
model name and flags (ARM: ``Features``) and the variables that cap the instruction set
the libraries use: ``ONEDNN_MAX_CPU_ISA`` (oneDNN, in TensorFlow and PyTorch) and
``ATEN_CPU_CAPABILITY`` (PyTorch's own kernels). With a cap set, e.g. AVX2 on an
AVX-512 machine, the run emulates an older processor's kernels (caches and clocks stay
the machine's).
"""

import os
import platform

from dml_tf._cpu import read_cpuinfo

VECTOR_EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                     "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "asimd", "sve")
CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def describe(path="/proc/cpuinfo", environ=None):
    """``{"model", "vector_extensions": [the VECTOR_EXTENSIONS present], "isa_caps":
    {variable: value}}`` (``vector_extensions`` is None where ``path`` lists no flags)."""
    environ = os.environ if environ is None else environ
    model, cpu_flags = read_cpuinfo(path)
    return {"model": model or platform.processor() or platform.machine(),
            "vector_extensions": ([flag for flag in VECTOR_EXTENSIONS if flag in cpu_flags]
                                  if cpu_flags else None),
            "isa_caps": {name: environ[name] for name in CAP_VARIABLES if environ.get(name)}}


def header(description):
    """One line, e.g. ``CPU: Intel(R) Xeon(R); vector extensions: avx2 fma avx512f;
    instruction set capped: ONEDNN_MAX_CPU_ISA=AVX2``."""
    extensions = description["vector_extensions"]
    caps = description["isa_caps"]
    return (f"CPU: {description['model']}; vector extensions: "
            f"{'unknown' if extensions is None else ' '.join(extensions) or 'none'}; "
            + ("instruction set capped: " + ", ".join(f"{k}={v}" for k, v in caps.items())
               if caps else "no instruction-set cap"))
