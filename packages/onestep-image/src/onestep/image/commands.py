"""The verbs of `onestep-image`, as Python functions of the same names (call them from a notebook
with keyword arguments; the command line passes its flags): train, sample, export, distill,
train_features, evaluate, methods and demo. Each is built on core's run-a-training routine
(`onestep.core.runner`), so run folders, resume and errors behave as in `onestep`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from onestep.core.runner import (
    check_finite_model,
    check_resume,
    describe_model,
    guard_out,
    loss_summary,
    needs_data,
    resolve_method,
    run_task,
    write_json,
)

from .cli import (
    DemoArgs,
    DistillArgs,
    EvalArgs,
    ExportArgs,
    MethodsArgs,
    SampleArgs,
    TrainArgs,
    TrainFeaturesArgs,
)

__all__ = ["demo", "distill", "evaluate", "export", "methods", "sample", "search_schedule",
           "train", "train_features"]

TEACHER_NFE = 35
"""NFE of `sample` on a teacher when --nfe is 0 (Heun on Karras steps, EDM's 18-step recipe)."""


def _args(cls, args, kwargs):
    """The Args dataclass from the command line, or from a notebook's keyword arguments."""
    if args is not None and kwargs:
        raise TypeError("pass the Args dataclass or keyword arguments, not both")
    return args if args is not None else cls(**kwargs)


def _threads(args) -> None:
    torch.set_num_threads(max(1, getattr(args, "threads", 1)))


def _required(value: str, flag: str, what: str) -> str:
    if not value:
        raise ValueError(f"{flag} is required: {what}")
    return value


def _load(data: str, root: str = "", size: int = 0, split: str | None = None):
    from .data import load_images

    return load_images(data, root=root or None, size=size or None, split=split)


def _model_folder(path: str, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{flag} {path}: no such folder")
    if not p.is_dir():
        raise ValueError(f"{flag} {path} is a file; expected a model folder")
    return p


def _image_shape(info: dict) -> tuple[int, ...]:
    shape = (info.get("extra") or {}).get("image_shape")
    if shape is None:
        raise ValueError(f"model {info.get('kind')!r} has no image_shape in model.json; was it "
                         "written by onestep-image?")
    return tuple(int(s) for s in shape)


# -- train ------------------------------------------------------------------------------------
def train(args: TrainArgs | None = None, **kwargs) -> dict:
    """Train an image teacher into `out` (TrainArgs lists the settings)."""
    from onestep.core.io import save_model
    from onestep.core.train import LossTask

    from .grid import checkpoint_grid
    from .models import ARCHS, OBJECTIVES, PRESETS, make_teacher, teacher_loss

    args = _args(TrainArgs, args, kwargs)
    _threads(args)
    out = Path(_required(args.out, "--out", "the folder to write the teacher to"))
    if args.arch not in ARCHS or args.objective not in OBJECTIVES:
        raise ValueError(f"--arch must be one of {list(ARCHS)} and --objective one of "
                         f"{list(OBJECTIVES)}; got {args.arch!r}, {args.objective!r}")
    if args.size not in PRESETS[args.arch]:
        raise ValueError(f"unknown --size {args.size!r}; use one of {list(PRESETS[args.arch])}")
    if min(args.steps, args.batch_size) < 1 or not args.lr > 0 or args.warmup < 0 \
            or not 0 <= args.ema_decay < 1 or args.grid_nfe < 0:
        raise ValueError("need --steps, --batch-size >= 1, --lr > 0, --warmup >= 0, "
                         "0 <= --ema-decay < 1 and --grid-nfe >= 0")
    data = _load(args.data, args.data_root, args.image_size)
    k = data.num_classes if (args.conditional and data.labels is not None) else 0
    run = {k_: v for k_, v in dataclasses.asdict(args).items() if k_ != "out"}

    def build():
        den = make_teacher(data.shape, num_classes=k, arch=args.arch, objective=args.objective,
                           size=args.size)
        return LossTask(den, teacher_loss(args.objective, label_dropout=args.label_dropout),
                        lr=args.lr, warmup=args.warmup, total_steps=None,
                        ema_decay=args.ema_decay or None)

    holder = {}

    def grid(step: int) -> None:  # the EMA weights, on fixed noise, at each checkpoint
        if args.grid_nfe:
            task = holder["task"]
            den = task.ema.module if task.ema is not None else task.model
            checkpoint_grid(den, out / "grids" / f"step_{step:08d}.png", nfe=args.grid_nfe,
                            image_shape=data.shape, title=f"step {step}",
                            class_names=data.class_names or None)

    def build_and_keep():
        holder["task"] = build()
        return holder["task"]

    batches = (data.images, data.labels) if k else data.images
    result = run_task(out, build_and_keep, batches, kind="teacher", run=run, steps=args.steps,
                      batch_size=args.batch_size, seed=args.seed, resume=args.resume,
                      overwrite=args.overwrite, ckpt_every=args.ckpt_every,
                      progress=args.progress, retry="a lower --lr", on_checkpoint=grid)
    task = result["task"]
    den = task.model
    if task.ema is not None:
        task.ema.copy_to(den)
    den.eval()
    extra = {"data": data.name, "image_shape": list(data.shape), "num_classes": k,
             "class_names": list(data.class_names), "arch": args.arch,
             "objective": args.objective, "size": args.size, "steps": result["step"],
             "data_spec": {"data": args.data, "data_root": args.data_root,
                           "image_size": args.image_size}}
    save_model(out, den, kind="teacher", extra=extra)
    print(f"teacher ({args.arch} {args.size}, {args.objective}, {k} classes) trained to step "
          f"{result['step']} on {len(data)} images {data.shape} in {result['seconds']:.1f} s"
          f"{loss_summary(result['records'])}; saved to {out}")
    return {"out": str(out), "seconds": result["seconds"], "records": result["records"],
            "steps": result["step"]}


# -- sample -----------------------------------------------------------------------------------
def _labels(spec: str, n: int, num_classes: int) -> torch.Tensor | None:
    if not num_classes:
        return None
    spec = spec.strip().lower()
    if spec in ("", "balanced"):
        return torch.arange(n) % num_classes
    if spec == "none":
        return torch.full((n,), num_classes)  # the null class: unconditional samples
    try:
        values = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--labels {spec!r}: use 'balanced', 'none' or comma-separated class "
                         "indices") from None
    if not values or min(values) < 0 or max(values) >= num_classes:
        raise ValueError(f"--labels {spec!r}: class indices must be in 0..{num_classes - 1}")
    return torch.tensor(values).repeat((n + len(values) - 1) // len(values))[:n]


def _schedule(spec: str):
    """A schedule name, or a Schedule loaded from a search-schedule JSON file."""
    if spec.endswith(".json") or Path(spec).is_file():
        from onestep.core.schedules import Schedule

        if not Path(spec).is_file():
            raise FileNotFoundError(f"--schedule {spec}: no such file")
        try:
            return Schedule.load(spec)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--schedule {spec}: not a schedule file ({e})") from e
    return spec


def is_diffusers_folder(path: Path) -> bool:
    """Whether `path` holds a diffusers pipeline or UNet2DModel (and no onestep model)."""
    if (path / "model.json").exists():
        return False
    if (path / "model_index.json").exists() or (path / "unet" / "config.json").exists():
        return True
    try:
        return json.loads((path / "config.json").read_text()).get("_class_name") == "UNet2DModel"
    except (OSError, ValueError, AttributeError):
        return False


def load_diffusers_teacher(path: Path):
    """(Denoiser, info) for a diffusers folder, with the model.json-like info the image verbs
    read: the image shape and classes from the UNet's config."""
    from .diffusers import from_diffusers
    from .models import teacher_num_classes

    den = from_diffusers(path)
    c = den.model.unet.config
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    k = teacher_num_classes(den)
    info = {"kind": "teacher", "source": {"diffusers": str(path.resolve())},
            "extra": {"image_shape": [c.in_channels, size, size], "num_classes": k,
                      "class_names": [str(i) for i in range(k)]}}
    return den.eval(), info


def load_teacher(folder: str, flag: str = "--teacher"):
    """(Denoiser, info) from a teacher folder written by `onestep-image train` or a local
    diffusers folder (`from_diffusers`)."""
    from onestep.core.io import load_model, read_model_info

    path = _model_folder(folder, flag)
    if is_diffusers_folder(path):
        return load_diffusers_teacher(path)
    info = read_model_info(path)
    if info["kind"] != "teacher":
        raise ValueError(f"{flag} {folder} holds {describe_model(info)}, not a teacher")
    return load_model(path, kind="teacher")


def load_any(folder: str, flag: str = "--model"):
    """(kind, model, info): ("teacher", Denoiser, info) or ("student", Generator, info); a
    diffusers folder loads as a teacher."""
    from onestep.core.io import load_model, load_student, read_model_info

    path = _model_folder(_required(folder, flag, "a folder written by onestep-image"), flag)
    if is_diffusers_folder(path):
        return ("teacher", *load_diffusers_teacher(path))
    info = read_model_info(path)
    if info["kind"] == "teacher":
        den, info = load_model(path, kind="teacher")
        return "teacher", den.eval(), info
    if info["kind"] == "student":
        gen, info = load_student(path)
        return "student", gen.eval(), info
    raise ValueError(f"{flag} {folder} holds {describe_model(info)}; expected a teacher or a "
                     "student")


def draw(kind: str, model, info: dict, n: int, *, nfe: int = 0, solver: str = "",
         schedule="", guidance: float = 1.0, labels: torch.Tensor | None = None, seed: int = 0,
         batch: int = 256, progress: bool = False,
         compile: bool = False) -> tuple[torch.Tensor, float, int]:
    """(images (n, C, H, W), seconds, nfe) from a teacher or student on seeded noise.
    compile: torch.compile the model's networks (`compile_networks`), compiled on the first batch
    before the clock starts (its time is printed on stderr)."""
    from tqdm.auto import tqdm

    from onestep.core.sampling import sample as solve

    shape = _image_shape(info)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, *shape, generator=g)
    if compile:
        from onestep.core.export import compile_networks

        compile_networks(model)
    if kind == "teacher":
        from onestep.core.schedules import Schedule

        searched = isinstance(schedule, Schedule)  # runs on the solver it was made for
        nfe = nfe or (int(schedule.meta.get("nfe", 0)) if searched else 0) or TEACHER_NFE
        den = model.with_guidance(guidance) if guidance != 1.0 else model

        def one(z, c, gen=None):
            return solve(den, z, nfe=nfe, solver=solver or (None if searched else "heun"),
                         schedule=schedule or "karras", cond=c)
    else:
        from onestep.core.distill.guidance import is_guidance_conditioned

        w_input = is_guidance_conditioned(model)  # a student for every guidance scale w
        if solver or schedule or (guidance != 1.0 and not w_input):
            raise ValueError("--solver, --schedule and --guidance apply to teachers and "
                             "guidance-conditioned students; this student samples with its own "
                             "generator (only --nfe)")
        if w_input:
            _note_guidance_range(info, guidance)
        nfe = nfe or info["student"]["nfe"]

        def one(z, c, gen=g):
            if w_input and c is not None:
                from onestep.core.nn.guidance import with_guidance_cond

                c = with_guidance_cond(c, guidance, len(c))
            return model.generate(z, c, nfe=nfe, generator=gen)
    if compile:  # compile on the first batch (its own random stream: the samples are unchanged)
        t0 = time.perf_counter()
        with torch.no_grad():
            one(noise[:batch], None if labels is None else labels[:batch], torch.Generator())
        print(f"torch.compile: compiled in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    out = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in tqdm(range(0, n, batch), desc="sample", disable=not progress, leave=False):
            c = None if labels is None else labels[i:i + batch]
            out.append(one(noise[i:i + batch], c))
    return torch.cat(out), time.perf_counter() - t0, nfe


def _note_guidance_range(info: dict, w: float) -> None:
    """A line on stderr when a guidance-conditioned student is asked for a w it never saw."""
    lo, hi = (info["student"].get("config") or {}).get("guidance_range") or (w, w)
    if not lo <= w <= hi:
        print(f"note: --guidance {w} is outside the range [{lo}, {hi}] this student was "
              "distilled for; it extrapolates", file=sys.stderr)


def sample(args: SampleArgs | None = None, **kwargs) -> dict:
    """Draw images from a teacher or student into a .npz file or a .png grid."""
    from .grid import save_grid

    args = _args(SampleArgs, args, kwargs)
    _threads(args)
    out = Path(args.out)
    if out.suffix.lower() not in (".npz", ".png"):
        raise ValueError(f"--out {args.out}: use a .npz (images and labels) or .png (a grid) "
                         "file name")
    if min(args.n, args.batch) < 1 or args.nfe < 0:
        raise ValueError("need --n >= 1, --batch >= 1 and --nfe >= 0")
    kind, model, info = load_any(args.model)
    k = int((info.get("extra") or {}).get("num_classes") or 0)
    labels = _labels(args.labels, args.n, k)
    x, seconds, nfe = draw(kind, model, info, args.n, nfe=args.nfe, solver=args.solver,
                           schedule=_schedule(args.schedule) if args.schedule else "",
                           guidance=args.guidance, labels=labels, seed=args.seed,
                           batch=args.batch, progress=args.progress, compile=args.compile)
    bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
    if bad:
        raise ValueError(f"{bad} of {args.n} images from {args.model} are not finite (NaN or "
                         f"inf); nothing was written to {out}")
    x = x.clamp(-1, 1)  # images, as every image pipeline writes them (diffusers clamps too)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        nrow = k if 2 <= k <= 16 and labels is not None and args.labels == "balanced" else None
        save_grid(x, out, nrow=nrow)
    else:
        tmp = out.with_name(f".{out.name}.tmp.npz")
        arrays = {"images": x.numpy().astype(np.float32)}
        if labels is not None:
            arrays["labels"] = labels.numpy()
        np.savez(tmp, **arrays)
        tmp.replace(out)
    what = f"{kind}" + (f" ({info['student']['method']})" if kind == "student" else "")
    print(f"wrote {args.n} images {tuple(x.shape[1:])} from the {what} at {nfe} NFE to {out} in "
          f"{seconds:.2f} s ({seconds / args.n * 1e3:.2f} ms/image)")
    return {"out": str(out), "nfe": nfe, "seconds": seconds, "images": x, "labels": labels}


# -- export -----------------------------------------------------------------------------------
def export(args: ExportArgs | None = None, **kwargs) -> dict:
    """Export a student as an ONNX or TorchScript file (core's `export_student`)."""
    from onestep.core.export import FORMATS, export_student
    from onestep.core.io import read_model_info

    args = _args(ExportArgs, args, kwargs)
    _threads(args)
    if args.format not in FORMATS:
        raise ValueError(f"unknown --format {args.format!r}; use one of {list(FORMATS)}")
    if args.nfe < 0:
        raise ValueError(f"--nfe must be 0 (the student's own) or more, got {args.nfe}")
    out = Path(_required(args.out, "--out", "the file to write, e.g. student.onnx"))
    folder = _model_folder(_required(args.model, "--model", "a student folder written by "
                                     "`onestep-image distill`"), "--model")
    info = read_model_info(folder)
    if info["kind"] != "student":
        raise ValueError(f"--model {args.model} holds {describe_model(info)}, not a student; "
                         "export a student written by `onestep-image distill`")
    if out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; name the file to write")
    t0 = time.perf_counter()
    meta = export_student(folder, out, format=args.format, nfe=args.nfe)
    print(f"wrote the {meta['method']} student at {meta['nfe']} NFE as {args.format} to {out} "
          f"({out.stat().st_size / 1e6:.2f} MB, inputs {', '.join(meta['inputs'])}; equal to "
          f"torch within 1e-4) in {time.perf_counter() - t0:.1f} s")
    return {"out": str(out), **meta}


# -- distill ----------------------------------------------------------------------------------
def _teacher_data(tinfo: dict, data: str, root: str):
    spec = (tinfo.get("extra") or {}).get("data_spec") or {}
    return _load(data or spec.get("data", "digits"), root or spec.get("data_root", ""),
                 spec.get("image_size", 0) if not data else 0)


def distill(args: DistillArgs | None = None, **kwargs) -> dict:
    """Distill an image teacher into a one- or few-step student in `out`."""
    from onestep.core.distill import get_method
    from onestep.core.io import save_student

    from .defaults import image_defaults
    from .models import teacher_num_classes

    args = _args(DistillArgs, args, kwargs)
    _threads(args)
    distiller_class = get_method(args.method)[1]
    out = Path(_required(args.out, "--out", "the folder to write the student to"))
    folder = _model_folder(_required(args.teacher, "--teacher", "a teacher folder written by "
                                     "`onestep-image train`, or a diffusers folder"), "--teacher")
    teacher, tinfo = load_teacher(args.teacher)
    teacher.eval().requires_grad_(False)
    guard_out(out, "student", resume=args.resume, overwrite=args.overwrite, protect=folder)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    config, steps = resolve_method(args.method, teacher, overrides=args.set, nfe=args.nfe,
                                   steps=args.steps, seed=args.seed, progress=args.progress,
                                   defaults=image_defaults)
    if args.dry_run:
        print(json.dumps({"args": dataclasses.asdict(args), "steps": steps,
                          "config": dataclasses.asdict(config)}, indent=1, default=str))
        return {"config": config, "steps": steps}
    shape = _image_shape(tinfo)
    k = teacher_num_classes(teacher)
    check_finite_model(teacher, args.teacher, shape,
                       cond=torch.arange(64) % k if k else None)
    if args.data or needs_data(args.method, config):
        images = _teacher_data(tinfo, args.data, args.data_root)
        if tuple(images.shape) != shape:
            raise ValueError(f"the data {images.name!r} has images {images.shape}; the teacher "
                             f"makes {shape}")
        batches = (images.images, images.labels) if k and images.labels is not None \
            else images.images
        data_name = images.name
    else:
        def batches(n, g):  # data-free: noise (the batch's shape) and class labels
            x = torch.randn(n, *shape, generator=g)
            return (x, torch.randint(k, (n,), generator=g)) if k else x
        data_name = ""
    run = {"teacher": str(folder.resolve()), "method": args.method, "nfe": args.nfe,
           "set": args.set, "data": data_name, "batch_size": args.batch_size,
           "seed": args.seed, "steps": steps,
           "config": json.loads(json.dumps(dataclasses.asdict(config), default=str))}
    check_resume(out, run, args.resume, distiller_class.kind)
    print(f"distilling {args.teacher} with {args.method} for {steps} steps "
          f"({'on ' + data_name if data_name else 'data-free'})", file=sys.stderr)
    result = run_task(out, lambda: distiller_class(teacher, config), batches,
                      kind=distiller_class.kind, model_kind="student", run=run, steps=steps,
                      batch_size=args.batch_size, seed=args.seed, resume=args.resume,
                      overwrite=args.overwrite, ckpt_every=args.ckpt_every,
                      progress=args.progress, retry="a lower learning rate (--set lr=...)",
                      protect=folder)
    textra = tinfo.get("extra") or {}
    extra = {"teacher": {k_: tinfo[k_] for k_ in tinfo if k_ != "student"}, "steps": result["step"],
             "data": data_name, "image_shape": list(shape), "num_classes": k,
             "class_names": textra.get("class_names", [])}
    # a LoRA student refers to its onestep teacher folder (a diffusers one is copied beside it)
    own_teacher = None if is_diffusers_folder(folder) else folder
    entry = save_student(out, result["task"], extra=extra, teacher_folder=own_teacher)
    print(f"{args.method} student ({entry['nfe']}-step) trained to step {result['step']} in "
          f"{result['seconds']:.1f} s{loss_summary(result['records'])}; saved to {out}")
    return {"out": str(out), "seconds": result["seconds"], "records": result["records"],
            "student": entry}


# -- features and evaluation ------------------------------------------------------------------
def _search_model(folder: str):
    """(teacher, image shape, cond_for) for core's search-schedule: an onestep-image teacher or
    a diffusers folder; a class-conditional teacher is searched on class-balanced labels."""
    den, info = load_teacher(folder, "--model")
    k = int((info.get("extra") or {}).get("num_classes") or 0)
    return den, _image_shape(info), (lambda n: torch.arange(n) % k) if k else (lambda n: None)


def search_schedule(args=None, **kwargs) -> dict:
    """core's `search-schedule` on an image teacher (SearchArgs lists the settings)."""
    from onestep.core.cli_search import SearchArgs, search_schedule_cmd

    return search_schedule_cmd(_args(SearchArgs, args, kwargs), load=_search_model)


def train_features(args: TrainFeaturesArgs | None = None, **kwargs) -> dict:
    """Train the feature classifier that `evaluate` measures in."""
    from onestep.core.runs import check_run_folder, clear_run_folder

    from .features import load_features, save_features
    from .features import train_features as fit

    args = _args(TrainFeaturesArgs, args, kwargs)
    _threads(args)
    out = Path(_required(args.out, "--out", "the folder to write the feature net to"))
    data = _load(args.data, args.data_root, args.image_size)
    check_run_folder(out, overwrite=args.overwrite, can_resume=False)
    clear_run_folder(out, overwrite=args.overwrite)
    fit(data, out, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
        progress=args.progress)
    net, info = load_features(out)  # record how to load the data again, for `evaluate`
    info["data_spec"] = {"data": args.data, "data_root": args.data_root,
                         "image_size": args.image_size}
    save_features(out, net, info)
    print(f"feature net {info['fd_label']}: test accuracy {info['test_accuracy']:.4f} on "
          f"{info['test_size']} held-out images; saved to {out}")
    return info


def _reference(finfo: dict, data: str, root: str):
    """The real images `evaluate` compares against: the feature net's held-out split of its data
    set (or --data), and its training part for the noise floor."""
    split = finfo.get("split") or {}
    spec = finfo.get("data_spec") or {}
    images = _load(data or spec.get("data") or finfo.get("dataset", "digits"),
                   root or spec.get("data_root", ""), spec.get("image_size", 0))
    return images.split(split.get("test_fraction", 0.2), seed=split.get("seed", 0))


def evaluate(args: EvalArgs | None = None, **kwargs) -> dict:
    """FD-<net>, KID, precision/recall and label entropy of samples, beside the noise floor."""
    from .evaluate import evaluate as score
    from .evaluate import load_samples, noise_floor
    from .features import load_features

    args = _args(EvalArgs, args, kwargs)
    _threads(args)
    net, finfo = load_features(_required(args.features, "--features", "a feature net from "
                                         "`onestep-image train-features`"))
    x, labels = load_samples(_required(args.samples, "--samples", "a .npz or .npy file"))
    train_part, test_part = _reference(finfo, args.data, args.data_root)
    result = score(x, test_part, net, labels_of_samples=labels, seed=args.seed)
    floor = noise_floor(train_part, test_part, net, min(len(x), len(train_part)), seed=args.seed)
    _print_eval([("samples", result), ("floor (real)", floor)], result["fd_label"])
    out = {"samples": result, "floor": floor}
    if args.json:
        write_json(Path(args.json), out)
        print(f"wrote {args.json}")
    return out


def _print_eval(rows, label: str) -> None:
    print(f"{'':<14}{'N':>6}{label:>18}{'KID':>10}{'precision':>11}{'recall':>8}"
          f"{'label H':>9}")
    for name, r in rows:
        print(f"{name:<14}{r['n']:>6}{r['fd']:>18.3f}{r['kid']['mean']:>10.4f}"
              f"{r['precision']:>11.3f}{r['recall']:>8.3f}{r['label_entropy']:>9.3f}")


def methods(args: MethodsArgs | None = None, **kwargs) -> dict:
    """The methods with their image-scale steps, or one method's image-scale config."""
    from onestep.core.distill import METHODS, get_method, toy_steps

    from .defaults import image_defaults

    args = _args(MethodsArgs, args, kwargs)
    if args.method:
        get_method(args.method)
        config = image_defaults(args.method, None)
        result = {"method": args.method, "steps": toy_steps(args.method, config),
                  "config": json.loads(json.dumps(dataclasses.asdict(config), default=str))}
        print(json.dumps(result, indent=1))
        return result
    rows = {}
    for name, (_, _, description) in METHODS.items():
        config = image_defaults(name, None)
        rows[name] = {"steps": toy_steps(name, config), "needs_data": needs_data(name, config),
                      "description": description}
        print(f"{name:<12}{rows[name]['steps']:>6} steps  "
              f"{'on data' if rows[name]['needs_data'] else 'data-free':<10}{description}")
    return rows


def demo(args: DemoArgs | None = None, **kwargs) -> dict:
    """The image demo (see DemoArgs)."""
    from .demo import run_demo

    args = _args(DemoArgs, args, kwargs)
    _threads(args)
    return run_demo(args)
