"""Distillation: one module per method family. Every method is a `train.Task` (a Distiller)
whose student is a `Generator` with `generate(noise, cond=None, nfe=1)`.

`METHODS[name] = (ConfigClass, DistillerClass, one-line description)`.
"""

from . import (
    consistency,
    disback,
    dmd,
    fdistill,
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

METHODS: dict[str, tuple] = {}
for _module in (progressive, consistency, rectified, meanflow, tdm, dmd, phased_dmd, disback,
                vsd, fdistill, sim, msd):
    METHODS.update(_module.METHODS)


def get_method(name: str) -> tuple:
    """(ConfigClass, DistillerClass, description) for a method name."""
    if name not in METHODS:
        raise ValueError(f"unknown distillation method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "DenoiserGenerator", "Distiller", "Generator", "get_method"]
