"""The verbs of `onestep-policy` as Python functions of the same names (call them from a notebook
with keyword arguments; the command line passes its flags): make_dataset, inspect, train and
eval. train and eval dispatch on the algorithm: ofql, dql, fbc and bc to onestep.policy.offline,
dm1 and diffusion-policy to onestep.policy.imitation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .cli import EvalArgs, InspectArgs, MakeDatasetArgs, TrainArgs

__all__ = ["make_dataset", "inspect", "train", "eval"]


def _args(cls, args, kwargs):
    """The Args dataclass from the command line, or from a notebook's keyword arguments."""
    if args is not None and kwargs:
        raise TypeError("pass the Args dataclass or keyword arguments, not both")
    return args if args is not None else cls(**kwargs)


def _fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def make_dataset(args: MakeDatasetArgs | None = None, **kwargs) -> dict:
    """`onestep-policy make-dataset`: one split or set of demonstrations, written to args.out."""
    from .make import make_dataset as _make

    a = _args(MakeDatasetArgs, args, kwargs)
    kw = dataclasses.asdict(a)
    kw.pop("dry_run")
    s = _make(**kw)
    rows = [("file", s["path"]), ("transitions", s["transitions"]),
            ("episodes", s["episodes"]), ("mean return", _fmt(s.get("mean_return"))),
            ("reference returns (random, expert)",
             f"{_fmt(s.get('ref_random_return'))}, {_fmt(s.get('ref_expert_return'))}"),
            ("normalised score", _fmt(s.get("normalized_score")))]
    if "success_rate" in s:
        rows.append(("success rate", f"{100 * s['success_rate']:.0f}%"))
    if "dataset_id" in s:
        rows.append(("minari dataset id", s["dataset_id"]))
    rows.append(("summary", s["sidecar"]))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return s


def inspect(args: InspectArgs | None = None, **kwargs) -> dict:
    """`onestep-policy inspect`: read and check a dataset and print its summary."""
    from .data import detect_format, load_dataset
    from .scores import normalized_score

    a = _args(InspectArgs, args, kwargs)
    if not a.data:
        raise ValueError("--data is required: a D4RL or robomimic file or a Minari dataset")
    fmt = a.format
    if fmt == "auto" and not (a.root and not Path(a.data).exists()):
        fmt = detect_format(a.data)
    elif fmt == "auto":
        fmt = "minari"
    data = load_dataset(a.data, env=a.env or None, format=fmt, root=a.root or None)
    s = {"format": fmt, **data.summary()}
    for k in ("quality", "ref_random_return", "ref_expert_return"):
        if k in data.attrs:
            s[k] = data.attrs[k]
    if s.get("mean_return") is not None and "ref_random_return" in data.attrs:
        s["normalized_score"] = normalized_score(data.env, s["mean_return"], data.attrs)
    for k, v in s.items():
        print(f"{k:<18} {v if not isinstance(v, float) else f'{v:.4g}'}")
    if a.json:
        Path(a.json).write_text(json.dumps(s, indent=1) + "\n")
    return s


# -- train and eval -----------------------------------------------------------------------------
OFFLINE = ("ofql", "dql", "fbc", "bc")
IMITATION = ("dm1", "diffusion-policy")


def _backend(algo: str):
    """The module that trains `algo`: onestep.policy.offline or onestep.policy.imitation."""
    from importlib import import_module

    if algo in OFFLINE:
        return import_module(".offline", __package__)
    if algo in IMITATION:
        try:
            return import_module(".imitation", __package__)
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.imitation":
                raise
            raise ValueError(f"--algo {algo}: onestep.policy.imitation is not installed in "
                             "this version") from None
    raise ValueError(f"unknown --algo {algo!r}; choose from {', '.join(OFFLINE + IMITATION)}")


def _run_algo(run: str) -> str:
    file = Path(run) / "run.json"
    if not Path(run).exists():
        raise FileNotFoundError(f"{run}: no such run folder")
    try:
        return str(json.loads(file.read_text())["algo"])
    except FileNotFoundError:
        raise ValueError(f"{run} holds no run.json: not a run written by onestep-policy "
                         "train") from None
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{file} is unreadable or names no algorithm") from None


def train(args: TrainArgs | None = None, **kwargs) -> dict:
    """`onestep-policy train`: train --algo on --data into --out."""
    a = _args(TrainArgs, args, kwargs)
    if not a.algo:
        raise ValueError(f"--algo is required: one of {', '.join(OFFLINE + IMITATION)}")
    backend = _backend(a.algo)
    if not a.data or not a.out:
        raise ValueError("--data (the dataset) and --out (the run folder) are required")
    if a.dry_run:
        resolve = getattr(backend, "resolve_config", None)
        shown = dataclasses.asdict(a)
        if resolve is not None:
            config = resolve(a.algo, a.set)
            names = {f.name for f in dataclasses.fields(config)}
            given = {"steps": a.steps, "batch_size": a.batch_size}
            config = dataclasses.replace(config, **{k: v for k, v in given.items()
                                                    if v and k in names})
            shown["config"] = dataclasses.asdict(config)
        print(json.dumps(shown, indent=1))
        return shown
    s = backend.train(a.algo, a.data, a.out, env=a.env, steps=a.steps,
                      batch_size=a.batch_size, seed=a.seed, overrides=a.set or None,
                      resume=a.resume, overwrite=a.overwrite, progress=a.progress,
                      threads=a.threads)
    logs = s.get("final_logs") or {}
    shown = ", ".join(f"{k} {v:.4g}" for k, v in logs.items() if "loss" in k)
    print(f"{a.algo} on {s.get('env', a.env)}: {s['steps']} steps in "
          f"{s['train_seconds']:.1f} s{'; ' + shown if shown else ''}; saved to {a.out}")
    return s


def eval(args: EvalArgs | None = None, **kwargs) -> dict:  # noqa: A001 (the verb's name)
    """`onestep-policy eval`: roll out the policy in --run and print score and latency."""
    import torch

    a = _args(EvalArgs, args, kwargs)
    if not a.run:
        raise ValueError("--run is required: a run folder written by onestep-policy train")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    algo = _run_algo(a.run)
    backend = _backend(algo)
    if a.sampler and algo in OFFLINE:
        raise ValueError(f"--sampler is for dm1 and diffusion-policy runs; {algo} has no "
                         "sampler choice")
    if algo in IMITATION:
        samplers = backend.SAMPLERS[algo] if a.sampler else ()
        if a.sampler and a.sampler not in samplers:
            raise ValueError(f"unknown --sampler {a.sampler!r} for {algo}; choose from "
                             f"{', '.join(samplers)} (or leave it empty for the default)")
        s = backend.evaluate(a.run, episodes=a.episodes, seed=a.seed, progress=a.progress,
                             sampler=a.sampler)
    else:
        s = backend.evaluate(a.run, episodes=a.episodes, seed=a.seed, progress=a.progress)
    rows = [("algo", s.get("algo")), ("env", s.get("env")), ("episodes", s.get("episodes"))]
    if s.get("sampler"):
        rows.append(("sampler", s["sampler"]))
    if s.get("returns") is not None:
        rows.append(("mean return", _fmt(s.get("mean_return"))))
    ci = s.get("score_ci")
    rows.append(("score", f"{_fmt(s.get('score'))}"
                 + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")))
    rows += [("latency ms (median, p95)",
              f"{_fmt(s.get('latency_ms_median'), '.3f')}, "
              f"{_fmt(s.get('latency_ms_p95'), '.3f')}"),
             ("nfe", s.get("nfe"))]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(s, indent=1) + "\n")
    return s
