"""Time and conditioning embeddings shared by every network in `onestep.core.nn`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def broadcast_time(t: Tensor | float, batch: int, device: torch.device | None = None) -> Tensor:
    """Time as float32 (batch,) from a number, a scalar, (1,), (B,) or (B, 1, ...)."""
    t = torch.as_tensor(t, device=device, dtype=torch.float32)
    if t.numel() == 1:
        return t.reshape(1).expand(batch)
    if t.numel() == batch:
        return t.reshape(batch)
    raise ValueError(
        f"t must be a scalar or hold one value per sample ({batch}), got shape {tuple(t.shape)}"
    )


class SinusoidalEmbedding(nn.Module):
    """Transformer sinusoidal features of `scale * t` (Vaswani et al. 2017; DDPM). (B,) -> (B, dim).

    `scale` maps the caller's time range onto the usual 0..1000 positional range: 1000 for t in
    [0, 1], 1 for a 0..999 step index, about 250 for EDM's c_noise = ln(sigma) / 4.
    """

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        self.dim, self.scale, self.max_period = dim, float(scale), float(max_period)

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        k = torch.arange(half, device=t.device, dtype=torch.float32)
        freqs = torch.exp(-math.log(self.max_period) * k / max(half, 1))  # (half,)
        args = self.scale * t.float()[:, None] * freqs[None]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.dim % 2:
            emb = torch.nn.functional.pad(emb, (0, 1))
        return emb


class TimeEmbed(nn.Module):
    """Sinusoidal features (dim) -> Linear -> SiLU -> Linear. t (B,) or scalar -> (B, hidden)."""

    def __init__(self, dim: int, hidden: int, scale: float = 1000.0):
        super().__init__()
        self.sinusoid = SinusoidalEmbedding(dim, scale)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.out_dim = hidden

    def forward(self, t: Tensor | float, batch: int | None = None) -> Tensor:
        weight = next(self.mlp.parameters())  # not mlp[0].weight: a LoRA wrapper has none
        if batch is None:
            batch = torch.as_tensor(t).numel()
        emb = self.sinusoid(broadcast_time(t, batch, weight.device))
        return self.mlp(emb.to(weight.dtype))


class CondEmbed(nn.Module):
    """Embeds optional conditioning into (B, emb_dim), to be added to the time embedding.

    - class labels: integer tensor (B,) with `num_classes` set; index `num_classes` is the learned
      null class used for classifier-free guidance (drop a label by setting it to `num_classes`).
    - vectors: float tensor (B, cond_dim) with `cond_dim` set, through Linear -> SiLU -> Linear.
    - sequences: float tensor (B, L, cond_dim) when `sequence=True`, mean-pooled over L first.
    A missing cond (None) gives the null embedding: the null class, or a zero vector. Both
    `num_classes` and `cond_dim` may be set; integer cond then selects the class table and float
    cond the vector path (the other one gets its null input). An unconditional module returns None.
    """

    def __init__(
        self,
        emb_dim: int,
        num_classes: int | None = None,
        cond_dim: int | None = None,
        sequence: bool = False,
    ):
        super().__init__()
        self.emb_dim, self.num_classes, self.cond_dim, self.sequence = (
            emb_dim,
            num_classes,
            cond_dim,
            sequence,
        )
        self.class_embed = None if num_classes is None else nn.Embedding(num_classes + 1, emb_dim)
        self.vector_embed = None
        if cond_dim is not None:
            self.vector_embed = nn.Sequential(
                nn.Linear(cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)

    @property
    def conditional(self) -> bool:
        return self.class_embed is not None or self.vector_embed is not None

    def _expected(self) -> str:
        kinds = []
        if self.class_embed is not None:
            kinds.append(f"integer class labels (B,) in [0, {self.num_classes}]")
        if self.vector_embed is not None:
            kinds.append(f"a float tensor (B, {self.cond_dim})")
            if self.sequence:
                kinds.append(f"a float sequence (B, L, {self.cond_dim})")
        return " or ".join(kinds)

    def forward(self, cond: Tensor | None, batch: int) -> Tensor | None:
        if not self.conditional:
            if cond is not None:
                raise ValueError(
                    f"this network is unconditional, got cond of shape {tuple(cond.shape)}; "
                    "build it with num_classes or cond_dim"
                )
            return None
        labels = vector = None
        if cond is not None:
            got = f"got {cond.dtype} of shape {tuple(cond.shape)}"
            if not torch.is_floating_point(cond) and cond.dtype != torch.bool:
                if self.class_embed is None or cond.shape != (batch,):
                    raise ValueError(f"cond: expected {self._expected()} with B={batch}, {got}")
                labels = cond
            elif torch.is_floating_point(cond) and self.vector_embed is not None:
                ok = cond.ndim == 2 or (self.sequence and cond.ndim == 3)
                if not ok or cond.shape[0] != batch or cond.shape[-1] != self.cond_dim:
                    raise ValueError(f"cond: expected {self._expected()} with B={batch}, {got}")
                vector = cond.mean(dim=1) if cond.ndim == 3 else cond  # (B, cond_dim)
            else:
                raise ValueError(f"cond: expected {self._expected()} with B={batch}, {got}")

        emb = None
        if self.class_embed is not None:
            weight = self.class_embed.weight
            if labels is None:  # null class
                labels = torch.full((batch,), self.num_classes, device=weight.device)
            emb = self.class_embed(labels.to(weight.device))
        if self.vector_embed is not None:
            weight = next(self.vector_embed.parameters())
            if vector is None:  # null vector
                vector = torch.zeros(batch, self.cond_dim, device=weight.device)
            v = self.vector_embed(vector.to(weight))
            emb = v if emb is None else emb + v
        return emb
