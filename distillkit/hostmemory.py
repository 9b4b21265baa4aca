"""Keep freed tensor memory in the C heap, so the CPU path does not page-fault on every step.

glibc's ``malloc`` hands allocations above its mmap threshold (128 KiB, rising to at most
32 MiB as blocks are freed) to the kernel with ``mmap`` and returns them with ``munmap`` on
``free``. A training step of these small networks allocates and frees the same few-MiB
activation tensors dozens of times, so every step pays for fresh zeroed pages: on a 2-core
machine a ConvNetW32 expert step (batch 256) ran 1.9× faster, an evaluation step (100 images)
1.6× faster, once freed blocks stayed in the heap (docs/performance.md, "Where the CPU time
went").
PyTorch's CPU allocator is plain ``malloc``; jemalloc or tcmalloc under ``LD_PRELOAD`` do the
same job, but need a library and a wrapper around every command. ``mallopt`` needs neither. (Any
other program gets the same settings from the environment: ``GLIBC_TUNABLES`` set to
:func:`glibc_tunables`, which is how ``examples/benchmarks/reference_bench.py --reference-allocator
heap`` runs the reference.)

What changes: every block comes from the heap (mmap'd blocks off: glibc caps its mmap threshold at
32 MiB, exactly one batch-256 activation of a ConvNetW32), and the heap's free top is returned to
the kernel only past 1 GiB. Numbers are unchanged (allocation never affects arithmetic); peak
memory is the live peak plus heap fragmentation, measured up to +28 % for an expert process
(:func:`return_free_memory` gives free pages back where a stage ends).
``DISTILLKIT_MALLOC=system`` leaves glibc as it is (e.g. when a faster allocator is preloaded).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

ENV = "DISTILLKIT_MALLOC"
# mallopt parameters (<malloc.h>) and the values set: no mmap'd blocks, trim past 1 GiB, grow by 64 MiB.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 64 << 20))
# The same parameters as glibc tunables (glibc.malloc.<name>), for programs that never call mallopt.
_TUNABLE_NAMES = {M_MMAP_MAX: "mmap_max", M_TRIM_THRESHOLD: "trim_threshold", M_TOP_PAD: "top_pad"}

_state = {"mode": "system"}


def keep_freed_memory() -> str:
    """Apply the heap settings above once per process; return the allocator mode now in effect.

    ``"heap"`` when applied, ``"system"`` when switched off by ``DISTILLKIT_MALLOC=system``, off
    Linux or when the C library is not glibc (musl has no ``mallopt``). Safe to call repeatedly.
    """
    if _state["mode"] == "heap":
        return "heap"
    wanted = os.environ.get(ENV, "heap").strip().lower()
    if wanted not in ("heap", "system"):
        # An environment variable cannot take a config error's one line at this point; the
        # safe reading of a typo is "leave the allocator alone".
        wanted = "system"
    if wanted == "heap" and sys.platform.startswith("linux"):
        libc = _glibc()
        if libc is not None and all(libc.mallopt(param, value) == 1 for param, value in SETTINGS):
            _state["mode"] = "heap"
    return _state["mode"]


def return_free_memory() -> None:
    """Give the heap's wholly free pages back to the kernel (``malloc_trim``), in heap mode only.

    For stage boundaries where much memory was just freed and is not needed again soon (the
    real images once distillation's start set is drawn): without it the kept heap would carry
    that memory into the next stage's peak.
    """
    if _state["mode"] != "heap":
        return
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def glibc_tunables() -> str:
    """:data:`SETTINGS` as a ``GLIBC_TUNABLES`` value: this heap for a process that never calls mallopt."""
    return ":".join(f"glibc.malloc.{_TUNABLE_NAMES[param]}={value}" for param, value in SETTINGS)


def allocator_mode() -> str:
    """What :func:`keep_freed_memory` set in this process (``"heap"``) or ``"system"``."""
    return _state["mode"]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """This process's C library if it has glibc's ``mallopt`` and ``malloc_trim``, else ``None``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc
