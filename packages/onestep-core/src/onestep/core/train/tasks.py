"""What the Trainer trains: the `Task` protocol, and `LossTask` (one model, one loss: teachers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from .distributed import reduce_mean
from .helpers import EMA, autocast, check_finite, optimizer_step, warmup_cosine


@runtime_checkable
class Task(Protocol):
    """A trainable thing: its networks, optimisers, schedulers and one global step.

    Optional: a `kind` string (recorded in checkpoints and checked on load), and
    `extra_state() -> dict` / `load_extra_state(d)` for anything else to checkpoint, and
    `frozen_modules() -> dict` for modules that are used but not trained or checkpointed (a
    distillation teacher): the Trainer moves them to its device too.
    """

    def modules(self) -> dict[str, nn.Module]:
        """Every module whose weights are checkpointed (nets, EMA copies, critics...)."""
        ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def schedulers(self) -> dict[str, LRScheduler]: ...

    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]:
        """Forward, backward and update(s) for global step `step` (0-based); detached float logs."""
        ...


LossFn = Callable[..., tuple[Tensor, dict]]


def _float(v) -> float:
    return float(v.detach()) if isinstance(v, Tensor) else float(v)


class LossTask:
    """Train `model` on `loss_fn(model, batch, *, generator) -> (loss, logs)` with AdamW.

    Warm-up + cosine LR over `total_steps` (constant after warm-up when None; it is the task's,
    not the run's, so a run cut short and resumed follows the same schedule), gradient clipping,
    optional EMA, bf16 autocast on CUDA when `amp`.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup: int = 0,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        clip: float | None = 1.0,
        ema_decay: float | None = 0.999,
        amp: bool = True,
        kind: str = "teacher",
    ):
        self.model = model
        self.loss_fn = loss_fn
        self.clip = clip
        self.amp = amp
        self.kind = kind
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=lr, betas=betas, weight_decay=weight_decay
        )
        self.scheduler = warmup_cosine(self.optimizer, warmup, total_steps, min_lr_ratio)
        self.ema = EMA(model, ema_decay) if ema_decay is not None else None

    def modules(self) -> dict[str, nn.Module]:
        out = {"model": self.model}
        if self.ema is not None:
            out["ema"] = self.ema.module
        return out

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def schedulers(self) -> dict[str, LRScheduler]:
        return {"model": self.scheduler}

    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]:
        self.model.train()
        device = self.params[0].device if self.params else torch.device("cpu")
        with autocast(device, enabled=self.amp):
            loss, logs = self.loss_fn(self.model, batch, generator=generator)
        # the global-batch loss: every rank sees the same value, so a NaN stops all of them
        loss_mean = reduce_mean(loss.detach().float())
        check_finite(loss_mean, step)
        grad_norm = optimizer_step(loss, self.optimizer, self.params, clip=self.clip)
        check_finite({"grad_norm": grad_norm}, step)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        out = {k: _float(v) for k, v in logs.items()}
        out["loss"] = float(loss_mean)
        out["grad_norm"] = grad_norm
        return out
