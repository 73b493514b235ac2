"""Low-rank adaptation (Hu et al. 2021): W' = W + (alpha / rank) B A with B zero-initialised."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LoRALinear(nn.Module):
    """Frozen `base` nn.Linear plus a trainable rank-`rank` update; equals `base` at init.

    lora_A: (rank, in_features), Kaiming-uniform; lora_B: (out_features, rank), zeros.
    `alpha` defaults to `rank` (scale 1).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.base, self.rank = base, rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scaling = self.alpha / rank
        self._base_requires_grad = [p.requires_grad for p in base.parameters()]
        base.requires_grad_(False)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, w.shape[1], device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(w.shape[0], rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta_weight(self) -> Tensor:
        """(alpha / rank) B A, shaped like base.weight."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base layer with the update folded into its weight (modifies `base` in place)."""
        self.base.weight.add_(self.delta_weight().to(self.base.weight.dtype))
        for p, flag in zip(self.base.parameters(), self._base_requires_grad, strict=True):
            p.requires_grad_(flag)
        return self.base


class LoRAConv2d(nn.Module):
    """Frozen `base` nn.Conv2d plus a rank-`rank` update of its kernel; equals `base` at init.

    lora_A: (rank, in_channels, kh, kw), Kaiming-uniform; lora_B: (out_channels, rank), zeros;
    the update B A is a kernel of base's shape, so stride, padding and padding mode carry over.
    Grouped convolutions are not supported.
    """

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if base.groups != 1:
            raise ValueError(f"LoRAConv2d does not support grouped convs (groups={base.groups})")
        self.base, self.rank = base, rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scaling = self.alpha / rank
        self._base_requires_grad = [p.requires_grad for p in base.parameters()]
        base.requires_grad_(False)
        w = base.weight  # (out, in, kh, kw)
        kwargs = dict(device=w.device, dtype=w.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, *w.shape[1:], **kwargs))
        self.lora_B = nn.Parameter(torch.zeros(w.shape[0], rank, **kwargs))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta_weight(self) -> Tensor:
        """(alpha / rank) B A, shaped like base.weight (out, in, kh, kw)."""
        return self.scaling * torch.einsum("or,rikl->oikl", self.lora_B, self.lora_A)

    def forward(self, x: Tensor) -> Tensor:
        return self.base._conv_forward(x, self.base.weight + self.delta_weight(), self.base.bias)

    @torch.no_grad()
    def merged(self) -> nn.Conv2d:
        """The base layer with the update folded into its weight (modifies `base` in place)."""
        self.base.weight.add_(self.delta_weight().to(self.base.weight.dtype))
        for p, flag in zip(self.base.parameters(), self._base_requires_grad, strict=True):
            p.requires_grad_(flag)
        return self.base


LORA_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: LoRALinear,
    nn.Conv2d: LoRAConv2d,
}
LoRALayer = LoRALinear | LoRAConv2d


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def apply_lora(
    module: nn.Module,
    rank: int,
    alpha: float | None = None,
    target: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
    include: Callable[[str], bool] | None = None,
) -> list[str]:
    """Wrap, in place, every submodule of a `target` type whose qualified name passes `include`.

    Returns the replaced names (e.g. "blocks.0.attn.qkv"). Grouped convs and layers already
    wrapped are skipped. Only the wrapped layers' base weights are frozen: optimise
    `lora_parameters(module)`.
    """
    target = tuple(target)
    unknown = [t for t in target if not any(issubclass(t, k) for k in LORA_LAYERS)]
    if unknown:
        raise ValueError(f"no LoRA wrapper for {unknown}; supported: {list(LORA_LAYERS)}")
    if isinstance(module, target) or isinstance(module, LoRALayer):
        raise ValueError("apply_lora wraps submodules in place; wrap a bare layer with LoRALinear")
    wrapped = [n for n, m in module.named_modules() if isinstance(m, LoRALayer)]
    chosen = []
    for name, sub in module.named_modules():
        if not name or not isinstance(sub, target) or isinstance(sub, LoRALayer):
            continue
        if any(name.startswith(w + ".") for w in wrapped):
            continue  # the base layer of an existing wrapper
        if isinstance(sub, nn.Conv2d) and sub.groups != 1:
            continue
        if include is not None and not include(name):
            continue
        chosen.append(name)
    for name in chosen:
        sub = module.get_submodule(name)
        wrapper = LoRALinear if isinstance(sub, nn.Linear) else LoRAConv2d
        _set_submodule(module, name, wrapper(sub, rank, alpha))
    return chosen


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA factors (lora_A, lora_B) of every wrapper inside `module`."""
    return [p for m in module.modules() if isinstance(m, LoRALayer) for p in (m.lora_A, m.lora_B)]


def merge_lora(module: nn.Module) -> list[str]:
    """Fold every LoRA update into its base weight and put the plain layer back; returns names."""
    if isinstance(module, LoRALayer):
        raise ValueError("merge_lora works on a parent module; call .merged() on a bare wrapper")
    names = [name for name, m in module.named_modules() if isinstance(m, LoRALayer)]
    for name in names:
        _set_submodule(module, name, module.get_submodule(name).merged())
    return names


def lora_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """Only the LoRA factors, keyed as in module.state_dict(); load with strict=False."""
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, LoRALayer):
            prefix = f"{name}." if name else ""
            out[prefix + "lora_A"] = m.lora_A.detach().clone()
            out[prefix + "lora_B"] = m.lora_B.detach().clone()
    return out
