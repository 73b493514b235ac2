"""D4RL-style normalised scores: 100 x (return - random) / (expert - random), so 0 is a uniform
random policy and 100 the expert behaviour policy of the same task.

The reference returns are measured on our own behaviour policies (`onestep-policy make-dataset`
records them in every file it writes); REFERENCE_RETURNS holds the ones measured for the package
README, for returns that come without a dataset. D4RL_REFERENCE_RETURNS are D4RL's own (its v2
MuJoCo tasks, a different simulator version and expert), for comparison only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["REFERENCE_RETURNS", "D4RL_REFERENCE_RETURNS", "normalized_score",
           "reference_returns"]

REFERENCE_RETURNS: dict[str, tuple[float, float]] = {}
"""env -> (random return, expert return), measured here (see the package README)."""

D4RL_REFERENCE_RETURNS = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
}
"""D4RL's REF_MIN_SCORE / REF_MAX_SCORE for its MuJoCo tasks (d4rl/infos.py)."""


def reference_returns(env: str, references=None) -> tuple[float, float]:
    """(random, expert) returns: from `references` (a pair, a dict or Transitions with attrs
    ref_random_return / ref_expert_return), else REFERENCE_RETURNS[env]."""
    if references is not None:
        attrs = getattr(references, "attrs", references)
        if isinstance(attrs, dict):
            if "ref_random_return" not in attrs or "ref_expert_return" not in attrs:
                raise ValueError("no reference returns (ref_random_return, ref_expert_return) "
                                 "in the dataset's attributes")
            return float(attrs["ref_random_return"]), float(attrs["ref_expert_return"])
        lo, hi = references
        return float(lo), float(hi)
    if env not in REFERENCE_RETURNS:
        known = ", ".join(REFERENCE_RETURNS) or "none"
        raise ValueError(f"no reference returns for {env!r} (measured: {known}); pass "
                         "references=(random, expert) or a dataset made by make-dataset")
    return REFERENCE_RETURNS[env]


def normalized_score(env: str, returns, references=None):
    """D4RL-style normalised score of `returns` (a number or an array) on `env`."""
    lo, hi = reference_returns(env, references)
    if hi == lo:
        raise ValueError(f"{env}: the random and expert reference returns are equal ({lo})")
    out = 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)
    return float(out) if out.ndim == 0 else out
