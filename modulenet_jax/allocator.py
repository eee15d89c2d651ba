"""glibc malloc settings for the CPU backend: keep freed activation buffers for reuse.

XLA:CPU allocates every program output with malloc. With glibc's defaults a buffer of a few
megabytes or more is mmap'ed and returned to the kernel when freed, so the next module's
output is fresh memory and every page of it faults on first touch: measured on a 2-core CPU,
a ResNet-56-shaped network over 500 images took about 250,000 page faults and a fifth of its
time in the kernel. One arena, a 32 MiB mmap threshold (glibc's maximum) and no trimming make
malloc hand the same memory back instead. Results do not change; only speed does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8


def reuse_freed_memory() -> bool:
    """Applies the settings (Linux with glibc only; call before JAX starts its threads).
    Returns whether they were applied."""
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
