"""Data-parallel training through ``torch.distributed`` when the process was launched by ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` then joins the process
group (``nccl`` on CUDA, ``gloo`` on CPU). Data sharding is the ``DistributedSampler`` rule made
explicit so it needs no ``DataLoader``: epoch ``e`` uses the permutation of ``randperm(N)`` seeded by
``seed + e``, padded by wrapping around to a multiple of the world size, and rank ``r`` takes every
``world``-th index starting at ``r``. Infinite samplers draw from a per-rank generator seeded from
``(seed, rank)`` instead. Both are functions of the seed alone, so runs are deterministic.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "info", "setup", "shard", "rank_seed", "all_mean", "gather_objects", "barrier"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def info() -> DistInfo:
    """Rank, world size and local rank: from an initialised process group, else from torchrun's env."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup(device: torch.device) -> DistInfo:
    """Join the process group when launched with several processes (idempotent)."""
    d = info()
    if d.enabled and not dist.is_initialized():
        if not dist.is_available():
            raise RuntimeError("torch.distributed is not available in this torch build; launch a single process")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        d = info()
    return d


def rank_seed(seed: int, rank: int) -> int:
    """A per-rank seed: rank 0 keeps ``seed`` (a single-process run equals rank 0 of nothing else);
    other ranks are spread by a large odd constant so their streams do not overlap in practice."""
    return (int(seed) + rank * 0x9E3779B97F4A7C15) % (2 ** 63)


def shard(n: int, epoch: int, seed: int, rank: int, world: int) -> torch.Tensor:
    """This rank's index order for ``epoch`` over a dataset of ``n`` items (module docstring)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + int(epoch)))
    total = -(-n // world) * world
    if total > n:  # pad by wrapping around, as DistributedSampler does
        perm = torch.cat([perm, perm[: total - n]])
    return perm[rank::world]


def all_mean(t: torch.Tensor) -> torch.Tensor:
    """Average of ``t`` over ranks (identity without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
