"""MLPs for vectors and flat action chunks: the residual MLP with FiLM time/cond conditioning,
and the plain ConcatMLP of the offline-RL diffusion and flow policies."""

from __future__ import annotations

import math

import torch
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


_ACTIVATIONS = {"mish": nn.Mish, "relu": nn.ReLU, "silu": nn.SiLU}


class ConcatMLP(nn.Module):
    """Plain MLP on the concatenation [x, time embedding, cond]: the conditional noise / velocity
    network of Diffusion-QL (Wang et al. 2023, as in its code: 3 hidden layers of 256 with
    Mish) and of the flow policies built on it (OFQL). x (B, dim), t (B,) or a scalar, cond
    (B, cond_dim) -> (B, out_dim).

    The time enters only through `time_embed` (a TimeEmbed: sinusoid of `time_dim` features at
    `time_scale`, then an MLP to `time_hidden`), so that MeanFlow's `TwoTimeNet` can wrap it for
    two times (t, t - r). Diffusion-QL's own time MLP is 16 -> 32 -> 16 with Mish; here it is
    core's TimeEmbed 16 -> 32 -> 32 with SiLU.
    """

    def __init__(
        self,
        dim: int,
        cond_dim: int = 0,
        hidden: int = 256,
        depth: int = 3,
        time_dim: int = 16,
        time_hidden: int = 32,
        time_scale: float = 1.0,
        out_dim: int | None = None,
        act: str = "mish",
    ):
        super().__init__()
        if act not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; use one of {sorted(_ACTIVATIONS)}")
        if min(dim, hidden, depth, time_dim, time_hidden) < 1 or cond_dim < 0:
            raise ValueError(f"ConcatMLP needs dim, hidden, depth, time_dim, time_hidden >= 1 and "
                             f"cond_dim >= 0; got {dim}, {hidden}, {depth}, {time_dim}, "
                             f"{time_hidden}, {cond_dim}")
        self.config = dict(dim=dim, cond_dim=cond_dim, hidden=hidden, depth=depth,
                           time_dim=time_dim, time_hidden=time_hidden,
                           time_scale=float(time_scale), out_dim=out_dim, act=act)
        self.dim, self.cond_dim = dim, cond_dim
        self.out_dim = dim if out_dim is None else out_dim
        self.time_embed = TimeEmbed(time_dim, time_hidden, time_scale)
        layers: list[nn.Module] = []
        width = dim + time_hidden + cond_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), _ACTIVATIONS[act]()]
            width = hidden
        layers.append(nn.Linear(width, self.out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        return self.forward_embedded(x, self.time_embed(t, x.shape[0]), cond)

    def forward_embedded(self, x: Tensor, emb: Tensor, cond: Tensor | None = None) -> Tensor:
        """`forward` given the time embedding emb = time_embed(t) (B, time_hidden): a sampler on
        a fixed grid of times embeds all of them in one call."""
        batch = x.shape[0]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"ConcatMLP built for x of shape (B, {self.dim}), got "
                             f"{tuple(x.shape)}")
        parts = [x, emb.to(x.dtype)]  # (B, dim), (B, time_hidden)
        if self.cond_dim:
            if cond is None or cond.shape != (batch, self.cond_dim):
                got = "none" if cond is None else tuple(cond.shape)
                raise ValueError(f"ConcatMLP needs cond of shape ({batch}, {self.cond_dim}), "
                                 f"got {got}")
            parts.append(cond.to(x.dtype))
        elif cond is not None:
            raise ValueError("this ConcatMLP is unconditional (cond_dim=0), got a cond")
        return self.net(torch.cat(parts, dim=-1))
