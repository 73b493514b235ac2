"""Exponential integrators in lam = log(alpha / sigma): DPM-Solver, DPM-Solver++, DEIS and UniPC.

The probability-flow ODE is linear in x given the model (Lu et al. 2022, Eq. 3.4; 2022b, Sec. 3):
    x_t = sigma_t / sigma_s x_s + alpha_t int_0^h e^{tau - h} x0(lam_s + tau) dtau   (data form)
    x_t / alpha_t = x_s / alpha_s + int_{rho_s}^{rho_t} eps drho, rho = sigma / alpha (noise form)
with h = lam_t - lam_s. The solvers differ in how they approximate x0 or eps over the step.
A step to sigma = 0 (lam = +inf) is first order: it returns the x0 prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ._common import (
    Grid,
    check_order,
    check_orders_length,
    data_prediction,
    exp_data_step,
    lagrange_integrals,
    multistep_order,
    phi,
    report,
    require_finite_start,
    singlestep_orders,
)

__all__ = [
    "sample_dpm_solver",
    "sample_dpmpp_2s",
    "sample_dpmpp_2m",
    "sample_dpmpp_3m",
    "sample_deis",
    "sample_unipc",
]


def sample_dpm_solver(
    denoiser,
    x: Tensor,
    times,
    *,
    cond=None,
    generator=None,
    callback=None,
    order: int = 3,
    orders: Sequence[int] | None = None,
) -> Tensor:
    """DPM-Solver-1/2/3, singlestep, noise prediction (Lu et al. 2022: Eq. 3.4 expanded in lam;
    Alg. 1 with r1 = 1/2, Alg. 2 with r1 = 1/3, r2 = 2/3); `orders` sets each step's order.
    x: (B, ...)."""
    g = Grid(denoiser.path, times)
    require_finite_start(g, "dpm_solver")
    orders = singlestep_orders(g, order, orders, 3, "dpm_solver")
    for i in range(g.steps):
        a_t, s_t, h = g.alpha[i + 1], g.sigma[i + 1], g.h(i)
        # 1. eps at the step's start
        x0, eps = denoiser.x0_eps(x, g.t[i], cond)
        report(callback, i, g.t[i], x, x0)
        # 2. DPM-Solver-1: alpha_t/alpha_s x_s - sigma_t (e^h - 1) eps = alpha_t x0 + sigma_t eps
        x_next = a_t * x0 + s_t * eps
        if orders[i] == 2:
            # 3. Alg. 1: u at lam_s + r1 h, then the first-difference correction
            r1 = 0.5
            t1, a1, s1 = g.at_lam(g.lam[i] + r1 * h)
            eps1 = denoiser.eps(a1 * x0 + s1 * eps, t1, cond)
            x_next = x_next - s_t / (2 * r1) * math.expm1(h) * (eps1 - eps)
        elif orders[i] == 3:
            # 3'. Alg. 2: u1 at r1 h, u2 at r2 h using D1, the update using D2
            r1, r2 = 1 / 3, 2 / 3
            t1, a1, s1 = g.at_lam(g.lam[i] + r1 * h)
            t2, a2, s2 = g.at_lam(g.lam[i] + r2 * h)
            d1 = denoiser.eps(a1 * x0 + s1 * eps, t1, cond) - eps
            u2 = a2 * x0 + s2 * eps - s2 * r2 / r1 * (math.expm1(r2 * h) / (r2 * h) - 1) * d1
            d2 = denoiser.eps(u2, t2, cond) - eps
            x_next = x_next - s_t / r2 * (math.expm1(h) / h - 1) * d2
        x = x_next
    return x


def sample_dpmpp_2s(
    denoiser,
    x: Tensor,
    times,
    *,
    cond=None,
    generator=None,
    callback=None,
    orders: Sequence[int] | None = None,
    r: float = 0.5,
    thresholding: float | None = None,
    max_value: float = 1.0,
) -> Tensor:
    """DPM-Solver++(2S), singlestep, data prediction (Lu et al. 2022b, Alg. 1); `orders` (1 or 2
    per step), `thresholding` the dynamic-thresholding quantile (Saharia et al. 2022).
    x: (B, ...)."""
    g = Grid(denoiser.path, times)
    require_finite_start(g, "dpmpp_2s")
    orders = singlestep_orders(g, 2, orders, 2, "dpmpp_2s")
    x0_fn = data_prediction(denoiser, cond, thresholding, max_value)
    for i in range(g.steps):
        # 1. x0 at the step's start
        m0 = x0_fn(x, g.t[i])
        report(callback, i, g.t[i], x, m0)
        d = m0
        if orders[i] == 2:
            # 2. the intermediate point s_i at lam_s + r h and its x0
            h = g.h(i)
            t1, a1, s1 = g.at_lam(g.lam[i] + r * h)
            u = (s1 / g.sigma[i]) * x + a1 * -math.expm1(-r * h) * m0
            m1 = x0_fn(u, t1)
            # 3. D_i = (1 - 1/(2r)) x0(x) + 1/(2r) x0(u)
            d = (1 - 1 / (2 * r)) * m0 + (1 / (2 * r)) * m1
        # 4. x_i = sigma_i / sigma_{i-1} x - alpha_i (e^{-h} - 1) D_i
        x = exp_data_step(x, d, g, i)
    return x


def sample_dpmpp_2m(
    denoiser,
    x: Tensor,
    times,
    *,
    cond=None,
    generator=None,
    callback=None,
    order: int = 2,
    orders: Sequence[int] | None = None,
    lower_order_final: bool = True,
    thresholding: float | None = None,
    max_value: float = 1.0,
) -> Tensor:
    """DPM-Solver++(2M), multistep, data prediction (Lu et al. 2022b, Alg. 2); the first step and
    the step to sigma = 0 are first order. x: (B, ...)."""
    return _dpmpp_multistep(
        denoiser,
        x,
        times,
        cond,
        callback,
        order,
        orders,
        lower_order_final,
        thresholding,
        max_value,
        max_order=2,
        name="dpmpp_2m",
    )


def sample_dpmpp_3m(
    denoiser,
    x: Tensor,
    times,
    *,
    cond=None,
    generator=None,
    callback=None,
    order: int = 3,
    orders: Sequence[int] | None = None,
    lower_order_final: bool = True,
    thresholding: float | None = None,
    max_value: float = 1.0,
) -> Tensor:
    """DPM-Solver++(3M), multistep, data prediction: the Taylor expansion of Lu et al. 2022b
    (Sec. 3) to the second lam-derivative of x0, estimated by divided differences of the last three
    predictions; warm-up and final steps as 2M. x: (B, ...)."""
    return _dpmpp_multistep(
        denoiser,
        x,
        times,
        cond,
        callback,
        order,
        orders,
        lower_order_final,
        thresholding,
        max_value,
        max_order=3,
        name="dpmpp_3m",
    )


def _dpmpp_multistep(
    denoiser,
    x,
    times,
    cond,
    callback,
    order,
    orders,
    lower_order_final,
    thresholding,
    max_value,
    max_order,
    name,
):
    g = Grid(denoiser.path, times)
    check_order(order, max_order, name)
    check_orders_length(orders, g, name)
    x0_fn = data_prediction(denoiser, cond, thresholding, max_value)
    hist: list[tuple[float, Tensor]] = []  # (lam_j, x0_j), newest last, finite lam only
    for i in range(g.steps):
        # 1. x0 at (x_i, t_i)
        m0 = x0_fn(x, g.t[i])
        report(callback, i, g.t[i], x, m0)
        k = (
            1
            if g.pure_noise(i)
            else multistep_order(g, i, order, orders, len(hist), lower_order_final)
        )
        h = g.h(i)
        if k == 1:
            # 2'. DPM-Solver++(1): x_{i+1} = sigma ratio x_i + alpha (1 - e^{-h}) x0
            x = exp_data_step(x, m0, g, i)
        elif k == 2:
            # 2. Alg. 2: r = h_{i-1} / h_i, D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}
            lam1, m1 = hist[-1]
            r = (g.lam[i] - lam1) / h
            x = exp_data_step(x, (1 + 1 / (2 * r)) * m0 - (1 / (2 * r)) * m1, g, i)
        else:
            # 2''. third order: D1 ~ h x0', D2 ~ h^2 x0'' / 2 from divided differences, then
            # x_{i+1} = sigma ratio x_i + alpha (A0 x0 + A1 / h D1 + 2 A2 / h^2 D2)
            (lam2, m2), (lam1, m1) = hist[-2], hist[-1]
            r0, r1 = (g.lam[i] - lam1) / h, (lam1 - lam2) / h
            d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = (g.sigma[i + 1] / g.sigma[i]) * x + g.alpha[i + 1] * (
                phi(0, h) * m0 + phi(1, h) / h * d1 + _D2_WEIGHT * phi(2, h) / h**2 * d2
            )
        if not g.pure_noise(i):
            hist = (hist + [(g.lam[i], m0)])[-2:]
    return x


# D2 ~ h^2 x0'' / 2 enters the Taylor expansion as A2(h) x0'' = 2 A2(h) / h^2 D2. The DPM-Solver
# reference code and diffusers weigh it by A2(h) / h^2, which makes their 3M second order
# (test_solvers_diffusers shows the two agree when this is set to 1).
_D2_WEIGHT = 2.0


def sample_deis(
    denoiser,
    x: Tensor,
    times,
    *,
    cond=None,
    generator=None,
    callback=None,
    order: int = 3,
    orders: Sequence[int] | None = None,
    variable: str = "t",
    form: str = "eps",
    lower_order_final: bool = True,
) -> Tensor:
    """tAB-DEIS (Zhang & Chen 2023, Sec. 4): the exponential integrator with the last `order`
    eps (form="eps") or x0 (form="x0") predictions extrapolated by a Lagrange polynomial in
    `variable` ("t" as in the paper, "rho" = sigma/alpha, or "log_rho" as diffusers), its
    product with the integrator's kernel integrated by Gauss-Legendre quadrature. x: (B, ...)."""
    path = denoiser.path
    g = Grid(path, times)
    check_order(order, 3, "deis")
    check_orders_length(orders, g, "deis")
    if form not in ("eps", "x0"):
        raise ValueError(f"deis form must be 'eps' or 'x0', got {form!r}")
    to_u = {
        "t": lambda lam: path.t_from_log_snr(2.0 * _as_t(lam)).numpy(),
        "rho": lambda lam: np.exp(-lam),
        "log_rho": lambda lam: -lam,
    }
    if variable not in to_u:
        raise ValueError(f"deis variable must be one of {sorted(to_u)}, got {variable!r}")
    u_of = to_u[variable]
    hist: list[tuple[float, Tensor]] = []  # (u_j, eps_j or x0_j), newest last
    for i in range(g.steps):
        # 1. eps and x0 at (x_i, t_i)
        x0, eps = denoiser.x0_eps(x, g.t[i], cond)
        report(callback, i, g.t[i], x, x0)
        pred = eps if form == "eps" else x0
        k = (
            1
            if g.pure_noise(i)
            else multistep_order(g, i, order, orders, len(hist), lower_order_final)
        )
        u_i = float(u_of(np.array([g.lam[i]]))[0]) if not g.pure_noise(i) else math.nan
        if k == 1:
            # 2'. first order (DDIM) in either form
            x = (
                exp_data_step(x, x0, g, i)
                if form == "x0"
                else g.alpha[i + 1] * x0 + g.sigma[i + 1] * eps
            )
        else:
            # 2. weights C_ij = int kernel(lam) L_j(u(lam)) dlam over [lam_i, lam_{i+1}]
            nodes = [u_i] + [u for u, _ in hist[::-1][: k - 1]]
            preds = [pred] + [p for _, p in hist[::-1][: k - 1]]
            if form == "eps":  # x/alpha advances by int eps drho, drho = -e^{-lam} dlam
                w = lagrange_integrals(nodes, g.lam[i], g.lam[i + 1], u_of, lambda q: -np.exp(-q))
                y = x / g.alpha[i] + sum(wj * p for wj, p in zip(w, preds, strict=True))
                x = g.alpha[i + 1] * y
            else:  # x/sigma advances by int x0 d(alpha/sigma), d(alpha/sigma) = e^{lam} dlam
                w = lagrange_integrals(nodes, g.lam[i], g.lam[i + 1], u_of, lambda q: np.exp(q))
                y = x / g.sigma[i] + sum(wj * p for wj, p in zip(w, preds, strict=True))
                x = g.sigma[i + 1] * y
        if not g.pure_noise(i):
            hist = (hist + [(u_i, pred)])[-2:]
    return x


def _as_t(lam):
    return torch.as_tensor(lam, dtype=torch.float64)


def sample_unipc(
    denoiser,
    x: Tensor,
    times,
    *,
    cond=None,
    generator=None,
    callback=None,
    order: int = 2,
    orders: Sequence[int] | None = None,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
    thresholding: float | None = None,
    max_value: float = 1.0,
) -> Tensor:
    """UniPC (Zhao et al. 2023, Sec. 3): predictor UniP-p plus corrector UniC-p (order p + 1)
    in data prediction, with B(h) = h ("bh1") or 1 - e^{-h} ("bh2"). The corrector of x_{i+1}
    reuses the model call at x_{i+1} that the next predictor needs (no extra NFE); there is no
    corrector after the last step. x: (B, ...)."""
    g = Grid(denoiser.path, times)
    check_order(order, 3, "unipc")
    check_orders_length(orders, g, "unipc")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unipc variant must be 'bh1' or 'bh2', got {variant!r}")
    x0_fn = data_prediction(denoiser, cond, thresholding, max_value)
    hist: list[tuple[float, Tensor]] = []  # (lam_j, x0_j), newest last, finite lam only
    last = None  # the last predictor step: (i, x_i, its order)
    for i in range(g.steps):
        # 1. x0 at the predicted x_i
        m = x0_fn(x, g.t[i])
        # 2. UniC: correct x_i with this x0, at no extra NFE
        if corrector and last is not None:
            j, x_j, k = last
            x = _unipc_update(x_j, hist, g, j, k, variant, m_new=m)
        report(callback, i, g.t[i], x, m)
        last = None
        if not g.pure_noise(i):
            hist = (hist + [(g.lam[i], m)])[-3:]
            k = multistep_order(g, i, order, orders, len(hist) - 1, lower_order_final)
            last = (i, x, k)
        else:
            k = 1
        # 3. UniP: predict x_{i+1}
        x = _unipc_update(x, hist, g, i, k, variant) if k > 1 else exp_data_step(x, m, g, i)
    return x


def _unipc_update(x: Tensor, hist, g: Grid, i: int, p: int, variant: str, m_new=None) -> Tensor:
    """UniP-p (m_new None) or UniC-p from x_i with x0 history `hist` (its last entry at lam_i):
    x_{i+1} = sigma ratio x_i + alpha (1 - e^{-h}) x0_i + alpha B(h) sum_m a_m D_m / r_m, with
    D_m = x0(lam_i + r_m h) - x0_i and a solving sum_m a_m r_m^{k-1} = k! A_k(h) / (h^k B(h))."""
    h = g.h(i)
    lam_i, m0 = hist[-1]
    past = hist[-p:-1][::-1] if p > 1 else []  # p - 1 earlier points, newest first
    rs = [(lam - lam_i) / h for lam, _ in past]
    ds = [(mk - m0) / rk for (_, mk), rk in zip(past, rs, strict=True)]
    if m_new is not None:
        rs, ds = rs + [1.0], ds + [m_new - m0]
    b_h = h if variant == "bh1" else -math.expm1(-h)
    x_next = exp_data_step(x, m0, g, i)
    if not ds:
        return x_next
    if len(ds) == 1 and (m_new is not None or p == 2):
        # UniC-1 and UniP-2 take a = 1/2 (the consistent trapezoid/midpoint weight)
        a = [0.5]
    else:
        n = len(ds)
        r_mat = np.array([[r**k for r in rs] for k in range(n)])
        rhs = np.array([math.factorial(k) * phi(k, h) / (h**k * b_h) for k in range(1, n + 1)])
        a = np.linalg.solve(r_mat, rhs).tolist()
    return x_next + (g.alpha[i + 1] * b_h) * sum(ak * dk for ak, dk in zip(a, ds, strict=True))
