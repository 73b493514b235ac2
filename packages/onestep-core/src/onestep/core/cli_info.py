"""`onestep methods` and `onestep solvers`: what the other commands accept.

The method list reads `method_registry` and imports no torch; `methods --method NAME` (a resolved
config) and `solvers` import the library.
"""

from __future__ import annotations

import dataclasses
import json

from .cli_args import MethodsArgs, SolversArgs

__all__ = ["methods", "solvers"]


def methods(args: MethodsArgs) -> dict:
    """Print the methods (steps, --data, description), or one method's resolved config."""
    from .method_registry import REGISTRY

    if args.method:
        from .distill import get_method, toy_steps
        from .runner import needs_data, parse_overrides
        from .runner import resolve_config as _resolve_config

        config_class = get_method(args.method)[0]
        config = _resolve_config(args.method, None, parse_overrides(args.set, config_class))
        result = {"method": args.method, "steps": toy_steps(args.method, config),
                  "needs_data": needs_data(args.method, config),
                  "config": json.loads(json.dumps(dataclasses.asdict(config)))}
        print(json.dumps(result, indent=1))
        return result
    if args.set:
        raise ValueError("--set needs --method")
    rows = {}
    for name, info in REGISTRY.items():
        rows[name] = {"steps": info.steps, "needs_data": info.needs_data,
                      "description": info.description}
        print(f"{name:<12}{info.steps:>6} steps  "
              f"{'needs --data' if info.needs_data else 'data-free':<13}{info.description}")
    return rows


def solvers(args: SolversArgs) -> dict:
    """Print the solvers (kind, aliases) and the schedules."""
    from .sampling import ALIASES, LAZY_SOLVERS
    from .schedules import SCHEDULES
    from .solvers import SOLVERS

    aliases: dict[str, list[str]] = {}
    for alias, name in ALIASES.items():
        aliases.setdefault(name, []).append(alias)
    rows = {}
    print("solvers (--solver NAME):")
    for name, s in SOLVERS.items():
        kind = s.kind + (", stochastic" if s.stochastic else "")
        rows[name] = {"kind": kind, "aliases": aliases.get(name, [])}
        also = f"also: {', '.join(aliases[name])}" if name in aliases else ""
        print(f"  {name:<17}{kind:<23}{also}".rstrip())
    for name in LAZY_SOLVERS:
        rows[name] = {"kind": "searched", "aliases": aliases.get(name, [])}
        print(f"  {name:<17}{'searched':<23}runs a schedule from `onestep search-schedule`")
    print("schedules (--schedule NAME, or a schedule JSON file):")
    print("  " + ", ".join(SCHEDULES))
    return {"solvers": rows, "schedules": list(SCHEDULES)}
