"""Score Implicit Matching (SIM; Luo, Huang, Geng, Kolter & Qi 2024, "One-Step Diffusion
Distillation through Score Implicit Matching").

SIM minimises a general score divergence between the teacher's noisy distribution p_t and the
one-step generator's q_theta,t,

    D(theta) = int w(t) E_{x_t ~ pi_t} d(y_t) dt,   y_t = s_p(x_t) - s_q(x_t),

for a distance d. q's score is intractable, but the score-gradient theorem (their Thm. 3.1)
gives, with pi_t = sg(q_theta,t) and u(x) = d'(s_p(x) - s_{sg q}(x)),

    grad_theta D = grad_theta E_{z, eps} [ u(x_t)^T (s_{sg q}(x_t) - grad log q_t(x_t | x_0)) ],
    x_0 = g_theta(z),  x_t = alpha_t x_0 + sigma_t eps,

where gradients flow through x_0 and x_t (into the teacher's and the fake score's inputs) but
not into either score network's parameters. The fake score s_{sg q} is trained alternately by
denoising score matching on the generator's samples (Alg. 1). With d(y) = ||y||^2 this is SiD's
loss (Zhou et al. 2024) at alpha = 1; SIM's choice is the pseudo-Huber distance (Sec. 3.3)

    d(y) = sqrt(||y||^2 + c^2) - c,   d'(y) = y / sqrt(||y||^2 + c^2).

Units. Every prediction kind is affine in the score given x_t: pred = A_t x_t + B_t s (eps:
B = -sigma; x0: B = sigma^2 / alpha; ...), so y in prediction units, B_t y_t, is the score
difference under the time-dependent distance d_t(y) = d(B_t y), and the theorem becomes

    L(theta) = E [ w(t) d'(pred_p(x_t) - pred_q(x_t))^T (pred_q(x_t) - target(x_0, eps, x_t)) ],

with target the denoising regression target of that kind (x_0 for x0, eps for eps, ...): the A_t
x_t terms cancel. `space="native"` (the default) takes the teacher's own prediction kind, which
no conversion amplifies (an eps network's x0 = (x_t - sigma eps) / alpha blows up near pure
noise, a velocity network's eps near the data); ||.||^2 is the mean over dimensions, so c is an
RMS in those units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..convert import from_x0_eps
from ..denoiser import Denoiser
from ..method_registry import describe
from .base import check_decay_steps, split_batch
from .fdistill import _no_param_grads
from .vsd import _check_common, _ScoreDistiller, _toy, ill_conditioned_start, sample_t

__all__ = ["SIMConfig", "SIMDistiller", "sim_loss", "pseudo_huber", "SPACES", "METHODS"]

SIM_WEIGHTINGS = ("none", "dmd")
SPACES = ("native", "x0", "eps", "v", "velocity")


def pseudo_huber(y: Tensor, c: float) -> Tensor:
    """d(y) = sqrt(mean(y^2) + c^2) - c per sample (B,) (SIM Sec. 3.3)."""
    return torch.sqrt(y.float().pow(2).flatten(1).mean(1) + c * c) - c


def sim_loss(
    target: Tensor, pred_real: Tensor, pred_fake: Tensor, *, c: float, weight: Tensor | None = None
) -> tuple[Tensor, dict[str, float]]:
    """The SIM generator loss (Thm. 3.1 with the pseudo-Huber distance) in one prediction space:

        L = mean_i w_i * mean_d[ y_i * (pred_fake_i - target_i) ] / sqrt(mean_d y_i^2 + c^2),
        y = pred_real - pred_fake,

    where pred_real, pred_fake are the teacher's and the fake score's predictions at
    x_t = alpha x0 + sigma eps, x0 = g(z), and target the denoising target of that kind (x0
    itself in x0 units); all carry gradients to theta (the networks' own parameters frozen).
    Its value is a surrogate; its gradient is that of the pseudo-Huber score divergence.
    Returns (loss, {"divergence": mean d(y)}).
    """
    y = (pred_real - pred_fake).float()
    denom = torch.sqrt(y.pow(2).flatten(1).mean(1) + c * c)  # (B,)
    per = (y * (pred_fake.float() - target.float())).flatten(1).mean(1) / denom
    if weight is not None:
        per = per * weight.detach()
    with torch.no_grad():
        div = (denom - c).mean().item()
    return per.mean(), {"divergence": div}


@dataclass(frozen=True)
class SIMConfig:
    """Score Implicit Matching with the pseudo-Huber distance. Scale-free settings follow the
    paper; learning rates are sized for toy MLP teachers.

    Toy scale (2-16-D data, MLP teacher): `SIMConfig.toy_defaults()`, 2000-4000 steps,
    batch 256.
    """

    huber_c: float = 0.1
    """c of the pseudo-Huber distance d(y) = sqrt(||y||^2 + c^2) - c (Sec. 3.3), as an RMS in
    the units of `space` (||.||^2 is the mean over dimensions)."""
    space: str = "native"
    """Prediction units of y: "native" (the teacher's prediction kind), "x0", "eps", "v" or
    "velocity" (see the module docstring); `toy_defaults` takes "x0" where x0 is well
    conditioned."""
    lr: float = 1e-4
    """Generator learning rate (AdamW); sized for small MLP students."""
    fake_lr: float = 1e-3
    """Fake score learning rate."""
    fake: str = "full"
    """Fake score: a "full" copy of the teacher (SIM, like SiD and Diff-Instruct) or "lora"."""
    lora_rank: int = 64
    """LoRA rank when fake="lora"."""
    lora_alpha: float | None = None
    """LoRA alpha when fake="lora" (None: = rank)."""
    t_min: float = 0.02
    """Smallest diffusion time of the generator loss, t ~ U[t_min, t_max]."""
    t_max: float = 0.98
    """Largest diffusion time of the generator loss."""
    weighting: str = "none"
    """w(t): "none" (the pseudo-Huber derivative already normalises the score difference) or
    "dmd" (divide by the teacher's error mean|pred_teacher - target| in `space` units, DMD's
    normalisation, which SiD uses in x0 units)."""
    t_start: float = 1.0
    """The generator's input time (pure noise at t = 1; see `toy_defaults(teacher)` for eps
    teachers with alpha(1) ~ 0)."""
    fake_updates: int = 1
    """Fake-score updates per generator update (Alg. 1 alternates one and one)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas of both optimisers."""
    grad_clip: float | None = 1.0
    """Gradient-norm clipping of both updates (None: off)."""
    ema_decay: float | None = None
    """EMA of the generator (None: no EMA; `toy_defaults`: 0.99)."""
    lr_decay_steps: int | None = None
    """Cosine-decay the generator's learning rate to 0 over this many steps (set it to the
    Trainer's steps); None: constant."""
    dispersive_weight: float = 0.0
    """Dispersive loss weight on the generator's middle-block features (0: off)."""
    dispersive_variant: str = "infonce_l2"
    """Variant of the dispersive loss."""

    def validate(self) -> None:
        _check_common(self, "SIMConfig")
        check_decay_steps(self.lr_decay_steps)
        if not self.huber_c > 0:
            raise ValueError(f"SIMConfig.huber_c must be positive, got {self.huber_c}")
        if self.space not in SPACES:
            raise ValueError(f"unknown SIMConfig.space {self.space!r}; use one of {list(SPACES)}")
        if self.weighting not in SIM_WEIGHTINGS:
            raise ValueError(
                f"unknown SIMConfig.weighting {self.weighting!r}; use one of {list(SIM_WEIGHTINGS)}"
            )

    @classmethod
    def toy_defaults(cls, teacher: Denoiser | None = None, **overrides) -> SIMConfig:
        """For 2-16-D toy data and an MLP teacher: 3000 steps, batch 256. Given an eps
        teacher with alpha(1) ~ 0 (`vsd.ill_conditioned_start`), the generator starts at
        `vsd.start_time(teacher)` with lr 3e-5; `overrides` replace any field.

        y is measured in x0 units (the data-prediction units of SiD's loss, Zhou et al. 2024,
        which SIM generalises, Sec. 3.3) unless the teacher is such an eps teacher, whose x0
        amplifies by 1 / alpha near pure noise ("native" then). In a velocity teacher's units
        the distance weights the x0 difference by 1 / t^2, dominated by the least noisy times,
        and the generator collapsed onto curves. The EMA of the generator (0.99, as the dmd
        family's toy configs) averages out the oscillation of the generator-fake game.
        Distillation benchmark, 1-NFE SW2 checkerboard / gmm8d: native, no EMA 0.165 / 0.113;
        native + EMA 0.072 / -; x0 + EMA 0.042 / 0.052 (50-NFE teacher: 0.030). With c = 1,
        the RMS scale of standardised data in x0 units, the distance is near-quadratic (SiD's)
        over the typical score gaps; c = 0.1 makes it close to an unsquared norm, whose
        minimiser is a median rather than a mean of the gradient signal: x0 + EMA + c = 1 gives
        0.042 / 0.045. A cosine decay of the generator's learning rate to 0 over the run
        (3000 steps; `lr_decay_steps`) settles the last iterate: 0.042 / 0.045 -> 0.040 / 0.043
        (1.39x / 1.50x -> 1.31x / 1.43x the teacher's).
        """
        ill = teacher is not None and ill_conditioned_start(teacher)
        return _toy(
            cls,
            teacher,
            overrides,
            lr=3e-4,
            eps_lr=3e-5,
            fake_lr=1e-3,
            space="native" if ill else "x0",
            ema_decay=0.99,
            huber_c=1.0,
            lr_decay_steps=3000,
        )


class SIMDistiller(_ScoreDistiller):
    """SIM (Alg. 1): alternate a generator step on the SIM loss and a fake-score step of
    denoising score matching on the generator's detached samples. Data-free: the batch only
    gives the shape and cond."""

    kind = "sim"

    def __init__(
        self,
        teacher: Denoiser,
        config: SIMConfig = SIMConfig(),
        *,
        student_network: nn.Module | None = None,
        fake_network: nn.Module | None = None,
    ):
        super().__init__(
            teacher, config, student_network=student_network, fake_network=fake_network
        )

    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]:
        c = self.config
        x, cond = split_batch(batch)
        logs: dict[str, float] = {}
        # 1. x0 = g(z), x_t = alpha x0 + sigma eps (both carry the generator's graph)
        x0 = self.generate_train(self.noise_like(x, generator), cond)
        t = sample_t(x0, generator, c.t_min, c.t_max)
        eps = self.noise_like(x0, generator)
        x_t = self.diffuse(x0, t, eps)
        # 2. both scores at x_t in `space` units, differentiable in x_t only, and the target
        kind = self.teacher.prediction if c.space == "native" else c.space
        with _no_param_grads(self.fake):
            pred_real = self.teacher.predict(kind, x_t, t, cond)
            pred_fake = self.fake.predict(kind, x_t, t, cond)
        target = from_x0_eps(kind, x0, eps, x_t, t, self.teacher.path)
        weight = None
        if c.weighting == "dmd":
            err = (pred_real - target).detach().abs().flatten(1).mean(1)
            weight = 1.0 / err.float().clamp_min(1e-8)
        loss, sim_logs = sim_loss(target, pred_real, pred_fake, c=c.huber_c, weight=weight)
        total = loss + self.student_extra_loss(logs)
        logs["student_grad_norm"] = self.update("student", total, clip=c.grad_clip)
        self.after_student_update()
        # 3. fake score: denoising score matching on sg(x0)
        logs["fake_loss"] = self.update_fake(x0, cond, generator)
        logs["loss"] = loss.item()
        logs["divergence"] = sim_logs["divergence"]
        logs["score_gap"] = (pred_real - pred_fake).detach().float().pow(2).mean().item()
        return logs


METHODS = {  # descriptions: onestep.core.method_registry
    "sim": (SIMConfig, SIMDistiller, describe("sim")),
}
