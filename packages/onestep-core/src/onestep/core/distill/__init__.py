"""Distillation: one module per method family. Every method is a `train.Task` (a Distiller)
whose student is a `Generator` with `generate(noise, cond=None, nfe=1)`.

`METHODS[name] = (ConfigClass, DistillerClass, one-line description)`, in the order and with the
descriptions of `onestep.core.method_registry.REGISTRY` (the torch-free table `onestep methods`
prints), the classes from each module's own METHODS.
"""

import dataclasses

from ..method_registry import REGISTRY
from . import (
    consistency,
    disback,
    dmd,
    fdistill,
    hipa,
    meanflow,
    msd,
    phased_dmd,
    progressive,
    rectified,
    sim,
    tdm,
    vsd,
)
from .base import DenoiserGenerator, Distiller, Generator

_MODULES = {m.__name__.rsplit(".", 1)[1]: m for m in (
    progressive, consistency, rectified, meanflow, tdm, dmd, phased_dmd, disback, vsd, fdistill,
    sim, msd, hipa)}
METHODS: dict[str, tuple] = {
    name: (*_MODULES[info.module].METHODS[name][:2], info.description)
    for name, info in REGISTRY.items()
}


def get_method(name: str) -> tuple:
    """(ConfigClass, DistillerClass, description) for a method name."""
    if name not in METHODS:
        raise ValueError(f"unknown distillation method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]


def toy_config(name: str, teacher=None, **overrides):
    """The method's config at toy scale (2- to 16-D data, an MLP teacher, batch 256), adapted to
    `teacher` where that matters (eps teachers with alpha(1) ~ 0); `overrides` replace fields."""
    return get_method(name)[0].toy_defaults(teacher, **overrides)


# Trainer steps a toy-scale run needs, for methods whose config does not fix them.
_TOY_STEPS = {"cd": 3000, "segment_cd": 3000, "meanflow": 3000, "tdm": 2000, "dmd": 3000,
              "dmd2": 1000, "disback": 3000, "vsd": 3000, "fdistill": 3000, "sim": 3000,
              "msd": 3000, "hipa": 1500}


def toy_steps(name: str, config) -> int:
    """Trainer steps for `config` of method `name`: the schedule it defines (progressive rounds,
    iCT's curriculum, reflow rounds plus distillation, phases, a learning-rate decay) or the
    toy default."""
    c = config
    if name == "progressive":
        return c.total_steps
    if name == "ict":
        return c.total_steps
    if name in ("reflow", "instaflow"):
        return c.rounds * c.reflow_steps + getattr(c, "distill_steps", 0)
    if name == "slimflow":
        return c.reflow_steps + c.distill_steps
    if name == "phased_dmd":
        return c.phase_steps * len(c.phase_times)
    get_method(name)
    return getattr(c, "lr_decay_steps", None) or _TOY_STEPS[name]


def with_steps(config, steps: int):
    """`config` for a run of `steps` Trainer steps: a learning-rate decay that `lr_decay_steps`
    schedules (over the toy run) is stretched to end with the run."""
    if getattr(config, "lr_decay_steps", None) not in (None, steps):
        return dataclasses.replace(config, lr_decay_steps=steps)
    return config


__all__ = ["METHODS", "DenoiserGenerator", "Distiller", "Generator", "get_method", "toy_config",
           "toy_steps", "with_steps"]
