"""A conditional 1-D temporal UNet over action sequences: Diffusion Policy's ConditionalUnet1D
(Chi et al. 2023, Sec. 3.3 and Fig. 2b), optionally over sequences of any length and with local
(frame-aligned) conditioning channels concatenated to the input."""

from __future__ import annotations

import math
from collections.abc import Mapping

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
    `horizon` must be divisible by 2^(len(dims) - 1); horizon=None takes (B, length, channels)
    sequences of any length divisible by it (the network is convolutional throughout).

    Local conditioning (`local_cond_dim`): a frame-aligned tensor (B, length, local_cond_dim)
    concatenated to the input channels before the first block, as Grad-TTS's decoder stacks the
    aligned text encoding mu with x_t (Popov et al. 2021, Sec. 3; WaveNet's local conditioning,
    van den Oord et al. 2016, Sec. 2.5). The cond is then a dict {"global": ..., "local": ...}
    (either may be absent), or, for a network with no global cond (cond_dim None), the local
    tensor itself; a missing local cond is zeros (the null cond). Without local_cond_dim, cond
    is the global cond as before (a vector (B, cond_dim), or None)."""

    def __init__(self, channels: int, horizon: int | None, dims: tuple[int, ...] = (64, 128, 256),
                 kernel: int = 5, groups: int = 8, time_dim: int = 128,
                 cond_dim: int | None = None, time_scale: float = 1.0,
                 local_cond_dim: int | None = None):
        super().__init__()
        dims = tuple(int(d) for d in dims)
        if not dims or (horizon is not None and horizon % 2 ** (len(dims) - 1)):
            raise ValueError(f"UNet1D: horizon {horizon} must be divisible by "
                             f"2^{len(dims) - 1} for dims {dims}")
        if local_cond_dim is not None and (int(local_cond_dim) != local_cond_dim
                                           or local_cond_dim < 1):
            raise ValueError(f"UNet1D: local_cond_dim must be a positive integer or None, got "
                             f"{local_cond_dim}")
        self.config = dict(channels=channels, horizon=horizon, dims=list(dims), kernel=kernel,
                           groups=groups, time_dim=time_dim, cond_dim=cond_dim,
                           time_scale=float(time_scale))
        if local_cond_dim is not None:  # only when set: earlier configs stay as they were
            self.config["local_cond_dim"] = int(local_cond_dim)
        self.channels, self.horizon = channels, horizon
        self.local_cond_dim = int(local_cond_dim or 0)
        self.multiple = 2 ** (len(dims) - 1)  # lengths must be divisible by this
        self.time_embed = TimeEmbed(time_dim, time_dim, time_scale)
        self.cond_embed = CondEmbed(time_dim, cond_dim=cond_dim)
        block = lambda a, b: FiLMResBlock1d(a, b, time_dim, kernel, groups)  # noqa: E731
        ins = (channels + self.local_cond_dim, *dims[:-1])
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

    def _length(self, x: Tensor) -> int:
        """The sequence length of x, checked against the horizon (or the length multiple)."""
        shape = tuple(x.shape)
        if self.horizon is not None:
            if math.prod(shape[1:]) != self.horizon * self.channels:
                raise ValueError(f"UNet1D built for ({self.horizon}, {self.channels}) sequences, "
                                 f"got shape {shape}")
            return self.horizon
        if x.ndim != 3 or shape[2] != self.channels or shape[1] == 0:
            raise ValueError(f"UNet1D (any length) takes (batch, length, {self.channels}) "
                             f"sequences, got shape {shape}")
        if shape[1] % self.multiple:
            raise ValueError(f"UNet1D: length {shape[1]} must be divisible by {self.multiple} "
                             f"(2^(levels - 1)); pad the sequence")
        return shape[1]

    def _split_cond(self, cond, batch: int, length: int) -> tuple[Tensor | None, Tensor | None]:
        """(global cond, local cond (B, length, local_cond_dim) or None)."""
        if isinstance(cond, Mapping):
            unknown = sorted(set(cond) - {"global", "local"})
            if unknown:
                raise ValueError(f"UNet1D: a cond dict takes the keys 'global' and 'local', got "
                                 f"{unknown}")
            glob, local = cond.get("global"), cond.get("local")
        elif self.local_cond_dim and not self.cond_embed.conditional:
            glob, local = None, cond
        else:
            glob, local = cond, None
        if not self.local_cond_dim:
            if local is not None:
                raise ValueError("this UNet1D takes no local (frame-aligned) cond; build it with "
                                 "local_cond_dim")
            return glob, None
        expected = (batch, length, self.local_cond_dim)
        if local is None:
            return glob, None
        if not torch.is_tensor(local) or not local.is_floating_point() or (
                tuple(local.shape) != expected
                and (local.shape[0] != batch or local.numel() != math.prod(expected))):
            got = tuple(local.shape) if torch.is_tensor(local) else type(local).__name__
            raise ValueError(f"UNet1D: the local cond must be a float tensor {expected} "
                             f"(batch, length, local_cond_dim), aligned with x, got {got}")
        return glob, local.reshape(expected)

    def forward(self, x: Tensor, t: Tensor | float, cond=None) -> Tensor:
        batch, shape = x.shape[0], x.shape
        length = self._length(x)
        glob, local = self._split_cond(cond, batch, length)
        h = x.reshape(batch, length, self.channels)
        if self.local_cond_dim:  # frame-aligned channels next to x's (zeros: the null cond)
            if local is None:
                local = h.new_zeros(batch, length, self.local_cond_dim)
            h = torch.cat([h, local.to(h.dtype)], dim=2)
        h = h.transpose(1, 2)  # (B, C, H)
        emb = self.time_embed(t, batch)
        c = self.cond_embed(glob, batch)
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
