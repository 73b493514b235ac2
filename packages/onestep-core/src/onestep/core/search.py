"""Searched and learned few-step samplers, stored as a `Schedule` and run by `sample`.

The per-step solver follows the unified sampling framework (USF; Liu et al. 2024, "A Unified
Sampling Framework for Solver Searching of Diffusion Probabilistic Models", Sec. 3): step i, from
lam_i to lam_{i+1} (lam = log(alpha / sigma); t=1 noise, t=0 data), expands the data prediction x0
or the noise prediction eps in a Taylor series in lam at lam_i, to order k_i in {1, 2, 3}, the
derivatives by divided differences of the last k_i predictions (multistep: one NFE a step), and
integrates every term exactly (h = lam_{i+1} - lam_i, rho = sigma / alpha, T_n the n-th Taylor
coefficient):

    data:     x_{i+1} = sigma_{i+1}/sigma_i x_i + alpha_{i+1} sum_n c_in n! A_n(h) T_n[x0]
    noise:    x_{i+1} = alpha_{i+1}/alpha_i x_i - alpha_{i+1} rho_i sum_n c_in n! G_n(h) T_n[eps]
    velocity: x_{i+1} = x_i + sum_n c_in T_n[u] (t_{i+1} - t_i)^{n+1} / (n+1)

A_n(h) = int_0^h e^{tau-h} tau^n/n! dtau, G_n(h) = 1 - e^{-h} sum_{j<=n} h^j/j! (both finite on
a step to t = 0, where the noise form may be of any order). The third, velocity form expands
u = dx/dt in t (Adams-Bashforth; Euler at order 1): beyond USF's two exponential-integrator
forms, it is what few-step samplers of flow models use, and it may start from pure noise. An
optional corrector redoes a step with the model's next prediction as one more node (UniC; Zhao
et al. 2023; no extra NFE). c_in = 1 unless learned. Order 2 in x0 is DEIS in log-rho, and with
c_i1 = A_0 h / (2 A_1) it is DPM-Solver++(2M) exactly. A `Schedule` holds the times and per step
`orders`, `predictions`, `correctors` and `coefficients`; `sample(denoiser, noise, nfe=K,
schedule=s)` runs it.

Four searches minimise a metric of the samples drawn from a calibration batch of noise: by
default the RMS endpoint error to the adaptive RK45 reference, or any callable samples -> float
(lower is better), e.g. a Frechet distance in a feature network (`metric=`):
  "evolutionary"   the search space (times, and per step order, prediction, corrector) by an
                   elitist evolutionary algorithm; every candidate is evaluated, a generation in
                   one batched call.
  "s3"             the same space by S^3 (USF, Sec. 4.2): a performance predictor, fitted on
                   the schedules evaluated so far, ranks a large pool of mutated candidates and
                   only the best-ranked few are evaluated with the metric, stage after stage.
  "gradient"       the times, as a softmax of logSNR increments, by backprop through the solver
                   (endpoint error only: it needs the metric's gradient).
  "autodiffusion"  the times only, for a fixed registered solver (Li et al. 2023, AutoDiffusion:
                   training-free evolutionary time-step search, against FID in the paper).
`learn_sampler` learns the c_in from the RK45 teacher: method="lsd" is learnable sampler
distillation (LSD; Fu et al. 2025, carried from discrete to continuous diffusion): one scale of
the model output per step, so that the student's state after every step matches the teacher's,
each step weighted equally and each scale moved by its own step's loss; method="endpoint" frees
every c_in against the endpoint error (plus a little of the intermediate ones). LSD+ (and
endpoint+), `learn_times=True`, learn the times too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .sampling import default_sampler, resolve_solver, sample
from .schedules import SCHEDULES, Schedule, clip_t_max, default_t_min, uniform_logsnr
from .solvers import SOLVERS, Solver
from .solvers._common import check_times, report

__all__ = [
    "sample_usf",
    "USF",
    "Plan",
    "usf_plan",
    "effective_orders",
    "dpmpp_2m_coefficients",
    "METHODS",
    "search_schedule",
    "learn_sampler",
    "teacher_trajectory",
    "Trajectory",
    "endpoint_error",
    "Predictor",
]

METHODS = ("evolutionary", "gradient", "autodiffusion", "s3")
PREDICTIONS = ("x0", "eps", "velocity")
MAX_ORDER = 3
_MIN_GAP = 1e-2  # smallest logSNR/2 gap between searched times


# -- the solver ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What each USF step does, normalised to what the times allow.

    orders: predictor orders (K,), capped by the history: for "x0" and "eps" the earlier
        predictions at finite lam (a pure-noise start, alpha = 0, is not one), for "velocity"
        all of them; a data-prediction step to sigma = 0 is first order.
    predictions: "x0", "eps" (Taylor in lam, exponential integrator) or "velocity" (Taylor in t,
        Adams-Bashforth) per step (K,); a step from pure noise is not "eps" (alpha = 0 there).
    correctors: (K,) whether step i is redone once the model has been called at its end, with
        that prediction as one more node, one order higher (UniC, Zhao et al. 2023; no extra
        NFE). Not on the last step, nor on a lam-step from pure noise."""

    orders: tuple[int, ...]
    predictions: tuple[str, ...]
    correctors: tuple[bool, ...]

    @property
    def terms(self) -> tuple[int, ...]:
        """Taylor terms of each step's final update: its order, + 1 when corrected."""
        return tuple(k + int(c) for k, c in zip(self.orders, self.correctors, strict=True))


def usf_plan(path, times, orders=None, predictions=None, correctors=None) -> Plan:
    """The normalised Plan of USF steps on `times` (defaults: order 2, "x0", no corrector)."""
    times = check_times(times)
    steps = times.numel() - 1

    def per_step(value, default, name):
        value = [default] * steps if value is None else list(value)
        if len(value) != steps:
            raise ValueError(f"usf: got {len(value)} {name} for {steps} steps")
        return value

    orders = [int(k) for k in per_step(orders, 2, "orders")]
    kinds = per_step(predictions, "x0", "predictions")
    corr = [bool(c) for c in per_step(correctors, False, "correctors")]
    for k in orders:
        if not 1 <= k <= MAX_ORDER:
            raise ValueError(f"usf supports orders 1..{MAX_ORDER}, got {k}")
    for p in kinds:
        if p not in PREDICTIONS:
            raise ValueError(f"usf predictions must be one of {list(PREDICTIONS)}, got {p!r}")
    pure = path.alpha(times[0]).item() == 0.0
    if pure:
        kinds[0] = "x0" if kinds[0] == "eps" else kinds[0]
        corr[0] = corr[0] and kinds[0] == "velocity"
    corr[-1] = False
    for i in range(steps):
        history = i - 1 if pure and i > 0 and kinds[i] != "velocity" else i
        orders[i] = min(orders[i], history + 1)
    if path.sigma(times[-1]).item() == 0.0 and kinds[-1] == "x0":
        orders[-1] = 1  # the data form's higher terms would weigh x0 at lam = +inf
    return Plan(tuple(orders), tuple(kinds), tuple(corr))


def effective_orders(path, times, orders=None, predictions=None) -> tuple[int, ...]:
    """The predictor orders `usf_plan` allows on `times`."""
    return usf_plan(path, times, orders, predictions).orders


def _coefficient_tensor(coefficients, terms: Sequence[int]) -> Tensor | None:
    """[[c_i0, ..., c_i(n_i - 1)], ...] -> (K, MAX_ORDER + 1) float64, zero past each step's
    n_i terms."""
    if coefficients is None:
        return None
    if isinstance(coefficients, dict) or len(coefficients) != len(terms):
        raise ValueError(
            f"usf coefficients must be a list of {len(terms)} per-step lists, one multiplier per "
            f"Taylor term of the step's final update: {list(terms)} terms"
        )
    out = torch.zeros(len(terms), MAX_ORDER + 1, dtype=torch.float64)
    for i, (c, n) in enumerate(zip(coefficients, terms, strict=True)):
        c = [float(v) for v in c]
        if len(c) != n:
            raise ValueError(
                f"usf step {i} has {n} Taylor terms (its order, + 1 if corrected) but {len(c)} "
                f"coefficients; the steps' terms are {list(terms)}"
            )
        out[i, :n] = torch.tensor(c, dtype=torch.float64)
    return out


def sample_usf(
    denoiser,
    x: Tensor,
    times,
    *,
    cond=None,
    generator=None,
    callback=None,
    orders: Sequence[int] | None = None,
    predictions: Sequence[str] | None = None,
    correctors: Sequence[bool] | None = None,
    coefficients: Sequence[Sequence[float]] | None = None,
) -> Tensor:
    """USF multistep solver (Liu et al. 2024, Sec. 3): per step an order-k (`orders`, 1-3) Taylor
    expansion of x0 or eps in lam, or of the velocity in t (`predictions`: "x0", "eps",
    "velocity"), integrated exactly, an optional corrector (`correctors`), and multipliers
    `coefficients[i][n]` of its terms (LSD). x: (B, ...)."""
    path = denoiser.path
    times = check_times(times)
    plan = usf_plan(path, times, orders, predictions, correctors)
    coef = _coefficient_tensor(coefficients, plan.terms)
    out, _ = _run(
        denoiser,
        x[None],
        times[None],
        _plan_tensors([plan]),
        None if coef is None else coef[None],
        cond,
        callback=callback,
    )
    return out[0]


USF = Solver(sample_usf)
"""The registry entry of the USF solver: multistep, one NFE a step, may start at pure noise."""


def dpmpp_2m_coefficients(path, times) -> list[list[float]]:
    """The coefficients that make USF's order-2 data-prediction steps DPM-Solver++(2M) (Lu et al.
    2022b, Alg. 2): its update alpha A_0(h) (x0 + h/2 x0') weighs x0' by A_0 h/2 instead of A_1."""
    times = check_times(times)
    lam = (0.5 * path.log_snr(times)).tolist()
    out = []
    for i, k in enumerate(usf_plan(path, times).orders):
        if k == 1:
            out.append([1.0])
            continue
        h = lam[i + 1] - lam[i]
        a0 = -math.expm1(-h)
        out.append([1.0, a0 * h / 2 / (h - a0)])
    return out


def _plan_tensors(plans: Sequence[Plan]) -> tuple[Tensor, Tensor, Tensor]:
    """(orders (P, K) long, prediction index into PREDICTIONS (P, K) long, corrector mask (P, K)
    bool)."""
    return (
        torch.tensor([p.orders for p in plans]),
        torch.tensor([[PREDICTIONS.index(k) for k in p.predictions] for p in plans]),
        torch.tensor([p.correctors for p in plans]),
    )


def _col(v: Tensor, x: Tensor) -> Tensor:
    """(P,) -> (P, 1, ...) in x's dtype, broadcasting over x (P, N, ...)."""
    return v.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _tile(cond, p: int):
    """A per-sample condition (N, ...) repeated for P candidates (P * N, ...)."""
    if cond is None or p == 1:
        return cond
    if isinstance(cond, dict):
        return {k: _tile(v, p) for k, v in cond.items()}
    if torch.is_tensor(cond) and cond.ndim > 0:
        return cond.repeat(p, *([1] * (cond.ndim - 1)))
    return cond


def _taylor(z: list[Tensor], f: list[Tensor], m: Tensor) -> list[Tensor]:
    """The Taylor coefficients T_n = p^(n)(z0) / n!, n = 0..3, at z0 = z[0] of the polynomial
    through the first m (P,) of the nodes z (each (P,)) with values f (each (P, N, ...)), by
    Newton's divided differences; zero past degree m - 1."""
    x = f[0]
    newton, table = [f[0]], list(f)
    for level in range(1, len(z)):
        table = [
            (table[j + 1] - table[j]) / _col(z[j + level] - z[j], x) for j in range(len(table) - 1)
        ]
        newton.append(table[0] * _col((m > level).double(), x))
    newton += [torch.zeros_like(x)] * (MAX_ORDER + 1 - len(newton))
    # node offsets; one at lam = -inf (a pure-noise start) has a zero divided difference
    d1, d2 = (_col(_finite(z[j] - z[0]), x) if len(z) > j else 0.0 for j in (1, 2))
    f0, f1, f2, f3 = newton
    # p = f0 + f1 tau + f2 tau (tau - d1) + f3 tau (tau - d1)(tau - d2), tau = z - z0
    return [f0, f1 - f2 * d1 + f3 * d1 * d2, f2 - f3 * (d1 + d2), f3]


def _finite(v: Tensor) -> Tensor:
    return torch.where(torch.isfinite(v), v, torch.zeros_like(v))


def _weights(h: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """n! A_n(h) (data form) and n! G_n(h) (noise form), n = 0..3, for h (P,) in (0, +inf]:
    A_n(h) = int_0^h e^{tau-h} tau^n/n! dtau, G_n(h) = 1 - e^{-h} sum_{j<=n} h^j/j!. Power
    series below h = 0.5, where the recursions cancel; h = +inf gives A_0 = G_n = 1 (A_n, n > 0,
    is never used there)."""
    inf = torch.isinf(h)
    hf = torch.where(inf, torch.ones_like(h), h)
    small = hf < 0.5
    hs = torch.where(small, hf, torch.zeros_like(hf))  # the series' argument, kept small
    a, g = [-torch.expm1(-hf)], [-torch.expm1(-hf)]
    for n in range(1, MAX_ORDER + 1):
        a.append(hf**n / math.factorial(n) - a[-1])
        g.append(g[-1] - torch.exp(-hf) * hf**n / math.factorial(n))
    wa, wg = [], []
    for n in range(MAX_ORDER + 1):
        fact = math.factorial(n)
        sa = sum((-1) ** j * hs ** (n + 1 + j) / math.factorial(n + 1 + j) for j in range(10))
        sg = torch.exp(-hs) * sum(hs ** (n + 1 + j) / math.factorial(n + 1 + j) for j in range(10))
        an = torch.where(small, sa, a[n]) * fact
        wa.append(torch.where(inf, torch.ones_like(h), an) if n == 0 else an)
        wg.append(torch.where(inf, torch.full_like(h, fact), torch.where(small, sg, g[n]) * fact))
    return wa, wg


def _update(x, grid, i, kind, taylor, c):
    """x_{i+1} from x_i (P, N, ...) and the Taylor coefficients of x0, eps (at lam_i) and the
    velocity (at t_i); kind (P,) indexes PREDICTIONS."""
    alpha, sigma, h = grid["alpha"], grid["sigma"], grid["h"][:, i]
    t_x0, t_eps, t_vel = taylor
    wa, wg = _weights(h)
    dt = grid["t"][:, i + 1] - grid["t"][:, i]
    wv = [dt ** (n + 1) / (n + 1) for n in range(MAX_ORDER + 1)]
    if c is not None:
        wa, wg, wv = ([w * c[:, n] for n, w in enumerate(ws)] for ws in (wa, wg, wv))
    a_s, s_s, a_t, s_t = alpha[:, i], sigma[:, i], alpha[:, i + 1], sigma[:, i + 1]

    def terms(ws, ts):
        return sum(_col(w, x) * tn for w, tn in zip(ws, ts, strict=True))

    # data form: x_t = sigma_t / sigma_s x_s + alpha_t sum_n n! A_n(h) T_n[x0]
    out = _col(s_t / s_s, x) * x + _col(a_t, x) * terms(wa, t_x0)
    # noise form: x_t = alpha_t / alpha_s x_s - alpha_t rho_s sum_n n! G_n(h) T_n[eps],
    # rho = sigma / alpha (finite on a step to sigma = 0; undefined from alpha_s = 0)
    a_safe = torch.where(a_s > 0, a_s, torch.ones_like(a_s))
    x_noise = _col(a_t / a_safe, x) * x - _col(a_t * s_s / a_safe, x) * terms(wg, t_eps)
    out = torch.where(_col(kind == 1, x).bool(), x_noise, out)
    # velocity form (Adams-Bashforth in t): x_t = x_s + sum_n T_n[u] (t - s)^(n+1) / (n+1)
    x_vel = x + terms(wv, t_vel)
    return torch.where(_col(kind == 2, x).bool(), x_vel, out)


def _run(denoiser, x, t, plan, coef, cond, *, callback=None, keep=False, detach=False):
    """The USF solver for P candidates at once. x: (P, N, ...) at t[:, 0]; t: (P, K+1) float64
    (may require grad); plan: (orders, prediction index, corrector mask), each (P, K),
    normalised by `usf_plan`; coef: (P, K, 4) multipliers or None. detach: every step starts
    from its state and history detached, so the state after step i has gradients only through
    step i's own multipliers (and the times), as LSD's per-step updates. Returns (x at t[:, -1],
    the states at t[:, 1:] if keep)."""
    path = denoiser.path
    p, n = x.shape[:2]
    steps = t.shape[1] - 1
    orders, kind, corr = (v.to(x.device) for v in plan)
    co = path.coefficients(t)  # (P, K+1) each
    lam = 0.5 * path.log_snr(t)
    grid = {"t": t, "alpha": co.alpha, "sigma": co.sigma, "h": lam[:, 1:] - lam[:, :-1]}
    cond = _tile(cond, p)
    # the predictions so far, newest last: (t_j, lam_j, x0_j, eps_j, velocity_j)
    hist: list[tuple[Tensor, ...]] = []
    states, last = [], None  # last: (x_i, step i's predictor nodes and values)
    for i in range(steps):
        # 1. the model at (x_i, t_i), every candidate in one batch
        flat = (x.detach() if detach else x).reshape(p * n, *x.shape[2:])
        x0, eps = denoiser.x0_eps(flat, t[:, i].repeat_interleave(n), cond)
        x0, eps = x0.reshape(x.shape), eps.reshape(x.shape)
        vel = _col(co.d_alpha[:, i], x) * x0 + _col(co.d_sigma[:, i], x) * eps
        new = (t[:, i], lam[:, i], x0, eps, vel)
        # 2. corrector: redo step i - 1 with this prediction as one more node (no extra NFE)
        if last is not None and bool(corr[:, i - 1].any()):
            x_prev, nodes = last
            nodes = [
                z[:1] + [v] + z[1:]
                for z, v in zip(nodes, (lam[:, i], x0, eps, t[:, i], vel), strict=True)
            ]
            c = None if coef is None else coef[:, i - 1]
            x_corr = _update(
                x_prev, grid, i - 1, kind[:, i - 1], _expansions(nodes, orders[:, i - 1] + 1), c
            )
            x = torch.where(_col(corr[:, i - 1], x).bool(), x_corr, x)
        if keep and i > 0:
            states.append(x)
        if detach:
            x = x.detach()
        report(callback, i, t[0, i].item(), x[0], x0[0])
        # 3. predictor: Taylor expansions at lam_i (x0, eps; finite-lam history) and at t_i
        #    (velocity; all history) through the last k_i predictions
        past = [e for e in hist if bool(torch.isfinite(e[1]).all())][::-1][: MAX_ORDER - 1]
        past_t = hist[::-1][: MAX_ORDER - 1]
        nodes = [
            [lam[:, i]] + [e[1] for e in past],
            [x0] + [e[2] for e in past],
            [eps] + [e[3] for e in past],
            [t[:, i]] + [e[0] for e in past_t],
            [vel] + [e[4] for e in past_t],
        ]
        # the multipliers act on a step's final update: the corrector's when it has one
        c = None
        if coef is not None:
            c = torch.where(_col(corr[:, i], coef[:, i]).bool(), 1.0, coef[:, i])
        x_next = _update(x, grid, i, kind[:, i], _expansions(nodes, orders[:, i]), c)
        last = (x, nodes)
        hist = (hist + [new])[-MAX_ORDER:]
        x = x_next
    if keep:
        states.append(x)
    return x, (states if keep else None)


def _expansions(nodes, m):
    """The Taylor coefficients of x0 and eps in lam and of the velocity in t, through m nodes."""
    zl, fx, fe, zt, fv = nodes
    return _taylor(zl, fx, m), _taylor(zl, fe, m), _taylor(zt, fv, m)


# -- errors and the reference ---------------------------------------------------------------------
def endpoint_error(x: Tensor, reference: Tensor) -> float:
    """Root-mean-square difference over every coordinate of x (B, ...) and the reference."""
    return (x.double() - reference.double()).pow(2).mean().sqrt().item()


def _rms(x: Tensor, reference: Tensor) -> Tensor:
    """Per-candidate RMS error: x (P, N, ...) against reference (N, ...) -> (P,)."""
    d = (x.double() - reference.double()[None]).pow(2)
    return d.reshape(d.shape[0], -1).mean(1).sqrt()


@dataclass(frozen=True)
class Trajectory:
    """The teacher's probability-flow trajectory on a uniform lam grid (RK45 through every grid
    time), for trajectory matching.

    t0: the start time (the noise is scaled to it). lam: (M,) uniform grid of lam = logSNR/2,
    from the first searchable time to the smallest default time. states: (M, N, ...) the
    teacher's x at each grid lam. endpoint: (N, ...) its x at t = 0 (the reference)."""

    t0: float
    lam: Tensor
    states: Tensor
    endpoint: Tensor

    def at(self, lam: Tensor) -> Tensor:
        """States (len(lam), N, ...) at lam values inside the grid, by 4-point (cubic) Lagrange
        interpolation in lam; differentiable in lam."""
        m = self.lam.numel()
        lo, dl = self.lam[0], self.lam[1] - self.lam[0]
        u = (lam - lo) / dl
        j = (torch.floor(u.detach()) - 1).clamp(0, m - 4).long()  # (Q,) first of 4 nodes
        s = u - j.double()  # in [0, 3] inside the grid
        out = 0.0
        for a in range(4):
            w = torch.ones_like(s)
            for b in range(4):
                if b != a:
                    w = w * (s - b) / (a - b)
            out = out + _col(w, self.states[0][None]) * self.states[j + a]
        return out


def _bounds(path, t0: float) -> tuple[float, float]:
    """(lam_lo, lam_hi): the range of the searchable times, from the first finite lam at or
    below t0 to the default smallest time (sigma/alpha = 0.002, or a discrete model's step 0)."""
    lo = 0.5 * path.log_snr(clip_t_max(path, t0)).item()
    hi = 0.5 * path.log_snr(default_t_min(path)).item()
    if not hi > lo + 2 * _MIN_GAP:
        raise ValueError(f"no room to search times below t={t0} on {path!r}")
    return lo, hi


def _start_time(denoiser, t_max: float) -> float:
    """Where a USF sample starts: t_max, or below it where eps/score networks have no x0 (alpha
    = 0); as `sample` does for a solver that may start at pure noise."""
    if not 0.0 < t_max <= 1.0:
        raise ValueError(f"t_max must be in (0, 1], got {t_max}")
    if getattr(denoiser, "prediction", None) in ("eps", "score"):
        return clip_t_max(denoiser.path, t_max)
    return float(t_max)


def teacher_trajectory(
    denoiser, noise: Tensor, *, cond=None, t_max: float = 1.0, points: int = 64, t0=None, **rk45
) -> Trajectory:
    """The RK45 reference (`sample(..., solver="rk45")`) from `noise`, recorded at `points`
    uniform lam values between the searchable bounds. rk45: its rtol, atol options."""
    if not isinstance(points, int) or points < 4:
        raise ValueError(f"points must be an integer >= 4 (cubic interpolation), got {points!r}")
    path = denoiser.path
    t0 = _start_time(denoiser, t_max) if t0 is None else float(t0)
    lo, hi = _bounds(path, t0)
    lam = torch.linspace(lo, hi, points, dtype=torch.float64)
    grid = path.t_from_log_snr(2 * lam)
    pure = path.alpha(torch.tensor(t0, dtype=torch.float64)).item() == 0.0
    if pure:  # the grid starts just below t0 (alpha = 0 there has lam = -inf)
        grid = torch.cat([torch.tensor([t0], dtype=torch.float64), grid])
    else:
        grid[0] = t0
    times = torch.cat([grid, torch.zeros(1, dtype=torch.float64)])
    seen, end = _rk45_through(denoiser, noise, cond, times, **rk45)
    states = torch.stack(seen[1:] if pure else seen)
    return Trajectory(t0, lam, states, end)


def _reference(denoiser, noise, cond, t_max, reference) -> Tensor:
    if reference is None:
        with torch.no_grad():
            return sample(denoiser, noise, nfe=None, solver="rk45", cond=cond, t_max=t_max)
    if not torch.is_tensor(reference) or reference.shape != noise.shape:
        raise ValueError(
            f"reference must be the rk45 endpoint of `noise`, of shape {tuple(noise.shape)}; got "
            f"{tuple(reference.shape) if torch.is_tensor(reference) else type(reference).__name__}"
        )
    return reference


# -- genomes: interior times in lam, orders, prediction kinds, correctors -------------------------
@dataclass(frozen=True)
class _Space:
    path: object
    t0: float
    steps: int
    lo: float
    hi: float
    pure: bool

    def repair(self, lam: np.ndarray) -> np.ndarray:
        """Sorted interior lam (K-1,) inside (lo, hi], at least _MIN_GAP apart."""
        lam = np.sort(np.clip(lam, self.lo, self.hi))
        m = lam.size
        for j in range(m):  # push up from the start
            floor = self.lo + (j + (0 if self.pure else 1)) * _MIN_GAP
            lam[j] = max(lam[j], floor if j == 0 else max(floor, lam[j - 1] + _MIN_GAP))
        for j in range(m - 1, -1, -1):  # and down from the end
            ceil = self.hi - (m - 1 - j) * _MIN_GAP
            lam[j] = min(lam[j], ceil if j == m - 1 else min(ceil, lam[j + 1] - _MIN_GAP))
        return lam

    def times(self, lam: Tensor) -> Tensor:
        """(P, K-1) interior lam -> (P, K+1) times [t0, interior, 0]; differentiable in lam."""
        p = lam.shape[0]
        t0 = torch.full((p, 1), self.t0, dtype=torch.float64)
        mid = self.path.t_from_log_snr(2 * lam).reshape(p, lam.shape[1])
        return torch.cat([t0, mid, torch.zeros(p, 1, dtype=torch.float64)], 1)

    def named(self, name: str) -> np.ndarray:
        """The interior lam of a named schedule (schedules.SCHEDULES) from t0."""
        t = SCHEDULES[name](self.steps, self.path, t_max=self.t0)
        return self.repair((0.5 * self.path.log_snr(t[1:-1])).numpy())

    def plan(self, g) -> Plan:
        """The normalised Plan of a genome (lam, orders, noise-form flags, corrector flags)."""
        t = self.times(torch.as_tensor(g[0], dtype=torch.float64)[None])[0]
        kinds = [PREDICTIONS[int(e)] for e in g[2]]
        return usf_plan(self.path, t, g[1], kinds, g[3])


def _logits_from_lam(space: _Space, lam: Tensor, floor: float = 1e-3) -> Tensor:
    """Softmax logits of the K increments (K-1 interior gaps + the slack to hi) in lam; gaps
    below `floor` of the range are raised to it (a softmax weight near 0 barely moves)."""
    edges = torch.cat([torch.tensor([space.lo]), lam, torch.tensor([space.hi])]).double()
    gaps = (edges[1:] - edges[:-1]).clamp_min(floor * (space.hi - space.lo))
    return torch.log(gaps)


def _lam_from_logits(space: _Space, logits: Tensor) -> Tensor:
    """Interior lam (K-1,) = lo + (hi - lo) cumsum(softmax(logits))[:-1]."""
    frac = torch.cumsum(torch.softmax(logits, 0), 0)[:-1]
    return space.lo + (space.hi - space.lo) * frac


def _path_meta(path) -> dict:
    """{"path": path.config}, or {} for a path without a JSON config (an Affine of callables)."""
    try:
        return {"path": path.config}
    except ValueError:
        return {}


@contextmanager
def _frozen(module):
    """Gradients flow to the inputs only, not into the network's parameters."""
    params = [q for q in getattr(module, "parameters", lambda: [])() if q.requires_grad]
    for q in params:
        q.requires_grad_(False)
    try:
        yield
    finally:
        for q in params:
            q.requires_grad_(True)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, leave=False, dynamic_ncols=True)


def _check_common(denoiser, nfe, noise) -> None:
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    if (
        not torch.is_tensor(noise)
        or not noise.is_floating_point()
        or noise.ndim < 1
        or noise.shape[0] == 0
    ):
        raise ValueError(
            "noise must be a non-empty floating-point batch (B, ...) of unit-normal "
            "calibration noise"
        )
    if not hasattr(denoiser, "x0_eps") or not hasattr(denoiser, "path"):
        raise ValueError(f"denoiser must be a onestep Denoiser, got {type(denoiser).__name__}")


# -- the search ---------------------------------------------------------------------------------
def search_schedule(
    denoiser,
    *,
    nfe: int,
    noise: Tensor,
    cond=None,
    method: str = "evolutionary",
    metric="endpoint",
    reference: Tensor | None = None,
    iterations: int | None = None,
    population: int = 16,
    pool: int = 16,
    solver: str = "dpm++2m",
    init: Schedule | None = None,
    t_max: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> Schedule:
    """A Schedule spending exactly `nfe` NFE that minimises `metric` on the samples drawn from
    the calibration `noise` (B, ...).

    method: "evolutionary" (times, and per step the order, prediction and corrector of the USF
        solver; the default), "s3" (the same space, searched with a learned performance
        predictor: USF's S^3), "gradient" (the times, by backprop through the USF solver, from
        `init` or the best named schedule), "autodiffusion" (the times only, for the registered
        deterministic `solver`).
    metric: "endpoint", the RMS error to the RK45 endpoints of `noise`, or a callable taking the
        samples (B, ...) of one candidate and returning a float, lower is better (e.g. a Frechet
        distance to data features). "gradient" takes only "endpoint".
    reference: the rk45 endpoint of `noise` (endpoint metric), computed here (once) if None.
    iterations: generations (evolutionary, autodiffusion; default 40), predictor stages (s3;
        default 40) or objective evaluations of L-BFGS (gradient; default 100).
    population: candidates per generation; for s3, the candidates evaluated per stage, so that
        s3 and evolutionary spend the same number of metric evaluations.
    pool: s3 ranks pool * population mutated candidates with the predictor per stage.
    The Schedule's meta records the method, nfe, the solver it runs on, the metric, and its value
    on the calibration samples of the result ("calibration_error") and of the default sampler
    (`sampling.default_sampler`, "default_error")."""
    _check_common(denoiser, nfe, noise)
    if method not in METHODS:
        raise ValueError(f"unknown search method {method!r}; use one of {list(METHODS)}")
    if iterations is not None and (not isinstance(iterations, int) or iterations < 0):
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    if not isinstance(population, int) or population < 2:
        raise ValueError(f"population must be an integer >= 2, got {population!r}")
    if not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool must be a positive integer, got {pool!r}")
    if not (callable(metric) or (isinstance(metric, str) and metric == "endpoint")):
        raise ValueError(
            f"metric must be 'endpoint' or a callable samples -> float, got {metric!r}"
        )
    if callable(metric) and method == "gradient":
        raise ValueError("the gradient search minimises the endpoint error; use metric='endpoint'")
    if callable(metric) and reference is not None:
        raise ValueError("reference is the endpoint metric's RK45 endpoint; a callable metric "
                         "takes none")
    path = denoiser.path
    endpoint = not callable(metric)
    ref = _reference(denoiser, noise, cond, t_max, reference) if endpoint else None
    score = _scorer("endpoint" if endpoint else metric, ref)
    with torch.no_grad():
        default = sample(denoiser, noise, nfe=nfe, cond=cond, t_max=t_max)
    meta = {
        "method": method,
        "nfe": nfe,
        "metric": "endpoint" if endpoint else getattr(metric, "__name__", "callable"),
        "reference": "rk45",
        "n_calib": int(noise.shape[0]),
        "seed": seed,
        "default_sampler": list(default_sampler(path, nfe)),
        "default_error": score(default[None])[0],
    }
    if not endpoint:
        del meta["reference"]
    meta.update(_path_meta(path))
    rng = np.random.default_rng(seed)
    if method == "autodiffusion":
        iterations = 40 if iterations is None else iterations
        return _autodiffusion(
            denoiser,
            noise,
            cond,
            score,
            nfe,
            solver,
            t_max,
            iterations,
            population,
            rng,
            progress,
            meta,
        )
    space = _usf_space(denoiser, nfe, t_max)
    if method == "gradient":
        iterations = 100 if iterations is None else iterations
        return _gradient(denoiser, noise, cond, ref, space, init, iterations, progress, meta)
    iterations = 40 if iterations is None else iterations
    evaluate = _Evaluator(denoiser, noise, cond, score, space)
    if method == "s3":
        return _s3(evaluate, space, iterations, population, pool, rng, progress, meta)
    return _evolutionary(evaluate, space, iterations, population, rng, progress, meta)


def _scorer(metric, ref):
    """samples (P, N, ...) -> P metric values (inf where a candidate's samples are not finite)."""
    if not callable(metric):
        return lambda x: [v if math.isfinite(v) else math.inf for v in _rms(x, ref).tolist()]

    def score(x):
        out = []
        for xi in x:
            v = float(metric(xi)) if bool(torch.isfinite(xi).all()) else math.inf
            out.append(v if math.isfinite(v) else math.inf)
        return out

    return score


def _usf_space(denoiser, steps: int, t_max: float) -> _Space:
    path = denoiser.path
    t0 = _start_time(denoiser, t_max)
    return _Space(path, t0, steps, *_bounds(path, t0), _is_pure(path, t0))


def _is_pure(path, t: float) -> bool:
    return path.alpha(torch.tensor(t, dtype=torch.float64)).item() == 0.0


def _usf_schedule(
    space: _Space, lam, plan: Plan, coefficients=None, meta=None, times=None
) -> Schedule:
    """A USF Schedule on the interior lam (or exactly on `times`, when given)."""
    if times is None:
        times = space.times(torch.as_tensor(lam, dtype=torch.float64).detach()[None])[0]
    return Schedule(
        times,
        orders=plan.orders,
        predictions=plan.predictions,
        correctors=plan.correctors,
        coefficients=coefficients,
        meta={**(meta or {}), "solver": "usf"},
    )


class _Evaluator:
    """Metric values of USF genomes on the calibration batch, `chunk` candidates per network
    call; `count` is the number of candidates evaluated."""

    def __init__(self, denoiser, noise, cond, score, space: _Space, chunk: int = 16):
        self.den, self.noise, self.cond, self.score = denoiser, noise, cond, score
        self.space, self.chunk, self.count = space, chunk, 0

    def __call__(self, genomes) -> list[float]:
        errs = []
        for s in range(0, len(genomes), self.chunk):
            part = genomes[s : s + self.chunk]
            lam = torch.as_tensor(np.stack([g[0] for g in part]), dtype=torch.float64)
            t = self.space.times(lam)  # (P, K+1)
            plan = _plan_tensors([self.space.plan(g) for g in part])
            x = self.noise[None] * _col(self.space.path.sigma(t[:, 0]), self.noise[None])
            with torch.no_grad():
                out, _ = _run(self.den, x, t, plan, None, self.cond)
            errs += self.score(out)
            self.count += len(part)
        return errs


def _mutate(g, space: _Space, scale: float, rng, discrete: bool):
    """Gaussian steps of the times in lam (one, some, or all together), and with probability 1/K
    per step a new order, a new prediction, a corrector flip."""
    lam, orders, eps, corr = (v.copy() for v in g)
    k = space.steps
    if lam.size:
        if rng.random() < 0.25:
            lam = lam + rng.normal(0, scale / 2)
        else:
            hit = rng.random(lam.size) < 0.5
            if not hit.any():
                hit[rng.integers(lam.size)] = True
            lam = lam + hit * rng.normal(0, scale, lam.size)
        lam = space.repair(lam)
    if discrete:
        for i in range(k):
            if rng.random() < 1.0 / k:
                orders[i] = rng.integers(1, MAX_ORDER + 1)
            if rng.random() < 1.0 / k:
                eps[i] = (eps[i] + rng.integers(1, len(PREDICTIONS))) % len(PREDICTIONS)
            if rng.random() < 1.0 / k:
                corr[i] = not corr[i]
    return lam, orders, eps, corr


def _key(g) -> tuple:
    return (tuple(np.round(g[0], 6)),) + tuple(tuple(int(v) for v in a) for a in g[1:])


def _first_generation(seeds, space: _Space, population: int, rng, discrete: bool) -> list:
    """The seeds, then wide mutations of them until there are `population` distinct genomes."""
    pool = {}
    for g in seeds:
        pool.setdefault(_key(g), g)
    width = space.hi - space.lo
    for _ in range(20 * population):
        if len(pool) >= population:
            break
        g = _mutate(list(pool.values())[rng.integers(len(pool))], space, 0.3 * width, rng, discrete)
        pool.setdefault(_key(g), g)
    return list(pool.values())


def _scale(space: _Space, gen: int, iterations: int) -> float:
    """The mutation step in lam at generation `gen`: from 12% to 0.5% of the range."""
    frac = gen / max(iterations - 1, 1)
    return (space.hi - space.lo) * (0.12 * (1 - frac) + 0.005 * frac)


def _offspring(parents, space: _Space, scale, rng, discrete, want: int, seen: set) -> list:
    """Up to `want` new genomes (not in `seen`, which they join), in at most 4 * want tries: each
    the better of two random parents (parents are best first), mutated, and with probability
    0.2 given another parent's per-step plan."""
    children = []
    for _ in range(want * 4):
        if len(children) == want:
            break
        a = parents[min(rng.integers(len(parents)), rng.integers(len(parents)))]
        g = _mutate(a, space, scale, rng, discrete)
        if discrete and space.steps > 1 and rng.random() < 0.2:
            b = parents[rng.integers(len(parents))]
            g = (g[0],) + tuple(v.copy() for v in b[1:])
        if _key(g) not in seen:
            seen.add(_key(g))
            children.append(g)
    return children


def _evolve(evaluate, seeds, space: _Space, iterations, population, rng, progress, discrete, desc):
    """Elitist (mu + lambda) evolution: the better half of the population are parents; each
    child is the better of two random parents, mutated (and, with probability 0.2, given another
    parent's per-step plan); the best `population` of parents and children survive. The
    mutation step in lam anneals from 12% to 0.5% of the range."""
    genomes = _first_generation(seeds, space, population, rng, discrete)
    scored = sorted(zip(evaluate(genomes), genomes, strict=True), key=lambda s: s[0])
    scored = scored[:population]  # (error, genome), best first (sorted is stable)
    seen = {_key(g) for g in genomes}
    bar = _progress(iterations, progress, desc)
    for gen in range(iterations):
        parents = [g for _, g in scored[: max(2, len(scored) // 2)]]
        scale = _scale(space, gen, iterations)
        children = _offspring(parents, space, scale, rng, discrete, population, seen)
        if children:
            scored += list(zip(evaluate(children), children, strict=True))
            scored = sorted(scored, key=lambda s: s[0])[:population]
        bar.update(1)
        bar.set_postfix(best=f"{scored[0][0]:.4g}")
    bar.close()
    return scored[0][1], scored[0][0]


def _genome(lam, k, order=2, kind="x0", corr=False, last=None):
    """(interior lam, orders, prediction indices, corrector flags); `last`: the last step's kind."""
    kinds = np.full(k, PREDICTIONS.index(kind))
    if last is not None:
        kinds[-1] = PREDICTIONS.index(last)
    return (np.asarray(lam, dtype=np.float64), np.full(k, order), kinds, np.full(k, corr))


def _seeds(space: _Space) -> list:
    """Known samplers as genomes, on the named schedules: DPM-Solver++/DEIS-like (x0, order 2
    and 3), UniPC-like (order 2 + corrector), Euler and Adams-Bashforth 2 in t (velocity; the
    step to t = 0 on x0, as `sample_euler`), and the noise form on the logsnr schedule."""
    k, seeds = space.steps, []
    for name in ("logsnr", "uniform", "karras", "quadratic") if k > 1 else ("logsnr",):
        lam = space.named(name)
        seeds += [
            _genome(lam, k, 2),
            _genome(lam, k, 3),
            _genome(lam, k, 2, corr=True),
            _genome(lam, k, 1, "velocity", last="x0"),
            _genome(lam, k, 2, "velocity", last="x0"),
        ]
        if name == "logsnr":
            seeds += [_genome(lam, k, 2, "eps"), _genome(lam, k, 3, "eps")]
    return seeds


def _evolutionary(evaluate, space, iterations, population, rng, progress, meta):
    k = space.steps
    best, err = _evolve(
        evaluate,
        _seeds(space),
        space,
        iterations if k > 1 else 0,
        population,
        rng,
        progress,
        True,
        f"usf search nfe={k}",
    )
    meta = {
        **meta,
        "calibration_error": err,
        "iterations": iterations,
        "evaluations": evaluate.count,
    }
    return _usf_schedule(space, best[0], space.plan(best), meta=meta)


# -- S^3: the predictor-guided search -------------------------------------------------------------
def _features(space: _Space, genomes) -> np.ndarray:
    """The predictor's encoding of USF genomes (P, F): the interior times as lam scaled to [0, 1]
    over the searchable range and the logs of the K steps' shares of it, then per step the
    one-hot order (1-3, as `usf_plan` normalises it), the one-hot prediction (x0, eps, velocity)
    and the corrector flag."""
    rows = []
    for g in genomes:
        plan = space.plan(g)
        per_step = np.zeros((space.steps, MAX_ORDER + len(PREDICTIONS) + 1))
        for i, (k, kind, corr) in enumerate(
            zip(plan.orders, plan.predictions, plan.correctors, strict=True)
        ):
            per_step[i, k - 1] = 1.0
            per_step[i, MAX_ORDER + PREDICTIONS.index(kind)] = 1.0
            per_step[i, -1] = float(corr)
        lam = (np.asarray(g[0], dtype=np.float64) - space.lo) / (space.hi - space.lo)
        shares = np.log(np.diff(np.concatenate([[0.0], lam, [1.0]])) + 1e-3)
        rows.append(np.concatenate([lam, shares, per_step.ravel()]))
    return np.stack(rows)


class Predictor:
    """S^3's performance predictor (USF, Sec. 4.2): small MLPs from a schedule's encoding to a
    score ordered like the metric (lower is better), each fitted with a pairwise hinge ranking
    loss: for every evaluated pair with metric_i < metric_j, max(0, margin - (s_j - s_i)). Only
    the order matters to the search, so a ranking loss spends the few evaluated schedules on
    what the search uses. The score is the mean of `members` MLPs from different initialisations
    (on the toy teachers, 3 rank held-out schedules a little better than 1). float64,
    deterministic given `seed`."""

    def __init__(
        self,
        hidden: int = 64,
        *,
        members: int = 3,
        margin: float = 0.1,
        steps: int = 300,
        seed: int = 0,
    ):
        self.hidden, self.members, self.margin, self.steps = hidden, members, margin, steps
        self.seed = seed
        self.params: list[list[Tensor]] | None = None

    @staticmethod
    def _net(params: list[Tensor], x: Tensor) -> Tensor:
        w1, b1, w2, b2, w3, b3 = params
        h = torch.nn.functional.silu(x @ w1 + b1)
        h = torch.nn.functional.silu(h @ w2 + b2)
        return (h @ w3 + b3)[:, 0]

    def fit(self, features: np.ndarray, metric: Sequence[float]) -> Predictor:
        """Fit on (N, F) encodings and their N metric values (inf: worse than every finite)."""
        x = torch.as_tensor(features, dtype=torch.float64)
        y = torch.as_tensor(np.asarray(metric, dtype=np.float64))
        finite = torch.isfinite(y)
        if not bool(finite.any()):
            raise ValueError("the predictor needs at least one finite metric value")
        y = torch.where(finite, y, y[finite].max() + 1.0)
        self.mean, self.std = x.mean(0), x.std(0, unbiased=False)
        self.std = torch.where(self.std > 1e-8, self.std, torch.ones_like(self.std))
        x = (x - self.mean) / self.std
        better = (y[:, None] < y[None, :]).double()  # better[i, j]: i's metric is lower
        pairs = better.sum().clamp_min(1.0)
        g = torch.Generator().manual_seed(self.seed)
        f, h = x.shape[1], self.hidden
        shapes = [(f, h), (h,), (h, h), (h,), (h, 1), (1,)]
        fan_in = [f, f, h, h, h, h]
        self.params = []
        for _ in range(self.members):
            params = [
                ((torch.rand(s, generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(n))
                .requires_grad_(True)
                for s, n in zip(shapes, fan_in, strict=True)
            ]
            opt = torch.optim.Adam(params, lr=3e-3, weight_decay=1e-4)
            for _ in range(self.steps if bool(better.any()) else 0):
                s = self._net(params, x)
                loss = (better * torch.relu(self.margin - (s[None, :] - s[:, None]))).sum() / pairs
                opt.zero_grad()
                loss.backward()
                opt.step()
            self.params.append([q.detach() for q in params])
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Scores (N,) of (N, F) encodings: lower is predicted better."""
        if self.params is None:
            raise ValueError("fit the predictor first")
        x = (torch.as_tensor(features, dtype=torch.float64) - self.mean) / self.std
        return torch.stack([self._net(p, x) for p in self.params]).mean(0).numpy()


def _s3(evaluate, space, stages, population, pool, rng, progress, meta):
    """S^3 (Liu et al. 2024, USF Sec. 4.2): a predictor-based search. The first generation (the
    known samplers and wide mutations of them, as "evolutionary") is evaluated with the metric;
    then each stage (1) fits the Predictor on every schedule evaluated so far, (2) mutates the
    best half of the first `population` into pool * population new candidates, (3) evaluates only
    the `population` that the predictor ranks best and adds them to its data. Returns the best
    evaluated schedule. The paper also enlarges the metric's sample set in later stages; here
    the calibration batch stays fixed."""
    k = space.steps
    n_stages = stages if k > 1 else 0
    genomes = _first_generation(_seeds(space), space, population, rng, True)
    data = list(zip(evaluate(genomes), genomes, strict=True))  # (metric, genome)
    seen = {_key(g) for g in genomes}
    fits = 0
    bar = _progress(n_stages, progress, f"s3 search nfe={k}")
    for stage in range(n_stages):
        ranked = sorted(data, key=lambda s: s[0])
        parents = [g for _, g in ranked[: max(2, population // 2)]]
        scale = _scale(space, stage, n_stages)
        cands = _offspring(parents, space, scale, rng, True, pool * population, seen)
        if not cands:
            bar.update(1)
            continue
        predictor = Predictor(seed=int(rng.integers(2**31)))
        predictor.fit(_features(space, [g for _, g in data]), [e for e, _ in data])
        fits += 1
        order = np.argsort(predictor.predict(_features(space, cands)), kind="stable")
        chosen = [cands[i] for i in order[:population]]
        for i in order[population:]:  # unevaluated candidates may come back later
            seen.discard(_key(cands[i]))
        data += list(zip(evaluate(chosen), chosen, strict=True))
        bar.update(1)
        bar.set_postfix(best=f"{min(e for e, _ in data):.4g}")
    bar.close()
    err, best = min(data, key=lambda s: s[0])
    meta = {
        **meta,
        "calibration_error": err,
        "iterations": stages,
        "evaluations": evaluate.count,
        "pool": pool,
        "predictor_fits": fits,
    }
    return _usf_schedule(space, best[0], space.plan(best), meta=meta)


def _minimise(params: list[Tensor], objective, iterations: int, bar) -> int:
    """L-BFGS with a strong-Wolfe line search (Nocedal & Wright 2006, Alg. 7.5 and 3.5) on a
    deterministic full-batch objective() -> loss, for at most `iterations` evaluations (restarted
    while it makes progress); a non-finite loss counts as a huge one with no gradient, so the
    line search backs off. Returns the number of evaluations."""
    if iterations == 0 or not params:
        objective()
        return 1
    used = [0]

    def closure():
        opt.zero_grad()
        loss = objective()
        used[0] += 1
        bar.update(1)
        if not torch.isfinite(loss):
            for q in params:
                q.grad = torch.zeros_like(q)
            return torch.tensor(1e30, dtype=torch.float64)
        loss.backward()
        for q in params:
            if q.grad is None or not torch.isfinite(q.grad).all():
                q.grad = torch.zeros_like(q)
        return loss.detach()

    while used[0] < iterations:
        left = iterations - used[0]
        opt = torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=left,
            max_eval=left,
            history_size=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-12,
            tolerance_change=1e-14,
        )
        before = used[0]
        opt.step(closure)
        if used[0] - before <= 2:  # converged, or stuck: a fresh start did not move
            break
    return used[0]


def _gradient(denoiser, noise, cond, ref, space, init, iterations, progress, meta):
    k = space.steps
    if init is not None:
        if not isinstance(init, Schedule) or init.steps != k:
            raise ValueError(f"init must be a Schedule of {k} steps (nfe), got {init!r}")
        if abs(init.times[0].item() - space.t0) > 1e-12 or init.times[-1].item() != 0.0:
            raise ValueError(
                f"init must run from t={space.t0} (where the search starts) to 0; "
                f"it runs from {init.times[0].item()} to {init.times[-1].item()}"
            )
        lam0 = 0.5 * space.path.log_snr(init.times[1:-1])
        plan = usf_plan(space.path, init.times, init.orders, init.predictions, init.correctors)
    else:  # the best known sampler (`_seeds`, no corrector) on the calibration batch
        evaluate = _Evaluator(denoiser, noise, cond, _scorer("endpoint", ref), space)
        cands = [g for g in _seeds(space) if not g[3].any()]  # (no correctors)
        genome = cands[int(np.argmin(evaluate(cands)))]
        lam0, plan = torch.as_tensor(genome[0]), space.plan(genome)
    logits = _logits_from_lam(space, lam0.double(), floor=0.02).requires_grad_(True)
    x_start = (noise * space.path.sigma(torch.tensor(space.t0)).item())[None]
    tensors = _plan_tensors([plan])
    best = [math.inf, lam0.detach().clone()]

    def objective():
        lam = _lam_from_logits(space, logits)
        out, _ = _run(denoiser, x_start, space.times(lam[None]), tensors, None, cond)
        loss = (out[0].double() - ref.double()).pow(2).mean()
        err = loss.detach().sqrt().item()
        if math.isfinite(err) and err < best[0]:
            best[:] = [err, lam.detach().clone()]
            bar.set_postfix(best=f"{err:.4g}")
        return loss

    bar = _progress(iterations, progress, f"gradient search nfe={k}")
    with _frozen(denoiser):
        used = _minimise([logits] if k > 1 else [], objective, iterations, bar)
    bar.close()
    meta = {**meta, "calibration_error": best[0], "iterations": iterations, "evaluations": used}
    return _usf_schedule(space, best[1].numpy(), plan, meta=meta)


def _autodiffusion(
    denoiser, noise, cond, score, nfe, solver, t_max, iterations, population, rng, progress, meta
):
    name = resolve_solver(solver)
    spec = SOLVERS.get(name)
    if spec is None or spec.kind == "adaptive" or spec.stochastic:
        raise ValueError(
            f"autodiffusion searches the times of a fixed deterministic registered "
            f"solver; {name!r} is not one"
        )
    steps, plan_orders = spec.plan(nfe)
    path = denoiser.path
    t0 = _start_time(denoiser, t_max)
    if not spec.pure_noise_start:
        t0 = clip_t_max(path, t0)
    space = _Space(path, t0, steps, *_bounds(path, t0), _is_pure(path, t0))
    x_start = noise * path.sigma(torch.tensor(t0)).item()
    opts = {} if plan_orders is None else {"orders": plan_orders}
    count = [0]

    def evaluate(genomes):
        errs = []
        for g in genomes:
            t = space.times(torch.as_tensor(g[0], dtype=torch.float64)[None])[0]
            with torch.no_grad():
                errs += score(spec.fn(denoiser, x_start, t, cond=cond, **opts)[None])
            count[0] += 1
        return errs

    names = ("logsnr", "uniform", "karras", "quadratic") if steps > 1 else ("logsnr",)
    seeds = [_genome(space.named(n), steps, 1) for n in names]
    best, err = _evolve(
        evaluate,
        seeds,
        space,
        iterations if steps > 1 else 0,
        population,
        rng,
        progress,
        False,
        f"autodiffusion {name} nfe={nfe}",
    )
    times = space.times(torch.as_tensor(best[0], dtype=torch.float64)[None])[0]
    meta = {
        **meta,
        "solver": name,
        "calibration_error": err,
        "iterations": iterations,
        "evaluations": count[0],
    }
    return Schedule(times, orders=plan_orders, meta=meta)


# -- learnable sampler distillation -------------------------------------------------------------
LEARNERS = ("lsd", "endpoint")


def _per_sample(cond, n: int) -> bool:
    """Whether a condition holds one entry per sample (a tensor (n, ...), or a dict of them)."""
    if isinstance(cond, dict):
        return any(_per_sample(v, n) for v in cond.values())
    return torch.is_tensor(cond) and cond.ndim > 0 and cond.shape[0] == n


def _take(cond, idx: Tensor, n: int):
    """The rows idx of a per-sample condition (n, ...) (dicts entry by entry); others as is."""
    if isinstance(cond, dict):
        return {k: _take(v, idx, n) for k, v in cond.items()}
    return cond[idx] if _per_sample(cond, n) else cond


def _teacher_states(denoiser, noise: Tensor, cond, times: Tensor) -> Tensor:
    """The RK45 teacher (`sample(..., solver="rk45")`) from `noise`, stepping through every one of
    the K+1 `times`: its states (K, N, ...) at times[1:]."""
    seen, end = _rk45_through(denoiser, noise, cond, times)
    return torch.stack(seen[1:] + [end])


def _rk45_through(denoiser, noise: Tensor, cond, times: Tensor, **rk45):
    """(states at times[:-1], endpoint) of the RK45 teacher from `noise` stepping through
    `times`; rk45: its rtol, atol options."""
    seen: list[Tensor] = []
    with torch.no_grad():
        end = sample(denoiser, noise, nfe=None, solver="rk45", schedule=times, cond=cond,
                     callback=lambda d: seen.append(d["x"]), **rk45)
    return seen, end


@dataclass(frozen=True)
class _Teacher:
    """The teacher of one batch after every student step: its states at the student's fixed
    times (K, N, ...), or, when the times move (LSD+), a Trajectory to interpolate."""

    fixed: Tensor | None
    trajectory: Trajectory | None

    def targets(self, lam: Tensor) -> Tensor:
        """(K, N, ...) the teacher at the student's times after each step: interior lam (K-1,)
        (where the trajectory is interpolated), then t = 0."""
        if self.fixed is not None:
            return self.fixed
        return torch.cat([self.trajectory.at(lam), self.trajectory.endpoint[None]])

    def rows(self, idx: Tensor) -> _Teacher:
        """The same teacher on the samples idx."""
        if self.fixed is not None:
            return _Teacher(self.fixed[:, idx], None)
        tr = self.trajectory
        return _Teacher(None, Trajectory(tr.t0, tr.lam, tr.states[:, idx], tr.endpoint[idx]))


def learn_sampler(
    denoiser,
    *,
    nfe: int,
    noise: Tensor,
    cond=None,
    method: str = "lsd",
    learn_times: bool = False,
    base: Schedule | None = None,
    trajectory: Trajectory | None = None,
    heldout: float = 0.25,
    heldout_noise: Tensor | None = None,
    heldout_cond=None,
    iterations: int = 200,
    lr: float = 0.05,
    trajectory_weight: float = 0.05,
    points: int = 64,
    t_max: float = 1.0,
    progress: bool = True,
) -> Schedule:
    """Learn a few-step USF sampler from the RK45 teacher on calibration `noise` (B, ...).

    method="lsd": learnable sampler distillation (Fu et al. 2025, Sec. 3.1, Eqs. 5-6, Alg. 2),
        carried from discrete diffusion to the probability-flow ODE. Step k (t_k -> t_{k+1}, k =
        0..K-1) of the base sampler uses its model output scaled by one learnable Phi_k (Eq. 5:
        the step's prediction polynomial times Phi_k, i.e. every Taylor multiplier c_kn = Phi_k
        c0_kn, so Phi = 1 is the base sampler exactly), Phi initialised to 1 (Alg. 2, line 1).
        The student's state after every step is matched to the teacher's at the same time, all
        steps with equal weight, L = 1/K sum_k L_k, L_k = E |x_{t_{k+1}} - x*_{t_{k+1}}|^2 / D
        (Eq. 6 with the squared distance, on the state the scaled output produces: the official
        code matches each step's transition). Each Phi_k follows the gradient of its own L_k
        only (Alg. 2, lines 8-10): step k starts from the student's own state and history,
        detached. Adam (the official code's optimiser) at `lr`, full batch: its script takes
        one sample a step at 1e-2, thousands of steps; 0.05 converges here in ~100 steps.
        With learn_times (LSD+, Sec. 3.2, Eqs. 7-8) the times are learned too, as a softmax of
        the K logSNR increments (Eq. 7's step sizes kept positive and summing to the span),
        against the teacher trajectory interpolated at the learned times.
    method="endpoint": every Taylor multiplier of every step free (up to 4 a step), learned by
        L-BFGS through the whole trajectory on the endpoint's mean squared error plus
        `trajectory_weight` times the mean over the intermediate steps of theirs: closer to S4S
        (Frankel et al. 2025) and LD3 than to LSD. learn_times: the times too (a softmax of
        logSNR increments).

    Both return the iterate with the smallest loss (their own) on held-out noise that no
    gradient saw: `heldout_noise` (with `heldout_cond` for a per-sample cond), or else the last
    `heldout` fraction of `noise` (0: chosen on the training noise itself).
    base: the sampler to start from: a USF Schedule (from search_schedule or learn_sampler) or a
        dpm++2m one, or None for DPM-Solver++(2M) on the logsnr schedule (its USF coefficients
        `dpmpp_2m_coefficients`).
    trajectory: `teacher_trajectory(denoiser, noise, t0=<the base's first time>)`, if computed;
        without it the teacher is RK45 through the student's times (or, when the times are
        learned, a trajectory of `points` lam values).
    meta records the method, the train / held-out endpoint RMS errors of the chosen iterate
    (calibration_error, heldout_error) and of the start (init_error, init_heldout_error), its
    losses (train_loss, heldout_loss), and for LSD the scales Phi; `sample(denoiser, noise,
    nfe=nfe, schedule=s)` runs the result."""
    _check_common(denoiser, nfe, noise)
    if method not in LEARNERS:
        raise ValueError(f"unknown learn_sampler method {method!r}; use one of {list(LEARNERS)}")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not trajectory_weight >= 0:
        raise ValueError(f"trajectory_weight must be >= 0, got {trajectory_weight}")
    if not (isinstance(heldout, int | float) and 0 <= heldout < 1):
        raise ValueError(f"heldout must be a fraction in [0, 1), got {heldout!r}")
    n = noise.shape[0]
    if heldout_noise is not None:
        if (
            not torch.is_tensor(heldout_noise)
            or not heldout_noise.is_floating_point()
            or heldout_noise.shape[1:] != noise.shape[1:]
            or heldout_noise.shape[0] == 0
        ):
            raise ValueError(
                f"heldout_noise must be a non-empty floating-point batch of samples shaped like "
                f"noise's, (M, {', '.join(map(str, noise.shape[1:]))}); got "
                f"{tuple(heldout_noise.shape) if torch.is_tensor(heldout_noise) else heldout_noise}"
            )
        if _per_sample(cond, n) and heldout_cond is None:
            raise ValueError("cond is per sample: pass heldout_cond for heldout_noise")
    elif heldout > 0 and n - max(1, round(heldout * n)) < 1:
        raise ValueError(
            f"heldout={heldout} of {n} noise samples leaves none to learn from: pass more "
            "noise, heldout_noise, or heldout=0"
        )
    path = denoiser.path
    # 1. the starting sampler: times, plan, coefficients
    if base is None:
        times = uniform_logsnr(nfe, path, t_max=_start_time(denoiser, t_max))
        plan, coef0, start = usf_plan(path, times), dpmpp_2m_coefficients(path, times), "dpm++2m"
    else:
        if not isinstance(base, Schedule) or base.steps != nfe:
            raise ValueError(f"base must be a Schedule of {nfe} steps (nfe), got {base!r}")
        made_for = base.meta.get("solver", "dpmpp_2m")
        if made_for not in ("usf", "dpmpp_2m") or (made_for == "dpmpp_2m" and base.orders):
            raise ValueError(
                f"learn_sampler learns the USF solver's coefficients: base must be a USF or a "
                f"dpm++2m schedule, not one for {made_for!r}"
            )
        times = base.times
        if made_for == "dpmpp_2m":
            plan, coef0, start = (
                usf_plan(path, times),
                dpmpp_2m_coefficients(path, times),
                "dpm++2m",
            )
        else:
            plan = usf_plan(path, times, base.orders, base.predictions, base.correctors)
            coef0 = base.coefficients or [[1.0] * k for k in plan.terms]
            start = base.meta.get("method", "usf")
    if times[-1].item() != 0.0:
        raise ValueError("learn_sampler needs a schedule that ends at t = 0")
    t0 = times[0].item()
    space = _Space(path, t0, nfe, *_bounds(path, t0), _is_pure(path, t0))
    # 2. the teacher after every student step, on the training and the held-out noise
    if trajectory is not None and (
        abs(trajectory.t0 - t0) > 1e-12 or trajectory.endpoint.shape != noise.shape
    ):
        raise ValueError(
            f"trajectory must come from teacher_trajectory(denoiser, noise, t0={t0}) "
            "on the same noise as learn_sampler"
        )
    moving = learn_times or trajectory is not None  # targets off a fixed grid: interpolate
    if trajectory is not None:
        points = trajectory.lam.numel()

    def teacher(x, c, given=None) -> _Teacher:
        if moving:
            tr = given or teacher_trajectory(denoiser, x, cond=c, points=points, t0=t0)
            return _Teacher(None, tr)
        return _Teacher(_teacher_states(denoiser, x, c, times), None)

    full = teacher(noise, cond, trajectory)
    if heldout_noise is not None:
        c_held = cond if heldout_cond is None else heldout_cond
        train = (noise, cond, full)
        held = (heldout_noise, c_held, teacher(heldout_noise, c_held))
    elif heldout > 0:
        n_held = max(1, round(heldout * n))
        tr, he = torch.arange(n - n_held), torch.arange(n - n_held, n)
        train = (noise[tr], _take(cond, tr, n), full.rows(tr))
        held = (noise[he], _take(cond, he, n), full.rows(he))
    else:
        train, held = (noise, cond, full), None
    # 3. the parameters: LSD's scale per step, or every multiplier; optionally the times
    coef0 = _coefficient_tensor(coef0, plan.terms)  # (K, 4), zero past each step's terms
    if method == "lsd":
        phi = torch.ones(nfe, dtype=torch.float64, requires_grad=True)
        params = [phi]

        def coefficients():
            return phi[:, None] * coef0

    else:
        mask = (torch.arange(MAX_ORDER + 1)[None] < torch.tensor(plan.terms)[:, None]).double()
        coef = coef0.clone().requires_grad_(True)
        params = [coef]

        def coefficients():
            return coef * mask

    lam0 = 0.5 * path.log_snr(times[1:-1])
    # (learned times start with every increment >= 2% of the range: a softmax weight near 0
    # barely moves; with fixed times the base's times are used exactly)
    logits = _logits_from_lam(space, lam0, floor=0.02).requires_grad_(learn_times)
    if learn_times and nfe > 1:
        params.append(logits)
    tensors = _plan_tensors([plan])
    sigma0 = path.sigma(times[0]).item()  # the start, as `sample` scales the noise
    weights = torch.full((nfe,), trajectory_weight / max(nfe - 1, 1), dtype=torch.float64)
    weights[-1] = 1.0

    detach = method == "lsd"  # each step's own gradient only (Alg. 2)

    def per_step(batch, c, lam, t) -> Tensor:
        """(K,) the mean squared error to the teacher after every step."""
        x, bc, tch = batch
        x_start = (x * sigma0)[None]
        _, states = _run(denoiser, x_start, t, tensors, c[None], bc, keep=True, detach=detach)
        pairs = zip(states, tch.targets(lam), strict=True)
        return torch.stack([(s[0].double() - y.double()).pow(2).mean() for s, y in pairs])

    def loss_of(err: Tensor) -> Tensor:
        return err.mean() if method == "lsd" else (weights * err).sum()

    seen: list[dict] = []  # every evaluated iterate
    best = [None]

    def objective():
        lam = _lam_from_logits(space, logits) if learn_times else lam0
        t = space.times(lam[None]) if learn_times else times[None]
        c = coefficients()
        err = per_step(train, c, lam, t)
        loss = loss_of(err)
        rec = {
            "train": err[-1].detach().sqrt().item(),
            "train_loss": loss.item(),
            "coef": c.detach().clone(),
            "lam": lam.detach().clone(),
        }
        if method == "lsd":
            rec["phi"] = phi.detach().clone()
        if held is not None:
            with torch.no_grad():
                err_h = per_step(held, c, lam, t)
            rec["heldout"], rec["heldout_loss"] = err_h[-1].sqrt().item(), loss_of(err_h).item()
        score = rec.get("heldout_loss", rec["train_loss"])
        rec["index"] = len(seen)
        seen.append(rec)
        if math.isfinite(score) and (best[0] is None or score < best[0][0]):
            best[0] = (score, rec)
            bar.set_postfix(best=f"{score:.4g}")
        return loss

    name = method + ("+" if learn_times else "")
    bar = _progress(iterations, progress, f"{name} nfe={nfe}")
    with _frozen(denoiser):
        if method == "lsd":
            used = _adam(params, objective, iterations, lr, bar)
        else:
            used = _minimise(params, objective, iterations, bar)
    bar.close()
    if best[0] is None:
        raise RuntimeError(f"{name} diverged: every iterate gave a non-finite endpoint error")
    rec, first = best[0][1], seen[0]
    coefficients_out = [rec["coef"][i, :k].tolist() for i, k in enumerate(plan.terms)]
    meta = {
        "method": name,
        "learn_times": learn_times,
        "optimiser": "adam" if method == "lsd" else "lbfgs",
        "nfe": nfe,
        "reference": "rk45",
        "base": start,
        "n_calib": n,
        "n_train": int(train[0].shape[0]),
        "n_heldout": 0 if held is None else int(held[0].shape[0]),
        "selection": "train" if held is None else "heldout",
        "iterations": iterations,
        "evaluations": used,
        "selected": rec["index"],
        "init_error": first["train"],
        "calibration_error": rec["train"],
        "train_loss": rec["train_loss"],
    }
    if method == "lsd":
        meta["lr"] = float(lr)
        meta["scales"] = rec["phi"].tolist()
    else:
        meta["trajectory_weight"] = float(trajectory_weight)
    if held is not None:
        meta.update(
            init_heldout_error=first["heldout"],
            heldout_error=rec["heldout"],
            heldout_loss=rec["heldout_loss"],
        )
    meta.update(_path_meta(path))
    return _usf_schedule(
        space,
        rec["lam"].numpy(),
        plan,
        coefficients=coefficients_out,
        meta=meta,
        times=None if learn_times else times,
    )


def _adam(params: list[Tensor], objective, iterations: int, lr: float, bar) -> int:
    """Adam (Kingma & Ba 2015) on a deterministic full-batch objective() -> loss, for
    `iterations` updates (iterations + 1 evaluations: the last iterate is evaluated too); stops
    at a non-finite loss. Returns the number of evaluations."""
    opt = torch.optim.Adam(params, lr=lr) if params else None
    used = 0
    for it in range(iterations + 1):
        if opt is not None:
            opt.zero_grad()
        loss = objective()
        used += 1
        if it == iterations or opt is None or not torch.isfinite(loss):
            break
        loss.backward()
        opt.step()
        bar.update(1)
    return used
