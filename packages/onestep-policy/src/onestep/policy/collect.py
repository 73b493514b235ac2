"""Rollouts of a policy in a gymnasium task, several environments side by side so that the policy
runs on a batch of observations, gathered into Transitions (episodes in the order they end)."""

from __future__ import annotations

import math

import numpy as np

from .data import Transitions

__all__ = ["rollout", "uniform_policy"]


def uniform_policy(low, high, seed: int = 0):
    """obs (B, D) -> uniform random actions (B, A) in [low, high]."""
    rng = np.random.default_rng(seed)
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)

    def act(obs):
        return rng.uniform(low, high, size=(len(obs), len(low))).astype(np.float32)

    return act


def rollout(env_id: str, policy, *, n_transitions: int = 0, n_episodes: int = 0, seed: int = 0,
            n_envs: int = 8, progress: bool = False, desc: str = "") -> Transitions:
    """Run `policy` (obs (B, D) -> actions (B, A), or "random") in `env_id` for exactly
    `n_transitions` steps (the last episode cut short and marked as a timeout, attrs
    "cut_last_episode") or for `n_episodes` whole episodes. Environment k starts from
    reset(seed=seed + k). attrs "mean_return" is the mean return of the complete episodes."""
    import gymnasium as gym
    from tqdm.auto import tqdm

    if (n_transitions > 0) == (n_episodes > 0):
        raise ValueError("give exactly one of n_transitions and n_episodes")
    probe = gym.make(env_id)
    horizon = probe.spec.max_episode_steps or 1000
    if policy == "random":
        policy = uniform_policy(probe.action_space.low, probe.action_space.high, seed)
    probe.close()
    need = n_episodes if n_episodes else math.ceil(n_transitions / horizon)
    n_envs = max(1, min(n_envs, need))
    envs = [gym.make(env_id) for _ in range(n_envs)]
    obs = np.stack([e.reset(seed=seed + k)[0] for k, e in enumerate(envs)]).astype(np.float32)
    running = [{"observations": [o], "actions": [], "rewards": [], "terminated": False}
               for o in obs]
    active = [True] * n_envs
    started, finished, steps_done = n_envs, [], 0
    bar = tqdm(total=n_episodes or n_transitions, desc=desc or env_id, disable=not progress,
               leave=False, dynamic_ncols=True)

    def enough() -> bool:
        if n_episodes:
            return len(finished) >= n_episodes
        return sum(len(e["actions"]) for e in finished) >= n_transitions

    while any(active) and not enough():
        idx = [k for k in range(n_envs) if active[k]]
        acts = np.asarray(policy(obs[idx]), dtype=np.float32)
        for j, k in enumerate(idx):
            o2, r, term, trunc, _ = envs[k].step(acts[j])
            ep = running[k]
            ep["actions"].append(acts[j])
            ep["rewards"].append(r)
            ep["observations"].append(np.asarray(o2, np.float32))
            steps_done += 1
            if n_transitions:
                bar.update(1)
            if term or trunc:
                ep["terminated"] = bool(term)
                finished.append(ep)
                if n_episodes:
                    bar.update(1)
                in_flight = sum(len(running[i]["actions"]) for i in range(n_envs)
                                if active[i] and i != k)
                more = (started < n_episodes) if n_episodes else \
                    (sum(len(e["actions"]) for e in finished) + in_flight < n_transitions)
                if more:
                    o, _ = envs[k].reset()
                    running[k] = {"observations": [np.asarray(o, np.float32)], "actions": [],
                                  "rewards": [], "terminated": False}
                    obs[k] = o
                    started += 1
                else:
                    active[k] = False
            else:
                obs[k] = o2
            if enough():
                break
    bar.close()
    for e in envs:
        e.close()
    finished = finished[:n_episodes] if n_episodes else finished
    data = Transitions.from_episodes(finished, env=env_id)
    cut = bool(n_transitions) and len(data) > n_transitions
    if cut:
        data = data.head(n_transitions)
    rets = data.episode_returns()[:-1] if cut else data.episode_returns()
    data.attrs.update({"mean_return": float(rets.mean()) if len(rets) else None,
                       "std_return": float(rets.std()) if len(rets) else None,
                       "complete_episodes": int(len(rets)), "cut_last_episode": cut})
    return data
