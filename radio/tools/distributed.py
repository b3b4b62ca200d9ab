"""The one ``torchrun`` set-up shared by ``radio extract`` and the examples.

``torchrun`` starts one process per GPU (or per CPU share) and tells each its place through the
environment variables ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. :func:`distributed_context` reads
them, picks the process's device (``cuda:LOCAL_RANK`` on GPUs), joins the process group (NCCL on
CUDA, gloo otherwise), and leaves it on exit. Without ``torchrun`` (no ``WORLD_SIZE``, or 1) it only
picks the device, so the same code runs in one process::

    with distributed_context(args.device) as ctx:
        shard = items[ctx.rank::ctx.world_size]
        ...
        everything = ctx.all_gather_object(partial_result)
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, List, Mapping, Optional

import torch
import torch.distributed as dist

__all__ = [
    "DEFAULT_TIMEOUT",
    "DeviceError",
    "DistributedContext",
    "TorchrunEnv",
    "distributed_context",
    "rank_zero_first",
    "resolve_device",
    "torchrun_env",
]

_logger = logging.getLogger(__name__)

#: How long a process waits for the others at a collective (ranks may finish far apart).
DEFAULT_TIMEOUT = datetime.timedelta(hours=24)


class DeviceError(ValueError):
    """A requested device that is not a device name, or that this machine does not have."""


@dataclass(frozen=True)
class TorchrunEnv:
    """This process's place in a ``torchrun`` job (``world_size == 1`` without ``torchrun``).

    Attributes:
        rank: global process index, ``0 <= rank < world_size``.
        world_size: number of processes.
        local_rank: process index on this machine (selects the GPU).
    """

    rank: int
    world_size: int
    local_rank: int

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"The environment variable {name}={value!r} is not an integer; torchrun sets it, "
                         "unset it to run a single process.") from None


def torchrun_env(environ: Optional[Mapping[str, str]] = None) -> TorchrunEnv:
    """Read ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (as ``torchrun`` sets them).

    Args:
        environ: the environment (default: ``os.environ``).

    Raises:
        ValueError: a variable is not an integer, or ``RANK`` is outside ``[0, WORLD_SIZE)``.
    """
    env = os.environ if environ is None else environ
    world = _env_int(env, "WORLD_SIZE", 1)
    if world <= 1:
        return TorchrunEnv(0, 1, 0)
    rank = _env_int(env, "RANK", 0)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world}); start the processes with torchrun.")
    return TorchrunEnv(rank, world, _env_int(env, "LOCAL_RANK", 0))


def resolve_device(requested: Optional[str] = None, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """The device to run on, checked to exist on this machine.

    Args:
        requested: a device name (``'cpu'``, ``'cuda'``, ``'cuda:1'``, ``'mps'``, ...) or ``None`` for
            CUDA when available, else CPU.
        local_rank: this process's index on the machine; under ``torchrun`` a plain ``'cuda'``
            becomes ``cuda:local_rank``.
        distributed: whether this is one of several ``torchrun`` processes.

    Raises:
        DeviceError: ``requested`` is not a device name, or names a device this machine lacks.
    """
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"Unknown device {requested!r}: use 'cpu', 'cuda' or 'cuda:N'.") from None
    if device.type == "meta":
        raise DeviceError("The 'meta' device holds no data; use 'cpu' or 'cuda'.")
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    if device.type == "mps":
        backend = getattr(torch.backends, "mps", None)
    is_available = getattr(backend, "is_available", None)
    if is_available is None or not is_available():
        raise DeviceError(f"Device {requested!r} is not available: this PyTorch build sees no "
                          f"{device.type.upper()} device here; use 'cpu'.")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if device.index is None and distributed:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= count:
            raise DeviceError(f"Device {str(device)!r} does not exist: this machine has {count} CUDA "
                              f"device(s), cuda:0 to cuda:{count - 1}.")
    return device


@dataclass(frozen=True)
class DistributedContext:
    """A joined ``torchrun`` process group (or a single process) and its device.

    Attributes:
        rank, world_size, local_rank: see :class:`TorchrunEnv`.
        device: this process's device.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (which logs, reports and writes shared files)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op for a single process)."""
        if self.distributed:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> List[Any]:
        """Every process's ``obj``, in rank order (``[obj]`` for a single process)."""
        if not self.distributed:
            return [obj]
        gathered: List[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


@contextlib.contextmanager
def distributed_context(device: Optional[str] = None,
                        timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> Iterator[DistributedContext]:
    """Join the ``torchrun`` process group for the duration of the block, then leave it.

    Args:
        device: the requested device (see :func:`resolve_device`).
        timeout: how long collectives wait for the slowest process.

    Yields:
        The :class:`DistributedContext` of this process.

    Raises:
        DeviceError: see :func:`resolve_device` (raised before any group is joined).
    """
    env = torchrun_env()
    dev = resolve_device(device, env.local_rank, env.distributed)
    joined = False
    if env.distributed and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timeout)
        joined = True
        _logger.debug("rank %d joined a %s process group of %d", env.rank, backend, env.world_size)
    try:
        yield DistributedContext(env.rank, env.world_size, env.local_rank, dev)
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def rank_zero_first(ctx: DistributedContext) -> Iterator[None]:
    """Run the block on rank 0 first, then (after a barrier) on the other ranks.

    For work whose result rank 0 caches on disk (a download, a text classifier) and the others reuse.
    """
    if not ctx.is_main:
        ctx.barrier()
    yield
    if ctx.is_main:
        ctx.barrier()
