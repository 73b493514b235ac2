"""Phased DMD (Fan et al. 2025, "Phased DMD: Few-step Distribution Matching Distillation via
Score Matching within Subintervals").

The time range is split into phases 1 = tau_0 > tau_1 > ... > tau_K = 0. Expert k (one network
per phase, each initialised from the teacher: the paper's Mixture-of-Experts generator) takes one
step from tau_k to s = tau_{k+1}: its (x0, eps) prediction at x_{tau_k} gives the deterministic
Euler/DDIM step x_s = alpha_s x0 + sigma_s eps (x_s = x0 in the last phase). Phases are trained in
order (progressive distribution matching); the experts before k are frozen and produce expert k's
input by backward simulation from noise.

Phase k matches the distribution of x_s to the teacher's marginal p_s through its diffusions to
t in (s, 1), x_t = alpha_{t|s} x_s + sigma_{t|s} eps with alpha_{t|s} = alpha_t / alpha_s and
sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2 (the teacher's marginal at t > s is the
diffusion of p_s by the Markov property). The paper's phase-k generator gradient (Sec. 3.2) is
E[w_{t|s} (T(x_t) - F(x_t)) dG/dphi_k] with teacher and fake velocities T, F and
w_{t|s} = alpha_t alpha_{t|s} / (alpha_t sigma_t + sigma_t^2), i.e. alpha_{t|s} (s_fake - s_real)
on x_s for rectified flow (`weighting="score"`). Its scale alpha_{t|s} alpha_t / sigma_t^2 (in x0
units) spans about 1e5 over t in [0.02, 0.98]; the authors' training code (ModelTC's LightX2V,
`trainers/phased_dmd`) applies DMD's normalised gradient instead (Yin et al. 2024, Eq. 8):
(x0_fake - x0_real) / mean|x0_hat - x0_real| on the expert's x0 estimate x0_hat, with x0_fake,
x0_real the one-step x0 predictions at x_t. That is the default here (`weighting="dmd"`).

No clean samples exist for s > 0, so the fake score of phase k is fitted by score matching within
the subinterval: the conditional score of x_t given x_s is -eps / sigma_{t|s}, so the unbiased
regression target of the fake network (any prediction kind) is built from
    eps_target = sigma_t eps / sigma_{t|s},   x0_target = (x_t - sigma_t eps_target) / alpha_t,
whose conditional mean given x_t is the marginal (x0, eps) of the fake distribution at t (for
rectified flow, velocity = eps_target - x0_target is the paper's unbiased objective (Eq. 13),
((alpha_s^2 sigma_t + alpha_t sigma_s^2) / (alpha_s^2 sigma_{t|s})) eps - x_s / alpha_s).
The target's variance grows like 1/sigma_{t|s}^2 as t -> s; the paper clamps a 1/sigma_{t|s}^2
term, here each sample's squared error is weighted by (sigma_{t|s} / sigma_t)^2 in (0, 1], which
bounds it and, depending only on t, keeps the minimiser. With s = 0 it is ordinary denoising
score matching.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..convert import broadcast, from_x0_eps
from ..denoiser import Denoiser
from ..method_registry import describe
from .base import Distiller, Generator, split_batch, student_from_teacher
from .dmd import _check_betas, _check_times, _positive, sample_dm_times

__all__ = [
    "PhasedDMDConfig",
    "PhasedDMDDistiller",
    "PhasedGenerator",
    "subinterval_coefficients",
    "subinterval_target",
    "subinterval_denoising_loss",
    "subinterval_dm_loss",
    "METHODS",
]

WEIGHTINGS = ("dmd", "score")


def subinterval_coefficients(path, t: Tensor, s: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(alpha_t, sigma_t, alpha_{t|s}, sigma_{t|s}) for t (B,) > s: the transition
    x_t = alpha_{t|s} x_s + sigma_{t|s} eps of the path."""
    c_t, c_s = path.coefficients(t), path.coefficients(torch.full_like(t, float(s)))
    a_ts = c_t.alpha / c_s.alpha
    s_ts = (c_t.sigma**2 - a_ts**2 * c_s.sigma**2).clamp_min(1e-12).sqrt()
    return c_t.alpha, c_t.sigma, a_ts, s_ts


def subinterval_target(
    prediction: str, path, x_s: Tensor, s: float, t: Tensor, noise: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Unbiased subinterval regression pair from x_s (B, ...) at time s and t (B,) > s:
    x_t = alpha_{t|s} x_s + sigma_{t|s} noise and the target of a `prediction`-kind network built
    from eps_target = sigma_t noise / sigma_{t|s}, x0_target = (x_t - sigma_t eps_target) /
    alpha_t (E[target | x_t] is the marginal prediction at t). Returns (x_t, target, weight (B,)),
    weight = (sigma_{t|s} / sigma_t)^2."""
    alpha, sigma, a_ts, s_ts = subinterval_coefficients(path, t, s)
    x_t = broadcast(a_ts, x_s) * x_s + broadcast(s_ts, x_s) * noise
    eps_target = broadcast(sigma / s_ts, x_s) * noise
    x0_target = (x_t - broadcast(sigma, x_s) * eps_target) / broadcast(alpha, x_s)
    target = from_x0_eps(prediction, x0_target, eps_target, x_t, t, path)
    return x_t, target, (s_ts / sigma).pow(2)


def subinterval_denoising_loss(
    den: Denoiser,
    x_s: Tensor,
    s: float,
    *,
    generator=None,
    cond=None,
    t_min: float = 0.02,
    t_max: float = 0.98,
) -> tuple[Tensor, Tensor]:
    """Score matching within the subinterval (s, t_max] from samples x_s (B, ...) of time s
    (Phased DMD's unbiased objective, Eq. 13, in `den`'s own prediction kind):
    t ~ U[s + t_min, t_max], squared error to `subinterval_target` weighted by
    (sigma_{t|s} / sigma_t)^2.
    Returns (per-sample loss (B,), t)."""
    n = x_s.shape[0]
    lo = float(s) + t_min
    t = lo + (t_max - lo) * torch.rand(
        n, generator=generator, device=x_s.device, dtype=torch.float64
    )
    noise = torch.randn(x_s.shape, generator=generator, device=x_s.device, dtype=x_s.dtype)
    x_t, target, weight = subinterval_target(den.prediction, den.path, x_s, s, t, noise)
    err = (den(x_t, t, cond) - target).float().pow(2).flatten(1).mean(1)
    return weight.to(err) * err, t


def subinterval_dm_loss(
    x_s: Tensor,
    s: float,
    real: Denoiser,
    fake: Denoiser,
    *,
    x0_hat: Tensor,
    cond=None,
    generator=None,
    t_min: float = 0.02,
    t_max: float = 0.98,
    weighting: str = "dmd",
) -> tuple[Tensor, dict]:
    """Phase loss on generated x_s (B, ...) at time s with the expert's x0 estimate x0_hat (both
    carrying the expert's graph): t ~ U[s + t_min, t_max], x_t from the transition s -> t, and
      "dmd":   g = (x0_fake - x0_real) / mean|x0_hat - x0_real| on x0_hat (DMD Eq. 8's
               normalisation, as the authors' code applies it);
      "score": g = alpha_{t|s} (s_fake - s_real) = alpha_{t|s} alpha_t / sigma_t^2
               (x0_fake - x0_real) on x_s (the paper's w_{t|s}, Sec. 3.2);
    applied as 0.5 * ||y - stopgrad(y - g)||^2 with y = x0_hat or x_s."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; use one of {WEIGHTINGS}")
    path = real.path
    t = sample_dm_times(
        x_s.shape[0],
        path,
        t_min=float(s) + t_min,
        t_max=t_max,
        generator=generator,
        device=x_s.device,
    )
    alpha, sigma, a_ts, s_ts = subinterval_coefficients(path, t, s)
    noise = torch.randn(x_s.shape, generator=generator, device=x_s.device, dtype=x_s.dtype)
    with torch.no_grad():
        x_d = x_s.detach()
        x_t = broadcast(a_ts, x_d) * x_d + broadcast(s_ts, x_d) * noise
        x0_real = real.x0(x_t, t, cond)
        x0_fake = fake.x0(x_t, t, cond)
        if weighting == "score":
            grad = broadcast(a_ts * alpha / sigma**2, x_d) * (x0_fake - x0_real)
        else:
            norm = (x0_hat.detach() - x0_real).abs().flatten(1).mean(1).clamp_min(1e-6)
            grad = (x0_fake - x0_real) / broadcast(norm, x_d)
        grad = torch.nan_to_num(grad)
    y = x_s if weighting == "score" else x0_hat
    loss = 0.5 * F.mse_loss(y.float(), (y.detach() - grad).float())
    return loss, {
        "dm_loss": loss.detach().item(),
        "dm_grad": grad.float().pow(2).flatten(1).sum(1).sqrt().mean().item(),
    }


class PhasedGenerator(Generator):
    """The few-step Mixture-of-Experts student: expert k takes the deterministic step
    tau_k -> tau_{k+1} (Euler for rectified flow, DDIM for any path), so `nfe` = number of phases.
    `stochastic=True` re-noises with fresh noise instead."""

    def __init__(self, experts: list[Denoiser], times: list[float], *, stochastic: bool = False):
        super().__init__()
        if len(experts) != len(times):
            raise ValueError(f"{len(experts)} experts for {len(times)} phase start times")
        self.experts = nn.ModuleList(experts)
        self.times = [float(t) for t in times] + [0.0]
        self.stochastic = stochastic

    @property
    def nfe(self) -> int:
        return len(self.experts)

    def prior(self, noise: Tensor) -> Tensor:
        path = self.experts[0].path
        return broadcast(path.sigma(self.times[0]), noise) * noise

    def advance(self, k: int, x: Tensor, cond=None, generator=None) -> tuple[Tensor, Tensor]:
        """Expert k's step from x at tau_k: (x at tau_{k+1}, the expert's x0 estimate)."""
        expert = self.experts[k]
        x0, eps = expert.x0_eps(x, self.times[k], cond)
        nxt = self.times[k + 1]
        if nxt == 0.0:
            return x0, x0
        if self.stochastic:
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        c = expert.path.coefficients(nxt)
        return broadcast(c.alpha, x0) * x0 + broadcast(c.sigma, x0) * eps, x0

    def generate(self, noise: Tensor, cond=None, nfe: int | None = None, generator=None) -> Tensor:
        if nfe is not None and nfe != self.nfe:
            raise ValueError(
                f"this Phased DMD student takes one step per phase: nfe={self.nfe} (got nfe={nfe})"
            )
        x = self.prior(noise)
        for k in range(self.nfe):
            x, _ = self.advance(k, x, cond, generator)
        return x

    def forward(self, noise: Tensor, cond=None, nfe: int | None = None, generator=None) -> Tensor:
        return self.generate(noise, cond, nfe, generator)


@dataclass(frozen=True)
class PhasedDMDConfig:
    """Phased DMD (Fan et al. 2025). Toy scale (2-16-D, MLP teacher):
    `PhasedDMDConfig.toy_defaults()` with 2 phases x 1000 steps, batch 256; the student then
    samples with nfe = number of phases."""

    phase_times: tuple[float, ...] = (1.0, 0.5)
    """Start time of each phase, 1.0 first; phase k steps from phase_times[k] to the next (0 after
    the last). Two phases as for Wan2.2's two experts; the paper splits by SNR."""
    phase_steps: int = 1000
    """Generator updates of each phase before the next starts (progressive distribution
    matching); the last phase trains until the run ends."""
    lr: float = 1e-4
    """Expert learning rate (paper: 5e-5 on LoRA experts of 20-28B models)."""
    fake_lr: float = 1e-4
    """Fake score learning rate (paper: 4e-7, full parameters)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    fake_updates: int = 5
    """Fake score updates per generator update (paper: 5)."""
    t_min: float = 0.02
    """Margin above the phase's end s: t ~ U[s + t_min, t_max] (the paper samples t in (s, 1))."""
    t_max: float = 0.98
    """Largest noise level (DMD's 0.98 T)."""
    weighting: str = "dmd"
    """Generator gradient: "dmd" (DMD Eq. 8's per-sample normalisation on the expert's x0
    estimate, as the authors' code) or "score" (the paper's written w_{t|s}, alpha_{t|s} (s_fake -
    s_real) on x_s, whose scale spans ~1e5 over t and leans on `grad_clip`). See the module
    docstring."""
    stochastic: bool = False
    """Re-noise with fresh noise between experts instead of the deterministic Euler/DDIM step."""
    guidance: float = 1.0
    """Classifier-free guidance of the real score (conditional teachers)."""
    grad_clip: float = 10.0
    """Gradient-norm clip of both optimizers (0 or None: off)."""

    def validate(self) -> None:
        _positive(self, "lr", "fake_lr")
        _check_betas(self.betas)
        _check_times(self.phase_times, "PhasedDMDConfig.phase_times")
        if self.phase_steps < 1:
            raise ValueError(f"PhasedDMDConfig.phase_steps must be >= 1, got {self.phase_steps}")
        if self.fake_updates < 1:
            raise ValueError(f"PhasedDMDConfig.fake_updates must be >= 1, got {self.fake_updates}")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(
                f"need 0 <= t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}"
            )
        ends = list(self.phase_times[1:])
        if ends and max(ends) + self.t_min >= self.t_max:
            raise ValueError(
                f"phase boundary {max(ends)} + t_min must stay below t_max="
                f"{self.t_max} so each phase has noise levels to match"
            )
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; use one of {WEIGHTINGS}")
        if self.guidance < 0:
            raise ValueError(f"PhasedDMDConfig.guidance must be >= 0, got {self.guidance}")

    @classmethod
    def toy_defaults(cls, teacher=None, **overrides) -> PhasedDMDConfig:
        """Settings for 2-16-D toy data with an MLP teacher: 2 x 1000 steps, batch 256."""
        base = dict(lr=3e-4, fake_lr=3e-4, phase_steps=1000, fake_updates=2)
        base.update(overrides)
        return cls(**base)


class PhasedDMDDistiller(Distiller):
    """Phased DMD. Step `step` trains phase k = min(step // phase_steps, K - 1): `fake_updates`
    subinterval score matching updates of the fake score on fresh x_s samples, then one update of
    expert k. The fake score is re-initialised from the teacher (optimizer state cleared) when a
    phase starts, as in the paper; the phase it belongs to is kept in the checkpoint."""

    kind = "phased_dmd"

    def __init__(
        self,
        teacher: Denoiser,
        config: PhasedDMDConfig | None = None,
        *,
        student_network: nn.Module | None = None,
    ):
        config = PhasedDMDConfig() if config is None else config
        super().__init__(teacher, config)
        c = config
        self.real = teacher.with_guidance(c.guidance) if c.guidance != 1.0 else teacher
        experts = []
        for k in range(len(c.phase_times)):
            net = None if student_network is None else copy.deepcopy(student_network)
            expert = self.add_module(f"expert_{k}", student_from_teacher(teacher, net))
            self.add_optimizer(f"expert_{k}", expert.parameters(), lr=c.lr, betas=c.betas)
            experts.append(expert)
        self.fake = self.add_module("fake", student_from_teacher(teacher))
        self.add_optimizer("fake", self.fake.parameters(), lr=c.fake_lr, betas=c.betas)
        self.gen = PhasedGenerator(experts, list(c.phase_times), stochastic=c.stochastic)
        self.fake_phase = 0

    def extra_state(self) -> dict:
        return {"fake_phase": self.fake_phase}

    def load_extra_state(self, state: dict) -> None:
        self.fake_phase = int(state.get("fake_phase", 0))

    def phase(self, step: int) -> int:
        return min(step // self.config.phase_steps, len(self.config.phase_times) - 1)

    def _start_phase(self, k: int) -> None:
        """Re-initialise the fake score from the teacher for phase k (as the paper does)."""
        self.fake.model.load_state_dict(self.teacher.model.state_dict())
        self._optimizers["fake"].state.clear()
        self.fake_phase = k

    def _simulate(self, z: Tensor, k: int, cond, generator) -> Tensor:
        """x at tau_k: the frozen experts 0..k-1 from noise (backward simulation)."""
        with torch.no_grad():
            x = self.gen.prior(z)
            for j in range(k):
                x, _ = self.gen.advance(j, x, cond, generator)
        return x

    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]:
        c = self.config
        x_data, cond = split_batch(batch)
        k = self.phase(step)
        if k != self.fake_phase:
            self._start_phase(k)
        s = self.gen.times[k + 1]
        expert = self.gen.experts[k]
        expert.train()
        self.fake.train()
        clip = c.grad_clip or None
        logs: dict[str, float] = {"phase": float(k)}

        # 1. fake score: score matching within (s, 1) on fresh samples of phase k's output
        fake_sum = 0.0
        for _ in range(c.fake_updates):
            z = self.noise_like(x_data, generator)
            with torch.no_grad():
                x_s, _ = self.gen.advance(k, self._simulate(z, k, cond, generator), cond, generator)
            loss, _ = subinterval_denoising_loss(
                self.fake, x_s, s, generator=generator, cond=cond, t_min=c.t_min, t_max=c.t_max
            )
            loss = loss.mean()
            fake_sum += loss.detach().item()
            logs["fake_grad_norm"] = self.update("fake", loss, clip=clip)
        logs["fake_loss"] = fake_sum / c.fake_updates

        # 2. expert k: one step with gradient from the simulated input
        z = self.noise_like(x_data, generator)
        x_in = self._simulate(z, k, cond, generator)
        x_s, x0_hat = self.gen.advance(k, x_in, cond, generator)
        loss, dm_logs = subinterval_dm_loss(
            x_s,
            s,
            self.real,
            self.fake,
            x0_hat=x0_hat,
            cond=cond,
            generator=generator,
            t_min=c.t_min,
            t_max=c.t_max,
            weighting=c.weighting,
        )
        logs.update(dm_logs)
        logs["gen_grad_norm"] = self.update(f"expert_{k}", loss, clip=clip)
        logs["loss"] = loss.detach().item()
        return logs

    def generator(self) -> PhasedGenerator:
        return PhasedGenerator(
            list(self.gen.experts), list(self.config.phase_times), stochastic=self.config.stochastic
        )


METHODS = {  # descriptions: onestep.core.method_registry
    "phased_dmd": (PhasedDMDConfig, PhasedDMDDistiller, describe("phased_dmd")),
}
