"""Time schedules: functions returning a float64 1-D tensor of n + 1 decreasing times in [0, 1],
from t_max down to 0 (t=1 noise, t=0 data), i.e. n solver steps.

Where a schedule has a smallest positive time t_min, it spends n - 1 steps from t_max to t_min
and the last step goes from t_min to 0 (the "denoise" step). Schedules spaced in logSNR or in
sigma_ve = sigma / alpha cannot reach a pure-noise time (alpha = 0, e.g. rectified flow at t = 1):
they start at sigma_ve = MAX_SIGMA_VE instead. For a discrete VP (VP.from_betas) t = 1 is the
last step index N - 1, and t_min defaults to the first index, t = 1 / N.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .paths import Path

__all__ = [
    "Schedule",
    "SCHEDULES",
    "uniform_t",
    "uniform_logsnr",
    "karras",
    "edm",
    "quadratic",
    "get_schedule",
    "get_times",
    "clip_t_max",
    "default_t_min",
    "MAX_SIGMA_VE",
]

MAX_SIGMA_VE = 1e3  # where sigma/alpha-based schedules start on paths that reach pure noise
MIN_SIGMA_VE = 0.002  # Karras et al. 2022's sigma_min: the default smallest positive noise level


def _f64(x) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def clip_t_max(path: Path, t_max: float = 1.0) -> float:
    """t_max, or the time where sigma/alpha = MAX_SIGMA_VE if t_max is beyond it (alpha ~ 0)."""
    if path.sigma_ve(_f64(t_max)).item() <= MAX_SIGMA_VE:
        return float(t_max)
    return path.t_from_sigma_ve(_f64(MAX_SIGMA_VE)).item()


def default_t_min(path: Path) -> float:
    """The smallest positive time: sigma/alpha = 0.002 (Karras et al. 2022), and at least the first
    step t = 1/N of a discrete VP (the network was never trained below it)."""
    t = path.t_from_sigma_ve(_f64(MIN_SIGMA_VE)).item()
    n = getattr(path, "num_steps", None)
    return max(t, 1.0 / n) if n else t


def _check(n: int, t_max: float, t_min: float | None) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of steps must be a positive integer, got {n!r}")
    if not 0.0 < t_max <= 1.0:
        raise ValueError(f"t_max must be in (0, 1], got {t_max}")
    if t_min is not None and not 0.0 <= t_min < t_max:
        raise ValueError(f"t_min must be in [0, t_max), got {t_min}")


def _finish(head: Tensor) -> Tensor:
    """Append the final t = 0."""
    return torch.cat([head.to(torch.float64), torch.zeros(1, dtype=torch.float64)])


def uniform_t(n: int, path: Path, *, t_max: float = 1.0, t_min: float | None = None) -> Tensor:
    """Uniform in t from t_max to 0, or to t_min and then 0 (DDPM/DDIM's uniform skip, the usual
    Euler grid of flow matching). n steps."""
    _check(n, t_max, t_min)
    if not t_min or n == 1:
        return torch.linspace(t_max, 0.0, n + 1, dtype=torch.float64)
    return _finish(torch.linspace(t_max, t_min, n, dtype=torch.float64))


def quadratic(n: int, path: Path, *, t_max: float = 1.0, t_min: float | None = None) -> Tensor:
    """Quadratic in t (Song et al. 2021, DDIM App. D.2): t_i = t_min + (t_max - t_min) (i/m)^2,
    denser near the data. n steps."""
    _check(n, t_max, t_min)
    if not t_min or n == 1:
        return t_max * torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64) ** 2
    u = torch.linspace(1.0, 0.0, n, dtype=torch.float64) ** 2
    return _finish(t_min + (t_max - t_min) * u)


def uniform_logsnr(n: int, path: Path, *, t_max: float = 1.0, t_min: float | None = None) -> Tensor:
    """Uniform in logSNR between t_max and t_min > 0 (default `default_t_min`), then 0: DPM-Solver's
    "logSNR" skip (Lu et al. 2022). n steps."""
    t_min = default_t_min(path) if t_min is None else t_min
    _check(n, t_max, t_min)
    if t_min <= 0:
        raise ValueError("uniform_logsnr needs t_min > 0 (logSNR is infinite at t = 0)")
    t_max = clip_t_max(path, t_max)
    if n == 1:
        return _f64([t_max, 0.0])
    lam = torch.linspace(
        path.log_snr(t_max).item(), path.log_snr(t_min).item(), n, dtype=torch.float64
    )
    times = path.t_from_log_snr(lam)
    times[0], times[-1] = t_max, t_min  # exact ends despite the inverse's rounding
    return _finish(times)


def karras(
    n: int,
    path: Path,
    *,
    sigma_min: float = MIN_SIGMA_VE,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    t_max: float = 1.0,
    t_min: float | None = None,
) -> Tensor:
    """Karras et al. 2022, Eq. 5: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho in sigma_ve = sigma/alpha, clipped to the path's range (and to
    t_max, t_min), mapped to t, then 0. n steps."""
    _check(n, t_max, t_min)
    t_min = default_t_min(path) if t_min is None else t_min
    hi = min(sigma_max, path.sigma_ve(_f64(clip_t_max(path, t_max))).item())
    lo = max(sigma_min, path.sigma_ve(_f64(t_min)).item())
    if not 0 < lo < hi:
        raise ValueError(f"empty sigma range [{lo}, {hi}] for {path!r}")
    if n == 1:
        return _finish(path.t_from_sigma_ve(_f64([hi])))
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    sig = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return _finish(path.t_from_sigma_ve(sig))


def edm(n: int, path: Path, *, t_max: float = 1.0, t_min: float | None = None) -> Tensor:
    """The EDM schedule: `karras` with its defaults sigma in [0.002, 80], rho = 7."""
    return karras(n, path, t_max=t_max, t_min=t_min)


SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "uniform": uniform_t,
    "uniform_t": uniform_t,
    "logsnr": uniform_logsnr,
    "uniform_logsnr": uniform_logsnr,
    "karras": karras,
    "edm": edm,
    "quadratic": quadratic,
}


@dataclass(frozen=True, eq=False)
class Schedule:
    """A fixed schedule: its times, and optionally what a solver should do at each step.

    times: float64 (K+1,) decreasing times in [0, 1].
    orders: per-step solver orders (K,), passed to solvers that take `orders`.
    predictions: per-step prediction kinds (K,) (e.g. "x0" or "eps"), for searched solvers.
    coefficients: learned per-step coefficients (JSON-serialisable), for searched solvers.
    meta: free-form JSON-serialisable notes (how it was found, for which model; meta["solver"]
        names the solver it was made for, which `sample` runs by default).
    correctors: per-step corrector flags (K,), for searched solvers (onestep.core.search).
    """

    times: Tensor
    orders: tuple[int, ...] | None = None
    predictions: tuple[str, ...] | None = None
    coefficients: dict | list | None = None
    meta: dict = field(default_factory=dict)
    correctors: tuple[bool, ...] | None = None

    def __post_init__(self):
        times = torch.as_tensor(self.times, dtype=torch.float64).detach().cpu().flatten()
        if (
            times.numel() < 2
            or not bool((times[1:] < times[:-1]).all())
            or times.min() < 0
            or times.max() > 1
        ):
            raise ValueError(
                f"Schedule times must be >= 2 strictly decreasing values in [0, 1], "
                f"got {times.tolist()}"
            )
        object.__setattr__(self, "times", times)
        for name in ("orders", "predictions", "correctors"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(value)
                if len(value) != self.steps:
                    raise ValueError(f"Schedule has {self.steps} steps but {len(value)} {name}")
                object.__setattr__(self, name, value)

    @property
    def steps(self) -> int:
        return self.times.numel() - 1

    def to_dict(self) -> dict:
        return {
            "times": self.times.tolist(),
            "orders": self.orders,
            "predictions": self.predictions,
            "coefficients": self.coefficients,
            "meta": self.meta,
            **({"correctors": list(self.correctors)} if self.correctors is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Schedule:
        unknown = set(d) - {"times", "orders", "predictions", "coefficients", "meta", "correctors"}
        if unknown or "times" not in d:
            raise ValueError(f"not a schedule: keys {sorted(d)}")
        return cls(**{**d, "meta": d.get("meta") or {}})

    def save(self, file: str | os.PathLike) -> None:
        with open(file, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, file: str | os.PathLike) -> Schedule:
        with open(file) as f:
            return cls.from_dict(json.load(f))


def get_schedule(
    schedule, n_steps: int | None, path: Path, *, t_max: float = 1.0, t_min: float | None = None
) -> Schedule:
    """A Schedule from a name in SCHEDULES (n_steps steps), a Schedule, a JSON file saved by
    Schedule.save, or a sequence/tensor of times. A fixed schedule must have n_steps steps
    (None: any)."""
    if isinstance(schedule, str) and schedule in SCHEDULES:
        if n_steps is None:
            raise ValueError(f"schedule {schedule!r} needs a number of steps")
        return Schedule(_named_times(schedule, n_steps, path, t_max, t_min))
    if isinstance(schedule, str | os.PathLike):
        if not os.path.isfile(schedule):
            raise ValueError(
                f"unknown schedule {str(schedule)!r}: not one of {sorted(SCHEDULES)} "
                "nor a schedule JSON file"
            )
        schedule = Schedule.load(schedule)
    elif isinstance(schedule, Tensor | Sequence):
        schedule = Schedule(torch.as_tensor(schedule, dtype=torch.float64))
    elif not isinstance(schedule, Schedule):
        raise ValueError(
            f"a schedule is a name in {sorted(SCHEDULES)}, a Schedule, a JSON file "
            f"or times; got {type(schedule).__name__}"
        )
    if n_steps is not None and schedule.steps != n_steps:
        raise ValueError(f"the schedule has {schedule.steps} steps, {n_steps} were asked for")
    return schedule


def _named_times(name: str, n: int, path: Path, t_max: float, t_min: float | None) -> Tensor:
    """SCHEDULES[name](n, path, ...), cached on the path (paths do not change): building a grid
    costs several inverse-time lookups, about 1 ms, which would be a tenth of a 20-step
    sampling loop with a small network."""
    cache = path.__dict__.setdefault("_schedule_cache", {})
    key = (name, n, float(t_max), t_min if t_min is None else float(t_min))
    if key not in cache:
        if len(cache) >= 64:
            cache.pop(next(iter(cache)))
        cache[key] = SCHEDULES[name](n, path, t_max=t_max, t_min=t_min)
    return cache[key].clone()


def get_times(
    schedule, n_steps: int | None, path: Path, *, t_max: float = 1.0, t_min: float | None = None
) -> Tensor:
    """The float64 times of `get_schedule(schedule, n_steps, path, ...)`."""
    return get_schedule(schedule, n_steps, path, t_max=t_max, t_min=t_min).times
