"""glibc's heap, set for training: freed tensor memory is kept and reused instead of handed back to the kernel.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on
free, so the next tensor of that size faults in and zeroes its pages again. An RL step allocates many such
tensors (a chunk of fp32 logits, the embedding's gradient, the fp32 master gradients): at 8 prompts × 2 × 24
tokens on a 2-core VM that was 286,000 page faults a step and a quarter of the update (benchmarks/RESULTS.md
"Heap: freed memory kept"). :func:`keep_freed_memory` turns mmap off for ``malloc`` (large blocks come from the
heap and are reused) and automatic trimming off; :func:`warprl.precision.release_memory` still trims explicitly.
The price is what the heap keeps: a peak RSS 0.11 GiB higher over 40 RL steps, and blocks a later allocation cannot fit
into (glibc's aligned allocations ask for a little more than the block they freed); across WARP's runs the peak
grew with M until the sequential executor trimmed after each run (RESULTS.md "WARP memory"). This is what
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=…`` would do from the environment, set from inside the process (as a
launcher such as ``torch.backends.xeon.run_cpu`` sets jemalloc's equivalent). Not glibc (macOS, musl): nothing.
"""

from __future__ import annotations

import ctypes
import os

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
OPT_OUT = "WARPRL_GLIBC_HEAP"  # =default leaves glibc as it is


def _libc():
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory (see the module's docstring); True where it was set. The
    environment variable ``WARPRL_GLIBC_HEAP=default`` leaves glibc's defaults alone."""
    if os.environ.get(OPT_OUT, "") == "default":
        return False
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1
    # M_TRIM_THRESHOLD takes an int in mallopt's signature; glibc stores it as size_t. INT_MAX (2 GiB) is far
    # above what one free leaves at the top of the heap between explicit trims.
    return ok and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
