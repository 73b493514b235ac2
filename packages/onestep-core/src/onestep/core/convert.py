"""The one place where predictions are converted: eps, x0, v, velocity and score, on any path.

With x_t = alpha x0 + sigma eps (t=0 data, t=1 noise):
    eps       the noise                              (Ho et al. 2020)
    x0        the clean data                         (Karras et al. 2022's D(x; sigma))
    v         alpha eps - sigma x0                   (Salimans & Ho 2022, Eq. 6 on any path)
    velocity  dx_t/dt = alpha' x0 + sigma' eps       (flow matching, Lipman et al. 2022)
    score     grad log p_t(x_t) = -eps / sigma       (Song et al. 2021)
Every kind is affine in (x0, eps) given x_t, so each converts through the pair (x0, eps).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .paths import Coefficients, Path

__all__ = ["KINDS", "convert", "to_x0_eps", "from_x0_eps", "broadcast"]

KINDS = ("eps", "x0", "v", "velocity", "score")


def broadcast(c: Tensor, x: Tensor) -> Tensor:
    """Reshape a scalar or per-sample coefficient (B,) to broadcast over x (B, ...)."""
    c = c.to(device=x.device, dtype=x.dtype)
    if c.ndim == 0:
        return c
    if c.ndim == 1 and c.shape[0] in (1, x.shape[0]):
        return c.reshape(-1, *([1] * (x.ndim - 1)))
    raise ValueError(f"time of shape {tuple(c.shape)} does not match a batch of shape "
                     f"{tuple(x.shape)}: pass a scalar or one time per sample")


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown prediction kind {kind!r}; known: {list(KINDS)}")


def _coeffs(path: Path, t, x: Tensor, kind: str) -> tuple[Tensor, ...]:
    """(alpha, sigma, d_alpha, d_sigma) broadcast to x; the derivatives (None) only for the
    velocity, the one kind that needs them."""
    if torch.is_tensor(t) and t.ndim == 1 and t.numel() > 1 and t.stride(0) == 0:
        t = t[:1]  # one time expanded over the batch (as samplers pass it): compute it once
    if kind != "velocity":
        return (*(broadcast(v, x) for v in path.alpha_sigma(t)), None, None)
    c: Coefficients = path.coefficients(t)
    return tuple(broadcast(v, x) for v in (c.alpha, c.sigma, c.d_alpha, c.d_sigma))


def to_x0_eps(kind: str, pred: Tensor, x_t: Tensor, t, path: Path) -> tuple[Tensor, Tensor]:
    """(x0, eps) from a prediction of the given kind."""
    _check(kind)
    a, s, da, ds = _coeffs(path, t, x_t, kind)
    if kind == "x0":
        return pred, (x_t - a * pred) / s
    if kind == "eps":
        return (x_t - s * pred) / a, pred
    if kind == "score":
        eps = -s * pred
        return (x_t - s * eps) / a, eps
    if kind == "v":
        # [a s; -s a] [x0; eps] = [x_t; v]
        n = a * a + s * s
        return (a * x_t - s * pred) / n, (s * x_t + a * pred) / n
    # velocity: [a s; da ds] [x0; eps] = [x_t; u]
    det = a * ds - s * da
    return (ds * x_t - s * pred) / det, (a * pred - da * x_t) / det


def from_x0_eps(kind: str, x0: Tensor, eps: Tensor, x_t: Tensor, t, path: Path) -> Tensor:
    """A prediction of the given kind from (x0, eps)."""
    _check(kind)
    if kind == "x0":
        return x0
    if kind == "eps":
        return eps
    a, s, da, ds = _coeffs(path, t, x_t, kind)
    if kind == "score":
        return -eps / s
    if kind == "v":
        return a * eps - s * x0
    return da * x0 + ds * eps


def convert(pred: Tensor, src: str, dst: str, x_t: Tensor, t, path: Path) -> Tensor:
    """Convert a prediction from kind `src` to kind `dst` at (x_t, t) on `path`."""
    _check(dst)
    if src == dst:
        _check(src)
        return pred
    x0, eps = to_x0_eps(src, pred, x_t, t, path)
    return from_x0_eps(dst, x0, eps, x_t, t, path)


def as_batch_time(t, x: Tensor) -> Tensor:
    """Times as a float64 tensor of shape (B,) on x's device."""
    t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    t = t.reshape(-1)
    if t.shape[0] == 1 and x.shape[0] != 1:
        t = t.expand(x.shape[0])
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"got {t.shape[0]} times for a batch of {x.shape[0]}")
    return t
