"""f-distill (Xu, Nie & Vahdat 2025, "One-step Diffusion Models with f-Divergence Distribution
Matching"): distribution matching under any f-divergence D_f(p || q_theta).

Their main result (Sec. 4): with r_t(x) = p_t(x) / q_theta,t(x) the density ratio of the noisy
teacher and student distributions at x_t = alpha_t G_theta(z) + sigma_t eps,

    grad_theta D_f = -E_{t, z, eps} [ h(r_t(x_t)) (s_p(x_t) - s_q(x_t)) d x_t / d theta ],
    h(r) = f''(r) r^2,

so each sample's score difference (the reverse-KL / VSD / DMD gradient, h = 1) is reweighted by
h of its density ratio. h for the divergences of their Table 1 (r = p / q):

    divergence          f(r)                              h(r)         mode
    reverse_kl          -log r                            1            seeking
    softened_rkl        (r + 1) log((r + 1) / (2 r))      1 / (r + 1)  seeking
    js                  r log r - (r + 1) log((r + 1)/2)  r / (r + 1)  balanced
    squared_hellinger   1 - sqrt(r)                       sqrt(r) / 4  balanced
    forward_kl          r log r                           r            covering
    jeffreys            (r - 1) log r                     r + 1        covering

The ratio comes from a discriminator D(x_t, t) trained with the logistic GAN loss on noisy real
data vs noisy generated samples: at its optimum logit D = log(p_t / q_t), so r = exp(logit)
(Sec. 4). Two normalisations keep the gradient's scale (Sec. 4): the score difference is
divided by mean|x0 - x0_teacher| (DMD's weighting), and h by its mean over the batch. The
generator also takes the non-saturating GAN loss (weight `gan_weight`), and the fake score and
the discriminator follow the generator as in DMD2.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..convert import as_batch_time
from ..denoiser import Denoiser
from ..method_registry import describe
from .base import denoising_loss, frozen_copy, split_batch
from .vsd import (
    WEIGHTINGS,
    _check_common,
    _ScoreDistiller,
    _toy,
    dm_gradient,
    sample_t,
    surrogate_loss,
)

__all__ = [
    "FDistillConfig",
    "FDistillDistiller",
    "NoisyDiscriminator",
    "DIVERGENCES",
    "f_weight",
    "METHODS",
]


def _h_reverse_kl(logit: Tensor) -> Tensor:
    return torch.ones_like(logit)


DIVERGENCES = {
    "reverse_kl": _h_reverse_kl,
    "softened_rkl": lambda logit: torch.sigmoid(-logit),
    "js": torch.sigmoid,
    "squared_hellinger": lambda logit: 0.25 * torch.exp(0.5 * logit),
    "forward_kl": torch.exp,
    "jeffreys": lambda logit: torch.exp(logit) + 1.0,
}
"""h(r) = f''(r) r^2 as a function of logit = log r (Xu et al. 2025, Table 1)."""


def f_weight(
    logit: Tensor, divergence: str, *, normalize: bool = True, max_logit: float = 20.0
) -> Tensor:
    """Per-sample weights h(r), r = exp(logit) (B,), divided by their batch mean when
    `normalize` (the paper's second normalisation). Logits are clamped to +-max_logit first."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; known: {sorted(DIVERGENCES)}")
    h = DIVERGENCES[divergence](logit.detach().float().clamp(-max_logit, max_logit))
    if normalize:
        h = h / h.mean().clamp_min(1e-12)
    return h


class NoisyDiscriminator(nn.Module):
    """A time-conditional discriminator on noisy samples: logit(x_t, t, cond) (B,) is the mean
    over all non-batch dimensions of `backbone(x_t, time[, cond])`, where time is the teacher's
    network time. The default backbone is a trainable copy of the teacher's network (the paper
    puts a head on the teacher's encoder); pass any network taking the same inputs instead."""

    def __init__(self, backbone: nn.Module, teacher: Denoiser):
        super().__init__()
        self.backbone = backbone
        self._time = teacher.network_time  # a bound method: the teacher is not a submodule

    def forward(self, x_t: Tensor, t, cond=None) -> Tensor:
        time = self._time(as_batch_time(t, x_t)).to(x_t.dtype)
        out = self.backbone(x_t, time) if cond is None else self.backbone(x_t, time, cond)
        if not torch.is_tensor(out):
            out = out.sample if hasattr(out, "sample") else out[0]
        return out.reshape(out.shape[0], -1).float().mean(1)


@contextlib.contextmanager
def _no_param_grads(module: nn.Module):
    """Temporarily stop gradients into `module`'s parameters (inputs still get them)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(f)


@dataclass(frozen=True)
class FDistillConfig:
    """f-distill. Defaults follow the paper's best setting (Jensen-Shannon, DMD2 recipe) where
    they do not depend on scale; learning rates are sized for toy MLP teachers.

    Toy scale (2-16-D data, MLP teacher): `FDistillConfig.toy_defaults()`, 2000-4000 steps,
    batch 256.
    """

    divergence: str = "js"
    """One of DIVERGENCES (Table 1); Jensen-Shannon is the paper's best (ImageNet-64, COCO)."""
    normalize_weights: bool = True
    """Divide h(r) by its batch mean (the paper's second normalisation)."""
    gan_weight: float = 3e-3
    """Weight of the generator's non-saturating GAN loss (DMD2's ImageNet-64 value; f-distill
    builds on DMD2's recipe); 0 disables it (the discriminator still trains, to estimate r)."""
    lr: float = 1e-4
    """Generator learning rate (AdamW), sized for small MLP students (image-scale runs use
    rates around 1e-6)."""
    fake_lr: float = 1e-3
    """Fake score learning rate."""
    disc_lr: float = 1e-3
    """Discriminator learning rate."""
    fake: str = "full"
    """Fake score: "full" copy of the teacher (DMD2, f-distill) or "lora"."""
    lora_rank: int = 64
    """LoRA rank when fake="lora"."""
    lora_alpha: float | None = None
    """LoRA alpha when fake="lora" (None: = rank)."""
    t_min: float = 0.02
    """Smallest time of the distribution-matching and GAN losses (DMD: t ~ U[0.02, 0.98])."""
    t_max: float = 0.98
    """Largest time of the distribution-matching and GAN losses."""
    weighting: str = "dmd"
    """Score-difference weighting: "dmd" (divide by mean|x0 - x0_teacher|, the paper's first
    normalisation, from DMD Eq. 8), "sds" (sigma_t^2) or "none"."""
    t_start: float = 1.0
    """The generator's input time (pure noise at t = 1; see `toy_defaults(teacher)` for eps
    teachers with alpha(1) ~ 0)."""
    fake_updates: int = 1
    """Fake-score and discriminator updates per generator update (DMD2 uses 5 at image scale;
    one suffices on toy data)."""
    max_logit: float = 20.0
    """Discriminator logits are clamped to +-max_logit before computing h(r)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas of every optimiser."""
    grad_clip: float | None = 1.0
    """Gradient-norm clipping of every update (None: off)."""
    ema_decay: float | None = None
    """EMA of the generator (None: no EMA)."""
    dispersive_weight: float = 0.0
    """Dispersive loss weight on the generator's middle-block features (0: off)."""
    dispersive_variant: str = "infonce_l2"
    """Variant of the dispersive loss."""

    def validate(self) -> None:
        _check_common(self, "FDistillConfig")
        if self.divergence not in DIVERGENCES:
            raise ValueError(
                f"unknown FDistillConfig.divergence {self.divergence!r}; known: "
                f"{sorted(DIVERGENCES)}"
            )
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"unknown FDistillConfig.weighting {self.weighting!r}; use one of "
                f"{list(WEIGHTINGS)}"
            )
        if not self.disc_lr > 0:
            raise ValueError(f"FDistillConfig.disc_lr must be positive, got {self.disc_lr}")
        if self.gan_weight < 0:
            raise ValueError(f"FDistillConfig.gan_weight must be >= 0, got {self.gan_weight}")
        if not self.max_logit > 0:
            raise ValueError(f"FDistillConfig.max_logit must be positive, got {self.max_logit}")

    @classmethod
    def toy_defaults(cls, teacher: Denoiser | None = None, **overrides) -> FDistillConfig:
        """For 2-16-D toy data and an MLP teacher: 2000-4000 steps, batch 256. On toy data the
        sigma_t^2 ("sds") weighting at lr 1e-4 trains faster and steadier than DMD's
        normalisation. Given an eps teacher with alpha(1) ~ 0 (`vsd.ill_conditioned_start`),
        the generator starts at `vsd.start_time(teacher)` with lr 1e-5; `overrides` replace any
        field. The EMA of the generator (0.99, as SIM's and the dmd family's toy configs): on the
        distillation benchmark the one-step SW2 went from 2.94x / 2.64x the 50-NFE teacher's
        (checkerboard / gmm8d, no EMA) to 1.65x / 1.67x."""
        return _toy(
            cls,
            teacher,
            overrides,
            lr=1e-4,
            eps_lr=1e-5,
            fake_lr=1e-3,
            disc_lr=1e-3,
            weighting="sds",
            ema_decay=0.99,
        )


class FDistillDistiller(_ScoreDistiller):
    """f-distill: a one-step generator, a fake score and a density-ratio discriminator.

    Each step: x0 = G(z); the generator descends h~(r(x_t)) * normalised (s_fake - s_teacher)
    plus gan_weight * softplus(-D(x_t)); then the fake score (denoising score matching on sg(x0))
    and the discriminator (logistic loss, noisy data vs noisy sg(x0)) take `fake_updates` steps.
    The batch's data are the discriminator's real samples.
    """

    kind = "fdistill"

    def __init__(
        self,
        teacher: Denoiser,
        config: FDistillConfig = FDistillConfig(),
        *,
        student_network: nn.Module | None = None,
        fake_network: nn.Module | None = None,
        discriminator_network: nn.Module | None = None,
    ):
        super().__init__(
            teacher, config, student_network=student_network, fake_network=fake_network
        )
        backbone = discriminator_network
        if backbone is None:
            backbone = frozen_copy(teacher.model).train().requires_grad_(True)
        self.disc = self.add_module("disc", NoisyDiscriminator(backbone, teacher))
        self.add_optimizer("disc", self.disc.parameters(), lr=config.disc_lr, betas=config.betas)

    def _diffuse(self, x0: Tensor, t: Tensor, generator) -> Tensor:
        return self.diffuse(x0, t, self.noise_like(x0, generator))

    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]:
        c = self.config
        x, cond = split_batch(batch)
        logs: dict[str, float] = {}
        # 1. one-step samples
        x0 = self.generate_train(self.noise_like(x, generator), cond)
        # 2. score difference at x_t and the density-ratio weights h(r(x_t)), r = exp(D(x_t))
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
        with torch.no_grad():
            logit = self.disc(aux["x_t"], t, cond)
        h = f_weight(logit, c.divergence, normalize=c.normalize_weights, max_logit=c.max_logit)
        loss_dm = surrogate_loss(x0, g, weight=h)
        total = loss_dm + self.student_extra_loss(logs)
        # 3. the generator's non-saturating GAN loss on fresh noisy samples
        if c.gan_weight > 0:
            t_gan = sample_t(x0, generator, c.t_min, c.t_max)
            with _no_param_grads(self.disc):
                loss_gan = F.softplus(
                    -self.disc(self._diffuse(x0, t_gan, generator), t_gan, cond)
                ).mean()
            total = total + c.gan_weight * loss_gan
            logs["gan_g"] = loss_gan.item()
        logs["student_grad_norm"] = self.update("student", total, clip=c.grad_clip)
        self.after_student_update()
        # 4. fake score and discriminator follow the generator
        x0 = x0.detach()
        fake_loss, disc_loss = 0.0, 0.0
        for _ in range(c.fake_updates):
            fake_loss += self.update_fake_once(x0, cond, generator)
            disc_loss += self.update_disc(x, x0, cond, generator)
        logs["fake_loss"] = fake_loss / c.fake_updates
        logs["disc_loss"] = disc_loss / c.fake_updates
        logs["loss"] = loss_dm.item()
        logs["score_gap"] = aux["gap"].mean().item()
        logs["logit_fake"] = logit.mean().item()
        logs["h_max"] = h.max().item()
        return logs

    def update_fake_once(self, x0: Tensor, cond, generator) -> float:
        c = self.config
        err, _ = denoising_loss(
            self.fake, x0, generator=generator, cond=cond, t_min=c.t_min, t_max=c.t_max
        )
        loss = err.mean()
        self.update("fake", loss, clip=c.grad_clip)
        return loss.item()

    def update_disc(self, x_real: Tensor, x_fake: Tensor, cond, generator) -> float:
        """Logistic loss softplus(-D(real_t)) + softplus(D(fake_t)) at shared times t."""
        c = self.config
        t = sample_t(x_real, generator, c.t_min, c.t_max)
        real_t = self._diffuse(x_real, t, generator)
        fake_t = self._diffuse(x_fake, t, generator)
        loss = (
            F.softplus(-self.disc(real_t, t, cond)).mean()
            + F.softplus(self.disc(fake_t, t, cond)).mean()
        )
        self.update("disc", loss, clip=c.grad_clip)
        return loss.item()


METHODS = {  # descriptions: onestep.core.method_registry
    "fdistill": (FDistillConfig, FDistillDistiller, describe("fdistill")),
}
