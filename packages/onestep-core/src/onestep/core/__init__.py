"""onestep core: paths, denoisers, solvers and schedules, teacher losses, distillation, networks,
training and metrics, shared by every onestep domain package.

    from onestep.core import Denoiser, RectifiedFlow, sample
    x = sample(Denoiser(net, RectifiedFlow(), prediction="velocity"), noise, nfe=8)

The names below are imported on first use (PEP 562), so importing a torch-free submodule such as
`onestep.core.cli` does not import torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import solvers
    from .convert import KINDS, convert
    from .denoiser import Denoiser
    from .losses import DSMLoss, EDMLoss, FlowMatchingLoss
    from .paths import EDM, VP, Affine, Path, RectifiedFlow
    from .sampling import sample
    from .schedules import Schedule
    from .search import learn_sampler, search_schedule

# public name -> the submodule that defines it ("solvers" is the submodule itself)
_EXPORTS = {
    "EDM": "paths",
    "KINDS": "convert",
    "VP": "paths",
    "Affine": "paths",
    "DSMLoss": "losses",
    "Denoiser": "denoiser",
    "EDMLoss": "losses",
    "FlowMatchingLoss": "losses",
    "Path": "paths",
    "RectifiedFlow": "paths",
    "Schedule": "schedules",
    "convert": "convert",
    "learn_sampler": "search",
    "sample": "sampling",
    "search_schedule": "search",
    "solvers": "solvers",
}

__all__ = [
    "EDM",
    "KINDS",
    "VP",
    "Affine",
    "DSMLoss",
    "Denoiser",
    "EDMLoss",
    "FlowMatchingLoss",
    "Path",
    "RectifiedFlow",
    "Schedule",
    "convert",
    "learn_sampler",
    "sample",
    "search_schedule",
    "solvers",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    value = module if name == "solvers" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """`onestep.core.convert` is the function `convert`, as with eager imports: importing the
    submodule of the same name (which the import system binds on this package) keeps it so."""

    def __setattr__(self, name: str, value) -> None:
        if name == "convert" and isinstance(value, types.ModuleType):
            value = value.convert
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
