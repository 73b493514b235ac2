"""Offline RL on D4RL-style data: One-step Flow Q-Learning (`ofql`) and its baselines Diffusion
Q-Learning (`dql`), flow behaviour cloning (`fbc`) and behaviour cloning with a plain MLP (`bc`),
in one framework, so that a reader sees what the Q term and the one-step policy each add.

    ofql  Nguyen & Yoo 2025 ("One-Step Flow Q-Learning", arXiv 2508.13904): DQL's framework with
          the diffusion policy replaced by an average-velocity (MeanFlow) policy u(z, r, t | s)
          on the rectified-flow path z_t = (1 - t) a + t eps. The behaviour term is the MeanFlow
          loss (Geng et al. 2025, Eq. 9-10, core's `meanflow_loss`); the Q term acts on the
          one-step action a = eps - u(eps, 0, 1 | s), which is also the action of the target
          policy and of inference: one network evaluation, no backpropagation through a chain.
    dql   Wang et al. 2023 ("Diffusion Policies as an Expressive Policy Class for Offline RL"):
          a 5-step DDPM policy (their VP beta schedule, eps-prediction, x0 clipped to the action
          range), loss = L_d (the eps-prediction BC loss) - alpha E[Q(s, a)], alpha = eta /
          E|Q| (their Sec. 3; the official code normalises by the other critic's mean |Q| on the
          batch and flips a coin between q1 and q2), backpropagated through the 5 steps.
    fbc   a flow-matching policy (Lipman et al. 2023; conditional velocity eps - a) sampled with
          `nfe` Euler steps; no critic (the behaviour policy FQL distils, Park et al. 2025).
    bc    an MLP s -> a regressed on the data's actions (MSE); no critic.

ofql and dql share everything else, as in the two papers: twin critics (3 x 256 Mish MLPs)
trained on r + gamma * min_i Q'_i(s', a'), a' from the EMA (target) policy, a Polyak-averaged
target critic, Adam at 3e-4 with the learning rate cosine-decayed over the run, gradient-norm
clipping. Actions are scaled to [-1, 1] from the environment's bounds; observations are used as
they are (DQL does not normalise them on MuJoCo). The OFQL paper's own values for the settings it
does not share with DQL or MeanFlow (its time sampling, loss weighting, training length) were not
at hand when this was written: OFQLConfig uses MeanFlow's and DQL's and names them as such.

`train(algo, dataset, out, ...)` writes a run folder (run.json, log.jsonl, checkpoints/ written
atomically by core's Trainer with exact resume, and the final weights policy.safetensors);
`evaluate(run, ...)` rolls the policy out in the run's gymnasium task and reports the
D4RL-normalised score with a 95% bootstrap interval over episodes and the per-action latency.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["ALGOS", "CONFIGS", "BCConfig", "FBCConfig", "DQLConfig", "OFQLConfig",
           "resolve_config", "make_task", "load_policy", "train", "evaluate", "dql_betas"]

ALGOS = ("ofql", "dql", "fbc", "bc")
"""The offline algorithms of this module (dm1 and diffusion-policy: onestep.policy.imitation)."""

POLICY_FILE = "policy.safetensors"


# -- configurations -----------------------------------------------------------------------------
@dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning with a plain MLP s -> a (MSE on actions scaled to [-1, 1])."""

    steps: int = 1_000_000
    """Gradient steps (D4RL's usual 1M)."""
    batch_size: int = 256
    """Batch size (DQL's code: 256)."""
    lr: float = 3e-4
    """Adam learning rate (DQL's code on MuJoCo: 3e-4)."""
    lr_decay: bool = True
    """Cosine-decay the learning rate to 0 over `steps` (DQL's code: lr_decay=True)."""
    hidden: int = 256
    """Width of the hidden layers (DQL's networks: 256)."""
    depth: int = 3
    """Hidden layers (DQL's networks: 3, Mish)."""
    grad_norm: float = 0.0
    """Gradient-norm clipping of every network (0: none)."""
    ckpt_every: int = 10_000
    """Steps between checkpoints (one is always written at the end)."""
    log_every: int = 1000
    """Steps between records in log.jsonl."""


@dataclass(frozen=True)
class FBCConfig(BCConfig):
    """Flow behaviour cloning: a velocity network v(z_t, t | s) on z_t = (1 - t) a + t eps
    trained on the conditional velocity eps - a (flow matching), sampled with `nfe` Euler
    steps from t = 1 to 0."""

    nfe: int = 10
    """Euler steps per action (FQL's BC flow policy, Park et al. 2025: 10)."""
    time_dim: int = 16
    """Sinusoidal time features (DQL's network: 16)."""
    time_scale: float = 1.0
    """Scale of the sinusoid on t in [0, 1] (1: smooth in t, as MeanFlow's networks)."""


@dataclass(frozen=True)
class _QConfig(BCConfig):
    eta: float = 1.0
    """Weight of the normalised Q loss (DQL's per-dataset settings: 1.0 on every MuJoCo
    locomotion dataset)."""
    gamma: float = 0.99
    """Discount (DQL: 0.99)."""
    tau: float = 0.005
    """Polyak rate of the target critic, every step (DQL's code)."""
    ema_decay: float = 0.995
    """EMA of the policy that gives the target actions a' (DQL's code: 0.995)."""
    ema_every: int = 5
    """Steps between EMA updates (DQL's code: update_ema_every=5)."""
    ema_start: int = 1000
    """The EMA stays at the initial policy before this step (DQL's code: step_start_ema)."""
    grad_norm: float = 9.0
    """Gradient-norm clipping of the policy and the critics (DQL's per-dataset settings: 9.0
    on halfcheetah-medium; 1.0-9.0 on the other MuJoCo datasets)."""
    steps: int = 2_000_000
    """Gradient steps (DQL's code: 2000 epochs of 1000 steps on MuJoCo)."""
    candidates: int = 1
    """Actions sampled per state at evaluation; with more than 1 the one taken is drawn by a
    softmax over the target critic's min Q (DQL's code, sample_action, uses 50). 1: the
    policy's own action, the latency the papers compare."""


@dataclass(frozen=True)
class DQLConfig(_QConfig):
    """Diffusion Q-Learning (Wang et al. 2023)."""

    n_timesteps: int = 5
    """Denoising steps N (DQL, Sec. 5: 5 on D4RL)."""
    beta_min: float = 0.1
    """VP schedule b_min (DQL's vp_beta_schedule)."""
    beta_max: float = 10.0
    """VP schedule b_max (DQL's vp_beta_schedule)."""
    time_dim: int = 16
    """Sinusoidal features of the step index (DQL's network: 16)."""


@dataclass(frozen=True)
class OFQLConfig(_QConfig):
    """One-step Flow Q-Learning (Nguyen & Yoo 2025). The settings of DQL's framework that it
    keeps are DQL's; the MeanFlow settings are MeanFlow's (Geng et al. 2025, Table 1)."""

    ratio_r_neq_t: float = 0.25
    """Fraction of the behaviour-loss samples with r != t (MeanFlow, Table 1a: 25%)."""
    time_sampler: str = "logit_normal"
    """Distribution of the two time draws: logit_normal (MeanFlow, Table 1d) or uniform."""
    time_mean: float = -0.4
    """Logit-normal mean (MeanFlow, Table 1d)."""
    time_std: float = 1.0
    """Logit-normal std (MeanFlow, Table 1d)."""
    weight_p: float = 1.0
    """Adaptive weight power p of the MeanFlow loss (MeanFlow, Sec. 4.3: 1; 0: plain MSE)."""
    weight_c: float = 1e-3
    """c of the adaptive weight (MeanFlow, Sec. 4.3)."""
    jvp: str = "double_backward"
    """How d/dt u is computed: double_backward (fastest for small MLPs on a CPU), func or
    forward_ad (core's `total_derivative`; the same values)."""
    time_dim: int = 16
    """Sinusoidal time features (DQL's network: 16)."""
    time_scale: float = 1.0
    """Scale of the sinusoids on t and t - r in [0, 1] (MeanFlow's networks: t in [0, 1])."""


CONFIGS = {"ofql": OFQLConfig, "dql": DQLConfig, "fbc": FBCConfig, "bc": BCConfig}


def _check_algo(algo: str) -> None:
    if algo not in CONFIGS:
        raise ValueError(f"unknown algorithm {algo!r}; the offline ones are {', '.join(ALGOS)} "
                         "(dm1 and diffusion-policy are the imitation ones)")


def _validate(algo: str, c) -> None:
    bad = []
    if c.steps < 1 or c.batch_size < 1:
        bad.append("steps and batch_size must be >= 1")
    if not c.lr > 0 or c.hidden < 1 or c.depth < 1 or c.grad_norm < 0:
        bad.append("lr > 0, hidden >= 1, depth >= 1 and grad_norm >= 0 are needed")
    if c.ckpt_every < 0 or c.log_every < 1:
        bad.append("ckpt_every >= 0 and log_every >= 1 are needed")
    if getattr(c, "nfe", 1) < 1:
        bad.append("nfe must be >= 1")
    if isinstance(c, _QConfig):
        if not (0 <= c.gamma <= 1 and 0 < c.tau <= 1 and 0 <= c.ema_decay < 1):
            bad.append("gamma in [0, 1], tau in (0, 1] and ema_decay in [0, 1) are needed")
        if c.ema_every < 1 or c.ema_start < 0 or c.candidates < 1 or c.eta < 0:
            bad.append("ema_every >= 1, ema_start >= 0, candidates >= 1 and eta >= 0 are needed")
    if isinstance(c, DQLConfig) and (c.n_timesteps < 2 or not 0 < c.beta_min < c.beta_max):
        bad.append("n_timesteps >= 2 and 0 < beta_min < beta_max are needed")
    if isinstance(c, OFQLConfig):
        if not 0 <= c.ratio_r_neq_t <= 1 or c.time_sampler not in ("logit_normal", "uniform"):
            bad.append("ratio_r_neq_t in [0, 1] and time_sampler logit_normal or uniform")
        if c.jvp not in ("double_backward", "func", "forward_ad"):
            bad.append("jvp must be double_backward, func or forward_ad")
    if bad:
        raise ValueError(f"{algo} config: {'; '.join(bad)}")


def resolve_config(algo: str, overrides: dict | str | None = None):
    """The algorithm's config with `overrides` ({field: value}, values may be strings as on the
    command line, or "k=v k2=v2"); unknown fields and bad values are one-line errors."""
    from onestep.core.runner import parse_overrides

    _check_algo(algo)
    cls = CONFIGS[algo]
    if isinstance(overrides, str):
        values = parse_overrides(overrides, cls)
    else:
        names = [f.name for f in dataclasses.fields(cls)]
        values = {}
        for key, value in (overrides or {}).items():
            name = str(key).replace("-", "_")
            if name not in names:
                raise ValueError(f"--set {name}: {cls.__name__} has no field {name!r}; its "
                                 f"fields: {', '.join(names)}")
            values.update(parse_overrides(f"{name}={value}", cls) if isinstance(value, str)
                          else {name: value})
    config = cls(**values)
    _validate(algo, config)
    return config


# -- networks -----------------------------------------------------------------------------------
def _mlp(inp: int, out: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(inp, hidden), nn.Mish()]
        inp = hidden
    layers.append(nn.Linear(inp, out))
    return nn.Sequential(*layers)


class Critic(nn.Module):
    """Twin Q networks Q_1, Q_2 (s, a) -> (B,) each (DQL's critic: 3 x 256, Mish)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, depth: int = 3):
        super().__init__()
        self.q1 = _mlp(obs_dim + act_dim, 1, hidden, depth)
        self.q2 = _mlp(obs_dim + act_dim, 1, hidden, depth)

    def forward(self, obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([obs, act], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


def _noise(shape, like: Tensor, generator) -> Tensor:
    if generator is None:
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    return torch.randn(shape, generator=generator, device=generator.device,
                       dtype=like.dtype).to(like.device)


class _FixedGrid(nn.Module):
    """A policy that samples on a fixed grid of times: `_time_embeddings()` embeds all of them
    in one call; `freeze()` (for deployment: evaluate calls it once the weights are loaded)
    keeps them, so acting runs only the MLP passes. Training never freezes."""

    _frozen: Tensor | None = None

    def freeze(self):
        with torch.no_grad():
            self._frozen = self._time_embeddings()
        return self

    def train(self, mode: bool = True):
        if mode:
            self._frozen = None
        return super().train(mode)

    def _embeddings(self) -> Tensor:
        return self._frozen if self._frozen is not None else self._time_embeddings()


class BCPolicy(nn.Module):
    """a = MLP(s), clipped to [-1, 1] when acting."""

    nfe = 1

    def __init__(self, obs_dim: int, act_dim: int, c: BCConfig):
        super().__init__()
        self.net = _mlp(obs_dim, act_dim, c.hidden, c.depth)

    def loss(self, obs, act, generator=None):
        loss = (self.net(obs) - act).pow(2).mean()
        return loss, {"bc_loss": loss.detach()}

    def act(self, obs: Tensor, generator=None) -> Tensor:
        return self.net(obs).clamp(-1.0, 1.0)

    def freeze(self):
        return self


class FlowPolicy(_FixedGrid):
    """Flow-matching policy v(z_t, t | s) (rectified flow, t=0 action, t=1 noise), sampled with
    core's Euler solver in `nfe` steps."""

    def __init__(self, obs_dim: int, act_dim: int, c: FBCConfig):
        super().__init__()
        from onestep.core.nn import ConcatMLP

        self.net = ConcatMLP(act_dim, cond_dim=obs_dim, hidden=c.hidden, depth=c.depth,
                             time_dim=c.time_dim, time_scale=c.time_scale)
        self.nfe = c.nfe

    def loss(self, obs, act, generator=None):
        # flow matching (Lipman et al. 2023): z_t = (1 - t) a + t eps, target eps - a
        t = torch.rand(len(act), generator=generator, device=act.device).to(act.dtype)
        eps = _noise(act.shape, act, generator)
        z = (1 - t[:, None]) * act + t[:, None] * eps
        loss = (self.net(z, t, obs) - (eps - act)).pow(2).mean()
        return loss, {"bc_loss": loss.detach()}

    def act(self, obs: Tensor, generator=None) -> Tensor:
        """Euler from t = 1 to 0 in `nfe` equal steps, z <- z + (t' - t) v(z, t | s): core's
        `sample_euler` on the rectified-flow path (tested equal), with the grid's time
        embeddings computed in one call."""
        z = _noise((len(obs), self.net.dim), obs, generator)
        times = torch.linspace(1.0, 0.0, self.nfe + 1).tolist()
        emb = self._embeddings()  # (nfe, time_hidden)
        for i in range(self.nfe):
            v = self.net.forward_embedded(z, emb[i].expand(len(z), -1), obs)
            z = z + (times[i + 1] - times[i]) * v
        return z.clamp(-1.0, 1.0)

    def _time_embeddings(self) -> Tensor:
        times = torch.linspace(1.0, 0.0, self.nfe + 1)[:-1]
        return self.net.time_embed(times, self.nfe)


def dql_betas(n: int, beta_min: float = 0.1, beta_max: float = 10.0) -> Tensor:
    """Diffusion-QL's discrete VP betas (its vp_beta_schedule): beta_i = 1 - exp(-b_min / N -
    (b_max - b_min) (2 i - 1) / (2 N^2)), i = 1..N (the VP SDE's schedule, Song et al. 2021,
    discretised; DQL, Sec. 5)."""
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return 1.0 - torch.exp(-beta_min / n - 0.5 * (beta_max - beta_min) * (2 * i - 1) / n**2)


class DiffusionPolicy(_FixedGrid):
    """DQL's policy: eps_theta(a_i, i | s) on the discrete VP path of `dql_betas`; acting is
    DDPM ancestral sampling over all N steps (core's DDIM with eta = 1 on the step grid, the same
    posterior q(a_{i-1} | a_i, a_0) DQL samples) with x0 clipped to [-1, 1]."""

    def __init__(self, obs_dim: int, act_dim: int, c: DQLConfig):
        super().__init__()
        from onestep.core.nn import ConcatMLP
        from onestep.core.paths import VP

        self.net = ConcatMLP(act_dim, cond_dim=obs_dim, hidden=c.hidden, depth=c.depth,
                             time_dim=c.time_dim, time_scale=1.0)  # fed the index 0..N-1
        self.path = VP.from_betas(dql_betas(c.n_timesteps, c.beta_min, c.beta_max))
        self.nfe = c.n_timesteps
        # the sampler's coefficients on the step grid t_i = i / N, from core's path: step i
        # goes from (alpha, sigma) at t to (alpha', sigma') at t' = t - 1/N with the DDPM
        # posterior's noise s = sigma' sqrt(1 - e^{-2h}), h = lam' - lam (DDIM, eta = 1)
        times = torch.linspace(1.0, 0.0, self.nfe + 1, dtype=torch.float64)
        alpha, sigma = self.path.alpha(times).tolist(), self.path.sigma(times).tolist()
        lam = (0.5 * self.path.log_snr(times)).tolist()
        self._steps = []
        for i in range(self.nfe):
            s = sigma[i + 1] * math.sqrt(-math.expm1(-2.0 * (lam[i + 1] - lam[i]))) \
                if sigma[i + 1] > 0 else 0.0
            self._steps.append((alpha[i], sigma[i], alpha[i + 1],
                                math.sqrt(max(sigma[i + 1] ** 2 - s * s, 0.0)), s))

    def loss(self, obs, act, generator=None):
        # DQL's L_d (DDPM's simple loss): i ~ U{1..N}, a_i = sqrt(abar_i) a + sqrt(1 - abar_i)
        # eps, ||eps - eps_theta(a_i, i | s)||^2
        n = self.nfe
        idx = torch.randint(n, (len(act),), generator=generator, device=act.device)
        t = (idx.double() + 1) / n  # the grid time of step idx
        alpha = self.path.alpha(t.cpu()).to(act)[:, None]
        sigma = self.path.sigma(t.cpu()).to(act)[:, None]
        eps = _noise(act.shape, act, generator)
        pred = self.net(alpha * act + sigma * eps, idx.to(act.dtype), obs)
        loss = (pred - eps).pow(2).mean()
        return loss, {"bc_loss": loss.detach()}

    def act(self, obs: Tensor, generator=None) -> Tensor:
        """DDPM ancestral sampling over the N steps with x0 clipped to [-1, 1] (DQL's p_sample
        loop): core's `sample_ddim(eta=1)` on the step grid with a clipped x0 (tested equal),
        with the coefficients precomputed and the N time embeddings computed in one call."""
        x = _noise((len(obs), self.net.dim), obs, generator)
        emb = self._embeddings()  # (N, time_hidden) of the indices N-1, ..., 0
        for i, (a, s, a_next, direction, noise) in enumerate(self._steps):
            eps = self.net.forward_embedded(x, emb[i].expand(len(x), -1), obs)
            x0 = ((x - s * eps) / a).clamp(-1.0, 1.0)  # clip_denoised
            eps = (x - a * x0) / s  # the eps that goes with the clipped x0
            x = a_next * x0 + direction * eps
            if noise > 0:
                x = x + noise * _noise(x.shape, x, generator)
        return x.clamp(-1.0, 1.0)

    def _time_embeddings(self) -> Tensor:
        index = torch.arange(self.nfe - 1, -1, -1, dtype=torch.float32)  # N-1, ..., 0
        return self.net.time_embed(index, self.nfe)


class MeanFlowPolicy(_FixedGrid):
    """OFQL's policy: the average velocity u(z_t, r, t | s) (core's MeanFlowModel around a
    TwoTimeNet(ConcatMLP)); the action is one step from noise, a = eps - u(eps, 0, 1 | s)
    (MeanFlow's z_r = z_t - (t - r) u with t = 1, r = 0)."""

    nfe = 1

    def __init__(self, obs_dim: int, act_dim: int, c: OFQLConfig):
        super().__init__()
        from onestep.core.denoiser import Denoiser
        from onestep.core.distill.meanflow import MeanFlowModel, TwoTimeNet
        from onestep.core.nn import ConcatMLP
        from onestep.core.paths import RectifiedFlow

        net = ConcatMLP(act_dim, cond_dim=obs_dim, hidden=c.hidden, depth=c.depth,
                        time_dim=c.time_dim, time_scale=c.time_scale)
        self.model = MeanFlowModel(TwoTimeNet(net, time_scale=c.time_scale),
                                   Denoiser(nn.Identity(), RectifiedFlow(), prediction="velocity"))
        self.act_dim, self.c = act_dim, c

    def loss(self, obs, act, generator=None):
        from onestep.core.distill.meanflow import meanflow_loss, sample_two_times

        c = self.c
        r, t = sample_two_times(len(act), ratio=c.ratio_r_neq_t, sampler=c.time_sampler,
                                mean=c.time_mean, std=c.time_std, generator=generator,
                                device=generator.device if generator is not None else None)
        eps = _noise(act.shape, act, generator)
        loss, logs = meanflow_loss(self.model, act, eps, r.to(act.device), t.to(act.device),
                                   cond=obs, p=c.weight_p, c=c.weight_c, jvp=c.jvp)
        return loss, {"bc_loss": loss.detach(), "mf_mse": logs["mse"]}

    def one_step(self, noise: Tensor, obs: Tensor) -> Tensor:
        """eps - u(eps, 0, 1 | s), unclipped: `self.model(noise, 0, 1, obs)` (tested equal) with
        the embedding of (t, t - r) = (1, 1) computed once for the batch."""
        net = self.model.net.net  # the ConcatMLP inside the TwoTimeNet
        emb = self._embeddings()  # (1, time_hidden)
        return noise - net.forward_embedded(noise, emb.expand(len(noise), -1), obs)

    def _time_embeddings(self) -> Tensor:
        return self.model.net.net.time_embed(torch.ones(1, 2), 1)  # t = 1, t - r = 1

    def act(self, obs: Tensor, generator=None) -> Tensor:
        noise = _noise((len(obs), self.act_dim), obs, generator)
        return self.one_step(noise, obs).clamp(-1.0, 1.0)


POLICIES = {"ofql": MeanFlowPolicy, "dql": DiffusionPolicy, "fbc": FlowPolicy, "bc": BCPolicy}


# -- training tasks (core's Task protocol) ------------------------------------------------------
class _Timed:
    """Summed wall time of the task's steps, kept in its checkpoints (a resumed run's
    train_seconds counts the time before the interruption too)."""

    train_seconds = 0.0

    def extra_state(self) -> dict:
        return {"train_seconds": float(self.train_seconds)}

    def load_extra_state(self, state: dict) -> None:
        self.train_seconds = float(state.get("train_seconds", 0.0))


def _adam(module, c, steps):
    from onestep.core.train import warmup_cosine

    opt = torch.optim.Adam(module.parameters(), lr=c.lr)
    return opt, warmup_cosine(opt, 0, steps if c.lr_decay else None)


class BCTask(_Timed):
    """bc and fbc: the policy's behaviour loss only."""

    def __init__(self, algo: str, policy: nn.Module, c: BCConfig):
        self.kind = f"offline-{algo}"
        self.policy, self.c = policy, c
        self.opt, self.sched = _adam(policy, c, c.steps)

    def modules(self):
        return {"policy": self.policy}

    def optimizers(self):
        return {"policy": self.opt}

    def schedulers(self):
        return {"policy": self.sched}

    def step(self, batch, *, step: int, generator) -> dict:
        from onestep.core.train import optimizer_step

        t0 = time.perf_counter()
        self.policy.train()
        loss, logs = self.policy.loss(batch["obs"], batch["act"], generator)
        norm = optimizer_step(loss, self.opt, clip=self.c.grad_norm or None)
        self.sched.step()
        self.train_seconds += time.perf_counter() - t0
        return {"loss": float(loss.detach()), **{k: float(v) for k, v in logs.items()},
                "grad_norm": norm}


class QTask(_Timed):
    """ofql and dql: twin critics with a Polyak target, the policy with an EMA target policy,
    and the policy loss BC + eta * normalised Q loss (DQL Sec. 3; OFQL keeps it with the MeanFlow
    loss as the BC term)."""

    def __init__(self, algo: str, policy: nn.Module, obs_dim: int, act_dim: int, c: _QConfig):
        import copy

        from onestep.core.train import EMA

        self.kind = f"offline-{algo}"
        self.policy, self.c = policy, c
        self.critic = Critic(obs_dim, act_dim, c.hidden, c.depth)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.ema = EMA(policy, c.ema_decay)
        self.opt, self.sched = _adam(policy, c, c.steps)
        self.critic_opt, self.critic_sched = _adam(self.critic, c, c.steps)

    def modules(self):
        return {"policy": self.policy, "policy_ema": self.ema.module, "critic": self.critic,
                "critic_target": self.critic_target}

    def optimizers(self):
        return {"policy": self.opt, "critic": self.critic_opt}

    def schedulers(self):
        return {"policy": self.sched, "critic": self.critic_sched}

    def step(self, batch, *, step: int, generator) -> dict:
        from onestep.core.train import optimizer_step

        t0 = time.perf_counter()
        c = self.c
        obs, act, rew = batch["obs"], batch["act"], batch["rew"]
        next_obs, not_done = batch["next_obs"], batch["not_done"]
        clip = c.grad_norm or None
        self.policy.train()

        # 1. critics: y = r + gamma (1 - terminal) min_i Q'_i(s', a'), a' from the EMA policy
        with torch.no_grad():
            next_act = self.ema.module.act(next_obs, generator)
            target = torch.min(*self.critic_target(next_obs, next_act))
            y = rew + not_done * c.gamma * target
        q1, q2 = self.critic(obs, act)
        critic_loss = (q1 - y).pow(2).mean() + (q2 - y).pow(2).mean()
        critic_norm = optimizer_step(critic_loss, self.critic_opt, clip=clip)
        self.critic_sched.step()

        # 2. policy: BC + eta * Q loss, Q normalised by the other critic's mean |Q| on the
        #    policy's actions (DQL Sec. 3, alpha = eta / E|Q|, and its code's coin flip)
        bc_loss, logs = self.policy.loss(obs, act, generator)
        new_act = self.policy.act(obs, generator)  # ofql: one step; dql: N steps, with grad
        self.critic.requires_grad_(False)
        qa, qb = self.critic(obs, new_act)
        self.critic.requires_grad_(True)
        if bool(torch.rand((), generator=generator, device=generator.device) < 0.5):
            qa, qb = qb, qa
        q_loss = -qa.mean() / qb.abs().mean().detach()
        loss = bc_loss + c.eta * q_loss
        norm = optimizer_step(loss, self.opt, clip=clip)
        self.sched.step()

        # 3. targets: EMA policy every ema_every steps from ema_start; Polyak critic every step
        done = step + 1
        if done % c.ema_every == 0 and done > c.ema_start:
            self.ema.update(self.policy)
        with torch.no_grad():
            for p, tp in zip(self.critic.parameters(), self.critic_target.parameters(),
                             strict=True):
                tp.lerp_(p, c.tau)
        self.train_seconds += time.perf_counter() - t0
        return {"loss": float(loss.detach()), "critic_loss": float(critic_loss.detach()),
                "q_loss": float(q_loss.detach()), "q_mean": float(q1.detach().mean()),
                **{k: float(v) for k, v in logs.items()}, "grad_norm": norm,
                "critic_grad_norm": critic_norm}


def make_task(algo: str, config, obs_dim: int, act_dim: int):
    """The training task of `algo` (fresh networks from the current torch seed)."""
    _check_algo(algo)
    policy = POLICIES[algo](obs_dim, act_dim, config)
    if algo in ("bc", "fbc"):
        return BCTask(algo, policy, config)
    return QTask(algo, policy, obs_dim, act_dim, config)


# -- data ---------------------------------------------------------------------------------------
def _action_bounds(env: str, act_dim: int) -> tuple[list[float], list[float]]:
    """The environment's action bounds (robot tasks: [-1, 1], OSC_POSE's)."""
    from .tasks import robot_task

    if robot_task(env) is not None:
        return [-1.0] * act_dim, [1.0] * act_dim
    import gymnasium as gym

    e = gym.make(env)
    try:
        low = np.asarray(e.action_space.low, np.float64).reshape(-1)
        high = np.asarray(e.action_space.high, np.float64).reshape(-1)
    finally:
        e.close()
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ValueError(f"{env}: unbounded action space; the policies act in a bounded box")
    return low.tolist(), high.tolist()


def _tensors(data, low, high) -> dict[str, Tensor]:
    """Transitions as training tensors; actions scaled to [-1, 1] (clipped)."""
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    act = np.clip((data.actions - (high + low) / 2) / ((high - low) / 2), -1.0, 1.0)
    return {"obs": torch.from_numpy(np.ascontiguousarray(data.observations, np.float32)),
            "act": torch.from_numpy(act.astype(np.float32)),
            "rew": torch.from_numpy(data.rewards.astype(np.float32)),
            "next_obs": torch.from_numpy(np.ascontiguousarray(data.next_observations,
                                                              np.float32)),
            "not_done": torch.from_numpy((~data.terminals).astype(np.float32))}


# -- train --------------------------------------------------------------------------------------
def _save_policy(out: Path, task) -> Path:
    """The weights evaluation needs (policy, and the critics for candidates > 1), atomically."""
    import safetensors.torch

    weights = {}
    for name, module in task.modules().items():
        if name in ("policy", "critic_target"):
            for k, v in module.state_dict().items():
                weights[f"{name}.{k}"] = v.detach().cpu().contiguous().clone()
    path = out / POLICY_FILE
    tmp = out / f".{POLICY_FILE}.tmp{os.getpid()}"
    safetensors.torch.save_file(weights, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)
    return path


def train(algo: str, dataset: str, out: str, *, env: str = "", steps: int = 0,
          batch_size: int = 0, seed: int = 0, overrides: dict | str | None = None,
          resume: bool = False, overwrite: bool = False, progress: bool = True,
          threads: int = 1) -> dict:
    """Train `algo` (ofql, dql, fbc, bc) on a D4RL, Minari or robomimic `dataset` into the run
    folder `out`; `steps` / `batch_size` (0: the config's) and `overrides` ({field: value})
    change the config. Returns a summary with the steps trained and train_seconds."""
    from onestep.core.runner import run_task

    from .data import detect_format, load_dataset

    _check_algo(algo)
    if not dataset:
        raise ValueError("a dataset is required: a D4RL or robomimic file or a Minari dataset")
    if not out:
        raise ValueError("an output folder (out) is required")
    config = resolve_config(algo, overrides)
    config = dataclasses.replace(config, **({"steps": steps} if steps else {}),
                                 **({"batch_size": batch_size} if batch_size else {}))
    _validate(algo, config)
    if threads > 0:
        torch.set_num_threads(threads)
    fmt = detect_format(dataset)
    data = load_dataset(dataset, env=env or None, format=fmt)
    env_id = env or data.env
    if not env_id:
        raise ValueError(f"{dataset} names no environment; pass env (the gymnasium task)")
    if len(data) < 2:
        raise ValueError(f"{dataset}: {len(data)} transition(s); nothing to learn from")
    low, high = _action_bounds(env_id, data.action_dim)
    tensors = _tensors(data, low, high)
    refs = {k: data.attrs[k] for k in ("ref_random_return", "ref_expert_return")
            if k in data.attrs}
    run = {"algo": algo, "dataset": str(Path(dataset).resolve()), "format": fmt,
           "env": env_id, "obs_dim": data.obs_dim, "action_dim": data.action_dim,
           "action_low": low, "action_high": high, "references": refs,
           "dataset_summary": {"transitions": len(data), "episodes": data.num_episodes,
                               "quality": data.attrs.get("quality")},
           "seed": seed, "threads": threads, "config": dataclasses.asdict(config)}
    result = run_task(Path(out), lambda: make_task(algo, config, data.obs_dim, data.action_dim),
                      tensors, kind=f"offline-{algo}", run=run, steps=config.steps,
                      batch_size=config.batch_size, seed=seed, resume=resume,
                      overwrite=overwrite, ckpt_every=config.ckpt_every, progress=progress,
                      retry="a lower learning rate or gradient clip (--set lr=... grad_norm=...)",
                      log_every=config.log_every)
    task = result["task"]
    _save_policy(Path(out), task)
    last = result["records"][-1]["logs"] if result["records"] else {}
    return {"out": str(out), "algo": algo, "env": env_id, "steps": result["step"],
            "train_seconds": task.train_seconds, "session_seconds": result["seconds"],
            "final_logs": last}


# -- evaluate -----------------------------------------------------------------------------------
def _read_run(run) -> dict:
    path = Path(run) / "run.json"
    if not Path(run).exists():
        raise FileNotFoundError(f"{run}: no such run folder")
    if not path.is_file():
        raise ValueError(f"{run} holds no run.json: not a run written by onestep-policy train")
    try:
        info = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(info, dict) or "algo" not in info:
        raise ValueError(f"{path} names no algorithm: not a run written by onestep-policy train")
    return info


def _config_from(algo: str, values: dict):
    cls = CONFIGS[algo]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def load_policy(run) -> tuple[nn.Module, Critic | None, dict]:
    """(policy, target critic or None, run.json) of a finished run, in eval mode with its time
    embeddings frozen (`_FixedGrid.freeze`)."""
    import safetensors.torch

    info = _read_run(run)
    algo = info["algo"]
    _check_algo(algo)
    config = _config_from(algo, info.get("config", {}))
    file = Path(run) / POLICY_FILE
    if not file.is_file():
        raise ValueError(f"{run} holds no {POLICY_FILE}: its training has not finished "
                         "(continue it with --resume)")
    weights = safetensors.torch.load_file(file)
    policy = POLICIES[algo](info["obs_dim"], info["action_dim"], config)
    policy.load_state_dict({k[len("policy."):]: v for k, v in weights.items()
                            if k.startswith("policy.")})
    critic = None
    if any(k.startswith("critic_target.") for k in weights):
        critic = Critic(info["obs_dim"], info["action_dim"], config.hidden, config.depth)
        critic.load_state_dict({k[len("critic_target."):]: v for k, v in weights.items()
                                if k.startswith("critic_target.")})
        critic.eval()
    return policy.eval().freeze(), critic, info


def _bootstrap_ci(x: np.ndarray, seed: int, n: int = 10_000) -> list[float]:
    """95% percentile-bootstrap interval of the mean of x."""
    if len(x) == 1:
        return [float(x[0]), float(x[0])]
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n, len(x)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def actor(run, seed: int = 0):
    """`act(obs) -> action` of a finished run's policy, one observation at a time (batch 1),
    in the environment's action bounds; DQL picks among its candidates by the target critic's
    Q as its paper's sample_action. Returns (act, run.json)."""
    policy, critic, info = load_policy(run)
    config = _config_from(info["algo"], info.get("config", {}))
    candidates = getattr(config, "candidates", 1)
    low = np.asarray(info["action_low"], np.float32)
    high = np.asarray(info["action_high"], np.float32)
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        s = torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1)
        if candidates > 1 and critic is not None:  # DQL's sample_action: softmax over Q
            s = s.expand(candidates, -1)
            a = policy.act(s, gen)
            q = torch.min(*critic(s, a))
            a = a[torch.multinomial(torch.softmax(q, 0), 1, generator=gen)]
        else:
            a = policy.act(s, gen)
        a = a[0].numpy()
        return (a * (high - low) / 2 + (high + low) / 2).astype(np.float32)

    act.nfe, act.candidates = int(policy.nfe), int(candidates)
    return act, info


def evaluate(run: str, *, episodes: int = 10, seed: int = 0, progress: bool = True) -> dict:
    """Roll the run's policy out in its gymnasium task for `episodes` episodes (reset seeds
    seed, seed + 1, ...), one action at a time (batch 1). Returns the returns, the mean
    D4RL-normalised score against the reference returns the dataset recorded (None without
    them) with a 95% bootstrap interval over episodes, the median and p95 latency per action in
    ms (the policy call from observation to action, the first 10 actions left out as warm-up),
    and the network evaluations per action (nfe)."""
    import gymnasium as gym
    from tqdm.auto import tqdm

    from .scores import normalized_score
    from .tasks import robot_task

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    info = _read_run(run)
    algo, env_id = info["algo"], info["env"]
    if robot_task(env_id) is not None:
        raise ValueError(f"{env_id} is a robosuite task; the offline algorithms are evaluated "
                         "in gymnasium tasks (robot tasks: dm1, diffusion-policy)")
    act, _ = actor(run, seed)
    nfe, candidates = act.nfe, act.candidates
    env = gym.make(env_id)
    returns, lat = [], []
    bar = tqdm(total=episodes, desc=f"eval {algo}", disable=not progress, leave=False,
               dynamic_ncols=True)
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            total, done = 0.0, False
            while not done:
                t0 = time.perf_counter()
                a = act(obs)
                lat.append(time.perf_counter() - t0)
                obs, r, term, trunc, _ = env.step(a)
                total += float(r)
                done = term or trunc
            returns.append(total)
            bar.update(1)
    finally:
        bar.close()
        env.close()
    lat_ms = 1000 * np.asarray(lat[10:] if len(lat) > 10 else lat)
    rets = np.asarray(returns, np.float64)
    refs = info.get("references") or {}
    score = ci = None
    if "ref_random_return" in refs and "ref_expert_return" in refs:
        scores = np.atleast_1d(normalized_score(env_id, rets, refs))
        score, ci = float(scores.mean()), _bootstrap_ci(scores, seed)
    return {"algo": algo, "env": env_id, "episodes": episodes, "returns": returns,
            "mean_return": float(rets.mean()), "score": score, "score_ci": ci,
            "latency_ms_median": float(np.median(lat_ms)),
            "latency_ms_p95": float(np.percentile(lat_ms, 95)),
            "nfe": nfe, "candidates": candidates,
            "threads": torch.get_num_threads()}
