"""Multi-process training on torch's own engine: torchrun + DistributedDataParallel.

    torchrun --standalone --nproc-per-node 2 -m poetvae train prep/ts -o runs/ddp
    poetvae train prep/ts -o runs/ddp --devices 2        # launches the line above

Each process takes an equal slice of the same global batch (every process draws the same
batch order and the same noise for the whole batch, and keeps its slice), DDP averages
the gradients, and the free-bits KL floor is taken on the global batch mean. So a run on
N processes follows the single-process run with the same global batch, seed and schedule
up to floating-point summation order. Only rank 0 validates, writes checkpoints and logs.
Backend: NCCL on CUDA (one GPU per process), gloo on CPU.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in a multi-process run (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1  # number of processes

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def env_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun described in the environment (no-op when alone).
    Returns this process's place and the device it should use."""
    if not launched_by_torchrun():
        return Dist(), device
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world), device


def teardown() -> None:
    """Leave the process group. A script of your own that trains under torchrun should end
    its process as the `poetvae` command does (poetvae.cli.main: os._exit once its output
    is flushed): gloo's threads can otherwise abort it during the interpreter's exit."""
    global _flag_group
    _flag_group = None
    if dist.is_initialized():
        dist.destroy_process_group()


_flag_group = None  # a gloo group for any_process: its all-reduce never waits on the GPU


def any_process(flag: bool, process: Dist) -> bool:
    """Whether `flag` is set in any process (the flag itself when alone). Every process
    must call it at the same point. The flag travels on the CPU, so the call adds no GPU
    synchronisation to a training step."""
    global _flag_group
    if not process.active:
        return flag
    if _flag_group is None:
        _flag_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_flag_group)
    return bool(t.item())


def global_mean(t: torch.Tensor, process: Dist, *, differentiable: bool = False) -> torch.Tensor:
    """Mean of `t` over processes (identity when alone). differentiable=True lets the
    gradient flow back to every process's share (used for the free-bits KL floor)."""
    if not process.active:
        return t
    if differentiable:
        from torch.distributed.nn.functional import all_reduce

        # torch 2.13 marks this public autograd all-reduce deprecated in favour of a private
        # module (_functional_collectives); keep the public one, without a warning per rank
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return all_reduce(t) / process.world
    t = t.clone()
    dist.all_reduce(t)
    return t / process.world
