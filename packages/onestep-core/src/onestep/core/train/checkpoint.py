"""Checkpoints: one directory per step, written atomically, checked on load.

Layout (under `out_dir/checkpoints/`):
    step_00001000/{name}.safetensors   weights of each module of `task.modules()`
    step_00001000/state.pt             optimisers, schedulers, step, per-rank RNG, extra state
    step_00001000/meta.json            step, module names, kind
    latest                             text: the name of the newest complete step directory
A step directory is written under a `.tmp-*` name, fsynced and renamed into place; `latest` is
replaced atomically afterwards, so a crash leaves at worst an unreferenced temporary directory.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

FORMAT = "onestep-checkpoint/1"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not fit what is loading it."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


# ----------------------------------------------------------------------------- RNG state


def capture_rng(generators: Mapping[str, torch.Generator], device: torch.device) -> dict:
    """Named generators' states plus the global torch, CUDA, numpy and Python RNG states."""
    np_state = np.random.get_state()
    state = {
        "generators": {k: g.get_state() for k, g in generators.items()},
        "torch": torch.get_rng_state(),
        # stored as tensors and tuples so state.pt loads with weights_only=True
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: Mapping, generators: Mapping[str, torch.Generator], device) -> None:
    for k, g in generators.items():
        if k in state["generators"]:
            g.set_state(state["generators"][k])
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])
    if "cuda" in state and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


# ----------------------------------------------------------------------------- writing


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk (directories: best effort, not on every OS)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_torch(path: Path, obj) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _weights(module: nn.Module, name: str) -> dict[str, Tensor]:
    """The state_dict as contiguous CPU tensors, each owning its storage (safetensors rejects
    shared or partial storage, e.g. tied weights)."""
    out, seen = {}, set()
    for key, t in module.state_dict().items():
        if not isinstance(t, Tensor):
            raise TypeError(f"module '{name}': state_dict entry '{key}' is not a tensor")
        t = t.detach().cpu().contiguous()
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in seen or storage.nbytes() != t.nbytes or t.storage_offset() != 0:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    task,
    *,
    rng: list | None = None,
    extra_meta: Mapping | None = None,
) -> Path:
    """Write `root/step_{step:08d}/` atomically and point `root/latest` at it. Rank 0 only.

    `task` is a Task (modules, optimisers, schedulers, extra state) or a dict of modules.
    `rng` is the list of per-rank RNG states (`capture_rng`) to restore on resume.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    is_task = not isinstance(task, Mapping)
    modules = dict(task.modules()) if is_task else dict(task)
    name = step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    try:
        for key, module in modules.items():
            path = tmp / f"{key}.safetensors"
            safetensors.torch.save_file(_weights(module, key), path, metadata={"format": "pt"})
            _fsync(path)
        state = {"step": step, "rng": rng}
        if is_task:
            state["optimizers"] = {k: o.state_dict() for k, o in task.optimizers().items()}
            state["schedulers"] = {k: s.state_dict() for k, s in task.schedulers().items()}
            if hasattr(task, "extra_state"):
                state["extra"] = task.extra_state()
        _write_torch(tmp / "state.pt", state)
        meta = {
            "format": FORMAT,
            "step": step,
            "kind": getattr(task, "kind", None) if is_task else None,
            "modules": list(modules),
            **(extra_meta or {}),
        }
        _write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
        _fsync(tmp)
        final = root / name
        if final.exists():  # re-saving a step: move the old one aside, then drop it
            old = Path(tempfile.mkdtemp(prefix=f".tmp-old-{name}-", dir=root))
            os.replace(final, old / name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fd, tmp_latest = tempfile.mkstemp(prefix=".tmp-latest-", dir=root)
    os.close(fd)
    try:
        _write_text(Path(tmp_latest), name + "\n")
        os.replace(tmp_latest, root / "latest")
    except BaseException:
        Path(tmp_latest).unlink(missing_ok=True)
        raise
    _fsync(root)
    return final


def clean_temporaries(root: str | os.PathLike) -> None:
    """Remove `.tmp-*` leftovers of an interrupted save."""
    root = Path(root)
    if not root.is_dir():
        return
    for p in root.glob(".tmp-*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete step directories (with meta.json) under `root`, by step."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "meta.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def prune_checkpoints(root: str | os.PathLike, keep_last: int, up_to: int | None = None) -> None:
    """Keep the newest `keep_last` step directories (among steps <= `up_to`) and `latest`'s."""
    if keep_last <= 0:
        return
    root = Path(root)
    latest = root / "latest"
    keep = latest.read_text().strip() if latest.is_file() else None
    ckpts = [(s, p) for s, p in list_checkpoints(root) if up_to is None or s <= up_to]
    for _, p in ckpts[:-keep_last]:
        if p.name != keep:
            shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- reading


def latest_checkpoint(path: str | os.PathLike) -> Path | None:
    """The newest step directory under `path` (an out_dir or its checkpoints/), or None."""
    path = Path(path)
    for root in (path, path / "checkpoints"):
        latest = root / "latest"
        if latest.is_file():
            name = latest.read_text().strip()
            step_dir = root / name
            if not (step_dir / "meta.json").is_file():
                raise CheckpointError(f"{latest} points to {name!r}, missing or incomplete")
            return step_dir
        ckpts = list_checkpoints(root)
        if ckpts:
            return ckpts[-1][1]
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A step directory from itself, a checkpoints/ directory or an out_dir."""
    path = Path(path)
    if _STEP_DIR.match(path.name) or (path / "meta.json").exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} does not exist")
        if not (path / "meta.json").is_file():
            raise CheckpointError(f"{path / 'meta.json'} is missing")
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointError(f"no checkpoint found under {path}")
    return found


def _read_meta(step_dir: Path) -> dict:
    path = step_dir / "meta.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated: {e}") from e
    if not isinstance(meta, dict) or "modules" not in meta:
        raise CheckpointError(f"{path} is corrupt: no 'modules' entry")
    return meta


def read_weights(path: Path, meta: dict) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (the checkpoint lists modules {meta['modules']})")
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except Exception as e:
        raise CheckpointError(f"{path} is corrupt or truncated: {e}") from e


def _first(keys, n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def check_match(path: Path, name: str, module: nn.Module, found: Mapping[str, Tensor]) -> None:
    expected = module.state_dict()
    problems = []
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    if missing:
        problems.append(f"missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_first(unexpected)}")
    # a lazy module's (e.g. nn.LazyLinear) uninitialised parameters take the saved shapes
    shapes = [
        k
        for k in expected
        if k in found
        and not is_lazy(expected[k])
        and tuple(expected[k].shape) != tuple(found[k].shape)
    ]
    if shapes:
        listed = "; ".join(
            f"{k}: expected {tuple(expected[k].shape)}, found {tuple(found[k].shape)}"
            for k in shapes[:5]
        )
        more = f"; ... ({len(shapes)} in all)" if len(shapes) > 5 else ""
        problems.append(f"shape mismatch: {listed}{more}")
    if problems:
        raise CheckpointError(f"{path} does not match module '{name}': " + " | ".join(problems))


def _read_state(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights only load failed" in str(e).lower():
            raise CheckpointError(
                f"{path} holds objects torch.load(weights_only=True) refuses; keep extra_state "
                f"to tensors, numbers, strings and containers: {e}"
            ) from e
        raise CheckpointError(f"{path} is corrupt or truncated: {e}") from e
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is corrupt: no 'step' entry")
    return state


def load_checkpoint(
    path: str | os.PathLike,
    target,
    *,
    kind: str | None = None,
    strict: bool = True,
) -> dict:
    """Load a checkpoint into a Task (weights, optimisers, schedulers, extra state) or into a
    dict of modules (only the named modules' weights, e.g. `{"ema": net}`).

    `path` is a step directory, a checkpoints/ directory or an out_dir (then `latest`). Everything
    is read and checked before anything is loaded; problems raise CheckpointError naming the file.
    `kind` (default: the task's `kind`) must equal the checkpoint's when both are set. `strict`
    (tasks only): the checkpoint may not hold modules the task lacks.
    Returns {"step", "path", "meta", "state"}; "state" is state.pt's content for a Task, else None.
    """
    step_dir = resolve_checkpoint(path)
    meta = _read_meta(step_dir)
    is_task = not isinstance(target, Mapping)
    modules = dict(target.modules()) if is_task else dict(target)
    if kind is None and is_task:
        kind = getattr(target, "kind", None)
    if kind is not None and meta.get("kind") is not None and meta["kind"] != kind:
        raise CheckpointError(
            f"{step_dir / 'meta.json'}: checkpoint kind {meta['kind']!r} does not match "
            f"the expected kind {kind!r}"
        )
    if is_task and strict:
        extra = [m for m in meta["modules"] if m not in modules]
        if extra:
            raise CheckpointError(
                f"{step_dir / 'meta.json'} lists modules {extra} that the task does not have "
                f"(task modules: {list(modules)})"
            )
    weights = {}
    for name, module in modules.items():
        file = step_dir / f"{name}.safetensors"
        weights[name] = read_weights(file, meta)
        check_match(file, name, module, weights[name])
    state = None
    if is_task:
        file = step_dir / "state.pt"
        state = _read_state(file)
        for group in ("optimizers", "schedulers"):
            have = set(getattr(target, group)())
            saved = set(state.get(group) or {})
            if have != saved:
                raise CheckpointError(
                    f"{file}: {group} {sorted(saved)} do not match the task's {sorted(have)}"
                )

    for name, module in modules.items():
        module.load_state_dict(weights[name])
    if is_task:
        for name, opt in target.optimizers().items():
            try:
                opt.load_state_dict(state["optimizers"][name])
            except (ValueError, KeyError, RuntimeError) as e:
                raise CheckpointError(f"{file}: optimizer '{name}' does not match: {e}") from e
        for name, sched in target.schedulers().items():
            sched.load_state_dict(state["schedulers"][name])
        if "extra" in state and hasattr(target, "load_extra_state"):
            target.load_extra_state(state["extra"])
    return {"step": int(meta["step"]), "path": step_dir, "meta": meta, "state": state}
