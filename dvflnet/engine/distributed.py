"""torchrun + DistributedDataParallel plumbing: process group, samplers, exact gathers.

Run one process per GPU (NCCL) or per CPU worker (gloo): ``torchrun --nproc-per-node 2 -m dvflnet
train ...``. Without torchrun's environment everything runs in one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(parsed: torch.device | None = None) -> DistInfo:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); a lone process gets
    rank 0 of 1 and no group. parsed: the run's device as RunConfig.torch_device gives it (checked
    against this machine): cpu, cuda (each process takes GPU LOCAL_RANK), cuda:N (one process only),
    or None (CUDA when available)."""
    from .config import ConfigError

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if parsed is None else parsed.type == "cuda"
    if use_cuda and parsed is not None and parsed.index is not None:
        if world_size > 1:
            raise ConfigError(f"device: {str(parsed)!r} names one GPU; with {world_size} processes use 'cuda' "
                              "(each process takes the GPU of its LOCAL_RANK)")
        target = parsed
    elif use_cuda:
        target = torch.device("cuda", local_rank % torch.cuda.device_count())
    else:
        target = torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, target)


def shutdown_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every rank's `obj`, in rank order, on every rank (exact: pickled, not padded tensors)."""
    if not info.enabled:
        return [obj]
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_mean(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor)
    return tensor.item() / info.world_size


class TrainSampler(torch.utils.data.Sampler[int]):
    """A fresh permutation per (seed, epoch), padded by wrapping to equal shares (DDP needs the same
    number of steps on every rank), rank r taking every world_size-th index, cut to whole batches.
    `start` skips the first items of this rank's share: a resume in the middle of an epoch."""

    def __init__(self, length: int, batch_size: int, info: DistInfo, seed: int = 0):
        if length < 1:
            raise ValueError("dataset: no videos to train on")
        self.length, self.batch_size, self.info, self.seed = length, batch_size, info, seed
        per_rank = -(-length // info.world_size)
        self.num_samples = per_rank // batch_size * batch_size
        if self.num_samples == 0:
            raise ValueError(
                f"train.batch_size: {batch_size} clips per process is more than the {per_rank} videos each of "
                f"{info.world_size} process(es) gets from {length}; lower it"
            )
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        padded = torch.cat([order] * -(-self.num_samples * self.info.world_size // self.length))
        share = padded[self.info.rank :: self.info.world_size][: self.num_samples]
        return iter(share[self.start :].tolist())

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(torch.utils.data.Sampler[int]):
    """Evaluation shard: rank r gets indices r, r + world, r + 2*world, ...; the shards cover every
    item exactly once (no padding, no drops), so gathered results are exact."""

    def __init__(self, length: int, info: DistInfo):
        self.indices = list(range(info.rank, length, info.world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
