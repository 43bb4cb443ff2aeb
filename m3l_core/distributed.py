"""Small DDP helpers that also work, as no-ops, in a plain single process.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_from_env`
reads them and starts NCCL on CUDA or gloo on CPU. Without those variables
nothing is initialised and every helper behaves as rank 0 of 1.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    """True when the environment carries a multi-process launch (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> DistInfo:
    """Initialise the process group from torchrun's env vars, if present.

    ``device``: "auto" picks CUDA when available, else CPU. With CUDA the backend
    is NCCL and each rank uses ``cuda:LOCAL_RANK``; on CPU it is gloo. In a
    single process (no ``WORLD_SIZE`` > 1) nothing is initialised.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if launched_by_torchrun() and not is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        log.info("initialised %s process group: rank %d of %d", backend, get_rank(), get_world_size())
    dev = torch.device(f"cuda:{local_rank}") if device == "cuda" else torch.device("cpu")
    return DistInfo(rank=get_rank(), world_size=get_world_size(), local_rank=local_rank, device=dev)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place and return it; unchanged in a single process.

    NCCL needs CUDA tensors, so with the NCCL backend a CPU tensor is moved to
    the current CUDA device for the reduction and copied back.
    """
    if not is_initialized() or get_world_size() == 1:
        return t
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        tmp = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(tmp, op=dist.ReduceOp.SUM)
        t.copy_(tmp.cpu())
        return t
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class ShardSampler(torch.utils.data.Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``range(n)``: every sample exactly once over all ranks.

    Unlike ``DistributedSampler`` it never pads by repeating samples, so sums of
    per-rank statistics (confusion matrices) equal the single-process result.
    Ranks may get one sample more or less than each other.
    """

    def __init__(self, n: int, *, rank: int | None = None, world_size: int | None = None) -> None:
        self.n = int(n)
        self.rank = get_rank() if rank is None else int(rank)
        self.world_size = get_world_size() if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} out of range for world size {self.world_size}")

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Destroy the process group if one is initialised."""
    if is_initialized():
        dist.destroy_process_group()
