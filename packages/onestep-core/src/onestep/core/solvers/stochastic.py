"""Stochastic samplers: Euler ancestral, SDE-DPM-Solver++ and Euler-Maruyama on the reverse SDE.

Same signature as the ODE solvers; `generator` (None, a torch.Generator or one per sample) draws
the noise. The step to sigma = 0 adds no noise and returns the x0 prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from ._common import (
    Grid,
    check_order,
    check_orders_length,
    data_prediction,
    multistep_order,
    noise_like,
    report,
    require_finite_start,
)

__all__ = ["sample_euler_ancestral", "sample_dpmpp_sde", "sample_euler_maruyama"]


def sample_euler_ancestral(
    denoiser,
    x: Tensor,
    times,
    *,
    cond=None,
    generator=None,
    callback=None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Euler ancestral sampling in sigma_ve = sigma/alpha (Ho et al. 2020's ancestral step, as
    k-diffusion's sample_euler_ancestral): an Euler step down to sigma_down, then fresh noise up to
    sigma_{i+1}, with sigma_up = min(sigma_{i+1}, eta sigma_{i+1} sqrt(1 - e^{-2h})).
    x: (B, ...)."""
    g = Grid(denoiser.path, times)
    for i in range(g.steps):
        # 1. x0 and eps (= the EDM direction d = (y - D(y)) / sigma_ve) at (x_i, t_i)
        x0, eps = denoiser.x0_eps(x, g.t[i], cond)
        report(callback, i, g.t[i], x, x0)
        # 2. split sigma_{i+1} into the deterministic sigma_down and the injected sigma_up
        up = min(1.0, eta * math.sqrt(-math.expm1(-2.0 * g.h(i)))) if eta > 0 else 0.0
        down = math.sqrt(1.0 - up * up)
        # 3. y_down = y + (sigma_down - sigma) d = x0 + sigma_down eps, then add sigma_up z
        x = g.alpha[i + 1] * x0 + (g.sigma[i + 1] * down) * eps
        if up > 0 and g.sigma[i + 1] > 0:
            x = x + (g.sigma[i + 1] * up * s_noise) * noise_like(x, generator)
    return x


def sample_dpmpp_sde(
    denoiser,
    x: Tensor,
    times,
    *,
    cond=None,
    generator=None,
    callback=None,
    order: int = 2,
    orders: Sequence[int] | None = None,
    eta: float = 1.0,
    lower_order_final: bool = True,
    thresholding: float | None = None,
    max_value: float = 1.0,
) -> Tensor:
    """SDE-DPM-Solver++(1) and (2M), multistep, data prediction (Lu et al. 2022b, Sec. 5):
    x_t = sigma_t/sigma_s e^{-eta h} x_s + alpha_t (1 - e^{-(1+eta) h}) D + sigma_t
    sqrt(1 - e^{-2 eta h}) z, with D = x0 (order 1) or (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}
    (order 2); eta = 1 is the paper's SDE, eta = 0 DPM-Solver++(2M). x: (B, ...)."""
    g = Grid(denoiser.path, times)
    check_order(order, 2, "dpmpp_sde")
    check_orders_length(orders, g, "dpmpp_sde")
    x0_fn = data_prediction(denoiser, cond, thresholding, max_value)
    hist: list[tuple[float, Tensor]] = []  # (lam_j, x0_j), finite lam only
    for i in range(g.steps):
        # 1. x0 at (x_i, t_i)
        m0 = x0_fn(x, g.t[i])
        report(callback, i, g.t[i], x, m0)
        h = g.h(i)
        k = (
            1
            if g.pure_noise(i)
            else multistep_order(g, i, order, orders, len(hist), lower_order_final)
        )
        # 2. D: the data prediction, or its 2M extrapolation with r = h_{i-1} / h_i
        d = m0
        if k == 2:
            lam1, m1 = hist[-1]
            r = (g.lam[i] - lam1) / h
            d = (1 + 1 / (2 * r)) * m0 - (1 / (2 * r)) * m1
        # 3. the exact linear part, the data term and the injected noise
        eh = eta * h if eta > 0 else 0.0
        x = ((g.sigma[i + 1] / g.sigma[i]) * math.exp(-eh)) * x + (
            g.alpha[i + 1] * -math.expm1(-h - eh)
        ) * d
        if eh > 0 and g.sigma[i + 1] > 0:
            x = x + (g.sigma[i + 1] * math.sqrt(-math.expm1(-2.0 * eh))) * noise_like(x, generator)
        if not g.pure_noise(i):
            hist = (hist + [(g.lam[i], m0)])[-1:]
    return x


def sample_euler_maruyama(
    denoiser, x: Tensor, times, *, cond=None, generator=None, callback=None
) -> Tensor:
    """Euler-Maruyama on the reverse-time SDE dx = [f x - g^2 score] dt + g dw (Song et al. 2021,
    Eq. 6), with f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2 from the path; the
    step to t = 0 returns the x0 prediction. x: (B, ...)."""
    path = denoiser.path
    g = Grid(path, times)
    require_finite_start(g, "euler_maruyama")
    for i in range(g.steps):
        t, dt = g.t[i], g.t[i + 1] - g.t[i]  # dt < 0
        # 1. x0 and eps at (x_i, t_i); score = -eps / sigma
        x0, eps = denoiser.x0_eps(x, t, cond)
        report(callback, i, t, x, x0)
        if g.to_zero(i):
            x = x0
            continue
        # 2. drift and diffusion of the forward SDE at t
        c = path.coefficients(t)
        a, s, da, ds = c.alpha.item(), c.sigma.item(), c.d_alpha.item(), c.d_sigma.item()
        f = da / a
        g2 = 2.0 * s * ds - 2.0 * f * s * s
        # 3. x_{i+1} = x_i + (f x - g^2 score) dt + g sqrt(|dt|) z
        x = (
            x
            + (f * dt) * x
            + (g2 / s * dt) * eps
            + math.sqrt(max(g2, 0.0) * -dt) * noise_like(x, generator)
        )
    return x
