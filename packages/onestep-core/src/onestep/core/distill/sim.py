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
noise, a velocity network's eps near the data); ||.||^2 is the mean over dimensions.

Scale. B_t varies over t by orders of magnitude and differs between kinds (a velocity network's
y weights the x0 difference by 1 / t), so a fixed c in raw prediction units is near-quadratic at
some times and an unsquared norm at others, differently for each kind: the class defaults of old
(native units, c = 0.1) made a velocity teacher's generator collapse onto curves. The default
`weighting="normalised"` measures y in units of the teacher's own denoising error at that x_t,
e = mean|pred_p(x_t) - target| (DMD's normaliser, Yin et al. 2024, Eq. 8, which SiD's loss
carries in x0 units): with y' = y / e the loss is

    L(theta) = E [ d'(y')^T (pred_q(x_t) - target) / e ],

the SIM gradient of the distance d_t(y) = d(y / e_t) (e held fixed, as DMD does). Every kind's
y and e scale by the same |B_t|, so y' (up to a sign that cancels) and L are the same for every
prediction kind and `space`, and c is a fraction of the teacher's error, the same at all t.
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

__all__ = [
    "SIMConfig",
    "SIMDistiller",
    "sim_loss",
    "sim_objective",
    "pseudo_huber",
    "SPACES",
    "METHODS",
]

SIM_WEIGHTINGS = ("normalised", "none", "dmd")
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


def sim_objective(
    teacher: Denoiser,
    fake: Denoiser,
    x0: Tensor,
    t: Tensor,
    eps: Tensor,
    x_t: Tensor,
    cond=None,
    *,
    space: str = "native",
    weighting: str = "normalised",
    c: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """The SIM generator loss at x_t = alpha_t x0 + sigma_t eps (x0 (B, ...) and x_t carrying
    the generator's graph, t (B,)): the teacher's and the fake score's predictions in `space`
    units, the denoising target of that kind, and `weighting` (see SIMConfig and the module
    docstring) applied before `sim_loss`. The networks' parameters should be frozen by the
    caller. Returns (loss, {"divergence", "score_gap"})."""
    if weighting not in SIM_WEIGHTINGS:
        raise ValueError(f"unknown SIM weighting {weighting!r}; use one of {list(SIM_WEIGHTINGS)}")
    kind = teacher.prediction if space == "native" else space
    pred_real = teacher.predict(kind, x_t, t, cond)
    pred_fake = fake.predict(kind, x_t, t, cond)
    target = from_x0_eps(kind, x0, eps, x_t, t, teacher.path)
    gap = (pred_real - pred_fake).detach().float().pow(2).mean().item()
    weight = None
    if weighting != "none":  # e: the teacher's denoising error, per sample
        err = (pred_real - target).detach().float().abs().flatten(1).mean(1).clamp_min(1e-8)
        if weighting == "dmd":
            weight = 1.0 / err
        else:  # y' = y / e and (pred_q - target) / e: the same for every kind
            e = err.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
            target, pred_real, pred_fake = target / e, pred_real / e, pred_fake / e
    loss, logs = sim_loss(target, pred_real, pred_fake, c=c, weight=weight)
    return loss, {**logs, "score_gap": gap}


@dataclass(frozen=True)
class SIMConfig:
    """Score Implicit Matching with the pseudo-Huber distance. Scale-free settings follow the
    paper; learning rates are sized for toy MLP teachers.

    Toy scale (2-16-D data, MLP teacher): `SIMConfig.toy_defaults()`, 2000-4000 steps,
    batch 256.
    """

    huber_c: float = 1.0
    """c of the pseudo-Huber distance d(y) = sqrt(||y||^2 + c^2) - c (Sec. 3.3), as an RMS
    (||.||^2 is the mean over dimensions): with `weighting="normalised"` in units of the teacher's
    denoising error e, else in the units of `space`."""
    space: str = "native"
    """Prediction kind whose outputs are compared: "native" (the teacher's, which no conversion
    amplifies), "x0", "eps", "v" or "velocity". With `weighting="normalised"` the loss is the same
    for every kind up to rounding (see the module docstring)."""
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
    weighting: str = "normalised"
    """How the score difference is scaled: "normalised" (y and the loss in units of the teacher's
    error e = mean|pred_teacher - target| per sample, the same for every prediction kind; see
    the module docstring), "none" (y in `space` units as they are) or "dmd" (y in `space`
    units, the loss divided by e: DMD's normalisation as an outer weight)."""
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

        The toy run keeps its own measured units rather than the class default: y in x0 units
        and weighting="none" (the data-prediction units of SiD's loss, Zhou et al. 2024, which
        SIM generalises, Sec. 3.3), unless the teacher is such an eps teacher, whose x0
        amplifies by 1 / alpha near pure noise ("native" then). On the checkerboard (flow
        teacher, 3000 steps, one seed) the class default (normalised, c = 1) gives a one-step
        SW2 of 1.54x the 50-NFE teacher's, these units 1.31x. In a velocity teacher's own
        units with c = 0.1 (the old class default) the distance weights the x0 difference by
        1 / t^2, dominated by the least noisy times, and the generator collapsed onto curves.
        The EMA of the generator (0.99, as the dmd family's toy configs) averages out the
        oscillation of the generator-fake game. Distillation benchmark, 1-NFE SW2 checkerboard
        / gmm8d: native, no EMA 0.165 / 0.113; native + EMA 0.072 / -; x0 + EMA 0.042 / 0.052
        (50-NFE teacher: 0.030). With c = 1, the RMS scale of standardised data in x0 units, the
        distance is near-quadratic (SiD's) over the typical score gaps; c = 0.1 makes it close
        to an unsquared norm, whose minimiser is a median rather than a mean of the gradient
        signal: x0 + EMA + c = 1 gives 0.042 / 0.045. A cosine decay of the generator's learning
        rate to 0 over the run (3000 steps; `lr_decay_steps`) settles the last iterate: 0.042 /
        0.045 -> 0.040 / 0.043 (1.39x / 1.50x -> 1.31x / 1.43x the teacher's).
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
            weighting="none",
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
        # 2. the SIM loss from both scores at x_t (differentiable in x_t only)
        with _no_param_grads(self.fake):
            loss, sim_logs = sim_objective(
                self.teacher, self.fake, x0, t, eps, x_t, cond,
                space=c.space, weighting=c.weighting, c=c.huber_c,
            )  # fmt: skip
        total = loss + self.student_extra_loss(logs)
        logs["student_grad_norm"] = self.update("student", total, clip=c.grad_clip)
        self.after_student_update()
        # 3. fake score: denoising score matching on sg(x0)
        logs["fake_loss"] = self.update_fake(x0, cond, generator)
        logs["loss"] = loss.item()
        logs["divergence"] = sim_logs["divergence"]
        logs["score_gap"] = sim_logs["score_gap"]
        return logs


METHODS = {  # descriptions: onestep.core.method_registry
    "sim": (SIMConfig, SIMDistiller, describe("sim")),
}
