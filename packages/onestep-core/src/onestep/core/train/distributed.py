"""torch.distributed plumbing: rank info, process-group start-up, gradient and value averaging."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _active() -> bool:
    """True when a process group is running with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def distributed_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank): from the process group, else from torchrun's environment."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", rank))
    return rank, world, local


def init_distributed(device: str | torch.device | None = None) -> tuple[int, int, int]:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1) and none is running.

    nccl when the run uses CUDA (the current device is set to LOCAL_RANK first), gloo otherwise.
    Returns `distributed_info()`.
    """
    rank, world, local = distributed_info()
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        return rank, world, local
    use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return distributed_info()


def barrier() -> None:
    if _active():
        dist.barrier()


def reduce_mean(x: Tensor) -> Tensor:
    """Mean of a tensor over ranks (a detached copy; `x` itself when not distributed)."""
    if not _active():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x.div_(dist.get_world_size())


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (`[obj]` when not distributed)."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_modules(modules: Mapping[str, nn.Module]) -> None:
    """Copy rank 0's parameters and buffers to every rank, in place."""
    if not _active():
        return
    for module in modules.values():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def all_reduce_grads(params: Iterable[Tensor]) -> None:
    """Average `.grad` over ranks with one coalesced all-reduce per (device, dtype).

    A rank whose parameter has no gradient contributes zeros (as DDP does); a parameter that has
    no gradient on any rank keeps `.grad = None`. Parameters must be listed in the same order on
    every rank.
    """
    if not _active():
        return
    world = dist.get_world_size()
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            raise NotImplementedError("all_reduce_grads does not support sparse gradients")
        groups.setdefault((p.device, p.dtype), []).append(p)
    for (device, dtype), ps in groups.items():
        # flat = [grad_0, ..., grad_k, has_grad_0, ..., has_grad_k]: one buffer, one collective
        has = torch.tensor([p.grad is not None for p in ps], dtype=dtype, device=device)
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps]
        flat = torch.cat(parts + [has])
        dist.all_reduce(flat)
        counts = flat[-len(ps) :].tolist()
        flat = flat[: -len(ps)].div_(world)
        offset = 0
        for p, count in zip(ps, counts, strict=True):
            n = p.numel()
            if count > 0:
                g = flat[offset : offset + n].view_as(p)
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            offset += n
