"""Distribution Matching Distillation: DMD (Yin et al. 2024a) and DMD2 (Yin et al. 2024b).

A one-step (or few-step) generator G is trained so that its output distribution p_fake matches
the teacher's p_real, by following the gradient of KL(p_fake,t || p_real,t) over noise levels t:

    grad_theta KL = E_{z, t, x_t}[ w_t (s_fake(x_t, t) - s_real(x_t, t)) dG/dtheta ]   (DMD Eq. 7)

where x_t diffuses x = G(z), s_real is the frozen teacher's score and s_fake the score of a "fake"
diffusion model that keeps fitting G's current samples by denoising score matching. In x0 terms
s_fake - s_real = alpha_t / sigma_t^2 (x0_fake - x0_real), and with the weight of DMD Eq. 8,
w_t = sigma_t^2 / alpha_t * CS / ||x0_real(x_t) - x||_1, the gradient on x is

    g = (x0_fake(x_t) - x0_real(x_t)) / mean|x0_real(x_t) - x|.

It is applied as 0.5 * ||x - stopgrad(x - g)||^2, whose gradient in x is g.

DMD2's details follow the official code (tianweiy/DMD2, `main/edm/edm_guidance.py`): the fake
score regresses x0 over the whole noise range with EDM's weight 1/sigma^2 + 1/sigma_data^2
(`fake_score_loss`), the discriminator sees its inputs diffused to any noise level of the
schedule (`diffusion_gan_max_timestep` = all 1000 steps), and on a UNet the GAN head is a stack of
strided convolutions on the bottleneck (`ConvDiscriminatorHead`, the code's `cls_pred_branch`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..convert import broadcast
from ..denoiser import Denoiser
from ..method_registry import describe
from ..nn.lpips import BACKBONES, LPIPS
from ..nn.unet import UNet, _groups
from ..sampling import resolve_solver, sample
from .base import (
    DenoiserGenerator,
    Distiller,
    Generator,
    check_decay_steps,
    denoising_loss,
    split_batch,
    student_from_teacher,
)
from .dispersive import FeatureHook, default_layers
from .guidance import GuidedTeacher, check_guidance_range, draw_guidance

__all__ = [
    "DMDConfig",
    "DMDDistiller",
    "DMD2Config",
    "DMD2Distiller",
    "DiscriminatorHead",
    "ConvDiscriminatorHead",
    "FakeCritic",
    "FAKE_WEIGHTINGS",
    "sample_dm_times",
    "floored_times",
    "fake_score_loss",
    "distribution_matching_loss",
    "regression_loss",
    "gan_generator_loss",
    "gan_discriminator_loss",
    "METHODS",
]


# ----------------------------------------------------------------------------------------------
# Losses shared by the distribution matching family


def sample_dm_times(
    n: int, path, *, t_min: float, t_max: float, generator=None, device=None
) -> Tensor:
    """Noise levels t ~ U[t_min, t_max] (B,) float64 (DMD / DMD2: timesteps 0.02 T to 0.98 T);
    on a discrete VP path they are rounded to the network's own steps t = (n + 1) / N."""
    t = t_min + (t_max - t_min) * torch.rand(
        n, generator=generator, device=device, dtype=torch.float64
    )
    steps = getattr(path, "num_steps", None)
    if steps is not None:
        t = (torch.round(t * steps) / steps).clamp(1.0 / steps, 1.0)
    return t


def distribution_matching_loss(
    x: Tensor,
    real: Denoiser,
    fake: Denoiser,
    *,
    cond=None,
    generator=None,
    t_min: float = 0.02,
    t_max: float = 0.98,
    fake_cond=None,
    normalize: bool = True,
    norm_floor: float = 0.0,
) -> tuple[Tensor, dict]:
    """DMD's distribution matching loss (Eq. 7-8) on generated samples x (B, ...).

    x_t = alpha_t x + sigma_t eps with t ~ U[t_min, t_max]; g = (x0_fake - x0_real) /
    mean|x0_real - x| per sample; loss = 0.5 * mean (x - stopgrad(x - g))^2, so d loss / d x =
    g / numel. `real` carries any classifier-free guidance (the paper guides only the real score);
    `fake_cond` (default `cond`) is the fake score's condition. `normalize=False` drops the
    per-sample normaliser: g = x0_fake - x0_real, i.e. w_t = sigma_t^2 / alpha_t in Eq. 7.
    `norm_floor` > 0 floors each sample's normaliser at that fraction of the batch mean: with
    few coordinates (low-dimensional data) the mean |x0_real - x| of a sample can vanish and its
    normalised gradient explode, which never happens over an image's many pixels.
    """
    path = real.path
    t = sample_dm_times(
        x.shape[0], path, t_min=t_min, t_max=t_max, generator=generator, device=x.device
    )
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    c = path.coefficients(t)
    with torch.no_grad():
        x_d = x.detach()
        x_t = broadcast(c.alpha, x_d) * x_d + broadcast(c.sigma, x_d) * noise
        x0_real = real.x0(x_t, t, cond)
        x0_fake = fake.x0(x_t, t, cond if fake_cond is None else fake_cond)
        # Eq. 8: w_t = sigma^2 / alpha * CS / ||x0_real - x||_1 turns the score gap into x0 units
        grad = x0_fake - x0_real
        if normalize:
            norm = (x_d - x0_real).abs().flatten(1).mean(1)
            norm = torch.maximum(norm, norm_floor * norm.mean()).clamp_min(1e-6)
            grad = grad / broadcast(norm, x_d)
        grad = torch.nan_to_num(grad)
    loss = 0.5 * F.mse_loss(x.float(), (x_d - grad).float())
    return loss, {
        "dm_loss": loss.detach().item(),
        "dm_grad": grad.float().pow(2).flatten(1).sum(1).sqrt().mean().item(),
    }


def regression_loss(x: Tensor, target: Tensor, lpips: LPIPS | None = None) -> tuple[Tensor, dict]:
    """DMD's regression loss (Sec. 3.3, Eq. 9) E l(G(z), y) to the teacher's ODE output y for the
    same noise z: l = LPIPS (the paper's, Zhang et al. 2018 Eq. 1) when `lpips` is given (images
    (B, 1 or 3, H, W) in [-1, 1]), else the mean squared error (any data shape)."""
    if lpips is not None:
        loss = lpips(x, target).mean()
    else:
        loss = (x.float() - target.float()).pow(2).flatten(1).mean(1).mean()
    return loss, {"reg_loss": loss.detach().item()}


FAKE_WEIGHTINGS = ("edm", "snr", "native")


def floored_times(n: int, path, *, t_min: float, t_max: float, sigma_min: float,
                  generator=None, device=None) -> Tensor:
    """t ~ U[max(t_min, t(sigma_min)), t_max] (B,) float64, t(sigma_min) the time whose noise
    level sigma/alpha is sigma_min (DMD2's code: EDM's sigma_min = 0.002 is its first of 1000
    Karras levels); rounded to a discrete path's steps as `sample_dm_times`."""
    floor = float(path.t_from_sigma_ve(sigma_min)) if sigma_min > 0 else 0.0
    lo = min(max(t_min, floor), t_max)
    return sample_dm_times(n, path, t_min=lo, t_max=t_max, generator=generator, device=device)


def fake_score_loss(
    fake: Denoiser,
    x0: Tensor,
    *,
    weighting: str = "edm",
    generator=None,
    cond=None,
    sigma_min: float = 0.002,
    sigma_data: float | None = None,
    t_min: float = 0.02,
    t_max: float = 0.98,
) -> tuple[Tensor, Tensor]:
    """DMD2's fake-score loss on generator samples x0 (B, ...) -> (per-sample loss (B,), t (B,)).

    "edm" (DMD2's ImageNet code, `compute_loss_fake`): t over the whole schedule (from the level
    sigma_min up to t = 1), the x0 error weighted by EDM's lambda = 1/sigma^2 + 1/sigma_data^2
    (Karras et al. 2022, Eq. 8 and Table 1), sigma = sigma_t / alpha_t; sigma_data None: the
    path's, else 0.5. "snr": weight alpha^2 / sigma^2 only, the same range: the eps-prediction
    MSE of DMD2's Stable Diffusion code, written in x0 units. "native": denoising score matching
    in the network's own prediction kind on t ~ U[t_min, t_max], unweighted."""
    if weighting == "native":
        return denoising_loss(fake, x0, generator=generator, cond=cond, t_min=t_min, t_max=t_max)
    if weighting not in FAKE_WEIGHTINGS:
        raise ValueError(f"unknown fake weighting {weighting!r}; use one of {FAKE_WEIGHTINGS}")
    path = fake.path
    t = floored_times(x0.shape[0], path, t_min=0.0, t_max=1.0, sigma_min=sigma_min,
                      generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    c = path.coefficients(t)
    x_t = broadcast(c.alpha, x0) * x0 + broadcast(c.sigma, x0) * noise
    err = (fake.x0(x_t, t, cond) - x0).float().pow(2).flatten(1).mean(1)  # (B,) in x0 units
    weight = 1.0 / path.sigma_ve(t) ** 2  # alpha^2 / sigma^2: 0 at t = 1 when alpha(1) = 0
    if weighting == "edm":
        sd = sigma_data or getattr(path, "sigma_data", 0.5)
        weight = weight + 1.0 / sd**2
    return weight.to(err) * err, t


def gan_generator_loss(logits_fake: Tensor) -> Tensor:
    """Non-saturating generator loss E[-log D(G(z)_t)] = softplus(-logit) (DMD2 Sec. 4.3)."""
    return F.softplus(-logits_fake.float()).mean()


def gan_discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator loss E[-log D(x_t)] + E[-log(1 - D(G(z)_t))] (DMD2 Sec. 4.3)."""
    return F.softplus(-logits_real.float()).mean() + F.softplus(logits_fake.float()).mean()


# ----------------------------------------------------------------------------------------------
# Regression pairs (DMD Sec. 3.3)


def _index_cond(cond, idx):
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: _index_cond(v, idx) for k, v in cond.items()}
    return cond[idx.to(cond.device)]


def _cat_cond(a, b):
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise ValueError("regression pairs and the batch must both carry a condition or neither")
    if isinstance(a, dict):
        return {k: _cat_cond(a[k], b[k]) for k in a}
    return torch.cat([a, b.to(a.device)])


def _cond_to(cond, device):
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: _cond_to(v, device) for k, v in cond.items()}
    return cond.to(device)


@torch.no_grad()
def make_regression_pairs(
    teacher: Denoiser,
    x_like: Tensor,
    cond,
    n: int,
    *,
    nfe: int,
    solver: str,
    generator=None,
    chunk: int = 1024,
) -> dict:
    """n (noise, ODE sample) pairs from the teacher's deterministic sampler (DMD Sec. 3.3),
    noise shaped like x_like[0]. Conditions are drawn with replacement from `cond` (the batch)."""
    shape = (n, *x_like.shape[1:])
    noise = torch.randn(shape, generator=generator, device=x_like.device, dtype=x_like.dtype)
    pair_cond = None
    if cond is not None:
        b = x_like.shape[0]
        idx = torch.randint(0, b, (n,), generator=generator, device=x_like.device)
        pair_cond = _index_cond(cond, idx)
    targets = []
    for i in range(0, n, chunk):
        c = _index_cond(pair_cond, torch.arange(i, min(n, i + chunk), device=x_like.device))
        targets.append(sample(teacher, noise[i : i + chunk], nfe=nfe, solver=solver, cond=c))
    out = {"noise": noise, "target": torch.cat(targets)}
    if pair_cond is not None:
        out["cond"] = pair_cond
    return out


# ----------------------------------------------------------------------------------------------
# DMD


@dataclass(frozen=True)
class DMDConfig:
    """Distribution Matching Distillation (Yin et al. 2024a, "One-step Diffusion with Distribution
    Matching Distillation", CVPR). One-step generator from noise at t=1, a fake score fitted to its
    samples, the distribution matching loss (Eq. 7-8) plus a regression loss (Sec. 3.3) on teacher
    ODE pairs. Toy scale (2-16-D, MLP teacher): `DMDConfig.toy_defaults()`, 2000-4000 steps,
    batch 256."""

    lr: float = 1e-4
    """Generator learning rate (AdamW). The DMD papers train large UNets at 2e-6 to 1e-5 (DMD2's
    ImageNet: 2e-6); 1e-4 suits small MLPs."""
    fake_lr: float = 1e-4
    """Fake score learning rate (paper: the generator's)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas for both networks."""
    t_min: float = 0.02
    """Smallest noise level of the distribution matching loss and the fake score's training
    (DMD / DMD2: timesteps 0.02 T to 0.98 T)."""
    t_max: float = 0.98
    """Largest noise level (0.98 T)."""
    reg_weight: float = 0.25
    """lambda_reg of the total loss L_KL + lambda_reg L_reg (paper: 0.25)."""
    num_pairs: int = 2048
    """Noise-ODE sample pairs for the regression loss, generated once with the teacher at the
    first step and kept in the checkpoint (the paper precomputes a large fixed set offline)."""
    pair_nfe: int = 50
    """Teacher network evaluations per pair (the paper runs the teacher's deterministic ODE
    sampler)."""
    pair_solver: str = "dpm++2m"
    """Deterministic core solver for the pairs (any name or alias of `sampling.sample`)."""
    reg_batch: int | None = None
    """Pairs per generator update; None: the batch size."""
    lpips_weights: str = ""
    """File of LPIPS weights (backbone and learned linear layers, the reference implementation's
    state dict; see `nn.lpips`): the regression loss is then LPIPS, as in the paper (Sec. 3.3),
    on images (B, 1 or 3, H, W) in [-1, 1]. Empty: the mean squared error (any data)."""
    lpips_net: str = "vgg"
    """LPIPS backbone the weights belong to: "vgg" or "alex"."""
    lpips_resize: int = 0
    """Bilinearly resize both images to this side before LPIPS (0: as they are; VGG16 needs at
    least 16 x 16, AlexNet about 64 x 64)."""
    guidance: float = 1.0
    """Classifier-free guidance scale of the real score only, for conditional teachers (the
    fake score stays unguided; the paper guides text-to-image, not ImageNet)."""
    t_start: float = 1.0
    """Time the generator is called at on pure noise (t=1: the teacher's prior). eps-prediction
    teachers on paths with alpha(1) ~ 0 (discrete DDPM: alpha(1) = 0.006) amplify the student's
    eps error by 1/alpha there; start lower (e.g. 0.75, alpha ~ 0.07 as at Stable Diffusion's
    last step; DMD2's one-step SDXL generator takes pure noise at timestep 399) with a smaller
    lr."""
    guidance_range: tuple[float, float] | None = None
    """A guidance-conditioned student (Meng et al. 2023, Sec. 4.1): each example draws w ~
    U[w_min, w_max], the real score is guided with that w, and the student and the fake score
    take w as an input, so one network samples at any w in the range (condition {"cond": c,
    "guidance": w}; `onestep-image sample --guidance w`). None: one scale, `guidance`."""
    student_lora_rank: int | None = None
    """The student as LoRA adaptors of this rank on the frozen teacher network (Hu et al. 2021;
    only the adaptors train, and a saved student holds only them and the teacher's weight hash).
    None: the whole network trains."""
    ema_decay: float | None = None
    """EMA of the generator's weights used by `generator()`; None: the raw weights."""
    grad_clip: float = 10.0
    """Gradient-norm clip of both optimizers (0 or None: off)."""

    def validate(self) -> None:
        _positive(self, "lr", "fake_lr")
        _check_betas(self.betas)
        _check_t_range(self.t_min, self.t_max)
        if self.reg_weight < 0:
            raise ValueError(f"DMDConfig.reg_weight must be >= 0, got {self.reg_weight}")
        if self.reg_weight > 0:
            if self.num_pairs < 1:
                raise ValueError(f"DMDConfig.num_pairs must be >= 1, got {self.num_pairs}")
            if self.pair_nfe < 1:
                raise ValueError(f"DMDConfig.pair_nfe must be >= 1, got {self.pair_nfe}")
            resolve_solver(self.pair_solver)
        if self.reg_batch is not None and self.reg_batch < 1:
            raise ValueError(f"DMDConfig.reg_batch must be >= 1 or None, got {self.reg_batch}")
        if self.lpips_net not in BACKBONES:
            raise ValueError(f"unknown DMDConfig.lpips_net {self.lpips_net!r}; use one of "
                             f"{sorted(BACKBONES)}")
        if self.lpips_weights and not os.path.isfile(self.lpips_weights):
            raise ValueError(f"DMDConfig.lpips_weights: no file {self.lpips_weights!r}")
        if self.lpips_resize < 0:
            raise ValueError(f"DMDConfig.lpips_resize must be >= 0, got {self.lpips_resize}")
        if self.guidance < 0:
            raise ValueError(f"DMDConfig.guidance must be >= 0, got {self.guidance}")
        if not 0.0 < self.t_start <= 1.0:
            raise ValueError(f"DMDConfig.t_start must be in (0, 1], got {self.t_start}")
        _check_ema(self.ema_decay)
        _check_student(self)

    @classmethod
    def toy_defaults(cls, teacher=None, **overrides) -> DMDConfig:
        """Settings for 2-16-D toy data with an MLP teacher: 3000 steps, batch 256. The fake
        score at lr 1e-3 (as DMD2's and SIM's toy configs): on the distillation benchmark the
        one-step SW2 went from 1.68x / 1.32x the 50-NFE teacher's (checkerboard / gmm8d, fake
        lr 3e-4) to 1.28x / 1.29x."""
        base = dict(lr=3e-4, fake_lr=1e-3, num_pairs=2048, pair_nfe=50, ema_decay=0.99)
        base.update(overrides)
        return cls(**base)


class DMDDistiller(Distiller):
    """DMD (Yin et al. 2024a, Alg. 1): per step, one generator update on L_KL + lambda_reg L_reg
    and one fake-score update by denoising score matching on the generator's (detached) samples.

    Regression pairs (noise, teacher ODE sample) are drawn at the first step from the task
    generator (conditions from the first batch) and saved in the checkpoint's extra state, so a
    resumed run regresses on the same pairs; pass `pairs={"noise", "target"[, "cond"]}` to supply
    your own.
    """

    kind = "dmd"

    def __init__(
        self,
        teacher: Denoiser,
        config: DMDConfig | None = None,
        *,
        student_network: nn.Module | None = None,
        pairs: dict | None = None,
    ):
        config = DMDConfig() if config is None else config
        super().__init__(teacher, config)
        c = config
        self.real = real_score(teacher, c)
        self.student = self.add_module("student", dm_student(teacher, c, student_network))
        self.fake = self.add_module("fake", dm_fake(teacher, c))
        self.add_optimizer("student", self.student.parameters(), lr=c.lr, betas=c.betas)
        self.add_optimizer("fake", self.fake.parameters(), lr=c.fake_lr, betas=c.betas)
        self.ema = self.add_ema("student", self.student, c.ema_decay) if c.ema_decay else None
        self.gen = DenoiserGenerator(self.student, t_start=c.t_start)
        self.pairs = dict(pairs) if pairs is not None else None
        self.lpips = (LPIPS.from_file(c.lpips_weights, c.lpips_net, resize=c.lpips_resize)
                      if c.lpips_weights else None)

    def frozen_modules(self) -> dict[str, nn.Module]:
        frozen = super().frozen_modules()
        if self.lpips is not None:
            frozen["lpips"] = self.lpips
        return frozen

    # -- regression pairs in the checkpoint ----------------------------------------------------
    def extra_state(self) -> dict:
        return {"pairs": self.pairs} if self.pairs is not None else {}

    def load_extra_state(self, state: dict) -> None:
        if "pairs" in state:
            self.pairs = state["pairs"]

    def _pair_batch(self, x: Tensor, cond, n: int, generator):
        c = self.config
        if self.pairs is None:
            self.pairs = make_regression_pairs(
                self.real,
                x,
                cond,
                c.num_pairs,
                nfe=c.pair_nfe,
                solver=c.pair_solver,
                generator=generator,
            )
        total = self.pairs["noise"].shape[0]
        idx = torch.randint(0, total, (n,), generator=generator, device=x.device)
        idx = idx.to(self.pairs["noise"].device)
        z = self.pairs["noise"][idx].to(x.device)
        y = self.pairs["target"][idx].to(x.device)
        pc = _cond_to(_index_cond(self.pairs.get("cond"), idx), x.device)
        return z, y, pc

    # -- the update ---------------------------------------------------------------------------
    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]:
        c = self.config
        x_data, cond = split_batch(batch)
        b = x_data.shape[0]
        if c.guidance_range is not None:  # w ~ U[w_min, w_max] per example
            cond = draw_guidance(cond, b, c.guidance_range, generator=generator,
                                 device=x_data.device)
        self.student.train()
        self.fake.train()
        z = self.noise_like(x_data, generator)

        # 1. generator: L_KL on fresh noise (+ lambda_reg L_reg on pairs, in the same forward)
        use_reg = c.reg_weight > 0
        if use_reg:
            zr, yr, cr = self._pair_batch(x_data, cond, c.reg_batch or b, generator)
            x_all = self.gen.generate(torch.cat([z, zr]), _cat_cond(cond, cr))
            x, xr = x_all[:b], x_all[b:]
        else:
            x = self.gen.generate(z, cond)
        loss_kl, logs = distribution_matching_loss(
            x, self.real, self.fake, cond=cond, generator=generator, t_min=c.t_min, t_max=c.t_max
        )
        loss = loss_kl
        if use_reg:
            loss_reg, reg_logs = regression_loss(xr, yr, self.lpips)
            loss = loss + c.reg_weight * loss_reg
            logs.update(reg_logs)
        logs["gen_grad_norm"] = self.update("student", loss, clip=c.grad_clip or None)
        if self.ema is not None:
            self.ema.update(self.student)

        # 2. fake score: denoising score matching on the generator's current samples
        fake_loss, _ = denoising_loss(
            self.fake, x.detach(), generator=generator, cond=cond, t_min=c.t_min, t_max=c.t_max
        )
        fake_loss = fake_loss.mean()
        logs["fake_grad_norm"] = self.update("fake", fake_loss, clip=c.grad_clip or None)
        logs["fake_loss"] = fake_loss.detach().item()
        logs["loss"] = loss.detach().item()
        return logs

    def generator(self) -> Generator:
        student = self.ema.module if self.ema is not None else self.student
        return DenoiserGenerator(student, t_start=self.config.t_start)


# ----------------------------------------------------------------------------------------------
# DMD2


class DiscriminatorHead(nn.Module):
    """DMD2's GAN classifier (Sec. 4.3): a small head on the fake score network's intermediate
    features (the paper: the UNet bottleneck), so that the discriminator loss also trains the
    fake network. The features of the hooked layers (any shapes (B, ...)) are flattened and
    concatenated; a LazyLinear sizes itself on the first call, so any network and data shape
    work: Linear -> SiLU -> Linear -> one logit per sample."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.LazyLinear(hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, features: list[Tensor]) -> Tensor:
        h = torch.cat([f.flatten(1).float() for f in features], dim=1)
        return self.net(h).squeeze(-1)  # (B,)


class ConvDiscriminatorHead(nn.Module):
    """DMD2's GAN classifier on a UNet's bottleneck (Sec. 4.3; the official code's
    `cls_pred_branch` for 64x64 ImageNet): features (B, C, h, w), resampled to 8 x 8 (the
    bottleneck size there; adaptive average pooling, the identity at 8 x 8), then
    conv 4x4 stride 2 (8 -> 4), GroupNorm, SiLU, conv 4x4 stride 4 (4 -> 1), GroupNorm, SiLU,
    conv 1x1 to one logit per sample. The width stays C, as in the code."""

    size = 8

    def __init__(self, channels: int):
        super().__init__()
        c = int(channels)
        self.channels = c
        self.net = nn.Sequential(
            nn.Conv2d(c, c, 4, stride=2, padding=1), nn.GroupNorm(_groups(c), c), nn.SiLU(),
            nn.Conv2d(c, c, 4, stride=4), nn.GroupNorm(_groups(c), c), nn.SiLU(),
            nn.Conv2d(c, 1, 1),
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        if len(features) != 1 or features[0].ndim != 4 or features[0].shape[1] != self.channels:
            shapes = [tuple(f.shape) for f in features]
            raise ValueError(f"ConvDiscriminatorHead takes one (B, {self.channels}, h, w) "
                             f"feature map, got {shapes}")
        h = F.adaptive_avg_pool2d(features[0].float(), self.size)  # (B, C, 8, 8)
        return self.net(h).flatten()  # (B,)


DISC_HEADS = ("auto", "conv", "mlp")


def find_unet(module: nn.Module) -> str | None:
    """The name of the first UNet inside `module` ("" for the module itself), or None."""
    for name, m in module.named_modules():
        if isinstance(m, UNet):
            return name
    return None


class FakeCritic:
    """DMD2's discriminator: a head on intermediate features of the fake score network (so the
    GAN loss trains the fake network too). head="auto": the conv head on the bottleneck (mid2)
    of a UNet fake network, else the MLP head on `layers` (default `dispersive.default_layers`);
    "conv" insists on the UNet, "mlp" on the MLP head. `critic(x_t, t, cond)` -> logits (B,)."""

    def __init__(self, fake: Denoiser, *, head: str = "auto", hidden: int = 64, layers=None):
        if head not in DISC_HEADS:
            raise ValueError(f"unknown discriminator head {head!r}; use one of {DISC_HEADS}")
        net = fake.model
        unet = find_unet(net) if layers is None else None
        if head == "conv" and (layers is not None or unet is None):
            raise ValueError("disc_head='conv' needs a UNet fake network and no disc_layers "
                             f"(got {type(net).__name__}, layers={layers})")
        self.fake = fake
        if head != "mlp" and unet is not None:
            self.layers = [f"{unet}.mid2" if unet else "mid2"]
            bottleneck = net.get_submodule(self.layers[0])
            self.head: nn.Module = ConvDiscriminatorHead(bottleneck.res.conv2.out_channels)
        else:
            self.layers = list(layers or default_layers(net))
            self.head = DiscriminatorHead(hidden)
        self.features = FeatureHook(net, self.layers)
        self.features.enabled = False  # records only inside __call__

    def __call__(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        with self.features.capture():
            self.fake(x_t, t, cond)
        return self.head(self.features.tensors())


@dataclass(frozen=True)
class DMD2Config:
    """DMD2 (Yin et al. 2024b, "Improved Distribution Matching Distillation for Fast Image
    Synthesis", NeurIPS): no regression loss, a two time-scale update rule, a GAN on the fake
    score network, and an optional few-step generator trained with backward simulation.
    Toy scale (2-16-D, MLP teacher): `DMD2Config.toy_defaults()`, 1000 steps, batch 256
    (each step is one generator update and `fake_updates` fake/discriminator updates)."""

    lr: float = 1e-4
    """Generator learning rate (paper code: 2e-6 for ImageNet at batch 280, 5e-7 for SDXL); 1e-4
    suits small MLPs."""
    fake_lr: float = 1e-4
    """Fake score and discriminator learning rate (paper: equal to the generator's)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (paper code: PyTorch defaults)."""
    fake_updates: int = 5
    """Two time-scale update rule (Sec. 4.2): fake score updates per generator update (5 for
    ImageNet and SDXL, 10 for SD v1.5)."""
    t_min: float = 0.02
    """Smallest noise level of the distribution matching loss (0.02 T; the official code's
    min_step_percent)."""
    t_max: float = 0.98
    """Largest noise level of the distribution matching loss (0.98 T)."""
    fake_weighting: str = "edm"
    """The fake score's denoising loss (`fake_score_loss`): "edm", the official ImageNet code's,
    x0 error weighted by 1/sigma^2 + 1/sigma_data^2 over the whole schedule; "snr", the SD
    code's eps loss (weight alpha^2/sigma^2 in x0 units); "native", the network's own prediction
    kind on [t_min, t_max] unweighted (this project's earlier default)."""
    sigma_min: float = 0.002
    """Smallest noise level sigma/alpha of the fake score's loss and of the discriminator's
    inputs (the code's EDM sigma_min, its first of 1000 Karras levels; a discrete path's first
    step when that is larger)."""
    sigma_data: float | None = None
    """sigma_data of the "edm" weighting; None: the path's (EDM path), else 0.5 (the code's)."""
    gan_t_range: tuple[float, float] = (0.0, 1.0)
    """Times the discriminator's real and generated inputs are diffused to, t ~ U[lo, hi]
    (floored at sigma_min): the official code draws any of the schedule's 1000 steps
    (diffusion_gan_max_timestep = 1000), so the whole range."""
    gan_weight: float = 3e-3
    """Generator GAN loss weight (paper code: 3e-3 for ImageNet, 5e-3 for SDXL). 0: no GAN."""
    disc_weight: float = 1e-2
    """Discriminator loss weight, added to the fake score's loss (paper code: 1e-2)."""
    disc_head: str = "auto"
    """"auto": on a UNet fake network the paper's conv head on the bottleneck
    (ConvDiscriminatorHead), else the MLP DiscriminatorHead; "conv" or "mlp" to insist."""
    disc_hidden: int = 64
    """Width of the MLP DiscriminatorHead."""
    disc_layers: tuple[str, ...] | None = None
    """Names of the fake network's submodules whose outputs feed the MLP head (see
    `dict(net.named_modules())`); None: `dispersive.default_layers` (the middle block of an MLP
    or DiT)."""
    times: tuple[float, ...] = (1.0,)
    """The generator's time grid, t_start first (Sec. 4.5). (1.0,) is the one-step ImageNet
    generator; (1.0, 0.75, 0.5, 0.25) the 4-step SDXL one (timesteps 999, 749, 499, 249)."""
    backward_simulation: bool = True
    """Sec. 4.5: the generator's input at step k comes from running the current generator itself
    from noise for k steps (re-noising with fresh noise), not from noising real data."""
    guidance: float = 1.0
    """Classifier-free guidance of the real score (paper code: 8 for SDXL, 1.75 for SD v1.5,
    none for class-conditional ImageNet)."""
    guidance_range: tuple[float, float] | None = None
    """A guidance-conditioned student (Meng et al. 2023, Sec. 4.1): each example draws w ~
    U[w_min, w_max], the real score is guided with that w, and the student and the fake score
    take w as an input, so one network samples at any w in the range (condition {"cond": c,
    "guidance": w}; `onestep-image sample --guidance w`). None: one scale, `guidance`."""
    student_lora_rank: int | None = None
    """The student as LoRA adaptors of this rank on the frozen teacher network (Hu et al. 2021;
    only the adaptors train, and a saved student holds only them and the teacher's weight hash).
    None: the whole network trains."""
    ema_decay: float | None = None
    """EMA of the generator's weights used by `generator()`; None: the raw weights."""
    lr_decay_steps: int | None = None
    """Cosine-decay the generator's learning rate to 0 over this many steps (set it to the
    Trainer's steps); None: constant, as in the paper."""
    grad_clip: float = 10.0
    """Gradient-norm clip of both optimizers (0 or None: off)."""

    def validate(self) -> None:
        _positive(self, "lr", "fake_lr")
        _check_betas(self.betas)
        _check_t_range(self.t_min, self.t_max)
        check_decay_steps(self.lr_decay_steps)
        if self.fake_updates < 1:
            raise ValueError(f"DMD2Config.fake_updates must be >= 1, got {self.fake_updates}")
        for name in ("gan_weight", "disc_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"DMD2Config.{name} must be >= 0, got {getattr(self, name)}")
        if self.disc_hidden < 1:
            raise ValueError(f"DMD2Config.disc_hidden must be >= 1, got {self.disc_hidden}")
        check_gan_fields(self)
        if self.fake_weighting not in FAKE_WEIGHTINGS:
            raise ValueError(f"unknown DMD2Config.fake_weighting {self.fake_weighting!r}; use "
                             f"one of {FAKE_WEIGHTINGS}")
        if self.sigma_data is not None and not self.sigma_data > 0:
            raise ValueError(f"DMD2Config.sigma_data must be None or > 0, got {self.sigma_data}")
        _check_times(self.times, "DMD2Config.times")
        if self.guidance < 0:
            raise ValueError(f"DMD2Config.guidance must be >= 0, got {self.guidance}")
        _check_ema(self.ema_decay)
        _check_student(self)

    @classmethod
    def toy_defaults(cls, teacher=None, **overrides) -> DMD2Config:
        """Settings for 2-16-D toy data with an MLP teacher: 1000 steps, batch 256. The
        paper's two time-scale rule (5 fake updates per generator update, Sec. 4.2): on the
        distillation benchmark's checkerboard 2 updates for 2000 steps gave 2.38x the 50-NFE
        teacher's SW2, 5 for 1000 steps (the same compute) 1.59x. A faster fake score,
        fake_lr 1e-3 (SIM's) instead of 3e-4, gives 1.26x / 1.34x on checkerboard / gmm8d,
        from 1.59x / 1.54x; decaying the generator's lr over the run (1.59x / 1.54x) and a GAN
        weight of 0.03 instead of 3e-3 (1.57x on checkerboard) did not help."""
        base = dict(lr=3e-4, fake_lr=1e-3, fake_updates=5, ema_decay=0.99, sigma_data=1.0)
        base.update(overrides)
        return cls(**base)


class DMD2Distiller(Distiller):
    """DMD2 (Yin et al. 2024b). One `step` = `fake_updates` updates of the fake score and the
    discriminator head (fresh generator samples each time) followed by one generator update with
    the distribution matching loss plus `gan_weight` times the non-saturating GAN loss.

    The batch's real data feed only the discriminator (as in the paper); with `gan_weight = 0` the
    method is data-free and uses the batch for its shape and condition.
    """

    kind = "dmd2"

    def __init__(
        self,
        teacher: Denoiser,
        config: DMD2Config | None = None,
        *,
        student_network: nn.Module | None = None,
    ):
        config = DMD2Config() if config is None else config
        super().__init__(teacher, config)
        c = config
        self.real = real_score(teacher, c)
        self.student = self.add_module("student", dm_student(teacher, c, student_network))
        self.fake = self.add_module("fake", dm_fake(teacher, c))
        self.use_gan = c.gan_weight > 0 or c.disc_weight > 0
        fake_params = list(self.fake.parameters())
        if self.use_gan:
            self.critic = FakeCritic(self.fake, head=c.disc_head, hidden=c.disc_hidden,
                                     layers=c.disc_layers)
            self.disc = self.add_module("disc", self.critic.head)
            fake_params += list(self.disc.parameters())
        self.add_optimizer(
            "student", self.student.parameters(), lr=c.lr, betas=c.betas,
            total_steps=c.lr_decay_steps,
        )
        self.add_optimizer("fake", fake_params, lr=c.fake_lr, betas=c.betas)
        self.ema = self.add_ema("student", self.student, c.ema_decay) if c.ema_decay else None
        self.times = [float(t) for t in c.times]
        self.gen = DenoiserGenerator(self.student, times=self.times, stochastic=True)

    def _discriminate(self, x0: Tensor, cond, generator) -> Tensor:
        """Logits of the head on x0 diffused to t ~ U[gan_t_range] (DMD2 Sec. 4.3)."""
        return discriminate(self.critic, x0, cond, generator, self.config, self)

    def _generate(self, z: Tensor, x_data: Tensor, cond, generator, *, grad: bool) -> Tensor:
        """Generator samples x0 (B, ...). Each sample ends at a uniformly drawn step k of the
        grid; its input at t_k comes from k no-grad steps of the current generator from noise
        (backward simulation, Sec. 4.5), or from noising real data when that is off."""
        times, n = self.times, len(self.times)
        path = self.student.path
        k = torch.randint(0, n, (z.shape[0],), generator=generator, device=z.device)
        t_k = torch.as_tensor(times, dtype=torch.float64, device=z.device)[k]  # (B,)
        with torch.no_grad():
            x = broadcast(path.sigma(times[0]), z) * z  # the prior sample at t_0
            x_k = x
            if n > 1 and self.config.backward_simulation:
                for i in range(1, n):
                    if not bool((k >= i).any()):
                        break
                    x0 = self.student.x0(x, times[i - 1], cond)
                    x = self.diffuse(x0, times[i], self.noise_like(x0, generator))
                    x_k = torch.where((k == i).reshape(-1, *[1] * (z.ndim - 1)), x, x_k)
            elif n > 1:
                noised = self.diffuse(x_data, t_k, self.noise_like(x_data, generator))
                x_k = torch.where((k > 0).reshape(-1, *[1] * (z.ndim - 1)), noised, x)
        with torch.set_grad_enabled(grad):
            return self.student.x0(x_k, t_k, cond)

    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]:
        c = self.config
        x_data, cond = split_batch(batch)
        if c.guidance_range is not None:  # w ~ U[w_min, w_max] per example
            cond = draw_guidance(cond, x_data.shape[0], c.guidance_range, generator=generator,
                                 device=x_data.device)
        self.student.train()
        self.fake.train()
        logs: dict[str, float] = {}
        clip = c.grad_clip or None

        # 1. two time-scale update rule: fake score (+ discriminator) updates on fresh samples
        fake_sum = disc_sum = 0.0
        for _ in range(c.fake_updates):
            z = self.noise_like(x_data, generator)
            x_gen = self._generate(z, x_data, cond, generator, grad=False)
            fake_loss, _ = fake_score_loss(
                self.fake, x_gen, weighting=c.fake_weighting, generator=generator, cond=cond,
                sigma_min=c.sigma_min, sigma_data=c.sigma_data, t_min=c.t_min, t_max=c.t_max,
            )
            loss = fake_loss.mean()
            fake_sum += loss.detach().item()
            if self.use_gan and c.disc_weight > 0:
                d_loss = gan_discriminator_loss(
                    self._discriminate(x_data, cond, generator),
                    self._discriminate(x_gen, cond, generator),
                )
                loss = loss + c.disc_weight * d_loss
                disc_sum += d_loss.detach().item()
            logs["fake_grad_norm"] = self.update("fake", loss, clip=clip)
        logs["fake_loss"] = fake_sum / c.fake_updates
        if self.use_gan and c.disc_weight > 0:
            logs["disc_loss"] = disc_sum / c.fake_updates

        # 2. generator: distribution matching + GAN
        z = self.noise_like(x_data, generator)
        x = self._generate(z, x_data, cond, generator, grad=True)
        loss, dm_logs = distribution_matching_loss(
            x, self.real, self.fake, cond=cond, generator=generator, t_min=c.t_min, t_max=c.t_max
        )
        logs.update(dm_logs)
        if self.use_gan and c.gan_weight > 0:
            g_loss = gan_generator_loss(self._discriminate(x, cond, generator))
            loss = loss + c.gan_weight * g_loss
            logs["gan_loss"] = g_loss.detach().item()
        logs["gen_grad_norm"] = self.update("student", loss, clip=clip)
        if self.ema is not None:
            self.ema.update(self.student)
        logs["loss"] = loss.detach().item()
        return logs

    def generator(self) -> Generator:
        student = self.ema.module if self.ema is not None else self.student
        return DenoiserGenerator(student, times=self.times, stochastic=True)


# ----------------------------------------------------------------------------------------------
# Validation helpers (shared with phased_dmd and disback)


def _positive(config, *names: str) -> None:
    for name in names:
        v = getattr(config, name)
        if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
            raise ValueError(f"{type(config).__name__}.{name} must be a positive number, got {v!r}")


def _check_betas(betas) -> None:
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")


def _check_t_range(t_min: float, t_max: float) -> None:
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")


def _check_ema(decay) -> None:
    if decay is not None and not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay must be None or in [0, 1), got {decay}")


def _check_student(config) -> None:
    """The guidance-conditioned and LoRA student fields of the DMD family's configs."""
    name = type(config).__name__
    check_guidance_range(config.guidance_range, f"{name}.guidance_range")
    if config.guidance_range is not None and config.guidance != 1.0:
        raise ValueError(f"{name}: set guidance (one scale) or guidance_range (a student for "
                         "every scale in it), not both")
    rank = config.student_lora_rank
    if rank is not None and not (isinstance(rank, int) and rank >= 1):
        raise ValueError(f"{name}.student_lora_rank must be None or a positive integer, got "
                         f"{rank!r}")


def real_score(teacher: Denoiser, config) -> Denoiser:
    """The teacher as the DMD family's real score: guided per example for a guidance-conditioned
    student, else at the config's one scale."""
    if config.guidance_range is not None:
        return GuidedTeacher(teacher)
    return teacher.with_guidance(config.guidance) if config.guidance != 1.0 else teacher


def dm_student(teacher: Denoiser, config, network: nn.Module | None = None) -> Denoiser:
    """The DMD family's student (LoRA and/or guidance-conditioned as the config says)."""
    return student_from_teacher(teacher, network, lora_rank=config.student_lora_rank,
                                guidance={} if config.guidance_range is not None else None)


def dm_fake(teacher: Denoiser, config) -> Denoiser:
    """The fake score: a full copy of the teacher, taking w as well when the student does (the
    student's distribution, which it models, depends on w)."""
    return student_from_teacher(
        teacher, guidance={} if config.guidance_range is not None else None)


def check_gan_fields(config) -> None:
    """The discriminator fields shared by DMD2Config and MSDConfig."""
    name = type(config).__name__
    if config.disc_head not in DISC_HEADS:
        raise ValueError(f"unknown {name}.disc_head {config.disc_head!r}; use one of {DISC_HEADS}")
    if config.disc_head == "conv" and config.disc_layers is not None:
        raise ValueError(f"{name}: disc_layers feed the MLP head; the conv head takes the UNet's "
                         "bottleneck")
    lo, hi = config.gan_t_range
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"{name}.gan_t_range must satisfy 0 <= lo < hi <= 1, got "
                         f"{config.gan_t_range}")
    if not config.sigma_min >= 0:
        raise ValueError(f"{name}.sigma_min must be >= 0, got {config.sigma_min}")


def discriminate(critic: FakeCritic, x0: Tensor, cond, generator, config, distiller) -> Tensor:
    """The critic's logits (B,) on x0 diffused (fresh noise) to t ~ U[config.gan_t_range], floored
    at config.sigma_min (DMD2 Sec. 4.3; the official code's diffusion GAN over all steps)."""
    lo, hi = config.gan_t_range
    t = floored_times(x0.shape[0], distiller.teacher.path, t_min=lo, t_max=hi,
                      sigma_min=config.sigma_min, generator=generator, device=x0.device)
    x_t = distiller.diffuse(x0, t, distiller.noise_like(x0, generator))
    return critic(x_t, t, cond)


def _check_times(times, name: str) -> None:
    ts = list(times)
    if not ts:
        raise ValueError(f"{name} must hold at least one time")
    decreasing = all(a > b for a, b in zip(ts[:-1], ts[1:], strict=True))
    if not all(0.0 < t <= 1.0 for t in ts) or not decreasing:
        raise ValueError(f"{name} must be strictly decreasing times in (0, 1], got {tuple(ts)}")


METHODS = {  # descriptions: onestep.core.method_registry
    "dmd": (DMDConfig, DMDDistiller, describe("dmd")),
    "dmd2": (DMD2Config, DMD2Distiller, describe("dmd2")),
}
