"""Small DDPM-style UNet (Ho et al. 2020) for images and spectrograms (B, C, H, W)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onestep.core.nn.embed import CondEmbed, TimeEmbed


def _groups(channels: int) -> int:
    """GroupNorm groups: the largest of 32, 16, ..., 1 dividing `channels` into groups of >= 4."""
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0 and channels // g >= 4:
            return g
    return 1


class ResBlock(nn.Module):
    """GN-SiLU-conv, scale-shift by the embedding, GN-SiLU-dropout-conv (zero-init), plus skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # (B, out_ch, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map; residual, zero-init."""

    def __init__(self, channels: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # (B, heads, HW, head_dim) each
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Layer(nn.Module):
    """One UNet layer: a ResBlock followed by optional self-attention."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, attn: bool, dropout: float):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout)
        self.attn = SelfAttention2d(out_ch) if attn else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attn(self.res(x, emb))


class UNet(nn.Module):
    """DDPM UNet: x (B, C, H, W), t (B,) or scalar -> (B, out_channels, H, W).

    `mults` gives one resolution level each (channels base * mult); levels are separated by
    stride-2 convs and nearest-upsample + conv. `attn_resolutions` holds downsampling factors
    (1 = input resolution, 2 = half, ..., 2**(len(mults)-1)) at which to add self-attention, so the
    network does not need the input size in advance; the middle block has attention when the
    lowest resolution is listed. H and W need not be divisible by 2**(len(mults)-1): the input is
    padded (replicate) on the bottom/right and the output cropped back.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        base: int = 32,
        mults: tuple[int, ...] | list[int] = (1, 2),
        num_res: int = 1,
        attn_resolutions: tuple[int, ...] | list[int] = (),
        num_classes: int | None = None,
        cond_dim: int | None = None,
        dropout: float = 0.0,
        time_scale: float = 1000.0,
    ):
        super().__init__()
        mults, attn_resolutions = tuple(mults), tuple(attn_resolutions)
        self.config = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            base=base,
            mults=list(mults),
            num_res=num_res,
            attn_resolutions=list(attn_resolutions),
            num_classes=num_classes,
            cond_dim=cond_dim,
            dropout=float(dropout),
            time_scale=float(time_scale),
        )
        factors = [2**i for i in range(len(mults))]
        bad = [r for r in attn_resolutions if r not in factors]
        if bad:
            raise ValueError(
                f"attn_resolutions are downsampling factors, one of {factors} for "
                f"{len(mults)} levels; got {bad}"
            )
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.factor = factors[-1]
        emb_dim = 4 * base
        self.time_embed = TimeEmbed(base, emb_dim, time_scale)
        self.cond_embed = CondEmbed(emb_dim, num_classes=num_classes, cond_dim=cond_dim)
        self.emb_act = nn.SiLU()
        self.conv_in = nn.Conv2d(in_channels, base, 3, padding=1)

        # Encoder: record the channels of every skip connection.
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, ch = [base], base
        for level, mult in enumerate(mults):
            attn = factors[level] in attn_resolutions
            layers = nn.ModuleList()
            for _ in range(num_res):
                layers.append(Layer(ch, base * mult, emb_dim, attn, dropout))
                ch = base * mult
                skips.append(ch)
            self.down.append(layers)
            last = level == len(mults) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, 2, 1))
            if not last:
                skips.append(ch)

        self.mid1 = Layer(ch, ch, emb_dim, factors[-1] in attn_resolutions, dropout)
        self.mid2 = Layer(ch, ch, emb_dim, False, dropout)

        # Decoder: num_res + 1 layers per level, each eating one skip connection.
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, mult in reversed(list(enumerate(mults))):
            attn = factors[level] in attn_resolutions
            layers = nn.ModuleList()
            for _ in range(num_res + 1):
                layers.append(Layer(ch + skips.pop(), base * mult, emb_dim, attn, dropout))
                ch = base * mult
            self.up.append(layers)
            self.upsample.append(
                nn.Identity()
                if level == 0
                else nn.Sequential(nn.Upsample(scale_factor=2.0), nn.Conv2d(ch, ch, 3, padding=1))
            )
        self.out_norm = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        batch, _, height, width = x.shape
        pad_h, pad_w = -height % self.factor, -width % self.factor
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")

        emb = self.time_embed(t, batch)  # (B, 4 * base)
        c = self.cond_embed(cond, batch)
        if c is not None:
            emb = emb + c
        emb = self.emb_act(emb)

        h = self.conv_in(x)
        hs = [h]
        for layers, down in zip(self.down, self.downsample, strict=True):
            for layer in layers:
                h = layer(h, emb)
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        h = self.mid2(self.mid1(h, emb), emb)
        for layers, up in zip(self.up, self.upsample, strict=True):
            for layer in layers:
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            h = up(h)
        out = self.conv_out(F.silu(self.out_norm(h)))
        return out[:, :, :height, :width]
