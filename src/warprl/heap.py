"""glibc's heap, set for training: freed tensor memory is kept and reused instead of handed back to the kernel.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on
free, so the next tensor of that size faults in and zeroes its pages again. An RL step allocates many such
tensors (a chunk of fp32 logits, the embedding's gradient, the fp32 master gradients): at 8 prompts × 2 × 24
tokens on a 2-core VM that was 286,000 page faults a step and a quarter of the update (benchmarks/RESULTS.md
"Heap: freed memory kept"). :func:`keep_freed_memory` turns mmap off for ``malloc`` (large blocks come from the
heap and are reused) and automatic trimming off; :func:`warprl.precision.release_memory` still trims explicitly.
The price is what the heap keeps: blocks a later allocation cannot fit
into (glibc's aligned allocations ask for a little more than the block they freed); across WARP's runs the peak
grew with M until the sequential executor trimmed after each run (RESULTS.md "WARP memory"). This is what
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=…`` would do from the environment, set from inside the process (as a
launcher such as ``torch.backends.xeon.run_cpu`` sets jemalloc's equivalent). Not glibc (macOS, musl): nothing.

What the heap may keep is bounded: a simple loop of 64 + 32 MiB tensors grew the heap by 64 MiB a round without
end (tests/test_heap.py), so a watcher thread trims it (``malloc_trim``) whenever the free memory it holds
passes both :data:`MAX_FREE_BYTES` and what is in use.

It is **opt-in** (``WARPRL_GLIBC_HEAP=kept``): with the watcher, the RL step ran 1.14× faster at 8 × 2 × 24 but
0.86× at 16 × 4 × 64, where the free memory after a backward passes the bound and the watcher trims inside
every step, faulting more pages in than glibc's own defaults do (RESULTS.md "Heap: …, 16x4x64 over 7 steps").
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
ENV_VAR = "WARPRL_GLIBC_HEAP"  # =kept turns the kept heap on (opt-in)


def _libc():
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None
    except OSError:
        return None


# Free memory the heap may hold before the watcher trims it, or as much as is in use if that is more. An RL
# step of SmolLM2-135M at 8 × 2 × 24 held up to 1.1 GiB free beside 2.5–3.4 GiB in use; the watcher must not
# trim that (a bound of 1 GiB or half the use did, and took the whole gain back: RESULTS.md "Heap: …").
MAX_FREE_BYTES = 2 << 30
WATCH_INTERVAL_S = 1.0
_watcher: threading.Thread | None = None


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc >= 2.33): byte counts over all arenas."""

    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_info() -> MallInfo2 | None:
    """glibc's heap figures now (``uordblks`` in use, ``fordblks`` free, ``hblkhd`` in mmapped blocks), or None."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2()


def trim() -> bool:
    """Give the free pages glibc's heap holds back to the system (``malloc_trim``); False where not glibc."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def trim_if_hoarding(max_free: int = MAX_FREE_BYTES) -> bool:
    """:func:`trim` when the heap holds more free memory than ``max_free`` bytes and than it has in use;
    True where it trimmed."""
    info = heap_info()
    if info is None or info.fordblks <= max(max_free, info.uordblks):
        return False
    return trim()


def _watch(interval: float) -> None:
    while True:
        time.sleep(interval)
        trim_if_hoarding()


def kept() -> bool:
    """Whether this process keeps freed memory (:func:`keep_freed_memory` set it)."""
    return _watcher is not None


def keep_freed_memory(enabled: bool | None = None) -> bool:
    """Set glibc's malloc to keep freed memory and start the watcher that bounds it (see the module's
    docstring); True where it was set. Opt-in: ``enabled=None`` (what the `warprl` command passes) follows the
    environment, ``WARPRL_GLIBC_HEAP=kept``; anything else leaves glibc's defaults alone."""
    global _watcher
    if enabled is None:
        enabled = os.environ.get(ENV_VAR, "") == "kept"
    libc = _libc()
    if not enabled or libc is None or not hasattr(libc, "mallinfo2"):  # mallinfo2: the watcher's measure
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # M_TRIM_THRESHOLD takes an int in mallopt's signature; glibc stores it as size_t. INT_MAX (2 GiB): the
    # watcher, not a free at the top of the heap, decides when to trim.
    if libc.mallopt(M_MMAP_MAX, 0) != 1 or libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) != 1:
        return False
    if _watcher is None:
        _watcher = threading.Thread(target=_watch, args=(WATCH_INTERVAL_S,), name="warprl-heap", daemon=True)
        _watcher.start()
    return True
