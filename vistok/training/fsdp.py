"""Fully sharded data parallel training (``train.parallel=fsdp``): PyTorch's FSDP2 (``fully_shard``).

DDP keeps a full copy of the weights, gradients and AdamW moments on every rank; FSDP shards all three over the ranks
and all-gathers each unit's weights just for its forward and backward, which is what lets a model larger than one
GPU's memory train (LlamaGen trains its largest GPTs this way, ``train_c2i_fsdp.py``). The units are the children of
the model's ``nn.ModuleList``s (transformer blocks, residual stages), then the model itself for what is left.

Rank 0 keeps a plain copy of the model on the CPU, into which the full weights are gathered when it evaluates, draws
image grids or saves (one model's worth of host memory).

Checkpoints stay what a DDP run writes (the full model in ``model/``, full EMA weights), so a run can be resumed,
evaluated or loaded with ``vistok.load`` whatever the number of ranks; the optimizer state is saved as the full state
dict keyed by parameter names (``torch.distributed.checkpoint.state_dict``). The helpers that gather (``full_model``,
``full_tensor``, ``optimizer_state``) are collective: all ranks call them, in the same order.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def shard(model: nn.Module) -> nn.Module:
    """Shard ``model`` in place: every child of an ``nn.ModuleList`` holding parameters is a unit (innermost first),
    then the model itself."""
    from torch.distributed.fsdp import fully_shard

    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    for module_list in reversed(lists):  # pre-order reversed: nested units are sharded before their parents
        for child in module_list:
            if any(True for _ in child.parameters()):
                fully_shard(child)
    fully_shard(model)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def template(model: nn.Module, main: bool) -> nn.Module | None:
    """A plain copy of ``model`` on the CPU (rank 0 only, made before sharding), into which :func:`full_model` gathers
    the weights whenever rank 0 must use the whole model (evaluation, image grids, saving)."""
    return copy.deepcopy(model).cpu() if main else None


@contextmanager
def full_model(model: nn.Module, plain: nn.Module | None, device: torch.device) -> Iterator[nn.Module | None]:
    """Every rank enters; inside, rank 0 gets ``plain`` holding the sharded ``model``'s full weights and buffers, on
    ``device`` (the other ranks get None), and it goes back to the CPU afterwards. An unsharded ``model`` is simply
    yielded (to every rank). Writes to the yielded model are not kept."""
    if not is_sharded(model):
        yield model
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if plain is None:
        yield None
        return
    plain.load_state_dict(state)
    del state
    plain.to(device).train(model.training)
    try:
        yield plain
    finally:
        plain.cpu()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly sharded) DTensor; a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def like(full: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``full`` (the same on every rank) laid out as ``target``: this rank's shard when ``target`` is sharded."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(target, DTensor):
        return distribute_tensor(full.to(target.device, target.dtype), target.device_mesh, target.placements)
    return full


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state dict keyed by parameter names (on rank 0; the other ranks get ``{}``)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full, name-keyed optimizer state (every rank read it from the checkpoint) into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
