"""Process-wide settings that make XLA:CPU faster for these networks, each chosen by measurement.

Both change speed, never what is computed beyond floating-point summation order, and both must
be applied before JAX starts its CPU backend; the `modulenet` command applies them first thing.
Measured on a 2-core AMD EPYC (AVX2), batch 500, a ResNet-56-shaped network:

- `reuse_freed_memory`: XLA:CPU allocates every program output with malloc, and with glibc's
  defaults a buffer of a few megabytes is mmap'ed and handed back to the kernel when freed, so
  each module's output is fresh memory whose every page faults on first touch (about 250,000
  faults and 15-20% of the time per network). One arena, a 32 MiB mmap threshold (glibc's
  maximum) and no trimming make malloc reuse the memory instead.
- `prefer_eigen_convolutions`: XLA 0.10 hands 3x3 convolutions with 32 or more channels to
  YNNPACK, which ran them at 57-64 GFLOP/s here against 108-113 GFLOP/s for XLA's own (Eigen)
  convolution; turning the YNNPACK fusion off lifted the whole network from 0.6x to about 0.8x
  of PyTorch eager.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
MEASURED_JAXLIB = ("0.10.",)


def reuse_freed_memory() -> bool:
    """glibc malloc settings (Linux with glibc only). Returns whether they were applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl)
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 2**31 - 1),
                (_M_TOP_PAD, 256 << 20))
    return all(mallopt(option, value) == 1 for option, value in settings)


def prefer_eigen_convolutions(environ=os.environ, jaxlib_version: str | None = None) -> bool:
    """Adds the XLA flag that turns off YNNPACK fusions, unless XLA_FLAGS already sets it.

    Only for the jaxlib releases it was measured on: XLA aborts at start-up on a flag it does not
    know, and another release may choose its kernels differently. Only the CPU backend reads it.
    Returns whether it was added."""
    if jaxlib_version is None:
        from jaxlib.version import __version__ as jaxlib_version
    flags = environ.get("XLA_FLAGS", "")
    if _YNN_FLAG in flags or not jaxlib_version.startswith(MEASURED_JAXLIB):
        return False
    environ["XLA_FLAGS"] = f"{flags} {_YNN_FLAG}=".strip()
    return True


def configure() -> None:
    """Both settings; call before JAX runs anything."""
    reuse_freed_memory()
    prefer_eigen_convolutions()
