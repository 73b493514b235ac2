"""MeanFlow (Geng et al. 2025, "Mean Flows for One-step Generative Modeling"), trained from data
(the paper's from-scratch one-step model, the default) or distilled from a teacher (an option).

On the rectified-flow path z_t = (1 - t) x + t eps (t=0 data, t=1 noise, as in the paper) the
average velocity over [r, t] is u(z_t, r, t) = 1/(t - r) int_r^t v(z_s, s) ds (Eq. 3), so that
z_r = z_t - (t - r) u(z_t, r, t), and one step z_0 = z_1 - u(z_1, 0, 1) generates. Differentiating
(t - r) u = int_r^t v ds in t gives the MeanFlow identity (Eq. 6)
    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),
with the total derivative d/dt u = v dz u + dt u (Eq. 8), a Jacobian-vector product of
u_theta(z, r, t) along the tangent (v, 0, 1) (Alg. 1). The network regresses the stop-gradient
target u_tgt = v - (t - r) sg(JVP) (Eq. 9-10) with the adaptive weight w = sg(1 / (||delta||^2
+ c)^p), p = 1 (Sec. 4.3 and Table 1e), ||delta||^2 the squared L2 norm summed over all data
dimensions as in the official code (a per-dimension mean would multiply c by the dimension).
(r, t): two logit-normal(-0.4, 1) draws sorted so r <= t, then r = t for all but
`ratio_r_neq_t` = 25% of the batch (Table 1a, 1d).

`mode` picks v. "data" (the default, the paper's training): the conditional velocity eps - x, and
the student is a fresh network of the teacher's architecture, so the teacher gives only the
architecture and the path. "teacher" (distillation, not in the paper): the teacher's velocity at
(z_t, t), a lower-variance target that distils its flow (with its classifier-free guidance if the
teacher Denoiser has any), and the student starts as a copy of the teacher
(`MeanFlowConfig.init_from_teacher`).

The network takes two times through `TwoTimeNet`: the core networks (MLP, UNet, DiT) read their
time only through their `time_embed` module, so the wrapper swaps that module for one that
embeds t with the original embedding and adds a second, zero-initialised embedding of t - r
(the paper's (t, t - r) conditioning, Table 1c). In "teacher" mode the student starts as a copy
of the teacher's network with all its weights, in "data" mode as a fresh network. By default
both embeddings read t in [0, 1] at sinusoid scale 1 (`time_scale`, as SiT/MeanFlow networks
do) rather than the teacher's usual 1000 t: the JVP differentiates the network in t, and a 1000
t embedding makes that derivative mostly high-frequency wiggle (see
`MeanFlowConfig.time_scale`). With `time_scale=None` the teacher's embedding is kept and, the
gap embedding starting at zero, u(z, r, t) = v_teacher(z, t) at initialisation for every r.

A teacher on another path (EDM, VP) is read on the rectified-flow path through `rectified_view`
(the same log-SNR, the input rescaled), and the student is a `TwoTimeNet` around a copy of the
network inside its wrapper (EDMPrecond's UNet) with the [0, 1] time embedding: it starts from
the teacher's weights but not from its function (the wrapper's output was another kind).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..convert import as_batch_time, broadcast, convert
from ..denoiser import Denoiser
from ..method_registry import describe
from ..nn import TimeEmbed, build_network, network_name
from ..paths import RectifiedFlow
from .base import Distiller, Generator, check_decay_steps, split_batch, validate_config

__all__ = [
    "MeanFlowConfig",
    "MeanFlowDistiller",
    "MeanFlowModel",
    "MeanFlowGenerator",
    "TwoTimeNet",
    "meanflow_loss",
    "meanflow_target",
    "rectified_view",
    "total_derivative",
    "sample_two_times",
    "METHODS",
]

MODES = ("data", "teacher")
TIME_SAMPLERS = ("logit_normal", "uniform")
JVP_METHODS = ("func", "forward_ad", "double_backward")


@dataclass(frozen=True)
class MeanFlowConfig:
    """MeanFlow (Geng et al. 2025). Toy scale (2-16-D, MLP teacher): `toy_defaults()`, 9000
    steps at batch 256."""

    mode: str = "data"
    """Instantaneous velocity v in the target: "data" (the conditional velocity eps - x, the
    paper's training from data, Eq. 9-10 and Alg. 1: the default) or "teacher" (distillation:
    the teacher's velocity at (z_t, t), read on the rectified-flow path by `rectified_view`)."""
    init_from_teacher: bool | None = None
    """Start the student from the teacher network's weights (True) or from a fresh network of
    its architecture (False: the paper trains from scratch). None: from the teacher in
    "teacher" mode, fresh in "data" mode."""
    ratio_r_neq_t: float = 0.25
    """Fraction of samples with r != t (Table 1a: 25% is best; 0% is plain flow matching)."""
    time_sampler: str = "logit_normal"
    """Distribution of both time draws: "logit_normal" (Table 1d best: lognorm(-0.4, 1.0)) or
    "uniform"."""
    time_mean: float = -0.4
    """Logit-normal mean (Table 1d)."""
    time_std: float = 1.0
    """Logit-normal std (Table 1d)."""
    weight_p: float = 1.0
    """Adaptive loss weight power p in w = 1 / (||delta||^2 + c)^p (Sec. 4.3; Table 1e: p = 1
    best; p = 0 is the plain squared L2). ||delta||^2 is the per-sample squared L2 norm summed
    over all dimensions, as in the official code (JAX and PyTorch)."""
    weight_c: float = 1e-3
    """c in the adaptive weight (Sec. 4.3: "a small constant, e.g. 1e-3"; the official PyTorch
    CIFAR-10 code uses 1e-3, the JAX ImageNet code 1e-2). It is compared with the summed
    squared error, so it does not grow with the data dimension."""
    time_scale: float | None = 1.0
    """Sinusoidal scale of the student's time embeddings, fed t and t - r in [0, 1]. The copied
    teacher network keeps all its weights, but a scale of 1 (SiT/MeanFlow feed t in [0, 1] to
    the embedding) makes u smooth in t: with the usual 1000 t embedding the network wiggles at
    time scales of 1e-3, its t-derivative is dominated by the wiggle and the JVP target is
    noise (the time-embedding issue of JVP-trained models, Lu & Song 2024, sCM). None keeps
    the teacher's embedding and time input exactly (u(z, t, t) = teacher velocity at init),
    which on the toy teacher trains far slower (1-step SW2 0.66 vs 0.09 after 800 steps)."""
    jvp: str = "func"
    """How d/dt u is computed: "func" (torch.func.jvp, Alg. 1), "forward_ad", or
    "double_backward" (same value from two reverse passes: ~3x faster for small MLPs on CPU)."""
    lr: float = 1e-3
    """Adam learning rate (the paper: 1e-4 for DiTs on ImageNet; 1e-3 suits toy MLPs)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam betas (the paper's ImageNet configuration: (0.9, 0.95))."""
    warmup: int = 0
    """Linear LR warm-up steps (then constant, or the cosine decay of `lr_decay_steps`)."""
    lr_decay_steps: int | None = None
    """Cosine-decay the learning rate to 0 over this many steps (set it to the Trainer's
    steps); None: constant."""
    clip: float = 1.0
    """Gradient-norm clipping (0 disables)."""
    ema_decay: float | None = None
    """EMA of the student for `generator()` (the paper: 0.9999 over 100k+ steps); None: no EMA,
    right for runs of a few thousand steps."""

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"MeanFlowConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.init_from_teacher not in (None, True, False):
            raise ValueError(f"MeanFlowConfig.init_from_teacher must be None, True or False, got "
                             f"{self.init_from_teacher!r}")
        if not 0.0 <= self.ratio_r_neq_t <= 1.0:
            raise ValueError(
                f"MeanFlowConfig.ratio_r_neq_t must be in [0, 1], got {self.ratio_r_neq_t}"
            )
        if self.time_sampler not in TIME_SAMPLERS:
            raise ValueError(
                f"MeanFlowConfig.time_sampler must be one of {TIME_SAMPLERS}, got "
                f"{self.time_sampler!r}"
            )
        if not self.time_std > 0:
            raise ValueError(f"MeanFlowConfig.time_std must be positive, got {self.time_std}")
        if self.weight_p < 0 or not self.weight_c > 0:
            raise ValueError(
                f"MeanFlowConfig needs weight_p >= 0 and weight_c > 0, got "
                f"{self.weight_p}, {self.weight_c}"
            )
        if self.time_scale is not None and not self.time_scale > 0:
            raise ValueError(
                f"MeanFlowConfig.time_scale must be positive or None, got {self.time_scale}"
            )
        if self.jvp not in JVP_METHODS:
            raise ValueError(f"MeanFlowConfig.jvp must be one of {JVP_METHODS}, got {self.jvp!r}")
        if not self.lr > 0:
            raise ValueError(f"MeanFlowConfig.lr must be positive, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(
                f"MeanFlowConfig.betas must be two numbers in [0, 1), got {self.betas}"
            )
        check_decay_steps(self.lr_decay_steps)
        if self.warmup < 0 or self.clip < 0:
            raise ValueError(
                f"MeanFlowConfig.warmup and clip must be >= 0, got {self.warmup}, {self.clip}"
            )
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(
                f"MeanFlowConfig.ema_decay must be in [0, 1) or None, got {self.ema_decay}"
            )

    @classmethod
    def toy_defaults(cls, teacher=None, **overrides) -> MeanFlowConfig:
        """Settings for 2-16-D toy data and an MLP teacher: 9000 steps at batch 256, with
        the double-backward JVP (same values, ~3x faster than torch.func.jvp for small MLPs on
        CPU). The mode stays the paper's training from data, which at this budget is far from
        the distilled student: checkerboard, 3000 steps, one seed, one-step sliced W2 over the
        50-NFE teacher's 4.98x from data (4.42x from data starting at the teacher's weights)
        against 1.67x distilled (mode="teacher", before the adaptive weight summed over
        dimensions, see `weight_p`; 1.74x after, one seed). The other settings were measured on
        the one-step distillation benchmark in "teacher" mode (checkerboard / gmm_8d, one run
        each, 3000 steps unless noted):

        - ratio_r_neq_t=0.75: the paper's 25% r != t (Table 1a) is for training from data,
          where the r = t samples (plain flow matching) must also teach the instantaneous
          velocity. A distilled student starts as the teacher, whose velocity it already
          matches, and its one-step map u(z, 0, 1) is learned only from r != t samples:
          25% gives 1.9x / 3.5x, 50% 2.4x / 2.7x, 75% 3.1x / 1.7x (without an EMA).
        - ema_decay=0.995: the learning rate stays constant, and with 75% r != t the last
          iterate is noisy. An EMA over ~200 steps gives 1.4x / 1.9x (the paper also samples
          an EMA, 0.9999 over far longer runs).
        - lr_decay_steps=9000: 9000 steps with the learning rate cosine-decayed to 0. The
          one-step map is the last thing learned: 3000 steps with the decay gave 1.5x / 1.7x,
          6000 steps - / 1.5x, 9000 steps 1.34x / 1.40x (2 NFE: 1.21x / 1.15x), about 8 CPU
          minutes on one thread."""
        return replace(
            cls(jvp="double_backward", ratio_r_neq_t=0.75, ema_decay=0.995, lr_decay_steps=9000),
            **overrides,
        )


# ----------------------------------------------------------------------------------------------
# The two-time network


class _TwoTimeEmbed(nn.Module):
    """Replaces a network's `time_embed`: (B, 2) times (t, t - r) -> embed(t) + gap(t - r)."""

    def __init__(self, time: TimeEmbed):
        super().__init__()
        self.time = time
        sin = time.sinusoid
        self.gap = TimeEmbed(sin.dim, time.out_dim, sin.scale)
        self.out_dim = time.out_dim
        nn.init.zeros_(self.gap.mlp[-1].weight)
        nn.init.zeros_(self.gap.mlp[-1].bias)

    def forward(self, t, batch: int | None = None) -> Tensor:
        if torch.is_tensor(t) and t.ndim == 2 and t.shape[-1] == 2:
            return self.time(t[:, 0], batch) + self.gap(t[:, 1], batch)
        return self.time(t, batch)  # a single time: r = t


class TwoTimeNet(nn.Module):
    """`net(x, t, r, cond)` from a core network `net(x, t, cond)` whose time enters only through
    its `time_embed` (MLP, UNet, DiT): t goes through the original embedding, t - r through a
    second, zero-initialised one added to it (MeanFlow's (t, t - r) conditioning, Table 1c).
    With the gap embedding at zero the output is `net(x, t, cond)` for every r.

    `time_scale`: None keeps the network's sinusoidal scale (its times are the teacher's network
    times); a number sets both embeddings' scale, and the times passed are then t in [0, 1]
    (`MeanFlowModel` does this). `net` is modified in place: pass a copy."""

    def __init__(self, net: nn.Module, time_scale: float | None = None):
        super().__init__()
        embed = getattr(net, "time_embed", None)
        if not isinstance(embed, TimeEmbed | _TwoTimeEmbed):
            raise ValueError(
                f"TwoTimeNet needs a network whose time enters through a "
                f"`time_embed` TimeEmbed (onestep MLP, UNet, DiT); got "
                f"{type(net).__name__}. Pass a student_network taking "
                f"(x, t, r, cond) instead."
            )
        if isinstance(embed, TimeEmbed):
            embed = net.time_embed = _TwoTimeEmbed(embed)
        if time_scale is not None:
            embed.time.sinusoid.scale = float(time_scale)
            embed.gap.sinusoid.scale = float(time_scale)
        self.time_scale = None if time_scale is None else float(time_scale)
        self.net = net

    def forward(self, x: Tensor, t: Tensor, r: Tensor, cond=None) -> Tensor:
        tt = torch.stack([t, t - r], dim=-1)  # (B, 2)
        return self.net(x, tt) if cond is None else self.net(x, tt, cond)


class _RectifiedView(nn.Module):
    """A teacher on any path as a velocity network on the rectified-flow path (B,) t in [0, 1]:
    z_t = (1 - t) x + t eps, rescaled by alpha_s / (1 - t), is the teacher's x_s at the time s
    with the same log-SNR (sigma_s / alpha_s = t / (1 - t)); the output is eps - x0 from the
    teacher's (x0, eps) there. Times beyond the teacher's largest noise level (EDM's sigma_max
    = 80: t > 80/81) are read at that level."""

    def __init__(self, teacher: Denoiser):
        super().__init__()
        self.teacher = teacher
        top = float(teacher.path.sigma_ve(1.0))
        self.t_max = top / (1.0 + top) if top < float("inf") else 1.0 - 1e-6

    def forward(self, z: Tensor, t: Tensor, cond=None) -> Tensor:
        t = as_batch_time(t, z).to(torch.float64).clamp(1e-6, self.t_max)
        s = self.teacher.path.t_from_sigma_ve(t / (1.0 - t))
        x_s = (broadcast(self.teacher.path.alpha(s) / (1.0 - t), z) * z).to(z.dtype)
        x0, eps = self.teacher.x0_eps(x_s, s, cond)
        return eps - x0


def rectified_view(teacher: Denoiser) -> Denoiser:
    """`teacher` as a Denoiser on the rectified-flow path (itself when it is on one already):
    a change of variables, not an approximation, within the teacher's noise range."""
    if isinstance(teacher.path, RectifiedFlow):
        return teacher
    return Denoiser(_RectifiedView(teacher), RectifiedFlow(), prediction="velocity",
                    time_input="t", null_cond=teacher.null_cond)


def _fresh(model: nn.Module) -> nn.Module:
    """A newly initialised network of `model`'s architecture: rebuilt from its registry name and
    `config`, else a copy with every submodule's `reset_parameters()` called."""
    try:
        return build_network(network_name(model), model.config)
    except (ValueError, AttributeError, TypeError):
        net = copy.deepcopy(model)
        for m in net.modules():
            if m is not net and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        return net


def _time_network(model: nn.Module) -> nn.Module:
    """The network whose `time_embed` reads the time: `model`, or the one inside a wrapper's
    `net` (EDMPrecond)."""
    net = model
    while not hasattr(net, "time_embed") and isinstance(getattr(net, "net", None), nn.Module):
        net = net.net
    return net


class MeanFlowModel(nn.Module):
    """u_theta(z, r, t): a two-time network (`TwoTimeNet` or any `net(x, t, r, cond)`) on the
    rectified-flow path. The network sees t and r in [0, 1] when it has its own `time_scale`,
    else the teacher's network times (`Denoiser.network_time`); its output is read as the
    teacher's prediction kind converted to a velocity at t (the identity for velocity
    networks), so an unchanged copy of the teacher gives u(z, r, t) = v(z, t)."""

    def __init__(self, net: nn.Module, reference: Denoiser):
        super().__init__()
        if not isinstance(reference.path, RectifiedFlow):
            raise ValueError(
                f"MeanFlow is written for the rectified-flow path "
                f"(z_t = (1-t) x + t eps); the teacher uses {reference.path!r}"
            )
        self.net = net
        self.path = reference.path
        self.prediction = reference.prediction
        own = getattr(net, "time_scale", None) is not None
        self._time = Denoiser(
            nn.Identity(),
            reference.path,
            prediction=reference.prediction,
            time_input="t" if own else reference.time_input,
        )

    def forward(self, z: Tensor, r, t, cond=None) -> Tensor:
        t = as_batch_time(t, z) if not torch.is_tensor(t) or t.ndim == 0 else t
        r = as_batch_time(r, z) if not torch.is_tensor(r) or r.ndim == 0 else r
        t_net = self._time.network_time(t).to(z.dtype)
        r_net = self._time.network_time(r).to(z.dtype)
        out = self.net(z, t_net, r_net, cond)
        if self.prediction == "velocity":
            return out
        return convert(out, self.prediction, "velocity", z, t, self.path)


class MeanFlowGenerator(Generator):
    """Few-step MeanFlow sampling: z_r = z_t - (t - r) u(z_t, r, t) on nfe equal steps from
    t = 1 to 0 (one step: z_0 = z_1 - u(z_1, 0, 1))."""

    def __init__(self, model: MeanFlowModel):
        super().__init__()
        self.model = model

    def generate(self, noise: Tensor, cond=None, nfe: int = 1, generator=None) -> Tensor:
        if nfe < 1:
            raise ValueError(f"nfe must be at least 1, got {nfe}")
        times = torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64).tolist()
        z = noise
        for t, r in zip(times[:-1], times[1:], strict=True):
            u = self.model(z, as_batch_time(r, z), as_batch_time(t, z), cond)
            z = z - (t - r) * u
        return z


# ----------------------------------------------------------------------------------------------
# Loss


def sample_two_times(
    n: int,
    *,
    ratio: float = 0.25,
    sampler: str = "logit_normal",
    mean: float = -0.4,
    std: float = 1.0,
    generator=None,
    device=None,
) -> tuple[Tensor, Tensor]:
    """(r, t), float64 (n,): two independent draws sorted so r <= t, then r = t for all but a
    `ratio` fraction of the samples (Geng et al. 2025, Sec. 4.3 and Table 1a/1d)."""

    def draw():
        if sampler == "uniform":
            return torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        if sampler == "logit_normal":
            z = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
            return torch.sigmoid(mean + std * z)
        raise ValueError(f"unknown time sampler {sampler!r}; use one of {TIME_SAMPLERS}")

    a, b = draw(), draw()
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    keep = torch.rand(n, generator=generator, device=device, dtype=torch.float64) < ratio
    return torch.where(keep, r, t), t


def total_derivative(
    model: nn.Module, z: Tensor, r: Tensor, t: Tensor, v: Tensor, *, cond=None, method: str = "func"
) -> tuple[Tensor, Tensor]:
    """(u, du/dt): u = model(z, r, t, cond) (with its graph to the parameters) and the total
    derivative v dz u + dt u, the JVP along the tangent (v, 0, 1) (Geng et al. 2025, Eq. 8).

    method: "func" (torch.func.jvp, as in the paper's Alg. 1), "forward_ad" (dual tensors), or
    "double_backward" (the same JVP from two reverse-mode passes, J^T w then d/dw of
    <J^T w, tangent>: faster for small networks on CPU, and a fallback for ops without
    forward-mode rules)."""
    if method == "func":
        return torch.func.jvp(
            lambda z_, r_, t_: model(z_, r_, t_, cond),
            (z, r, t),
            (v, torch.zeros_like(r), torch.ones_like(t)),
        )
    if method == "forward_ad":
        import torch.autograd.forward_ad as fwad

        with fwad.dual_level():
            out = model(
                fwad.make_dual(z, v),
                fwad.make_dual(r, torch.zeros_like(r)),
                fwad.make_dual(t, torch.ones_like(t)),
                cond,
            )
            u, dudt = fwad.unpack_dual(out)
        return u, dudt
    if method == "double_backward":
        z_in, t_in = z.detach().requires_grad_(True), t.detach().requires_grad_(True)
        u = model(z_in, r, t_in, cond)
        w = torch.zeros_like(u, requires_grad=True)
        gz, gt = torch.autograd.grad(u, (z_in, t_in), w, create_graph=True)
        inner = (gz * v).sum() + gt.sum()  # <J^T w, (v, 1)>, linear in w
        (dudt,) = torch.autograd.grad(inner, w)
        return u, dudt
    raise ValueError(f"unknown JVP method {method!r}; use one of {JVP_METHODS}")


def meanflow_target(
    model: nn.Module, z: Tensor, r: Tensor, t: Tensor, v: Tensor, *, cond=None, jvp: str = "func"
) -> tuple[Tensor, Tensor]:
    """(u, u_tgt): u = u_theta(z_t, r, t) with its graph, and the MeanFlow target
    u_tgt = sg(v - (t - r) (v dz u + dt u)) (Geng et al. 2025, Eq. 8-10) for the instantaneous
    velocity v at z_t. With the exact v(z_t, t) and the exact average velocity as the model,
    u_tgt = u; with v = eps - x its mean given z_t is u (the target is affine in v)."""
    u, dudt = total_derivative(model, z, r, t, v, cond=cond, method=jvp)
    return u, (v - broadcast(t - r, z) * dudt).detach()


def meanflow_loss(
    model: MeanFlowModel,
    x: Tensor,
    noise: Tensor,
    r: Tensor,
    t: Tensor,
    *,
    cond=None,
    velocity: Tensor | None = None,
    teacher: Denoiser | None = None,
    p: float = 1.0,
    c: float = 1e-3,
    jvp: str = "func",
) -> tuple[Tensor, dict]:
    """The MeanFlow loss (Geng et al. 2025, Alg. 1, Eq. 9-10, Sec. 4.3) at times r <= t (B,):
    z_t = (1 - t) x + t noise; v = `velocity`, else the `teacher`'s velocity at (z_t, t), else
    noise - x; (u, du/dt) = jvp(u_theta, (z_t, r, t), (v, 0, 1)); u_tgt = sg(v - (t - r) du/dt);
    loss = mean over the batch of sg(w) ||u - u_tgt||^2 with w = 1 / (||u - u_tgt||^2 + c)^p,
    the squared norm summed over dimensions (the official code's). `jvp`: how the JVP is
    computed (`total_derivative`). Logs: "loss", and "mse" (per dimension) overall and on the
    r != t and r = t samples."""
    tx = broadcast(t, x)
    z = (1.0 - tx) * x + tx * noise
    if velocity is None:
        if teacher is not None:
            with torch.no_grad():
                velocity = teacher.velocity(z, t, cond)
        else:
            velocity = noise - x
    u, u_tgt = meanflow_target(model, z, r.to(x.dtype), t.to(x.dtype), velocity.detach(),
                               cond=cond, jvp=jvp)
    sq = (u - u_tgt).float().pow(2).flatten(1)  # (B, D)
    err = sq.sum(1)  # (B,) ||delta||^2
    w = 1.0 / (err.detach() + c) ** p
    loss = (w * err).mean()
    mse = sq.detach().mean(1)  # (B,) per dimension, for the logs
    neq = r != t
    logs = {"loss": loss.detach().item(), "mse": mse.mean().item()}
    if bool(neq.any()):
        logs["mse_r_neq_t"] = mse[neq].mean().item()
    if bool((~neq).any()):
        logs["mse_r_eq_t"] = mse[~neq].mean().item()
    return loss, logs


# ----------------------------------------------------------------------------------------------
# Distiller


class MeanFlowDistiller(Distiller):
    """MeanFlow student, a `TwoTimeNet` around a network of the teacher's architecture (fresh in
    "data" mode, the paper's training from scratch; a copy of the teacher's in "teacher" mode),
    trained on data batches with the MeanFlow loss; `generator()` samples it in nfe steps (1 by
    default)."""

    kind = "meanflow"

    def __init__(
        self,
        teacher: Denoiser,
        config: MeanFlowConfig | None = None,
        *,
        student_network: nn.Module | None = None,
    ):
        config = MeanFlowConfig() if config is None else config
        validate_config(config)
        super().__init__(teacher, config)
        self.flow_teacher = rectified_view(teacher)
        if student_network is None:
            net = teacher.model
            if self.flow_teacher is not teacher:  # another path: the inner network
                if config.time_scale is None:
                    raise ValueError("MeanFlowConfig.time_scale=None keeps the teacher's own time "
                                     "input, which only a rectified-flow teacher has; use a number")
                net = _time_network(net)
            from_teacher = config.init_from_teacher
            if from_teacher is None:
                from_teacher = config.mode == "teacher"
            net = copy.deepcopy(net) if from_teacher else _fresh(net)
            student_network = TwoTimeNet(net, config.time_scale)
        elif not isinstance(student_network, TwoTimeNet) and hasattr(student_network, "time_embed"):
            student_network = TwoTimeNet(student_network, config.time_scale)
        student_network.train()
        for prm in student_network.parameters():
            prm.requires_grad_(True)
        self.student = MeanFlowModel(student_network, self.flow_teacher)
        self.add_module("student", student_network)
        self.add_optimizer(
            "student",
            student_network.parameters(),
            lr=config.lr,
            betas=tuple(config.betas),
            warmup=config.warmup,
            total_steps=config.lr_decay_steps,
        )
        self.ema = None
        if config.ema_decay is not None:
            self.ema = self.add_ema("student", student_network, config.ema_decay)

    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]:
        c = self.config
        x, cond = split_batch(batch)
        noise = self.noise_like(x, generator)
        r, t = sample_two_times(
            x.shape[0],
            ratio=c.ratio_r_neq_t,
            sampler=c.time_sampler,
            mean=c.time_mean,
            std=c.time_std,
            generator=generator,
            device=x.device,
        )
        self.student.train()
        loss, logs = meanflow_loss(
            self.student,
            x,
            noise,
            r,
            t,
            cond=cond,
            teacher=self.flow_teacher if c.mode == "teacher" else None,
            p=c.weight_p,
            c=c.weight_c,
            jvp=c.jvp,
        )
        logs["grad_norm"] = self.update("student", loss, clip=c.clip or None)
        if self.ema is not None:
            self.ema.update(self.student.net)
        return logs

    def generator(self) -> Generator:
        net = self.ema.module if self.ema is not None else self.student.net
        return MeanFlowGenerator(MeanFlowModel(net, self.flow_teacher))


METHODS = {  # descriptions: onestep.core.method_registry
    "meanflow": (MeanFlowConfig, MeanFlowDistiller, describe("meanflow")),
}
