"""A conditional 1-D temporal UNet over action sequences: Diffusion Policy's ConditionalUnet1D
(Chi et al. 2023, Sec. 3.3 and Fig. 2b)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from onestep.core.nn.embed import CondEmbed, TimeEmbed


def _groups(channels: int, groups: int) -> int:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class _ConvBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish (Chi et al.'s Conv1dBlock)."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int):
        super().__init__(nn.Conv1d(cin, cout, kernel, padding=kernel // 2),
                         nn.GroupNorm(_groups(cout, groups), cout), nn.Mish())


class FiLMResBlock1d(nn.Module):
    """Two conv blocks with FiLM between them, out = scale * h + bias from the embedding
    (Perez et al. 2018, as Diffusion Policy conditions every block), plus a 1x1-conv residual."""

    def __init__(self, cin: int, cout: int, emb_dim: int, kernel: int = 5, groups: int = 8):
        super().__init__()
        self.block1 = _ConvBlock(cin, cout, kernel, groups)
        self.block2 = _ConvBlock(cout, cout, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(emb_dim, 2 * cout))
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        scale, bias = self.film(emb)[..., None].chunk(2, dim=1)  # (B, cout, 1) each
        h = scale * self.block1(x) + bias
        return self.block2(h) + self.skip(x)


class UNet1D(nn.Module):
    """Temporal UNet over (B, horizon, channels) sequences (or their flat (B, horizon *
    channels) form, returned in the same shape): residual conv blocks with FiLM from the sum of
    the time embedding and the cond embedding (Diffusion Policy concatenates the two; a sum
    keeps the time entering only through `time_embed`, so MeanFlow's TwoTimeNet wraps it), two
    blocks per level, strided-conv down- and transposed-conv upsampling, skip connections.
    `horizon` must be divisible by 2^(len(dims) - 1)."""

    def __init__(self, channels: int, horizon: int, dims: tuple[int, ...] = (64, 128, 256),
                 kernel: int = 5, groups: int = 8, time_dim: int = 128,
                 cond_dim: int | None = None, time_scale: float = 1.0):
        super().__init__()
        dims = tuple(int(d) for d in dims)
        if not dims or horizon % 2 ** (len(dims) - 1):
            raise ValueError(f"UNet1D: horizon {horizon} must be divisible by "
                             f"2^{len(dims) - 1} for dims {dims}")
        self.config = dict(channels=channels, horizon=horizon, dims=list(dims), kernel=kernel,
                           groups=groups, time_dim=time_dim, cond_dim=cond_dim,
                           time_scale=float(time_scale))
        self.channels, self.horizon = channels, horizon
        self.time_embed = TimeEmbed(time_dim, time_dim, time_scale)
        self.cond_embed = CondEmbed(time_dim, cond_dim=cond_dim)
        block = lambda a, b: FiLMResBlock1d(a, b, time_dim, kernel, groups)  # noqa: E731
        ins = (channels, *dims[:-1])
        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(zip(ins, dims, strict=True)):
            last = i == len(dims) - 1
            self.down.append(nn.ModuleList([
                block(a, b), block(b, b),
                nn.Identity() if last else nn.Conv1d(b, b, 3, stride=2, padding=1)]))
        self.mid1, self.mid2 = block(dims[-1], dims[-1]), block(dims[-1], dims[-1])
        self.up = nn.ModuleList()
        for a, b in zip(reversed(dims[:-1]), reversed(dims[1:]), strict=True):
            # as Chi et al.'s code: every up level upsamples; the finest skip goes unused
            self.up.append(nn.ModuleList([
                block(2 * b, a), block(a, a), nn.ConvTranspose1d(a, a, 4, stride=2, padding=1)]))
        self.final = nn.Sequential(_ConvBlock(dims[0], dims[0], kernel, groups),
                                   nn.Conv1d(dims[0], channels, 1))

    @classmethod
    def from_config(cls, config: dict) -> UNet1D:
        return cls(**config)

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        batch, shape = x.shape[0], x.shape
        if math.prod(shape[1:]) != self.horizon * self.channels:
            raise ValueError(f"UNet1D built for ({self.horizon}, {self.channels}) sequences, got "
                             f"shape {tuple(shape)}")
        h = x.reshape(batch, self.horizon, self.channels).transpose(1, 2)  # (B, C, H)
        emb = self.time_embed(t, batch)
        c = self.cond_embed(cond, batch)
        if c is not None:
            emb = emb + c
        skips = []
        for res1, res2, down in self.down:
            h = res2(res1(h, emb), emb)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid1(h, emb), emb)
        for res1, res2, up in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = up(res2(res1(h, emb), emb))
        return self.final(h).transpose(1, 2).reshape(shape)
