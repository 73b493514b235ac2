"""onestep policy: offline-RL and robot-demonstration data for one-step policies, built on
onestep.core. The `onestep-policy` command line runs each verb below.

    from onestep.policy import load_dataset, make_dataset, normalized_score
    data = load_dataset("halfcheetah-medium.hdf5")   # Transitions: D4RL, Minari or robomimic
    make_dataset(env="HalfCheetah-v5", quality="medium", out="hc-medium.hdf5")
    normalized_score("HalfCheetah-v5", 4800.0, data)  # D4RL-style, against data's references
"""

from importlib import import_module

_EXPORTS = {
    "Transitions": "data", "DatasetError": "data", "load_dataset": "data",
    "save_dataset": "data", "read_d4rl": "data", "write_d4rl": "data", "read_minari": "data",
    "write_minari": "data", "read_robomimic": "data", "write_robomimic": "data",
    "env_dims": "data",
    "normalized_score": "scores", "reference_returns": "scores",
    "REFERENCE_RETURNS": "scores",
    "ROBOT_TASKS": "tasks", "GYM_TASKS": "tasks", "QUALITIES": "tasks",
    "make_dataset": "commands", "inspect": "commands",
    "rollout": "collect", "collect_demos": "robots", "behavior_policy": "make",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import the module that defines `name` on first use (torch loads only when needed)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'onestep.policy' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return __all__
