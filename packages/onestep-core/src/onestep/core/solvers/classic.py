"""Classical ODE solvers of the probability-flow ODE: Euler, Heun (EDM), DDIM, iPNDM and the
adaptive Dormand-Prince reference.

Each is `sample_<name>(denoiser, x, times, *, cond=None, generator=None, callback=None, **options)`
with x: (B, ...) noise already scaled to times[0]; it returns x at times[-1] (the data for 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..convert import convert, from_x0_eps
from ._common import (
    Grid,
    check_order,
    check_orders_length,
    lagrange_integrals,
    multistep_order,
    noise_like,
    report,
    require_finite_start,
    singlestep_orders,
)

__all__ = ["sample_euler", "sample_heun", "sample_ddim", "sample_ipndm", "sample_rk45"]


def sample_euler(denoiser, x: Tensor, times, *, cond=None, generator=None, callback=None) -> Tensor:
    """Euler's method on the probability-flow ODE dx/dt = velocity (Song et al. 2021, Eq. 13), in t.
    The step to t = 0, where a VP or EDM velocity is singular, returns the x0 prediction (Euler's
    step in sigma/alpha; the same as the Euler step in t on rectified flow). x: (B, ...)."""
    g = Grid(denoiser.path, times)
    for i in range(g.steps):
        t, t_next = g.t[i], g.t[i + 1]
        # 1. velocity u = alpha' x0 + sigma' eps at (x, t)
        x0, eps = denoiser.x0_eps(x, t, cond)
        report(callback, i, t, x, x0)
        if g.to_zero(i):
            # 2'. last step to sigma = 0: the x0 prediction
            x = x0
            continue
        u = from_x0_eps("velocity", x0, eps, x, t, denoiser.path)
        # 2. x_{i+1} = x_i + (t_{i+1} - t_i) u
        x = x + (t_next - t) * u
    return x


def sample_heun(
    denoiser,
    x: Tensor,
    times,
    *,
    cond=None,
    generator=None,
    callback=None,
    orders: Sequence[int] | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """Heun's 2nd-order method with optional churn (Karras et al. 2022, Algorithm 2), on
    y = x / alpha against sigma_ve = sigma / alpha (EDM's ODE dy/dsigma = eps), so on any path.
    The step to sigma = 0 is an Euler step; `orders` (1 or 2 per step) picks Euler steps
    elsewhere. s_tmin, s_tmax are sigma_ve bounds. x: (B, ...)."""
    path = denoiser.path
    g = Grid(path, times)
    require_finite_start(g, "heun")
    orders = singlestep_orders(g, 2, orders, 2, "heun")
    gamma_max = min(s_churn / g.steps, math.sqrt(2.0) - 1.0)
    for i in range(g.steps):
        sig, sig_next = g.sigma_ve(i), g.sigma_ve(i + 1)
        t_hat, sig_hat, y = g.t[i], sig, x / g.alpha[i]
        # 1. churn (Alg. 2 lines 4-6): raise the noise to sigma_hat = (1 + gamma) sigma
        gamma = gamma_max if s_tmin <= sig <= s_tmax else 0.0
        if gamma > 0:
            t_hat = path.t_from_sigma_ve(sig * (1 + gamma)).item()
            sig_hat = path.sigma_ve(t_hat).item()  # clipped to the path's range at t = 1
            if sig_hat > sig:
                y = y + math.sqrt(sig_hat**2 - sig**2) * s_noise * noise_like(y, generator)
        # 2. Euler step (lines 7-8): d = (y - D(y)) / sigma = eps
        a_hat = path.alpha(t_hat).item()
        x0, eps = denoiser.x0_eps(a_hat * y, t_hat, cond)
        report(callback, i, t_hat, a_hat * y, x0)
        y_next = y + (sig_next - sig_hat) * eps
        # 3. second-order correction (lines 9-11) unless this step is first order
        if orders[i] == 2:
            _, eps_next = denoiser.x0_eps(g.alpha[i + 1] * y_next, g.t[i + 1], cond)
            y_next = y + (sig_next - sig_hat) * 0.5 * (eps + eps_next)
        x = g.alpha[i + 1] * y_next
    return x


def sample_ddim(
    denoiser, x: Tensor, times, *, cond=None, generator=None, callback=None, eta: float = 0.0
) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12) on any path: x_t = alpha_t x0 + sqrt(sigma_t^2 - s^2) eps
    + s z with s = eta sigma_t sqrt(1 - e^{-2h}) (Eq. 16; eta = 0 deterministic, 1 DDPM).
    x: (B, ...)."""
    g = Grid(denoiser.path, times)
    for i in range(g.steps):
        # 1. predict x0 and eps at (x_i, t_i)
        x0, eps = denoiser.x0_eps(x, g.t[i], cond)
        report(callback, i, g.t[i], x, x0)
        a_t, s_t = g.alpha[i + 1], g.sigma[i + 1]
        # 2. the DDIM noise level s_i (Eq. 16, written with h = lam_{i+1} - lam_i)
        s = eta * s_t * math.sqrt(-math.expm1(-2.0 * g.h(i))) if eta > 0 else 0.0
        # 3. x_{i+1} = alpha x0 + direction pointing to x_t + random noise (Eq. 12)
        x = a_t * x0 + math.sqrt(max(s_t**2 - s**2, 0.0)) * eps
        if s > 0:
            x = x + s * noise_like(x, generator)
    return x


def sample_ipndm(
    denoiser,
    x: Tensor,
    times,
    *,
    cond=None,
    generator=None,
    callback=None,
    order: int = 4,
    orders: Sequence[int] | None = None,
    lower_order_final: bool = True,
) -> Tensor:
    """Improved PNDM (Zhang & Chen 2023, App.: iPNDM): Adams-Bashforth of order <= 4 on the
    eps-ODE dy/drho = eps (y = x / alpha, rho = sigma / alpha), lower orders to warm start; the
    weights integrate the Lagrange interpolant exactly, so they are PNDM's on a uniform grid and
    keep the order on any grid. x: (B, ...)."""
    g = Grid(denoiser.path, times)
    check_order(order, 4, "ipndm")
    check_orders_length(orders, g, "ipndm")
    hist: list[tuple[float, Tensor]] = []  # (rho_j, eps_j), newest last, finite rho only
    for i in range(g.steps):
        # 1. eps at (x_i, t_i)
        x0, eps = denoiser.x0_eps(x, g.t[i], cond)
        report(callback, i, g.t[i], x, x0)
        rho, rho_next = g.sigma_ve(i), g.sigma_ve(i + 1)
        k = (
            1
            if math.isinf(rho)
            else multistep_order(g, i, order, orders, len(hist), lower_order_final)
        )
        if k == 1:
            # 2'. first order: y_{i+1} = y_i + (rho_{i+1} - rho_i) eps, = DDIM
            x = g.alpha[i + 1] * x0 + g.sigma[i + 1] * eps
        else:
            # 2. y_{i+1} = y_i + sum_j w_j eps_j, w_j = int L_j(rho) drho over the step
            nodes = [rho] + [r for r, _ in hist[::-1][: k - 1]]
            epss = [eps] + [e for _, e in hist[::-1][: k - 1]]
            w = lagrange_integrals(nodes, rho, rho_next, lambda q: q, lambda q: 1.0 + 0 * q)
            y = x / g.alpha[i] + sum(wj * ej for wj, ej in zip(w, epss, strict=True))
            x = g.alpha[i + 1] * y
        if not math.isinf(rho):
            hist = (hist + [(rho, eps)])[-3:]
    return x


# Dormand-Prince 5(4) (Dormand & Prince 1980): nodes c, stages a, 5th-order b, 4th-order b_hat.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B = _A[6] + (0.0,)
_B_HAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def sample_rk45(
    denoiser,
    x: Tensor,
    times,
    *,
    cond=None,
    generator=None,
    callback=None,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    sigma_stop: float = 1e-4,
    max_nfe: int = 100_000,
    stats: dict | None = None,
) -> Tensor:
    """Adaptive Dormand-Prince RK5(4) (Dormand & Prince 1980; Hairer et al., Sec. II.5) on the
    probability-flow ODE dx/dt = velocity in t, through every time of `times`: the reference
    solution. A final t = 0 is reached by integrating to sigma_ve = sigma_stop and returning the
    x0 prediction there (error O(sigma_stop^2)). `stats` (a dict) receives nfe, accepted and
    rejected steps. x: (B, ...)."""
    path = denoiser.path
    g = Grid(path, times)
    n = {"nfe": 0, "accepted": 0, "rejected": 0}

    def velocity(x, t):
        n["nfe"] += 1
        if n["nfe"] > max_nfe:
            raise RuntimeError(f"rk45 exceeded max_nfe={max_nfe} (rtol={rtol}, atol={atol})")
        return denoiser.velocity(x, t, cond)

    ends = list(g.t[1:])
    if g.to_zero(g.steps - 1):
        ends[-1] = min(path.t_from_sigma_ve(sigma_stop).item(), g.t[-2])
    t, dt = g.t[0], -0.01 * (g.t[0] - g.t[-1])
    k1 = velocity(x, t)
    for i, t_end in enumerate(ends):
        if callback is not None:
            report(callback, i, t, x, convert(k1, "velocity", "x0", x, t, path))
        while t - t_end > 1e-12:  # (a last gap below 1e-12 in t is left out)
            dt = max(dt, t_end - t)  # dt < 0: do not overshoot t_end
            # 1. the six stages (k7 = f(x_new) is reused as the next k1: FSAL)
            ks = [k1]
            for s in range(1, 7):
                xs = x + dt * sum(a * k for a, k in zip(_A[s], ks, strict=False) if a != 0.0)
                ks.append(velocity(xs, t + _C[s] * dt))
            x_new = xs
            # 2. error estimate from the embedded 4th-order solution
            err = dt * sum((b - bh) * k for b, bh, k in zip(_B, _B_HAT, ks, strict=True) if b != bh)
            scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
            e = (err / scale).pow(2).mean().sqrt().item()
            if not math.isfinite(e):
                raise RuntimeError(f"rk45: non-finite error estimate at t={t}")
            # 3. accept or reject, then adapt the step (safety 0.9, growth in [0.2, 10])
            if e <= 1.0:
                t, x, k1 = t + dt, x_new, ks[6]
                n["accepted"] += 1
            else:
                n["rejected"] += 1
            dt = dt * min(10.0, max(0.2, 0.9 * max(e, 1e-10) ** -0.2))
        t = t_end  # exact (floating point) end of the interval
    if g.to_zero(g.steps - 1):
        n["nfe"] += 1
        x = denoiser.x0(x, t, cond)
    if stats is not None:
        stats.update(n)
    return x
