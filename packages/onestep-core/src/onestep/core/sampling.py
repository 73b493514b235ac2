"""The front door: `sample(denoiser, noise, nfe=8)` spends exactly `nfe` network evaluations.

One Denoiser call is one NFE (classifier-free guidance batches its two halves into that call).
"""

from __future__ import annotations

import importlib
import inspect
import math

import torch
from torch import Tensor

from . import solvers
from .schedules import MAX_SIGMA_VE, SCHEDULES, Schedule, clip_t_max, get_schedule

__all__ = [
    "sample",
    "default_sampler",
    "path_kind",
    "DEFAULTS",
    "resolve_solver",
    "get_solver",
    "ALIASES",
    "LAZY_SOLVERS",
]

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

DEFAULT_SOLVER = "dpm++2m"  # for a fixed schedule made for no solver in particular

# The sampler `sample` runs when given neither a solver nor a schedule, per path kind: rows
# (up to this NFE, solver, schedule), the first row whose NFE bound covers the request; it starts
# where sigma/alpha <= 1e3 (`clip_t_max`: t = 1000/1001 on rectified flow, the whole path
# elsewhere). Chosen from the solver benchmark, benchmarks/results/solvers.json (RMS endpoint
# error to RK45 on 1000 held-out noises; teachers vp-* = discrete DDPM eps, flow-* = rectified
# flow velocity, on checkerboard and gmm8d), cells "teacher nfe: ours / diffusers' best
# deterministic scheduler on that teacher":
#   vp, nfe 1: "euler karras" (x0 at sigma/alpha = 80): 0.99 and 1.36, against 2.05 and 2.22
#       for x0 at t = 1 (diffusers' one DDIM step, 0.26 and 0.70, evaluates the model at step 0
#       and returns about the prior: the noise itself scores 0.26 on vp-checkerboard).
#   vp, nfe 2-3: "euler quadratic", nfe 2: 0.307 / 0.720 (DDIM), 0.373 / 0.665 (SASolver);
#       nfe 3: 0.171 / 0.408 (DPM 2M lu-lambdas), 0.294 / 0.433 (DDIM trailing).
#   vp, nfe 4-8: "unipc quadratic", nfe 4: 0.107 / 0.297, 0.226 / 0.310; nfe 5: 0.048 / 0.177,
#       0.181 / 0.225; nfe 6: 0.071 / 0.128, 0.130 / 0.166; nfe 8: 0.065 / 0.078, 0.116 / 0.133
#       (dpmpp_2m quadratic loses at 8: 0.139 on gmm8d).
#   vp, nfe 9-10: "dpmpp_2m quadratic", nfe 10: 0.039 / 0.057, 0.100 / 0.107 (unipc quadratic
#       0.040, 0.081; at nfe 9, not in the json, unipc quadratic measured 1.03x UniPC 2 bh2 on
#       retrained teachers and dpmpp_2m quadratic 0.77x).
#   vp, nfe > 10: "unipc quadratic", the best of every sampler at nfe 15 and 20 but PNDM on
#       vp-gmm8d at 20 (0.0292 / 0.0282).
#   flow: "unipc uniform" from sigma/alpha = 1e3 is the algorithm of diffusers'
#       UniPCMultistepScheduler with flow sigmas (rows "UniPC 2 flow", which also start at
#       t = 1 - 1/1000, uniform in t): diffusers' best flow scheduler on both teachers at nfe
#       3, 4 (0.092, 0.202) and 5, on flow-gmm8d at every nfe from 3 to 20 (UniPC 3 flow ties),
#       and behind "DPMSolverMultistep 2M/3M flow" on flow-checkerboard at nfe 6-10 (0.0345,
#       0.0336, 0.0333 against UniPC's 0.0466, 0.053, 0.0465). No single sampler wins on both
#       teachers there. The json's onestep rows start at t = 1, where UniPC's x0 of pure noise
#       cannot enter its history (unipc uniform from t = 1 at nfe 4: 0.121, 0.243). Retrained
#       teachers (same script), ours from sigma/alpha = 1e3 / "UniPC 2 flow": nfe 3 0.262 /
#       0.273, 0.307 / 0.314; nfe 4 0.0925 / 0.0913, 0.184 / 0.190; nfe 10 0.045 / 0.047,
#       0.058 / 0.055. "SASolver ODE flow" (the lowest error at nfe 3-5 on gmm8d) is left out:
#       with flow sigmas its last sigma is 1/N, not 0 (its last step has h = 0): it is not a
#       sampler to t = 0.
#   edm: the benchmark has no EDM teacher. Measured instead on two EDM-path teachers trained as
#       the benchmark's (EDMPrecond MLP, sigma_data 1, EDMLoss, checkerboard and gmm8d) and on
#       the exact x0 of two 8-mode rings (mode variance 0.04 and 0.25), against DPM-Solver++(2M)
#       on logsnr: nfe <= 2 "dpmpp_2m uniform" (one first-order step per NFE from sigma 80 to 0):
#       0.48 / 0.99, 0.48 / 0.95, 0.41 / 1.40, 0.64 / 1.47; nfe 3 and 5 "dpmpp_2m karras": nfe 3
#       0.35 / 0.45, 0.36 / 0.48, 0.46 / 0.26 (worse), 0.28 / 0.55, nfe 5 0.25 / 0.25, 0.29 /
#       0.41, 0.30 / 0.38, 0.26 / 0.11 (worse); nfe 4: no choice better on all four, logsnr kept;
#       nfe >= 6 "deis karras" (order 3), better on all four at every nfe 6-10: nfe 6 0.136 /
#       0.142, 0.250 / 0.279, 0.20 / 0.27, 0.10 / 0.23; nfe 10 0.047 / 0.069, 0.095 / 0.140,
#       0.045 / 0.119, 0.020 / 0.125.
DEFAULTS: dict[str, tuple[tuple[float, str, str], ...]] = {
    "vp": (
        (1, "euler", "karras"),
        (3, "euler", "quadratic"),
        (8, "unipc", "quadratic"),
        (10, "dpmpp_2m", "quadratic"),
        (math.inf, "unipc", "quadratic"),
    ),
    "flow": ((math.inf, "unipc", "uniform"),),
    "edm": (
        (2, "dpmpp_2m", "uniform"),
        (3, "dpmpp_2m", "karras"),
        (4, "dpmpp_2m", "logsnr"),
        (5, "dpmpp_2m", "karras"),
        (math.inf, "deis", "karras"),
    ),
}


def path_kind(path) -> str:
    """The kind of a path for the default sampler: "vp" (VP, continuous or discrete), "flow"
    (RectifiedFlow), "edm" (EDM, variance exploding); another path (Affine) is "flow" where it
    is pure noise at t = 1 (alpha(1) = 0) and "vp" otherwise."""
    name = getattr(path, "name", None)
    if name in ("vp", "edm"):
        return name
    if name == "rectified_flow":
        return "flow"
    return "flow" if path.alpha(torch.tensor(1.0, dtype=torch.float64)).item() == 0.0 else "vp"


def default_sampler(path, nfe: int) -> tuple[str, str]:
    """(solver, schedule) that `sample(denoiser, noise, nfe=nfe)` runs on `path` when given
    neither: the DEFAULTS row of the path's kind that covers `nfe`. The default run equals
    `sample(..., solver=solver, schedule=schedule, t_max=clip_t_max(path))`."""
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ValueError(
            f"nfe must be a positive integer, got {nfe!r} (nfe=None is only for solver='rk45')"
        )
    for bound, solver, schedule in DEFAULTS[path_kind(path)]:
        if nfe <= bound:
            return solver, schedule
    raise AssertionError("every DEFAULTS table ends with an unbounded row")


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
    schedule=None,
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
        meta["solver"], e.g. "usf" for a searched or learned one; "dpm++2m" for one made for no
        solver), else the default solver of the path and NFE (`default_sampler`).
    schedule: a name in schedules.SCHEDULES ("logsnr", "karras", "uniform", "quadratic", "edm"),
        a Schedule, a schedule JSON file or a tensor of times (then its steps must cost `nfe`);
        a Schedule's per-step orders, predictions, correctors and coefficients go to the solver.
        None: "logsnr" for a given solver; with neither, `default_sampler(path, nfe)` picks both
        (per path kind and NFE, from the solver benchmark) and the start is `clip_t_max`.
    t_max, t_min: the first time and the smallest positive time of a named schedule. Where the
        path is pure noise at t_max (alpha = 0, rectified flow at t = 1), solvers that need a
        finite logSNR and eps/score networks (whose x0 is undefined there) start at
        sigma/alpha = 1e3 instead.
    nfe: None only for the adaptive "rk45", which reports its NFE in `options["stats"]`.
    The start is x = sigma(t_0) * noise (the prior N(0, sigma^2) at t_0).
    """
    path = denoiser.path
    if schedule is None and solver is None:
        solver, schedule = default_sampler(path, nfe)
        t_max = clip_t_max(path, t_max)
    elif schedule is None:
        schedule = "logsnr"
    fixed = None
    if not (isinstance(schedule, str) and schedule in SCHEDULES):
        fixed = schedule = get_schedule(schedule, None, path)
    elif solver is None:
        solver = default_sampler(path, nfe)[0]
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
