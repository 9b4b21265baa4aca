"""End a command's process without running the native libraries' exit-time destructors.

A CUDA build of PyTorch loads cuBLAS, cuBLASLt, cuSPARSELt and ``libtorch_cuda`` at ``import
torch``, even on a machine without a GPU. When the process exits, their static destructors
unregister every embedded GPU binary, and reading those binaries pages ≈ 117 MiB of the libraries'
files into memory: a CPU-only process that never touched CUDA peaks 117 MiB higher in its last
second (``/usr/bin/time -v``'s maximum resident set: 531 vs 651 MiB for ``import torch`` and one
matrix product on torch 2.14.1 + CUDA 13) and spends that second tearing down.

:func:`skip_native_destructors` registers glibc's ``_exit`` as an ``on_exit`` handler. C exit
handlers run after Python's whole finalisation (its ``atexit`` functions, open files flushed and
closed, threads joined) and in the reverse order of registration, so registered after the
libraries were loaded it runs before their destructors and ends the process there, with the exit
status Python chose. What it skips is only native teardown that has nothing left to save.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def skip_native_destructors() -> bool:
    """Register ``_exit`` as the next C exit handler; ``True`` if registered.

    Call it once the command is done (every library it needs is loaded by then). ``False`` and
    nothing changed off Linux or where the C library has no ``on_exit`` (musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        on_exit = libc.on_exit
        exit_now = ctypes.cast(libc._exit, ctypes.c_void_p)
    except (OSError, AttributeError):
        return False
    on_exit.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    on_exit.restype = ctypes.c_int
    # on_exit calls handler(status, arg): _exit(status) takes the first argument and ends the process.
    return on_exit(exit_now, None) == 0
