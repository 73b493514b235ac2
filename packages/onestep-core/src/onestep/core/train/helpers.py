"""Parts of a task's `step`: EMA, one optimiser update, LR schedule, autocast, NaN check."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from .distributed import all_reduce_grads


class EMA:
    """Exponential moving average of weights: shadow <- decay * shadow + (1 - decay) * model.

    `module` is a frozen copy in eval mode (checkpoint it, sample from it); buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.module.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach().to(e.dtype), 1.0 - self.decay)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights (and buffers) into `model`."""
        for e, p in zip(self.module.parameters(), model.parameters(), strict=True):
            p.copy_(e)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b.copy_(e)

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.module.load_state_dict(state)


def optimizer_step(
    loss: Tensor | None,
    optimizer: torch.optim.Optimizer,
    params: Iterable[Tensor] | None = None,
    *,
    clip: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One update: zero grads, backward, average grads over ranks, clip, step, zero grads.

    `params` defaults to the optimiser's parameters. With `loss=None` the gradients already in
    `.grad` are used (accumulate them yourself). Returns the total gradient norm (before clipping).
    A non-finite norm skips the update, leaving the weights untouched; the caller decides whether
    to raise (`check_finite`).
    """
    if params is None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
    params = [p for p in params if p.requires_grad]
    if loss is not None:
        for p in params:
            p.grad = None
        (scaler.scale(loss) if scaler is not None else loss).backward()
    all_reduce_grads(params)
    if scaler is not None:
        scaler.unscale_(optimizer)
    with_grad = [p for p in params if p.grad is not None]
    max_norm = clip if clip is not None and clip > 0 else math.inf
    norm = float(torch.nn.utils.clip_grad_norm_(with_grad, max_norm)) if with_grad else 0.0
    if scaler is not None:
        scaler.step(optimizer)  # skips by itself on inf/NaN
        scaler.update()
    elif math.isfinite(norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


class WarmupCosine:
    """LR multiplier: linear warm-up (step+1)/warmup, then cosine from 1 to `min_ratio` at `total`.

    A callable object rather than a closure so LambdaLR's state_dict records its settings.
    `total=None` keeps the multiplier at 1 after warm-up.
    """

    def __init__(self, warmup: int = 0, total: int | None = None, min_ratio: float = 0.0):
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        if total is not None and total < warmup:
            raise ValueError(f"total ({total}) must be >= warmup ({warmup})")
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.total is None:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    warmup: int = 0,
    total: int | None = None,
    min_ratio: float = 0.0,
) -> LambdaLR:
    """LambdaLR with `WarmupCosine`; call `.step()` once after each optimiser step."""
    return LambdaLR(optimizer, WarmupCosine(warmup, total, min_ratio))


def autocast(device: str | torch.device, enabled: bool = True):
    """bf16 autocast on CUDA, a no-op context elsewhere."""
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_finite(value, step: int):
    """Raise FloatingPointError("NaN in training at step N: loss=nan") on a NaN/inf loss or log.

    `value` is a loss tensor or a dict of logs (floats or tensors); returns it unchanged.
    """
    items = value.items() if isinstance(value, Mapping) else [("loss", value)]
    bad = []
    for key, v in items:
        if isinstance(v, Tensor):
            if v.numel() == 0 or bool(torch.isfinite(v.detach()).all()):
                continue
            shown = v.item() if v.numel() == 1 else "non-finite tensor"
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            if math.isfinite(v):
                continue
            shown = v
        else:
            continue
        bad.append(f"{key}={shown}")
    if bad:
        raise FloatingPointError(f"NaN in training at step {step}: {', '.join(bad)}")
    return value
