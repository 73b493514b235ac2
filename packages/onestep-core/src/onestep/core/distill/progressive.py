"""Progressive distillation (Salimans & Ho 2022, Algorithm 2) on any path.

A student takes one DDIM step where its teacher takes two; once it has learned to, it becomes the
teacher of the next round and the step count halves again (e.g. 32 -> 16 -> 8 -> 4 -> 2 -> 1).
Every step is written with (x0, eps) and alpha, sigma, so the same code runs on rectified flow,
VP (continuous or discrete DDPM) and EDM paths, whatever the teacher predicts.

With the student's grid t_i = t_max i / N (N student steps, t=0 data, t=1 noise), for a random
i in 1..N and t = t_i, t' = t - t_max/(2N), t'' = t - t_max/N (Alg. 2):

    z_t   = alpha_t x + sigma_t eps
    z_t'  = alpha_t' x0_T(z_t, t)   + sigma_t' eps_T(z_t, t)          two teacher DDIM steps
    z_t'' = alpha_t'' x0_T(z_t', t') + sigma_t'' eps_T(z_t', t')
    x~    = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)
    L     = w(lambda_t) || x0_student(z_t, t) - x~ ||^2,   w = max(SNR, 1) ("truncated SNR")

x~ is the x0 with which one DDIM step from z_t lands exactly on z_t'' (Alg. 2, the "teacher
x~ target"; `ddim_target_x0`). The weighting is the paper's truncated SNR (Sec. 4: max of the x and
eps losses = max(SNR, 1) ||x - x_hat||^2), or its "SNR+1" (the v loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from ..convert import KINDS, as_batch_time, broadcast
from ..denoiser import Denoiser
from ..method_registry import describe
from ..paths import Path
from ..schedules import clip_t_max
from .base import (
    DenoiserGenerator,
    Distiller,
    Generator,
    frozen_copy,
    split_batch,
    student_from_teacher,
)

__all__ = [
    "ProgressiveConfig",
    "ProgressiveDistiller",
    "progressive_loss",
    "ddim_step",
    "ddim_target_x0",
    "default_t_max",
    "make_student",
    "check_student_prediction",
    "METHODS",
]

WEIGHTINGS = ("truncated_snr", "snr_plus_one", "none")


def _ab(path: Path, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """alpha(t), sigma(t) for per-sample times t (B,), shaped to broadcast over x (B, ...)."""
    c = path.coefficients(t)
    return broadcast(c.alpha, x), broadcast(c.sigma, x)


def make_student(
    teacher: Denoiser, network: nn.Module | None = None, prediction: str | None = "auto"
) -> Denoiser:
    """A trainable student on the teacher's path (`student_from_teacher`), predicting `prediction`:
    None, the teacher's kind; "auto", "v" for eps and score teachers and the teacher's kind
    otherwise. An eps network's x0 = (x - sigma eps) / alpha cannot be precise where alpha ~ 0,
    so one-step students of eps teachers need another parameterization (Salimans & Ho 2022,
    Sec. 4). With a kind other than the teacher's, the network (a copy of the teacher's by default)
    keeps its features but has to re-learn what its output means."""
    if prediction == "auto":
        prediction = "v" if teacher.prediction in ("eps", "score") else None
    student = student_from_teacher(teacher, network)
    if prediction is None or prediction == teacher.prediction:
        return student
    return Denoiser(
        student.model,
        teacher.path,
        prediction=prediction,
        time_input=teacher.time_input,
        null_cond=teacher.null_cond,
    )


def check_student_prediction(name: str, prediction: str | None) -> None:
    if prediction is not None and prediction != "auto" and prediction not in KINDS:
        raise ValueError(
            f"{name}.student_prediction: unknown {prediction!r}; known: 'auto', "
            f"{list(KINDS)} or None (the teacher's)"
        )


def default_t_max(denoiser: Denoiser) -> float:
    """The first sampling time: t = 1, or just below it (sigma/alpha = 1e3) where alpha(1) = 0 and
    the network predicts eps or score, whose x0 is undefined at pure noise."""
    if denoiser.prediction in ("eps", "score"):
        return clip_t_max(denoiser.path, 1.0)
    return 1.0


def ddim_step(den: Denoiser, x: Tensor, t, t_next, cond=None) -> Tensor:
    """One deterministic DDIM step (Song et al. 2021, Eq. 12, eta = 0) from t to t_next (scalars or
    per-sample (B,)): x_next = alpha_next x0 + sigma_next eps with (x0, eps) = den(x, t)."""
    t, t_next = as_batch_time(t, x), as_batch_time(t_next, x)
    x0, eps = den.x0_eps(x, t, cond)
    a, s = _ab(den.path, t_next, x)
    return a * x0 + s * eps


def ddim_target_x0(path: Path, x_t: Tensor, t, x_s: Tensor, s) -> Tensor:
    """The x0 with which one DDIM step from (x_t, t) lands exactly on x_s at time s < t
    (Salimans & Ho 2022, Alg. 2's x~ target, written with any alpha, sigma):
    x~ = (x_s - (sigma_s / sigma_t) x_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)."""
    t, s = as_batch_time(t, x_t), as_batch_time(s, x_t)
    a_t, s_t = _ab(path, t, x_t)
    a_s, s_s = _ab(path, s, x_t)
    ratio = s_s / s_t
    return (x_s - ratio * x_t) / (a_s - ratio * a_t)


def _weight(path: Path, t: Tensor, weighting: str) -> Tensor:
    if weighting == "none":
        return torch.ones_like(t)
    snr = torch.exp(path.log_snr(t))  # float64, 0 where alpha = 0
    if weighting == "truncated_snr":
        return torch.clamp(snr, min=1.0)
    if weighting == "snr_plus_one":
        return snr + 1.0
    raise ValueError(f"unknown weighting {weighting!r}; known: {list(WEIGHTINGS)}")


def progressive_loss(
    student: Denoiser,
    teacher: Denoiser,
    x_data: Tensor,
    *,
    steps: int,
    t_max: float = 1.0,
    cond=None,
    weighting: str = "truncated_snr",
    generator=None,
) -> tuple[Tensor, dict]:
    """Salimans & Ho 2022, Alg. 2: the student's `steps`-step DDIM sampler matches the teacher's
    2 * `steps`-step one, one student step per two teacher steps. x_data (B, ...)."""
    n = x_data.shape[0]
    dt = t_max / steps
    # 1. t = i / N on the student's grid, i ~ U{1..N}; the teacher's two half steps
    i = torch.randint(1, steps + 1, (n,), generator=generator, device=x_data.device)
    t = i.to(torch.float64) * dt
    t_mid, t_next = t - 0.5 * dt, (t - dt).clamp_min(0.0)
    noise = torch.randn(x_data.shape, generator=generator, device=x_data.device, dtype=x_data.dtype)
    a, s = _ab(student.path, t, x_data)
    z_t = a * x_data + s * noise
    # 2. two DDIM steps of the teacher, then the x~ that one DDIM step must use to land there
    with torch.no_grad():
        z_mid = ddim_step(teacher, z_t, t, t_mid, cond)
        z_next = ddim_step(teacher, z_mid, t_mid, t_next, cond)
        target = ddim_target_x0(student.path, z_t, t, z_next, t_next)
    # 3. weighted x0 regression (truncated-SNR weighting, Sec. 4)
    err = (student.x0(z_t, t, cond) - target).float().pow(2).flatten(1).mean(1)
    w = _weight(student.path, t, weighting).to(err)
    loss = (w * err).mean()
    return loss, {"loss": loss.detach().item(), "mse_x0": err.mean().detach().item()}


@dataclass(frozen=True)
class ProgressiveConfig:
    """Progressive distillation (Salimans & Ho 2022). The defaults suit 2-D to 16-D toy data with an
    MLP teacher: 5 rounds 32 -> 1 of `steps_per_round` = 600 steps each, so train for
    `total_steps` = 3000 steps (batch 256). The paper's values are noted per field."""

    start_steps: int = 32
    """DDIM steps of the first teacher (a power of two times `final_steps`). The paper starts from
    samplers with up to 8192 steps (abstract, Sec. 5); a small MLP teacher is converged at 32."""
    final_steps: int = 1
    """Student steps after the last round (the paper distils down to 1, 2, 4 or 8)."""
    steps_per_round: int = 600
    """Optimizer steps per halving. The paper trains each round to convergence (tens of thousands
    of updates on images); 600 suffice on toy data."""
    weighting: str = "truncated_snr"
    """"truncated_snr" (max(SNR, 1), Sec. 4, the paper's choice for distillation), "snr_plus_one"
    (the v loss) or "none"."""
    lr: float = 1e-3
    """Adam learning rate at the start of each round (the paper uses 1e-4 to 5e-4 on images;
    1e-3 for toy MLPs)."""
    lr_decay: bool = True
    """Anneal the learning rate linearly to 0 within each round (as the paper does)."""
    reset_optimizer: bool = True
    """Clear Adam's moments when a round starts (its student starts from a new teacher)."""
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    """Gradient-norm clip (None: off)."""
    t_max: float | None = None
    """First time of the grid; None: 1, or just below it for eps/score teachers whose x0 is
    undefined at pure noise (`default_t_max`). The paper's grid ends where SNR = 0 (alpha = 0)."""
    student_prediction: str | None = "auto"
    """What the student network predicts: "auto" ("v" for eps/score teachers, else the teacher's
    kind), None (the teacher's) or a kind. The paper distils into x, v or (x, eps) students, as
    eps cannot take one step (Sec. 4); see `make_student`."""

    @property
    def rounds(self) -> int:
        return int(round(math.log2(self.start_steps // self.final_steps)))

    @property
    def total_steps(self) -> int:
        """Optimizer steps for all rounds: the Trainer's `steps` to use."""
        return self.rounds * self.steps_per_round

    def round_steps(self, k: int) -> int:
        """Student steps in round k (0-based): start_steps / 2^(k+1)."""
        return self.start_steps >> (k + 1)

    def validate(self) -> None:
        for name in ("start_steps", "final_steps", "steps_per_round"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"ProgressiveConfig.{name} must be a positive integer, got {v!r}")
        ratio = self.start_steps // self.final_steps
        if self.start_steps % self.final_steps or ratio < 2 or ratio & (ratio - 1):
            raise ValueError(
                f"ProgressiveConfig: start_steps ({self.start_steps}) must be "
                f"final_steps ({self.final_steps}) times a power of two >= 2"
            )
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"ProgressiveConfig.weighting: unknown {self.weighting!r}; known: "
                f"{list(WEIGHTINGS)}"
            )
        if not self.lr > 0:
            raise ValueError(f"ProgressiveConfig.lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(
                f"ProgressiveConfig.weight_decay must be >= 0, got {self.weight_decay}"
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(
                f"ProgressiveConfig.grad_clip must be positive or None, got {self.grad_clip}"
            )
        if self.t_max is not None and not 0.0 < self.t_max <= 1.0:
            raise ValueError(f"ProgressiveConfig.t_max must be in (0, 1], got {self.t_max}")
        check_student_prediction("ProgressiveConfig", self.student_prediction)

    @classmethod
    def toy_defaults(cls, teacher=None, **overrides) -> ProgressiveConfig:
        """The toy-scale settings (the defaults): train for `total_steps` (3000), batch 256."""
        return replace(cls(), **overrides)


class _RoundLinear:
    """LR multiplier: linear from 1 to 0 within each round of `length` steps (1 when not decaying).
    An object (not a closure) so LambdaLR's state_dict records it."""

    def __init__(self, length: int, decay: bool):
        self.length, self.decay = length, decay

    def __call__(self, step: int) -> float:
        if not self.decay:
            return 1.0
        return max(0.0, 1.0 - (step % self.length) / self.length)


class ProgressiveDistiller(Distiller):
    """Salimans & Ho 2022, Alg. 2. Round k (k = step // steps_per_round) trains the student for
    start_steps / 2^(k+1) DDIM steps against the round's teacher (the original teacher in round
    0, then a frozen copy of the student at the end of the previous round, kept as module
    "round_teacher" so that a resumed run continues the same round). Steps past the last round
    keep training the last round (at the end of its LR schedule)."""

    kind = "progressive"

    def __init__(
        self,
        teacher: Denoiser,
        config: ProgressiveConfig | None = None,
        *,
        student_network: nn.Module | None = None,
    ):
        config = ProgressiveConfig() if config is None else config
        super().__init__(teacher, config)
        c = config
        student = make_student(teacher, student_network, c.student_prediction)
        self.student = self.add_module("student", student)
        self.round_teacher = self.add_module("round_teacher", frozen_copy(self.student))
        self.t_max = default_t_max(teacher) if c.t_max is None else float(c.t_max)
        opt = self.add_optimizer(
            "student", self.student.parameters(), lr=c.lr, weight_decay=c.weight_decay
        )
        self._schedulers["student"] = LambdaLR(opt, _RoundLinear(c.steps_per_round, c.lr_decay))
        self.round = -1  # the round of the last step taken (-1: none yet)

    def round_of(self, step: int) -> int:
        return min(step // self.config.steps_per_round, self.config.rounds - 1)

    @property
    def student_steps(self) -> int:
        """DDIM steps the student is trained for now (start_steps before any training)."""
        return self.config.start_steps if self.round < 0 else self.config.round_steps(self.round)

    def _start_round(self, k: int) -> None:
        if k > 0:  # the student of the previous round becomes the teacher
            self.round_teacher.load_state_dict(self.student.state_dict())
        if self.config.reset_optimizer:
            self._optimizers["student"].state.clear()
        self.round = k

    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]:
        x, cond = split_batch(batch)
        k = self.round_of(step)
        if k != self.round:
            self._start_round(k)
        teacher = self.teacher if k == 0 else self.round_teacher
        self.student.train()
        loss, logs = progressive_loss(
            self.student,
            teacher,
            x,
            steps=self.config.round_steps(k),
            t_max=self.t_max,
            cond=cond,
            weighting=self.config.weighting,
            generator=generator,
        )
        logs["grad_norm"] = self.update("student", loss, clip=self.config.grad_clip)
        logs["round"] = float(k)
        logs["student_steps"] = float(self.config.round_steps(k))
        return logs

    def generator(self) -> Generator:
        """The student with its deterministic DDIM sampler on its own grid t_max i / N
        (N = `student_steps`: 1 after the last round); other nfe use the uniform grid."""
        n = self.student_steps
        times = [self.t_max * (n - i) / n for i in range(n)]
        return DenoiserGenerator(self.student, t_start=self.t_max, times=times, stochastic=False)

    def extra_state(self) -> dict:
        return {"round": self.round}

    def load_extra_state(self, state: dict) -> None:
        self.round = int(state.get("round", -1))


METHODS = {  # descriptions: onestep.core.method_registry
    "progressive": (ProgressiveConfig, ProgressiveDistiller, describe("progressive")),
}
