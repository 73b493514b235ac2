"""Offline-RL and demonstration data: one in-memory type (Transitions) and readers and writers
for the three public formats.

    D4RL hdf5       top-level datasets observations (N, D), actions (N, A), rewards (N,),
                    terminals (N,), timeouts (N,), next_observations (N, D); root attributes
                    hold onestep's metadata (env, quality, returns, reference returns).
    Minari          a dataset folder (`<root>/<namespace>/<name>-v<k>`, with data/ inside) or a
                    dataset id under a MINARI_DATASETS_PATH root, read and written with minari's
                    own API. Nothing is ever downloaded.
    robomimic hdf5  data/demo_<i>/{obs,next_obs}/<key>, actions, rewards, dones, attribute
                    num_samples; data attributes total and env_args (JSON); mask/<filter> lists
                    of demo names. robomimic's SequenceDataset reads what write_robomimic writes.

Transitions keep episodes contiguous: an episode ends at a transition whose `terminals` or
`timeouts` is set (and at the last transition). `episodes()` cuts them apart.

Errors: a malformed file raises DatasetError (a ValueError) with one line naming the file and the
problem (a missing key, mismatched lengths, the wrong observation or action width for the
environment named); a missing file raises FileNotFoundError naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np

from .tasks import robot_task

__all__ = [
    "D4RL_KEYS",
    "DatasetError",
    "Transitions",
    "detect_format",
    "env_dims",
    "load_dataset",
    "read_d4rl",
    "read_minari",
    "read_robomimic",
    "save_dataset",
    "write_d4rl",
    "write_minari",
    "write_robomimic",
]

D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")
"""The datasets a D4RL hdf5 file holds (and read_d4rl requires)."""

FORMATS = ("d4rl", "minari", "robomimic")


class DatasetError(ValueError):
    """A malformed dataset; the message is one line naming the file and the problem."""


def _oneline(text) -> str:
    return " ".join(str(text).split())


# -- the in-memory type -------------------------------------------------------------------------
@dataclass
class Transitions:
    """Transitions (s, a, r, s', terminal, timeout) of consecutive episodes, as numpy arrays.

    observations and next_observations are float32 (N, D), actions float32 (N, A), rewards
    float32 (N,), terminals and timeouts bool (N,). `obs_keys` names blocks of observation
    columns ((key, width), ...; robomimic's keys), `success` holds one bool per episode for
    demonstrations, `attrs` JSON-able metadata (quality, mean return, reference returns, ...).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    env: str = ""
    obs_keys: tuple[tuple[str, int], ...] = ()
    success: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    source: str = field(default="", repr=False, compare=False)
    """Where it was read from (for messages)."""

    def __post_init__(self):
        src = self.source or "transitions"
        self.observations = _as_2d(self.observations, "observations", src)
        self.next_observations = _as_2d(self.next_observations, "next_observations", src)
        self.actions = _as_2d(self.actions, "actions", src)
        self.rewards = _as_1d(self.rewards, "rewards", src).astype(np.float32)
        self.terminals = _as_1d(self.terminals, "terminals", src).astype(bool)
        self.timeouts = _as_1d(self.timeouts, "timeouts", src).astype(bool)
        n = len(self.observations)
        for name in ("actions", "rewards", "next_observations", "terminals", "timeouts"):
            if len(getattr(self, name)) != n:
                raise DatasetError(f"{src}: '{name}' has {len(getattr(self, name))} rows but "
                                   f"'observations' has {n}")
        if self.next_observations.shape[1] != self.observations.shape[1]:
            raise DatasetError(f"{src}: next_observations have {self.next_observations.shape[1]} "
                               f"columns but observations have {self.observations.shape[1]}")
        for name in ("observations", "actions", "rewards", "next_observations"):
            if not np.isfinite(getattr(self, name)).all():
                raise DatasetError(f"{src}: '{name}' holds NaN or infinite values")
        self.obs_keys = tuple((str(k), int(w)) for k, w in self.obs_keys)
        if self.obs_keys and sum(w for _, w in self.obs_keys) != self.obs_dim:
            raise DatasetError(f"{src}: observation keys {self._keys_text()} add up to "
                               f"{sum(w for _, w in self.obs_keys)} columns, not {self.obs_dim}")
        if self.success is not None:
            self.success = np.asarray(self.success, dtype=bool).reshape(-1)
            if len(self.success) != self.num_episodes:
                raise DatasetError(f"{src}: {len(self.success)} success flags for "
                                   f"{self.num_episodes} episodes")

    def _keys_text(self) -> str:
        return ", ".join(f"{k} ({w})" for k, w in self.obs_keys)

    def __len__(self) -> int:
        return len(self.observations)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    def episode_bounds(self) -> np.ndarray:
        """(E, 2) int array of [start, end) rows of each episode."""
        ends = np.flatnonzero(self.terminals | self.timeouts) + 1
        if len(self) and (len(ends) == 0 or ends[-1] != len(self)):
            ends = np.append(ends, len(self))
        starts = np.concatenate([[0], ends[:-1]]) if len(ends) else np.zeros(0, int)
        return np.stack([starts, ends], axis=1).astype(np.int64).reshape(-1, 2)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_bounds())

    def episodes(self) -> list[Transitions]:
        """Each episode as its own Transitions (attrs shared, success its own)."""
        out = []
        for i, (a, b) in enumerate(self.episode_bounds()):
            out.append(self.slice(a, b, success=None if self.success is None
                                  else self.success[i:i + 1]))
        return out

    def slice(self, start: int, end: int, *, success=None) -> Transitions:
        """Rows [start, end) (success: the flags of the episodes they hold, or None)."""
        return replace(self, observations=self.observations[start:end],
                       actions=self.actions[start:end], rewards=self.rewards[start:end],
                       next_observations=self.next_observations[start:end],
                       terminals=self.terminals[start:end], timeouts=self.timeouts[start:end],
                       success=success, attrs=dict(self.attrs))

    def head(self, n: int) -> Transitions:
        """The first n transitions; an episode cut short is marked as a timeout."""
        n = min(n, len(self))
        bounds = self.episode_bounds()
        kept = int((bounds[:, 0] < n).sum())
        out = self.slice(0, n, success=None if self.success is None else self.success[:kept])
        if n and not (out.terminals[-1] or out.timeouts[-1]):
            out.timeouts = out.timeouts.copy()
            out.timeouts[-1] = True
        return out

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of each episode."""
        csum = np.concatenate([[0.0], np.cumsum(self.rewards, dtype=np.float64)])
        b = self.episode_bounds()
        return csum[b[:, 1]] - csum[b[:, 0]]

    def episode_lengths(self) -> np.ndarray:
        b = self.episode_bounds()
        return b[:, 1] - b[:, 0]

    def obs_dict(self, next: bool = False) -> dict[str, np.ndarray]:
        """The observation columns split by `obs_keys` ({"obs": all of them} without keys)."""
        x = self.next_observations if next else self.observations
        if not self.obs_keys:
            return {"obs": x}
        out, at = {}, 0
        for k, w in self.obs_keys:
            out[k] = x[:, at:at + w]
            at += w
        return out

    @classmethod
    def concat(cls, parts: list[Transitions], **kw) -> Transitions:
        """Parts one after another (each part's last transition ends an episode)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        for p in parts[1:]:
            if (p.obs_dim, p.action_dim, p.obs_keys) != (first.obs_dim, first.action_dim,
                                                         first.obs_keys):
                raise ValueError("cannot concatenate transitions of different shapes")
        fixed = [p.head(len(p)) for p in parts]  # marks a cut last episode as a timeout
        success = None
        if all(p.success is not None for p in fixed):
            success = np.concatenate([p.success for p in fixed])
        cat = lambda name: np.concatenate([getattr(p, name) for p in fixed])
        kw.setdefault("env", first.env)
        kw.setdefault("obs_keys", first.obs_keys)
        kw.setdefault("attrs", {})
        return cls(observations=cat("observations"), actions=cat("actions"),
                   rewards=cat("rewards"), next_observations=cat("next_observations"),
                   terminals=cat("terminals"), timeouts=cat("timeouts"), success=success, **kw)

    @classmethod
    def from_episodes(cls, episodes: list[dict], **kw) -> Transitions:
        """From per-episode dicts with observations (T+1, D) (the last one is the final
        next_observation), actions (T, A), rewards (T,), terminated (bool: the episode ended in
        a terminal state) and optionally success (bool)."""
        obs, nxt, act, rew, term, tout, succ = [], [], [], [], [], [], []
        for ep in episodes:
            o = np.asarray(ep["observations"], dtype=np.float32)
            t = len(ep["actions"])
            if t == 0:
                continue
            obs.append(o[:-1])
            nxt.append(o[1:])
            act.append(np.asarray(ep["actions"], dtype=np.float32))
            rew.append(np.asarray(ep["rewards"], dtype=np.float32))
            te = np.zeros(t, bool)
            te[-1] = bool(ep["terminated"])
            term.append(te)
            to = np.zeros(t, bool)
            to[-1] = not te[-1]
            tout.append(to)
            succ.append(bool(ep.get("success", False)))
        has_success = bool(episodes) and all("success" in ep for ep in episodes)
        return cls(observations=np.concatenate(obs), actions=np.concatenate(act),
                   rewards=np.concatenate(rew), next_observations=np.concatenate(nxt),
                   terminals=np.concatenate(term), timeouts=np.concatenate(tout),
                   success=np.array(succ) if has_success else None, **kw)

    def summary(self) -> dict:
        """Counts, dimensions and returns (JSON-able)."""
        rets = self.episode_returns()
        complete = self._complete_mask()
        out = {"env": self.env, "transitions": len(self), "episodes": self.num_episodes,
               "obs_dim": self.obs_dim, "action_dim": self.action_dim,
               "mean_return": float(rets[complete].mean()) if complete.any() else None,
               "std_return": float(rets[complete].std()) if complete.any() else None,
               "complete_episodes": int(complete.sum())}
        if self.success is not None:
            out["success_rate"] = float(self.success.mean()) if len(self.success) else None
        return out

    def _complete_mask(self) -> np.ndarray:
        """Episodes that ran to a terminal state or to the time limit: all but one cut short by
        the end of the data (attrs "cut_last_episode")."""
        mask = np.ones(self.num_episodes, bool)
        if self.attrs.get("cut_last_episode") and len(mask):
            mask[-1] = False
        return mask


def _as_2d(x, name, src) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise DatasetError(f"{src}: '{name}' should be 2-D (N, dim), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) and x.dtype != bool:
        raise DatasetError(f"{src}: '{name}' is not numeric ({x.dtype})")
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_1d(x, name, src) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise DatasetError(f"{src}: '{name}' should be 1-D (N,), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DatasetError(f"{src}: '{name}' is not numeric ({x.dtype})")
    return x


# -- environments -------------------------------------------------------------------------------
@cache
def env_dims(env: str) -> tuple[int, int]:
    """(observation width, action width) of a robot task or a gymnasium Box environment."""
    task = robot_task(env)
    if task is not None:
        return task.obs_dim, task.action_dim
    import gymnasium as gym

    try:
        e = gym.make(env)
    except Exception as err:  # gymnasium raises several kinds for an unknown id
        raise ValueError(f"unknown environment {env!r}: {_oneline(err)}") from None
    try:
        obs, act = e.observation_space, e.action_space
        if not (isinstance(obs, gym.spaces.Box) and isinstance(act, gym.spaces.Box)):
            raise ValueError(f"environment {env!r} needs Box observations and actions")
        return int(np.prod(obs.shape)), int(np.prod(act.shape))
    finally:
        e.close()


def check_env(data: Transitions, env: str, source: str) -> None:
    """Refuse data whose observation or action width differs from `env`'s."""
    obs_dim, act_dim = env_dims(env)
    task = robot_task(env)
    if task is not None and data.obs_keys:
        widths = dict(task.obs_keys)
        for k, w in data.obs_keys:
            if k in widths and widths[k] != w:
                raise DatasetError(f"{source}: observation '{k}' has {w} columns but {env} "
                                   f"observes {widths[k]}")
        if {k for k, _ in data.obs_keys} != set(widths):
            obs_dim = sum(widths.get(k, w) for k, w in data.obs_keys)  # a subset of keys
    if data.obs_dim != obs_dim:
        raise DatasetError(f"{source}: observations have {data.obs_dim} columns but {env} "
                           f"observes {obs_dim}")
    if data.action_dim != act_dim:
        raise DatasetError(f"{source}: actions have {data.action_dim} columns but {env} acts "
                           f"with {act_dim}")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode()
    return value


# -- hdf5 helpers -------------------------------------------------------------------------------
def _open_h5(path: Path):
    import h5py

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise DatasetError(f"{path}: is a folder, not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not a readable HDF5 file ({_oneline(e)})") from None


def _atomic_h5(path: Path):
    """(temporary path, finish()): write to the temporary file, then finish() moves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")

    def finish():
        os.replace(tmp, path)

    return tmp, finish


def _read_attrs(h5obj) -> dict:
    attrs = {}
    for k, v in h5obj.attrs.items():
        v = _jsonable(v)
        if isinstance(v, str) and k.endswith("_json"):
            with contextlib.suppress(json.JSONDecodeError):
                k, v = k[:-5], json.loads(v)
        attrs[k] = v
    return attrs


def _write_attrs(h5obj, attrs: dict) -> None:
    for k, v in attrs.items():
        v = _jsonable(v)
        if isinstance(v, dict | list) or v is None:
            h5obj.attrs[f"{k}_json"] = json.dumps(v)
        else:
            h5obj.attrs[k] = v


# -- D4RL ---------------------------------------------------------------------------------------
def read_d4rl(path, env: str | None = None) -> Transitions:
    """A D4RL-format hdf5 file. `env` (default: the file's "env" attribute, if any) is checked
    against the observation and action widths."""
    path = Path(path)
    with _open_h5(path) as f:
        missing = [k for k in D4RL_KEYS if k not in f]
        if missing:
            raise DatasetError(f"{path}: missing dataset '{missing[0]}' (a D4RL file holds "
                               f"{', '.join(D4RL_KEYS)})")
        import h5py

        for k in D4RL_KEYS:
            if not isinstance(f[k], h5py.Dataset):
                raise DatasetError(f"{path}: '{k}' is a group, not a dataset")
        lengths = {k: f[k].shape[0] if f[k].shape else 0 for k in D4RL_KEYS}
        n = lengths["observations"]
        for k in D4RL_KEYS[1:]:
            if lengths[k] != n:
                raise DatasetError(f"{path}: '{k}' has {lengths[k]} rows but 'observations' "
                                   f"has {n}")
        arrays = {k: f[k][()] for k in D4RL_KEYS}
        attrs = _read_attrs(f)
    obs_keys = attrs.pop("obs_keys", None) or ()
    success = attrs.pop("success", None)
    file_env = attrs.pop("env", "") or ""
    data = Transitions(**arrays, env=env or file_env, obs_keys=obs_keys,
                       success=None if success is None else np.asarray(success, bool),
                       attrs=attrs, source=str(path))
    if data.env:
        check_env(data, data.env, str(path))
    return data


def write_d4rl(path, data: Transitions) -> Path:
    """Write `data` as a D4RL-format hdf5 file (atomically); metadata in the root attributes."""
    import h5py

    path = Path(path)
    tmp, finish = _atomic_h5(path)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("observations", data=data.observations)
            f.create_dataset("actions", data=data.actions)
            f.create_dataset("rewards", data=data.rewards)
            f.create_dataset("terminals", data=data.terminals)
            f.create_dataset("timeouts", data=data.timeouts)
            f.create_dataset("next_observations", data=data.next_observations)
            meta = dict(data.attrs, env=data.env)
            if data.obs_keys:
                meta["obs_keys"] = [list(k) for k in data.obs_keys]
            if data.success is not None:
                meta["success"] = data.success.astype(int).tolist()
            _write_attrs(f, meta)
        finish()
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# -- robomimic ----------------------------------------------------------------------------------
def read_robomimic(path, env: str | None = None, obs_keys: tuple[str, ...] | None = None,
                   filter_key: str | None = None) -> Transitions:
    """A robomimic-format hdf5 file. obs_keys: the observation keys to use, in order (default:
    the task's low-dimensional keys (tasks.ROBOT_TASKS) for Lift and Can, else every
    low-dimensional key of the first demo, sorted); filter_key: read only the demos listed in
    mask/<filter_key>."""
    import h5py

    path = Path(path)
    with _open_h5(path) as f:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise DatasetError(f"{path}: no 'data' group (not a robomimic file)")
        attrs = _read_attrs(f["data"])
        env_args = attrs.pop("env_args", {})
        if isinstance(env_args, str):
            try:
                env_args = json.loads(env_args)
            except json.JSONDecodeError:
                raise DatasetError(f"{path}: data attribute 'env_args' is not JSON") from None
        attrs.pop("total", None)
        file_env = attrs.pop("env", "") or (env_args or {}).get("env_name", "")
        env = env or file_env
        names = list(f["data"].keys())
        if filter_key:
            if f"mask/{filter_key}" not in f:
                raise DatasetError(f"{path}: no filter key mask/{filter_key}")
            names = [_jsonable(n) for n in f[f"mask/{filter_key}"][()]]
        if not names:
            raise DatasetError(f"{path}: no demonstrations under 'data'")
        bad = [n for n in names if not n.startswith("demo_") or not n[5:].isdigit()]
        if bad:
            raise DatasetError(f"{path}: 'data/{bad[0]}' is not named demo_<number>")
        order = sorted(names, key=lambda n: int(n[5:]))
        task = robot_task(env) if env else None
        first = f"data/{order[0]}"
        if first not in f:
            raise DatasetError(f"{path}: mask lists '{order[0]}' but there is no {first}")
        if obs_keys is None:
            if f"{first}/obs" not in f:
                raise DatasetError(f"{path}: {first}: missing 'obs'")
            have = set(f[f"{first}/obs"].keys())
            if task is not None:
                obs_keys = tuple(k for k, _ in task.obs_keys)
            else:
                obs_keys = tuple(sorted(k for k in have if f[f"{first}/obs/{k}"].ndim <= 2))
        if not obs_keys:
            raise DatasetError(f"{path}: {first}/obs has no low-dimensional observations")
        episodes, widths = [], None
        for name in order:
            g = f"data/{name}"
            if g not in f:
                raise DatasetError(f"{path}: mask lists '{name}' but there is no {g}")
            for k in ("actions", "rewards", "dones", "obs"):
                if k not in f[g]:
                    raise DatasetError(f"{path}: {g}: missing '{k}'")
            actions = f[f"{g}/actions"][()]
            t = len(actions)
            if "num_samples" in f[g].attrs and int(f[g].attrs["num_samples"]) != t:
                raise DatasetError(f"{path}: {g}: num_samples is {int(f[g].attrs['num_samples'])}"
                                   f" but 'actions' has {t} rows")
            obs, nxt, w = [], [], []
            for k in obs_keys:
                if k not in f[f"{g}/obs"]:
                    raise DatasetError(f"{path}: {g}/obs: missing '{k}'")
                o = np.asarray(f[f"{g}/obs/{k}"][()], dtype=np.float32)
                o = o[:, None] if o.ndim == 1 else o
                if o.ndim != 2:
                    raise DatasetError(f"{path}: {g}/obs/{k} is not low-dimensional "
                                       f"(shape {o.shape})")
                if len(o) != t:
                    raise DatasetError(f"{path}: {g}/obs/{k} has {len(o)} rows but 'actions' "
                                       f"has {t}")
                if f"{g}/next_obs/{k}" in f:
                    n_ = np.asarray(f[f"{g}/next_obs/{k}"][()], dtype=np.float32)
                    n_ = n_[:, None] if n_.ndim == 1 else n_
                    if n_.shape != o.shape:
                        raise DatasetError(f"{path}: {g}/next_obs/{k} has shape {n_.shape} but "
                                           f"obs/{k} has {o.shape}")
                else:  # shifted observations, the last one repeated
                    n_ = np.concatenate([o[1:], o[-1:]])
                obs.append(o)
                nxt.append(n_)
                w.append(o.shape[1])
            if widths is None:
                widths = w
            elif w != widths:
                raise DatasetError(f"{path}: {g}: observation widths {w} differ from the first "
                                   f"demo's {widths}")
            rewards = np.asarray(f[f"{g}/rewards"][()]).reshape(-1)
            dones = np.asarray(f[f"{g}/dones"][()]).reshape(-1)
            for k, arr in (("rewards", rewards), ("dones", dones)):
                if len(arr) != t:
                    raise DatasetError(f"{path}: {g}/{k} has {len(arr)} rows but 'actions' has "
                                       f"{t}")
            demo_attrs = _read_attrs(f[g])
            episodes.append((np.concatenate(obs, 1), np.concatenate(nxt, 1), actions, rewards,
                             dones.astype(bool), bool(demo_attrs.get("success",
                                                                     bool(dones[-1])))))
    if any(len(e[2]) == 0 for e in episodes):
        raise DatasetError(f"{path}: a demonstration has no steps")
    terms, touts = [], []
    for e in episodes:
        term = np.zeros(len(e[2]), bool)
        term[-1] = e[4][-1]
        tout = np.zeros(len(e[2]), bool)
        tout[-1] = not term[-1]
        terms.append(term)
        touts.append(tout)
    data = Transitions(
        observations=np.concatenate([e[0] for e in episodes]),
        next_observations=np.concatenate([e[1] for e in episodes]),
        actions=np.concatenate([np.asarray(e[2]).reshape(len(e[2]), -1) for e in episodes]),
        rewards=np.concatenate([e[3] for e in episodes]), terminals=np.concatenate(terms),
        timeouts=np.concatenate(touts), env=env, obs_keys=tuple(zip(obs_keys, widths,
                                                                     strict=True)),
        success=np.array([e[5] for e in episodes]), attrs=attrs, source=str(path))
    if env:
        check_env(data, env, str(path))
    return data


def robomimic_env_args(env: str, **kwargs) -> dict:
    """robomimic's env_args for a robot task (type 1: robosuite) or a gymnasium task (type 2)."""
    task = robot_task(env)
    if task is None:
        return {"env_name": env, "type": 2, "env_kwargs": kwargs}
    env_kwargs = {"robots": ["Panda"], "has_renderer": False, "has_offscreen_renderer": False,
                  "use_camera_obs": False, "use_object_obs": True, "reward_shaping": False,
                  "control_freq": 20, "ignore_done": True, **kwargs}
    return {"env_name": task.robosuite_env, "type": 1, "env_kwargs": env_kwargs}


def write_robomimic(path, data: Transitions, env_args: dict | None = None,
                    valid_fraction: float = 0.1, seed: int = 0) -> Path:
    """Write `data` as a robomimic hdf5 file (atomically): one demo per episode, observation
    blocks by `data.obs_keys` ("obs" for data without keys), `dones` 1 at a terminal last step,
    per-demo attribute success, masks train / valid (a `valid_fraction` of the demos, at least
    one when there are two or more) and successful."""
    import h5py

    path = Path(path)
    env_args = env_args if env_args is not None else robomimic_env_args(data.env)
    tmp, finish = _atomic_h5(path)
    eps = data.episodes()
    success = data.success if data.success is not None else \
        np.array([bool(e.terminals[-1]) for e in eps])
    try:
        with h5py.File(tmp, "w") as f:
            g = f.create_group("data")
            for i, ep in enumerate(eps):
                d = g.create_group(f"demo_{i}")
                d.attrs["num_samples"] = len(ep)
                d.attrs["success"] = bool(success[i])
                for k, v in ep.obs_dict().items():
                    d.create_dataset(f"obs/{k}", data=v)
                for k, v in ep.obs_dict(next=True).items():
                    d.create_dataset(f"next_obs/{k}", data=v)
                d.create_dataset("actions", data=ep.actions)
                d.create_dataset("rewards", data=ep.rewards)
                d.create_dataset("dones", data=ep.terminals.astype(np.int64))
            g.attrs["total"] = len(data)
            g.attrs["env_args"] = json.dumps(_jsonable(env_args))
            _write_attrs(g, dict(data.attrs, env=data.env))
            names = np.array([f"demo_{i}" for i in range(len(eps))], dtype="S")
            rng = np.random.default_rng(seed)
            n_valid = 0 if len(eps) < 2 else max(1, int(round(valid_fraction * len(eps))))
            valid = np.zeros(len(eps), bool)
            valid[rng.permutation(len(eps))[:n_valid]] = True
            f.create_dataset("mask/train", data=names[~valid])
            f.create_dataset("mask/valid", data=names[valid])
            f.create_dataset("mask/successful", data=names[np.asarray(success, bool)])
        finish()
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# -- Minari -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _minari_root(root):
    """MINARI_DATASETS_PATH set to `root` while inside (restored after)."""
    if root is None:
        yield
        return
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(root).resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _minari_data_dir(path: Path) -> Path | None:
    """The data/ folder of a Minari dataset folder (or the data folder itself)."""
    for cand in (path / "data", path):
        if (cand / "metadata.json").is_file():
            return cand
    return None


def read_minari(dataset, root=None, env: str | None = None) -> Transitions:
    """A Minari dataset: a dataset folder (holding data/), or a dataset id found under `root`
    (default: MINARI_DATASETS_PATH). Read with minari's API; never downloads."""
    import gymnasium as gym

    path = Path(dataset)
    data_dir = _minari_data_dir(path) if path.is_dir() else None
    try:
        from minari import MinariDataset

        if data_dir is not None:
            ds = MinariDataset(data_dir)
            source = str(path)
        else:
            from minari.dataset.minari_dataset import parse_dataset_id
            from minari.storage.local import load_dataset as _load

            if path.exists():
                raise DatasetError(f"{path}: not a Minari dataset folder (no data/metadata.json)")
            try:
                parse_dataset_id(str(dataset))
            except Exception:
                raise FileNotFoundError(f"{dataset}: no such file or Minari dataset") from None
            with _minari_root(root):
                ds = _load(str(dataset), download=False)
            source = str(dataset)
    except (DatasetError, FileNotFoundError):
        raise
    except Exception as e:  # minari's own errors on a broken folder
        raise DatasetError(f"{dataset}: not a readable Minari dataset ({_oneline(e)})") from None
    if not isinstance(ds.spec.observation_space, gym.spaces.Box) or \
            not isinstance(ds.spec.action_space, gym.spaces.Box):
        raise DatasetError(f"{source}: only Box observation and action spaces are supported")
    metadata = ds.storage.metadata
    extra = metadata.get("onestep")
    extra = json.loads(extra) if isinstance(extra, str) else dict(extra or {})
    spec_env = ds.spec.env_spec.id if ds.spec.env_spec is not None else ""
    episodes = []
    try:
        for ep in ds.iterate_episodes():
            obs = np.asarray(ep.observations).reshape(len(ep.observations), -1)
            if len(obs) != len(ep.actions) + 1:
                raise DatasetError(f"{source}: episode {ep.id} has {len(obs)} observations for "
                                   f"{len(ep.actions)} actions (expected one more)")
            episodes.append({"observations": obs,
                             "actions": np.asarray(ep.actions).reshape(len(ep.actions), -1),
                             "rewards": ep.rewards, "terminated": bool(ep.terminations[-1])
                             if len(ep.terminations) else False})
    except DatasetError:
        raise
    except Exception as e:  # a broken data file under a readable metadata.json
        raise DatasetError(f"{source}: not a readable Minari dataset ({_oneline(e)})") from None
    if not episodes:
        raise DatasetError(f"{source}: no episodes")
    obs_keys = extra.pop("obs_keys", None) or ()
    success = extra.pop("success", None)
    for k in ("ref_min_score", "ref_max_score"):
        if k in metadata:
            extra.setdefault(k, metadata[k])
    env = env or extra.pop("env", "") or spec_env
    data = Transitions.from_episodes(episodes, env=env, obs_keys=obs_keys, attrs=extra,
                                     source=source)
    if success is not None:
        data.success = np.asarray(success, bool)
    if env:
        check_env(data, env, source)
    return data


def write_minari(data: Transitions, dataset_id: str, root) -> Path:
    """Write `data` as the Minari dataset `dataset_id` under `root` (a MINARI_DATASETS_PATH
    folder) with minari's create_dataset_from_buffers; returns the dataset folder. Reference
    returns in attrs ("ref_random_return", "ref_expert_return") become Minari's ref_min_score
    and ref_max_score."""
    import warnings

    import gymnasium as gym
    from minari import create_dataset_from_buffers
    from minari.data_collector import EpisodeBuffer

    buffers = []
    for i, ep in enumerate(data.episodes()):
        if len(ep) > 1 and not np.array_equal(ep.observations[1:], ep.next_observations[:-1]):
            raise ValueError(f"episode {i}: next_observations do not continue into the next "
                             "step's observations, which a Minari episode cannot hold")
        buffers.append(EpisodeBuffer(
            id=i, observations=np.concatenate([ep.observations, ep.next_observations[-1:]]),
            actions=ep.actions, rewards=ep.rewards.astype(np.float64).tolist(),
            terminations=ep.terminals.tolist(), truncations=ep.timeouts.tolist(), infos={}))
    box = lambda d: gym.spaces.Box(-np.inf, np.inf, (d,), np.float32)
    env_spec = None
    if data.env and robot_task(data.env) is None:
        with contextlib.suppress(Exception):
            env_spec = gym.spec(data.env)
    extra = dict(data.attrs, env=data.env)
    if data.obs_keys:
        extra["obs_keys"] = [list(k) for k in data.obs_keys]
    if data.success is not None:
        extra["success"] = data.success.astype(int).tolist()
    refs = {}
    if "ref_random_return" in data.attrs and "ref_expert_return" in data.attrs and env_spec:
        refs = {"ref_min_score": float(data.attrs["ref_random_return"]),
                "ref_max_score": float(data.attrs["ref_expert_return"])}
    action_space = gym.spaces.Box(-1.0, 1.0, (data.action_dim,), np.float32) \
        if env_spec is None else None
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with _minari_root(root), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # author, e-mail, code link: not known here
        ds = create_dataset_from_buffers(
            dataset_id, buffers, env=env_spec,
            observation_space=None if env_spec else box(data.obs_dim),
            action_space=action_space, algorithm_name=str(data.attrs.get("policy", "onestep")),
            description=str(data.attrs.get("description", f"{data.env} "
                                           f"{data.attrs.get('quality', '')}")), **refs)
        ds.storage.update_metadata({"onestep": json.dumps(_jsonable(extra))})
    return root / dataset_id


# -- any format ---------------------------------------------------------------------------------
def detect_format(path) -> str:
    """"minari" for a folder, "robomimic" for an hdf5 file with a data group, else "d4rl"."""
    path = Path(path)
    if path.is_dir():
        return "minari"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    import h5py

    with _open_h5(path) as f:
        return "robomimic" if isinstance(f.get("data"), h5py.Group) else "d4rl"


def load_dataset(path, env: str | None = None, format: str = "auto", root=None) -> Transitions:
    """Read a D4RL file, a robomimic file or a Minari dataset (folder, or id under `root`);
    format "auto" decides from what is there. `env` checks the dimensions (default: the env the
    file names)."""
    if format not in ("auto", *FORMATS):
        raise ValueError(f"unknown format {format!r}; choose from auto, {', '.join(FORMATS)}")
    if format == "auto":
        p = Path(path)
        format = "minari" if (root is not None and not p.exists()) else detect_format(p)
    if format == "d4rl":
        return read_d4rl(path, env=env)
    if format == "robomimic":
        return read_robomimic(path, env=env)
    return read_minari(path, root=root, env=env)


def save_dataset(data: Transitions, out, format: str = "d4rl", dataset_id: str = "") -> Path:
    """Write `data` in `format`; for minari `out` is the datasets root and `dataset_id` names
    the dataset. Returns the file or dataset folder."""
    if format == "d4rl":
        return write_d4rl(out, data)
    if format == "robomimic":
        return write_robomimic(out, data)
    if format == "minari":
        if not dataset_id:
            raise ValueError("a Minari dataset needs a dataset id")
        return write_minari(data, dataset_id, out)
    raise ValueError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
