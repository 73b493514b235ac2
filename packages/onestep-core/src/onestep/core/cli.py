"""The `onestep` command: the parser, built from one frozen dataclass per command (cli_args.py),
`main`, and the `demo` command.

Importing this module imports no torch, numpy, scipy or matplotlib: COMMANDS maps each command to
its Args class and "module:function", imported only when the command runs, so `onestep --help`
and `onestep methods` start at once (tests/test_cli_startup.py times it).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import sys
import time

from .cli_args import (
    DemoArgs,
    DistillArgs,
    EvalArgs,
    MethodsArgs,
    SampleArgs,
    SearchArgs,
    SolversArgs,
    TrainArgs,
)

DESCRIPTION = """Make diffusion and flow models fast: sample them in a few steps, and distil them
into one- or few-step students.

`onestep COMMAND --help` shows a command's flags."""

def _teacher(args: DemoArgs, dim: int):
    from .denoiser import Denoiser
    from .nn import MLP, EDMPrecond
    from .paths import EDM, RectifiedFlow

    if args.objective == "flow":
        net = MLP(dim, hidden=args.hidden, depth=3)
        return Denoiser(net, RectifiedFlow(), prediction="velocity", time_input="t")
    if args.objective == "edm":
        path = EDM(sigma_max=80.0, sigma_data=1.0)
        net = EDMPrecond(MLP(dim, hidden=args.hidden, depth=3, time_scale=250.0), sigma_data=1.0)
        return Denoiser(net, path, prediction="x0", time_input="sigma")
    raise ValueError(f"unknown objective {args.objective!r}; use 'flow' or 'edm'")


def _loss(args: DemoArgs):
    from .losses import EDMLoss, FlowMatchingLoss

    return FlowMatchingLoss() if args.objective == "flow" else EDMLoss(sigma_data=1.0)


def demo(args: DemoArgs) -> dict:
    import torch

    from .cli_vector import _sampler_label
    from .data import toy_sample
    from .io import save_model
    from .runs import check_run_folder, clear_run_folder
    from .sampling import sample
    from .train import LossTask, TrainConfig, Trainer

    if args.method != "none":
        from .distill import get_method

        get_method(args.method)  # an unknown name fails before the teacher trains
    for flag in ("steps", "batch_size", "hidden", "n_samples", "distill_batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got "
                             f"{getattr(args, flag)}")
    if args.objective not in ("flow", "edm"):
        raise ValueError(f"unknown objective {args.objective!r}; use 'flow' or 'edm'")
    if args.distill_steps < 0 or not args.nfe or min(args.nfe) < 1 or not args.lr > 0:
        raise ValueError("need --distill-steps >= 0, --nfe values >= 1 and --lr > 0")
    out = check_run_folder(args.out, overwrite=args.overwrite, can_resume=False)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    train = toy_sample(args.data, 50_000, generator=g)
    held_out = toy_sample(args.data, args.n_samples, generator=g)
    second = toy_sample(args.data, args.n_samples, generator=g)  # for the noise floor
    clear_run_folder(out, overwrite=args.overwrite)

    # 1. train the teacher (warm-up: 100 steps, or the whole of a shorter run)
    den = _teacher(args, train.shape[1])
    task = LossTask(den, _loss(args), lr=args.lr, warmup=min(100, args.steps),
                    total_steps=args.steps, ema_decay=0.999)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                      out_dir=str(out), log_every=100, ckpt_every=args.steps,
                      progress=args.progress)
    t0 = time.perf_counter()
    Trainer(cfg).fit(task, train)
    train_s = time.perf_counter() - t0
    task.ema.copy_to(den)  # sample with the EMA weights
    den.eval()
    save_model(out / "teacher", den, extra={"data": args.data, "objective": args.objective})

    # 2. sample with the chosen solver at each NFE, on the same noise
    noise = torch.randn(args.n_samples, train.shape[1], generator=g)
    rows = [_row("real data (floor)", 0, second, held_out, 0.0),
            _row("prior (noise)", 0, noise, held_out, 0.0)]
    solver, schedule = args.solver or None, args.schedule or None
    for nfe in args.nfe:
        with torch.no_grad():
            t0 = time.perf_counter()
            x = sample(den, noise, nfe=nfe, solver=solver, schedule=schedule)
            secs = time.perf_counter() - t0
        label = _sampler_label(den.path, nfe, solver, schedule).removeprefix("default ")
        rows.append(_row(label, nfe, x, held_out, secs))
        last = x

    # 3. distil a one-step student and sample it on the same noise
    student, distill_s = None, 0.0
    if args.method != "none":
        from .distill import toy_steps, with_steps
        from .io import save_student
        from .runner import resolve_config as _resolve_config

        config = _resolve_config(args.method, den, {}, seed=args.seed, progress=args.progress)
        steps = args.distill_steps or toy_steps(args.method, config)
        config = with_steps(config, steps)
        trainer = Trainer(TrainConfig(steps=steps, batch_size=args.distill_batch_size,
                                      seed=args.seed,
                                      out_dir=str(out / "distill"), log_every=100,
                                      ckpt_every=steps, progress=args.progress))
        distiller = get_method(args.method)[1](den, config)
        t0 = time.perf_counter()
        trainer.fit(distiller, train)
        distill_s = time.perf_counter() - t0
        entry = save_student(out / "student", distiller, extra={"data": args.data, "steps": steps})
        student_nfe = entry["nfe"]  # 1, or the grid a few-step method is trained for
        gen = distiller.generator().eval()
        with torch.no_grad():
            t0 = time.perf_counter()
            student = gen.generate(noise, nfe=student_nfe)
            secs = time.perf_counter() - t0
        rows.append(_row(f"{args.method} student", student_nfe, student, held_out, secs))

    # 4. report
    print(f"\nteacher: {args.objective} on {args.data}, {args.steps} steps in {train_s:.1f} s")
    if student is not None:
        print(f"student: {args.method}, {steps} steps in {distill_s:.1f} s")
    print(f"distances to {args.n_samples} held-out points; the floor row is a second real "
          "sample of the same size, the best any model can score")
    print(f"{'sampler':<19}{'NFE':>4}{'sliced W2':>12}{'MMD':>10}{'energy':>10}{'us/sample':>11}")
    for r in rows:
        print(f"{r['sampler']:<19}{r['nfe']:>4}{r['sw2']:>12.4f}{r['mmd']:>10.4f}"
              f"{r['energy']:>10.4f}{r['us_per_sample']:>11.1f}")
    floor = rows[0]["sw2"]
    ratios = [f"teacher at {args.nfe[-1]} NFE {rows[len(args.nfe) + 1]['sw2'] / floor:.2f}x"]
    if student is not None:
        ratios.append(f"{args.method} student at {student_nfe} NFE "
                      f"{rows[-1]['sw2'] / floor:.2f}x")
    print(f"sliced W2 against the floor: {', '.join(ratios)} (1.00x: as close as real data)")
    result = {"args": dataclasses.asdict(args), "train_seconds": train_s,
              "distill_seconds": distill_s, "rows": rows}
    (out / "demo.json").write_text(json.dumps(result, indent=1))
    teacher_sw2 = rows[len(args.nfe) + 1]["sw2"]
    panels = [(held_out, f"held-out data (floor SW2 {floor:.3f})"),
              (last, f"teacher, {label}, NFE {args.nfe[-1]}: SW2 {teacher_sw2:.3f}")]
    if student is not None:
        panels.append((student, f"{args.method} student, NFE {student_nfe}: SW2 "
                                f"{rows[-1]['sw2']:.3f}"))
    _scatter(out / "samples.png", panels)
    saved = "the teacher" + (" and the student" if student is not None else "")
    print(f"wrote {out / 'demo.json'}, {out / 'samples.png'} and {saved} in {out}")
    return result


def _row(name, nfe, x, ref, secs):
    from .metrics import energy_distance, mmd, sliced_wasserstein

    return {"sampler": name, "nfe": nfe, "sw2": sliced_wasserstein(x, ref),
            "mmd": mmd(x[:2000], ref[:2000]), "energy": energy_distance(x[:2000], ref[:2000]),
            "us_per_sample": 1e6 * secs / len(x)}


def _scatter(file, panels):
    """One scatter plot per (points (N, 2), title), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.4 * n, 4.6), sharex=True, sharey=True)
    for ax, (pts, name) in zip(axes, panels, strict=True):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
        ax.set_title(name, fontsize=10)
        ax.set_aspect("equal")
    fig.tight_layout(pad=1.5)
    fig.savefig(file, dpi=100)
    plt.close(fig)


# -- argument parsing from the dataclasses ------------------------------------------------------
def _commands() -> dict:
    """{command: (Args class, "module:function")}; the function is imported when it runs."""
    return {
        "demo": (DemoArgs, "onestep.core.cli:demo"),
        "train": (TrainArgs, "onestep.core.cli_vector:train"),
        "distill": (DistillArgs, "onestep.core.cli_vector:distill"),
        "sample": (SampleArgs, "onestep.core.cli_vector:sample"),
        "eval": (EvalArgs, "onestep.core.cli_vector:eval_cmd"),
        "search-schedule": (SearchArgs, "onestep.core.cli_search:search_schedule_cmd"),
        "methods": (MethodsArgs, "onestep.core.cli_info:methods"),
        "solvers": (SolversArgs, "onestep.core.cli_info:solvers"),
    }


COMMANDS = _commands()


def command_function(name: str, commands: dict | None = None):
    """The function that runs command `name` of `commands` (default: onestep's), imported now."""
    target = (COMMANDS if commands is None else commands)[name][1]
    if callable(target):
        return target
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def summary(cls) -> str:
    """A command's one-line summary: the first paragraph of its Args docstring."""
    return " ".join(inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].split())


def _field_docs(cls) -> dict[str, str]:
    """Field docstrings (the string literal under each field) from the class source."""
    import ast

    tree = ast.parse(inspect.getsource(cls))
    docs, body = {}, tree.body[0].body
    for a, b in zip(body, body[1:], strict=False):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and \
                isinstance(getattr(b, "value", None), ast.Constant):
            docs[a.target.id] = str(b.value.value)
    return docs


def _parser_for(cls, parser: argparse.ArgumentParser) -> None:
    docs = _field_docs(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_ = _flag_help(docs.get(f.name, ""), f.default)
        if f.name in getattr(cls, "REPEATABLE", ()):  # --set a=1 --set b=2: joined by spaces
            parser.add_argument(flag, action="append", default=None, help=help_)
        elif f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=help_)
        elif str(f.type).startswith("tuple"):
            inner = str(f.type)[len("tuple["):].split(",")[0].strip()
            parser.add_argument(flag, type=_KINDS.get(inner, str), nargs="+", default=f.default,
                                help=help_)
        else:
            kind = _KINDS.get(str(f.type).split(" ")[0], str)
            parser.add_argument(flag, type=kind, default=f.default, help=help_)


_KINDS = {"int": int, "float": float, "str": str}


def _flag_help(doc: str, default) -> str:
    """The field's docstring, then "(default: X)" unless the flag is required or its default
    is empty ("" or ())."""
    text = " ".join(doc.split())
    if "(required)" not in text and default not in ("", (), None):
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        text = f"{text} (default: {shown})".strip()
    return text.replace("%", "%%")  # argparse %-formats help strings


def parse_dataclass(cls, argv=None, description: str | None = None):
    """An instance of the frozen dataclass `cls` from command-line flags (one per field, help
    from the field docstrings): what every onestep command and benchmark script parses with."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _parser_for(cls, parser)
    ns = vars(parser.parse_args(argv))
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in ns.items()})


def build_parser(prog: str = "onestep", description: str = DESCRIPTION,
                 commands: dict | None = None) -> argparse.ArgumentParser:
    """A command line's parser: one subparser per command of `commands` ({name: (Args class,
    "module:function")}, default onestep's COMMANDS), one flag per field."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands")
    for name, (cls, _) in (COMMANDS if commands is None else commands).items():
        _parser_for(cls, sub.add_parser(name, help=summary(cls),
                                        description=inspect.cleandoc(cls.__doc__ or "")))
    return parser


def run_cli(prog: str, description: str, commands: dict, argv: list[str] | None = None) -> int:
    """Parse `argv` for `commands`, print a dry run, or run the command with user errors as one
    line and exit code 2 (`runs.run_command`): the main of every onestep command line."""
    ns = vars(build_parser(prog, description, commands).parse_args(argv))
    command = ns.pop("command")
    cls = commands[command][0]
    for name in getattr(cls, "REPEATABLE", ()):
        ns[name] = " ".join(ns[name]) if ns[name] is not None else getattr(cls, name)
    args = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in ns.items()})
    if getattr(args, "dry_run", False) and not getattr(cls, "OWN_DRY_RUN", False):
        print(json.dumps(dataclasses.asdict(args), indent=1))
        return 0
    from .runs import run_command

    return run_command(f"{prog} {command}", command_function(command, commands), args)


def main(argv: list[str] | None = None) -> int:
    return run_cli("onestep", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
