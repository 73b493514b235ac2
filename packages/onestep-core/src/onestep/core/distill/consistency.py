"""Consistency models on any path: consistency distillation (CD; Song et al. 2023, Alg. 2), improved
consistency training (iCT; Song & Dhariwal 2023) and segment-wise multistep consistency
distillation (Heek et al. 2024; as used by Efficient-vDiT, Ding et al. 2025).

The consistency function is the student Denoiser's x0 prediction f_theta(x_t, t) = x0_theta(x_t, t).
It meets the boundary condition f(x, 0) = x exactly at t = 0 for the usual parameterizations,
because sigma(0) = 0 and alpha(0) = 1:
    rectified-flow velocity u:  x0 = x_t - t u                        -> x_t at t = 0
    VP eps:                     x0 = (x_t - sigma eps) / alpha          -> x_t
    v (any path):               x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2) -> x_t
    EDM-preconditioned x0:      c_skip(0) = 1, c_out(0) = 0             -> x_t
(`test_boundary_condition` checks them). A raw x0-predicting network has no such guarantee: it
collapses under CD, so eps and score teachers get a v-predicting student by default
(`student_prediction="auto"`, `make_student`), since an eps student's x0 = (x - sigma eps) / alpha
is too imprecise for one step where alpha ~ 0. The consistency models paper enforces it at
sigma_min = epsilon = 0.002 with shifted c_skip/c_out (Song et al. 2023, Eq. 7 and App. C); here it
holds at sigma = 0, so at the grid's smallest point sigma_min = 0.002 it holds up to
O(sigma_min) = O(0.002), which is negligible for data of unit scale.

Noise levels are the path's variance-exploding sigma = sigma(t) / alpha(t) (EDM's sigma), so the
Karras discretisation (Karras et al. 2022, Eq. 5) and the iCT noise distribution carry over to
every path; the teacher's ODE step is EDM's Euler or Heun step on y = x / alpha against that sigma
(Karras et al. 2022, Alg. 1), which for Euler is the DDIM step.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..convert import as_batch_time
from ..denoiser import Denoiser
from ..method_registry import describe
from ..nn import build_network, network_name
from ..paths import Path
from ..schedules import karras
from .base import (
    DenoiserGenerator,
    Distiller,
    Generator,
    split_batch,
)
from .progressive import _ab, check_student_prediction, default_t_max, make_student

__all__ = [
    "CDConfig",
    "CDDistiller",
    "ICTConfig",
    "ICTDistiller",
    "SegmentCDConfig",
    "SegmentCDDistiller",
    "cd_loss",
    "ict_loss",
    "segment_cd_loss",
    "teacher_ode_step",
    "consistency_distance",
    "pseudo_huber_c",
    "karras_times",
    "ict_num_points",
    "ict_point_probs",
    "METHODS",
]

SOLVERS = ("euler", "heun")
METRICS = ("l2", "pseudo_huber")
ICT_INITS = ("scratch", "teacher")


# ---------------------------------------------------------------------------------------------
# Shared pieces


def karras_times(
    n_points: int,
    path: Path,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> Tensor:
    """N increasing times t_1 < ... < t_N whose sigma = sigma/alpha follow Karras et al. 2022,
    Eq. 5 from sigma_min to sigma_max (clipped to the path's range; Song et al. 2023, Sec. 5 use
    0.002, 80, rho = 7). float64 (N,)."""
    if n_points < 2:
        raise ValueError(f"a consistency discretisation needs at least 2 points, got {n_points}")
    times = karras(n_points, path, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    return times[:-1].flip(0).contiguous()  # drop the appended t = 0, increasing


def pseudo_huber_c(x: Tensor) -> float:
    """c = 0.00054 sqrt(d) for data of dimension d (Song & Dhariwal 2023, Sec. 3.3)."""
    return 0.00054 * math.sqrt(x[0].numel())


def consistency_distance(a: Tensor, b: Tensor, metric: str, c: float | None = None) -> Tensor:
    """Per-sample distance (B,): "l2", the squared L2 distance averaged over dimensions (the CD
    paper's l2 metric, ||a - b||^2, divided by d); or "pseudo_huber", sqrt(||a - b||^2 + c^2) - c
    over all d dimensions (Song & Dhariwal 2023, Sec. 3.3; c defaults to `pseudo_huber_c`)."""
    sq = (a - b).float().pow(2).flatten(1)
    if metric == "l2":
        return sq.mean(1)
    if metric == "pseudo_huber":
        c = pseudo_huber_c(a) if c is None else c
        return torch.sqrt(sq.sum(1) + c * c) - c
    raise ValueError(f"unknown metric {metric!r}; known: {list(METRICS)}")


@torch.no_grad()
def teacher_ode_step(
    teacher: Denoiser, x: Tensor, t, t_next, cond=None, solver: str = "heun"
) -> Tensor:
    """One step of the teacher's probability-flow ODE from t to t_next (per-sample (B,) or
    scalars): Euler ("euler", = DDIM: x' = alpha' x0 + sigma' eps) or Heun ("heun", Karras et al.
    2022, Alg. 1: y = x / alpha, y' = y + (s' - s) (eps + eps') / 2 in s = sigma / alpha). Heun
    falls back to Euler where t_next is the data (sigma' = 0) or t is pure noise (alpha = 0).
    Consistency distillation's Phi (Song et al. 2023, Alg. 2)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; known: {list(SOLVERS)}")
    t, t_next = as_batch_time(t, x), as_batch_time(t_next, x)
    path = teacher.path
    x0, eps = teacher.x0_eps(x, t, cond)
    a1, s1 = _ab(path, t_next, x)
    x_euler = a1 * x0 + s1 * eps
    if solver == "euler":
        return x_euler
    a0, s0 = _ab(path, t, x)
    ok = (a0 > 0) & (s1 > 0)
    _, eps1 = teacher.x0_eps(x_euler, t_next, cond)
    sv0 = s0 / torch.where(ok, a0, torch.ones_like(a0))  # sigma / alpha, finite where ok
    sv1 = s1 / torch.where(ok, a1, torch.ones_like(a1))
    # x' = a1 y' with y = x0 + sv0 eps:  a1 x0 + a1 (sv0 + sv1)/2 eps + a1 (sv1 - sv0)/2 eps1
    x_heun = a1 * x0 + a1 * (0.5 * (sv0 + sv1)) * eps + a1 * (0.5 * (sv1 - sv0)) * eps1
    return torch.where(ok, x_heun, x_euler)


def _check_common(name: str, c) -> None:
    if not c.lr > 0:
        raise ValueError(f"{name}.lr must be positive, got {c.lr}")
    if c.weight_decay < 0:
        raise ValueError(f"{name}.weight_decay must be >= 0, got {c.weight_decay}")
    if c.grad_clip is not None and not c.grad_clip > 0:
        raise ValueError(f"{name}.grad_clip must be positive or None, got {c.grad_clip}")
    if c.metric not in METRICS:
        raise ValueError(f"{name}.metric: unknown {c.metric!r}; known: {list(METRICS)}")
    if c.huber_c is not None and not c.huber_c > 0:
        raise ValueError(f"{name}.huber_c must be positive or None, got {c.huber_c}")
    if c.ema_decay is not None and not 0.0 <= c.ema_decay < 1.0:
        raise ValueError(f"{name}.ema_decay must be in [0, 1) or None, got {c.ema_decay}")
    if c.warmup < 0:
        raise ValueError(f"{name}.warmup must be >= 0, got {c.warmup}")
    check_student_prediction(name, c.student_prediction)


def _check_karras(name: str, c) -> None:
    if not 0 < c.sigma_min < c.sigma_max:
        raise ValueError(
            f"{name}: need 0 < sigma_min < sigma_max, got {c.sigma_min}, {c.sigma_max}"
        )
    if not c.rho > 0:
        raise ValueError(f"{name}.rho must be positive, got {c.rho}")


class _ConsistencyDistiller(Distiller):
    """What CD, iCT and segment CD share: the student, its optimizer, an optional EMA target
    theta^- (decay `target_ema`) and an optional EMA for sampling (decay `ema_decay`)."""

    def _build(self, teacher: Denoiser, student_network, target_ema: float | None) -> None:
        c = self.config
        student = make_student(teacher, student_network, c.student_prediction)
        self.student = self.add_module("student", student)
        decay_over = c.total_steps if getattr(c, "cosine_lr", False) else None
        self.add_optimizer(
            "student",
            self.student.parameters(),
            lr=c.lr,
            betas=(c.beta1, c.beta2),
            weight_decay=c.weight_decay,
            warmup=c.warmup,
            total_steps=decay_over,
        )
        self.target_ema = (
            self.add_ema("target", self.student, target_ema) if target_ema is not None else None
        )
        self.sample_ema = (
            self.add_ema("student", self.student, c.ema_decay) if c.ema_decay is not None else None
        )

    def target(self) -> Denoiser:
        """theta^-: the EMA target network, or the student itself (used under no_grad)."""
        return self.student if self.target_ema is None else self.target_ema.module

    def _finish(self, loss: Tensor, logs: dict) -> dict[str, float]:
        logs["grad_norm"] = self.update("student", loss, clip=self.config.grad_clip)
        if self.target_ema is not None:
            self.target_ema.update(self.student)
        if self.sample_ema is not None:
            self.sample_ema.update(self.student)
        return logs

    def sampling_denoiser(self) -> Denoiser:
        return self.student if self.sample_ema is None else self.sample_ema.module


# ---------------------------------------------------------------------------------------------
# Consistency distillation (Song et al. 2023, Alg. 2)


def cd_loss(
    student: Denoiser,
    target: Denoiser,
    teacher: Denoiser,
    x_data: Tensor,
    *,
    times: Tensor,
    solver: str = "heun",
    metric: str = "l2",
    huber_c: float | None = None,
    cond=None,
    generator=None,
) -> tuple[Tensor, dict]:
    """Song et al. 2023, Alg. 2: n ~ U{1..N-1}, x_{t_n+1} = alpha x + sigma z, one teacher ODE step
    to x^_{t_n}, loss d(f_theta(x_{t_n+1}, t_n+1), f_theta^-(x^_{t_n}, t_n)) with lambda = 1.
    `times`: the increasing discretisation t_1..t_N (`karras_times`). x_data (B, ...)."""
    b = x_data.shape[0]
    times = times.to(x_data.device)
    # 1. adjacent discretisation points t_n < t_{n+1}
    n = torch.randint(0, times.numel() - 1, (b,), generator=generator, device=x_data.device)
    t_lo, t_hi = times[n], times[n + 1]
    z = torch.randn(x_data.shape, generator=generator, device=x_data.device, dtype=x_data.dtype)
    a, s = _ab(student.path, t_hi, x_data)
    x_hi = a * x_data + s * z
    # 2. the teacher's ODE step t_{n+1} -> t_n, then the target network there
    with torch.no_grad():
        x_lo = teacher_ode_step(teacher, x_hi, t_hi, t_lo, cond, solver)
        f_target = target.x0(x_lo, t_lo, cond)
    # 3. the consistency loss
    f = student.x0(x_hi, t_hi, cond)
    d = consistency_distance(f, f_target, metric, huber_c)
    loss = d.mean()
    return loss, {
        "loss": loss.detach().item(),
        "mse_target": (f.detach() - f_target).float().pow(2).mean().item(),
    }


@dataclass(frozen=True)
class CDConfig:
    """Consistency distillation (Song et al. 2023). Paper defaults are CIFAR-10's (Table 3); fields
    that differ for toy data say so. Toy scale: 3000 steps, batch 256."""

    num_points: int = 18
    """N, discretisation points (Table 3: 18 on CIFAR-10, 40 on ImageNet 64 and LSUN)."""
    sigma_min: float = 0.002
    """epsilon, the smallest noise level (Sec. 5, from Karras et al. 2022)."""
    sigma_max: float = 80.0
    """T, the largest noise level (Sec. 5), clipped to the path's range."""
    rho: float = 7.0
    """Karras et al. 2022, Eq. 5 (Sec. 5)."""
    solver: str = "heun"
    """The teacher's ODE step Phi: "heun" (Table 3) or "euler"."""
    metric: str = "l2"
    """d: "l2" (squared L2; the paper's best on images is LPIPS, Table 3) or "pseudo_huber"."""
    huber_c: float | None = None
    """Pseudo-Huber c; None: 0.00054 sqrt(d) (Song & Dhariwal 2023, Sec. 3.3)."""
    target_ema: float = 0.95
    """mu, the EMA decay of the target network theta^- (Table 3: 0.95 for CD on every dataset)."""
    ema_decay: float | None = None
    """EMA of the student used for sampling (Table 3: 0.9999 on CIFAR-10); None samples the
    online student, since a few-thousand-step toy run is too short for a 0.9999 average."""
    lr: float = 1e-3
    """Adam learning rate (Table 3: 4e-4 on CIFAR-10; 1e-3 for toy MLPs)."""
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    warmup: int = 0
    """Linear LR warm-up steps."""
    grad_clip: float | None = 1.0
    """Gradient-norm clip (None: off)."""
    student_prediction: str | None = "auto"
    """What the student network predicts: "auto" ("v" for eps/score teachers, whose x0 is
    imprecise at high noise; else the teacher's kind), None (the teacher's) or a kind
    (`make_student`). A raw "x0" network lacks the boundary condition: avoid it."""

    def validate(self) -> None:
        if not isinstance(self.num_points, int) or self.num_points < 2:
            raise ValueError(
                f"CDConfig.num_points must be an integer >= 2, got {self.num_points!r}"
            )
        if self.solver not in SOLVERS:
            raise ValueError(f"CDConfig.solver: unknown {self.solver!r}; known: {list(SOLVERS)}")
        if not 0.0 <= self.target_ema < 1.0:
            raise ValueError(f"CDConfig.target_ema must be in [0, 1), got {self.target_ema}")
        _check_karras("CDConfig", self)
        _check_common("CDConfig", self)

    @classmethod
    def toy_defaults(cls, teacher=None, **overrides) -> CDConfig:
        """Toy scale (2-16-D data, MLP teacher; the defaults): train 3000 steps, batch 256."""
        return replace(cls(), **overrides)


class CDDistiller(_ConsistencyDistiller):
    """Song et al. 2023, Alg. 2, with the student's x0 prediction as the consistency function and
    an EMA target network. Its Generator is multistep consistency sampling (Alg. 1): nfe = 1 maps
    noise at t_N to x0; nfe > 1 re-noises to times evenly spaced in t and denoises again."""

    kind = "cd"

    def __init__(
        self,
        teacher: Denoiser,
        config: CDConfig | None = None,
        *,
        student_network: nn.Module | None = None,
    ):
        config = CDConfig() if config is None else config
        super().__init__(teacher, config)
        self._build(teacher, student_network, config.target_ema)
        self.times = karras_times(
            config.num_points,
            teacher.path,
            sigma_min=config.sigma_min,
            sigma_max=config.sigma_max,
            rho=config.rho,
        )

    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]:
        x, cond = split_batch(batch)
        self.student.train()
        c = self.config
        loss, logs = cd_loss(
            self.student,
            self.target(),
            self.teacher,
            x,
            times=self.times,
            solver=c.solver,
            metric=c.metric,
            huber_c=c.huber_c,
            cond=cond,
            generator=generator,
        )
        return self._finish(loss, logs)

    def generator(self) -> Generator:
        return DenoiserGenerator(
            self.sampling_denoiser(), t_start=float(self.times[-1]), stochastic=True
        )


# ---------------------------------------------------------------------------------------------
# Improved consistency training (Song & Dhariwal 2023)


def ict_num_points(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """N(k) = min(s0 2^floor(k / K'), s1) + 1 with K' = floor(K / (log2 floor(s1 / s0) + 1))
    (Song & Dhariwal 2023, Eq. 8): the discretisation doubles K / K' times over K steps."""
    k_prime = max(1, math.floor(total_steps / (math.log2(s1 // s0) + 1)))
    return min(s0 * 2 ** (step // k_prime), s1) + 1


def ict_point_probs(sigmas: Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    """p(sigma_i) proportional to erf((ln sigma_{i+1} - P_mean) / (sqrt 2 P_std)) -
    erf((ln sigma_i - P_mean) / (sqrt 2 P_std)) for i = 1..N-1: the lognormal noise schedule
    discretised (Song & Dhariwal 2023, Sec. 3.5). sigmas: increasing (N,) -> (N-1,)."""
    cdf = torch.erf((torch.log(sigmas.double()) - p_mean) / (math.sqrt(2.0) * p_std))
    p = (cdf[1:] - cdf[:-1]).clamp_min(0.0)
    return p / p.sum()


def ict_loss(
    student: Denoiser,
    x_data: Tensor,
    *,
    times: Tensor,
    p_mean: float = -1.1,
    p_std: float = 2.0,
    metric: str = "pseudo_huber",
    huber_c: float | None = None,
    weighting: str = "inverse_gap",
    target: Denoiser | None = None,
    cond=None,
    generator=None,
) -> tuple[Tensor, dict]:
    """Consistency training with Song & Dhariwal 2023's improvements: i ~ the discretised lognormal
    (Sec. 3.5), x_{i+1} = alpha x + sigma_{i+1}-level noise z and x_i with the same x and z (no
    teacher: the pair lies on one conditional trajectory), the target f_theta^-(x_i) with
    theta^- = stopgrad(theta) (Sec. 3.2; `target` None), lambda(sigma_i) = 1 / (sigma_{i+1} -
    sigma_i) (Sec. 3.4, "inverse_gap"; or "none") and the pseudo-Huber metric (Sec. 3.3).
    `times`: increasing t_1..t_N (`karras_times`). x_data (B, ...)."""
    if weighting not in ("inverse_gap", "none"):
        raise ValueError(f"unknown weighting {weighting!r}; use 'inverse_gap' or 'none'")
    b = x_data.shape[0]
    times = times.to(x_data.device)
    sigmas = student.path.sigma_ve(times)  # increasing VE noise levels, float64
    # 1. i from the discretised lognormal; one data point, one noise, two noise levels
    p = ict_point_probs(sigmas, p_mean, p_std)
    i = torch.multinomial(p.float(), b, replacement=True, generator=generator)
    t_lo, t_hi = times[i], times[i + 1]
    z = torch.randn(x_data.shape, generator=generator, device=x_data.device, dtype=x_data.dtype)
    a_hi, s_hi = _ab(student.path, t_hi, x_data)
    a_lo, s_lo = _ab(student.path, t_lo, x_data)
    x_hi, x_lo = a_hi * x_data + s_hi * z, a_lo * x_data + s_lo * z
    # 2. target with theta^- = stopgrad(theta) (or a given target network)
    with torch.no_grad():
        f_target = (student if target is None else target).x0(x_lo, t_lo, cond)
    # 3. lambda(sigma_i) d(f(x_{i+1}), f^-(x_i))
    f = student.x0(x_hi, t_hi, cond)
    d = consistency_distance(f, f_target, metric, huber_c)
    w = 1.0 / (sigmas[i + 1] - sigmas[i]) if weighting == "inverse_gap" else torch.ones_like(t_lo)
    loss = (w.to(d) * d).mean()
    return loss, {"loss": loss.detach().item(), "distance": d.detach().mean().item()}


@dataclass(frozen=True)
class ICTConfig:
    """Improved consistency training (Song & Dhariwal 2023). The distiller takes a teacher only for
    its path, parameterization and network architecture: the loss uses data alone, and the student
    starts from random weights, as the paper's (`init="scratch"`). `init="teacher"` starts it from
    the teacher's weights instead: consistency fine-tuning of a pretrained diffusion model, as
    ECT does (Geng et al. 2024, "Consistency Models Made Easy"), under iCT's loss and curriculum.
    The method's settings are the paper's (Sec. 3); the run's (K, lr, its schedule) suit toy data:
    train for `total_steps` = 4000 steps, batch 256."""

    total_steps: int = 4000
    """K, the run's total steps over which the discretisation doubles (Eq. 8). The paper's K is
    400,000 on CIFAR-10; set it to the Trainer's steps."""
    s0: int = 10
    """Initial discretisation steps (Eq. 8, s0 = 10)."""
    s1: int = 1280
    """Final discretisation steps (Eq. 8, s1 = 1280)."""
    sigma_min: float = 0.002
    """Smallest noise level (Sec. 3.5, as Karras et al. 2022)."""
    sigma_max: float = 80.0
    """Largest noise level (clipped to the path's range)."""
    rho: float = 7.0
    """Karras et al. 2022, Eq. 5."""
    p_mean: float = -1.1
    """Lognormal noise schedule mean of ln sigma (Sec. 3.5)."""
    p_std: float = 2.0
    """Lognormal noise schedule std of ln sigma (Sec. 3.5)."""
    metric: str = "pseudo_huber"
    """d: "pseudo_huber" (Sec. 3.3) or "l2"."""
    huber_c: float | None = None
    """Pseudo-Huber c; None: 0.00054 sqrt(d) (Sec. 3.3)."""
    weighting: str = "inverse_gap"
    """lambda(sigma_i): "inverse_gap", 1 / (sigma_{i+1} - sigma_i) (Sec. 3.4), or "none"."""
    ema_decay: float | None = None
    """EMA of the student used for sampling (the paper evaluates an EMA with decay 0.99993); None
    samples the online student, as a toy run is far too short for that average."""
    init: str = "scratch"
    """The student's initial weights: "scratch" (a fresh network of the teacher's architecture,
    as the paper trains) or "teacher" (the teacher's weights: consistency fine-tuning, ECT-style,
    Geng et al. 2024). A `student_network` passed to the distiller is used as given."""
    lr: float = 1e-3
    """Adam learning rate (the paper: 1e-4 on CIFAR-10; toy MLPs: 1e-3)."""
    cosine_lr: bool = True
    """Cosine-decay the learning rate to 0 over `total_steps`. The paper keeps it constant over
    400k steps; in a few-thousand-step run the high-variance consistency-training gradient at
    the largest N needs the decay."""
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    warmup: int = 0
    grad_clip: float | None = 1.0
    student_prediction: str | None = "auto"
    """What the student network predicts: "auto" ("v" for eps/score teachers, whose x0 is
    imprecise at high noise; else the teacher's kind), None (the teacher's) or a kind
    (`make_student`). A raw "x0" network lacks the boundary condition: avoid it."""

    def validate(self) -> None:
        for name in ("total_steps", "s0", "s1"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"ICTConfig.{name} must be a positive integer, got {v!r}")
        if self.s1 < self.s0:
            raise ValueError(f"ICTConfig: s1 ({self.s1}) must be >= s0 ({self.s0})")
        if not self.p_std > 0:
            raise ValueError(f"ICTConfig.p_std must be positive, got {self.p_std}")
        if self.weighting not in ("inverse_gap", "none"):
            raise ValueError(
                f"ICTConfig.weighting: unknown {self.weighting!r}; use 'inverse_gap' or 'none'"
            )
        if self.init not in ICT_INITS:
            raise ValueError(f"ICTConfig.init: unknown {self.init!r}; use one of {ICT_INITS}")
        _check_karras("ICTConfig", self)
        _check_common("ICTConfig", self)

    @classmethod
    def toy_defaults(cls, teacher=None, **overrides) -> ICTConfig:
        """Toy scale (2-16-D data, MLP teacher): K = 16000, so train for 16000 steps, batch
        256, with the squared-L2 metric. Both differ from the class defaults, measured with the
        one-step distillation benchmark (one run each unless noted; these runs started the
        student from the teacher's weights, init="teacher", the default then; the student now
        starts from scratch as the paper's, and on the 8-gaussians toy 600 steps from scratch
        take the one-step sliced W2 from 0.42 to 0.15, tests/test_fidelity_phased_sim_ict.py):

        - metric="l2": the pseudo-Huber metric with c = 0.00054 sqrt(d) (Sec. 3.3) has c far
          below the typical consistency gap |f(x_{i+1}) - f(x_i)| of low-dimensional data, so
          it acts as the unsquared L2 norm. Its minimiser is then a conditional geometric
          median of the target f(x_i) given x_{i+1}, not the conditional mean that makes
          consistency training consistent with the probability-flow ODE as N grows. With a
          multimodal posterior, as for an 8-D Gaussian mixture at large sigma, the median
          differs from the mean and the learned map is biased: on gmm_8d the one-step sliced
          W2 is 5.0x the 50-NFE teacher's with pseudo-Huber, 1.8x with L2 (larger c sits in
          between: 2.7x at c = 0.1).
        - K = 4000 -> 8000: consistency training's single-sample target is noisy. With twice
          the steps at each N, the one-step ratio falls from 1.8x to 1.6x on gmm_8d and from
          2.1x to 1.5x on the checkerboard (which had 1.65x with pseudo-Huber at K = 4000).
          A smaller s1 (160: 2.5x), a larger s1 (5120: 2.0x), a student EMA (0.999: 2.1x) and
          P_mean = -0.4 (the lognormal rescaled to sigma_data = 1: 1.8x) did not help on
          gmm_8d at K = 4000.
        - K = 8000 -> 16000: at K = 8000 the one-step ratio was 1.51x / 1.56x (checkerboard /
          gmm_8d); K = 16000 gives 1.49x / 1.35x, and 1.31x and 1.60x on the checkerboard with
          two other training seeds (median 1.49x): the one-step map of consistency training
          is noisy from run to run (the 2-step samples are 0.94x-1.09x throughout). A higher
          lr (2e-3 at K = 8000: 1.42x, 1.59x, 1.60x over three seeds; 4e-3 diverged: 8x), a
          lower one (5e-4: 1.58x / 1.70x) and lambda = 1 instead of the inverse gap (1.37x /
          2.03x) were no better. About 6 CPU minutes on one thread."""
        return replace(cls(metric="l2", total_steps=16000), **overrides)


class ICTDistiller(_ConsistencyDistiller):
    """Song & Dhariwal 2023: consistency training from data, theta^- = stopgrad(theta) (no EMA
    target), with the doubling curriculum N(k) of Eq. 8 on the Karras grid in the path's VE sigma.
    The teacher is used only for the path, parameterization and the student's architecture (and
    its weights with `init="teacher"`); no teacher network is evaluated. Generator: multistep
    consistency sampling (Song et al. 2023, Alg. 1) from sigma_max."""

    kind = "ict"

    def __init__(
        self,
        teacher: Denoiser,
        config: ICTConfig | None = None,
        *,
        student_network: nn.Module | None = None,
    ):
        config = ICTConfig() if config is None else config
        super().__init__(teacher, config)
        if student_network is None and config.init == "scratch":
            student_network = _reinitialised(teacher.model)
        self._build(teacher, student_network, None)
        self._grids: dict[int, Tensor] = {}
        self.t_start = float(self.grid(2)[-1])

    def grid(self, n_points: int) -> Tensor:
        if n_points not in self._grids:
            c = self.config
            self._grids[n_points] = karras_times(
                n_points, self.teacher.path, sigma_min=c.sigma_min, sigma_max=c.sigma_max, rho=c.rho
            )
        return self._grids[n_points]

    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]:
        x, cond = split_batch(batch)
        c = self.config
        self.student.train()
        n_points = ict_num_points(step, c.total_steps, c.s0, c.s1)
        loss, logs = ict_loss(
            self.student,
            x,
            times=self.grid(n_points),
            p_mean=c.p_mean,
            p_std=c.p_std,
            metric=c.metric,
            huber_c=c.huber_c,
            weighting=c.weighting,
            cond=cond,
            generator=generator,
        )
        logs["num_points"] = float(n_points)
        return self._finish(loss, logs)

    def generator(self) -> Generator:
        return DenoiserGenerator(self.sampling_denoiser(), t_start=self.t_start, stochastic=True)


def _reinitialised(model: nn.Module) -> nn.Module:
    """A fresh network of `model`'s architecture: rebuilt from its registry name and `config` when
    it is a registered network, else a copy with every submodule's `reset_parameters()` called."""
    try:
        return build_network(network_name(model), model.config)
    except (ValueError, AttributeError, TypeError):
        net = copy.deepcopy(model)
        for m in net.modules():
            if m is not net and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        return net


# ---------------------------------------------------------------------------------------------
# Segment-wise multistep consistency distillation (Heek et al. 2024; Efficient-vDiT)


def segment_cd_loss(
    student: Denoiser,
    target: Denoiser,
    teacher: Denoiser,
    x_data: Tensor,
    *,
    segments: int,
    steps_per_segment: int,
    t_max: float = 1.0,
    solver: str = "heun",
    metric: str = "l2",
    huber_c: float | None = None,
    cond=None,
    generator=None,
) -> tuple[Tensor, dict]:
    """Multistep consistency distillation over S = `segments` equal segments of [0, t_max], each
    with `steps_per_segment` teacher steps (a uniform-in-t grid of S M steps). In segment
    (s, b] the consistency function maps to the segment's lower boundary s by a DDIM jump with the
    student's prediction: F_theta(x_t, t) = alpha_s x0_theta + sigma_s eps_theta (exactly x_t at
    t = s). Loss: d(F_theta(x_{t_n+1}) / alpha_s, F_theta^-(x^_{t_n}) / alpha_s) with x^_{t_n} one
    teacher ODE step from x_{t_n+1}: measured in the VE-scaled state x_s / alpha_s, which is x0
    for the last segment, so S = 1 is plain CD on a uniform grid. x_data (B, ...)."""
    b = x_data.shape[0]
    n_steps = segments * steps_per_segment
    dt = t_max / n_steps
    # 1. a teacher step t_n -> t_{n+1} on the global grid, and its segment's lower boundary s
    n = torch.randint(0, n_steps, (b,), generator=generator, device=x_data.device)
    t_lo = n.to(torch.float64) * dt
    t_hi = (n + 1).to(torch.float64) * dt
    seg_lo = torch.div(n, steps_per_segment, rounding_mode="floor") * steps_per_segment
    s = seg_lo.to(torch.float64) * dt
    z = torch.randn(x_data.shape, generator=generator, device=x_data.device, dtype=x_data.dtype)
    a, sg = _ab(student.path, t_hi, x_data)
    x_hi = a * x_data + sg * z
    a_s, s_s = _ab(student.path, s, x_data)
    # 2. the teacher's ODE step, then the target's jump to s (the identity where t_n = s)
    with torch.no_grad():
        x_lo = teacher_ode_step(teacher, x_hi, t_hi, t_lo, cond, solver)
        x0_t, eps_t = target.x0_eps(x_lo, t_lo, cond)
        at_boundary = (n == seg_lo).reshape(-1, *([1] * (x_data.ndim - 1)))
        f_target = torch.where(at_boundary, x_lo, a_s * x0_t + s_s * eps_t) / a_s
    # 3. the student's jump to s from x_{t_n+1}
    x0, eps = student.x0_eps(x_hi, t_hi, cond)
    f = (a_s * x0 + s_s * eps) / a_s
    d = consistency_distance(f, f_target, metric, huber_c)
    loss = d.mean()
    return loss, {
        "loss": loss.detach().item(),
        "mse_target": (f.detach() - f_target).float().pow(2).mean().item(),
    }


@dataclass(frozen=True)
class SegmentCDConfig:
    """Segment-wise multistep consistency distillation (Heek et al. 2024, "Multistep Consistency
    Models"; Efficient-vDiT's stage 1, Ding et al. 2025). Toy scale: 3000 steps, batch 256."""

    segments: int = 4
    """S, segments of [0, t_max] = sampling steps (Heek et al. 2024 study 2-8 steps; 4 is in the
    middle of that range)."""
    steps_per_segment: int = 8
    """Teacher ODE steps per segment (the uniform-in-t teacher grid has S * M steps)."""
    solver: str = "heun"
    """The teacher's ODE step: "heun" or "euler" (= DDIM, Heek et al. 2024's teacher step)."""
    metric: str = "l2"
    """d: "l2" (squared L2) or "pseudo_huber"."""
    huber_c: float | None = None
    """Pseudo-Huber c; None: 0.00054 sqrt(d)."""
    target_ema: float = 0.95
    """mu, EMA decay of the target network (as CD, Song et al. 2023, Table 3)."""
    ema_decay: float | None = None
    """EMA of the student used for sampling; None samples the online student (toy runs)."""
    t_max: float | None = None
    """Top of the time axis; None: 1, or just below it for eps/score teachers."""
    lr: float = 1e-3
    """Adam learning rate (toy scale)."""
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    warmup: int = 0
    grad_clip: float | None = 1.0
    student_prediction: str | None = "auto"
    """What the student network predicts: "auto" ("v" for eps/score teachers, whose x0 is
    imprecise at high noise; else the teacher's kind), None (the teacher's) or a kind
    (`make_student`). A raw "x0" network lacks the boundary condition: avoid it."""

    def validate(self) -> None:
        for name in ("segments", "steps_per_segment"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"SegmentCDConfig.{name} must be a positive integer, got {v!r}")
        if self.solver not in SOLVERS:
            raise ValueError(
                f"SegmentCDConfig.solver: unknown {self.solver!r}; known: {list(SOLVERS)}"
            )
        if not 0.0 <= self.target_ema < 1.0:
            raise ValueError(f"SegmentCDConfig.target_ema must be in [0, 1), got {self.target_ema}")
        if self.t_max is not None and not 0.0 < self.t_max <= 1.0:
            raise ValueError(f"SegmentCDConfig.t_max must be in (0, 1], got {self.t_max}")
        _check_common("SegmentCDConfig", self)

    @classmethod
    def toy_defaults(cls, teacher=None, **overrides) -> SegmentCDConfig:
        """Toy scale (the defaults): 3000 steps, batch 256."""
        return replace(cls(), **overrides)


class SegmentCDDistiller(_ConsistencyDistiller):
    """Multistep consistency distillation: S consistency models in one network, segment k mapping
    x_t (t in its segment) to the segment's lower boundary by a DDIM jump with the student's
    prediction, trained by CD against the teacher's ODE step (`segment_cd_loss`).

    Generator: deterministic DDIM over the segment boundaries t_max (S - i) / S, one student
    evaluation per segment when nfe = S (nfe = a multiple of S also lands on the boundaries).
    nfe = 1 with S > 1 jumps from t_max straight to 0 with the top segment's x0 prediction, which
    was trained to land on that segment's boundary, not on the data: expect lower quality; train
    with segments=1 (plain CD) for a one-step generator."""

    kind = "segment_cd"

    def __init__(
        self,
        teacher: Denoiser,
        config: SegmentCDConfig | None = None,
        *,
        student_network: nn.Module | None = None,
    ):
        config = SegmentCDConfig() if config is None else config
        super().__init__(teacher, config)
        self._build(teacher, student_network, config.target_ema)
        self.t_max = default_t_max(teacher) if config.t_max is None else float(config.t_max)

    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]:
        x, cond = split_batch(batch)
        self.student.train()
        c = self.config
        loss, logs = segment_cd_loss(
            self.student,
            self.target(),
            self.teacher,
            x,
            segments=c.segments,
            steps_per_segment=c.steps_per_segment,
            t_max=self.t_max,
            solver=c.solver,
            metric=c.metric,
            huber_c=c.huber_c,
            cond=cond,
            generator=generator,
        )
        return self._finish(loss, logs)

    def boundaries(self) -> list[float]:
        """Segment boundaries from t_max down (0 excluded): the nfe = S sampling grid."""
        s = self.config.segments
        return [self.t_max * (s - i) / s for i in range(s)]

    def generator(self) -> Generator:
        return DenoiserGenerator(
            self.sampling_denoiser(), t_start=self.t_max, times=self.boundaries(), stochastic=False
        )


METHODS = {  # descriptions: onestep.core.method_registry
    "cd": (CDConfig, CDDistiller, describe("cd")),
    "ict": (ICTConfig, ICTDistiller, describe("ict")),
    "segment_cd": (SegmentCDConfig, SegmentCDDistiller, describe("segment_cd")),
}
