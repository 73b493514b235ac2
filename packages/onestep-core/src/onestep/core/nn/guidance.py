"""Guidance-conditioned networks: the classifier-free guidance scale w as an input of the network.

Meng et al. 2023, "On Distillation of Guided Diffusion Models" (CVPR), Sec. 4.1: one student
covers a range of guidance strengths by taking w as an input, embedded with Fourier features and
added to the time embedding. `GuidanceConditioned` does this around any core network with one
`TimeEmbed` (MLP, UNet, DiT, also inside EDMPrecond), so the teacher's weights carry over and the
wrapped network equals the original at initialisation (the w branch's last layer is zero).

The condition of a guidance-conditioned network is a dict `{"cond": c, "guidance": w}`: c is what
the plain network takes (class labels, vectors or None) and w a float (B,) or a number. A plain
condition (no "guidance" key) means w = 1, no guidance, as for a teacher Denoiser.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from onestep.core.nn.embed import SinusoidalEmbedding, TimeEmbed, broadcast_time

__all__ = ["GUIDANCE_KEY", "GuidanceConditioned", "GuidedTimeEmbed", "split_guidance",
           "with_guidance_cond"]

GUIDANCE_KEY = "guidance"


def split_guidance(cond) -> tuple[object, Tensor | float | None]:
    """(plain condition, w or None) of a condition that may carry a guidance scale."""
    if isinstance(cond, dict) and GUIDANCE_KEY in cond:
        rest = {k: v for k, v in cond.items() if k != GUIDANCE_KEY}
        if set(rest) - {"cond"}:
            raise ValueError(f"a guidance condition holds 'cond' and 'guidance', got keys "
                             f"{sorted(cond)}")
        return rest.get("cond"), cond[GUIDANCE_KEY]
    return cond, None


def with_guidance_cond(cond, w: Tensor | float, batch: int, device=None) -> dict:
    """`{"cond": cond, "guidance": w}` with w as float32 (batch,), for guidance-conditioned
    networks and `distill.guidance.GuidedTeacher`."""
    return {"cond": cond, GUIDANCE_KEY: broadcast_time(w, batch, device)}


class GuidedTimeEmbed(nn.Module):
    """A network's `TimeEmbed` plus a Fourier embedding of w: time(t) + MLP(sinusoid(w)).
    (B,) -> (B, hidden). w is set by the enclosing `GuidanceConditioned` for each call."""

    def __init__(self, time: TimeEmbed, dim: int, scale: float):
        super().__init__()
        self.time = time
        self.out_dim = time.out_dim
        self.sinusoid = SinusoidalEmbedding(dim, scale)
        self.mlp = nn.Sequential(nn.Linear(dim, time.out_dim), nn.SiLU(),
                                 nn.Linear(time.out_dim, time.out_dim))
        nn.init.zeros_(self.mlp[2].weight)  # w enters as a zero update: the teacher at init
        nn.init.zeros_(self.mlp[2].bias)
        self.w: Tensor | None = None

    def forward(self, t: Tensor | float, batch: int | None = None) -> Tensor:
        emb = self.time(t, batch)  # (B, hidden)
        w = self.w if self.w is not None else torch.ones(emb.shape[0], device=emb.device)
        feat = self.sinusoid(w.to(emb.device))  # (B, dim)
        return emb + self.mlp(feat.to(emb.dtype))


class GuidanceConditioned(nn.Module):
    """`net(x, t, cond)` that also takes the guidance scale: cond = {"cond": c, "guidance": w}.

    net: any network with exactly one `TimeEmbed` submodule (its time embedding is replaced by a
    `GuidedTimeEmbed`, keeping its weights). dim: Fourier features of w; scale: w is multiplied by
    it before the sinusoid (100 spreads w in [0, 10] over the 0..1000 range the time embedding
    uses)."""

    def __init__(self, net: nn.Module, dim: int = 64, scale: float = 100.0):
        super().__init__()
        from onestep.core.nn import network_name

        names = [n for n, m in net.named_modules() if isinstance(m, TimeEmbed)]
        if len(names) != 1:
            raise ValueError(f"a guidance-conditioned network needs exactly one TimeEmbed in "
                             f"{type(net).__name__}, found {len(names)}")
        self.config = {"net": {"name": network_name(net), "config": net.config},
                       "dim": int(dim), "scale": float(scale)}
        parent, _, child = names[0].rpartition(".")
        owner = net.get_submodule(parent) if parent else net
        setattr(owner, child, GuidedTimeEmbed(getattr(owner, child), dim, scale))
        self.net = net
        self._embed_name = f"net.{names[0]}"  # not an attribute: no second state-dict entry

    @property
    def embed(self) -> GuidedTimeEmbed:
        return self.get_submodule(self._embed_name)

    @classmethod
    def from_config(cls, config: dict) -> GuidanceConditioned:
        from onestep.core.nn import build_network

        inner = build_network(config["net"]["name"], config["net"]["config"])
        return cls(inner, dim=config["dim"], scale=config["scale"])

    def forward(self, x: Tensor, t: Tensor | float, cond=None) -> Tensor:
        cond, w = split_guidance(cond)
        self.embed.w = None if w is None else broadcast_time(w, x.shape[0], x.device)
        try:
            return self.net(x, t, cond)
        finally:
            self.embed.w = None
