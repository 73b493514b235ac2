"""`onestep train / distill / sample / eval`: teachers and one-step students for vector (tabular)
data, from the command line. Their arguments are in cli_args.py; `methods` (cli_info.py, which
lists what `--method` accepts) is re-exported here.

    onestep train   --data X.npy --out runs/teacher [--objective flow|edm]
    onestep distill --teacher runs/teacher --method instaflow --out runs/student
    onestep sample  --model runs/student --n 10000 --out samples.npy
    onestep eval    --samples samples.npy --data X.npy
    onestep methods [--method NAME]

Data are standardised per column for training (the mean and std are saved with the model and
undone by `sample`), so teachers and students work in data units from the outside. Every run
folder holds log.jsonl, checkpoints/ (exact `--resume`) and run.json (the resolved settings).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
import time
from pathlib import Path as FilePath

import numpy as np
import torch

from .cli_args import DistillArgs, EvalArgs, MethodsArgs, SampleArgs, TrainArgs
from .cli_info import methods

__all__ = [
    "TrainArgs", "DistillArgs", "SampleArgs", "EvalArgs", "MethodsArgs",
    "train", "distill", "sample", "eval_cmd", "methods", "needs_data", "parse_overrides",
]

OBJECTIVES = ("flow", "edm")
TEACHER_NFE = 32
"""NFE of `onestep sample` on a teacher when --nfe is 0."""


# -- shared helpers -----------------------------------------------------------------------------
def _user_errors(name: str):
    """Name the command `name` and set its torch threads (`runs.run_command` prints its
    ValueErrors and OSErrors as "onestep NAME: error: ..." with exit code 2)."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(args):
            torch.set_num_threads(max(1, getattr(args, "threads", 1)))
            return fn(args)

        run.__name__ = name
        return run

    return wrap


def _required(value: str, flag: str, what: str) -> str:
    if not value:
        raise ValueError(f"{flag} is required: {what}")
    return value


def _positive(**values) -> None:
    for flag, v in values.items():
        if v < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {v}")


def _load_data(path: str, flag: str):
    from .data import load_vectors

    p = FilePath(path)
    if p.is_dir() and (p / "model.json").exists():
        raise ValueError(f"{flag} {path} is a saved model folder, not a data file; draw samples "
                         f"from it with `onestep sample --model {path} --out samples.npy`")
    x = load_vectors(p)
    if x.shape[0] < 2:
        raise ValueError(f"{path}: {x.shape[0]} sample(s); need at least 2 rows")
    return x


def _fit_normalization(x) -> dict:
    mean, std = x.double().mean(0), x.double().std(0)
    std = torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))
    return {"mean": mean.tolist(), "std": std.tolist()}


def _normalize(x, norm: dict | None):
    if not norm:
        return x
    return ((x.double() - torch.tensor(norm["mean"])) / torch.tensor(norm["std"])).float()


def _denormalize(x, norm: dict | None):
    if not norm:
        return x
    return (x.double() * torch.tensor(norm["std"]) + torch.tensor(norm["mean"])).float()


def _model_dir(path: str, flag: str) -> FilePath:
    p = FilePath(path)
    if not p.exists():
        raise FileNotFoundError(f"{flag} {path}: no such folder")
    if not p.is_dir():
        raise ValueError(f"{flag} {path} is a file; expected a model folder written by "
                         "`onestep train` or `onestep distill`")
    return p


def _describe(info: dict) -> str:
    student = info.get("student") or {}
    if info.get("kind") == "student":
        return f"a student of {student.get('method')!r}"
    return f"a {info.get('kind')!r} model"


def _guard_out(out: FilePath, kind: str, *, resume: bool, overwrite: bool,
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
            raise ValueError(f"--out {out} already holds {_describe(info)}; choose another folder "
                             f"for the {kind}")
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


def _check_resume(out: FilePath, run: dict, resume: bool, kind: str) -> None:
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


def _fit(trainer, task, data, out: FilePath, retry: str) -> list[dict]:
    """`trainer.fit`, with a run that turns non-finite reported as a ValueError that names the
    step, the loss term and the newest (good) checkpoint that is kept."""
    from .runs import checkpoint_steps

    try:
        return trainer.fit(task, data)
    except FloatingPointError as e:
        steps = checkpoint_steps(out)
        kept = (f"the checkpoint of step {steps[-1]} in {out / 'checkpoints'} is kept"
                if steps else "no checkpoint had been written")
        raise ValueError(f"training turned non-finite ({e}); {kept}; start again with {retry} "
                         "and --overwrite") from e


def _check_finite_model(den, folder: str, dim, cond=None) -> None:
    """Refuse a model whose outputs are not finite (NaN or inf weights) before using it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, *dim, generator=g)
    with torch.no_grad():
        bad = [t for t in (0.1, 0.5, 0.9)
               if not torch.isfinite(den.x0(x, torch.full((64,), t))).all()]
    if bad:
        raise ValueError(f"the model in {folder} gives non-finite outputs (at t = "
                         f"{', '.join(map(str, bad))}); its weights hold NaN or inf")


def _write_json(file: FilePath, obj) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(file)


def _loss_summary(records: list[dict]) -> str:
    if not records:
        return ""
    first, last = records[0]["logs"], records[-1]["logs"]
    key = "loss" if "loss" in first else next((k for k in first if "loss" in k), None)
    if key is None or key not in last:
        return ""
    return f"; {key} {first[key]:.4g} -> {last[key]:.4g}"


def _trained_steps(out: FilePath) -> int | None:
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


def _nfe_overrides(method: str, nfe: int) -> dict:
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
_SCHEDULED = ("progressive", "ict", "reflow", "instaflow", "slimflow", "phased_dmd")
_DATA_METHODS = ("progressive", "cd", "ict", "segment_cd", "meanflow", "fdistill")


def needs_data(method: str, config) -> bool:
    """Whether `method` with `config` trains on real data (else it draws noise only)."""
    if method in _DATA_METHODS:
        return True
    if method == "dmd2":  # its GAN's discriminator sees real samples
        return config.gan_weight > 0 or config.disc_weight > 0
    if method == "msd":  # teacher score matching on real data first
        return config.tsm_steps > 0
    return False


def _resolve_config(method: str, teacher, overrides: dict, *, seed: int | None = None,
                    progress: bool | None = None):
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
        return toy_config(method, teacher, **{**auto, **overrides})
    except TypeError as e:
        raise ValueError(f"{method} config: {e}") from e


# -- commands -----------------------------------------------------------------------------------
@_user_errors("train")
def train(args: TrainArgs) -> dict:
    from .cli import _loss, _teacher
    from .io import save_model
    from .runs import clear_run_folder
    from .train import LossTask, TrainConfig, Trainer

    _required(args.data, "--data", "a .npy or .csv file of shape (N, D)")
    out = FilePath(_required(args.out, "--out", "the folder to write the teacher to"))
    if args.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {args.objective!r}; use 'flow' or 'edm'")
    _positive(steps=args.steps, batch_size=args.batch_size, hidden=args.hidden)
    if not args.lr > 0 or not 0 <= args.ema_decay < 1 or args.warmup < 0:
        raise ValueError("need --lr > 0, 0 <= --ema-decay < 1 and --warmup >= 0")
    x = _load_data(args.data, "--data")
    _guard_out(out, "teacher", resume=args.resume, overwrite=args.overwrite)
    norm = _fit_normalization(x) if args.normalize else None
    run = {k: v for k, v in dataclasses.asdict(args).items() if k != "out"}
    run["data"] = FilePath(args.data).name
    _check_resume(out, run, args.resume, "teacher")
    clear_run_folder(out, overwrite=args.overwrite)
    trainer = Trainer(TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                                  out_dir=out, log_every=min(100, args.steps),
                                  ckpt_every=args.ckpt_every, progress=args.progress,
                                  resume=args.resume))
    den = _teacher(args, x.shape[1])  # after Trainer(): seeded
    # the warm-up is the run's whatever --steps is (a run of fewer steps ends inside it), so
    # resuming to a larger --steps equals a run planned for that many
    task = LossTask(den, _loss(args), lr=args.lr, warmup=args.warmup, total_steps=None,
                    ema_decay=args.ema_decay or None)
    _write_json(out / "run.json", run)
    t0 = time.perf_counter()
    records = _fit(trainer, task, _normalize(x, norm), out, "a lower --lr")
    seconds = time.perf_counter() - t0
    if task.ema is not None:
        task.ema.copy_to(den)
    den.eval()
    steps = _trained_steps(out) or args.steps
    extra = {"objective": args.objective, "data": run["data"], "n": int(x.shape[0]),
             "dim": int(x.shape[1]), "steps": steps, "normalization": norm}
    save_model(out, den, kind="teacher", extra=extra)
    print(f"teacher ({args.objective}, MLP {args.hidden}x3) trained to step {steps} on "
          f"{x.shape[0]} x {x.shape[1]} samples in {seconds:.1f} s{_loss_summary(records)}; "
          f"saved to {out}")
    return {"out": str(out), "seconds": seconds, "records": records, "steps": steps}


def _load_teacher(path: str):
    from .io import CheckpointError, load_model, read_model_info

    folder = _model_dir(_required(path, "--teacher", "a teacher folder written by `onestep train`"),
                        "--teacher")
    info = read_model_info(folder)
    if info["kind"] != "teacher":
        raise CheckpointError(f"--teacher {path} holds {_describe(info)}, not a teacher; distill "
                              "a teacher written by `onestep train`")
    return load_model(folder, kind="teacher")


@_user_errors("distill")
def distill(args: DistillArgs) -> dict:
    from .cli_search import _sample_shape
    from .distill import get_method, toy_steps, with_steps
    from .io import save_student
    from .runs import clear_run_folder
    from .train import TrainConfig, Trainer

    config_class, distiller_class, _ = get_method(args.method)
    out = FilePath(_required(args.out, "--out", "the folder to write the student to"))
    teacher, tinfo = _load_teacher(args.teacher)
    _guard_out(out, "student", resume=args.resume, overwrite=args.overwrite,
               protect=FilePath(args.teacher))
    if args.method == "meanflow" and tinfo["path"].get("name") != "rectified_flow":
        raise ValueError("meanflow is written for the rectified-flow path; distill a teacher "
                         "trained with --objective flow")
    _positive(batch_size=args.batch_size)
    if args.steps < 0:
        raise ValueError(f"--steps must be >= 0 (0: the method's default), got {args.steps}")
    overrides = {**_nfe_overrides(args.method, args.nfe), **parse_overrides(args.set, config_class)}
    config = _resolve_config(args.method, teacher, overrides, seed=args.seed,
                             progress=args.progress)
    planned = toy_steps(args.method, config)
    steps = args.steps or planned
    if "lr_decay_steps" not in overrides:  # a decay of the learning rate ends with the run
        config = with_steps(config, steps)
    if args.dry_run:
        print(json.dumps({"args": dataclasses.asdict(args), "steps": steps,
                          "config": dataclasses.asdict(config)}, indent=1, default=str))
        return {"config": config, "steps": steps}
    if steps < planned and args.method in _SCHEDULED:
        print(f"note: {args.method}'s config schedules {planned} steps (phases, rounds or a "
              f"curriculum); --steps {steps} stops inside that schedule", file=sys.stderr)
    dim = _sample_shape(tinfo, ())
    _check_finite_model(teacher, args.teacher, dim)
    norm = tinfo.get("extra", {}).get("normalization")
    if args.data:
        x = _load_data(args.data, "--data")
        if tuple(x.shape[1:]) != tuple(dim):
            raise ValueError(f"--data {args.data} has {x.shape[1]} columns; the teacher was "
                             f"trained on {dim[0]}")
        data = _normalize(x, norm)
    elif needs_data(args.method, config):
        raise ValueError(f"{args.method} trains on real data: pass --data with the teacher's "
                         "training data (.npy/.csv); data-free methods are marked in "
                         "`onestep methods`")
    else:
        def data(n, g):  # data-free: the batch only carries the shape
            return torch.randn(n, *dim, generator=g)

    run = {"teacher": FilePath(args.teacher).name, "method": args.method, "nfe": args.nfe,
           "set": args.set, "data": FilePath(args.data).name if args.data else "",
           "batch_size": args.batch_size, "seed": args.seed, "steps": steps,
           "config": json.loads(json.dumps(dataclasses.asdict(config)))}
    _check_resume(out, run, args.resume, distiller_class.kind)
    trainer = Trainer(TrainConfig(steps=steps, batch_size=args.batch_size, seed=args.seed,
                                  out_dir=out, log_every=min(100, steps),
                                  ckpt_every=args.ckpt_every, progress=args.progress,
                                  resume=args.resume))
    clear_run_folder(out, overwrite=args.overwrite)
    distiller = distiller_class(teacher, config)  # after Trainer(): seeded
    _write_json(out / "run.json", run)
    print(f"distilling {args.teacher} with {args.method} for {steps} steps "
          f"({'on data' if args.data else 'data-free'}); config: "
          f"{json.dumps(run['config'])}", file=sys.stderr)
    t0 = time.perf_counter()
    records = _fit(trainer, distiller, data, out, "a lower learning rate (--set lr=...)")
    seconds = time.perf_counter() - t0
    done = _trained_steps(out) or steps
    extra = {"teacher": {k: tinfo[k] for k in tinfo if k != "student"}, "normalization": norm,
             "steps": done, "data": run["data"]}
    entry = save_student(out, distiller, extra=extra)
    print(f"{args.method} student ({entry['nfe']}-step) trained to step {done} in {seconds:.1f} s"
          f"{_loss_summary(records)}; saved to {out}")
    return {"out": str(out), "seconds": seconds, "records": records, "student": entry}


@_user_errors("sample")
def sample(args: SampleArgs) -> dict:
    from tqdm.auto import tqdm

    from .cli_search import _sample_shape
    from .io import load_model, load_student, read_model_info
    from .sampling import sample as solve

    folder = _model_dir(_required(args.model, "--model", "a folder written by `onestep train` or "
                                  "`onestep distill`"), "--model")
    out = FilePath(args.out)
    if out.suffix.lower() not in (".npy", ".csv"):
        raise ValueError(f"--out {args.out}: use a .npy or .csv file name")
    _positive(n=args.n, batch=args.batch)
    if args.nfe < 0:
        raise ValueError(f"--nfe must be >= 0 (0: the model's default), got {args.nfe}")
    info = read_model_info(folder)
    shape = _sample_shape(info, ())
    if info["kind"] == "teacher":
        den, info = load_model(folder, kind="teacher")
        nfe, solver = args.nfe or TEACHER_NFE, args.solver or "dpm++2m"
        what = f"teacher, {solver} with {nfe} NFE"

        def draw(z, g):
            return solve(den, z, nfe=nfe, solver=solver, schedule=args.schedule)
    elif info["kind"] == "student":
        if args.solver:
            raise ValueError("--solver applies to teachers; a student samples with its own "
                             "generator (only --nfe)")
        gen, info = load_student(folder)
        nfe = args.nfe or info["student"]["nfe"]
        what = f"{info['student']['method']} student, {nfe} NFE"

        def draw(z, g):
            return gen.generate(z, nfe=nfe, generator=g)
    else:
        raise ValueError(f"--model {args.model} holds {_describe(info)}; expected a teacher or a "
                         "student")
    g = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.n, *shape, generator=g)
    chunks = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for z in tqdm(noise.split(args.batch), desc="sample", disable=not args.progress,
                      leave=False):
            chunks.append(draw(z, g))
    seconds = time.perf_counter() - t0
    x = _denormalize(torch.cat(chunks).reshape(args.n, -1), info.get("extra", {}).get(
        "normalization"))
    bad = int((~torch.isfinite(x)).any(1).sum())
    if bad:
        raise ValueError(f"{bad} of {args.n} samples from {args.model} ({what}) are not finite "
                         f"(NaN or inf); nothing was written to {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    arr = x.numpy().astype(np.float32)
    if out.suffix.lower() == ".npy":
        np.save(out, arr)
    else:
        np.savetxt(out, arr, delimiter=",", fmt="%.7g")
    print(f"wrote {args.n} x {arr.shape[1]} samples ({what}) to {out} in {seconds:.2f} s "
          f"({1e6 * seconds / args.n:.1f} us/sample)")
    return {"out": str(out), "nfe": nfe, "seconds": seconds, "non_finite": bad}


@_user_errors("eval")
def eval_cmd(args: EvalArgs) -> dict:
    from .metrics import energy_distance, mmd, sliced_wasserstein

    x = _load_data(_required(args.samples, "--samples", "a .npy or .csv file of samples"),
                   "--samples")
    y = _load_data(_required(args.data, "--data", "a .npy or .csv file of reference data"),
                   "--data")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"--samples has {x.shape[1]} columns but --data has {y.shape[1]}")
    _positive(max_points=args.max_points, projections=args.projections)
    g = torch.Generator().manual_seed(args.seed)

    def subset(a, k):
        return a if len(a) <= k else a[torch.randperm(len(a), generator=g)[:k]]

    xs, ys = subset(x, 10 * args.max_points), subset(y, 10 * args.max_points)
    xm, ym = subset(x, args.max_points), subset(y, args.max_points)
    result = {
        "n_samples": int(x.shape[0]), "n_data": int(y.shape[0]), "dim": int(x.shape[1]),
        "sliced_w2": sliced_wasserstein(xs, ys, n_projections=args.projections, seed=args.seed),
        "mmd": mmd(xm, ym), "energy_distance": energy_distance(xm, ym),
    }
    print(f"samples: {result['n_samples']} x {result['dim']} ({args.samples}); "
          f"data: {result['n_data']} x {result['dim']} ({args.data})")
    print(f"sliced W2        {result['sliced_w2']:.5f}")
    print(f"MMD^2            {result['mmd']:.5f}")
    print(f"energy distance  {result['energy_distance']:.5f}")
    if args.json:
        _write_json(FilePath(args.json), result)
        print(f"wrote {args.json}")
    return result
