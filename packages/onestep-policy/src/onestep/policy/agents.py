"""Behaviour policies for the D4RL-style splits: TD3 (Fujimoto et al. 2018) and SAC (Haarnoja et
al. 2018, with a learned temperature) on a gymnasium Box task, with small (64x64) networks that
train on one CPU thread.

`train_behavior` runs one learner for a number of environment steps, evaluates the
deterministic actor every `eval_every` steps, and saves everything the splits need into a folder
(written once, then reused): policy.json (settings, the evaluation curve as [step, return,
CPU seconds so far], timings),
actors.safetensors (the actor at every evaluation) and replay.npz (every transition the learner
saw, in order: the medium-replay split is its first part).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["AgentConfig", "BehaviorPolicies", "train_behavior", "Actor", "GaussianActor"]


@dataclass(frozen=True)
class AgentConfig:
    agent: str = "td3"
    """td3 or sac."""
    steps: int = 300_000
    """Environment steps (one gradient update each after start_steps)."""
    hidden: int = 64
    start_steps: int = 10_000
    """Uniform random actions before learning starts."""
    batch_size: int = 256
    lr: float = 1e-3
    gamma: float = 0.99
    tau: float = 0.005
    expl_noise: float = 0.1
    """TD3: Gaussian exploration noise (fraction of the action range)."""
    policy_noise: float = 0.2
    """TD3: target policy smoothing noise."""
    noise_clip: float = 0.5
    policy_delay: int = 2
    """TD3: critic updates per actor update."""
    eval_every: int = 5000
    eval_episodes: int = 5
    seed: int = 0


def _mlp(i, o, h):
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, o))


class Actor(nn.Module):
    """Deterministic tanh actor (TD3)."""

    def __init__(self, obs_dim, act_dim, hidden, low, high):
        super().__init__()
        self.net = _mlp(obs_dim, act_dim, hidden)
        self.register_buffer("scale", torch.as_tensor((high - low) / 2, dtype=torch.float32))
        self.register_buffer("center", torch.as_tensor((high + low) / 2, dtype=torch.float32))

    def forward(self, obs):
        return torch.tanh(self.net(obs)) * self.scale + self.center


class GaussianActor(nn.Module):
    """Tanh-squashed Gaussian actor (SAC); forward() is the deterministic (mean) action."""

    def __init__(self, obs_dim, act_dim, hidden, low, high):
        super().__init__()
        self.net = _mlp(obs_dim, 2 * act_dim, hidden)
        self.register_buffer("scale", torch.as_tensor((high - low) / 2, dtype=torch.float32))
        self.register_buffer("center", torch.as_tensor((high + low) / 2, dtype=torch.float32))

    def dist(self, obs):
        mean, log_std = self.net(obs).chunk(2, -1)
        return mean, log_std.clamp(-20, 2).exp()

    def sample(self, obs):
        mean, std = self.dist(obs)
        u = mean + std * torch.randn_like(mean)
        a = torch.tanh(u)
        logp = (-0.5 * ((u - mean) / std) ** 2 - std.log() - 0.5 * np.log(2 * np.pi)).sum(-1)
        logp = logp - (2 * (np.log(2) - u - nn.functional.softplus(-2 * u))).sum(-1)
        return a * self.scale + self.center, logp

    def forward(self, obs):
        return torch.tanh(self.dist(obs)[0]) * self.scale + self.center


class Critic(nn.Module):
    def __init__(self, obs_dim, act_dim, hidden):
        super().__init__()
        self.q1 = _mlp(obs_dim + act_dim, 1, hidden)
        self.q2 = _mlp(obs_dim + act_dim, 1, hidden)

    def forward(self, obs, act):
        x = torch.cat([obs, act], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


def _soft_update(target, source, tau):
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters(), strict=True):
            t.lerp_(s, tau)


def make_actor(agent, obs_dim, act_dim, hidden, low, high):
    if agent == "td3":
        return Actor(obs_dim, act_dim, hidden, low, high)
    if agent == "sac":
        return GaussianActor(obs_dim, act_dim, hidden, low, high)
    raise ValueError(f"unknown agent {agent!r}; choose td3 or sac")


def _make_env(env_id):
    import gymnasium as gym

    return gym.make(env_id)


def evaluate(env_id: str, policy, episodes: int, seed: int) -> np.ndarray:
    """Returns of `episodes` episodes of `policy` (obs (B, D) -> actions (B, A)), run side by
    side; the k-th starts from reset(seed=seed + k)."""
    from .collect import rollout

    data = rollout(env_id, policy, n_episodes=episodes, seed=seed)
    return data.episode_returns()


def train_behavior(env_id: str, out, cfg: AgentConfig = AgentConfig(), progress: bool = True,
                   log=print) -> BehaviorPolicies:
    """Train `cfg.agent` on `env_id` for cfg.steps steps and save it into folder `out` (see the
    module docstring). One torch thread is enough for 64x64 networks."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    out = Path(out)
    env = _make_env(env_id)
    obs_dim = int(np.prod(env.observation_space.shape))
    act_dim = int(np.prod(env.action_space.shape))
    low = env.action_space.low.astype(np.float32)
    high = env.action_space.high.astype(np.float32)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    actor = make_actor(cfg.agent, obs_dim, act_dim, cfg.hidden, low, high)
    critic = Critic(obs_dim, act_dim, cfg.hidden)
    actor_t = make_actor(cfg.agent, obs_dim, act_dim, cfg.hidden, low, high)
    actor_t.load_state_dict(actor.state_dict())
    critic_t = Critic(obs_dim, act_dim, cfg.hidden)
    critic_t.load_state_dict(critic.state_dict())
    for p in (*actor_t.parameters(), *critic_t.parameters()):
        p.requires_grad_(False)
    opt_a = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    opt_c = torch.optim.Adam(critic.parameters(), lr=cfg.lr)
    log_alpha = torch.zeros((), requires_grad=True)
    opt_alpha = torch.optim.Adam([log_alpha], lr=cfg.lr)
    target_entropy = -float(act_dim)
    scale = torch.as_tensor((high - low) / 2)

    n = cfg.steps
    buf = {"observations": np.zeros((n, obs_dim), np.float32),
           "actions": np.zeros((n, act_dim), np.float32),
           "rewards": np.zeros(n, np.float32),
           "next_observations": np.zeros((n, obs_dim), np.float32),
           "terminals": np.zeros(n, bool), "timeouts": np.zeros(n, bool)}
    snapshots, evals = {}, []

    def policy_of(module):
        def act(o):
            with torch.no_grad():
                return module(torch.as_tensor(o, dtype=torch.float32)).numpy()
        return act

    def update(step):
        idx = torch.from_numpy(rng.integers(0, step, cfg.batch_size))
        o = torch.from_numpy(buf["observations"])[idx]
        a = torch.from_numpy(buf["actions"])[idx]
        r = torch.from_numpy(buf["rewards"])[idx]
        o2 = torch.from_numpy(buf["next_observations"])[idx]
        notdone = 1.0 - torch.from_numpy(buf["terminals"])[idx].float()
        with torch.no_grad():
            if cfg.agent == "td3":
                noise = (torch.randn_like(a) * cfg.policy_noise).clamp(
                    -cfg.noise_clip, cfg.noise_clip) * scale
                a2 = (actor_t(o2) + noise).clamp(torch.as_tensor(low), torch.as_tensor(high))
                q1t, q2t = critic_t(o2, a2)
                target = r + cfg.gamma * notdone * torch.min(q1t, q2t)
            else:
                a2, logp2 = actor.sample(o2)
                q1t, q2t = critic_t(o2, a2)
                target = r + cfg.gamma * notdone * (torch.min(q1t, q2t)
                                                    - log_alpha.exp() * logp2)
        q1, q2 = critic(o, a)
        loss_c = ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()
        opt_c.zero_grad(set_to_none=True)
        loss_c.backward()
        opt_c.step()
        if cfg.agent == "td3":
            if step % cfg.policy_delay == 0:
                loss_a = -critic(o, actor(o))[0].mean()
                opt_a.zero_grad(set_to_none=True)
                loss_a.backward()
                opt_a.step()
                _soft_update(actor_t, actor, cfg.tau)
                _soft_update(critic_t, critic, cfg.tau)
        else:
            a_new, logp = actor.sample(o)
            q1n, q2n = critic(o, a_new)
            loss_a = (log_alpha.exp().detach() * logp - torch.min(q1n, q2n)).mean()
            opt_a.zero_grad(set_to_none=True)
            loss_a.backward()
            opt_a.step()
            loss_alpha = -(log_alpha * (logp.detach() + target_entropy)).mean()
            opt_alpha.zero_grad(set_to_none=True)
            loss_alpha.backward()
            opt_alpha.step()
            _soft_update(critic_t, critic, cfg.tau)

    t0, c0 = time.time(), time.process_time()
    o, _ = env.reset(seed=cfg.seed)
    ep_ret, last_returns = 0.0, []
    bar = tqdm(total=n, desc=f"{cfg.agent} {env_id}", disable=not progress, dynamic_ncols=True,
               leave=False)
    for step in range(n):
        if step < cfg.start_steps:
            a = rng.uniform(low, high).astype(np.float32)
        else:
            with torch.no_grad():
                ot = torch.as_tensor(o, dtype=torch.float32)[None]
                if cfg.agent == "td3":
                    a = actor(ot)[0].numpy()
                    a = np.clip(a + rng.normal(0, cfg.expl_noise, act_dim) * (high - low) / 2,
                                low, high).astype(np.float32)
                else:
                    a = actor.sample(ot)[0][0].numpy()
        o2, r, term, trunc, _ = env.step(a)
        buf["observations"][step] = o
        buf["actions"][step] = a
        buf["rewards"][step] = r
        buf["next_observations"][step] = o2
        buf["terminals"][step] = term
        buf["timeouts"][step] = trunc
        ep_ret += r
        o = o2
        if term or trunc:
            last_returns.append(ep_ret)
            ep_ret = 0.0
            o, _ = env.reset()
        if step + 1 >= cfg.start_steps:
            update(step + 1)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == n:
            rets = evaluate(env_id, policy_of(actor), cfg.eval_episodes,
                            seed=10_000 + cfg.seed * 100)
            evals.append([step + 1, float(rets.mean()), round(time.process_time() - c0, 1)])
            snapshots[step + 1] = {k: v.detach().clone() for k, v in actor.state_dict().items()}
            bar.set_postfix(eval=f"{rets.mean():.0f}")
            if not progress and log is not None:
                log(f"{env_id} {cfg.agent} step {step + 1}: eval return {rets.mean():.1f} "
                    f"({evals[-1][2] / 60:.1f} CPU-min)")
        bar.update(1)
    bar.close()
    seconds, cpu_seconds = time.time() - t0, time.process_time() - c0
    env.close()

    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"step_{s}.{k}": v.contiguous() for s, sd in snapshots.items()
               for k, v in sd.items()}
    tmp = out / f".actors.tmp{os.getpid()}.safetensors"
    save_file(tensors, str(tmp))
    os.replace(tmp, out / "actors.safetensors")
    tmp = out / f".replay.tmp{os.getpid()}.npz"
    with open(tmp, "wb") as fh:
        np.savez(fh, **buf)
    os.replace(tmp, out / "replay.npz")
    info = {"env": env_id, "config": asdict(cfg), "obs_dim": obs_dim, "action_dim": act_dim,
            "action_low": low.tolist(), "action_high": high.tolist(), "evals": evals,
            "train_seconds": seconds, "train_cpu_seconds": cpu_seconds,
            "torch_threads": torch.get_num_threads()}
    _write_json(out / "policy.json", info)
    return BehaviorPolicies(out)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class BehaviorPolicies:
    """A folder written by train_behavior: the actor at each evaluation step, the evaluation
    curve and the replay buffer."""

    def __init__(self, folder):
        self.folder = Path(folder)
        file = self.folder / "policy.json"
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no such file (train the policy first)")
        self.info = json.loads(file.read_text())
        self.env = self.info["env"]
        self.config = AgentConfig(**self.info["config"])
        self._tensors = None

    @staticmethod
    def exists(folder) -> bool:
        return (Path(folder) / "policy.json").is_file()

    @property
    def evals(self) -> list[tuple[int, float]]:
        """(step, mean evaluation return) at each evaluation."""
        return [(int(e[0]), float(e[1])) for e in self.info["evals"]]

    def actor(self, step: int) -> nn.Module:
        from safetensors.torch import load_file

        if self._tensors is None:
            self._tensors = load_file(str(self.folder / "actors.safetensors"))
        prefix = f"step_{step}."
        sd = {k[len(prefix):]: v for k, v in self._tensors.items() if k.startswith(prefix)}
        if not sd:
            raise ValueError(f"{self.folder}: no actor saved at step {step}")
        i = self.info
        actor = make_actor(self.config.agent, i["obs_dim"], i["action_dim"], self.config.hidden,
                           np.array(i["action_low"], np.float32),
                           np.array(i["action_high"], np.float32))
        actor.load_state_dict(sd)
        actor.eval()
        return actor

    def policy(self, step: int, noise: float = 0.0, seed: int = 0):
        """obs (B, D) -> actions (B, A): the deterministic actor at `step`, plus Gaussian noise
        of std `noise` (a fraction of the half-range), clipped to the action bounds."""
        actor = self.actor(step)
        low = np.array(self.info["action_low"], np.float32)
        high = np.array(self.info["action_high"], np.float32)
        rng = np.random.default_rng(seed)

        def act(o):
            with torch.no_grad():
                a = actor(torch.as_tensor(o, dtype=torch.float32)).numpy()
            if noise:
                a = np.clip(a + rng.normal(0, noise, a.shape) * (high - low) / 2, low, high)
            return a.astype(np.float32)

        return act

    def expert_step(self) -> int:
        """The evaluation step with the highest return."""
        return max(self.evals, key=lambda e: e[1])[0]

    def medium_step(self, random_return: float, expert_return: float, score: float) -> int:
        """The first evaluation step whose return reaches `score` (a D4RL-style normalised score,
        0 random, 100 expert)."""
        for s, r in self.evals:
            if 100 * (r - random_return) / (expert_return - random_return) >= score:
                return s
        return self.expert_step()

    def replay(self, upto: int):
        """The learner's first `upto` transitions as Transitions (an episode cut short there is
        marked as a timeout, and attrs "cut_last_episode" says so)."""
        from .data import Transitions

        with np.load(self.folder / "replay.npz") as z:
            arrays = {k: z[k][:upto] for k in z.files}
        cut = not (arrays["terminals"][-1] or arrays["timeouts"][-1])
        data = Transitions(**arrays, env=self.env).head(upto)
        data.attrs["cut_last_episode"] = bool(cut)
        return data

    def update_info(self, **kw) -> None:
        self.info.update(kw)
        _write_json(self.folder / "policy.json", self.info)
