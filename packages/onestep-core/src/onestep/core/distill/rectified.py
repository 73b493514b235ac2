"""Rectified-flow reflow, InstaFlow and SlimFlow: straighten a flow on teacher couplings, then
distill it into a one-step student.

Time runs as everywhere in onestep: t=0 data, t=1 noise (the papers put noise at t=0).

Reflow (Liu et al. 2022, "Flow Straight and Fast", Alg. 1 and Eq. 1): draw noise z, solve the
teacher's ODE from z to x = ODE[v](z) (a deterministic *coupling*), and fit a new flow on the
interpolation between the coupled pair,
    min_v E_t || v(x_t, t) - (alpha'(t) x + sigma'(t) z) ||^2,   x_t = alpha(t) x + sigma(t) z,
which on the rectified-flow path (alpha = 1-t, sigma = t) is the straight line and the target
z - x. The reflowed flow has straighter trajectories, so one Euler step goes most of the way;
k-reflow repeats with the reflowed model as the new teacher. We regress the network's own
prediction kind (the same minimiser; for a velocity network on the rectified-flow path exactly
Eq. 1), so the method runs on any path. An eps network's one-step output divides by alpha(1)
(0.006 for DDPM), so by default (`student_prediction="auto"`) students of eps teachers on such
paths re-purpose the teacher's weights to predict v (Salimans & Ho 2022), as InstaFlow turns
Stable Diffusion's eps UNet into a velocity network.

InstaFlow (Liu et al. 2023, "InstaFlow: One Step is Enough"; distillation as in Liu et al.
2022): distill the k-rectified flow into a one-step student initialised from it by regressing
its one-step output on fresh couplings of the k-rectified flow,
    min E D( ODE[v_k](z), z - v(z, 1) ),
with D = L2 or pseudo-Huber here (the paper uses LPIPS for images). `z - v(z, 1)` is the x0
prediction at t=1, so `DenoiserGenerator(student)` with nfe=1 is the one-step generator.

SlimFlow (Zhu et al. 2024, "SlimFlow: Training Smaller One-Step Diffusion Models with Rectified
Flow"): a smaller student (half width by default) trained from scratch by
- annealing reflow (Sec. 4.1): the noise paired with each teacher sample is
  z_beta = sqrt(1 - beta^2) z + beta xi with fresh xi ~ N(0, I), and beta anneals from 1
  (independent pairs: plain flow matching onto teacher samples) to 0 (the teacher's couplings);
- flow-guided distillation (Sec. 4.2): the one-step regression above plus a 2-step "flow
  guidance" term: take the student's one-step output x_hat, step along its own straight line
  to s ~ U[0.2, 0.8] (x_s = alpha(s) x_hat + sigma(s) z), finish with the reflowed model
  (its x0 prediction at s: one Euler step on the rectified-flow path), and regress x_hat on it.

Couplings are generated once per phase (round) at its first step, stored in the Distiller and
saved with checkpoints (`extra_state`); with `store_couplings=False` only their seed and source
are saved and they are regenerated deterministically on resume (the snapshot of the model that
produced them is a checkpointed module). Conditional teachers draw the couplings' conditions
from `conds` (pass the training conditions) or, failing that, from the first batch's.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..convert import KINDS, broadcast, from_x0_eps
from ..denoiser import Denoiser
from ..losses import sample_times
from ..method_registry import describe
from ..nn import build_network, network_name
from ..sampling import resolve_solver, sample
from .base import (
    DenoiserGenerator,
    Distiller,
    Generator,
    frozen_copy,
    split_batch,
    student_from_teacher,
    validate_config,
)

__all__ = [
    "ReflowConfig",
    "InstaFlowConfig",
    "SlimFlowConfig",
    "ReflowDistiller",
    "InstaFlowDistiller",
    "SlimFlowDistiller",
    "generate_couplings",
    "reflow_loss",
    "one_step_x0_eps",
    "sample_distance",
    "flow_guidance_loss",
    "anneal_noise",
    "anneal_beta",
    "smaller_network",
    "METHODS",
]

METRICS = ("l2", "pseudo_huber")
ANNEAL_SCHEDULES = ("linear", "cosine", "exp")
DISTILL_SOURCES = ("reflow", "teacher")


# ----------------------------------------------------------------------------------------------
# Configs


@dataclass(frozen=True)
class _CouplingConfig:
    """Fields shared by every coupling-based method (how couplings are made, optimisation)."""

    num_couplings: int = 10_000
    """Number of (noise, teacher sample) pairs per round. Liu et al. 2022 and SlimFlow generate
    50k-4M pairs for images; 10k is plenty for 2-16-D toy data."""
    coupling_nfe: int = 32
    """Network evaluations per coupling ODE solve (Liu et al. 2022 use adaptive RK45; InstaFlow
    25 Euler steps)."""
    coupling_solver: str = "dpm++2m"
    """Solver for the couplings: any name `onestep.core.sampling.sample` knows ("dpm++2m",
    "euler", "heun", "rk45" with coupling_nfe ignored...). On the toy flow teacher 32-NFE
    DPM-Solver++(2M) samples are within 10% of its 50-NFE sliced W2."""
    coupling_batch: int = 4096
    """Couplings generated per solver call."""
    store_couplings: bool = True
    """Save the couplings in checkpoints; False regenerates them from `seed` on resume."""
    seed: int = 0
    """Seed of the couplings' noise (and conditions drawn from the pool)."""
    lr: float = 1e-3
    """Adam learning rate of the reflow phase(s) (Liu et al. 2022: 2e-4 for CIFAR-10 UNets;
    1e-3 suits toy MLPs)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    warmup: int = 0
    """Linear LR warm-up steps at the start of each phase (then constant)."""
    clip: float = 1.0
    """Gradient-norm clipping (0 disables)."""
    time_sampler: str = "uniform"
    """Reflow training times: "uniform" (Liu et al. 2022, t ~ U[0, 1]) or "logit_normal"."""
    t_min: float = 1e-3
    """Smallest reflow training time."""
    ema_decay: float | None = None
    """EMA of the student used by `generator()` (reset at each phase start); None: no EMA, the
    right choice for runs of a few thousand steps (the papers use 0.9999 over 100k+ steps)."""
    student_prediction: str | None = "auto"
    """What the student network predicts on the teacher's path: None keeps the teacher's kind;
    "v", "x0" or "velocity" re-purpose its weights for a target that stays well conditioned at
    t = 1 (an eps network's one-step x0 = (x_1 - sigma eps) / alpha divides by alpha(1), 0.006
    for DDPM; InstaFlow likewise retrains Stable Diffusion's eps UNet as a velocity network).
    "auto": "v" for eps/score teachers whose path has alpha(1) < 0.1, else the teacher's kind."""
    progress: bool = True
    """Progress bar while generating couplings."""

    def _validate_common(self) -> None:
        name = type(self).__name__
        ints = {
            "num_couplings": self.num_couplings,
            "coupling_batch": self.coupling_batch,
            "coupling_nfe": self.coupling_nfe,
        }
        for k, v in ints.items():
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}.{k} must be a positive integer, got {v!r}")
        try:
            resolve_solver(self.coupling_solver)
        except ValueError as e:
            raise ValueError(f"{name}.coupling_solver: {e}") from None
        if not self.lr > 0:
            raise ValueError(f"{name}.lr must be positive, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"{name}.betas must be two numbers in [0, 1), got {self.betas}")
        if self.warmup < 0 or self.clip < 0:
            raise ValueError(f"{name}.warmup and clip must be >= 0, got {self.warmup}, {self.clip}")
        if self.time_sampler not in ("uniform", "logit_normal"):
            raise ValueError(
                f"{name}.time_sampler must be 'uniform' or 'logit_normal', got "
                f"{self.time_sampler!r}"
            )
        if not 0.0 <= self.t_min < 1.0:
            raise ValueError(f"{name}.t_min must be in [0, 1), got {self.t_min}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"{name}.ema_decay must be in [0, 1) or None, got {self.ema_decay}")
        if self.student_prediction not in (None, "auto", *KINDS):
            raise ValueError(
                f"{name}.student_prediction must be None, 'auto' or one of {KINDS}, got "
                f"{self.student_prediction!r}"
            )


def _check_steps(config, **steps) -> None:
    for k, v in steps.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{type(config).__name__}.{k} must be a positive integer, got {v!r}")


def _check_metric(config, field: str) -> None:
    v = getattr(config, field)
    if v not in METRICS:
        raise ValueError(f"{type(config).__name__}.{field} must be one of {METRICS}, got {v!r}")


@dataclass(frozen=True)
class ReflowConfig(_CouplingConfig):
    """k-rectified flow (Liu et al. 2022, Alg. 1). Toy scale (2-16-D, MLP teacher): the defaults,
    about 2000 steps per round at batch 256 (`toy_defaults()`)."""

    rounds: int = 1
    """Reflow rounds k: 1 gives the 2-rectified flow; each further round regenerates couplings
    with the previous round's model (Liu et al. 2022, Alg. 1)."""
    reflow_steps: int = 2000
    """Training steps per round (Liu et al. 2022 train 300k+ steps per round on images)."""

    def validate(self) -> None:
        self._validate_common()
        _check_steps(self, rounds=self.rounds, reflow_steps=self.reflow_steps)

    @classmethod
    def toy_defaults(cls, teacher=None, **overrides) -> ReflowConfig:
        """Settings for 2-16-D toy data and an MLP teacher: train 2000 steps (Trainer steps =
        rounds * reflow_steps) at batch 256."""
        return replace(cls(), **overrides)


@dataclass(frozen=True)
class InstaFlowConfig(ReflowConfig):
    """Reflow then one-step distillation (InstaFlow, Liu et al. 2023). Trainer steps =
    rounds * reflow_steps + distill_steps (3000 at the toy defaults, batch 256)."""

    distill_steps: int = 1000
    """One-step distillation steps after the reflow rounds (InstaFlow: distillation from
    2-RF runs about as long as the reflow)."""
    distill_lr: float = 1e-3
    """Adam learning rate of the distillation phase."""
    distill_loss: str = "l2"
    """Distance D: "l2" (squared error) or "pseudo_huber" (Song & Dhariwal 2023, c = 0.00054
    sqrt(dim)); InstaFlow uses LPIPS on images."""
    distill_source: str = "reflow"
    """Couplings to distill on: "reflow" (fresh couplings of the k-rectified flow, as in Liu et
    al. 2022 and InstaFlow) or "teacher" (the original teacher's couplings, reused)."""

    def validate(self) -> None:
        super().validate()
        _check_steps(self, distill_steps=self.distill_steps)
        if not self.distill_lr > 0:
            raise ValueError(f"InstaFlowConfig.distill_lr must be positive, got {self.distill_lr}")
        _check_metric(self, "distill_loss")
        if self.distill_source not in DISTILL_SOURCES:
            raise ValueError(
                f"InstaFlowConfig.distill_source must be one of {DISTILL_SOURCES}, "
                f"got {self.distill_source!r}"
            )

    @classmethod
    def toy_defaults(cls, teacher=None, **overrides) -> InstaFlowConfig:
        """2000 reflow + 1000 distillation steps at batch 256."""
        return replace(cls(), **overrides)


@dataclass(frozen=True)
class SlimFlowConfig(_CouplingConfig):
    """SlimFlow (Zhu et al. 2024): annealing reflow into a smaller student, then flow-guided
    distillation. Trainer steps = reflow_steps + distill_steps (3000 at the toy defaults, batch
    256)."""

    width_factor: float = 0.5
    """Width of the default student relative to the teacher's network (MLP hidden, UNet base,
    DiT hidden); ignored when `student_network` is passed. SlimFlow's CIFAR-10 students have
    about 1/4 to 1/2 of the teacher's parameters."""
    reflow_steps: int = 2000
    """Annealing-reflow steps (the small student starts from scratch, so it needs longer than
    a teacher-initialised reflow)."""
    anneal_fraction: float = 0.5
    """Fraction of reflow_steps over which beta goes from 1 to 0 (the official CIFAR-10 run
    anneals over 300k iterations of its reflow training)."""
    anneal_schedule: str = "linear"
    """beta(s): "linear" 1 - s/S (the official default), "cosine" (1 + cos(pi s/S)) / 2, or
    "exp" exp(-s/S)."""
    distill_steps: int = 1000
    """Flow-guided distillation steps."""
    distill_lr: float = 1e-3
    """Adam learning rate of the distillation phase."""
    distill_loss: str = "l2"
    """Distance D of both distillation terms: "l2" or "pseudo_huber" (SlimFlow uses LPIPS on
    images)."""
    distill_source: str = "teacher"
    """Couplings to distill on: "teacher" (the teacher's couplings used for the reflow, as in
    the official code) or "reflow" (fresh couplings of the small reflowed model)."""
    guidance_weight: float = 1.0
    """Weight of the 2-step flow-guidance term (Sec. 4.2: the two terms are summed)."""
    guidance_t_range: tuple[float, float] = (0.2, 0.8)
    """Range of the intermediate time s of the 2-step guidance (Sec. 4.2: U[0.2, 0.8])."""

    def validate(self) -> None:
        self._validate_common()
        _check_steps(self, reflow_steps=self.reflow_steps, distill_steps=self.distill_steps)
        if not 0.0 < self.width_factor <= 1.0:
            raise ValueError(
                f"SlimFlowConfig.width_factor must be in (0, 1], got {self.width_factor}"
            )
        if not 0.0 <= self.anneal_fraction <= 1.0:
            raise ValueError(
                f"SlimFlowConfig.anneal_fraction must be in [0, 1], got {self.anneal_fraction}"
            )
        if self.anneal_schedule not in ANNEAL_SCHEDULES:
            raise ValueError(
                f"SlimFlowConfig.anneal_schedule must be one of {ANNEAL_SCHEDULES}, "
                f"got {self.anneal_schedule!r}"
            )
        if not self.distill_lr > 0:
            raise ValueError(f"SlimFlowConfig.distill_lr must be positive, got {self.distill_lr}")
        _check_metric(self, "distill_loss")
        if self.distill_source not in DISTILL_SOURCES:
            raise ValueError(
                f"SlimFlowConfig.distill_source must be one of {DISTILL_SOURCES}, "
                f"got {self.distill_source!r}"
            )
        if self.guidance_weight < 0:
            raise ValueError(
                f"SlimFlowConfig.guidance_weight must be >= 0, got {self.guidance_weight}"
            )
        lo, hi = self.guidance_t_range
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(
                f"SlimFlowConfig.guidance_t_range must satisfy 0 < lo <= hi < 1, "
                f"got {self.guidance_t_range}"
            )

    @classmethod
    def toy_defaults(cls, teacher=None, **overrides) -> SlimFlowConfig:
        """2000 annealing-reflow + 1000 distillation steps at batch 256."""
        return replace(cls(), **overrides)


# ----------------------------------------------------------------------------------------------
# Loss functions and helpers


def _derive_seed(*ints: int) -> int:
    return int(np.random.SeedSequence([int(i) for i in ints]).generate_state(1, np.uint64)[0]) >> 1


@torch.no_grad()
def generate_couplings(
    denoiser: Denoiser,
    n: int,
    shape: tuple[int, ...],
    *,
    nfe: int,
    solver: str = "dpm++2m",
    batch: int = 4096,
    seed: int = 0,
    device=None,
    dtype=torch.float32,
    cond_pool=None,
    progress: bool = True,
    desc: str = "couplings",
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(noise, x, cond): n unit-normal noises of `shape` (one sample's shape) and the teacher ODE's
    samples x = ODE[denoiser](noise) with `nfe` evaluations each (Liu et al. 2022, Alg. 1).

    Deterministic in `seed` (noise drawn on the CPU). `cond_pool` (N, ...): conditions drawn
    uniformly for each coupling."""
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((n, *shape), generator=g, dtype=torch.float32).to(
        device=device, dtype=dtype
    )
    cond = None
    if cond_pool is not None:
        if isinstance(cond_pool, dict):
            raise ValueError("dict conditions are not supported for couplings; pass a tensor")
        idx = torch.randint(cond_pool.shape[0], (n,), generator=g)
        cond = cond_pool[idx.to(cond_pool.device)].to(device)
    opts = {"nfe": None} if resolve_solver(solver) == "rk45" else {"nfe": nfe}
    out = []
    for i in tqdm(range(0, n, batch), desc=desc, disable=not progress, leave=False):
        c = None if cond is None else cond[i : i + batch]
        out.append(sample(denoiser, noise[i : i + batch], solver=solver, cond=c, **opts))
    return noise, torch.cat(out), cond


def reflow_loss(
    den: Denoiser,
    noise: Tensor,
    x: Tensor,
    *,
    cond=None,
    generator=None,
    time_sampler: str = "uniform",
    t_min: float = 1e-3,
) -> tuple[Tensor, dict]:
    """Flow matching on coupled pairs (Liu et al. 2022, Eq. 1): x_t = alpha x + sigma noise with
    t ~ `time_sampler`, regressed in the network's own prediction kind (velocity: the target
    alpha' x + sigma' noise, = noise - x on the rectified-flow path)."""
    t = sample_times(den, x, generator, t_min, time_sampler)
    c = den.path.coefficients(t)
    x_t = broadcast(c.alpha, x) * x + broadcast(c.sigma, x) * noise
    target = from_x0_eps(den.prediction, x, noise, x_t, t, den.path)
    err = (den(x_t, t, cond) - target).float().pow(2).flatten(1).mean(1)
    loss = err.mean()
    return loss, {"reflow_loss": loss.detach().item()}


def one_step_x0_eps(den: Denoiser, noise: Tensor, cond=None) -> tuple[Tensor, Tensor]:
    """The one-step output (x0 prediction at t=1 from x_1 = sigma(1) noise) and its eps; on the
    rectified-flow path x0 = noise - v(noise, 1), one Euler step."""
    x1 = noise * den.path.sigma(1.0).item()
    return den.x0_eps(x1, 1.0, cond)


def sample_distance(a: Tensor, b: Tensor, metric: str = "l2") -> Tensor:
    """Per-sample distance (B,): "l2" mean squared error, or "pseudo_huber"
    sqrt(||a-b||^2 + c^2) - c with c = 0.00054 sqrt(dim) (Song & Dhariwal 2023, iCT)."""
    d = (a - b).float().flatten(1)
    if metric == "l2":
        return d.pow(2).mean(1)
    if metric == "pseudo_huber":
        c = 0.00054 * math.sqrt(d.shape[1])
        return torch.sqrt(d.pow(2).sum(1) + c * c) - c
    raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")


def flow_guidance_loss(
    x_hat: Tensor,
    eps_hat: Tensor,
    guide: Denoiser,
    *,
    cond=None,
    generator=None,
    t_range: tuple[float, float] = (0.2, 0.8),
    metric: str = "l2",
) -> tuple[Tensor, dict]:
    """SlimFlow's 2-step flow guidance (Zhu et al. 2024, Sec. 4.2): from the student's one-step
    output x_hat (with its eps), go to s ~ U[t_range] along the student's own path,
    x_s = alpha(s) sg(x_hat) + sigma(s) sg(eps_hat), finish with the reflowed `guide` (its x0
    prediction at s) and regress x_hat on that 2-step result."""
    lo, hi = t_range
    s = lo + (hi - lo) * torch.rand(
        x_hat.shape[0], generator=generator, device=x_hat.device, dtype=torch.float64
    )
    c = guide.path.coefficients(s)
    with torch.no_grad():
        x_s = (
            broadcast(c.alpha, x_hat) * x_hat.detach()
            + broadcast(c.sigma, x_hat) * eps_hat.detach()
        )
        target = guide.x0(x_s, s, cond)
    loss = sample_distance(x_hat, target, metric).mean()
    return loss, {"guidance_loss": loss.detach().item()}


def anneal_beta(step: int, steps: int, schedule: str = "linear") -> float:
    """SlimFlow's annealing weight beta at `step` of `steps` (1 -> 0)."""
    if steps <= 0:
        return 0.0
    u = min(1.0, step / steps)
    if schedule == "linear":
        return 1.0 - u
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * u))
    if schedule == "exp":
        return math.exp(-step / steps)
    raise ValueError(f"unknown anneal schedule {schedule!r}; use one of {ANNEAL_SCHEDULES}")


def anneal_noise(noise: Tensor, beta: float, generator=None) -> Tensor:
    """Annealing reflow's noise (Zhu et al. 2024, Sec. 4.1): sqrt(1 - beta^2) noise + beta xi,
    still N(0, I), independent of the coupled sample at beta = 1."""
    if beta <= 0.0:
        return noise
    xi = torch.randn(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype)
    return math.sqrt(max(0.0, 1.0 - beta * beta)) * noise + beta * xi


def smaller_network(net: nn.Module, factor: float = 0.5) -> nn.Module:
    """A freshly initialised network like `net` (a registered onestep.core.nn network) with its
    width scaled by `factor`: MLP `hidden`, UNet `base`, DiT `hidden` (kept a multiple of
    `heads`), EDMPrecond's inner network."""
    name = network_name(net)
    return build_network(name, _scaled_config(name, net.config, factor))


def _scaled_config(name: str, config: dict, factor: float) -> dict:
    config = dict(config)
    if name == "edm_precond":
        inner = config["net"]
        config["net"] = {
            "name": inner["name"],
            "config": _scaled_config(inner["name"], inner["config"], factor),
        }
    elif name == "mlp":
        config["hidden"] = max(8, round(config["hidden"] * factor))
    elif name == "unet":
        config["base"] = max(4, round(config["base"] * factor))
    elif name == "dit":
        heads = config["heads"]
        config["hidden"] = max(heads, round(config["hidden"] * factor / heads) * heads)
    else:
        raise ValueError(f"no rule to shrink a {name!r} network; pass student_network")
    return config


def _student(teacher: Denoiser, network, config) -> Denoiser:
    student = student_from_teacher(teacher, network)
    kind = config.student_prediction
    if kind == "auto":
        ill = teacher.prediction in ("eps", "score") and teacher.path.alpha(1.0).item() < 0.1
        kind = "v" if ill else None
    if kind is not None:
        student.prediction = kind
    return student


def _denoiser_like(net: nn.Module, ref: Denoiser) -> Denoiser:
    return Denoiser(
        net, ref.path, prediction=ref.prediction, time_input=ref.time_input, null_cond=ref.null_cond
    )


# ----------------------------------------------------------------------------------------------
# The phased distiller behind the three methods


@dataclass(frozen=True)
class _Phase:
    kind: str  # "reflow" or "distill"
    steps: int
    optimizer: str
    source: str  # couplings from the "teacher" or from the "snapshot" of the student
    snapshot: bool  # copy the student into the snapshot module at the phase start


class _CouplingDistiller(Distiller):
    """Runs phases one after another (steps past the last phase continue it). At each phase's
    first step it may snapshot the student (the next coupling source / guide) and generates the
    phase's couplings, unless the current ones come from the same source."""

    def __init__(
        self, teacher: Denoiser, config, student: Denoiser, phases: list[_Phase], *, conds=None
    ):
        super().__init__(teacher, config)
        self.student = student
        self.add_module("student", student.model)
        self.phases = phases
        self.conds = conds
        self.snapshot: Denoiser | None = None
        if any(p.snapshot for p in phases):
            self.snapshot = _denoiser_like(
                self.add_module("snapshot", frozen_copy(student.model)), student
            )
        lrs = {"reflow": config.lr, "distill": getattr(config, "distill_lr", config.lr)}
        for p in phases:
            self.add_optimizer(
                p.optimizer,
                student.model.parameters(),
                lr=lrs[p.kind],
                betas=tuple(config.betas),
                warmup=config.warmup,
            )
        self.ema = None
        if config.ema_decay is not None:
            self.ema = self.add_ema("student", student.model, config.ema_decay)
        self._ends = np.cumsum([p.steps for p in phases]).tolist()
        self._started = -1  # the phase whose start actions ran
        self._key = ""  # where the current couplings come from
        self._couplings: tuple[Tensor, Tensor, Tensor | None] | None = None

    # -- phases and couplings ---------------------------------------------------------------
    def locate(self, step: int) -> tuple[int, int]:
        """(phase index, step within the phase) of global step `step`."""
        start = 0
        for i, end in enumerate(self._ends):
            if step < end or i == len(self._ends) - 1:
                return i, step - start
            start = end
        raise AssertionError

    def _coupling_key(self, i: int) -> str:
        return "teacher" if self.phases[i].source == "teacher" else f"snapshot@{i}"

    def _begin_phase(self, i: int, x: Tensor, cond) -> None:
        phase = self.phases[i]
        if self._started != i:
            if phase.snapshot:
                self.snapshot.model.load_state_dict(self.student.model.state_dict())
            if self.ema is not None and i > 0:
                self.ema.module.load_state_dict(self.student.model.state_dict())
            self._started = i
        key = self._coupling_key(i)
        if self._couplings is None or self._key != key:
            self._couplings = self._generate(key, i, x, cond)
            self._key = key

    def _generate(self, key: str, i: int, x: Tensor, cond):
        c = self.config
        source = self.teacher if key == "teacher" else self.snapshot
        pool = self.conds if self.conds is not None else cond
        seed = _derive_seed(c.seed, 0 if key == "teacher" else i + 1)
        return generate_couplings(
            source,
            c.num_couplings,
            tuple(x.shape[1:]),
            nfe=c.coupling_nfe,
            solver=c.coupling_solver,
            batch=c.coupling_batch,
            seed=seed,
            device=x.device,
            dtype=x.dtype,
            cond_pool=pool,
            progress=c.progress,
            desc=f"{self.kind} couplings ({key})",
        )

    def _draw(self, n: int, generator) -> tuple[Tensor, Tensor, Tensor | None]:
        noise, x, cond = self._couplings
        idx = torch.randint(noise.shape[0], (n,), generator=generator, device=generator.device)
        idx = idx.to(noise.device)
        return noise[idx], x[idx], None if cond is None else cond[idx]

    # -- train.Task ----------------------------------------------------------------------------
    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]:
        x, cond = split_batch(batch)
        i, local = self.locate(step)
        self._begin_phase(i, x, cond)
        noise, x_pair, c = self._draw(x.shape[0], generator)
        self.student.train()
        logs = self._train(self.phases[i], noise, x_pair, c, local, generator)
        if self.ema is not None:
            self.ema.update(self.student.model)
        logs["phase"] = float(i)
        return logs

    @abstractmethod
    def _train(self, phase: _Phase, noise, x, cond, local: int, generator) -> dict[str, float]:
        """One update of `phase` at its local step; the subclass's loss."""

    def extra_state(self) -> dict:
        state = {"started": self._started, "key": self._key}
        if self.config.store_couplings and self._couplings is not None:
            noise, x, cond = self._couplings
            state["noise"], state["x"] = noise.cpu(), x.cpu()
            if cond is not None:
                state["cond"] = cond.cpu()
        return state

    def load_extra_state(self, state: dict) -> None:
        self._started = int(state.get("started", -1))
        self._key = str(state.get("key", ""))
        self._couplings = None
        if "noise" in state:
            device = next(self.student.model.parameters()).device
            cond = state.get("cond")
            self._couplings = (
                state["noise"].to(device),
                state["x"].to(device),
                None if cond is None else cond.to(device),
            )

    def couplings(self) -> tuple[Tensor, Tensor, Tensor | None] | None:
        """The current (noise, x, cond) couplings, or None before the first step."""
        return self._couplings

    def generator(self) -> Generator:
        net = self.ema.module if self.ema is not None else self.student.model
        return DenoiserGenerator(_denoiser_like(net, self.student), stochastic=False)

    # -- shared phase updates ----------------------------------------------------------------
    def _reflow_update(self, phase: _Phase, noise, x, cond, generator) -> dict[str, float]:
        c = self.config
        loss, logs = reflow_loss(
            self.student,
            noise,
            x,
            cond=cond,
            generator=generator,
            time_sampler=c.time_sampler,
            t_min=c.t_min,
        )
        logs["grad_norm"] = self.update(phase.optimizer, loss, clip=c.clip or None)
        logs["loss"] = logs["reflow_loss"]
        return logs


class ReflowDistiller(_CouplingDistiller):
    """k-rectified flow (Liu et al. 2022, Alg. 1): `rounds` reflows of a student initialised
    from the teacher, each on couplings of the previous model; sampled with `nfe` Euler steps
    (one by default)."""

    kind = "reflow"

    def __init__(
        self,
        teacher: Denoiser,
        config: ReflowConfig | None = None,
        *,
        student_network: nn.Module | None = None,
        conds=None,
    ):
        config = ReflowConfig() if config is None else config
        validate_config(config)
        student = _student(teacher, student_network, config)
        super().__init__(teacher, config, student, self._plan(config), conds=conds)

    @staticmethod
    def _plan(config) -> list[_Phase]:
        return [
            _Phase(
                "reflow",
                config.reflow_steps,
                f"reflow{k}",
                "teacher" if k == 0 else "snapshot",
                k > 0,
            )
            for k in range(config.rounds)
        ]

    def _train(self, phase, noise, x, cond, local, generator):
        return self._reflow_update(phase, noise, x, cond, generator)


class InstaFlowDistiller(ReflowDistiller):
    """Reflow, then one-step distillation of the k-rectified flow (InstaFlow, Liu et al. 2023)."""

    kind = "instaflow"

    def __init__(
        self,
        teacher: Denoiser,
        config: InstaFlowConfig | None = None,
        *,
        student_network: nn.Module | None = None,
        conds=None,
    ):
        config = InstaFlowConfig() if config is None else config
        if not isinstance(config, InstaFlowConfig):
            raise ValueError(
                f"InstaFlowDistiller needs an InstaFlowConfig, got {type(config).__name__}"
            )
        super().__init__(teacher, config, student_network=student_network, conds=conds)

    @staticmethod
    def _plan(config) -> list[_Phase]:
        phases = ReflowDistiller._plan(config)
        fresh = config.distill_source == "reflow"
        phases.append(
            _Phase(
                "distill",
                config.distill_steps,
                "distill",
                "snapshot" if fresh else "teacher",
                fresh,
            )
        )
        return phases

    def _train(self, phase, noise, x, cond, local, generator):
        if phase.kind == "reflow":
            return self._reflow_update(phase, noise, x, cond, generator)
        x_hat, _ = one_step_x0_eps(self.student, noise, cond)
        loss = sample_distance(x_hat, x, self.config.distill_loss).mean()
        grad_norm = self.update(phase.optimizer, loss, clip=self.config.clip or None)
        return {
            "loss": loss.detach().item(),
            "distill_loss": loss.detach().item(),
            "grad_norm": grad_norm,
        }


class SlimFlowDistiller(_CouplingDistiller):
    """SlimFlow (Zhu et al. 2024): annealing reflow of a smaller student trained from scratch on
    the teacher's couplings (Sec. 4.1), then flow-guided distillation (Sec. 4.2) with the
    reflowed small model as the 2-step guide."""

    kind = "slimflow"

    def __init__(
        self,
        teacher: Denoiser,
        config: SlimFlowConfig | None = None,
        *,
        student_network: nn.Module | None = None,
        conds=None,
    ):
        config = SlimFlowConfig() if config is None else config
        validate_config(config)
        if student_network is None:
            student_network = smaller_network(teacher.model, config.width_factor)
        student = _student(teacher, student_network, config)
        fresh = config.distill_source == "reflow"
        phases = [
            _Phase("reflow", config.reflow_steps, "reflow", "teacher", False),
            # the guide is the reflowed student: always snapshot it at the distill start
            _Phase(
                "distill", config.distill_steps, "distill", "snapshot" if fresh else "teacher", True
            ),
        ]
        super().__init__(teacher, config, student, phases, conds=conds)

    def _train(self, phase, noise, x, cond, local, generator):
        c = self.config
        if phase.kind == "reflow":
            beta = anneal_beta(local, round(c.anneal_fraction * c.reflow_steps), c.anneal_schedule)
            logs = self._reflow_update(
                phase, anneal_noise(noise, beta, generator), x, cond, generator
            )
            logs["beta"] = beta
            return logs
        x_hat, eps_hat = one_step_x0_eps(self.student, noise, cond)
        distill = sample_distance(x_hat, x, c.distill_loss).mean()
        loss = distill
        logs = {"distill_loss": distill.detach().item()}
        if c.guidance_weight > 0:
            guide, glogs = flow_guidance_loss(
                x_hat,
                eps_hat,
                self.snapshot,
                cond=cond,
                generator=generator,
                t_range=c.guidance_t_range,
                metric=c.distill_loss,
            )
            loss = loss + c.guidance_weight * guide
            logs.update(glogs)
        logs["grad_norm"] = self.update(phase.optimizer, loss, clip=c.clip or None)
        logs["loss"] = loss.detach().item()
        return logs


METHODS = {  # descriptions: onestep.core.method_registry
    "reflow": (ReflowConfig, ReflowDistiller, describe("reflow")),
    "instaflow": (InstaFlowConfig, InstaFlowDistiller, describe("instaflow")),
    "slimflow": (SlimFlowConfig, SlimFlowDistiller, describe("slimflow")),
}
