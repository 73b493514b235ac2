"""onestep core: paths, denoisers, solvers and schedules, teacher losses, distillation, networks,
training and metrics, shared by every onestep domain package.

    from onestep.core import Denoiser, RectifiedFlow, sample
    x = sample(Denoiser(net, RectifiedFlow(), prediction="velocity"), noise, nfe=8)
"""

from . import solvers
from .convert import KINDS, convert
from .denoiser import Denoiser
from .losses import DSMLoss, EDMLoss, FlowMatchingLoss
from .paths import EDM, VP, Affine, Path, RectifiedFlow
from .sampling import sample
from .schedules import Schedule
from .search import learn_sampler, search_schedule

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
