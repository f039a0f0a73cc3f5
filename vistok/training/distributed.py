"""Multi-process training on PyTorch's own engine: ``torchrun --nproc_per_node N train.py --config ...``.

torchrun starts N processes and tells each its ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` through the environment;
:func:`setup` turns that into a process group (nccl on CUDA, gloo on CPU) and a device per process. A plain
``python train.py`` has no such variables and runs as rank 0 of 1, with every helper below a no-op, so single-process
code paths stay exactly as they were (``torchrun --nproc_per_node 1`` does start a group of one, and DDP).

The helpers are the few collective operations training needs: averaging logged scalars, gathering tokens for
global-batch codebook statistics, a differentiable mean over the global batch (for losses whose value depends on
the whole batch, e.g. a codebook-entropy term), and gathering each rank's RNG state into the checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when setup() created the process group (and so destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device_name: str = "auto") -> tuple[DistEnv, torch.device | None]:
    """Join the process group torchrun describes (if any); returns the rank info and this process's device
    (``None``: let the caller pick, as in a single-process run)."""
    world = env_world_size()
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return DistEnv(), None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
        owns = True
    return DistEnv(rank, world, local_rank, owns), device


def teardown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """A process group is up: several processes, or ``torchrun --nproc_per_node 1`` (DDP on one device, the same
    code path as N)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def barrier() -> None:
    if active():
        dist.barrier()


def mean_scalars(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average named scalars over ranks (every rank must pass the same names)."""
    if not active() or not values:
        return values
    names = sorted(values)
    t = torch.tensor([float(values[k]) for k in names], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(names, (t / dist.get_world_size()).tolist()))


def gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) from all ranks along dim 0, in rank order; no gradient."""
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def batch_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean(0)`` over the *global* batch (all ranks' rows), differentiable.

    Each rank contributes its local mean; the all-reduce's backward sums the upstream gradients of all ranks, so
    after DDP averages parameter gradients the result equals one process computing the mean over the whole batch
    (equal per-rank batch sizes assumed, as the sampler guarantees). Identity with one process.
    """
    local = x.mean(0)
    if not active():
        return local
    return _SumOverRanks.apply(local) / dist.get_world_size()


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) whose backward is all_reduce(SUM) of the incoming gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_mean_(x: torch.Tensor) -> torch.Tensor:
    """In-place average of a tensor over ranks (no gradient); returns it."""
    if active():
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` as a list indexed by rank (small picklable objects: RNG states)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
