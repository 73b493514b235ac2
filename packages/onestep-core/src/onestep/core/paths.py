"""Noising paths x_t = alpha(t) * x_data + sigma(t) * noise, with t in [0, 1], t=0 data, t=1 noise.

Every path gives alpha, sigma, their time derivatives, logSNR = log(alpha^2 / sigma^2) and its
inverse. Coefficients are computed in float64 from a tensor of times of any shape.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Path", "Affine", "VP", "EDM", "RectifiedFlow", "Coefficients", "path_from_config"]


@dataclass(frozen=True)
class Coefficients:
    """alpha(t), sigma(t) and their time derivatives, each shaped like t."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor


def _as_time(t) -> Tensor:
    if not torch.is_tensor(t):
        t = torch.tensor(t, dtype=torch.float64)
    return t.to(torch.float64)


class Path(ABC):
    """Base class. Subclasses define `alpha` and `sigma`; derivatives default to autograd and the
    logSNR inverse to bisection (logSNR must be strictly decreasing in t)."""

    name = "path"

    # -- to override -------------------------------------------------------------------------
    @abstractmethod
    def _alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _sigma(self, t: Tensor) -> Tensor: ...

    def _d_alpha(self, t: Tensor) -> Tensor:
        return _grad(self._alpha, t)

    def _d_sigma(self, t: Tensor) -> Tensor:
        return _grad(self._sigma, t)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        # Bisection on [0, 1]: logSNR decreases in t.
        lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # still too close to data: move right
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    @property
    def config(self) -> dict:
        """A JSON-serialisable dict that `path_from_config` turns back into this path."""
        raise ValueError(f"{type(self).__name__} built from callables cannot be saved")

    # -- public ------------------------------------------------------------------------------
    def alpha(self, t) -> Tensor:
        return self._alpha(_as_time(t))

    def sigma(self, t) -> Tensor:
        return self._sigma(_as_time(t))

    def d_alpha(self, t) -> Tensor:
        return self._d_alpha(_as_time(t))

    def d_sigma(self, t) -> Tensor:
        return self._d_sigma(_as_time(t))

    def coefficients(self, t) -> Coefficients:
        t = _as_time(t)
        return Coefficients(self._alpha(t), self._sigma(t), self._d_alpha(t), self._d_sigma(t))

    def alpha_sigma(self, t) -> tuple[Tensor, Tensor]:
        """(alpha(t), sigma(t)): what converting eps, x0, v and score needs."""
        t = _as_time(t)
        return self._alpha(t), self._sigma(t)

    def log_snr(self, t) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2); +inf at t=0 where sigma = 0."""
        t = _as_time(t)
        return 2.0 * (torch.log(self._alpha(t)) - torch.log(self._sigma(t)))

    def t_from_log_snr(self, lam) -> Tensor:
        return self._t_from_log_snr(_as_time(lam)).clamp(0.0, 1.0)

    def sigma_ve(self, t) -> Tensor:
        """The equivalent variance-exploding noise level sigma/alpha (EDM's sigma)."""
        t = _as_time(t)
        return self._sigma(t) / self._alpha(t)

    def t_from_sigma_ve(self, sigma_ve) -> Tensor:
        return self.t_from_log_snr(-2.0 * torch.log(_as_time(sigma_ve)))

    def __repr__(self) -> str:
        try:
            args = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if k != "name")
        except ValueError:
            args = "..."
        return f"{type(self).__name__}({args})"


def _grad(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    with torch.enable_grad():
        t = t.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(t).sum(), t)
    return g.detach()


class Affine(Path):
    """A general affine path from two differentiable callables alpha(t) and sigma(t) (float64 in,
    float64 out). Derivatives come from autograd, the logSNR inverse from bisection."""

    name = "affine"

    def __init__(self, alpha: Callable[[Tensor], Tensor], sigma: Callable[[Tensor], Tensor]):
        self._alpha_fn, self._sigma_fn = alpha, sigma

    def _alpha(self, t):
        return self._alpha_fn(t)

    def _sigma(self, t):
        return self._sigma_fn(t)


class RectifiedFlow(Path):
    """Rectified flow / conditional OT path (Liu et al. 2022; Lipman et al. 2022):
    alpha = 1 - t, sigma = t, velocity = noise - x_data."""

    name = "rectified_flow"

    def _alpha(self, t):
        return 1.0 - t

    def _sigma(self, t):
        return t.clone()

    def _d_alpha(self, t):
        return -torch.ones_like(t)

    def _d_sigma(self, t):
        return torch.ones_like(t)

    def _t_from_log_snr(self, lam):
        # alpha/sigma = exp(lam/2) => (1-t)/t = e => t = 1 / (1 + e)
        return torch.sigmoid(-lam / 2.0)

    @property
    def config(self):
        return {"name": self.name}


class EDM(Path):
    """Variance-exploding path of Karras et al. 2022 (EDM): alpha = 1, sigma(t) = sigma_max * t^rho,
    so that a uniform grid in t is the Karras rho-schedule (Eq. 5) with sigma_min = 0, and t=0 is
    exactly the data. `sigma_data` is kept for preconditioning and the EDM loss weighting."""

    name = "edm"

    def __init__(self, sigma_max: float = 80.0, rho: float = 7.0, sigma_data: float = 0.5):
        if sigma_max <= 0 or rho <= 0 or sigma_data <= 0:
            raise ValueError(f"EDM needs positive sigma_max, rho, sigma_data; got "
                             f"{sigma_max}, {rho}, {sigma_data}")
        self.sigma_max, self.rho, self.sigma_data = float(sigma_max), float(rho), float(sigma_data)

    def _alpha(self, t):
        return torch.ones_like(t)

    def _sigma(self, t):
        return self.sigma_max * t.clamp_min(0.0) ** self.rho

    def _d_alpha(self, t):
        return torch.zeros_like(t)

    def _d_sigma(self, t):
        return self.sigma_max * self.rho * t.clamp_min(0.0) ** (self.rho - 1.0)

    def _t_from_log_snr(self, lam):
        sigma = torch.exp(-lam / 2.0)
        return (sigma / self.sigma_max) ** (1.0 / self.rho)

    @property
    def config(self):
        return {"name": self.name, "sigma_max": self.sigma_max, "rho": self.rho,
                "sigma_data": self.sigma_data}


class VP(Path):
    """Variance-preserving path, alpha^2 + sigma^2 = 1 (Ho et al. 2020; Song et al. 2021).

    schedule="linear": continuous-time linear beta (Song et al. 2021, Eq. 33),
        log alpha(t) = -beta_d t^2 / 4 - beta_min t / 2.
    schedule="cosine": Nichol & Dhariwal 2021, Eq. 17, alpha(t)^2 = f(t)/f(0) with
        f(u) = cos^2((u + s)/(1 + s) * pi/2), on u = t * t_end (t_end < 1 keeps logSNR finite).
    `VP.from_betas(betas)`: a discrete DDPM model with N steps. Step n (0-based) sits at
        t_n = (n + 1) / N, log alpha is interpolated linearly in t between steps and to
        log alpha = 0 at t = 0 (DPM-Solver's NoiseScheduleVP('discrete') convention, with the
        extra point at t=0 so the path reaches the data). `index(t) = t * N - 1` is the
        (fractional) step index a discrete network expects.
    """

    name = "vp"

    def __init__(self, schedule: str = "linear", *, beta_min: float = 0.1, beta_max: float = 20.0,
                 cosine_s: float = 0.008, t_end: float = 0.9946):
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"unknown VP schedule {schedule!r}; use 'linear', 'cosine' or "
                             f"VP.from_betas(betas)")
        self.schedule = schedule
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.cosine_s, self.t_end = float(cosine_s), float(t_end)
        self._t_grid: Tensor | None = None  # discrete schedule only
        self._log_alpha_grid: Tensor | None = None
        self.betas: Tensor | None = None

    @classmethod
    def from_betas(cls, betas) -> VP:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("VP.from_betas needs at least 2 betas, each in (0, 1)")
        path = cls.__new__(cls)
        path.schedule = "discrete"
        path.betas = betas
        n = betas.numel()
        log_alpha = 0.5 * torch.cumsum(torch.log1p(-betas), 0)
        path._t_grid = torch.cat([torch.zeros(1, dtype=torch.float64),
                                  torch.arange(1, n + 1, dtype=torch.float64) / n])
        path._log_alpha_grid = torch.cat([torch.zeros(1, dtype=torch.float64), log_alpha])
        return path

    @classmethod
    def ddpm_linear(cls, num_steps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02) -> VP:
        """The discrete linear-beta schedule of DDPM (Ho et al. 2020, Sec. 4)."""
        return cls.from_betas(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))

    @classmethod
    def ddpm_cosine(cls, num_steps: int = 100, s: float = 0.008, max_beta: float = 0.999) -> VP:
        """The discrete cosine schedule of Nichol & Dhariwal 2021 (Eq. 17, betas clipped at
        0.999): beta_n = min(1 - abar((n + 1) / N) / abar(n / N), max_beta) with
        abar(u) = cos^2((u + s) / (1 + s) pi / 2); diffusers' "squaredcos_cap_v2", the schedule
        of Diffusion Policy (Chi et al. 2023)."""
        if num_steps < 2:
            raise ValueError(f"ddpm_cosine needs at least 2 steps, got {num_steps}")
        u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        abar = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        return cls.from_betas((1.0 - abar[1:] / abar[:-1]).clamp(max=max_beta))

    @property
    def num_steps(self) -> int | None:
        return None if self.betas is None else self.betas.numel()

    @property
    def alphas_cumprod(self) -> Tensor:
        if self.betas is None:
            raise ValueError("alphas_cumprod exists only for a discrete VP (VP.from_betas)")
        return torch.exp(2.0 * self._log_alpha_grid[1:])

    def index(self, t) -> Tensor:
        """Fractional discrete step index n = t * N - 1 (n = 0..N-1 at the grid points)."""
        if self.betas is None:
            raise ValueError("index() exists only for a discrete VP (VP.from_betas)")
        return _as_time(t) * self.num_steps - 1.0

    def t_from_index(self, n) -> Tensor:
        return (_as_time(n) + 1.0) / self.num_steps

    # log alpha and its derivative ----------------------------------------------------------
    def _log_alpha(self, t: Tensor) -> Tensor:
        if self.schedule == "linear":
            return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        if self.schedule == "cosine":
            return self._cos_log(t * self.t_end) - self._cos_log(torch.zeros_like(t))
        # piecewise linear between the grid points k / N (uniform: no search needed)
        n, la = self.num_steps, self._log_alpha_grid
        if la.device != t.device:
            la = la.to(t.device)
        u = t * n
        i = u.detach().floor().clamp_(0, n - 1)
        k = i.long()
        f0 = la[k]
        return f0 + (u - i) * (la[k + 1] - f0)

    def _d_log_alpha(self, t: Tensor) -> Tensor:
        if self.schedule == "linear":
            return -0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min
        if self.schedule == "cosine":
            s = self.cosine_s
            u = (t * self.t_end + s) / (1 + s) * math.pi / 2
            return -torch.tan(u) * math.pi / 2 / (1 + s) * self.t_end
        grid, la = self._t_grid.to(t.device), self._log_alpha_grid.to(t.device)
        slopes = (la[1:] - la[:-1]) / (grid[1:] - grid[:-1])
        i = torch.searchsorted(grid, t.contiguous(), right=True).clamp(1, grid.numel() - 1) - 1
        return slopes[i]

    def _cos_log(self, u: Tensor) -> Tensor:
        s = self.cosine_s
        return torch.log(torch.cos((u + s) / (1 + s) * math.pi / 2))

    def _alpha(self, t):
        return torch.exp(self._log_alpha(t))

    def alpha_sigma(self, t) -> tuple[Tensor, Tensor]:
        la = self._log_alpha(_as_time(t))  # one table lookup for both
        return torch.exp(la), torch.sqrt(-torch.expm1(2.0 * la))

    def coefficients(self, t) -> Coefficients:
        t = _as_time(t)
        la, dla = self._log_alpha(t), self._d_log_alpha(t)
        a, s = torch.exp(la), torch.sqrt(-torch.expm1(2.0 * la))
        return Coefficients(a, s, a * dla, -a * a * dla / s)

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(2.0 * self._log_alpha(t)))

    def _d_alpha(self, t):
        return self._alpha(t) * self._d_log_alpha(t)

    def _d_sigma(self, t):
        # sigma^2 = 1 - alpha^2 => d sigma = -alpha d alpha / sigma
        a, s = self._alpha(t), self._sigma(t)
        return -a * a * self._d_log_alpha(t) / s

    def log_snr(self, t) -> Tensor:
        t = _as_time(t)
        la = self._log_alpha(t)
        return 2.0 * la - torch.log(-torch.expm1(2.0 * la))

    def _t_from_log_snr(self, lam):
        # alpha^2 = sigmoid(lam) => log alpha = -softplus(-lam) / 2, then invert log alpha(t).
        la = -0.5 * torch.nn.functional.softplus(-lam)
        if self.schedule == "linear":
            d = self.beta_max - self.beta_min
            return (-0.5 * self.beta_min + torch.sqrt(0.25 * self.beta_min**2 - d * la)) / (0.5 * d)
        if self.schedule == "cosine":
            s = self.cosine_s
            c = torch.exp(la + self._cos_log(torch.zeros_like(la)))
            return (torch.arccos(c) * 2 / math.pi * (1 + s) - s) / self.t_end
        grid, lag = self._t_grid.to(lam.device), self._log_alpha_grid.to(lam.device)
        return _interp(-la, -lag, grid)  # log alpha decreases: flip signs to get increasing x

    @property
    def config(self):
        if self.schedule == "discrete":
            return {"name": self.name, "betas": self.betas.tolist()}
        return {"name": self.name, "schedule": self.schedule, "beta_min": self.beta_min,
                "beta_max": self.beta_max, "cosine_s": self.cosine_s, "t_end": self.t_end}


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation with linear extrapolation at both ends (xp increasing)."""
    i = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, xp.numel() - 1) - 1
    x0, x1, f0, f1 = xp[i], xp[i + 1], fp[i], fp[i + 1]
    return f0 + (x - x0) * (f1 - f0) / (x1 - x0)


_PATHS = {"vp": VP, "edm": EDM, "rectified_flow": RectifiedFlow}


def path_from_config(config: dict) -> Path:
    """Rebuild a path from its `config` dict (as saved in checkpoints)."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in _PATHS:
        raise ValueError(f"unknown path {name!r}; known: {sorted(_PATHS)}")
    if name == "vp" and "betas" in config:
        return VP.from_betas(config["betas"])
    return _PATHS[name](**config)
