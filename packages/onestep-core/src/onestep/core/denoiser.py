"""Denoiser: any network + a path + what it predicts + what time it expects.

Samplers, losses and distillers see only Denoisers; they ask for x0, eps, velocity or score and
never branch on what the network predicts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .convert import KINDS, as_batch_time, convert, to_x0_eps
from .paths import Path

__all__ = ["Denoiser", "TIME_INPUTS"]

TIME_INPUTS = ("t", "index", "sigma", "log_sigma", "t1000")


class Denoiser(nn.Module):
    """Wrap `model(x_t, time)` or `model(x_t, time, cond)` as a denoiser on `path`.

    prediction: what the network outputs, one of "eps", "x0", "v", "velocity", "score".
    time_input: the time the network takes, computed from t in [0, 1]:
        "t" (t itself), "index" (discrete step n = t*N - 1 of a `VP.from_betas` path),
        "sigma" (sigma/alpha, EDM's noise level), "log_sigma" (its log), "t1000" (1000 t),
        or a callable mapping float64 t of shape (B,) to the network's time.
    guidance: classifier-free guidance scale w (Ho & Salimans 2022, Eq. 6 written as
        uncond + w (cond - uncond); w=1 is no guidance). Applied in the network's own
        prediction space, which equals guiding eps, x0 or velocity: each is affine in the
        prediction with the same x_t coefficient.
    null_cond: the "no condition" input batched with cond for guidance (e.g. the null class
        index). None calls the network without cond for the unconditional half.
    """

    def __init__(self, model: Callable, path: Path, *, prediction: str = "eps",
                 time_input: str | Callable[[Tensor], Tensor] = "t", guidance: float = 1.0,
                 null_cond=None):
        super().__init__()
        if prediction not in KINDS:
            raise ValueError(f"unknown prediction {prediction!r}; known: {list(KINDS)}")
        if not callable(time_input) and time_input not in TIME_INPUTS:
            raise ValueError(f"unknown time_input {time_input!r}; known: {list(TIME_INPUTS)} "
                             "or a callable")
        if time_input == "index" and getattr(path, "num_steps", None) is None:
            raise ValueError("time_input='index' needs a discrete path (VP.from_betas)")
        self.model = model
        self.path = path
        self.prediction = prediction
        self.time_input = time_input
        self.guidance = float(guidance)
        self.null_cond = null_cond

    # -- the network call ------------------------------------------------------------------
    def network_time(self, t: Tensor) -> Tensor:
        """The network's time input for float64 times t of shape (B,)."""
        ti = self.time_input
        if callable(ti):
            return ti(t)
        if ti == "t":
            return t
        if ti == "t1000":
            return 1000.0 * t
        if ti == "index":
            return self.path.index(t)
        if ti == "sigma":
            return self.path.sigma_ve(t)
        return torch.log(self.path.sigma_ve(t))

    def _call(self, x_t: Tensor, time: Tensor, cond) -> Tensor:
        out = self.model(x_t, time) if cond is None else self.model(x_t, time, cond)
        if not torch.is_tensor(out):  # diffusers-style output objects
            out = out.sample if hasattr(out, "sample") else out[0]
        if out.shape != x_t.shape:
            raise ValueError(f"the network returned shape {tuple(out.shape)} for an input of "
                             f"shape {tuple(x_t.shape)}")
        return out

    def forward(self, x_t: Tensor, t, cond=None) -> Tensor:
        """The network's own prediction, with classifier-free guidance when guidance != 1."""
        t = as_batch_time(t, x_t)
        time = self.network_time(t).to(x_t.dtype)
        if cond is None or self.guidance == 1.0:
            return self._call(x_t, time, cond)
        if self.null_cond is None:
            pred_c, pred_u = self._call(x_t, time, cond), self._call(x_t, time, None)
        else:
            null = _expand_like(self.null_cond, cond)
            both = self._call(torch.cat([x_t, x_t]), torch.cat([time, time]),
                              _cat_cond(cond, null))
            pred_c, pred_u = both.chunk(2)
        return pred_u + self.guidance * (pred_c - pred_u)

    # -- what samplers and losses ask for --------------------------------------------------
    def predict(self, kind: str, x_t: Tensor, t, cond=None) -> Tensor:
        t = as_batch_time(t, x_t)
        return convert(self(x_t, t, cond), self.prediction, kind, x_t, t, self.path)

    def x0_eps(self, x_t: Tensor, t, cond=None) -> tuple[Tensor, Tensor]:
        t = as_batch_time(t, x_t)
        return to_x0_eps(self.prediction, self(x_t, t, cond), x_t, t, self.path)

    def x0(self, x_t: Tensor, t, cond=None) -> Tensor:
        return self.predict("x0", x_t, t, cond)

    def eps(self, x_t: Tensor, t, cond=None) -> Tensor:
        return self.predict("eps", x_t, t, cond)

    def v(self, x_t: Tensor, t, cond=None) -> Tensor:
        return self.predict("v", x_t, t, cond)

    def velocity(self, x_t: Tensor, t, cond=None) -> Tensor:
        return self.predict("velocity", x_t, t, cond)

    def score(self, x_t: Tensor, t, cond=None) -> Tensor:
        return self.predict("score", x_t, t, cond)

    def with_guidance(self, guidance: float, null_cond=None) -> Denoiser:
        """The same network and path with another guidance scale (shares the weights)."""
        return Denoiser(self.model, self.path, prediction=self.prediction,
                        time_input=self.time_input, guidance=guidance,
                        null_cond=self.null_cond if null_cond is None else null_cond)

    def extra_repr(self) -> str:
        ti = self.time_input if isinstance(self.time_input, str) else "callable"
        return f"path={self.path!r}, prediction={self.prediction!r}, time_input={ti!r}, " \
               f"guidance={self.guidance}"


def _expand_like(null, cond):
    if isinstance(cond, dict):
        return {k: _expand_like(null[k] if isinstance(null, dict) else null, v)
                for k, v in cond.items()}
    null = torch.as_tensor(null, device=cond.device, dtype=cond.dtype)
    return null if null.shape == cond.shape else null.expand_as(cond)


def _cat_cond(a, b):
    if isinstance(a, dict):
        return {k: torch.cat([a[k], b[k]]) for k in a}
    return torch.cat([a, b])
