"""The tasks onestep-policy makes data for, and what each one observes and acts with.

Torch-, gymnasium- and robosuite-free, so that the data readers can check a file's dimensions
against a robot task without starting a simulator, and the command line starts at once.

Robot tasks are robosuite's Lift and PickPlaceCan ("Can") with a Panda arm and its default
OSC_POSE controller (7 actions in [-1, 1]: a position delta capped at 5 cm and an axis-angle delta
capped at 0.5 rad per step, then the gripper, -1 open and +1 closed), at 20 Hz. Their
observations are robomimic's low-dimensional keys, in robomimic's order.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ROBOT_TASKS", "GYM_TASKS", "RobotTask", "GymTask", "QUALITIES", "is_robot_task",
           "robot_task"]


@dataclass(frozen=True)
class RobotTask:
    name: str
    """The name onestep uses (--env)."""
    robosuite_env: str
    """robosuite's environment name (robomimic's env_args "env_name")."""
    horizon: int
    """Steps before an unsuccessful demonstration is cut."""
    obs_keys: tuple[tuple[str, int], ...]
    """robomimic's low-dimensional observation keys and their widths; "object" is robosuite's
    object-state."""
    action_dim: int = 7

    @property
    def obs_dim(self) -> int:
        return sum(w for _, w in self.obs_keys)


_ROBOT_OBS = (("robot0_eef_pos", 3), ("robot0_eef_quat", 4), ("robot0_gripper_qpos", 2))

ROBOT_TASKS = {
    "Lift": RobotTask("Lift", "Lift", 200, (*_ROBOT_OBS, ("object", 10))),
    "Can": RobotTask("Can", "PickPlaceCan", 400, (*_ROBOT_OBS, ("object", 14))),
}


def is_robot_task(env: str) -> bool:
    return robot_task(env) is not None


def robot_task(env: str) -> RobotTask | None:
    """The robot task called `env` (onestep's or robosuite's name), or None."""
    for task in ROBOT_TASKS.values():
        if env in (task.name, task.robosuite_env):
            return task
    return None


@dataclass(frozen=True)
class GymTask:
    name: str
    agent: str
    """Behaviour-policy learner: td3 or sac (64x64 networks, one torch thread)."""
    train_steps: int
    """Environment steps the expert is trained for."""


GYM_TASKS = {
    "HalfCheetah-v5": GymTask("HalfCheetah-v5", "td3", 300_000),
    "Hopper-v5": GymTask("Hopper-v5", "sac", 300_000),
    "Walker2d-v5": GymTask("Walker2d-v5", "sac", 300_000),
}
"""Measured defaults for the gymnasium tasks; any other gymnasium Box task trains TD3 for
300k steps unless told otherwise."""

QUALITIES = ("random", "medium", "expert", "medium-replay", "medium-expert")
"""D4RL's splits: uniform random actions; a partly trained policy; the trained policy; the
learner's replay buffer up to the medium point; medium and expert concatenated."""
