"""Saved models: a folder with `model.json` (what the network is, its path, prediction and time
input, and what kind of model it is) and `model.safetensors` (the weights), written atomically.

Students of distillation methods (`save_student` / `load_student`) are saved in one of two ways,
recorded in model.json's "student" entry (kind "student"):
    "denoiser"   the student is a Denoiser sampled by `DenoiserGenerator` (most methods): the
                 Denoiser is saved as above, with the generator's settings (t_start, times,
                 stochastic); `load_model` loads it as a plain Denoiser too.
    "generator"  any other Generator (MeanFlow's two-time network, MSD's students, Phased DMD's
                 experts): the generator's state_dict in generator.safetensors, the teacher in
                 teacher/ and the method's config; `load_student` rebuilds the Distiller from the
                 teacher and config and loads the weights into its `generator()`.
    "adapter"    a Denoiser student built on the teacher's own frozen network (LoRA adaptors,
                 `distill.students`): only its own weights (the adaptors, a w embedding) in
                 adapter.safetensors, with the recipe that rebuilds it, the teacher folder
                 (relative to the student's) and the SHA-256 of the teacher's weights;
                 `load_student` loads the teacher from that folder (or `teacher=`) and refuses
                 one whose weights differ.
"""

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

__all__ = ["save_model", "load_model", "read_model_info", "save_student", "load_student",
           "CheckpointError"]

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


def save_model(folder, denoiser: Denoiser, *, kind: str = "teacher", extra: dict | None = None,
               student: dict | None = None):
    """Write `denoiser`'s network, path, prediction and time input to `folder` (`student`: the
    "student" entry of `save_student`)."""
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
    if student is not None:
        info["student"] = student
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    _atomic_write(folder / "model.safetensors", lambda p: save_file(state, p))
    _atomic_write(folder / "model.json",
                  lambda p: FilePath(p).write_text(json.dumps(info, indent=1)))


def read_model_info(folder) -> dict:
    file = FilePath(folder) / "model.json"
    if not file.exists():
        from .runs import checkpoint_steps

        steps = checkpoint_steps(folder)
        if steps:  # a run that stopped before saving its model
            raise CheckpointError(f"{folder} holds an unfinished run (checkpoint at step "
                                  f"{steps[-1]}) but no saved model; finish it by running the "
                                  "command that started it again with --resume")
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
    student = info.get("student") or {}
    if kind is not None and kind not in (info["kind"], student.get("method")):
        raise CheckpointError(f"{FilePath(folder) / 'model.json'} holds a {info['kind']!r} model, "
                              f"expected a {kind!r} model")
    if student.get("format") in ("generator", "adapter"):
        raise CheckpointError(
            f"{FilePath(folder) / 'model.json'} holds a {student.get('method')!r} student saved as "
            f"{student['format']!r}, not a single Denoiser; load it with "
            "onestep.core.io.load_student"
        )
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



# -- students ----------------------------------------------------------------------------------
def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"cannot save {type(value).__name__} {value!r} in model.json")


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def config_from_dict(config_class, values: dict):
    """A method's config dataclass from its saved dict (lists back to tuples); a clear error
    naming unknown fields (a model saved by another version)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise CheckpointError(f"{config_class.__name__} has no fields {unknown}: the student was "
                              "saved by another version of onestep")
    return config_class(**{k: _tuples(v) for k, v in values.items()})


def _saveable(den: Denoiser) -> bool:
    """Whether `save_model` can write `den` so that `load_model` rebuilds it: a named time input
    and a registered network whose weights match a fresh build (not, e.g., LoRA-wrapped)."""
    if callable(den.time_input):
        return False
    try:
        net = den.model
        fresh = build_network(network_name(net), net.config)
    except (ValueError, AttributeError, TypeError):
        return False
    return fresh.state_dict().keys() == net.state_dict().keys()


def save_student(folder, distiller, *, extra: dict | None = None, teacher_folder=None) -> dict:
    """Save `distiller.generator()` so that `load_student(folder)` rebuilds it; returns the
    "student" entry written to model.json. `extra` is stored as model.json's "extra" (e.g. the
    teacher's model.json and the data normalisation). A LoRA student is saved as its adaptors
    alone, referring to `teacher_folder` (the saved teacher it was distilled from; None: the
    teacher is saved in `folder`/teacher)."""
    import dataclasses

    from .distill.base import DenoiserGenerator
    from .distill.students import recipe_of

    folder = FilePath(folder)
    folder.mkdir(parents=True, exist_ok=True)
    method = getattr(distiller, "kind", None)
    gen = distiller.generator()
    entry = {"method": method, "config": _jsonable(dataclasses.asdict(distiller.config)),
             "nfe": 1}
    if isinstance(gen, DenoiserGenerator) and recipe_of(gen.denoiser.model)["lora"] is not None:
        entry.update(t_start=gen.t_start, times=gen.times, stochastic=gen.stochastic,
                     nfe=len(gen.times) if gen.times else 1)
        return _save_adapter(folder, gen.denoiser, distiller.teacher, entry, extra,
                             teacher_folder)
    if isinstance(gen, DenoiserGenerator) and _saveable(gen.denoiser):
        entry.update(format="denoiser", t_start=gen.t_start, times=gen.times,
                     stochastic=gen.stochastic, nfe=len(gen.times) if gen.times else 1)
        (folder / "generator.safetensors").unlink(missing_ok=True)
        save_model(folder, gen.denoiser, kind="student", extra=extra, student=entry)
        return entry
    # any other Generator: its weights, the teacher and the config rebuild it (model.json last)
    teacher = distiller.teacher
    nfe = getattr(gen, "nfe", 1)
    entry.update(format="generator", generator=type(gen).__name__,
                 nfe=nfe if isinstance(nfe, int) else 1)
    save_model(folder / "teacher", teacher, kind="teacher")
    state = {k: v.detach().cpu().clone().contiguous() for k, v in gen.state_dict().items()}
    _atomic_write(folder / "generator.safetensors", lambda p: save_file(state, p))
    (folder / "model.safetensors").unlink(missing_ok=True)
    net = teacher.model
    info = {"format": FORMAT, "kind": "student",
            "network": {"name": network_name(net), "config": net.config},
            "path": teacher.path.config, "prediction": teacher.prediction,
            "time_input": teacher.time_input, "null_cond": teacher.null_cond,
            "extra": extra or {}, "student": entry}
    _atomic_write(folder / "model.json",
                  lambda p: FilePath(p).write_text(json.dumps(info, indent=1)))
    return entry


def _save_adapter(folder: FilePath, student: Denoiser, teacher: Denoiser, entry: dict,
                  extra: dict | None, teacher_folder) -> dict:
    """The "adapter" format: the student's own weights, its recipe and the teacher's hash."""
    from .distill.students import adapted_network, recipe_of, weights_sha256

    recipe = recipe_of(student.model)
    lora = recipe["lora"]
    skeleton, own = adapted_network(teacher.model, lora_rank=lora["rank"],
                                    lora_alpha=lora["alpha"], lora_layers=lora["layers"],
                                    guidance=recipe["guidance"])
    state = student.model.state_dict()
    base = skeleton.state_dict()
    if state.keys() != base.keys():
        raise ValueError("the LoRA student's network is not the teacher's network with adaptors")
    changed = [k for k in base if k not in own and not torch.equal(state[k].cpu(), base[k].cpu())]
    if changed:
        raise ValueError(f"the LoRA student changed teacher weights ({changed[:3]}); only its "
                         "adaptors can be saved apart from the teacher")
    if teacher_folder is None:
        save_model(folder / "teacher", teacher, kind="teacher")
        teacher_folder = folder / "teacher"
    teacher_folder = FilePath(teacher_folder)
    if not (teacher_folder / "model.json").is_file():
        raise ValueError(f"{teacher_folder} holds no saved teacher (model.json) for the LoRA "
                         "student to refer to")
    digest = weights_sha256(teacher.model)
    if weights_sha256(load_model(teacher_folder, kind="teacher")[0].model) != digest:
        raise ValueError(f"{teacher_folder} holds another teacher than the one the LoRA student "
                         "was distilled from")
    entry.update(format="adapter", adapter=recipe, teacher={
        "folder": os.path.relpath(teacher_folder.resolve(), folder.resolve()), "sha256": digest})
    weights = {k: state[k].detach().cpu().contiguous() for k in sorted(own)}
    for stale in ("model.safetensors", "generator.safetensors"):
        (folder / stale).unlink(missing_ok=True)
    _atomic_write(folder / "adapter.safetensors", lambda p: save_file(weights, p))
    net = teacher.model
    info = {"format": FORMAT, "kind": "student",
            "network": {"name": network_name(net), "config": net.config},
            "path": teacher.path.config, "prediction": teacher.prediction,
            "time_input": teacher.time_input, "null_cond": teacher.null_cond,
            "extra": extra or {}, "student": entry}
    _atomic_write(folder / "model.json",
                  lambda p: FilePath(p).write_text(json.dumps(info, indent=1)))
    return entry


def _load_adapter(folder: FilePath, info: dict, teacher) -> Denoiser:
    """The Denoiser of an "adapter" student: the teacher (from `teacher` or the saved folder
    reference), checked against the saved hash, rebuilt by the recipe, plus the saved weights."""
    from .distill.students import adapted_network, weights_sha256

    entry = info["student"]
    ref = entry["teacher"]
    tfolder = FilePath(teacher) if teacher is not None else folder / ref["folder"]
    if not (tfolder / "model.json").is_file():
        raise CheckpointError(f"{folder} is a LoRA student of the teacher in {tfolder}, which "
                              "holds no saved model; pass the teacher's folder (teacher=...)")
    tden, _ = load_model(tfolder, kind="teacher")
    found = weights_sha256(tden.model)
    if found != ref["sha256"]:
        raise CheckpointError(f"the teacher in {tfolder} (weights sha256 {found[:12]}) is not the "
                              f"one {folder} was distilled from (sha256 {ref['sha256'][:12]}): a "
                              "LoRA student needs its own teacher's weights")
    lora, recipe = entry["adapter"]["lora"], entry["adapter"]
    net, own = adapted_network(tden.model, lora_rank=lora["rank"], lora_alpha=lora["alpha"],
                               lora_layers=lora["layers"], guidance=recipe["guidance"])
    file = folder / "adapter.safetensors"
    state = read_weights(file, {"modules": ["adapter"]})
    expected = net.state_dict()
    if set(state) != set(own) or any(state[k].shape != expected[k].shape for k in own):
        raise CheckpointError(f"{file} does not hold the LoRA student's weights (expected "
                              f"{len(own)} tensors such as {sorted(own)[:2]}, found "
                              f"{sorted(state)[:2]})")
    with torch.no_grad():
        net.load_state_dict(state, strict=False)
    net.eval().requires_grad_(False)
    return Denoiser(net, tden.path, prediction=tden.prediction, time_input=tden.time_input,
                    null_cond=tden.null_cond)


def load_student(folder, *, teacher=None):
    """(Generator, info) from a folder written by `save_student`; `info["student"]` has the
    method, its config and its natural NFE. A teacher or a non-model folder: CheckpointError.
    `teacher`: the teacher folder of a LoRA student (default: the one it was saved with)."""
    from .distill import get_method
    from .distill.base import DenoiserGenerator

    folder = FilePath(folder)
    info = read_model_info(folder)
    entry = info.get("student")
    if info["kind"] != "student" or not isinstance(entry, dict):
        raise CheckpointError(f"{folder / 'model.json'} holds a {info['kind']!r} model, not a "
                              "distilled student")
    fmt = entry.get("format")
    if fmt == "denoiser":
        den, info = load_model(folder)
        gen = DenoiserGenerator(den, t_start=entry["t_start"], times=entry.get("times"),
                                stochastic=entry["stochastic"])
        return gen.eval(), info
    if fmt == "adapter":
        den = _load_adapter(folder, info, teacher)
        gen = DenoiserGenerator(den, t_start=entry["t_start"], times=entry.get("times"),
                                stochastic=entry["stochastic"])
        return gen.eval(), info
    if fmt != "generator":
        raise CheckpointError(f"{folder / 'model.json'}: unknown student format {fmt!r}")
    try:
        config_class, distiller_class, _ = get_method(entry["method"])
    except ValueError as e:
        raise CheckpointError(f"{folder / 'model.json'}: {e}") from e
    teacher, _ = load_model(folder / "teacher", kind="teacher")
    config = config_from_dict(config_class, entry["config"])
    gen = distiller_class(teacher, config).generator()
    file = folder / "generator.safetensors"
    state = read_weights(file, {"modules": ["generator"]})
    check_match(file, "generator", gen, state)
    with torch.no_grad():
        gen.load_state_dict(state)
    return gen.eval(), info
