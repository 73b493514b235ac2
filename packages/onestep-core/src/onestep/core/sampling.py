"""The front door: `sample(denoiser, noise, nfe=8)` spends exactly `nfe` network evaluations.

One Denoiser call is one NFE (classifier-free guidance batches its two halves into that call).
"""

from __future__ import annotations

import importlib
import inspect

import torch
from torch import Tensor

from . import solvers
from .schedules import MAX_SIGMA_VE, SCHEDULES, Schedule, clip_t_max, get_schedule

__all__ = ["sample", "resolve_solver", "get_solver", "ALIASES", "LAZY_SOLVERS"]

ALIASES = {
    "dpm++2m": "dpmpp_2m",
    "dpm++3m": "dpmpp_3m",
    "dpm++2s": "dpmpp_2s",
    "dpm++sde": "dpmpp_sde",
    "dpm++2m_sde": "dpmpp_sde",
    "dpm-solver": "dpm_solver",
    "dpm": "dpm_solver",
    "dpmsolver": "dpm_solver",
    "euler_a": "euler_ancestral",
    "em": "euler_maruyama",
    "sde": "euler_maruyama",
    "dopri5": "rk45",
    "pndm": "ipndm",
    "uni_pc": "unipc",
}


# Solvers registered outside `solvers` because they import this module: name -> (module, Solver)
LAZY_SOLVERS = {"usf": ("onestep.core.search", "USF")}

DEFAULT_SOLVER = "dpm++2m"


def resolve_solver(name: str) -> str:
    """The registry name of a solver name or alias ("dpm++2m" -> "dpmpp_2m")."""
    key = name.lower().replace(" ", "") if isinstance(name, str) else name
    key = ALIASES.get(key, key)
    if key not in solvers.SOLVERS and key not in LAZY_SOLVERS:
        raise ValueError(
            f"unknown solver {name!r}; available: {solvers.available()}, aliases: {sorted(ALIASES)}"
        )
    return key


def get_solver(name: str) -> solvers.Solver:
    """The Solver (function and cost model) of a solver name or alias."""
    key = resolve_solver(name)
    if key in LAZY_SOLVERS:
        module, attr = LAZY_SOLVERS[key]
        return getattr(importlib.import_module(module), attr)
    return solvers.SOLVERS[key]


def _solver_for(solver: str | None, fixed: Schedule | None) -> str:
    """The solver to run: `solver`, else the one a fixed schedule was made for (its
    meta["solver"]; "usf" for one with per-step predictions, coefficients or correctors), else
    DEFAULT_SOLVER. A schedule with per-step predictions, coefficients or correctors runs only on
    the solver it was made for."""
    made_for = (fixed.meta or {}).get("solver") if fixed is not None else None
    searched = fixed is not None and any(
        getattr(fixed, k) is not None for k in ("predictions", "coefficients", "correctors")
    )
    if searched and made_for is None:
        made_for = "usf"
    name = resolve_solver(solver or made_for or DEFAULT_SOLVER)
    if searched:
        wanted = resolve_solver(made_for)
        if name != wanted:
            raise ValueError(
                f"this schedule sets per-step predictions, coefficients or correctors for the "
                f"{wanted!r} solver; pass solver=None (or {wanted!r}), not {solver!r}"
            )
    return name


def sample(
    denoiser,
    noise: Tensor,
    *,
    nfe: int | None,
    solver: str | None = None,
    schedule="logsnr",
    cond=None,
    generator=None,
    t_max: float = 1.0,
    t_min: float | None = None,
    callback=None,
    **options,
) -> Tensor:
    """Draw x_data from unit-normal `noise` (B, ...) with exactly `nfe` network evaluations.

    solver: a name in `solvers.available()` or an alias in ALIASES ("dpm++2m", "unipc", "heun",
        "euler_a", ...), or "usf" (onestep.core.search); its options (order, eta, variant,
        thresholding, ...) go in **options. None: the solver a fixed Schedule was made for (its
        meta["solver"], e.g. "usf" for a searched or learned one), else "dpm++2m".
    schedule: a name in schedules.SCHEDULES ("logsnr", "karras", "uniform", "quadratic", "edm"),
        a Schedule, a schedule JSON file or a tensor of times (then its steps must cost `nfe`);
        a Schedule's per-step orders, predictions, correctors and coefficients go to the solver.
    t_max, t_min: the first time and the smallest positive time of a named schedule. Where the
        path is pure noise at t_max (alpha = 0, rectified flow at t = 1), solvers that need a
        finite logSNR and eps/score networks (whose x0 is undefined there) start at
        sigma/alpha = 1e3 instead.
    nfe: None only for the adaptive "rk45", which reports its NFE in `options["stats"]`.
    The start is x = sigma(t_0) * noise (the prior N(0, sigma^2) at t_0).
    """
    path = denoiser.path
    fixed = None
    if not (isinstance(schedule, str) and schedule in SCHEDULES):
        fixed = schedule = get_schedule(schedule, None, path)
    name = _solver_for(solver, fixed)
    spec = get_solver(name)
    _check_inputs(noise, cond, generator, name, spec)
    valid = set(inspect.signature(spec.fn).parameters) - {
        "denoiser",
        "x",
        "times",
        "cond",
        "generator",
        "callback",
    }
    unknown = set(options) - valid
    if unknown:
        raise ValueError(
            f"solver {name!r} takes no option(s) {sorted(unknown)}; its options: {sorted(valid)}"
        )
    # x0 is undefined where alpha = 0 for eps/score networks, and some solvers need lam > -inf
    if not spec.pure_noise_start or getattr(denoiser, "prediction", None) in ("eps", "score"):
        t_max = clip_t_max(path, t_max)

    # 1. how many steps nfe buys, and the times
    if spec.kind == "adaptive":
        if nfe is not None:
            raise ValueError(
                f"{name} is adaptive and chooses its own NFE (set rtol/atol); pass "
                "nfe=None and stats=dict() to read it back"
            )
        sched = get_schedule(
            schedule
            if not isinstance(schedule, str)
            else ([t_max, t_min, 0.0] if t_min else [t_max, 0.0]),
            None,
            path,
        )
    elif isinstance(schedule, str) and schedule in SCHEDULES:
        if options.get("orders") is not None:
            steps = len(options["orders"])
            _check_cost(spec, name, steps, options, nfe, to_zero=True)
        else:
            steps, orders = spec.plan(nfe, order=options.get("order"))
            if orders is not None:
                options["orders"] = orders
        sched = get_schedule(schedule, steps, path, t_max=t_max, t_min=t_min)
    else:
        sched = get_schedule(schedule, None, path)
        for key in ("orders", "predictions", "coefficients", "correctors"):
            if getattr(sched, key) is not None and key in valid:
                options.setdefault(key, getattr(sched, key))
        to_zero = path.sigma(sched.times[-1]).item() == 0.0
        _check_cost(spec, name, sched.steps, options, nfe, to_zero)
    times = sched.times
    if not spec.pure_noise_start and path.alpha(times[0]).item() == 0.0:
        raise ValueError(
            f"{name} cannot start at t={times[0].item()} where alpha = 0; start the "
            f"schedule where sigma/alpha <= {MAX_SIGMA_VE:g}"
        )

    # 2. the prior sample at t_0, then the solver
    x = noise * path.sigma(times[0]).item()
    return spec.fn(denoiser, x, times, cond=cond, generator=generator, callback=callback, **options)


def _check_cost(spec, name, steps, options, nfe, to_zero) -> None:
    cost = spec.nfe_for(
        steps, orders=options.get("orders"), order=options.get("order"), to_zero=to_zero
    )
    if cost != nfe:
        raise ValueError(f"{steps} steps of {name} cost {cost} NFE, not nfe={nfe}")


def _check_inputs(noise, cond, generator, name, spec) -> None:
    if not torch.is_tensor(noise) or not noise.is_floating_point():
        raise ValueError("noise must be a floating-point tensor of unit-normal samples (B, ...)")
    if noise.ndim < 1 or noise.shape[0] == 0 or noise.numel() == 0:
        raise ValueError(
            f"noise must have a non-empty batch dimension, got shape {tuple(noise.shape)}"
        )
    batch = noise.shape[0]
    conds = cond.values() if isinstance(cond, dict) else [cond]
    for c in conds:
        if torch.is_tensor(c) and c.ndim > 0 and c.shape[0] != batch:
            raise ValueError(
                f"noise has batch {batch} but cond has batch {c.shape[0]}; noise is "
                f"(B, ...) with one sample per condition"
            )
    if isinstance(generator, list | tuple) and len(generator) != batch:
        raise ValueError(f"got {len(generator)} generators for a batch of {batch}")
