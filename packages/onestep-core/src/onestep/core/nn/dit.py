"""Diffusion Transformer with adaLN-Zero (Peebles & Xie 2023) for 2-D and 3-D (video) inputs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onestep.core.nn.embed import CondEmbed, TimeEmbed


def sincos_pos_embed(grid: tuple[int, ...], dim: int) -> Tensor:
    """Fixed sin-cos positional embedding over an n-D token grid: (prod(grid), dim).

    Each axis gets an equal even share of the channels (1-D transformer sinusoids of the
    position along that axis); leftover channels are zero.
    """
    per_axis = (dim // len(grid)) // 2 * 2
    half = per_axis // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / max(half, 1))  # (half,)
    coords = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid], indexing="ij")
    parts = []
    for pos in coords:
        args = pos.reshape(-1, 1) * omega[None]  # (N, half)
        parts += [torch.sin(args), torch.cos(args)]
    emb = torch.cat(parts, dim=1)
    return F.pad(emb, (0, dim - emb.shape[1])).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x (B, N, D) * (1 + scale (B, D)) + shift (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention with torch's scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, head_dim) each
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Transformer block whose LayerNorms are modulated by adaLN-Zero (shift, scale, gate) x 2."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)  # (B, D) each
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm then a linear map to patch_volume * out_channels per token."""

    def __init__(self, dim: int, out_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_features)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """DiT: x (B, C, *input_shape), t (B,) or scalar -> (B, out_channels, *input_shape).

    `input_shape` is (H, W) for images and spectrograms or (T, H, W) for video, patchified by a
    Conv2d / Conv3d with kernel = stride = `patch_size` (an int or one size per axis). Tokens get
    a fixed sin-cos positional embedding. Conditioning c = time embedding + cond embedding drives
    adaLN-Zero in every block; a sequence cond (B, L, cond_dim) is mean-pooled over L into adaLN
    (no cross-attention).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] | list[int],
        patch_size: int | tuple[int, ...] | list[int],
        in_channels: int,
        hidden: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        cond_dim: int | None = None,
        out_channels: int | None = None,
        time_scale: float = 1000.0,
    ):
        super().__init__()
        input_shape = tuple(int(s) for s in input_shape)
        if len(input_shape) not in (2, 3):
            raise ValueError(f"input_shape must be (H, W) or (T, H, W), got {input_shape}")
        if isinstance(patch_size, int):
            patch = (patch_size,) * len(input_shape)
        else:
            patch = tuple(int(p) for p in patch_size)
        bad = len(patch) != len(input_shape)
        if bad or any(s % p for s, p in zip(input_shape, patch, strict=True)):
            raise ValueError(
                f"input_shape {input_shape} must be divisible by patch_size {patch} on every axis"
            )
        if hidden % heads:
            raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
        self.config = dict(
            input_shape=list(input_shape),
            patch_size=patch_size if isinstance(patch_size, int) else list(patch),
            in_channels=in_channels,
            hidden=hidden,
            depth=depth,
            heads=heads,
            mlp_ratio=float(mlp_ratio),
            num_classes=num_classes,
            cond_dim=cond_dim,
            out_channels=out_channels,
            time_scale=float(time_scale),
        )
        self.input_shape, self.patch = input_shape, patch
        self.grid = tuple(s // p for s, p in zip(input_shape, patch, strict=True))
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels

        conv = nn.Conv2d if len(input_shape) == 2 else nn.Conv3d
        self.patch_embed = conv(in_channels, hidden, kernel_size=patch, stride=patch)
        self.register_buffer("pos_embed", sincos_pos_embed(self.grid, hidden), persistent=False)
        self.time_embed = TimeEmbed(256, hidden, time_scale)
        self.cond_embed = CondEmbed(
            hidden, num_classes=num_classes, cond_dim=cond_dim, sequence=True
        )
        self.blocks = nn.ModuleList([DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth)])
        self.final = FinalLayer(hidden, math.prod(patch) * self.out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT init: xavier linears, normal(0.02) embeddings, zero adaLN and output layers."""
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for layer in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        for layer in (self.final.ada[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """(B, N, prod(patch) * C) -> (B, C, *input_shape)."""
        n = len(self.grid)
        x = tokens.reshape(tokens.shape[0], *self.grid, *self.patch, self.out_channels)
        order = [0, 2 * n + 1] + [i for axis in range(n) for i in (1 + axis, 1 + n + axis)]
        return x.permute(order).reshape(tokens.shape[0], self.out_channels, *self.input_shape)

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        if tuple(x.shape[1:]) != (self.in_channels, *self.input_shape):
            raise ValueError(
                f"DiT built for input (B, {self.in_channels}, *{self.input_shape}), "
                f"got shape {tuple(x.shape)}"
            )
        batch = x.shape[0]
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, hidden)
        c = self.time_embed(t, batch)  # (B, hidden)
        e = self.cond_embed(cond, batch)
        if e is not None:
            c = c + e
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final(h, c))
