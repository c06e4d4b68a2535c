"""Data-parallel training across processes with torch.distributed, started by `torchrun`.

Each process (rank) holds a full copy of the model, trains on its own slice of every global batch, and the
ranks average their gradients before each optimizer step, so all copies stay identical. torchrun sets RANK,
WORLD_SIZE and LOCAL_RANK; without them this is a single process and nothing here does anything.

    torchrun --standalone --nproc_per_node=2 -m jobs train --config ...                 # one machine
    torchrun --nnodes=2 --node_rank=0|1 --nproc_per_node=8 \\
             --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 -m jobs train --config ...    # two machines

Backend: NCCL between GPUs, gloo on CPU. Only rank 0 tracks to MLflow and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> "Distributed":
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend=backend)
        return cls(rank, world_size, local_rank)

    def device(self, device: str) -> str:
        return f"cuda:{self.local_rank}" if torch.device(device).type == "cuda" and self.enabled else device

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, *values: float) -> list[float]:
        """The sum of each number over all ranks, in one all-reduce."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def mean(self, *values: float) -> list[float]:
        """The average of each number over all ranks, in one all-reduce."""
        return [total / self.world_size for total in self.sum(*values)]

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def average_gradients(named_parameters, world_size: int) -> None:
    """What DDP does for the torch model, written out for the custom one: sum each gradient over all ranks
    (all-reduce), then divide by the number of ranks. Every rank ends with the gradient of the mean loss over
    the whole global batch, so every rank takes the same optimizer step."""
    for _, param in named_parameters:
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad /= world_size
