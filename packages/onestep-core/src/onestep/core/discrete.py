"""Masked (absorbing-state) discrete diffusion and learnable sampler distillation on it.

Time runs as everywhere in onestep: t = 0 is data, t = 1 is noise (here: every token masked).
A token survives unmasked to time t with probability alpha(t), alpha(0) = 1, alpha(1) = 0, and
is otherwise the mask token `mask_id = vocab_size` (Austin et al. 2021's absorbing state, in the
continuous-time form of MDLM, Sahoo et al. 2024, and MD4, Shi et al. 2024).

- `MaskedDiffusion`: the schedule, q(x_t | x_0) and its closed-form marginals, and the teacher
  loss: the continuous-time NELBO, a cross-entropy on the masked positions weighted by
  -alpha'(t) / (1 - alpha(t)) (1/t for the linear schedule).
- `MaskedTransformer`: a small time-conditioned transformer (the core DiT blocks with adaLN-Zero)
  that maps tokens (B, L) and t to logits (B, L, V) of p_theta(x_0 | x_t) over the V data tokens
  (MDLM's SUBS parameterisation: the mask is never predicted, unmasked tokens are carried over).
- `sample_masked`: the ancestral sampler. From t to s < t each masked token is unmasked with
  probability (alpha(s) - alpha(t)) / (1 - alpha(t)) to a token drawn from p_theta(. | x_t); with
  many steps this simulates the reverse process (the teacher), with few it is the student.
- `learn_discrete_sampler`: LSD / LSD+ (Fu et al. 2025) for that sampler.
- `load_digit_tokens`: the 1797 real scikit-learn 8x8 digits as 64 tokens with values 0..16.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onestep.core.nn.dit import DiTBlock, FinalLayer
from onestep.core.nn.embed import TimeEmbed

__all__ = [
    "SCHEDULES",
    "DiscreteSampler",
    "MaskedDiffusion",
    "MaskedMLP",
    "MaskedTransformer",
    "learn_discrete_sampler",
    "load_digit_tokens",
    "position_tv",
    "sample_masked",
    "teacher_states",
    "token_frechet",
]


# ----------------------------------------------------------------------------------------------
# Data


def load_digit_tokens() -> Tensor:
    """scikit-learn's 1797 real 8x8 digits as tokens: (1797, 64) int64 pixel values 0..16.

    Nothing is downloaded (the data ships with scikit-learn, imported only here)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("load_digit_tokens needs scikit-learn (pip install scikit-learn)") from e
    images = load_digits().images  # (1797, 8, 8) float, integer values 0..16
    return torch.from_numpy(images.reshape(len(images), 64).round()).long()


# ----------------------------------------------------------------------------------------------
# Schedules: alpha(t) = P(token still unmasked at t), and its derivative


def _linear(t: Tensor) -> tuple[Tensor, Tensor]:
    return 1.0 - t, -torch.ones_like(t)


def _cosine(t: Tensor) -> tuple[Tensor, Tensor]:
    # MD4's cosine schedule alpha = 1 - cos(pi/2 (1 - t))
    a = 0.5 * math.pi * (1.0 - t)
    return 1.0 - torch.cos(a), -0.5 * math.pi * torch.sin(a)


SCHEDULES: dict[str, Callable[[Tensor], tuple[Tensor, Tensor]]] = {
    "linear": _linear,
    "cosine": _cosine,
}


def _as_time(t: Tensor | float, batch: int | None = None) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float64) if not torch.is_tensor(t) else t
    if batch is not None and t.numel() == 1:
        t = t.reshape(1).expand(batch)
    return t


@dataclass(frozen=True)
class MaskedDiffusion:
    """Absorbing-state diffusion over sequences of `length` tokens in 0..vocab_size-1."""

    vocab_size: int
    """V, the number of data tokens; the mask token is V."""
    length: int
    """L, the number of tokens per sequence."""
    schedule: str = "linear"
    """alpha(t): "linear" 1 - t (MDLM's log-linear noise) or "cosine" 1 - cos(pi/2 (1-t)) (MD4)."""
    t_min: float = 1e-3
    """Smallest training time: the loss weight -alpha'/(1-alpha) diverges at t = 0."""

    def __post_init__(self):
        if not isinstance(self.vocab_size, int) or self.vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2, got {self.vocab_size!r}")
        if not isinstance(self.length, int) or self.length < 1:
            raise ValueError(f"length must be a positive integer, got {self.length!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {self.schedule!r}")
        if not 0.0 < self.t_min < 1.0:
            raise ValueError(f"t_min must be in (0, 1), got {self.t_min}")

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def alpha(self, t: Tensor | float) -> Tensor:
        """alpha(t), the probability that a token is still unmasked at time t."""
        return SCHEDULES[self.schedule](_as_time(t))[0]

    def d_alpha(self, t: Tensor | float) -> Tensor:
        """alpha'(t) (<= 0)."""
        return SCHEDULES[self.schedule](_as_time(t))[1]

    def check_tokens(self, x: Tensor, name: str = "x_data", *, allow_mask: bool = False) -> None:
        """ValueError unless x is an integer (B, L) tensor of tokens in range."""
        if not torch.is_tensor(x) or x.dtype not in (torch.int64, torch.int32, torch.int16,
                                                      torch.uint8):
            raise ValueError(f"{name} must be an integer tensor of tokens, got "
                             f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim != 2 or x.shape[1] != self.length:
            raise ValueError(f"{name} must have shape (B, {self.length}), got {tuple(x.shape)}")
        top = self.vocab_size + (1 if allow_mask else 0)
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= top):
            raise ValueError(f"{name} tokens must lie in 0..{top - 1}, got "
                             f"{int(x.min())}..{int(x.max())}")

    def marginal(self, x_data: Tensor, t: Tensor | float) -> Tensor:
        """Closed form q(x_t | x_0): (B, L, V+1) = alpha onehot(x_0) + (1 - alpha) onehot(mask)."""
        self.check_tokens(x_data)
        a = self.alpha(_as_time(t, len(x_data))).float().reshape(-1, 1, 1)  # (B, 1, 1)
        probs = a * F.one_hot(x_data.long(), self.vocab_size + 1).float()
        probs[..., self.mask_id] += (1.0 - a[..., 0])
        return probs

    def q_sample(self, x_data: Tensor, t: Tensor | float, *, generator=None) -> Tensor:
        """x_t ~ q(x_t | x_0): every token independently masked with probability 1 - alpha(t)."""
        self.check_tokens(x_data)
        a = self.alpha(_as_time(t, len(x_data))).to(torch.float32).reshape(-1, 1)
        u = torch.rand(x_data.shape, generator=generator, device=x_data.device)
        return torch.where(u < a.to(x_data.device), x_data.long(), self.mask_id)

    def loss(self, model: nn.Module, x_data: Tensor, *, generator=None
             ) -> tuple[Tensor, dict[str, float]]:
        """The continuous-time NELBO per token (MDLM; MD4): E_t [ -alpha'(t) / (1 - alpha(t))
        * sum over masked positions of -log p_theta(x_0^i | x_t) ] / L, t uniform on [t_min, 1]
        drawn antithetically (one stratum per batch element, as MDLM). x_data (B, L) -> scalar."""
        self.check_tokens(x_data)
        b = len(x_data)
        u0 = torch.rand((), generator=generator, device=x_data.device)
        u = (u0 + torch.arange(b, device=x_data.device) / b) % 1.0  # (B,) stratified
        t = self.t_min + (1.0 - self.t_min) * u
        x_t = self.q_sample(x_data, t, generator=generator)
        logits = model(x_t, t.float())  # (B, L, V)
        _check_logits(logits, self)
        ce = F.cross_entropy(logits.transpose(1, 2), x_data.long(), reduction="none")  # (B, L)
        masked = (x_t == self.mask_id).float()
        a, da = SCHEDULES[self.schedule](t.double())
        weight = (-da / (1.0 - a)).float()  # (B,)
        per_seq = weight * (ce * masked).sum(1) / self.length
        loss = per_seq.mean()
        n_masked = masked.sum().clamp(min=1.0)
        logs = {"loss": loss.item(), "masked_ce": ((ce * masked).sum() / n_masked).item(),
                "mask_fraction": masked.mean().item()}
        return loss, logs


def _check_logits(logits: Tensor, diffusion: MaskedDiffusion) -> None:
    if logits.ndim != 3 or logits.shape[1:] != (diffusion.length, diffusion.vocab_size):
        raise ValueError(
            f"the model must return logits (B, {diffusion.length}, {diffusion.vocab_size}) over "
            f"the data tokens, got {tuple(logits.shape)}"
        )


# ----------------------------------------------------------------------------------------------
# Network


class MaskedTransformer(nn.Module):
    """Tokens (B, L) in 0..V (V = mask) and t (B,) or scalar -> logits (B, L, V) of p(x_0 | x_t).

    Token + learned position embeddings, `depth` core DiT blocks whose adaLN-Zero is driven by
    the time embedding, and an adaLN final layer."""

    def __init__(self, vocab_size: int, length: int, hidden: int = 64, depth: int = 2,
                 heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
        self.config = dict(vocab_size=vocab_size, length=length, hidden=hidden, depth=depth,
                           heads=heads, mlp_ratio=float(mlp_ratio))
        self.vocab_size, self.length = vocab_size, length
        self.token_embed = nn.Embedding(vocab_size + 1, hidden)
        self.pos_embed = nn.Parameter(torch.zeros(length, hidden))
        self.time_embed = TimeEmbed(256, hidden, 1000.0)
        self.blocks = nn.ModuleList([DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth)])
        self.final = FinalLayer(hidden, vocab_size)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        nn.init.zeros_(self.final.ada[-1].weight)
        nn.init.zeros_(self.final.ada[-1].bias)

    @classmethod
    def from_config(cls, config: dict) -> MaskedTransformer:
        return cls(**config)

    def forward(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        if x_t.ndim != 2 or x_t.shape[1] != self.length:
            raise ValueError(f"MaskedTransformer expects tokens (B, {self.length}), "
                             f"got {tuple(x_t.shape)}")
        h = self.token_embed(x_t.long()) + self.pos_embed  # (B, L, hidden)
        c = self.time_embed(t, x_t.shape[0])  # (B, hidden)
        for block in self.blocks:
            h = block(h, c)
        return self.final(h, c)  # (B, L, V)


class MaskedMLP(nn.Module):
    """Tokens (B, L) in 0..V and t -> logits (B, L, V): the core residual FiLM `MLP` on the
    flattened one-hot tokens (B, L (V+1)); a cheap alternative to `MaskedTransformer` for short
    sequences such as 8x8 digits."""

    def __init__(self, vocab_size: int, length: int, hidden: int = 256, depth: int = 3):
        super().__init__()
        from onestep.core.nn.mlp import MLP

        self.config = dict(vocab_size=vocab_size, length=length, hidden=hidden, depth=depth)
        self.vocab_size, self.length = vocab_size, length
        self.net = MLP(length * (vocab_size + 1), hidden=hidden, depth=depth,
                       out_dim=length * vocab_size)

    @classmethod
    def from_config(cls, config: dict) -> MaskedMLP:
        return cls(**config)

    def forward(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        if x_t.ndim != 2 or x_t.shape[1] != self.length:
            raise ValueError(f"MaskedMLP expects tokens (B, {self.length}), got {tuple(x_t.shape)}")
        onehot = F.one_hot(x_t.long(), self.vocab_size + 1).float()  # (B, L, V+1)
        out = self.net(onehot.reshape(len(x_t), -1), t)  # (B, L V)
        return out.reshape(len(x_t), self.length, self.vocab_size)


# ----------------------------------------------------------------------------------------------
# Sampler


def uniform_times(nfe: int) -> Tensor:
    """nfe + 1 equally spaced float64 times from 1 down to 0."""
    return torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64)


def _check_times(times: Tensor) -> Tensor:
    times = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    if times.ndim != 1 or len(times) < 2:
        raise ValueError(f"times must be a 1-D tensor of at least 2 times, got "
                         f"{tuple(times.shape)}")
    if times[0].item() != 1.0 or times[-1].item() != 0.0 or not bool((times.diff() < 0).all()):
        raise ValueError("times must decrease strictly from 1 (all masked) to 0 (data)")
    return times


def _unmask_step(diffusion: MaskedDiffusion, x: Tensor, logits: Tensor, t: Tensor, s: Tensor,
                 generator) -> Tensor:
    """One ancestral step t -> s: a masked token unmasks with probability (alpha(s) - alpha(t))
    / (1 - alpha(t)) (the exact absorbing posterior) to a token drawn from softmax(logits)."""
    a_t, a_s = diffusion.alpha(t.double()), diffusion.alpha(s.double())
    p_unmask = ((a_s - a_t) / (1.0 - a_t)).clamp(0.0, 1.0).item()
    probs = torch.softmax(logits.detach().float(), dim=-1)  # (B, L, V)
    token = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1,
                              generator=generator).reshape(x.shape)
    unmask = torch.rand(x.shape, generator=generator, device=x.device) < p_unmask
    if s.item() == 0.0:  # the last step unmasks everything left
        unmask = torch.ones_like(unmask)
    return torch.where((x == diffusion.mask_id) & unmask, token, x)


@torch.no_grad()
def sample_masked(model: nn.Module, diffusion: MaskedDiffusion, n: int, *, nfe: int | None = None,
                  times: Tensor | None = None, coefficients: Tensor | None = None,
                  generator: torch.Generator | None = None, device=None) -> Tensor:
    """Ancestral sampler for masked diffusion -> tokens (n, L). One network call per step.

    times: float64 (M+1,) from 1 to 0, or `nfe` uniform steps. coefficients (M,): LSD's Phi(t_k),
    which multiply the network's output logits before the softmax at step k (Fu et al. 2025,
    Eq. 5, as their code scales the score network's output); None = all ones (plain sampler)."""
    times = _resolve_times(nfe, times)
    m = len(times) - 1
    phi = _resolve_coefficients(coefficients, m)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if device is None:
        device = next(model.parameters()).device
    x = torch.full((n, diffusion.length), diffusion.mask_id, dtype=torch.long, device=device)
    for k in range(m):
        t, s = times[k], times[k + 1]
        logits = model(x, t.float().to(device))  # (n, L, V)
        _check_logits(logits, diffusion)
        x = _unmask_step(diffusion, x, phi[k] * logits, t, s, generator)
    return x


def _resolve_times(nfe: int | None, times: Tensor | None) -> Tensor:
    if (nfe is None) == (times is None):
        raise ValueError("give exactly one of nfe (uniform steps) and times")
    if times is None:
        if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
            raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
        return uniform_times(nfe)
    return _check_times(times)


def _resolve_coefficients(coefficients: Tensor | None, m: int) -> Tensor:
    if coefficients is None:
        return torch.ones(m)
    phi = torch.as_tensor(coefficients, dtype=torch.float32).detach().cpu()
    if phi.shape != (m,):
        raise ValueError(f"coefficients must have one value per step ({m},), got "
                         f"{tuple(phi.shape)}")
    if not bool(torch.isfinite(phi).all()):
        raise ValueError("coefficients must be finite")
    return phi


@torch.no_grad()
def teacher_states(model: nn.Module, diffusion: MaskedDiffusion, n: int, *, steps: int,
                   record: Tensor, generator=None) -> tuple[Tensor, Tensor]:
    """Run the `steps`-step uniform ancestral sampler (the teacher) and keep its state at each
    time in `record` (K,), which must lie on its grid -> (states (K, n, L), final (n, L))."""
    grid = uniform_times(steps)
    idx = []
    for t in record.tolist():
        j = int(round((1.0 - t) * steps))
        if abs(grid[j].item() - t) > 1e-9:
            raise ValueError(f"time {t} is not on the teacher's {steps}-step uniform grid")
        idx.append(j)
    device = next(model.parameters()).device
    x = torch.full((n, diffusion.length), diffusion.mask_id, dtype=torch.long, device=device)
    kept: dict[int, Tensor] = {}
    for j in range(steps):
        if j in idx:
            kept[j] = x.clone()
        logits = model(x, grid[j].float().to(device))
        x = _unmask_step(diffusion, x, logits, grid[j], grid[j + 1], generator)
    return torch.stack([kept[j] for j in idx]), x


# ----------------------------------------------------------------------------------------------
# Distances between sets of token sequences


def token_frechet(a: Tensor, b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to the token values of a (N, L) and b (M, L):
    sensitive to the pairwise correlations that few-step (factorised) unmasking gets wrong."""
    from onestep.core.metrics import frechet_distance

    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need token sets (N, L) and (M, L), got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    return frechet_distance(a.double(), b.double())


def position_tv(a: Tensor, b: Tensor, vocab_size: int) -> float:
    """Mean over positions of the total variation between the token histograms of a and b."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need token sets (N, L) and (M, L), got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    ha = F.one_hot(a.long(), vocab_size).double().mean(0)  # (L, V)
    hb = F.one_hot(b.long(), vocab_size).double().mean(0)
    return float(0.5 * (ha - hb).abs().sum(-1).mean())


# ----------------------------------------------------------------------------------------------
# Learnable sampler distillation


@dataclass(frozen=True)
class DiscreteSampler:
    """A few-step sampler: times (M+1,) float64 from 1 to 0 and per-step coefficients (M,)."""

    times: Tensor
    coefficients: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nfe(self) -> int:
        return len(self.times) - 1

    def sample(self, model: nn.Module, diffusion: MaskedDiffusion, n: int, *, generator=None
               ) -> Tensor:
        return sample_masked(model, diffusion, n, times=self.times,
                             coefficients=self.coefficients, generator=generator)

    def to_dict(self) -> dict[str, Any]:
        return {"times": self.times.tolist(), "coefficients": self.coefficients.tolist(),
                "meta": self.meta}


def _times_from_steps(raw: Tensor) -> Tensor:
    """LSD+ Eq. 7: tau_k = T - sum_{l <= k} kappa_l with T = 1 and step sizes kappa = softmax(raw)
    (positive, summing to T so the last time is exactly 0)."""
    kappa = torch.softmax(raw, dim=0)  # (M,)
    inner = 1.0 - torch.cumsum(kappa, 0)[:-1]
    return torch.cat([raw.new_ones(1), inner, raw.new_zeros(1)])


def learn_discrete_sampler(
    model: nn.Module,
    diffusion: MaskedDiffusion,
    *,
    nfe: int,
    learn_times: bool = False,
    learn_coefficients: bool = True,
    teacher_steps: int = 64,
    n_train: int = 512,
    n_heldout: int = 512,
    iterations: int = 150,
    batch: int = 64,
    lr: float = 0.05,
    eval_every: int = 10,
    metric: Callable[[Tensor, Tensor], float] | None = None,
    seed: int = 0,
    teacher: tuple[Tensor, Tensor] | None = None,
) -> DiscreteSampler:
    """Learnable sampler distillation (LSD, Fu et al. 2025, Algorithm 2; LSD+ with `learn_times`)
    for the `nfe`-step ancestral masked-diffusion sampler.

    The teacher is the same model sampled with `teacher_steps` uniform steps (a multiple of nfe);
    its states at every grid time are cached for `n_train` runs. LSD learns one coefficient Phi_k
    per student step, scaling the network's output logits (Eq. 5, as the authors' code scales the
    score network's output), initialised to 1 (the plain sampler). Each iteration runs the student
    from the all-masked state; at every student time tau_k it compares the student's score at its
    own state with the teacher's score at the teacher's state at that time (the grid time nearest
    tau_k; the student's times are a subsequence of the teacher's) (Eq. 6): d = KL(p* || softmax(
    Phi_k logits)), averaged over positions masked in both states (where the concrete score is
    nonzero). Scores are compared normalised, as the authors' code does, so the time factor
    alpha/(1-alpha) drops out. Sampling between steps is not differentiated (Algorithm 2).
    LSD+ also learns the step sizes kappa_k (Eq. 7; a softmax, so they stay positive and end at
    t = 0) on the same per-step distances (Eq. 8): the times reach d through the network's time
    input and through which tokens get unmasked; the latter is sampled, so its gradient is the
    score-function estimate (sum_k d_k - batch mean) * grad log P(unmasking decisions).
    `learn_coefficients=False` learns the times alone. The relaxed objective (Eq. 9-10) perturbs
    the start within a Hamming ball; the absorbing process starts every sequence all-masked, so
    it is not used.

    Held-out selection: at the start (the plain sampler) and every `eval_every` iterations the
    student draws `n_heldout` samples from a fixed seed and `metric(student, reference)` (default
    `token_frechet`) is measured against `n_heldout` final teacher samples from other seeds, not
    used to train the coefficients; the best iterate is returned. teacher: optionally precomputed
    (states (teacher_steps, n, L), reference (n_heldout, L)).
    Returns a DiscreteSampler; `.sample(model, diffusion, n)` runs it."""
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    if not isinstance(teacher_steps, int) or teacher_steps <= nfe or teacher_steps % nfe:
        raise ValueError(f"teacher_steps must be a multiple of nfe={nfe} larger than it, got "
                         f"{teacher_steps!r}")
    for name, v in (("n_train", n_train), ("n_heldout", n_heldout), ("batch", batch),
                    ("eval_every", eval_every)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if n_heldout < 2:
        raise ValueError("n_heldout must be at least 2 (the metric fits a covariance)")
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    metric = token_frechet if metric is None else metric
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    req = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        return _learn(model, diffusion, nfe, learn_times, teacher_steps, n_train, n_heldout,
                      iterations, batch, lr, eval_every, metric, seed, teacher, device,
                      learn_coefficients)
    finally:
        for p, r in zip(model.parameters(), req, strict=True):
            p.requires_grad_(r)
        model.train(was_training)


def _learn(model, diffusion, nfe, learn_times, teacher_steps, n_train, n_heldout, iterations,
           batch, lr, eval_every, metric, seed, teacher, device, learn_coefficients
           ) -> DiscreteSampler:
    grid = uniform_times(teacher_steps)  # the teacher's times t*_j
    # 1. the teacher (many-step sampler, Phi = 1): its state at every grid time but the last
    if teacher is None:
        g = torch.Generator(device=device).manual_seed(seed)
        states, _ = teacher_states(model, diffusion, n_train, steps=teacher_steps,
                                   record=grid[:-1], generator=g)
        g_ref = torch.Generator(device=device).manual_seed(seed + 1)
        reference = sample_masked(model, diffusion, n_heldout, nfe=teacher_steps, generator=g_ref)
    else:
        states, reference = teacher
        shape = (teacher_steps, diffusion.length)
        if states.ndim != 3 or (states.shape[0], states.shape[2]) != shape:
            raise ValueError(f"teacher states must have shape ({teacher_steps}, n, "
                             f"{diffusion.length}), got {tuple(states.shape)}")
        diffusion.check_tokens(reference, "teacher reference")
        n_train = states.shape[1]
    # 2. the learnable parameters: Phi (Eq. 5) and, for LSD+, raw step sizes (Eq. 7)
    if not (learn_coefficients or learn_times):
        raise ValueError("nothing to learn: learn_coefficients and learn_times are both False")
    phi = torch.ones(nfe, device=device, requires_grad=learn_coefficients)
    raw = torch.zeros(nfe, dtype=torch.float64, device=device, requires_grad=learn_times)
    params = ([phi] if learn_coefficients else []) + ([raw] if learn_times else [])
    opt = torch.optim.Adam(params, lr=lr)
    g_train = torch.Generator(device=device).manual_seed(seed + 2)

    def evaluate() -> float:
        g_eval = torch.Generator(device=device).manual_seed(seed + 3)
        with torch.no_grad():
            x = sample_masked(model, diffusion, n_heldout, times=_times_from_steps(raw).cpu(),
                              coefficients=phi.detach().cpu(), generator=g_eval)
        return float(metric(x.cpu(), reference.cpu()))

    best = (evaluate(), 0, phi.detach().cpu().clone(), _times_from_steps(raw).detach().cpu())
    history: list[dict[str, float]] = [{"iteration": 0, "heldout": best[0]}]
    initial = best[0]
    for it in range(1, iterations + 1):
        # 3. one student run from the all-masked state (Algorithm 2, lines 3-7)
        idx = torch.randint(0, n_train, (batch,), generator=g_train, device=device)
        taus = _times_from_steps(raw)  # (M+1,) float64, differentiable for LSD+
        alphas = diffusion.alpha(taus)
        x = torch.full((batch, diffusion.length), diffusion.mask_id, dtype=torch.long,
                       device=device)
        loss = torch.zeros((), device=device)
        per_sample = torch.zeros(batch, device=device)  # sum over steps of d, per sequence
        log_path = torch.zeros(batch, dtype=torch.float64, device=device)
        for k in range(nfe):
            # the teacher's state and score at the grid time nearest tau_k (a subsequence of its
            # grid, as the paper's student times)
            j = min(int(round((1.0 - taus[k].item()) * teacher_steps)), teacher_steps - 1)
            x_star = states[j, idx]
            with torch.no_grad():
                log_p = torch.log_softmax(model(x_star, grid[j].float().to(device)), -1)
            logits = model(x, taus[k].float().reshape(1).expand(batch))  # (batch, L, V)
            logq = torch.log_softmax(phi[k] * logits, -1)
            both = ((x == diffusion.mask_id) & (x_star == diffusion.mask_id)).float()
            kl = (log_p.exp() * (log_p - logq)).sum(-1)  # (batch, L): d of Eq. 6 / Eq. 8
            d = (kl * both).sum(1) / both.sum(1).clamp(min=1.0)  # (batch,)
            loss = loss + d.mean()
            per_sample = per_sample + d.detach()
            # the next state (not differentiated); for LSD+ keep the log-probability of the
            # unmasking decisions, whose odds the times set
            masked = x == diffusion.mask_id
            x_next = _unmask_step(diffusion, x, phi[k].detach() * logits.detach(),
                                  taus[k].detach(), taus[k + 1].detach(), g_train)
            if learn_times and k < nfe - 1:
                u = ((alphas[k + 1] - alphas[k]) / (1.0 - alphas[k])).clamp(1e-6, 1 - 1e-6)
                went = (masked & (x_next != diffusion.mask_id)).double().sum(1)
                stayed = (masked & (x_next == diffusion.mask_id)).double().sum(1)
                log_path = log_path + went * torch.log(u) + stayed * torch.log1p(-u)
            x = x_next
        if learn_times:
            # the states depend on the times only through sampling: a score-function estimate
            # of the gradient of E[sum_k d_k] with the batch mean as baseline
            advantage = (per_sample - per_sample.mean()).double()
            loss = loss + (advantage * log_path).mean().float()
        # 4. one gradient step on every L_k (lines 8-11; Phi_k only enters L_k)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % eval_every == 0 or it == iterations:
            score = evaluate()
            history.append({"iteration": it, "heldout": score,
                            "distill_loss": float(per_sample.mean()),
                            "coefficients": phi.detach().cpu().tolist(),
                            "times": _times_from_steps(raw).detach().cpu().tolist()})
            if score < best[0]:
                best = (score, it, phi.detach().cpu().clone(),
                        _times_from_steps(raw).detach().cpu())
    meta = {"method": "lsd+" if learn_times else "lsd", "teacher_steps": teacher_steps,
            "heldout_metric": best[0], "heldout_metric_initial": initial,
            "best_iteration": best[1], "iterations": iterations, "history": history}
    return DiscreteSampler(best[3].double(), best[2].float(), meta)
