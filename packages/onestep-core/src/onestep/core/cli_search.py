"""`onestep search-schedule`: search (and optionally learn) a few-step sampler for a saved model.

    onestep search-schedule --model runs/demo/teacher --nfe 5 --out schedule.json
    onestep search-schedule --model runs/demo/teacher --nfe 4 --learn --learn-times
    onestep search-schedule --model runs/demo/teacher --nfe 4 --method none --learn \
        --lsd-method endpoint

The schedule JSON is then used as `sample(denoiser, noise, nfe=5, schedule="schedule.json")`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path as FilePath

import torch

from .cli_args import SearchArgs

__all__ = ["SearchArgs", "search_schedule_cmd"]


def _sample_shape(info: dict, shape: tuple[int, ...]) -> tuple[int, ...]:
    if shape:
        return tuple(shape)
    net = info["network"]
    while net["name"] == "edm_precond":
        net = net["config"]["net"]
    cfg = net["config"]
    if net["name"] == "mlp":
        return (int(cfg["dim"]),)
    if net["name"] == "dit" and "input_shape" in cfg:
        return tuple(int(v) for v in cfg["input_shape"])
    raise ValueError(f"cannot infer the sample shape of a {net['name']!r} network; pass --shape")


def search_schedule_cmd(args: SearchArgs, load=None) -> dict:
    """Run the search (and LSD), write the schedule, and report held-out errors.

    load: how a domain package opens --model: a callable folder -> (Denoiser, sample shape,
        cond_for), where cond_for(n) gives the conditions of n calibration samples (class labels
        0..k-1 in turn for a class-conditional teacher) or None; default: core's load_model,
        the shape from the network config or --shape, unconditional."""
    from .io import load_model
    from .sampling import default_sampler, sample
    from .search import LEARNERS, METHODS, endpoint_error, learn_sampler, search_schedule

    if not args.model:
        raise ValueError("--model is required: a folder written by onestep.core.io.save_model")
    if args.method not in METHODS + ("none",):
        raise ValueError(f"unknown --method {args.method!r}; use one of {list(METHODS)} or none")
    if args.method == "none" and not args.learn:
        raise ValueError("--method none searches nothing: add --learn (LSD from dpm++2m)")
    if args.lsd_method not in LEARNERS:
        raise ValueError(f"unknown --lsd-method {args.lsd_method!r}; use one of {list(LEARNERS)}")
    if args.learn_times and not args.learn:
        raise ValueError("--learn-times is LSD+: add --learn")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's default), got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n_calib < 1 or args.n_eval < 0:
        raise ValueError(
            f"--n-calib must be >= 1 and --n-eval >= 0, got {args.n_calib}, {args.n_eval}"
        )
    if load is None:
        den, info = load_model(args.model)
        shape, cond_for = _sample_shape(info, args.shape), lambda n: None
    else:
        den, shape, cond_for = load(args.model)
        shape = tuple(args.shape) if args.shape else tuple(shape)
    den.requires_grad_(False)
    g = torch.Generator().manual_seed(args.seed)
    calib = torch.randn(args.n_calib, *shape, generator=g)
    held = torch.randn(args.n_eval, *shape, generator=g)
    calib_cond, held_cond = cond_for(args.n_calib), cond_for(args.n_eval)
    t0 = time.perf_counter()
    schedule = None
    if args.method != "none":
        schedule = search_schedule(
            den,
            nfe=args.nfe,
            noise=calib,
            cond=calib_cond,
            method=args.method,
            iterations=args.iterations or None,
            solver=args.solver,
            seed=args.seed,
            progress=args.progress,
        )
    if args.learn:
        schedule = learn_sampler(
            den,
            nfe=args.nfe,
            noise=calib,
            cond=calib_cond,
            base=schedule,
            method=args.lsd_method,
            learn_times=args.learn_times,
            iterations=args.lsd_iterations,
            progress=args.progress,
        )
    seconds = time.perf_counter() - t0
    out = FilePath(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    schedule = dataclasses.replace(schedule, meta={**schedule.meta, "model": str(args.model)})
    schedule.save(out)
    result = {"schedule": str(out), "seconds": seconds, "meta": schedule.meta}
    print(
        f"{schedule.meta['method']} schedule for {args.model}, nfe={args.nfe}, "
        f"{seconds:.1f} s: times {[round(t, 4) for t in schedule.times.tolist()]}"
    )
    if schedule.orders is not None:
        print(
            f"  orders {list(schedule.orders)}, predictions {list(schedule.predictions or [])}"
            f", correctors {list(schedule.correctors or [])}"
        )
    if args.n_eval:
        with torch.no_grad():
            ref = sample(den, held, nfe=None, solver="rk45", cond=held_cond)
            found = sample(den, held, nfe=args.nfe, schedule=schedule, cond=held_cond)
            default = sample(den, held, nfe=args.nfe, cond=held_cond)
        result["held_out_error"] = endpoint_error(found, ref)
        result["default_held_out_error"] = endpoint_error(default, ref)
        print(
            f"  held-out RMS error to rk45: {result['held_out_error']:.4g} (the default, "
            f"{' '.join(default_sampler(den.path, args.nfe))}: "
            f"{result['default_held_out_error']:.4g})"
        )
    print(f"wrote {out}")
    return result
