"""Robot imitation with action chunks: DM1, a one-step MeanFlow policy with dispersive
regularisation, and its baseline Diffusion Policy (DDPM, sampled with DDPM-100 or DDIM-10).

    train("dm1", "lift.hdf5", "runs/lift-dm1", steps=20000)      # a robomimic file
    evaluate("runs/lift-dm1", episodes=50)                        # robosuite rollouts

Both policies see the same thing and act the same way (Chi et al. 2023, "Diffusion Policy",
Sec. 3.1 and its low-dimensional robomimic configuration): the last `n_obs_steps` observations
(min-max normalised to [-1, 1], the first one repeated at an episode's start) condition a network
that generates a chunk of `horizon` future actions (normalised to [-1, 1]); the first
`n_action_steps` of them are executed before the next query (receding horizon). The network is
core's residual FiLM MLP on the flat chunk (B, horizon * action_dim), or core's UNet1D (the
paper's conditional temporal UNet), with the observation history as its vector condition; the
same network serves both algorithms.

dm1 (Zou et al. 2025, "DM1: MeanFlow with Dispersive Regularization for 1-Step Robotic
Manipulation"): the MeanFlow objective (Geng et al. 2025, Eq. 9-10; core's `meanflow_target`) on
the rectified-flow path z_t = (1 - t) a + t eps, plus lambda times the dispersive loss (Wang & He
2025, Table 1; core's `dispersive_loss` and its variants) on the network's intermediate
embeddings, L = L_MF + lambda L_disp. One action chunk is one network evaluation,
a = z_1 - u(z_1, 0, 1).

diffusion-policy (Chi et al. 2023): epsilon prediction on DDPM's discrete cosine schedule with
100 steps (Ho et al. 2020, Eq. 14; diffusers' squaredcos_cap_v2 as the paper's code), sampled by
ancestral DDPM over all 100 steps or deterministic DDIM (Song et al. 2021, Eq. 12) over 10; the
x0 prediction is clipped to [-1, 1] at every step (the paper's `clip_sample=True`).

A run folder holds run.json (algorithm, dataset, task, resolved config, normalisation), log.jsonl,
checkpoints/ (core's atomic checkpoints: weights, optimiser, RNG; `resume` continues exactly)
and policy.safetensors (the final EMA weights).
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

__all__ = ["ALGOS", "DM1Config", "DiffusionPolicyConfig", "ChunkPolicy", "train", "evaluate",
           "load_policy", "resolve_config", "chunk_windows", "wilson_interval"]

ALGOS = ("dm1", "diffusion-policy")
SAMPLERS = {"dm1": ("meanflow",), "diffusion-policy": ("ddpm", "ddim")}
RUN_FILE, WEIGHTS_FILE = "run.json", "policy.safetensors"


# -- configs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ChunkConfig:
    horizon: int = 16
    """Actions generated per query (Diffusion Policy's prediction horizon T_p = 16)."""
    n_obs_steps: int = 2
    """Observations the policy is conditioned on (T_o = 2)."""
    n_action_steps: int = 8
    """Actions executed per query before the next one (T_a = 8)."""
    network: str = "mlp"
    """"mlp": core's residual FiLM MLP on the flat chunk (the small-scale choice for CPU
    training; DM1's code uses a 768x3 residual MLP); "unet1d": core's UNet1D, Diffusion
    Policy's conditional temporal UNet (Chi et al. 2023, Fig. 2b)."""
    hidden: int = 256
    """Width of the MLP."""
    depth: int = 4
    """Residual blocks of the MLP."""
    unet_dims: tuple[int, ...] = (64, 128, 256)
    """Channels per UNet1D level (Diffusion Policy: 256, 512, 1024); the horizon must be
    divisible by 2^(levels - 1)."""
    time_dim: int = 64
    """Sinusoidal time features (the embedding width of UNet1D)."""
    steps: int = 20000
    """Training steps."""
    batch_size: int = 256
    """Batch size (both papers: 256)."""
    lr: float = 1e-4
    """AdamW learning rate (both papers: 1e-4)."""
    weight_decay: float = 1e-6
    """AdamW weight decay (both papers: 1e-6)."""
    warmup: int = 500
    """Linear LR warm-up steps, then cosine decay to 0 (DP: 500)."""
    lr_decay_steps: int = 0
    """Length of the cosine decay; 0: the run's `steps` (fixed when the run starts, so a resumed
    run keeps its schedule)."""
    clip: float = 1.0
    """Gradient-norm clipping (0: none)."""
    ema_decay: float = 0.995
    """EMA of the weights used for acting (DM1's code: 0.995; 0: no EMA, act with the weights)."""
    log_every: int = 100
    """Steps between log.jsonl records."""
    ckpt_every: int = 2000
    """Steps between checkpoints (one is always written at the end)."""


@dataclass(frozen=True)
class DM1Config(_ChunkConfig):
    """DM1 (Zou et al. 2025) with the settings of its released robomimic configuration."""

    ratio_r_neq_t: float = 0.5
    """Fraction of samples with r != t (DM1's code: flow_ratio 0.5 with r = t; MeanFlow's
    Table 1a: 0.25)."""
    time_mean: float = -0.4
    """Logit-normal mean of the (r, t) draws (MeanFlow Table 1d; DM1's code)."""
    time_std: float = 1.0
    """Logit-normal std (MeanFlow Table 1d; DM1's code)."""
    weight_p: float = 0.0
    """Adaptive loss power p, w = sg(1 / (mse + c)^p) on each sample's mean squared error
    (MeanFlow Sec. 4.3); DM1's code trains with the plain MSE (use_adaptive_loss false), p = 0."""
    weight_c: float = 1e-3
    """c of the adaptive weight (MeanFlow Sec. 4.3)."""
    dispersive_weight: float = 0.5
    """lambda in L = L_MF + lambda L_disp (DM1's code: 0.5); 0 gives a plain MeanFlow policy."""
    dispersive_variant: str = "infonce_l2"
    """infonce_l2, infonce_cosine, hinge or covariance (Wang & He 2025, Table 1; DM1 compares
    the four)."""
    dispersive_tau: float = 0.5
    """InfoNCE temperature (DM1's code: 0.5)."""
    dispersive_margin: float = 1.0
    """Hinge margin epsilon."""
    dispersive_layers: str = "mid"
    """Comma-separated layers of the MLP whose outputs are dispersed: "mid" (the middle residual
    block; DM1's README recommends the middle layer), "blocks.K", or "time_embed,cond_embed"
    (the time (t, t - r) and observation embeddings, which DM1's released MeanFlow code
    disperses)."""
    sample_steps: int = 1
    """MeanFlow steps per action chunk at inference (1: one network evaluation)."""
    jvp: str = "double_backward"
    """How d/dt u is computed (core's total_derivative; double_backward is the fastest for small
    MLPs on CPU, and keeps the captured embeddings ordinary autograd tensors)."""


@dataclass(frozen=True)
class DiffusionPolicyConfig(_ChunkConfig):
    """Diffusion Policy (Chi et al. 2023), CNN-free low-dimensional variant."""

    num_train_steps: int = 100
    """DDPM steps N (the paper: 100)."""
    clip_sample: bool = True
    """Clip the x0 prediction to [-1, 1] at every sampling step (the paper's code)."""
    sampler: str = "ddpm"
    """Default sampler at evaluation: ddpm (ancestral, all N steps) or ddim."""
    ddim_steps: int = 10
    """DDIM steps (the paper's fast setting: 10)."""


CONFIGS = {"dm1": DM1Config, "diffusion-policy": DiffusionPolicyConfig}


def resolve_config(algo: str, overrides: dict | str | None = None):
    """The config of `algo` with `overrides` (field -> value, values as strings or of the
    field's type, or "k=v k2=v2" text) applied and checked."""
    if algo not in ALGOS:
        raise ValueError(f"unknown imitation algorithm {algo!r}; choose from {', '.join(ALGOS)}")
    return _resolve_config(algo, overrides, 0, 0)


def _resolve_config(algo: str, overrides, steps: int, batch_size: int):
    from onestep.core.runner import parse_overrides

    cls = CONFIGS[algo]
    if isinstance(overrides, str):
        kw = parse_overrides(overrides, cls)
    else:
        kw = {}
        for key, value in (overrides or {}).items():
            if isinstance(value, str):
                kw.update(parse_overrides(f"{key}={value}", cls))
            else:
                kw.update(parse_overrides(f"{key}={_text(value)}", cls))
    if steps:
        kw["steps"] = steps
    if batch_size:
        kw["batch_size"] = batch_size
    cfg = cls(**kw)
    _validate(algo, cfg)
    return cfg


def _text(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def _validate(algo: str, c) -> None:
    ints = {k: getattr(c, k) for k in ("horizon", "n_obs_steps", "n_action_steps", "hidden",
                                       "depth", "time_dim", "steps", "batch_size", "log_every")}
    bad = [k for k, v in ints.items() if v < 1]
    if bad:
        raise ValueError(f"{algo}: {', '.join(bad)} must be at least 1")
    if c.network not in ("mlp", "unet1d"):
        raise ValueError(f"{algo}: unknown network {c.network!r}; choose mlp or unet1d")
    if c.network == "unet1d" and (not c.unet_dims or min(c.unet_dims) < 1
                                  or c.horizon % 2 ** (len(c.unet_dims) - 1)):
        raise ValueError(f"{algo}: unet1d needs positive unet_dims and a horizon divisible by "
                         f"2^(levels - 1); got horizon {c.horizon}, unet_dims {c.unet_dims}")
    if c.n_action_steps > c.horizon:
        raise ValueError(f"{algo}: n_action_steps ({c.n_action_steps}) exceeds the horizon "
                         f"({c.horizon})")
    if not c.lr > 0 or min(c.weight_decay, c.warmup, c.clip, c.ckpt_every, c.lr_decay_steps) < 0:
        raise ValueError(f"{algo}: need lr > 0 and weight_decay, warmup, lr_decay_steps, clip "
                         "and ckpt_every >= 0")
    if not 0 <= c.ema_decay < 1:
        raise ValueError(f"{algo}: ema_decay must be in [0, 1), got {c.ema_decay}")
    if algo == "dm1":
        from onestep.core.distill.dispersive import VARIANTS

        if not 0 <= c.ratio_r_neq_t <= 1 or c.time_std <= 0 or c.weight_p < 0 or c.weight_c <= 0:
            raise ValueError("dm1: need 0 <= ratio_r_neq_t <= 1, time_std > 0, weight_p >= 0 "
                             "and weight_c > 0")
        if c.dispersive_variant not in VARIANTS:
            raise ValueError(f"dm1: unknown dispersive_variant {c.dispersive_variant!r}; choose "
                             f"from {', '.join(VARIANTS)}")
        if c.dispersive_weight < 0 or c.dispersive_tau <= 0 or c.dispersive_margin <= 0:
            raise ValueError("dm1: need dispersive_weight >= 0, dispersive_tau > 0 and "
                             "dispersive_margin > 0")
        if c.sample_steps < 1:
            raise ValueError("dm1: sample_steps must be at least 1")
    else:
        if c.num_train_steps < 2 or not 1 <= c.ddim_steps <= c.num_train_steps:
            raise ValueError("diffusion-policy: need num_train_steps >= 2 and 1 <= ddim_steps "
                             "<= num_train_steps")
        if c.sampler not in SAMPLERS[algo]:
            raise ValueError(f"diffusion-policy: unknown sampler {c.sampler!r}; choose ddpm or "
                             "ddim")


# -- data: observation histories and action chunks ----------------------------------------------
def chunk_windows(data, n_obs_steps: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(obs (N, n_obs_steps, D), actions (N, horizon, A)) for every step t of every episode:
    observations t - n_obs_steps + 1 .. t and actions t .. t + horizon - 1, each index clamped
    to its episode (the first observation and the last action repeated, as Diffusion Policy's
    sequence sampler pads)."""
    obs_idx, act_idx = [], []
    for a, b in data.episode_bounds():
        t = np.arange(a, b)[:, None]
        obs_idx.append(np.clip(t + np.arange(1 - n_obs_steps, 1)[None], a, b - 1))
        act_idx.append(np.clip(t + np.arange(horizon)[None], a, b - 1))
    obs_idx, act_idx = np.concatenate(obs_idx), np.concatenate(act_idx)
    return data.observations[obs_idx], data.actions[act_idx]


@dataclass(frozen=True)
class Normalizer:
    """Per-dimension min-max map of observations and actions onto [-1, 1] (Diffusion Policy's
    LinearNormalizer, mode "limits"); a dimension with a range under 1e-4 is only centred."""

    obs_lo: np.ndarray
    obs_hi: np.ndarray
    act_lo: np.ndarray
    act_hi: np.ndarray

    @classmethod
    def fit(cls, obs: np.ndarray, act: np.ndarray) -> Normalizer:
        return cls(obs.min(0), obs.max(0), act.min(0), act.max(0))

    @staticmethod
    def _scale(lo, hi):
        span = hi - lo
        return np.where(span < 1e-4, 1.0, 2.0 / np.maximum(span, 1e-12)), (lo + hi) / 2

    def obs(self, x):
        s, m = self._scale(self.obs_lo, self.obs_hi)
        return ((x - m) * s).astype(np.float32)

    def act(self, x):
        s, m = self._scale(self.act_lo, self.act_hi)
        return ((x - m) * s).astype(np.float32)

    def unact(self, y):
        s, m = self._scale(self.act_lo, self.act_hi)
        return (y / s + m).astype(np.float32)

    def to_json(self) -> dict:
        return {k: np.asarray(getattr(self, k), np.float64).tolist()
                for k in ("obs_lo", "obs_hi", "act_lo", "act_hi")}

    @classmethod
    def from_json(cls, d: dict) -> Normalizer:
        return cls(**{k: np.asarray(d[k], np.float64) for k in ("obs_lo", "obs_hi", "act_lo",
                                                                "act_hi")})


# -- networks and losses ------------------------------------------------------------------------
def _network(cfg, obs_dim: int, action_dim: int):
    """The action network: chunk (B, horizon * A), time, observation history (B, n_obs * D)."""
    from onestep.core.nn import MLP, UNet1D

    # time_scale 1: DDPM feeds the step index 0..N-1, MeanFlow t and t - r in [0, 1]
    if cfg.network == "unet1d":
        return UNet1D(action_dim, cfg.horizon, dims=cfg.unet_dims, time_dim=cfg.time_dim,
                      cond_dim=cfg.n_obs_steps * obs_dim, time_scale=1.0)
    return MLP(dim=cfg.horizon * action_dim, hidden=cfg.hidden, depth=cfg.depth,
               time_dim=cfg.time_dim, cond_dim=cfg.n_obs_steps * obs_dim, time_scale=1.0)


def build_model(algo: str, cfg, obs_dim: int, action_dim: int) -> nn.Module:
    """dm1: a MeanFlowModel u(z, r, t, obs) around a TwoTimeNet MLP; diffusion-policy: an eps
    Denoiser on the discrete cosine DDPM path (time input: the step index)."""
    from onestep.core.denoiser import Denoiser
    from onestep.core.paths import VP, RectifiedFlow

    net = _network(cfg, obs_dim, action_dim)
    if algo == "dm1":
        from onestep.core.distill.meanflow import MeanFlowModel, TwoTimeNet

        ref = Denoiser(nn.Identity(), RectifiedFlow(), prediction="velocity", time_input="t")
        return MeanFlowModel(TwoTimeNet(net, time_scale=1.0), ref)
    return Denoiser(net, VP.ddpm_cosine(cfg.num_train_steps), prediction="eps",
                    time_input="index")


class DM1Loss:
    """L = L_MF + lambda L_disp (DM1, as its released code adds them): the MeanFlow regression
    of u(z_t, r, t | obs) onto sg(v - (t - r) du/dt), v = eps - a (Geng et al. 2025, Eq. 9-10,
    Alg. 1), with the per-sample
    mean squared error weighted by sg(1 / (mse + c)^p) (Sec. 4.3; p = 0: plain MSE), plus the
    dispersive loss (Wang & He 2025, Table 1) of the intermediate embeddings that the same
    forward pass computes (DM1's code runs a second forward for them; this one reuses the
    loss's)."""

    def __init__(self, cfg: DM1Config):
        self.cfg = cfg
        self._regs: dict[int, object] = {}

    def _reg(self, model):
        from onestep.core.distill.dispersive import DispersiveRegularizer, default_layers

        if id(model) not in self._regs:
            c = self.cfg
            names = [n.strip() for n in c.dispersive_layers.split(",") if n.strip()]
            mid = default_layers(model.net.net)  # the MLP's middle block, UNet1D's mid2
            layers = [f"net.{m}" for n in names for m in (mid if n == "mid" else [n])]
            self._regs[id(model)] = DispersiveRegularizer(
                model.net, layers, weight=c.dispersive_weight, variant=c.dispersive_variant,
                tau=c.dispersive_tau, margin=c.dispersive_margin)
        return self._regs[id(model)]

    def __call__(self, model, batch, *, generator=None):
        from onestep.core.convert import broadcast
        from onestep.core.distill.meanflow import meanflow_target, sample_two_times

        c = self.cfg
        a, obs = batch  # (B, horizon * A) normalised chunks, (B, n_obs * D) normalised history
        noise = torch.randn(a.shape, generator=generator, device=a.device, dtype=a.dtype)
        r, t = sample_two_times(a.shape[0], ratio=c.ratio_r_neq_t, mean=c.time_mean,
                                std=c.time_std, generator=generator, device=a.device)
        r, t = r.to(a.dtype), t.to(a.dtype)
        z = (1 - broadcast(t, a)) * a + broadcast(t, a) * noise  # z_t, t=0 data, t=1 noise
        disperse = c.dispersive_weight > 0
        reg = self._reg(model) if disperse else None
        if disperse:
            with reg.capture():
                u, u_tgt = meanflow_target(model, z, r, t, noise - a, cond=obs, jvp=c.jvp)
        else:
            u, u_tgt = meanflow_target(model, z, r, t, noise - a, cond=obs, jvp=c.jvp)
        mse = (u - u_tgt).float().pow(2).mean(1)  # (B,)
        w = 1.0 / (mse.detach() + c.weight_c) ** c.weight_p
        mf = (w * mse).mean()
        logs = {"mf_loss": mf.detach().item(), "mse": mse.detach().mean().item()}
        if not disperse:
            return mf, logs
        disp = reg.raw_loss()
        logs["disp"] = disp.detach().item()
        return mf + c.dispersive_weight * disp, logs


def _loss(algo: str, cfg):
    if algo == "dm1":
        return DM1Loss(cfg)
    from onestep.core.losses import DSMLoss

    return DSMLoss(target="eps")  # Ho et al. 2020, Eq. 14, t a uniform step index


# -- acting -------------------------------------------------------------------------------------
class _ClipX0:
    """A denoiser whose x0 prediction is clipped to [-1, 1] and whose eps is re-derived from the
    clipped x0 (diffusers' clip_sample, which Diffusion Policy uses)."""

    def __init__(self, denoiser):
        self.denoiser, self.path = denoiser, denoiser.path

    def x0_eps(self, x, t, cond=None):
        from onestep.core.convert import as_batch_time, convert

        t = as_batch_time(t, x)
        x0 = self.denoiser.x0(x, t, cond).clamp(-1.0, 1.0)
        return x0, convert(x0, "x0", "eps", x, t, self.path)


class _GridDenoiser:
    """The eps network of a Denoiser on the fixed times of a sampler, with each time's network
    time, alpha and sigma computed once (so that acting times the network and the sampler, not
    path bookkeeping): x0 = (x - sigma eps) / alpha, clipped to [-1, 1] with eps re-derived
    when `clip`. Gives the same x0 and eps as `_ClipX0(denoiser)` / `denoiser.x0_eps` (tested)."""

    def __init__(self, denoiser, times: Tensor, clip: bool):
        self.path, self.net, self.clip = denoiser.path, denoiser.model, clip
        alpha, sigma = denoiser.path.alpha_sigma(times)
        net_t = denoiser.network_time(times).to(torch.float32)
        self.table = {t: (net_t[i:i + 1], float(alpha[i]), float(sigma[i]))
                      for i, t in enumerate(times.tolist())}

    def x0_eps(self, x, t, cond=None):
        net_t, a, s = self.table[float(t)]
        eps = self.net(x, net_t.expand(x.shape[0]), cond)
        x0 = (x - s * eps) / a
        if self.clip:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - a * x0) / s
        return x0, eps


class ChunkPolicy:
    """A trained policy acting in an environment: `reset()`, then `act(obs) -> action` per step
    (an observation history of n_obs_steps, a queue of n_action_steps actions from each generated
    chunk). `predict_chunk(obs_history)` generates one normalised-then-unnormalised chunk
    (horizon, A); `latencies` records the seconds of each query."""

    def __init__(self, algo: str, cfg, model: nn.Module, norm: Normalizer, obs_dim: int,
                 action_dim: int, sampler: str = "", seed: int = 0):
        self.algo, self.cfg, self.model, self.norm = algo, cfg, model.eval(), norm
        self.obs_dim, self.action_dim = obs_dim, action_dim
        sampler = sampler or ("meanflow" if algo == "dm1" else cfg.sampler)
        if sampler not in SAMPLERS[algo]:
            raise ValueError(f"{algo} has no sampler {sampler!r}; choose from "
                             f"{', '.join(SAMPLERS[algo])} (or '' for the default)")
        self.sampler = sampler
        self.reference = False
        """Sample through core's Denoiser (path coefficients per call) instead of the tables."""
        self._grid = None
        self.generator = torch.Generator().manual_seed(seed)
        self.latencies: list[float] = []
        self.reset()

    @property
    def nfe(self) -> int:
        """Network evaluations per action chunk."""
        if self.algo == "dm1":
            return self.cfg.sample_steps
        return self.cfg.num_train_steps if self.sampler == "ddpm" else self.cfg.ddim_steps

    def reset(self) -> None:
        self._history: list[np.ndarray] = []
        self._queue: list[np.ndarray] = []

    @torch.no_grad()
    def _sample(self, cond: Tensor) -> Tensor:
        shape = (cond.shape[0], self.cfg.horizon * self.action_dim)
        noise = torch.randn(shape, generator=self.generator)
        if self.algo == "dm1":
            from onestep.core.distill.meanflow import MeanFlowGenerator

            # z_0 = z_1 - u(z_1, 0, 1) (MeanFlow Eq. 3 with r = 0, t = 1); clipped like DM1's code
            out = MeanFlowGenerator(self.model).generate(noise, cond, nfe=self.cfg.sample_steps)
            return out.clamp(-1.0, 1.0)
        from onestep.core.solvers.classic import sample_ddim

        # times on the DDPM grid t_k = (k + 1) / N from t = 1 (step N - 1) down to the data;
        # eta = 1 on all N steps is ancestral DDPM sampling (DDIM Eq. 16), eta = 0 is DDIM
        n = self.cfg.num_train_steps if self.sampler == "ddpm" else self.cfg.ddim_steps
        times = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)
        eta = 1.0 if self.sampler == "ddpm" else 0.0
        if self.reference:
            den = _ClipX0(self.model) if self.cfg.clip_sample else self.model
        else:
            if self._grid is None:
                self._grid = _GridDenoiser(self.model, times, self.cfg.clip_sample)
            den = self._grid
        return sample_ddim(den, noise, times, cond=cond, generator=self.generator, eta=eta)

    def predict_chunk(self, obs_history: np.ndarray) -> np.ndarray:
        """Actions (horizon, A) for an observation history (n_obs_steps, D), oldest first."""
        obs_history = np.asarray(obs_history, np.float32).reshape(self.cfg.n_obs_steps, -1)
        cond = torch.from_numpy(self.norm.obs(obs_history).reshape(1, -1))
        t0 = time.perf_counter()
        chunk = self._sample(cond)
        self.latencies.append(time.perf_counter() - t0)
        return self.norm.unact(chunk.reshape(self.cfg.horizon, self.action_dim).numpy())

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, np.float32).reshape(-1)
        if not self._history:
            self._history = [obs] * self.cfg.n_obs_steps
        else:
            self._history = self._history[1:] + [obs]
        if not self._queue:
            chunk = self.predict_chunk(np.stack(self._history))
            self._queue = list(chunk[:self.cfg.n_action_steps])
        return self._queue.pop(0)


# -- the run folder -----------------------------------------------------------------------------
def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_run(run) -> dict:
    path = Path(run) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run}: not a policy run folder (no {RUN_FILE})")
    try:
        info = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is corrupt: {e}") from None
    if info.get("algo") not in ALGOS:
        raise ValueError(f"{path}: algorithm {info.get('algo')!r} is not one of "
                         f"{', '.join(ALGOS)}")
    return info


def load_policy(run, *, sampler: str = "", seed: int = 0) -> ChunkPolicy:
    """The policy of a run folder with its final EMA weights (or, for a run that has not
    finished, its newest checkpoint's)."""
    import safetensors.torch

    info = _read_run(run)
    algo = info["algo"]
    cfg = CONFIGS[algo](**_config_kwargs(CONFIGS[algo], info["config"]))
    model = build_model(algo, cfg, info["obs_dim"], info["action_dim"])
    weights = Path(run) / WEIGHTS_FILE
    if weights.is_file():
        model.load_state_dict(safetensors.torch.load_file(weights))
    else:
        from onestep.core.train import load_checkpoint

        key = "ema" if cfg.ema_decay > 0 else "model"
        load_checkpoint(Path(run), {key: model})
    return ChunkPolicy(algo, cfg, model, Normalizer.from_json(info["normalizer"]),
                       info["obs_dim"], info["action_dim"], sampler=sampler, seed=seed)


def _config_kwargs(cls, stored: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in names}


# -- train --------------------------------------------------------------------------------------
def train(algo: str, dataset: str, out: str, *, env: str = "", steps: int = 0,
          batch_size: int = 0, seed: int = 0, overrides: dict | None = None,
          resume: bool = False, overwrite: bool = False, progress: bool = True,
          threads: int = 1) -> dict:
    """Train `algo` (dm1 or diffusion-policy) on the demonstrations in `dataset` (a robomimic
    file; any format load_dataset reads) into the run folder `out`. `overrides`: config field ->
    value (strings are converted to the field's type). Returns a summary with train_seconds."""
    import shutil

    import safetensors.torch

    from onestep.core.train import LossTask, TrainConfig, Trainer

    from .data import load_dataset

    if algo not in ALGOS:
        raise ValueError(f"unknown imitation algorithm {algo!r}; choose from {', '.join(ALGOS)}")
    if not dataset:
        raise ValueError("a dataset is required: a robomimic file from make-dataset")
    if not out:
        raise ValueError("an output folder is required")
    cfg = _resolve_config(algo, overrides, steps, batch_size)
    out = Path(out)
    torch.set_num_threads(max(1, threads))
    data = load_dataset(dataset, env=env or None)
    if data.num_episodes == 0 or len(data) == 0:
        raise ValueError(f"{dataset}: no demonstrations")
    task_env = env or data.env
    obs_w, act_w = chunk_windows(data, cfg.n_obs_steps, cfg.horizon)
    norm = Normalizer.fit(data.observations, data.actions)
    info = {"algo": algo, "dataset": str(dataset), "env": task_env, "seed": seed,
            "obs_dim": data.obs_dim, "action_dim": data.action_dim,
            "obs_keys": [list(k) for k in data.obs_keys], "episodes": data.num_episodes,
            "transitions": len(data), "config": dataclasses.asdict(cfg),
            "normalizer": norm.to_json()}

    # the run folder: fresh, replaced, or resumed with the same settings
    run_file = out / RUN_FILE
    if run_file.exists() and resume:
        old = _read_run(out)
        for key in ("algo", "env", "obs_dim", "action_dim", "seed"):
            if old.get(key) != info[key]:
                raise ValueError(f"{out}: cannot resume a run with {key}={old.get(key)!r} as "
                                 f"{key}={info[key]!r}")
        now = json.loads(json.dumps(info["config"]))  # tuples as the stored lists
        changed = sorted(k for k, v in now.items() if k != "steps" and old["config"].get(k) != v)
        if changed:
            had = ", ".join(f"{k}={old['config'].get(k)!r}" for k in changed)
            raise ValueError(f"{out}: cannot resume with different settings: "
                             f"{', '.join(changed)} (the run has {had})")
        lr_total = old.get("lr_total_steps", cfg.lr_decay_steps or old["config"]["steps"])
        prev_seconds = float(old.get("train_seconds", 0.0))
    elif out.exists() and any(out.iterdir()) and not resume:
        if not overwrite:
            raise ValueError(f"{out} exists; pass --overwrite to replace it or --resume to "
                             "continue it")
        shutil.rmtree(out)
        lr_total, prev_seconds = cfg.lr_decay_steps or cfg.steps, 0.0
    else:
        lr_total, prev_seconds = cfg.lr_decay_steps or cfg.steps, 0.0
    out.mkdir(parents=True, exist_ok=True)
    info["lr_total_steps"] = lr_total
    _atomic_write(run_file, json.dumps(info, indent=1) + "\n")

    obs_n = torch.from_numpy(norm.obs(obs_w).reshape(len(obs_w), -1))
    act_n = torch.from_numpy(norm.act(act_w).reshape(len(act_w), -1))
    trainer = Trainer(TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size,
                                  log_every=min(cfg.log_every, cfg.steps),
                                  ckpt_every=cfg.ckpt_every, seed=seed, out_dir=out,
                                  progress=progress, device="cpu", resume=resume))
    model = build_model(algo, cfg, data.obs_dim, data.action_dim)  # seeded by Trainer()
    task = LossTask(model, _loss(algo, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay,
                    warmup=min(cfg.warmup, lr_total), total_steps=lr_total,
                    clip=cfg.clip or None, ema_decay=cfg.ema_decay or None, amp=False, kind=algo)
    t0 = time.perf_counter()
    records = trainer.fit(task, (act_n, obs_n))
    seconds = time.perf_counter() - t0
    acting = task.ema.module if task.ema is not None else task.model
    tmp = out / f".{WEIGHTS_FILE}.tmp"
    safetensors.torch.save_file({k: v.detach().cpu().contiguous()
                                 for k, v in acting.state_dict().items()}, tmp)
    os.replace(tmp, out / WEIGHTS_FILE)
    info["train_seconds"] = prev_seconds + seconds
    info["steps_trained"] = cfg.steps
    _atomic_write(run_file, json.dumps(info, indent=1) + "\n")
    last = records[-1]["logs"] if records else {}
    return {"algo": algo, "out": str(out), "env": task_env, "steps": cfg.steps,
            "episodes": data.num_episodes, "windows": len(obs_w),
            "train_seconds": info["train_seconds"], "final_loss": last.get("loss"),
            "final_logs": last,
            "nfe": 1 * cfg.sample_steps if algo == "dm1" else
            (cfg.num_train_steps if cfg.sampler == "ddpm" else cfg.ddim_steps),
            "params": sum(p.numel() for p in model.parameters())}


# -- evaluate -----------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a success probability (95% for z = 1.96), in percent."""
    if n <= 0:
        return (0.0, 100.0)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


def rollout(policy: ChunkPolicy, env, task, episodes: int, *, horizon: int | None = None,
            progress: bool = False) -> list[int]:
    """Success (0/1) of `episodes` robosuite episodes of `policy`, each stopped at the first
    success or after `horizon` steps (the task's)."""
    from tqdm.auto import tqdm

    from .robots import _low_dim

    steps = horizon or task.horizon
    out = []
    for _ in tqdm(range(episodes), desc=f"eval {task.name}", disable=not progress,
                  dynamic_ncols=True):
        obs = env.reset()
        policy.reset()
        ok = 0
        for _ in range(steps):
            obs, _, _, _ = env.step(np.clip(policy.act(_low_dim(obs, task)), -1.0, 1.0))
            if env._check_success():
                ok = 1
                break
        out.append(ok)
    return out


def evaluate(run: str, *, episodes: int = 10, seed: int = 0, progress: bool = True,
             sampler: str = "") -> dict:
    """Roll the policy of `run` out in its robosuite task for `episodes` episodes: success per
    episode, the success rate in percent with its 95% Wilson interval, and the latency of each
    action query at batch 1 (median and p95, ms). `sampler`: "" (the algorithm's default), for
    diffusion-policy "ddpm" (100 steps) or "ddim" (10)."""
    return _evaluate(run, episodes=episodes, seed=seed, progress=progress, sampler=sampler)


def _evaluate(run, *, episodes=10, seed=0, progress=True, sampler="", horizon=None) -> dict:
    from .robots import make_robot_env
    from .tasks import robot_task

    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    info = _read_run(run)
    task = robot_task(info.get("env", ""))
    if task is None:
        raise ValueError(f"{run}: the run's task {info.get('env')!r} is not a robot task "
                         "(Lift or Can); train with --env")
    if info["obs_dim"] != task.obs_dim or info["action_dim"] != task.action_dim:
        raise ValueError(f"{run}: the policy observes {info['obs_dim']} and acts with "
                         f"{info['action_dim']} values, {task.name} {task.obs_dim} and "
                         f"{task.action_dim}")
    policy = load_policy(run, sampler=sampler, seed=seed)
    env = make_robot_env(task, seed=seed)
    t0 = time.perf_counter()
    success = rollout(policy, env, task, episodes, horizon=horizon, progress=progress)
    lat = np.asarray(policy.latencies) * 1000.0
    lo, hi = wilson_interval(sum(success), len(success))
    result = {"algo": info["algo"], "env": task.name, "sampler": policy.sampler,
              "nfe": policy.nfe, "episodes": episodes, "seed": seed, "success": success,
              "score": 100.0 * sum(success) / len(success), "score_ci": [lo, hi],
              "latency_ms_median": float(np.median(lat)),
              "latency_ms_p95": float(np.percentile(lat, 95)), "queries": len(lat),
              "eval_seconds": time.perf_counter() - t0,
              "train_seconds": info.get("train_seconds")}
    _atomic_write(Path(run) / f"eval-{policy.sampler}-seed{seed}.json",
                  json.dumps(result, indent=1) + "\n")
    return result
