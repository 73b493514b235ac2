"""What the solvers share: the time grid, per-step orders, noise, thresholding and quadrature.

Conventions: `times` is a float64 1-D tensor, strictly decreasing from t_0 (noisiest) to t_K
(usually 0, the data). lam = log(alpha / sigma) = logSNR / 2 is DPM-Solver's lambda: it is
+inf where sigma = 0 (t = 0) and -inf where alpha = 0 (pure noise, rectified flow at t = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..paths import Path

Callback = Callable[[dict], None]


def check_times(times) -> Tensor:
    """`times` as a CPU float64 1-D tensor, checked: at least 2 entries in [0, 1], strictly
    decreasing."""
    times = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    if times.ndim != 1 or times.numel() < 2:
        raise ValueError(
            f"times must be a 1-D tensor with at least 2 entries, got shape {tuple(times.shape)}"
        )
    if not bool(torch.isfinite(times).all()) or times.min() < 0 or times.max() > 1:
        raise ValueError(f"times must lie in [0, 1], got {times.tolist()}")
    if not bool((times[1:] < times[:-1]).all()):
        raise ValueError(
            f"times must be strictly decreasing (t=1 noise, t=0 data), got {times.tolist()}"
        )
    return times


class Grid:
    """alpha, sigma and lam at every time of a schedule, as Python floats (float64)."""

    def __init__(self, path: Path, times):
        times = check_times(times)
        self.path = path
        self.t: list[float] = times.tolist()
        self.alpha: list[float] = path.alpha(times).tolist()
        self.sigma: list[float] = path.sigma(times).tolist()
        self.lam: list[float] = (0.5 * path.log_snr(times)).tolist()
        self.steps = len(self.t) - 1

    def h(self, i: int) -> float:
        """The step's logSNR/2 increment lam_{i+1} - lam_i (> 0; +inf on a step to sigma = 0)."""
        return self.lam[i + 1] - self.lam[i]

    def to_zero(self, i: int) -> bool:
        """Whether step i ends at sigma = 0, where lam = +inf and only first order is defined."""
        return self.sigma[i + 1] == 0.0

    def pure_noise(self, i: int) -> bool:
        """Whether time i is pure noise (alpha = 0, lam = -inf)."""
        return self.alpha[i] == 0.0

    def sigma_ve(self, i: int) -> float:
        return math.inf if self.alpha[i] == 0.0 else self.sigma[i] / self.alpha[i]

    def at_lam(self, lam: float) -> tuple[float, float, float]:
        """(t, alpha, sigma) at an intermediate lam (singlestep solvers' extra points)."""
        t = self.path.t_from_log_snr(torch.tensor(2.0 * lam, dtype=torch.float64))
        return t.item(), self.path.alpha(t).item(), self.path.sigma(t).item()


def require_finite_start(grid: Grid, solver: str) -> None:
    if grid.pure_noise(0):
        raise ValueError(
            f"{solver} cannot start at t={grid.t[0]}, where alpha = 0 (pure noise, logSNR = -inf); "
            "start slightly below it (sample() does this for you; or pass t_max=0.999), or use "
            "euler, ddim, dpmpp_2m/3m, unipc, deis, ipndm or rk45"
        )


def check_order(order: int, max_order: int, solver: str) -> int:
    if not isinstance(order, int) or not 1 <= order <= max_order:
        raise ValueError(f"{solver} supports orders 1..{max_order}, got {order!r}")
    return order


def singlestep_orders(
    grid: Grid, order: int, orders: Sequence[int] | None, max_order: int, solver: str
) -> list[int]:
    """Per-step orders of a singlestep solver: `orders` if given, else `order` everywhere with a
    first-order step to sigma = 0 (its intermediate points would sit at lam = +inf)."""
    if orders is None:
        check_order(order, max_order, solver)
        out = [order] * grid.steps
        if grid.to_zero(grid.steps - 1):
            out[-1] = 1
        return out
    out = [int(k) for k in orders]
    if len(out) != grid.steps:
        raise ValueError(f"{solver}: got {len(out)} orders for {grid.steps} steps")
    for k in out:
        check_order(k, max_order, solver)
    if grid.to_zero(grid.steps - 1) and out[-1] != 1:
        raise ValueError(f"{solver}: the step to sigma = 0 must be first order, got {out[-1]}")
    return out


def multistep_order(
    grid: Grid,
    i: int,
    order: int,
    orders: Sequence[int] | None,
    history: int,
    lower_order_final: bool,
) -> int:
    """Order of multistep step i: the requested order, capped by the history available (warm-up),
    by the steps left when `lower_order_final` (DPM-Solver's choice for stability at few steps),
    and 1 on a step to sigma = 0."""
    k = order if orders is None else int(orders[i])
    k = min(k, history + 1)
    if lower_order_final:
        k = min(k, grid.steps - i)
    return 1 if grid.to_zero(i) else k


def check_orders_length(orders: Sequence[int] | None, grid: Grid, solver: str) -> None:
    if orders is not None and len(orders) != grid.steps:
        raise ValueError(f"{solver}: got {len(orders)} orders for {grid.steps} steps")


def exp_data_step(x: Tensor, m: Tensor, grid: Grid, i: int) -> Tensor:
    """First-order data-prediction exponential step (DPM-Solver++(1), = DDIM):
    x_t = sigma_t / sigma_s x_s + alpha_t (1 - e^{-h}) x0. Exact for lam_s = -inf or sigma_t = 0."""
    h = grid.h(i)
    return (grid.sigma[i + 1] / grid.sigma[i]) * x + (grid.alpha[i + 1] * -math.expm1(-h)) * m


def phi(k: int, h: float) -> float:
    """A_k(h) = int_0^h e^{tau - h} tau^k / k! dtau, the weight of the k-th lam-derivative of the
    data prediction in the exponential integrator (A_0 = 1 - e^{-h}, A_k = h^k / k! - A_{k-1}).
    A power series for small h, where the recursion cancels."""
    if math.isinf(h):
        return 1.0 if k == 0 else math.inf
    if h < 0.5:
        term, total, j = h ** (k + 1) / math.factorial(k + 1), 0.0, 0
        while abs(term) > 1e-18 * abs(total) or j < 2:
            total += term
            j += 1
            term *= -h / (k + 1 + j)
        return total
    a = -math.expm1(-h)
    for j in range(1, k + 1):
        a = h**j / math.factorial(j) - a
    return a


def noise_like(x: Tensor, generator) -> Tensor:
    """Standard normal noise shaped like x. `generator`: None, a torch.Generator, or one
    generator per sample (so that a sample depends on its seed, not on its batch; EDM)."""
    if generator is None:
        return torch.randn_like(x)
    if isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(
            x.device
        )
    gens = list(generator)
    if len(gens) != x.shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {x.shape[0]}")
    return torch.stack(
        [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype) for g in gens]
    ).to(x.device)


def dynamic_threshold(x0: Tensor, ratio: float, max_value: float = 1.0) -> Tensor:
    """Dynamic thresholding (Saharia et al. 2022, Sec. 2.3): s = the `ratio` quantile of |x0| per
    sample, clamped to [1, max_value]; x0 is clipped to [-s, s] and divided by s."""
    flat = x0.reshape(x0.shape[0], -1).abs()
    q_dtype = flat.dtype if flat.dtype in (torch.float32, torch.float64) else torch.float32
    s = torch.quantile(flat.to(q_dtype), ratio, dim=1).clamp(1.0, max_value).to(x0.dtype)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def data_prediction(denoiser, cond, thresholding: float | None, max_value: float):
    """x0(x, t): the denoiser's x0, dynamically thresholded when `thresholding` (the quantile,
    e.g. 0.995) is given."""
    if thresholding is None:
        return lambda x, t: denoiser.x0(x, t, cond)
    if not 0.0 < thresholding <= 1.0:
        raise ValueError(f"thresholding is a quantile in (0, 1], got {thresholding}")
    return lambda x, t: dynamic_threshold(denoiser.x0(x, t, cond), thresholding, max_value)


def report(callback: Callback | None, step: int, t: float, x: Tensor, x0: Tensor) -> None:
    """Call `callback({"step", "t", "x", "x0"})`: x at time t before step `step`, and its x0."""
    if callback is not None:
        callback({"step": step, "t": t, "x": x, "x0": x0})


_GAUSS = np.polynomial.legendre.leggauss(12)


def lagrange_integrals(
    nodes: Sequence[float],
    lo: float,
    hi: float,
    u_of: Callable[[np.ndarray], np.ndarray],
    kernel: Callable[[np.ndarray], np.ndarray],
) -> list[float]:
    """int_lo^hi kernel(q) L_j(u(q)) dq for each Lagrange basis polynomial L_j on `nodes` (in the
    variable u), by 12-point Gauss-Legendre quadrature in q (exact for polynomials of degree 23)."""
    xg, wg = _GAUSS
    q = lo + (hi - lo) * (xg + 1.0) / 2.0
    w = wg * (hi - lo) / 2.0 * kernel(q)
    u = u_of(q)
    out = []
    for j, uj in enumerate(nodes):
        basis = np.ones_like(u)
        for m, um in enumerate(nodes):
            if m != j:
                basis = basis * (u - um) / (uj - um)
        out.append(float((w * basis).sum()))
    return out
