"""Start real ``torch.distributed`` jobs inside a test: N spawned processes, gloo on loopback.

Each process gets torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) and one CPU thread, calls ``fn(*args)`` and sends back its
answer (or the error it raised, as text). ``fn`` must be importable (a module-level function).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import traceback
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, size: int, port: int, env: dict[str, str], fn: Callable, args: tuple, answers) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(size),
            "LOCAL_WORLD_SIZE": str(size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            **env,
        }
    )
    import torch

    torch.set_num_threads(1)
    try:
        answers.put((rank, "ok", fn(*args)))
    except BaseException as exc:  # report everything, the test decides
        answers.put((rank, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def run_ranks(
    fn: Callable, *args: Any, size: int = 2, env: dict[str, str] | None = None, timeout: float = 60
):
    """``[(status, answer)]`` of each rank in rank order; status is ``"ok"`` or ``"error"``."""
    ctx = mp.get_context("spawn")
    answers = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(rank, size, port, env or {}, fn, args, answers))
        for rank in range(size)
    ]
    for proc in procs:
        proc.start()
    results: dict[int, tuple[str, Any]] = {}
    try:
        for _ in range(size):
            rank, status, answer = answers.get(timeout=timeout)
            results[rank] = (status, answer)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    return [results[r] for r in range(size)]
