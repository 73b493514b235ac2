"""Scripted demonstrations of robosuite's Lift and PickPlaceCan with a Panda arm (OSC_POSE).

Lift: move above the cube with the gripper turned to the cube's yaw modulo 90 degrees (a cube
looks the same every quarter turn, so the nearest face pair), descend, close, lift.
Can: above the can, descend, close, lift to 1.02 m, carry over the can's bin (aiming 3 cm inside
its centre, which the arm reaches), lower, open, and move up (robosuite counts a placement only
once the gripper is away from the can).

Each demo ends at the first step robosuite reports success (dones 1 there, reward 1) or at the
task's horizon. Observations are robomimic's low-dimensional keys (tasks.ROBOT_TASKS).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .data import Transitions
from .tasks import RobotTask, robot_task

__all__ = ["LiftController", "CanController", "make_robot_env", "collect_demos"]


def _rot(q) -> np.ndarray:
    """Rotation matrix of a robosuite (x, y, z, w) quaternion."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _rotvec(m: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix."""
    cos = np.clip((np.trace(m) - 1) / 2, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]])
    if np.sin(angle) < 1e-6:  # a half turn
        axis = np.sqrt(np.clip((np.diag(m) + 1) / 2, 0, None))
        return axis / np.linalg.norm(axis) * angle
    return axis / (2 * np.sin(angle)) * angle


def _yaw(m: np.ndarray) -> float:
    return float(np.arctan2(m[1, 0], m[0, 0]))


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class _Controller:
    """Shared parts: a proportional move of the end effector, an orientation hold."""

    gain = 10.0
    """Position gain: action = gain x error (m), clipped to [-1, 1] (1 = 5 cm per step)."""

    def __init__(self, obs: dict):
        self.r0 = _rot(obs["robot0_eef_quat"])  # the start pose: gripper pointing down
        self.phase, self.t = 0, 0

    def _move(self, eef, target):
        return np.clip((np.asarray(target) - eef) * self.gain, -1, 1)

    def _turn(self, eef_rot, target_rot):
        return np.clip(_rotvec(target_rot @ eef_rot.T) / 0.5 * 2.0, -1, 1)

    def _next(self, phase):
        self.phase, self.t = phase, 0


class LiftController(_Controller):
    def __call__(self, obs: dict) -> np.ndarray:
        eef, cube = obs["robot0_eef_pos"], obs["cube_pos"]
        er = _rot(obs["robot0_eef_quat"])
        if self.phase == 0:  # the gripper's yaw nearest to the cube's, modulo 90 degrees
            d = (_yaw(_rot(obs["cube_quat"])) - _yaw(er) + np.pi / 4) % (np.pi / 2) - np.pi / 4
            self.target_rot = _rz(_yaw(er) + d - _yaw(self.r0)) @ self.r0
        a = np.zeros(7)
        a[3:6] = self._turn(er, self.target_rot)
        self.t += 1
        if self.phase == 0:  # above the cube, turned
            goal = cube + [0, 0, 0.08]
            a[:3], a[6] = self._move(eef, goal), -1
            if np.linalg.norm(goal - eef) < 0.01 and np.abs(a[3:6]).max() < 0.05 or self.t > 80:
                self._next(1)
        elif self.phase == 1:  # down to it
            goal = cube + [0, 0, -0.005]
            a[:3], a[6] = self._move(eef, goal), -1
            if np.linalg.norm(goal - eef) < 0.008 or self.t > 40:
                self._next(2)
        elif self.phase == 2:  # close
            a[:3], a[6] = self._move(eef, cube + [0, 0, -0.005]), 1
            if self.t > 8:
                self._next(3)
        else:  # lift
            a[:3], a[6] = self._move(eef, np.r_[eef[:2], 1.05]), 1
        return a


class CanController(_Controller):
    def __init__(self, obs: dict, target):
        super().__init__(obs)
        self.target = np.asarray(target, dtype=np.float64) + [-0.03, -0.03, 0.0]

    def __call__(self, obs: dict) -> np.ndarray:
        eef, can = obs["robot0_eef_pos"], obs["Can_pos"]
        a = np.zeros(7)
        a[3:6] = self._turn(_rot(obs["robot0_eef_quat"]), self.r0)
        self.t += 1
        p = self.phase
        if p == 0:  # above the can
            goal = can + [0, 0, 0.10]
            a[:3], a[6] = self._move(eef, goal), -1
            if np.linalg.norm(goal - eef) < 0.015 or self.t > 80:
                self._next(1)
        elif p == 1:  # down to it
            a[:3], a[6] = self._move(eef, can), -1
            if np.linalg.norm(can - eef) < 0.02 or self.t > 40:
                self._next(2)
        elif p == 2:  # close
            a[:3], a[6] = self._move(eef, can), 1
            if self.t > 8:
                self._next(3)
        elif p == 3:  # lift
            a[:3], a[6] = self._move(eef, np.r_[eef[:2], 1.02]), 1
            if eef[2] > 0.98:
                self._next(4)
        elif p == 4:  # carry over the bin
            goal = np.r_[self.target[:2], 1.0]
            a[:3], a[6] = self._move(eef, goal), 1
            if np.linalg.norm(goal[:2] - eef[:2]) < 0.03 or self.t > 120:
                self._next(5)
        elif p == 5:  # lower
            a[:3], a[6] = self._move(eef, np.r_[self.target[:2], 0.92]), 1
            if eef[2] < 0.95 or self.t > 40:
                self._next(6)
        else:  # open, then move away
            a[6] = -1
            if self.t >= 6:
                a[:3] = self._move(eef, np.r_[eef[:2], 1.05])
        return a


def _quiet_robosuite():
    import robosuite.macros  # noqa: F401  (its import warns once about a private macro file)

    logging.getLogger("robosuite").setLevel(logging.ERROR)


def make_robot_env(task: RobotTask | str, seed: int | None = None):
    """robosuite's environment for `task` with the settings the demos use (no renderer, 20 Hz,
    sparse reward, Panda with its default OSC_POSE controller)."""
    task = robot_task(task) if isinstance(task, str) else task
    if task is None:
        raise ValueError("unknown robot task")
    import contextlib
    import io
    import warnings

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # robosuite's logo string
        _quiet_robosuite()
        import robosuite as suite

        return suite.make(task.robosuite_env, robots="Panda", has_renderer=False,
                          has_offscreen_renderer=False, use_camera_obs=False,
                          use_object_obs=True, reward_shaping=False, control_freq=20,
                          horizon=task.horizon, ignore_done=True, hard_reset=False, seed=seed)


def _low_dim(obs: dict, task: RobotTask) -> np.ndarray:
    parts = [obs["object-state"] if k == "object" else obs[k] for k, _ in task.obs_keys]
    return np.concatenate([np.asarray(p, np.float32).reshape(-1) for p in parts])


def controller_for(task: RobotTask, env, obs: dict):
    if task.name == "Lift":
        return LiftController(obs)
    return CanController(obs, env.target_bin_placements[env.object_to_id["can"]])


def collect_demos(task: RobotTask | str, episodes: int, seed: int = 0, progress: bool = False,
                  env=None) -> Transitions:
    """`episodes` scripted demonstrations of `task` (Lift or Can) as Transitions with robomimic's
    observation keys, success per episode; attrs hold the success rate, mean length and time."""
    from tqdm.auto import tqdm

    task = robot_task(task) if isinstance(task, str) else task
    env = env if env is not None else make_robot_env(task, seed=seed)
    demos, t0 = [], time.time()
    for _ in tqdm(range(episodes), desc=f"scripted {task.name}", disable=not progress,
                  leave=False, dynamic_ncols=True):
        obs = env.reset()
        ctrl = controller_for(task, env, obs)
        ep = {"observations": [_low_dim(obs, task)], "actions": [], "rewards": [],
              "terminated": False, "success": False}
        for _ in range(task.horizon):
            a = ctrl(obs)
            obs, r, _, _ = env.step(a)
            ep["actions"].append(a.astype(np.float32))
            ep["observations"].append(_low_dim(obs, task))
            done = bool(env._check_success())
            ep["rewards"].append(1.0 if done else 0.0)
            if done:
                ep["terminated"] = ep["success"] = True
                break
        demos.append(ep)
    data = Transitions.from_episodes(demos, env=task.name, obs_keys=task.obs_keys)
    data.attrs.update({"quality": "scripted", "policy": f"scripted {task.name} controller",
                       "success_rate": float(data.success.mean()),
                       "mean_length": float(data.episode_lengths().mean()),
                       "collect_seconds": time.time() - t0, "seed": seed})
    return data
