"""DTensor parameters (FSDP2's `fully_shard`, `distribute_tensor`): the engine sees local shards.

A `torch.distributed.tensor.DTensor` is one logical tensor spread over the ranks of a device
mesh; each rank holds a plain local tensor (`_local_tensor`). Nadam is element-wise, so each
rank steps its own shard with the ordinary kernels and its slots are shaped like that shard;
the faces hand the engine the local tensors and keep the DTensor wrapper for the state dict.
Only the norms behind `clipnorm` and `global_clipnorm` need the whole tensor: each rank sums the
squares of its shard, and `sum_partials` adds those partial sums over the mesh in one
`all_reduce` per step. The total is the whole tensor's sum of squares added in another order
than one process would add it (per shard, then across shards), so a clipped step differs from
one process's by a few ulps of the norm (within 1e-6 relative in float32); unclipped steps are
bit-identical.

Supported placements, per mesh dimension: `Shard(d)` on any dim (uneven shards included, an
empty shard too) and `Replicate()`. A replicated dimension holds equal copies that each rank
steps identically; only the copy at coordinate 0 along every replicated dimension counts
towards a norm, so each element is summed once. `Partial` (a gradient not yet reduced) and
strided shards (FSDP2 combined with tensor parallelism) are refused with a ValueError. A mesh
of more than one dimension must span the whole default process group (its norms are summed
over the world).

Example:
    >>> import torch
    >>> local_tensor(torch.ones(2)).shape  # a plain tensor is its own shard
    torch.Size([2])
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_PLAIN_TYPES = frozenset((torch.Tensor, torch.nn.Parameter))


def _dtensor_class() -> type | None:
    # A DTensor can only exist once torch.distributed.tensor was imported: never import it here.
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def is_sharded(tensor: Any) -> bool:
    """Whether `tensor` is a DTensor (costs one type test for plain tensors)."""
    if type(tensor) in _PLAIN_TYPES:
        return False
    dtensor = _dtensor_class()
    return dtensor is not None and isinstance(tensor, dtensor)


def local_tensor(tensor: Any) -> Any:
    """This rank's shard of a DTensor (the same object every time), or `tensor` itself."""
    return tensor._local_tensor if is_sharded(tensor) else tensor


@dataclass(frozen=True, eq=False)
class Sharding:
    """How one DTensor parameter is laid out, as the engine's `Update.sharding` carries it."""

    whole: Any
    """The DTensor parameter itself (the faces' key for its state)."""
    mesh: Any
    placements: tuple[Any, ...]
    primary: bool
    """Whether this rank's partial sums count: coordinate 0 along every replicated mesh dim."""


def sharding_of(param: Any) -> Sharding:
    """The `Sharding` of a DTensor parameter; ValueError for placements we do not support."""
    from torch.distributed.tensor import Replicate, Shard

    mesh, placements = param.device_mesh, tuple(param.placements)
    for dim, placement in enumerate(placements):
        if type(placement) is not Shard and type(placement) is not Replicate:
            raise ValueError(
                f"DTensor parameter of shape {tuple(param.shape)} has placement {placement!r} "
                f"on mesh dim {dim}; nadam steps DTensors placed with Shard(d) or Replicate() "
                "on each mesh dim (FSDP2's fully_shard, distribute_tensor)"
            )
    if mesh.ndim > 1 and torch.distributed.get_world_size() != mesh.size():
        raise ValueError(
            f"DTensor parameter of shape {tuple(param.shape)} lives on a {mesh.ndim}-D mesh "
            f"of {mesh.size()} ranks out of {torch.distributed.get_world_size()}; a mesh of "
            "more than one dimension must span the whole default process group"
        )
    coordinate = mesh.get_coordinate() or ()
    primary = all(
        coordinate[dim] == 0
        for dim, placement in enumerate(placements)
        if type(placement) is Replicate
    )
    return Sharding(param, mesh, placements, primary)


def local_gradient(grad: Any, sharding: Sharding) -> Any:
    """The local shard of a DTensor parameter's gradient, after checking that it is laid out
    as the parameter (TypeError for a plain tensor, ValueError for other placements)."""
    if not is_sharded(grad):
        raise TypeError(
            f"The gradient of a DTensor parameter of shape {tuple(sharding.whole.shape)} is a "
            f"{type(grad).__name__}; it must be a DTensor laid out as the parameter"
        )
    if grad.device_mesh != sharding.mesh or tuple(grad.placements) != sharding.placements:
        raise ValueError(
            f"The gradient of a DTensor parameter of shape {tuple(sharding.whole.shape)} has "
            f"placements {tuple(grad.placements)} on {grad.device_mesh}, but the parameter has "
            f"{sharding.placements} on {sharding.mesh}; redistribute it first"
        )
    return grad._local_tensor


def like(param: Any, local: torch.Tensor) -> Any:
    """`local` (a slot made for the local shard of `param`) wrapped as a DTensor laid out as
    `param`, sharing its memory; `local` itself when `param` is a plain tensor."""
    if not is_sharded(param):
        return local
    return _dtensor_class().from_local(
        local, param.device_mesh, param.placements, run_check=False,
        shape=param.shape, stride=param.stride(),
    )


def same_layout(param: Any, value: Any) -> bool:
    """Whether `value` is a DTensor laid out as the DTensor `param` (mesh, placements, local
    shape)."""
    return (
        is_sharded(value)
        and value.device_mesh == param.device_mesh
        and tuple(value.placements) == tuple(param.placements)
        and value._local_tensor.shape == param._local_tensor.shape
    )


def sum_partials(shardings: Sequence[Sharding], partials: Sequence[np.generic]) -> list[np.generic]:
    """Each partial sum (a NumPy scalar over one local shard) summed over its tensor's shards.

    One `all_reduce` per mesh (in practice one per step), in float64; each total is rounded
    back to its partial's dtype. A rank that is not `primary` for a tensor contributes 0.
    """
    totals: list[np.generic] = list(partials)
    by_mesh: dict[int, list[int]] = {}
    for position, sharding in enumerate(shardings):
        by_mesh.setdefault(id(sharding.mesh), []).append(position)
    for positions in by_mesh.values():
        mesh = shardings[positions[0]].mesh
        buffer = torch.tensor(
            [float(partials[p]) if shardings[p].primary else 0.0 for p in positions],
            dtype=torch.float64, device=_collective_device(mesh),
        )
        group = mesh.get_group() if mesh.ndim == 1 else None  # None: the default group
        torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM, group=group)
        for position, total in zip(positions, buffer.tolist(), strict=True):
            totals[position] = partials[position].dtype.type(total)
    return totals


def _collective_device(mesh: Any) -> torch.device:
    """Where the mesh's backend reduces: the host for gloo (a CPU mesh), the current device
    of the mesh's type otherwise (NCCL reduces device tensors only)."""
    if mesh.device_type == "cpu":
        return torch.device("cpu")
    module = torch.get_device_module(mesh.device_type)
    return torch.device(mesh.device_type, module.current_device())
