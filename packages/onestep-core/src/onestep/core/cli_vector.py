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
import sys
import time
from pathlib import Path as FilePath

import numpy as np
import torch

from .cli_args import DistillArgs, EvalArgs, MethodsArgs, SampleArgs, TrainArgs
from .cli_info import methods
from .runner import check_finite_model as _check_finite_model
from .runner import describe_model as _describe
from .runner import loss_summary as _loss_summary
from .runner import needs_data, parse_overrides
from .runner import write_json as _write_json

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


# -- commands -----------------------------------------------------------------------------------
@_user_errors("train")
def train(args: TrainArgs) -> dict:
    from .cli import _loss, _teacher
    from .io import save_model
    from .runner import run_task
    from .train import LossTask

    _required(args.data, "--data", "a .npy or .csv file of shape (N, D)")
    out = FilePath(_required(args.out, "--out", "the folder to write the teacher to"))
    if args.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {args.objective!r}; use 'flow' or 'edm'")
    _positive(steps=args.steps, batch_size=args.batch_size, hidden=args.hidden)
    if not args.lr > 0 or not 0 <= args.ema_decay < 1 or args.warmup < 0:
        raise ValueError("need --lr > 0, 0 <= --ema-decay < 1 and --warmup >= 0")
    x = _load_data(args.data, "--data")
    norm = _fit_normalization(x) if args.normalize else None
    run = {k: v for k, v in dataclasses.asdict(args).items() if k != "out"}
    run["data"] = FilePath(args.data).name

    def build():
        # the warm-up is the run's whatever --steps is (a run of fewer steps ends inside it), so
        # resuming to a larger --steps equals a run planned for that many
        return LossTask(_teacher(args, x.shape[1]), _loss(args), lr=args.lr, warmup=args.warmup,
                        total_steps=None, ema_decay=args.ema_decay or None)

    result = run_task(out, build, _normalize(x, norm), kind="teacher", run=run,
                      steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                      resume=args.resume, overwrite=args.overwrite, ckpt_every=args.ckpt_every,
                      progress=args.progress, retry="a lower --lr")
    task, steps = result["task"], result["step"]
    den = task.model
    if task.ema is not None:
        task.ema.copy_to(den)
    den.eval()
    extra = {"objective": args.objective, "data": run["data"], "n": int(x.shape[0]),
             "dim": int(x.shape[1]), "steps": steps, "normalization": norm}
    save_model(out, den, kind="teacher", extra=extra)
    print(f"teacher ({args.objective}, MLP {args.hidden}x3) trained to step {steps} on "
          f"{x.shape[0]} x {x.shape[1]} samples in {result['seconds']:.1f} s"
          f"{_loss_summary(result['records'])}; saved to {out}")
    return {"out": str(out), "seconds": result["seconds"], "records": result["records"],
            "steps": steps}


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
    from .distill import get_method
    from .io import save_student
    from .runner import check_resume, guard_out, resolve_method, run_task

    distiller_class = get_method(args.method)[1]
    out = FilePath(_required(args.out, "--out", "the folder to write the student to"))
    teacher, tinfo = _load_teacher(args.teacher)
    guard_out(out, "student", resume=args.resume, overwrite=args.overwrite,
              protect=FilePath(args.teacher))  # early: before the config is resolved
    if args.method == "meanflow" and tinfo["path"].get("name") != "rectified_flow":
        raise ValueError("meanflow is written for the rectified-flow path; distill a teacher "
                         "trained with --objective flow")
    _positive(batch_size=args.batch_size)
    config, steps = resolve_method(args.method, teacher, overrides=args.set, nfe=args.nfe,
                                   steps=args.steps, seed=args.seed, progress=args.progress)
    if args.dry_run:
        print(json.dumps({"args": dataclasses.asdict(args), "steps": steps,
                          "config": dataclasses.asdict(config)}, indent=1, default=str))
        return {"config": config, "steps": steps}
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
    check_resume(out, run, args.resume, distiller_class.kind)  # before saying what it will do
    print(f"distilling {args.teacher} with {args.method} for {steps} steps "
          f"({'on data' if args.data else 'data-free'}); config: "
          f"{json.dumps(run['config'])}", file=sys.stderr)
    result = run_task(out, lambda: distiller_class(teacher, config), data,
                      kind=distiller_class.kind, model_kind="student", run=run, steps=steps,
                      batch_size=args.batch_size, seed=args.seed, resume=args.resume,
                      overwrite=args.overwrite, ckpt_every=args.ckpt_every,
                      progress=args.progress, retry="a lower learning rate (--set lr=...)",
                      protect=args.teacher)
    done = result["step"]
    extra = {"teacher": {k: tinfo[k] for k in tinfo if k != "student"}, "normalization": norm,
             "steps": done, "data": run["data"]}
    entry = save_student(out, result["task"], extra=extra)
    print(f"{args.method} student ({entry['nfe']}-step) trained to step {done} in "
          f"{result['seconds']:.1f} s{_loss_summary(result['records'])}; saved to {out}")
    return {"out": str(out), "seconds": result["seconds"], "records": result["records"],
            "student": entry}


def _sampler_label(path, nfe: int, solver: str | None, schedule: str | None) -> str:
    """"SOLVER SCHEDULE" as `sample` resolves them (the default sampler when neither is given)."""
    from .sampling import default_sampler

    if solver is None and schedule is None:
        return "default " + " ".join(default_sampler(path, nfe))
    return f"{solver or default_sampler(path, nfe)[0]} {schedule or 'logsnr'}"


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
        nfe, solver, schedule = args.nfe or TEACHER_NFE, args.solver or None, args.schedule or None
        what = f"teacher, {_sampler_label(den.path, nfe, solver, schedule)} with {nfe} NFE"

        def draw(z, g):
            return solve(den, z, nfe=nfe, solver=solver, schedule=schedule)
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
