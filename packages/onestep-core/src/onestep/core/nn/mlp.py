"""Residual MLP for vectors and flat action chunks, with FiLM time/cond conditioning."""

from __future__ import annotations

import math

from torch import Tensor, nn

from onestep.core.nn.embed import CondEmbed, TimeEmbed


class FiLMResBlock(nn.Module):
    """x + Linear(SiLU(Linear(FiLM(LayerNorm(x), emb)))), FiLM: h * (1 + scale) + shift."""

    def __init__(self, hidden: int, emb_dim: int, expansion: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.film = nn.Linear(emb_dim, 2 * hidden)
        self.fc1 = nn.Linear(hidden, expansion * hidden)
        self.fc2 = nn.Linear(expansion * hidden, hidden)
        self.act = nn.SiLU()
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).chunk(2, dim=-1)  # (B, hidden) each
        h = self.norm(x) * (1 + scale) + shift
        return x + self.fc2(self.act(self.fc1(h)))


class MLP(nn.Module):
    """Residual MLP denoiser: x (B, dim) or (B, *shape) with prod(shape) == dim -> same shape.

    The time embedding (plus the cond embedding) is SiLU'd and injected in every block by FiLM
    and also added to the input projection. With `out_dim != dim` the output is (B, out_dim).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 3,
        time_dim: int = 64,
        num_classes: int | None = None,
        cond_dim: int | None = None,
        out_dim: int | None = None,
        time_scale: float = 1000.0,
    ):
        super().__init__()
        self.config = dict(
            dim=dim,
            hidden=hidden,
            depth=depth,
            time_dim=time_dim,
            num_classes=num_classes,
            cond_dim=cond_dim,
            out_dim=out_dim,
            time_scale=float(time_scale),
        )
        self.dim, self.out_dim = dim, dim if out_dim is None else out_dim
        self.time_embed = TimeEmbed(time_dim, hidden, time_scale)
        self.cond_embed = CondEmbed(hidden, num_classes=num_classes, cond_dim=cond_dim)
        self.inp = nn.Linear(dim, hidden)
        self.emb_act = nn.SiLU()
        self.blocks = nn.ModuleList([FiLMResBlock(hidden, hidden) for _ in range(depth)])
        self.out = nn.Linear(hidden, self.out_dim)

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        batch, shape = x.shape[0], x.shape[1:]
        if math.prod(shape) != self.dim:
            raise ValueError(f"MLP built for dim={self.dim}, got input of shape {tuple(x.shape)}")
        emb = self.time_embed(t, batch)  # (B, hidden)
        c = self.cond_embed(cond, batch)
        if c is not None:
            emb = emb + c
        h = self.inp(x.reshape(batch, self.dim)) + emb
        emb = self.emb_act(emb)
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(h)  # (B, out_dim); no final norm: it would erase the scale of x
        return out.reshape(x.shape) if self.out_dim == self.dim else out
