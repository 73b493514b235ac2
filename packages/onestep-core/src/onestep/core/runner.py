"""One way to run a training or a distillation into a run folder, for every command line (core's
`onestep train` / `distill` and the domain packages' verbs): check the output folder and the
resume (`runs.check_run_folder`, `check_resume`), build the task after the Trainer has seeded,
write run.json, train with a non-finite run reported by step and term; and the method-config
resolution of `distill` (`--set` overrides, `--nfe`, the learning-rate decay stretched to the run).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path as FilePath

import torch

__all__ = ["DATA_METHODS", "SCHEDULED", "SCHEDULE_FIELDS", "check_finite_model", "fit_schedule",
           "check_resume", "describe_model",
           "fit", "guard_out", "loss_summary", "needs_data", "nfe_overrides", "parse_overrides",
           "resolve_config", "resolve_method", "run_task", "trained_steps", "write_json"]


def describe_model(info: dict) -> str:
    student = info.get("student") or {}
    if info.get("kind") == "student":
        return f"a student of {student.get('method')!r}"
    return f"a {info.get('kind')!r} model"


def guard_out(out: FilePath, kind: str, *, resume: bool, overwrite: bool,
               protect: FilePath | None = None) -> None:
    """Check --out before any work: never the teacher's own folder, not a folder holding another
    kind of model (unless --overwrite), and the run-folder rule of `runs.check_run_folder`."""
    from .io import read_model_info
    from .runs import check_run_folder

    if protect is not None and out.resolve() == protect.resolve():
        raise ValueError(f"--out {out} is the teacher's folder; choose another for the student")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a folder")
    if (out / "model.json").exists() and not overwrite:
        try:
            info = read_model_info(out)
        except ValueError:
            info = None
        if info is not None and info["kind"] != kind:
            raise ValueError(f"--out {out} already holds {describe_model(info)}; choose another "
                             f"folder for the {kind}")
    check_run_folder(out, resume=resume, overwrite=overwrite)


def _checkpoint_kind(out: FilePath) -> tuple[FilePath, str | None] | None:
    """(step folder, kind) of the newest checkpoint whose meta.json reads, or None."""
    from .runs import checkpoint_steps
    from .train.checkpoint import step_dir_name

    for step in reversed(checkpoint_steps(out)):
        folder = out / "checkpoints" / step_dir_name(step)
        try:
            return folder, json.loads((folder / "meta.json").read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            continue  # the Trainer skips it too, and says so
    return None


_NOT_SHAPING = {"steps", "resume", "overwrite", "progress", "threads", "dry_run", "ckpt_every"}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def check_resume(out: FilePath, run: dict, resume: bool, kind: str) -> None:
    """On --resume: a checkpoint of another kind, or settings that differ from the run.json the
    run started with, are errors (before anything is written). A resumed run equals an
    uninterrupted one only with the settings it started with: its warm-up and learning-rate decay
    were fixed when it started."""
    from .io import CheckpointError

    if not resume:
        return
    found = _checkpoint_kind(out)
    if found is not None and found[1] is not None and found[1] != kind:
        raise CheckpointError(f"--resume: {found[0] / 'meta.json'}: checkpoint kind {found[1]!r} "
                              f"does not match the expected kind {kind!r}")
    file = out / "run.json"
    if not file.exists():
        return
    try:
        old = _flat(json.loads(file.read_text()))
    except (ValueError, AttributeError):
        return
    new = _flat(run)
    changed = {k: (old.get(k), v) for k, v in new.items()
               if not set(k.split(".")) & _NOT_SHAPING and old.get(k) != v}
    if changed:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"--resume: {out} was started with other settings ({shown}); a resumed "
                         "run keeps the settings it started with (its learning-rate warm-up and "
                         "decay included), so resume with those, or start again with "
                         "--overwrite or another --out")


def fit(trainer, task, data, out: FilePath, retry: str, *,
        on_checkpoint: Callable[[int], None] | None = None) -> list[dict]:
    """`trainer.fit`, with a run that turns non-finite reported as a ValueError that names the
    step, the loss term and the newest (good) checkpoint that is kept."""
    from .runs import checkpoint_steps

    try:
        return trainer.fit(task, data, on_checkpoint=on_checkpoint)
    except FloatingPointError as e:
        steps = checkpoint_steps(out)
        kept = (f"the checkpoint of step {steps[-1]} in {out / 'checkpoints'} is kept"
                if steps else "no checkpoint had been written")
        raise ValueError(f"training turned non-finite ({e}); {kept}; start again with {retry} "
                         "and --overwrite") from e


def check_finite_model(den, folder: str, dim, cond=None) -> None:
    """Refuse a model whose outputs are not finite (NaN or inf weights) before using it; `cond`
    is the conditioning of the 64 probe inputs (class labels for a class-conditional model)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, *dim, generator=g)
    with torch.no_grad():
        bad = [t for t in (0.1, 0.5, 0.9)
               if not torch.isfinite(den.x0(x, torch.full((64,), t), cond)).all()]
    if bad:
        raise ValueError(f"the model in {folder} gives non-finite outputs (at t = "
                         f"{', '.join(map(str, bad))}); its weights hold NaN or inf")


def write_json(file: FilePath, obj) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(file)


def loss_summary(records: list[dict]) -> str:
    if not records:
        return ""
    first, last = records[0]["logs"], records[-1]["logs"]
    key = "loss" if "loss" in first else next((k for k in first if "loss" in k), None)
    if key is None or key not in last:
        return ""
    return f"; {key} {first[key]:.4g} -> {last[key]:.4g}"


def trained_steps(out: FilePath) -> int | None:
    from .train import latest_checkpoint

    ckpt = latest_checkpoint(out)
    return None if ckpt is None else int(json.loads((ckpt / "meta.json").read_text())["step"])


# -- config overrides ---------------------------------------------------------------------------
def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _convert(key: str, text: str, annotation: str):
    ann = annotation.replace(" ", "")
    options = ann.split("|")
    if "None" in options and text.lower() in ("none", "null"):
        return None
    base = next((o for o in options if o != "None"), "str")
    try:
        if base == "bool":
            low = text.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if base == "int":
            v = float(text)
            if not v.is_integer():
                raise ValueError
            return int(v)
        if base == "float":
            return float(text)
        if base.startswith("tuple["):
            if text.startswith("["):
                return _tuples(json.loads(text))
            inner = base[len("tuple["):].split(",")[0]
            kind = {"int": int, "float": float}.get(inner, str)
            return tuple(kind(v) for v in text.split(",") if v != "")
        return text
    except ValueError:
        raise ValueError(f"--set {key}={text}: not a valid {annotation}") from None


def parse_overrides(text: str, config_class) -> dict:
    """{field: value} from "k=v k2=v2" (spaces or ';' between pairs), converted to the config
    field's type; a clear error for unknown fields and bad values."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(config_class)}
    out = {}
    for pair in re.split(r"[;\s]+", text.strip()):
        if not pair:
            continue
        if "=" not in pair:
            raise ValueError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in fields:
            raise ValueError(f"--set {key}: {config_class.__name__} has no field {key!r}; its "
                             f"fields: {', '.join(fields)}")
        out[key] = _convert(key, value.strip(), fields[key])
    return out


def nfe_overrides(method: str, nfe: int) -> dict:
    """The config fields that make `method` train a student for `nfe` steps."""
    if nfe == 0:
        return {}
    if nfe < 0:
        raise ValueError(f"--nfe must be at least 1 (or 0: the method's default), got {nfe}")
    grid = tuple(1.0 - i / nfe for i in range(nfe))
    table = {"progressive": {"final_steps": nfe}, "segment_cd": {"segments": nfe},
             "tdm": {"num_steps": nfe}, "dmd2": {"times": grid},
             "phased_dmd": {"phase_times": grid}}
    if method in table:
        return table[method]
    if nfe == 1:
        return {}
    raise ValueError(f"--nfe {nfe}: {method} trains a one-step student and has no step-count "
                     f"setting; sample it in several steps with `onestep sample --nfe {nfe}`, or "
                     f"use one of {sorted(table)}")


# Methods whose update reads the batch's values (real data), not only its shape: found by reading
# each Distiller's `step` and checked by running one step on shifted data (see test_cli.py).
SCHEDULED = ("progressive", "ict", "reflow", "instaflow", "slimflow", "phased_dmd")
DATA_METHODS = ("progressive", "cd", "ict", "segment_cd", "meanflow", "fdistill")


def needs_data(method: str, config) -> bool:
    """Whether `method` with `config` trains on real data (else it draws noise only)."""
    if method in DATA_METHODS:
        return True
    if method == "dmd2":  # its GAN's discriminator sees real samples
        return config.gan_weight > 0 or config.disc_weight > 0
    if method == "msd":  # teacher score matching on real data first; the adversarial stage's
        # discriminator sees real samples (as dmd2's)
        adversarial = config.adv_start is not None and (config.gan_weight > 0
                                                        or config.disc_weight > 0)
        return config.tsm_steps > 0 or adversarial
    return False


def resolve_config(method: str, teacher, overrides: dict, *, seed: int | None = None,
                   progress: bool | None = None, defaults: Callable | None = None):
    """The method's config at a scale (`defaults`, core's `toy_config` by default) with its seeds
    and progress bar set, then `overrides`."""
    from .distill import get_method, toy_config

    config_class = get_method(method)[0]
    names = {f.name for f in dataclasses.fields(config_class)}
    auto = {}
    for name in names:
        if seed is not None and (name == "seed" or name.endswith("_seed")):
            auto[name] = seed
    if progress is not None and "progress" in names:
        auto["progress"] = progress
    try:
        return (defaults or toy_config)(method, teacher, **{**auto, **overrides})
    except TypeError as e:
        raise ValueError(f"{method} config: {e}") from e




# -- the routine --------------------------------------------------------------------------------
def resolve_method(method: str, teacher, *, overrides: str | dict = "", nfe: int = 0,
                   steps: int = 0, seed: int | None = None, progress: bool | None = None,
                   defaults: Callable | None = None) -> tuple[object, int]:
    """(config, steps) for distilling `teacher` with `method`: the scale's defaults
    (`defaults(method, teacher, **fields)`, core's `toy_config` unless a domain passes its own),
    then the fields that train an `nfe`-step student, then `overrides` ("k=v k2=v2" as `--set`
    takes, or a dict); `steps` 0 takes the method's planned run, and a learning-rate decay the
    config schedules is stretched to end with the run unless `overrides` sets lr_decay_steps."""
    from .distill import get_method, toy_steps, with_steps

    config_class = get_method(method)[0]
    if steps < 0:
        raise ValueError(f"--steps must be >= 0 (0: the method's default), got {steps}")
    extra = parse_overrides(overrides, config_class) if isinstance(overrides, str) else overrides
    extra = {**nfe_overrides(method, nfe), **extra}
    config = resolve_config(method, teacher, extra, seed=seed, progress=progress,
                            defaults=defaults)
    planned = toy_steps(method, config)
    steps = steps or planned
    if "lr_decay_steps" not in extra:
        config = with_steps(config, steps)
    if steps != planned and method in SCHEDULED:
        if SCHEDULE_FIELDS[method] & set(extra):  # the user set the schedule: keep it
            if steps < planned:
                print(f"note: {method}'s config schedules {planned} steps (phases, rounds or a "
                      f"curriculum); --steps {steps} stops inside that schedule",
                      file=sys.stderr)
        else:
            config = fit_schedule(method, config, steps)
            print(f"note: {method}'s schedule (phases, rounds or a curriculum) fitted to "
                  f"--steps {steps} (planned {planned})", file=sys.stderr)
    return config, steps


SCHEDULE_FIELDS = {"progressive": {"steps_per_round"}, "ict": {"total_steps"},
                   "reflow": {"reflow_steps", "distill_steps"},
                   "instaflow": {"reflow_steps", "distill_steps"},
                   "slimflow": {"reflow_steps", "distill_steps"}, "phased_dmd": {"phase_steps"}}
"""The config fields that set each scheduled method's length (see fit_schedule)."""


def fit_schedule(method: str, config, steps: int):
    """`config` with the schedule it defines stretched or compressed to `steps` Trainer steps,
    each part keeping its planned share: progressive's rounds (steps_per_round), iCT's
    curriculum (total_steps: the paper's K, Song & Dhariwal 2023 Eq. 8), the reflow rounds and
    the distillation after them, Phased DMD's phases. Other methods are returned unchanged."""
    from .distill import toy_steps

    if method not in SCHEDULED or steps < 1:
        return config
    c = config
    if method == "progressive":
        return dataclasses.replace(c, steps_per_round=max(1, steps // c.rounds))
    if method == "ict":
        return dataclasses.replace(c, total_steps=steps)
    if method == "phased_dmd":
        return dataclasses.replace(c, phase_steps=max(1, steps // len(c.phase_times)))
    planned = toy_steps(method, c)
    rounds = getattr(c, "rounds", 1)
    distill = getattr(c, "distill_steps", 0)
    reflow = max(1, round(c.reflow_steps * steps / planned))
    if not distill:
        return dataclasses.replace(c, reflow_steps=max(1, steps // rounds))
    return dataclasses.replace(c, reflow_steps=reflow,
                               distill_steps=max(1, steps - rounds * reflow))


def run_task(out, build: Callable[[], object], data, *, kind: str, run: dict, steps: int,
             batch_size: int, seed: int = 0, resume: bool = False, overwrite: bool = False,
             ckpt_every: int = 500, progress: bool = True, retry: str = "a lower learning rate",
             model_kind: str | None = None, protect=None, log_every: int = 100,
             on_checkpoint: Callable[[int], None] | None = None) -> dict:
    """Train the task `build()` makes on `data` into the run folder `out`, the one way every
    command does it: check `out` (a run there is refused unless `resume` or `overwrite`; a model
    of another `model_kind` or the `protect` folder, e.g. the teacher's, is refused), check that a
    resumed run keeps the settings in its run.json, delete the old run on `overwrite`, build the
    task after the Trainer has seeded (so its initialisation is the seed's), write run.json
    (`run`: the settings that shape the run), and train up to `steps`. `kind` is the task's
    checkpoint kind. Call it once every other argument has been checked: it is the first thing
    that writes. Returns {"task", "records", "seconds", "step"} (the step trained to)."""
    from .runs import clear_run_folder
    from .train import TrainConfig, Trainer

    out = FilePath(out)
    guard_out(out, model_kind or kind, resume=resume, overwrite=overwrite,
              protect=None if protect is None else FilePath(protect))
    check_resume(out, run, resume, kind)
    clear_run_folder(out, overwrite=overwrite)
    trainer = Trainer(TrainConfig(steps=steps, batch_size=batch_size, seed=seed, out_dir=out,
                                  log_every=min(log_every, steps), ckpt_every=ckpt_every,
                                  progress=progress, resume=resume))
    task = build()  # after Trainer(): seeded
    write_json(out / "run.json", run)
    t0 = time.perf_counter()
    records = fit(trainer, task, data, out, retry, on_checkpoint=on_checkpoint)
    seconds = time.perf_counter() - t0
    return {"task": task, "records": records, "seconds": seconds,
            "step": trained_steps(out) or steps}
