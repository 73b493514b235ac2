"""What every distillation method shares: the student Generator interface and the Distiller base.

A Distiller is a `train.Task`: it owns its networks (student, fake score, discriminator...), their
optimizers and its update rule (`step(batch, *, step, generator) -> logs`), so the one Trainer runs
any method with checkpoints, exact resume and DDP. Its student is a `Generator`:
`generate(noise, cond=None, nfe=1) -> x`, whatever the method.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import asdict, fields

import torch
from torch import Tensor, nn

from ..convert import as_batch_time, broadcast
from ..denoiser import Denoiser
from ..losses import split_batch
from ..train import EMA, optimizer_step, warmup_cosine

__all__ = ["Generator", "DenoiserGenerator", "Distiller", "frozen_copy", "student_from_teacher",
           "validate_config", "split_batch", "optimizer_step"]


class Generator(nn.Module, ABC):
    """A one- or few-step student: `generate(noise, cond=None, nfe=1) -> x` (noise ~ N(0, I) of
    the data's shape)."""

    @abstractmethod
    def generate(self, noise: Tensor, cond=None, nfe: int = 1, generator=None) -> Tensor: ...

    def forward(self, noise: Tensor, cond=None, nfe: int = 1, generator=None) -> Tensor:
        return self.generate(noise, cond, nfe, generator)


class DenoiserGenerator(Generator):
    """A student that is itself a Denoiser: one step maps noise at t_start to its x0 prediction;
    `nfe` > 1 alternates denoising and re-noising on a fixed time grid (consistency models'
    multistep sampling, Song et al. 2023, Alg. 1; DMD2's backward-simulated few-step generator).

    `times`: the student's own grid (t_start first) when it was trained for given steps; by
    default nfe points evenly spaced in t from t_start. `stochastic=False` re-noises with the
    deterministic DDIM update instead of fresh noise.
    """

    def __init__(self, denoiser: Denoiser, *, t_start: float = 1.0,
                 times: list[float] | None = None, stochastic: bool = True):
        super().__init__()
        self.denoiser = denoiser
        self.t_start = float(t_start)
        self.times = None if times is None else [float(t) for t in times]
        self.stochastic = stochastic

    def grid(self, nfe: int) -> list[float]:
        if self.times is not None and len(self.times) == nfe:
            return self.times
        return torch.linspace(self.t_start, 0.0, nfe + 1)[:-1].tolist()

    def generate(self, noise: Tensor, cond=None, nfe: int = 1, generator=None) -> Tensor:
        if nfe < 1:
            raise ValueError(f"nfe must be at least 1, got {nfe}")
        path = self.denoiser.path
        times = self.grid(nfe)
        c = path.coefficients(times[0])
        x = broadcast(c.alpha, noise) * 0 + broadcast(c.sigma, noise) * noise
        for i, t in enumerate(times):
            x0, eps = self.denoiser.x0_eps(x, t, cond)
            if i + 1 == len(times):
                return x0
            nxt = path.coefficients(times[i + 1])
            if self.stochastic:
                eps = torch.randn(noise.shape, generator=generator, device=noise.device,
                                  dtype=noise.dtype)
            x = broadcast(nxt.alpha, x0) * x0 + broadcast(nxt.sigma, x0) * eps
        return x


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with gradients off and eval mode (a frozen teacher or target)."""
    m = copy.deepcopy(module).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def student_from_teacher(teacher: Denoiser, network: nn.Module | None = None, *,
                         lora_rank: int | None = None, guidance: dict | None = None) -> Denoiser:
    """A trainable Denoiser on the teacher's path and parameterization, initialised from the
    teacher's weights (or around `network`, e.g. a smaller one).

    lora_rank: the student is LoRA adaptors of that rank on the frozen teacher network (only the
        adaptors train; `distill.students`). guidance: the network also takes the guidance scale w
        (`nn.guidance.GuidanceConditioned` with these dim/scale settings, {} for the defaults)."""
    if lora_rank or guidance is not None:
        from .students import adapted_network

        if lora_rank and network is not None:
            raise ValueError("a LoRA student adapts the teacher's own network; it cannot also "
                             "take a student network")
        net, own = adapted_network(teacher.model if network is None else network,
                                   lora_rank=lora_rank, guidance=guidance)
        trainable = set(own) if lora_rank else None
    else:
        net, trainable = copy.deepcopy(teacher.model) if network is None else network, None
    net.train()
    for name, p in net.named_parameters():
        p.requires_grad_(trainable is None or name in trainable)
    return Denoiser(net, teacher.path, prediction=teacher.prediction,
                    time_input=teacher.time_input, null_cond=teacher.null_cond)


def check_decay_steps(steps) -> None:
    """`lr_decay_steps` fields: None or a positive integer."""
    if steps is not None and not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"lr_decay_steps must be None or a positive integer, got {steps!r}")


def validate_config(config) -> None:
    """Clear errors for NaN numbers in a method's config dataclass, then its own `validate()`."""
    for f in fields(config):
        v = getattr(config, f.name)
        if isinstance(v, float) and v != v:
            raise ValueError(f"{type(config).__name__}.{f.name} is NaN")
    if hasattr(config, "validate"):
        config.validate()


class Distiller(ABC):
    """Base for every method. Subclasses set `kind` (the method's registry name), build their
    networks and optimizers in __init__ (via `self.add_optimizer`), implement `step`, and expose
    the student through `generator()`.

    It implements the `train.Task` protocol: `modules()`, `optimizers()`, `schedulers()`, `step`.
    """

    kind = "distiller"

    def __init__(self, teacher: Denoiser, config):
        validate_config(config)
        self.config = config
        self.teacher = teacher
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher.eval()
        self._modules: dict[str, nn.Module] = {}
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._schedulers: dict = {}
        self.emas: dict[str, EMA] = {}

    # -- building blocks -------------------------------------------------------------------
    def add_module(self, name: str, module: nn.Module) -> nn.Module:
        self._modules[name] = module
        return module

    def add_optimizer(self, name: str, params, *, lr: float, betas=(0.9, 0.999),
                      weight_decay: float = 0.0, warmup: int = 0, total_steps: int | None = None):
        params = [p for p in params if p.requires_grad]
        if not params:
            raise ValueError(f"optimizer {name!r} has no trainable parameters")
        opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
        self._optimizers[name] = opt
        self._schedulers[name] = warmup_cosine(opt, warmup, total_steps, 0.0)
        return opt

    def add_ema(self, name: str, module: nn.Module, decay: float) -> EMA:
        ema = EMA(module, decay)
        self.emas[name] = ema
        self._modules[f"ema_{name}"] = ema.module
        return ema

    def update(self, name: str, loss: Tensor, *, clip: float | None = 1.0) -> float:
        """Backward `loss` and step optimizer `name` (and its LR schedule); returns grad norm."""
        opt = self._optimizers[name]
        params = [p for g in opt.param_groups for p in g["params"]]
        norm = optimizer_step(loss, opt, params, clip=clip)
        self._schedulers[name].step()
        return float(norm) if norm is not None else 0.0

    # -- train.Task ------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return dict(self._modules)

    def frozen_modules(self) -> dict[str, nn.Module]:
        """The teacher: moved to the Trainer's device, not checkpointed."""
        return {"teacher": self.teacher}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return dict(self._optimizers)

    def schedulers(self) -> dict:
        return dict(self._schedulers)

    @abstractmethod
    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]: ...

    @abstractmethod
    def generator(self) -> Generator:
        """The student, ready to `generate` (EMA weights where the method keeps them)."""

    def config_dict(self) -> dict:
        return asdict(self.config)

    # -- helpers shared by many methods -----------------------------------------------------
    @staticmethod
    def noise_like(x: Tensor, generator) -> Tensor:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def diffuse(self, x0: Tensor, t, noise: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) noise on the teacher's path."""
        t = as_batch_time(t, x0)
        c = self.teacher.path.coefficients(t)
        return broadcast(c.alpha, x0) * x0 + broadcast(c.sigma, x0) * noise


def denoising_loss(den: Denoiser, x0: Tensor, *, generator=None, cond=None, t_min: float = 1e-3,
                   t_max: float = 1.0) -> tuple[Tensor, Tensor]:
    """Denoising score matching of `den` on samples `x0` (e.g. a generator's, to fit a fake
    score), regressed in the network's own prediction kind, t ~ U[t_min, t_max].
    Returns (per-sample loss (B,), t)."""
    from ..convert import from_x0_eps

    t = t_min + (t_max - t_min) * torch.rand(x0.shape[0], generator=generator,
                                             device=x0.device, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    c = den.path.coefficients(t)
    x_t = broadcast(c.alpha, x0) * x0 + broadcast(c.sigma, x0) * noise
    target = from_x0_eps(den.prediction, x0, noise, x_t, t, den.path)
    err = (den(x_t, t, cond) - target).float().pow(2).flatten(1).mean(1)
    return err, t
