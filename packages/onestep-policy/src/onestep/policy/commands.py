"""The verbs of `onestep-policy` as Python functions of the same names (call them from a notebook
with keyword arguments; the command line passes its flags): make_dataset and inspect."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .cli import InspectArgs, MakeDatasetArgs

__all__ = ["make_dataset", "inspect"]


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
