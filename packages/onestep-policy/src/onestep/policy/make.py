"""make_dataset: D4RL-style splits of a gymnasium task from behaviour policies trained here, and
scripted robot demonstrations, written as D4RL, Minari or robomimic data.

Splits (as D4RL defines them):
    random         uniform random actions
    medium         the learner's actor at the first evaluation whose return reaches
                   `medium_score` (normalised: 0 random, 100 expert; default 40, where
                   D4RL's halfcheetah-medium sits on D4RL's own scale), plus Gaussian noise
    expert         the actor at its best evaluation, plus the same noise
    medium-replay  every transition the learner saw up to the medium point (its replay buffer)
    medium-expert  half medium, half expert
    scripted       (Lift, Can) the scripted controllers of onestep.policy.robots

A behaviour policy is trained once per (task, learner, steps, seed) into --policy-dir and reused;
the same folder records the reference returns (10 episodes of uniform random actions, 10 of the
expert actor without noise) that every split of that policy is scored against.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from .data import FORMATS, Transitions, _jsonable, save_dataset
from .tasks import GYM_TASKS, QUALITIES, robot_task

__all__ = ["make_dataset", "behavior_policy", "sidecar_path", "DEFAULT_TRANSITIONS",
           "DEFAULT_DEMOS"]

DEFAULT_TRANSITIONS = 1_000_000
"""Transitions per gymnasium split (D4RL's size)."""
DEFAULT_DEMOS = 200
"""Demonstrations per robot task (robomimic's proficient-human size)."""
REFERENCE_EPISODES = 10


def sidecar_path(out: Path, fmt: str) -> Path:
    """The JSON written beside a dataset: F.json for a file F.hdf5, onestep.json inside a
    Minari dataset folder."""
    if fmt == "minari":
        return out / "onestep.json"
    return out.with_suffix(".json") if out.suffix else out.with_name(out.name + ".json")


def behavior_policy(env: str, policy_dir="runs/policies", agent: str = "", train_steps: int = 0,
                    seed: int = 0, progress: bool = True, log=print):
    """The behaviour policies of `env` trained by `agent` for `train_steps` (defaults: the
    task's, tasks.GYM_TASKS), from `policy_dir` if trained before, else trained now; with their
    reference returns in info["references"]."""
    from .agents import AgentConfig, BehaviorPolicies, evaluate, train_behavior

    task = GYM_TASKS.get(env)
    agent = agent or (task.agent if task else "td3")
    steps = train_steps or (task.train_steps if task else 300_000)
    if agent not in ("td3", "sac"):
        raise ValueError(f"unknown agent {agent!r}; choose td3 or sac")
    folder = Path(policy_dir) / f"{env}-{agent}-{steps}-seed{seed}"
    if BehaviorPolicies.exists(folder):
        pol = BehaviorPolicies(folder)
        if log:
            log(f"behaviour policy: {folder} (trained before)")
    else:
        cfg = AgentConfig(agent=agent, steps=steps, seed=seed,
                          start_steps=min(10_000, steps // 4),
                          eval_every=max(1, min(5000, steps // 10)))
        if log:
            log(f"training the behaviour policy: {agent} on {env} for {steps} steps -> {folder}")
        pol = train_behavior(env, folder, cfg, progress=progress, log=log)
    if "references" not in pol.info:
        random = evaluate(env, "random", REFERENCE_EPISODES, seed=20_000 + seed)
        expert_step = pol.expert_step()
        expert = evaluate(env, pol.policy(expert_step), REFERENCE_EPISODES, seed=30_000 + seed)
        pol.update_info(references={
            "random_return": float(random.mean()), "random_std": float(random.std()),
            "expert_return": float(expert.mean()), "expert_std": float(expert.std()),
            "expert_step": expert_step, "episodes": REFERENCE_EPISODES})
    refs = pol.info["references"]
    if log and refs["expert_return"] <= refs["random_return"] + 1e-9:
        log(f"warning: the expert's return ({refs['expert_return']:.1f}) is not above random "
            f"actions' ({refs['random_return']:.1f}); train longer (--train-steps)")
    return pol


def _check_args(env, quality, out, fmt, episodes, transitions):
    if not env:
        raise ValueError("--env is required (HalfCheetah-v5, Hopper-v5, ..., Lift, Can)")
    if not out:
        raise ValueError("--out is required")
    if episodes < 0 or transitions < 0:
        raise ValueError("--episodes and --transitions must not be negative")
    if episodes and transitions:
        raise ValueError("give --episodes or --transitions, not both")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if robot_task(env) is not None:
        if quality not in ("scripted", ""):
            raise ValueError(f"{env} has scripted demonstrations only (--quality scripted), "
                             f"not {quality!r}")
        if transitions:
            raise ValueError(f"{env}: give the number of demonstrations with --episodes")
    elif quality not in QUALITIES:
        raise ValueError(f"unknown quality {quality!r}; choose from {', '.join(QUALITIES)}")
    if robot_task(env) is None:
        from .data import env_dims

        env_dims(env)  # refuses an unknown or non-Box environment


def _prepare_out(out: Path, fmt: str, dataset_id: str, overwrite: bool) -> Path:
    target = out / dataset_id if fmt == "minari" else out
    if fmt != "minari" and out.is_dir():
        raise ValueError(f"{out} is a folder; --out is the {fmt} file to write")
    if fmt == "minari" and out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; for --format minari --out is a folder (the "
                         "datasets root)")
    if target.exists():
        if not overwrite:
            raise ValueError(f"{target} exists; pass --overwrite to replace it")
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return target


def make_dataset(env: str, quality: str = "", out="", format: str = "", episodes: int = 0,
                 transitions: int = 0, seed: int = 0, policy_dir="runs/policies",
                 policy_seed: int = 0, agent: str = "", train_steps: int = 0,
                 medium_score: float = 40.0, action_noise: float = 0.1, dataset_id: str = "",
                 overwrite: bool = False, progress: bool = True, threads: int = 1,
                 log=print) -> dict:
    """Make one split of `env` (see the module docstring) and write it to `out` (a file; for
    the minari format the datasets root, with `dataset_id`, default
    onestep/<task>/<quality>-v0). Returns the summary that is also written beside it as JSON
    (sidecar_path) and into the file's attributes."""
    import torch

    torch.set_num_threads(max(1, threads))
    robot = robot_task(env)
    quality = quality or ("scripted" if robot else "")
    fmt = format or ("robomimic" if robot else "d4rl")
    _check_args(env, quality, out, fmt, episodes, transitions)
    dataset_id = dataset_id or \
        f"onestep/{(robot.name if robot else env.split('-')[0]).lower()}/{quality}-v0"
    target = _prepare_out(Path(out), fmt, dataset_id, overwrite)
    t0 = time.time()
    if robot is not None:
        from .robots import collect_demos

        data = collect_demos(robot, episodes or DEFAULT_DEMOS, seed=seed, progress=progress)
        data.attrs["description"] = f"scripted {robot.name} demonstrations (robosuite, Panda)"
    else:
        data = _gym_split(env, quality, episodes, transitions, seed, policy_dir, policy_seed,
                          agent, train_steps, medium_score, action_noise, progress, log)
    data.attrs["seed"] = seed
    data.attrs["make_seconds"] = round(time.time() - t0, 2)
    written = save_dataset(data, Path(out), fmt, dataset_id=dataset_id)
    summary = _jsonable({"format": fmt, "path": str(written), **data.summary(), **data.attrs})
    if fmt == "minari":
        summary["dataset_id"] = dataset_id
    side = sidecar_path(Path(written), fmt)
    side.write_text(json.dumps(summary, indent=1) + "\n")
    summary["sidecar"] = str(side)
    assert target.exists()
    return summary


def _gym_split(env, quality, episodes, transitions, seed, policy_dir, policy_seed, agent,
               train_steps, medium_score, action_noise, progress, log) -> Transitions:
    from .collect import rollout
    from .scores import REFERENCE_RETURNS, normalized_score

    n = dict(n_episodes=episodes) if episodes else \
        dict(n_transitions=transitions or DEFAULT_TRANSITIONS)
    attrs = {"quality": quality, "action_noise": 0.0 if quality == "random" else action_noise}
    if quality == "random":
        pol = None
        from .agents import BehaviorPolicies

        task = GYM_TASKS.get(env)
        folder = Path(policy_dir) / (f"{env}-{agent or (task.agent if task else 'td3')}-"
                                     f"{train_steps or (task.train_steps if task else 300_000)}"
                                     f"-seed{policy_seed}")
        if BehaviorPolicies.exists(folder):  # its references, if it was trained
            pol = behavior_policy(env, policy_dir, agent, train_steps, policy_seed, progress, log)
        data = rollout(env, "random", seed=seed, progress=progress, desc=f"{env} random", **n)
        attrs["policy"] = "uniform random actions"
        if pol is not None:
            refs = pol.info["references"]
            attrs.update(ref_random_return=refs["random_return"],
                         ref_expert_return=refs["expert_return"], ref_source=str(pol.folder.name))
        elif env in REFERENCE_RETURNS:
            lo, hi = REFERENCE_RETURNS[env]
            attrs.update(ref_random_return=lo, ref_expert_return=hi,
                         ref_source="onestep.policy.scores.REFERENCE_RETURNS")
    else:
        pol = behavior_policy(env, policy_dir, agent, train_steps, policy_seed, progress, log)
        refs = pol.info["references"]
        lo, hi = refs["random_return"], refs["expert_return"]
        medium = pol.medium_step(lo, hi, medium_score)
        expert = refs["expert_step"]
        attrs.update(ref_random_return=lo, ref_expert_return=hi, ref_source=pol.folder.name,
                     policy=f"{pol.config.agent} {pol.config.hidden}x{pol.config.hidden}",
                     policy_folder=pol.folder.name, medium_step=medium, expert_step=expert,
                     medium_score_target=medium_score, train_steps=pol.config.steps)
        noisy = lambda step, s: pol.policy(step, noise=action_noise, seed=s)
        if quality == "medium":
            data = rollout(env, noisy(medium, seed), seed=seed, progress=progress,
                           desc=f"{env} medium", **n)
        elif quality == "expert":
            data = rollout(env, noisy(expert, seed), seed=seed, progress=progress,
                           desc=f"{env} expert", **n)
        elif quality == "medium-expert":
            half = {k: max(1, math.ceil(v / 2)) for k, v in n.items()}
            parts = [rollout(env, noisy(s, seed + i), seed=seed + 1000 * i, progress=progress,
                             desc=f"{env} {name}", **half)
                     for i, (name, s) in enumerate((("medium", medium), ("expert", expert)))]
            data = Transitions.concat(parts, env=env)
            rets = np.concatenate([_complete_returns(p) for p in parts])
            data.attrs.update(mean_return=float(rets.mean()) if len(rets) else None,
                              std_return=float(rets.std()) if len(rets) else None,
                              complete_episodes=int(len(rets)), cut_last_episode=False)
        else:  # medium-replay
            upto = medium
            if episodes:
                b = pol.replay(medium).episode_bounds()
                upto = int(b[min(episodes, len(b)) - 1, 1])
            elif transitions:
                upto = min(transitions, medium)
            data = pol.replay(upto)
            attrs["action_noise"] = pol.config.expl_noise
            rets = _complete_returns(data)
            data.attrs.update(mean_return=float(rets.mean()) if len(rets) else None,
                              std_return=float(rets.std()) if len(rets) else None,
                              complete_episodes=int(len(rets)))
    data.attrs.update(attrs)
    if "ref_random_return" in data.attrs and data.attrs.get("mean_return") is not None:
        data.attrs["normalized_score"] = normalized_score(env, data.attrs["mean_return"],
                                                          data.attrs)
    data.attrs["description"] = f"{env} {quality} (D4RL-style split made by onestep-policy)"
    return data


def _complete_returns(part: Transitions) -> np.ndarray:
    rets = part.episode_returns()
    return rets[:-1] if part.attrs.get("cut_last_episode") else rets
