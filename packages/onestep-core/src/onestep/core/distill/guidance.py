"""Guidance in distillation: the guided teacher with a guidance scale per example, and the
guidance-conditioned student (one network for every w).

A student distilled from the guided teacher at one scale w (`guidance` in the DMD family's
configs, as DMD2 guides its real score) samples at that w only. Meng et al. 2023 ("On
Distillation of Guided Diffusion Models", CVPR, Sec. 4.1 and Eq. 6-7) instead train one student
for a range of w: each training example draws w ~ U[w_min, w_max], the teacher is guided with that
example's w, and the student takes w as an input (`nn.guidance.GuidanceConditioned`: a Fourier
embedding of w added to the time embedding). Methods that match distributions (DMD, DMD2) also
give their fake score w as an input, since the student's distribution depends on it.

Conditions carry w as `{"cond": c, "guidance": w}` (`nn.guidance.with_guidance_cond`); the
guided teacher, the student and the fake score all take that one condition.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..convert import as_batch_time, broadcast
from ..denoiser import Denoiser, _cat_cond, _expand_like
from ..nn.guidance import GuidanceConditioned, split_guidance, with_guidance_cond

__all__ = ["GuidedTeacher", "check_guidance_range", "draw_guidance", "guidance_conditioned",
           "is_guidance_conditioned"]


class GuidedTeacher(Denoiser):
    """The teacher with classifier-free guidance at a scale per example: for a condition
    {"cond": c, "guidance": w (B,)} it returns pred_u + w (pred_c - pred_u) in the network's own
    prediction space (Ho & Salimans 2022, Eq. 6, with w_i for example i). A plain condition is
    the teacher's own (unguided) prediction. Shares the teacher's network."""

    def __init__(self, teacher: Denoiser):
        super().__init__(teacher.model, teacher.path, prediction=teacher.prediction,
                         time_input=teacher.time_input, null_cond=teacher.null_cond)

    def forward(self, x_t: Tensor, t, cond=None) -> Tensor:
        cond, w = split_guidance(cond)
        if w is None:
            return super().forward(x_t, t, cond)
        if cond is None:
            raise ValueError("a guidance scale needs a condition (class labels) to guide with")
        t = as_batch_time(t, x_t)
        time = self.network_time(t).to(x_t.dtype)
        if self.null_cond is None:
            pred_c, pred_u = self._call(x_t, time, cond), self._call(x_t, time, None)
        else:
            both = self._call(torch.cat([x_t, x_t]), torch.cat([time, time]),
                              _cat_cond(cond, _expand_like(self.null_cond, cond)))
            pred_c, pred_u = both.chunk(2)
        w = torch.as_tensor(w, device=x_t.device, dtype=x_t.dtype).reshape(-1)
        return pred_u + broadcast(w.expand(x_t.shape[0]), x_t) * (pred_c - pred_u)


def guidance_conditioned(den: Denoiser, **embed) -> Denoiser:
    """`den` with its network wrapped by `GuidanceConditioned` (same path, prediction, time
    input and null condition; the weights are shared). `embed`: its dim and scale."""
    return Denoiser(GuidanceConditioned(den.model, **embed), den.path, prediction=den.prediction,
                    time_input=den.time_input, null_cond=den.null_cond)


def is_guidance_conditioned(model) -> bool:
    """Whether a Denoiser, a DenoiserGenerator or a network takes w as an input."""
    net = getattr(getattr(model, "denoiser", model), "model", model)
    return isinstance(net, GuidanceConditioned)


def check_guidance_range(value, name: str) -> None:
    """None or (w_min, w_max) with 0 <= w_min < w_max."""
    if value is None:
        return
    if len(value) != 2 or not 0.0 <= value[0] < value[1]:
        raise ValueError(f"{name} must be None or (w_min, w_max) with 0 <= w_min < w_max, got "
                         f"{tuple(value)!r}")


def draw_guidance(cond, batch: int, w_range: tuple[float, float], *, generator=None,
                  device=None) -> dict:
    """The condition with a guidance scale per example, w ~ U[w_min, w_max] (Meng et al. 2023,
    Sec. 4.1: w is sampled uniformly during training; [0, 4] on ImageNet 64x64)."""
    if cond is None:
        raise ValueError("a guidance-conditioned student needs a conditional teacher and data "
                         "with class labels (guidance mixes the conditional and null predictions)")
    lo, hi = w_range
    w = lo + (hi - lo) * torch.rand(batch, generator=generator, device=device)
    return with_guidance_cond(cond, w, batch, device)
