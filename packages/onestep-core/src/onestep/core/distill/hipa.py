"""HiPA: High-frequency-Promoting Adaptation (Zhang & Hooi 2023, "HiPA: Enabling One-Step
Text-to-Image Diffusion Models via High-Frequency-Promoting Adaptation", arXiv 2311.18158).

The teacher stays frozen; low-rank adaptors (LoRA, Hu et al. 2021) on its layers are trained so
that the adapted teacher, queried ONCE at the start of the sampling grid, reproduces what the
frozen teacher's multi-step sampler makes from the same noise:

    y      = ODE_teacher(x_T)                     multi-step target (fixed pool, `make_pairs`)
    x_hat  = x0_{teacher + LoRA}(x_T, T)           one step at t = T
    L      = || x_hat - y ||^2  +  lambda * L_hf(x_hat, y)

The paper's adaptation loss is a spatial perceptual term plus a "high-frequency promoted" term
that compares the high frequencies of the two images, extracted with the Fourier transform and
with edge detection, because a one-step sample keeps the low frequencies of the multi-step one and
lacks its high ones (the paper's analysis). Here `high_frequency_loss` is that term: the squared
error of the Fourier high-pass components (`high_pass`) plus that of the Sobel edge maps
(`sobel_edges`). What we could not read in the paper's text and chose ourselves, each noted where
it is set: the high-pass radius, the squared (not L1) norms, lambda, the LoRA rank, the teacher's
sampler and step count. The spatial term is the pixel mean squared error: the paper's perceptual
network (LPIPS-like) needs downloaded weights, which core never uses.

The high-frequency term is defined for images (B, C, H, W); on any other data shape (2- to 16-D
toy vectors) HiPA is the spatial regression alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ..denoiser import Denoiser
from ..method_registry import describe
from ..nn.lora import apply_lora, lora_parameters, merge_lora
from ..sampling import resolve_solver, sample
from .base import DenoiserGenerator, Distiller, Generator, frozen_copy, split_batch
from .dmd import _check_betas, _cond_to, _index_cond, _positive

__all__ = ["HiPAConfig", "HiPADistiller", "high_pass", "sobel_edges", "high_frequency_loss",
           "make_pairs", "default_t_start", "METHODS"]

SD_LAST_SIGMA_VE = 14.6
"""sigma/alpha at Stable Diffusion's last training step (alpha_bar_999 = 0.0047, scaled-linear
betas 0.00085-0.012), the step HiPA's one-step model is queried at."""


# ----------------------------------------------------------------------------------------------
# The high-frequency promoted loss


def high_pass(x: Tensor, cutoff: float = 0.5) -> Tensor:
    """The part of images x (..., H, W) above a radial frequency: the inverse 2-D FFT of the
    spectrum with every frequency of radius <= cutoff removed, the radius measured in units of
    the Nyquist frequency per axis (sqrt(fy^2 + fx^2) / 0.5 cycles per pixel). A constant image
    has none (its one frequency is 0); a +-1 checkerboard is all high frequency (radius sqrt 2).
    `x - high_pass(x)` is the low-pass part."""
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, device=x.device, dtype=torch.float64) / 0.5
    fx = torch.fft.fftfreq(w, device=x.device, dtype=torch.float64) / 0.5
    keep = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt() > cutoff  # (H, W), symmetric in +-f
    spec = torch.fft.fft2(x.float())
    return torch.fft.ifft2(spec * keep.to(spec.real.dtype)).real.to(x.dtype)


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def sobel_edges(x: Tensor) -> Tensor:
    """Horizontal and vertical Sobel responses of images x (B, C, H, W) -> (B, 2C, H-2, W-2),
    each channel alone, where the 3x3 kernel fits (no padding, so the border adds no edge of
    its own); scaled by 1/8 so a ramp of slope 1 per pixel gives 1. It is zero on a constant
    image and (its [1, 2, 1] smoothing cancels the Nyquist frequency) on a checkerboard, which
    the Fourier term catches instead."""
    b, c, h, w = x.shape
    k = _SOBEL_X.to(device=x.device, dtype=x.dtype)
    weight = torch.stack([k, k.T])[:, None]  # (2, 1, 3, 3)
    if h < 3 or w < 3:
        raise ValueError(f"sobel_edges needs images of at least 3x3 pixels, got {h}x{w}")
    return F.conv2d(x.reshape(b * c, 1, h, w), weight).reshape(b, 2 * c, h - 2, w - 2)


def high_frequency_loss(x: Tensor, target: Tensor, *, cutoff: float = 0.5,
                        edge_weight: float = 1.0) -> Tensor:
    """HiPA's high-frequency promoted term for images (B, C, H, W), per sample (B,):
    mean (high_pass(x) - high_pass(y))^2 + edge_weight * mean (sobel(x) - sobel(y))^2.
    Both are linear filters, so the term depends only on x - y."""
    if x.ndim != 4 or x.shape != target.shape:
        raise ValueError(f"high_frequency_loss takes two image batches (B, C, H, W) of one "
                         f"shape, got {tuple(x.shape)} and {tuple(target.shape)}")
    d = x.float() - target.float()
    loss = high_pass(d, cutoff).pow(2).flatten(1).mean(1)
    if edge_weight and min(x.shape[-2:]) >= 3:
        loss = loss + edge_weight * sobel_edges(d).pow(2).flatten(1).mean(1)
    return loss


# ----------------------------------------------------------------------------------------------
# Teacher targets


def default_t_start(teacher: Denoiser) -> float:
    """Where the one-step model is queried: t = 1 (HiPA queries the last timestep, pure noise),
    except for eps/score teachers on paths with alpha(1) ~ 0, whose x0 = (x - sigma eps) / alpha
    turns any eps error into a huge x0 error there: they start where sigma/alpha is Stable
    Diffusion's at its last step (SD_LAST_SIGMA_VE), as the paper's SD teachers do."""
    path = teacher.path
    one = torch.tensor(1.0, dtype=torch.float64)
    if teacher.prediction in ("eps", "score") and path.sigma_ve(one).item() > SD_LAST_SIGMA_VE:
        return float(path.t_from_sigma_ve(torch.tensor(SD_LAST_SIGMA_VE,
                                                       dtype=torch.float64)).item())
    return 1.0


@torch.no_grad()
def make_pairs(teacher: Denoiser, x_like: Tensor, cond, n: int, *, nfe: int, solver: str,
               t_start: float, generator=None, chunk: int = 512) -> dict:
    """n (noise, target) pairs: the teacher's deterministic `solver` with `nfe` evaluations from
    x = sigma(t_start) noise at t_start, the very input the one-step model sees. Noise is shaped
    like x_like[0]; conditions are drawn with replacement from the batch's `cond`."""
    noise = torch.randn((n, *x_like.shape[1:]), generator=generator, device=x_like.device,
                        dtype=x_like.dtype)
    pair_cond = None
    if cond is not None:
        idx = torch.randint(0, x_like.shape[0], (n,), generator=generator, device=x_like.device)
        pair_cond = _index_cond(cond, idx)
    targets = []
    for i in range(0, n, chunk):
        c = _index_cond(pair_cond, torch.arange(i, min(n, i + chunk), device=x_like.device))
        targets.append(sample(teacher, noise[i:i + chunk], nfe=nfe, solver=solver, cond=c,
                              t_max=t_start))
    out = {"noise": noise, "target": torch.cat(targets)}
    if pair_cond is not None:
        out["cond"] = pair_cond
    return out


# ----------------------------------------------------------------------------------------------
# Config and distiller


@dataclass(frozen=True)
class HiPAConfig:
    """HiPA (Zhang & Hooi 2023). LoRA on the frozen teacher, trained on (noise, multi-step
    teacher sample) pairs with the spatial + high-frequency loss. Toy scale: `toy_defaults()`,
    1500 steps, batch 256 (the batch gives only the shape and the conditions: no data needed)."""

    lr: float = 1e-4
    """AdamW learning rate of the LoRA factors (our choice; LoRA factors take higher rates than
    full fine-tuning)."""
    betas: tuple[float, float] = (0.9, 0.999)
    rank: int = 16
    """LoRA rank on every Linear / Conv2d outside the time and condition embeddings. The paper
    trains 3.3M adaptor parameters on Stable Diffusion (abstract); the rank is our choice."""
    lora_alpha: float | None = None
    """LoRA alpha (scale alpha / rank); None: alpha = rank."""
    hf_weight: float = 1.0
    """lambda, the weight of the high-frequency promoted term (images only; our choice)."""
    hf_cutoff: float = 0.5
    """Radius above which a frequency counts as high, in units of the Nyquist frequency
    (`high_pass`; our choice: the upper half of the band)."""
    edge_weight: float = 1.0
    """Weight of the Sobel edge-map error inside the high-frequency term (0: Fourier only)."""
    num_pairs: int = 2048
    """(noise, target) pairs made by the teacher at the first step and kept in the checkpoint,
    as the paper trains on a set of multi-step teacher outputs."""
    pair_nfe: int = 50
    """Teacher network evaluations per target (our choice: 50, as Stable Diffusion is usually
    sampled; the paper's targets are its teacher's own multi-step samples)."""
    pair_solver: str = "dpm++2m"
    """Deterministic core solver that makes the targets."""
    pair_batch: int | None = None
    """Pairs per update; None: the batch size."""
    t_start: float | None = None
    """Time of the one step (and of the targets' start); None: `default_t_start` (1, or SD's
    last-step noise level for eps/score teachers)."""
    guidance: float = 1.0
    """Classifier-free guidance of the teacher's targets (the student learns the guided sampler
    in one unguided step), for conditional teachers."""
    grad_clip: float | None = 1.0
    """Gradient-norm clip (None: off)."""

    def validate(self) -> None:
        _positive(self, "lr", "hf_cutoff")
        _check_betas(self.betas)
        for name in ("rank", "num_pairs", "pair_nfe"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"HiPAConfig.{name} must be a positive integer, got {v!r}")
        for name in ("hf_weight", "edge_weight", "guidance"):
            if getattr(self, name) < 0:
                raise ValueError(f"HiPAConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.pair_batch is not None and self.pair_batch < 1:
            raise ValueError(f"HiPAConfig.pair_batch must be >= 1 or None, got {self.pair_batch}")
        if self.t_start is not None and not 0.0 < self.t_start <= 1.0:
            raise ValueError(f"HiPAConfig.t_start must be in (0, 1], got {self.t_start}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"HiPAConfig.grad_clip must be positive or None, got {self.grad_clip}")
        resolve_solver(self.pair_solver)

    @classmethod
    def toy_defaults(cls, teacher=None, **overrides) -> HiPAConfig:
        """Settings for 2- to 16-D toy data with an MLP teacher (and tiny image UNets): lr 1e-3,
        1500 steps at batch 256. Measured on the 8-gaussians rectified-flow MLP teacher: the
        one-step MSE to its 50-NFE samples went 0.97 (the bare teacher) -> 0.009 at 300 steps ->
        0.0035 at 1500, SW2 to the data 0.97 -> 0.064 (the 50-NFE teacher: 0.047). On the 8x8
        digits UNet (TINY_RECIPE), 600 steps at batch 64: one-step FD 17.8 -> 3.37 (35-NFE
        teacher 2.75; 3.44 with hf_weight 0, within one seed's noise)."""
        return replace(cls(lr=1e-3), **overrides)


class HiPADistiller(Distiller):
    """HiPA: the student is the teacher's network with trainable LoRA factors (its base weights
    frozen and never updated), one step from t_start. Pairs are made at the first step from the
    task generator (conditions from the first batch) and kept in the checkpoint's extra state;
    `pairs={"noise", "target"[, "cond"]}` supplies your own. `generator()` merges the factors
    into a plain copy of the teacher's network, so the student saves and loads as a Denoiser."""

    kind = "hipa"

    def __init__(self, teacher: Denoiser, config: HiPAConfig | None = None, *,
                 pairs: dict | None = None):
        config = HiPAConfig() if config is None else config
        super().__init__(teacher, config)
        c = config
        net = frozen_copy(teacher.model)
        names = apply_lora(net, c.rank, c.lora_alpha, include=lambda name: "embed" not in name)
        if not names:
            raise ValueError("HiPA: the teacher's network has no Linear or Conv2d layer outside "
                             "its embeddings to put LoRA on")
        net.train()
        self.student = self.add_module("student", Denoiser(
            net, teacher.path, prediction=teacher.prediction, time_input=teacher.time_input,
            null_cond=teacher.null_cond))
        self.add_optimizer("lora", lora_parameters(net), lr=c.lr, betas=c.betas)
        self.t_start = default_t_start(teacher) if c.t_start is None else float(c.t_start)
        self.real = teacher.with_guidance(c.guidance) if c.guidance != 1.0 else teacher
        self.pairs = dict(pairs) if pairs is not None else None

    def extra_state(self) -> dict:
        return {"pairs": self.pairs} if self.pairs is not None else {}

    def load_extra_state(self, state: dict) -> None:
        if "pairs" in state:
            self.pairs = state["pairs"]

    def _pair_batch(self, x: Tensor, cond, n: int, generator):
        c = self.config
        if self.pairs is None:
            self.pairs = make_pairs(self.real, x, cond, c.num_pairs, nfe=c.pair_nfe,
                                    solver=c.pair_solver, t_start=self.t_start,
                                    generator=generator)
        total = self.pairs["noise"].shape[0]
        idx = torch.randint(0, total, (n,), generator=generator, device=x.device)
        idx = idx.to(self.pairs["noise"].device)
        z = self.pairs["noise"][idx].to(x.device)
        y = self.pairs["target"][idx].to(x.device)
        return z, y, _cond_to(_index_cond(self.pairs.get("cond"), idx), x.device)

    def one_step(self, denoiser: Denoiser, noise: Tensor, cond=None) -> Tensor:
        """x0 of `denoiser` at t_start from x = sigma(t_start) noise (the sampler's start)."""
        sigma = denoiser.path.coefficients(self.t_start).sigma
        return denoiser.x0(sigma.to(noise.dtype).item() * noise, self.t_start, cond)

    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]:
        c = self.config
        x_data, cond = split_batch(batch)
        z, y, pc = self._pair_batch(x_data, cond, c.pair_batch or x_data.shape[0], generator)
        self.student.train()
        x_hat = self.one_step(self.student, z, pc)
        # 1. spatial term: pixel mean squared error to the multi-step target
        spatial = (x_hat.float() - y.float()).pow(2).flatten(1).mean(1).mean()
        loss, logs = spatial, {"spatial_loss": spatial.detach().item()}
        # 2. high-frequency promoted term (images only)
        if c.hf_weight > 0 and x_hat.ndim == 4:
            hf = high_frequency_loss(x_hat, y, cutoff=c.hf_cutoff,
                                     edge_weight=c.edge_weight).mean()
            loss = loss + c.hf_weight * hf
            logs["hf_loss"] = hf.detach().item()
        logs["grad_norm"] = self.update("lora", loss, clip=c.grad_clip)
        logs["loss"] = loss.detach().item()
        return logs

    def generator(self) -> Generator:
        """One step from t_start with the LoRA factors merged into a copy of the network."""
        net = copy.deepcopy(self.student.model)
        merge_lora(net)
        net.eval().requires_grad_(False)
        den = Denoiser(net, self.teacher.path, prediction=self.teacher.prediction,
                       time_input=self.teacher.time_input, null_cond=self.teacher.null_cond)
        return DenoiserGenerator(den, t_start=self.t_start, times=[self.t_start],
                                 stochastic=False)


METHODS = {  # descriptions: onestep.core.method_registry
    "hipa": (HiPAConfig, HiPADistiller, describe("hipa")),
}
