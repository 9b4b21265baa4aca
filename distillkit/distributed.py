"""This process's place in a ``torch.distributed`` job, and the few collectives the stages use.

Jobs are launched by ``torchrun`` (or ``distillkit … --nproc N``, which calls the same elastic
launcher): it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` and
:func:`join_world` turns them into a :class:`World`. Without that environment (or with
``WORLD_SIZE=1``) the world is ``World()``: one process, every collective a no-op, so a
single-process run computes exactly what it computed before distributed support existed.

Backends: ``gloo`` on CPU; on CUDA ``nccl`` when every local rank has a GPU of its own, else
``gloo`` (NCCL refuses two ranks on one GPU; gloo reduces CUDA tensors too).
``DISTILLKIT_DIST_BACKEND`` overrides the choice. Barriers and object exchanges always run on a
gloo group on the CPU, so they work whatever the tensor backend.

Every collective has a timeout (:data:`TIMEOUT_ENV`, default :data:`DEFAULT_TIMEOUT_S`): a rank
that dies or hangs makes the others fail with :class:`~distillkit.errors.CollectiveError` naming
their rank instead of waiting forever.

Objects travel without pickle: :meth:`World.all_gather_object` and :meth:`World.broadcast_object`
take JSON values in which tensors may appear anywhere; both go into one safetensors blob (the
JSON in its metadata). A peer can therefore send wrong data but never code, which matters when
ranks on several machines share a rendezvous.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from distillkit import errors
from distillkit.errors import CollectiveError, ConfigError, DistillkitError, RunFailed

#: Seconds a collective may wait for the other ranks before the job fails.
DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "DISTILLKIT_TIMEOUT_S"
BACKEND_ENV = "DISTILLKIT_DIST_BACKEND"
_TENSOR = "__tensor__"
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the job; ``World()`` is the single-process world (every op a no-op).

    ``timeout_s`` bounds every collective; ``group`` is the CPU (gloo) process group used for
    barriers and objects (``None``: the default group is gloo already, or there is no job).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S
    group: Any = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, writes shared files and decides for the job."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's items: ``items[rank], items[rank + size], …`` (all of them in one process)."""
        return list(items[self.rank :: self.size])

    def device(self, requested: torch.device) -> torch.device:
        """The device this rank computes on: an unnumbered ``cuda`` becomes ``cuda:<LOCAL_RANK mod GPUs>``.

        Several ranks per GPU (more local ranks than GPUs) share them round-robin; an explicit
        ``cuda:N`` or ``cpu`` is kept as asked.
        """
        if self.size == 1 or requested.type != "cuda" or requested.index is not None:
            return requested
        return torch.device("cuda", self.local_rank % torch.cuda.device_count())

    def barrier(self) -> None:
        """Wait until every rank arrives (or fail after the timeout, naming the missing ranks)."""
        if self.size == 1:
            return
        import torch.distributed as dist

        self._guard("barrier", lambda: dist.monitored_barrier(self.group, self._timeout(), True))

    def settle(self) -> None:
        """Wait for every rank once a command's work is done, before the process group is left.

        Gloo's worker threads release a finished collective (and the tensors it holds) just after
        its caller has been woken. A rank that finished first could start shutting its interpreter
        down before that; the thread then frees a Python-owned tensor without the interpreter and
        aborts the process ("terminate called without an active exception"), failing a job whose
        results were complete. ``destroy_process_group`` cannot join those threads first once
        ``torch._dynamo`` was imported after the group was made (every ``torch.optim`` optimiser
        imports it; the import keeps references to the default group). A barrier's own work holds
        no tensors, and it returns only after the peer arrived, long after that release.
        """
        if self.size == 1:
            return
        import torch.distributed as dist

        self._guard("barrier", lambda: dist.barrier(group=self.group))

    def all_reduce_mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Replace each tensor by its mean over the ranks, in place (CPU or CUDA tensors).

        Tensors of one device and dtype are reduced as one flat buffer (one collective).
        """
        if self.size == 1 or not tensors:
            return
        import torch.distributed as dist

        buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for tensor in tensors:
            buckets.setdefault((tensor.device, tensor.dtype), []).append(tensor)
        for (device, _), items in buckets.items():
            flat = torch.cat([t.detach().reshape(-1) for t in items])
            group = self.group if device.type == "cpu" else None
            self._guard("all_reduce", lambda f=flat, g=group: dist.all_reduce(f, group=g))
            flat /= self.size
            offset = 0
            for t in items:
                t.detach().copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def all_reduce_max(self, value: float) -> float:
        """The largest ``value`` over the ranks."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        buffer = torch.tensor([value], dtype=torch.float64)
        op = dist.ReduceOp.MAX
        self._guard("all_reduce", lambda: dist.all_reduce(buffer, op=op, group=self.group))
        return float(buffer.item())

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order; JSON values, tensors allowed anywhere inside."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        payload = _encode(obj)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
        mine = torch.tensor([payload.numel()], dtype=torch.int64)
        self._guard("all_gather", lambda: dist.all_gather(sizes, mine, group=self.group))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[: payload.numel()] = payload
        parts = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.size)]
        self._guard("all_gather", lambda: dist.all_gather(parts, padded, group=self.group))
        return [_decode(part[: int(size.item())]) for part, size in zip(parts, sizes, strict=True)]

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (the others' argument is ignored)."""
        if self.size == 1:
            return obj
        import torch.distributed as dist

        payload = _encode(obj) if self.rank == src else torch.empty(0, dtype=torch.uint8)
        size = torch.tensor([payload.numel()], dtype=torch.int64)
        self._guard("broadcast", lambda: dist.broadcast(size, src, group=self.group))
        buffer = payload if self.rank == src else torch.empty(int(size.item()), dtype=torch.uint8)
        self._guard("broadcast", lambda: dist.broadcast(buffer, src, group=self.group))
        return _decode(buffer)

    def main_decides(self, decide: Callable[[], T]) -> T:
        """Run ``decide`` on rank 0 only and give its answer to every rank.

        When it raises a :class:`DistillkitError`, every rank raises the same error (type,
        message, hint), so bad input stops the whole job with one message instead of leaving
        the other ranks waiting for rank 0.
        """
        if self.size == 1:
            return decide()
        outcome: dict[str, Any] = {}
        if self.is_main:
            try:
                outcome = {"value": decide()}
            except DistillkitError as exc:
                outcome = {"error": type(exc).__name__, "message": str(exc), "hint": exc.hint}
                self.broadcast_object(outcome)
                raise
        outcome = self.broadcast_object(outcome)
        if "error" in outcome:
            kind = getattr(errors, outcome["error"], RunFailed)
            kind = kind if isinstance(kind, type) and issubclass(kind, DistillkitError) else RunFailed
            raise kind(outcome["message"], hint=outcome["hint"])
        return outcome["value"]

    def _timeout(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.timeout_s)

    def _guard(self, what: str, call: Callable[[], object]) -> None:
        """Run one collective; a timeout or a vanished peer becomes a one-line CollectiveError."""
        try:
            call()
        except RuntimeError as exc:  # DistBackendError and gloo's timeouts are RuntimeErrors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CollectiveError(
                f"rank {self.rank}: {what} across {self.size} ranks failed ({first[:200]})",
                hint=f"another rank failed or hangs; collectives wait {self.timeout_s:g} s ({TIMEOUT_ENV})",
            ) from None


def timeout_from_env() -> float:
    """:data:`TIMEOUT_ENV` in seconds, or the default; a bad value is a ConfigError."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds")
    return value


def in_job() -> bool:
    """Whether torchrun's environment names a job of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1") or "1") > 1


def choose_backend(device: str = "auto") -> str:
    """``gloo`` on CPU; ``nccl`` when CUDA is used and each local rank can have its own GPU."""
    forced = os.environ.get(BACKEND_ENV)
    if forced:
        if forced not in ("gloo", "nccl"):
            raise ConfigError(f"{BACKEND_ENV}={forced!r} is not gloo or nccl")
        return forced
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or "1")
    if cuda and torch.cuda.is_available() and local_size <= torch.cuda.device_count():
        return "nccl"
    return "gloo"


def join_world(timeout_s: float | None = None, device: str = "auto") -> World:
    """The world of torchrun's environment (``World()`` without one); initialises the process group.

    ``device`` is the run's device setting: it picks the backend (:func:`choose_backend`) and,
    with NCCL, makes ``cuda:<LOCAL_RANK mod GPUs>`` this process's current CUDA device.
    Joining twice in one process returns the same world.
    """
    if not in_job():
        return World()
    import torch.distributed as dist

    timeout = timeout_from_env() if timeout_s is None else timeout_s
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = choose_backend(device)
        if backend == "nccl":
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        try:
            _init_process_group(backend, rank, size, datetime.timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as exc:
            raise RunFailed(
                f"rank {rank}: cannot join the job of {size} processes ({str(exc).splitlines()[0][:200]})",
                hint="check MASTER_ADDR/MASTER_PORT (or the rendezvous endpoint) and that every node started",
            ) from None
    backend = dist.get_backend()
    group = None if backend == "gloo" else _cpu_group(timeout)
    return World(rank=rank, size=size, local_rank=local_rank, timeout_s=timeout, group=group)


def _init_process_group(backend: str, rank: int, size: int, timeout: datetime.timedelta) -> None:
    """``env://`` initialisation, with a store prefix per torchelastic restart attempt.

    After a ``--max-restarts`` restart the elastic agent hands the workers the same store
    (``MASTER_PORT``) again; without a fresh prefix the new ranks read the dead attempt's
    gloo addresses and fail to connect ("Connection refused").
    """
    import torch.distributed as dist

    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        dist.init_process_group(backend, init_method="env://", timeout=timeout)
        return
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent serves the store
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        size,
        is_master=not agent and rank == 0,
        timeout=timeout,
        multi_tenant=not agent,
    )
    prefixed = dist.PrefixStore(f"distillkit/attempt-{attempt}", store)
    dist.init_process_group(backend, store=prefixed, rank=rank, world_size=size, timeout=timeout)


_CPU_GROUPS: dict[float, Any] = {}


def _cpu_group(timeout: float) -> Any:
    """One gloo group per process for barriers and objects beside an NCCL default group."""
    import torch.distributed as dist

    if timeout not in _CPU_GROUPS:
        _CPU_GROUPS[timeout] = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout))
    return _CPU_GROUPS[timeout]


def leave_world(world: World) -> None:
    """Tear the process group down (nothing to do for ``World()``)."""
    if world.size == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _CPU_GROUPS.clear()


def _encode(obj: Any) -> torch.Tensor:
    """A JSON value with tensors inside → one safetensors blob as a uint8 tensor."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}

    def lift(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = value.detach().to("cpu", copy=True).contiguous()
            return {_TENSOR: name}
        if isinstance(value, dict):
            return {str(k): lift(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [lift(v) for v in value]
        return value

    text = json.dumps(lift(obj), allow_nan=True)
    blob = save(tensors, metadata={"json": text})
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)


def _decode(payload: torch.Tensor) -> Any:
    """Inverse of :func:`_encode` (tuples come back as lists, as JSON has them)."""
    import struct

    from safetensors.torch import load

    blob = payload.numpy().tobytes()
    tensors = load(blob)
    (length,) = struct.unpack("<Q", blob[:8])
    text = json.loads(blob[8 : 8 + length])["__metadata__"]["json"]

    def lower(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {_TENSOR}:
                return tensors[value[_TENSOR]]
            return {k: lower(v) for k, v in value.items()}
        if isinstance(value, list):
            return [lower(v) for v in value]
        return value

    return lower(json.loads(text))
