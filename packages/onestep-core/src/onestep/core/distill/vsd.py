"""Variational score distillation into a one-step generator: SwiftBrush (Nguyen & Tran 2024,
"SwiftBrush: One-Step Text-to-Image Diffusion Model with Variational Score Distillation"), with
the VSD gradient of ProlificDreamer (Wang et al. 2023, Sec. 3; SwiftBrush Sec. 3):

    grad_theta L_VSD = E_{t, eps} [ w(t) (eps_teacher(x_t, t) - eps_fake(x_t, t)) d x / d theta ],
    x = g_theta(z),  x_t = alpha_t x + sigma_t eps,  t ~ U[t_min, t_max],

with w(t) = sigma_t^2 (DreamFusion's weighting, used by ProlificDreamer and SwiftBrush; written
here as sigma^2 / (alpha^2 + sigma^2), the sigma_t^2 of the equivalent variance-preserving path,
so the same weight holds on rectified-flow and EDM paths). The fake score eps_fake (the "LoRA
teacher") starts as the teacher and follows the student's distribution by denoising score
matching on its detached samples (SwiftBrush Alg. 1, second update).

The helpers here (`make_fake_score`, `sample_t`, `dm_gradient`, `surrogate_loss`,
`vp_weight`) are shared by the other distribution-matching modules (fdistill, sim, msd).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..convert import broadcast, from_x0_eps
from ..denoiser import Denoiser
from ..method_registry import describe
from ..nn.lora import apply_lora, lora_parameters
from .base import (
    DenoiserGenerator,
    Distiller,
    Generator,
    denoising_loss,
    frozen_copy,
    split_batch,
    student_from_teacher,
)
from .dispersive import VARIANTS as DISPERSIVE_VARIANTS
from .dispersive import DispersiveRegularizer

__all__ = [
    "VSDConfig",
    "VSDDistiller",
    "WEIGHTINGS",
    "dm_gradient",
    "ill_conditioned_start",
    "make_fake_score",
    "start_time",
    "sample_t",
    "surrogate_loss",
    "vp_weight",
    "METHODS",
]

WEIGHTINGS = ("sds", "dmd", "none")
FAKE_KINDS = ("lora", "full")


# ----------------------------------------------------------------------------------------------
# Shared helpers


def sample_t(x: Tensor, generator, t_min: float, t_max: float) -> Tensor:
    """Times t ~ U[t_min, t_max], float64 of shape (B,)."""
    u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=torch.float64)
    return t_min + (t_max - t_min) * u


def vp_weight(path, t: Tensor, x: Tensor) -> Tensor:
    """sigma^2 / (alpha^2 + sigma^2): DreamFusion's w(t) = sigma_t^2 on the equivalent VP path
    (eps is unchanged by rescaling x_t), broadcast over x."""
    c = path.coefficients(t)
    return broadcast(c.sigma**2 / (c.alpha**2 + c.sigma**2), x)


def make_fake_score(
    teacher: Denoiser,
    kind: str = "lora",
    *,
    rank: int = 64,
    alpha: float | None = None,
    network: nn.Module | None = None,
) -> tuple[Denoiser, list[nn.Parameter]]:
    """The fake score (the student's distribution's denoiser) and its trainable parameters.

    "lora": a frozen copy of the teacher's network with rank-`rank` LoRA factors on every Linear
        and Conv2d outside the time/cond embeddings (names containing "embed": LoRA adapts the
        network's blocks, and core's TimeEmbed reads its first Linear's `.weight`), SwiftBrush's
        "LoRA teacher"; it equals the teacher at initialisation.
    "full": a full trainable copy of the teacher's network (DMD's fake score), or `network`.
    """
    if kind == "lora":
        net = frozen_copy(teacher.model)
        apply_lora(net, rank, alpha, include=lambda name: "embed" not in name)
        params = lora_parameters(net)
        net.train()
    elif kind == "full":
        net = student_from_teacher(teacher, network).model
        params = [p for p in net.parameters() if p.requires_grad]
    else:
        raise ValueError(f"unknown fake score kind {kind!r}; use one of {list(FAKE_KINDS)}")
    if not params:
        raise ValueError(
            f"the fake score ({kind}) has no trainable parameters: apply_lora found "
            "no Linear/Conv2d layer; use fake='full'"
        )
    fake = Denoiser(
        net,
        teacher.path,
        prediction=teacher.prediction,
        time_input=teacher.time_input,
        null_cond=teacher.null_cond,
    )
    return fake, params


@torch.no_grad()
def dm_gradient(
    teacher: Denoiser,
    fake: Denoiser,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    cond=None,
    *,
    weighting: str = "sds",
) -> tuple[Tensor, dict[str, Tensor]]:
    """The distribution-matching gradient on generated samples x0 (B, ...), detached:

      "sds":  w(t) (eps_teacher(x_t) - eps_fake(x_t)), w = sigma_t^2 (VSD / SwiftBrush)
      "dmd":  (x0_fake - x0_teacher) / mean|x0 - x0_teacher| (DMD, Yin et al. 2024, Eq. 8)
      "none": x0_fake - x0_teacher
    All three are positive multiples of s_fake - s_teacher (the score difference, x0 units).
    Returns g (B, ...) and {"x_t", "x0_real", "x0_fake", "gap" (B,)}, gap the mean squared
    teacher-fake difference in the teacher's own prediction units (which, unlike x0 units for an
    eps network near pure noise, no conversion amplifies).
    """
    x0 = x0.detach()
    c = teacher.path.coefficients(t)
    x_t = broadcast(c.alpha, x0) * x0 + broadcast(c.sigma, x0) * noise
    x0_real, eps_real = teacher.x0_eps(x_t, t, cond)
    x0_fake, eps_fake = fake.x0_eps(x_t, t, cond)
    if weighting == "sds":
        g = vp_weight(teacher.path, t, x0) * (eps_real - eps_fake)
    elif weighting == "dmd":
        scale = (x0 - x0_real).abs().flatten(1).mean(1).clamp_min(1e-8)
        g = (x0_fake - x0_real) / broadcast(scale, x0)
    elif weighting == "none":
        g = x0_fake - x0_real
    else:
        raise ValueError(f"unknown weighting {weighting!r}; use one of {list(WEIGHTINGS)}")
    kind = teacher.prediction
    gap = from_x0_eps(kind, x0_real, eps_real, x_t, t, teacher.path) - from_x0_eps(
        kind, x0_fake, eps_fake, x_t, t, teacher.path
    )
    gap = gap.float().pow(2).flatten(1).mean(1)
    return g, {"x_t": x_t, "x0_real": x0_real, "x0_fake": x0_fake, "gap": gap}


def surrogate_loss(x0: Tensor, grad: Tensor, weight: Tensor | None = None) -> Tensor:
    """0.5 * mean (x0 - sg(x0 - grad))^2: its gradient wrt x0 is grad / numel (the usual way of
    injecting a score-distillation gradient). `weight` (B,) scales each sample's gradient."""
    if weight is not None:
        grad = grad * broadcast(weight.detach(), grad)
    target = (x0 - grad).detach()
    return 0.5 * (x0.float() - target.float()).pow(2).mean()


def ill_conditioned_start(teacher: Denoiser, alpha_min: float = 0.05) -> bool:
    """Whether a one-step student copied from `teacher` starts where x0 is ill-conditioned: an
    eps (or score) network at t = 1 on a path with alpha(1) < alpha_min (DDPM's linear schedule
    has alpha(1) = 0.006), where x0 = (x_t - sigma eps) / alpha amplifies every update of the
    student by 1 / alpha."""
    return teacher.prediction in ("eps", "score") and float(teacher.path.alpha(1.0)) < alpha_min


def start_time(teacher: Denoiser, alpha: float = 0.07) -> float:
    """The largest t with alpha(t) >= `alpha` on the teacher's path: 0.07 is about Stable
    Diffusion's alpha at its last step (alpha_bar_999 = 0.0047), where SwiftBrush and DMD feed
    their students pure noise."""
    grid = torch.linspace(0.0, 1.0, 10001, dtype=torch.float64)
    ok = (teacher.path.alpha(grid) >= alpha).nonzero()
    return float(grid[ok[-1, 0]]) if ok.numel() else 1.0


def _toy(cls, teacher: Denoiser | None, overrides: dict, **kw):
    """A config at toy scale; for an ill-conditioned eps teacher, a lower start time and lr."""
    eps_lr = kw.pop("eps_lr")
    if teacher is not None and ill_conditioned_start(teacher):
        kw.update(t_start=round(start_time(teacher), 3), lr=eps_lr)
    kw.update(overrides)
    return cls(**kw)


def _check_common(c, name: str) -> None:
    """Validation shared by the configs of this family."""
    for field in ("lr", "fake_lr"):
        v = getattr(c, field, None)
        if v is not None and not v > 0:
            raise ValueError(f"{name}.{field} must be positive, got {v}")
    if not 0.0 <= c.t_min < c.t_max <= 1.0:
        raise ValueError(
            f"{name} needs 0 <= t_min < t_max <= 1, got t_min={c.t_min}, t_max={c.t_max}"
        )
    if not 0.0 < c.t_start <= 1.0:
        raise ValueError(f"{name}.t_start must be in (0, 1], got {c.t_start}")
    if hasattr(c, "fake") and c.fake not in FAKE_KINDS:
        raise ValueError(f"unknown {name}.fake {c.fake!r}; use one of {list(FAKE_KINDS)}")
    if getattr(c, "lora_rank", 1) < 1:
        raise ValueError(f"{name}.lora_rank must be >= 1, got {c.lora_rank}")
    if getattr(c, "fake_updates", 1) < 1:
        raise ValueError(f"{name}.fake_updates must be >= 1, got {c.fake_updates}")
    ema = getattr(c, "ema_decay", None)
    if ema is not None and not 0.0 <= ema < 1.0:
        raise ValueError(f"{name}.ema_decay must be in [0, 1) or None, got {ema}")
    clip = getattr(c, "grad_clip", None)
    if clip is not None and not clip > 0:
        raise ValueError(f"{name}.grad_clip must be positive or None, got {clip}")
    if len(getattr(c, "betas", (0.0, 0.0))) != 2 or not all(0 <= b < 1 for b in c.betas):
        raise ValueError(f"{name}.betas must be two numbers in [0, 1), got {c.betas}")
    if getattr(c, "dispersive_weight", 0.0) < 0:
        raise ValueError(f"{name}.dispersive_weight must be >= 0, got {c.dispersive_weight}")
    variant = getattr(c, "dispersive_variant", "infonce_l2")
    if variant not in DISPERSIVE_VARIANTS:
        raise ValueError(
            f"unknown {name}.dispersive_variant {variant!r}; known: {list(DISPERSIVE_VARIANTS)}"
        )


class _ScoreDistiller(Distiller):
    """A one-step student + a fake score (+ optional EMA and dispersive regulariser): the
    skeleton VSD, f-distill and SIM share."""

    def __init__(
        self,
        teacher: Denoiser,
        config,
        *,
        student_network: nn.Module | None = None,
        fake_network: nn.Module | None = None,
    ):
        super().__init__(teacher, config)
        c = config
        self.student = self.add_module("student", student_from_teacher(teacher, student_network))
        fake, fake_params = make_fake_score(
            teacher, c.fake, rank=c.lora_rank, alpha=c.lora_alpha, network=fake_network
        )
        self.fake = self.add_module("fake", fake)
        self.add_optimizer("student", self.student.parameters(), lr=c.lr, betas=c.betas,
                           total_steps=getattr(c, "lr_decay_steps", None))
        self.add_optimizer("fake", fake_params, lr=c.fake_lr, betas=c.betas)
        self.ema = self.add_ema("student", self.student, c.ema_decay) if c.ema_decay else None
        self._student_gen = DenoiserGenerator(self.student, t_start=c.t_start)
        self.dispersive = None
        if c.dispersive_weight > 0:
            self.dispersive = DispersiveRegularizer(
                self.student.model, weight=c.dispersive_weight, variant=c.dispersive_variant
            )

    def generate_train(self, noise: Tensor, cond) -> Tensor:
        """One-step samples of the trained (non-EMA) student, with the graph."""
        self.student.train()
        if self.dispersive is None:
            return self._student_gen.generate(noise, cond, nfe=1)
        with self.dispersive.capture():
            return self._student_gen.generate(noise, cond, nfe=1)

    def student_extra_loss(self, logs: dict) -> Tensor | float:
        if self.dispersive is None:
            return 0.0
        disp = self.dispersive.raw_loss()
        logs["disp"] = disp.detach().item()
        return self.dispersive.config.weight * disp

    def update_fake(self, x0: Tensor, cond, generator) -> float:
        """Denoising score matching of the fake score on detached generated samples."""
        c = self.config
        total = 0.0
        for _ in range(c.fake_updates):
            err, _ = denoising_loss(
                self.fake, x0.detach(), generator=generator, cond=cond, t_min=c.t_min, t_max=c.t_max
            )
            loss = err.mean()
            self.update("fake", loss, clip=c.grad_clip)
            total += loss.item()
        return total / c.fake_updates

    def after_student_update(self) -> None:
        if self.ema is not None:
            self.ema.update(self.student)

    def generator(self) -> Generator:
        den = self.ema.module if self.ema is not None else self.student
        return DenoiserGenerator(den, t_start=self.config.t_start)


# ----------------------------------------------------------------------------------------------
# VSD / SwiftBrush


@dataclass(frozen=True)
class VSDConfig:
    """Variational score distillation (SwiftBrush). Defaults follow the paper where they do not
    depend on scale; learning rates are sized for toy MLP teachers (see `toy_defaults`).

    Toy scale (2-16-D data, MLP teacher): `VSDConfig.toy_defaults()`, 2000-4000 steps, batch 256.
    """

    lr: float = 1e-4
    """Student learning rate (AdamW), sized for small MLP students (image-scale students such as
    SwiftBrush's Stable Diffusion take far smaller rates)."""
    fake_lr: float = 1e-3
    """Fake score ("LoRA teacher") learning rate; the LoRA factors take a higher rate than the
    student, as in SwiftBrush."""
    fake: str = "lora"
    """"lora": LoRA on a frozen teacher copy (SwiftBrush / ProlificDreamer); "full": a full copy."""
    lora_rank: int = 64
    """LoRA rank of the fake score (64; `toy_defaults` uses 16)."""
    lora_alpha: float | None = None
    """LoRA alpha (scale alpha/rank); None: alpha = rank."""
    t_min: float = 0.02
    """Smallest diffusion time of the VSD loss: t ~ U[0.02, 0.98], the 20..980 of 1000 steps
    used by score-distillation methods (DreamFusion / ProlificDreamer implementations, DMD)."""
    t_max: float = 0.98
    """Largest diffusion time of the VSD loss."""
    weighting: str = "sds"
    """w(t): "sds" = sigma_t^2 (DreamFusion / ProlificDreamer / SwiftBrush); "dmd" = DMD's
    normalisation by mean|x0 - x0_teacher|; "none"."""
    t_start: float = 1.0
    """The student's input time: x0 = student(sigma(t_start) z, t_start); SwiftBrush feeds pure
    noise at the last timestep T (t = 1). For eps teachers on paths with alpha(1) ~ 0, see
    `toy_defaults(teacher)` / `start_time`."""
    fake_updates: int = 1
    """Fake-score updates per student update (SwiftBrush alternates one and one)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas of both optimisers."""
    grad_clip: float | None = 1.0
    """Gradient-norm clipping of both updates (None: off)."""
    ema_decay: float | None = None
    """EMA of the student (None: sample from the trained weights)."""
    dispersive_weight: float = 0.0
    """Weight of a dispersive loss (Wang & He 2025) on the student's middle-block features;
    0 disables it."""
    dispersive_variant: str = "infonce_l2"
    """Variant of the dispersive loss (dispersive.VARIANTS)."""

    def validate(self) -> None:
        _check_common(self, "VSDConfig")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"unknown VSDConfig.weighting {self.weighting!r}; use one of {list(WEIGHTINGS)}"
            )

    @classmethod
    def toy_defaults(cls, teacher: Denoiser | None = None, **overrides) -> VSDConfig:
        """For 2-16-D toy data and an MLP teacher: 2000-4000 steps, batch 256. Given an eps
        teacher with alpha(1) ~ 0 (`ill_conditioned_start`), the student starts at
        `start_time(teacher)` with lr 1e-5; `overrides` replace any field. The EMA of the
        student (0.99, as SIM's and the dmd family's toy configs): on the distillation benchmark
        the one-step SW2 went from 3.74x / 2.96x the 50-NFE teacher's (checkerboard / gmm8d,
        no EMA) to 3.51x / 1.91x."""
        return _toy(cls, teacher, overrides, lr=1e-4, eps_lr=1e-5, fake_lr=1e-3, lora_rank=16,
                    ema_decay=0.99)


class VSDDistiller(_ScoreDistiller):
    """SwiftBrush: one-step student trained by the VSD gradient against a LoRA fake score.

    Each step (SwiftBrush Alg. 1): x0 = student(z); the student descends the VSD gradient
    w(t)(eps_teacher - eps_fake)(x_t); then the fake score takes a denoising step on sg(x0).
    """

    kind = "vsd"

    def __init__(
        self,
        teacher: Denoiser,
        config: VSDConfig = VSDConfig(),
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
        # 1. one-step samples x0 = g_theta(z)
        x0 = self.generate_train(self.noise_like(x, generator), cond)
        # 2. VSD gradient at x_t = alpha x0 + sigma eps, t ~ U[t_min, t_max]
        t = sample_t(x0, generator, c.t_min, c.t_max)
        g, aux = dm_gradient(
            self.teacher,
            self.fake,
            x0,
            t,
            self.noise_like(x0, generator),
            cond,
            weighting=c.weighting,
        )
        logs: dict[str, float] = {}
        loss = surrogate_loss(x0, g)
        total = loss + self.student_extra_loss(logs)
        logs["student_grad_norm"] = self.update("student", total, clip=c.grad_clip)
        self.after_student_update()
        # 3. the fake score follows the student: denoising score matching on sg(x0)
        logs["fake_loss"] = self.update_fake(x0, cond, generator)
        logs["loss"] = loss.item()
        logs["score_gap"] = aux["gap"].mean().item()
        logs["grad_rms"] = g.float().pow(2).mean().sqrt().item()
        return logs


METHODS = {  # descriptions: onestep.core.method_registry
    "vsd": (VSDConfig, VSDDistiller, describe("vsd")),
}
