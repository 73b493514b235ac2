"""Saved models: a folder with `model.json` (what the network is, its path, prediction and time
input, and what kind of model it is) and `model.safetensors` (the weights), written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path as FilePath

import torch
from safetensors.torch import save_file

from .denoiser import Denoiser
from .nn import build_network, network_name
from .paths import path_from_config
from .train import CheckpointError
from .train.checkpoint import check_match, read_weights

__all__ = ["save_model", "load_model", "read_model_info", "CheckpointError"]

FORMAT = 1


def _atomic_write(target: FilePath, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_model(folder, denoiser: Denoiser, *, kind: str = "teacher", extra: dict | None = None):
    """Write `denoiser`'s network, path, prediction and time input to `folder`."""
    if callable(denoiser.time_input):
        raise ValueError("a Denoiser with a callable time_input cannot be saved; use a named one")
    folder = FilePath(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = denoiser.model
    info = {
        "format": FORMAT,
        "kind": kind,
        "network": {"name": network_name(net), "config": net.config},
        "path": denoiser.path.config,
        "prediction": denoiser.prediction,
        "time_input": denoiser.time_input,
        "null_cond": denoiser.null_cond,
        "extra": extra or {},
    }
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    _atomic_write(folder / "model.safetensors", lambda p: save_file(state, p))
    _atomic_write(folder / "model.json",
                  lambda p: FilePath(p).write_text(json.dumps(info, indent=1)))


def read_model_info(folder) -> dict:
    file = FilePath(folder) / "model.json"
    if not file.exists():
        raise CheckpointError(f"{file}: no such file; is {folder} a saved onestep model?")
    try:
        info = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is corrupt: {e}") from e
    for key in ("kind", "network", "path", "prediction", "time_input"):
        if key not in info:
            raise CheckpointError(f"{file} has no {key!r} entry: not a onestep model file")
    return info


def load_model(folder, *, kind: str | None = None) -> tuple[Denoiser, dict]:
    """(Denoiser, info) from a folder written by `save_model`; `kind` checks the model's kind
    ("teacher", or a distillation method's name for a student)."""
    info = read_model_info(folder)
    if kind is not None and info["kind"] != kind:
        raise CheckpointError(f"{FilePath(folder) / 'model.json'} holds a {info['kind']!r} model, "
                              f"expected a {kind!r} model")
    net = build_network(info["network"]["name"], info["network"]["config"])
    file = FilePath(folder) / "model.safetensors"
    state = read_weights(file, {"modules": ["model"]})
    check_match(file, "model", net, state)
    with torch.no_grad():
        net.load_state_dict(state)
    net.eval()
    den = Denoiser(net, path_from_config(info["path"]), prediction=info["prediction"],
                   time_input=info["time_input"], null_cond=info.get("null_cond"))
    return den, info

