"""The distillation methods as plain data, without importing torch: what `onestep methods` lists
and where each method's config and distiller classes live.

It sits beside, not inside, `onestep.core.distill`: importing anything under distill/ runs
distill/__init__, which imports every method and torch. `onestep.core.distill.METHODS` takes its
order and descriptions from here; `steps` and `needs_data` are the live values at toy scale
(`toy_steps(name, toy_config(name))`, `cli_vector.needs_data(name, toy_config(name))`), which
tests/test_method_registry.py checks entry by entry.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["MethodInfo", "REGISTRY", "describe"]


class MethodInfo(NamedTuple):
    module: str
    """Module under onestep.core.distill that defines the classes."""
    config: str
    """Name of the config class (its `toy_defaults` gives the toy-scale config)."""
    distiller: str
    """Name of the Distiller class."""
    steps: int
    """Trainer steps of the toy-scale config (`toy_steps(name, toy_config(name))`)."""
    needs_data: bool
    """Whether the toy-scale config trains on real data (`onestep distill --data`)."""
    description: str
    """One line: what the method is, and where it comes from."""


REGISTRY: dict[str, MethodInfo] = {
    "progressive": MethodInfo(
        "progressive", "ProgressiveConfig", "ProgressiveDistiller", 3000, True,
        "progressive distillation: halve DDIM steps per round (Salimans & Ho 2022)"),
    "cd": MethodInfo(
        "consistency", "CDConfig", "CDDistiller", 3000, True,
        "consistency distillation with an EMA target and Heun teacher steps (Song et al. 2023)"),
    "ict": MethodInfo(
        "consistency", "ICTConfig", "ICTDistiller", 16000, True,
        "improved consistency training from data: pseudo-Huber, lognormal noise, doubling "
        "discretisation, no EMA target (Song & Dhariwal 2023)"),
    "segment_cd": MethodInfo(
        "consistency", "SegmentCDConfig", "SegmentCDDistiller", 3000, True,
        "segment-wise multistep consistency distillation, one step per segment "
        "(Heek et al. 2024; Efficient-vDiT)"),
    "reflow": MethodInfo(
        "rectified", "ReflowConfig", "ReflowDistiller", 2000, False,
        "k-rectified flow sampled with one Euler step (Liu et al. 2022, Flow Straight and Fast)"),
    "instaflow": MethodInfo(
        "rectified", "InstaFlowConfig", "InstaFlowDistiller", 3000, False,
        "reflow then one-step distillation on the reflowed couplings (InstaFlow, Liu et al. "
        "2023)"),
    "slimflow": MethodInfo(
        "rectified", "SlimFlowConfig", "SlimFlowDistiller", 3000, False,
        "annealing reflow + flow-guided distillation into a smaller one-step student "
        "(SlimFlow, Zhu et al. 2024)"),
    "meanflow": MethodInfo(
        "meanflow", "MeanFlowConfig", "MeanFlowDistiller", 9000, True,
        "average-velocity one-step flow via the MeanFlow identity and a JVP target, trained "
        "from data (mode=teacher: distilled from the teacher's velocity) (MeanFlow, Geng et al. "
        "2025)"),
    "tdm": MethodInfo(
        "tdm", "TDMConfig", "TDMDistiller", 2000, False,
        "K-step student whose every intermediate state is distribution-matched to the "
        "teacher's marginal with a step-aware fake score (TDM, Luo et al. 2025)"),
    "dmd": MethodInfo(
        "dmd", "DMDConfig", "DMDDistiller", 3000, False,
        "DMD: distribution matching + ODE-pair regression, one-step (Yin et al. 2024, CVPR)"),
    "dmd2": MethodInfo(
        "dmd", "DMD2Config", "DMD2Distiller", 1000, True,
        "DMD2: distribution matching, TTUR, GAN, backward simulation (Yin et al. 2024, NeurIPS)"),
    "phased_dmd": MethodInfo(
        "phased_dmd", "PhasedDMDConfig", "PhasedDMDDistiller", 2000, False,
        "Phased DMD: one expert per SNR phase, subinterval score matching (Fan et al. 2025)"),
    "disback": MethodInfo(
        "disback", "DisBackConfig", "DisBackDistiller", 3000, False,
        "DisBack: record the teacher's degradation to the initial generator, then "
        "distill backwards along it (Zhang et al., ICLR 2025)"),
    "vsd": MethodInfo(
        "vsd", "VSDConfig", "VSDDistiller", 3000, False,
        "variational score distillation into a one-step student with a LoRA fake score "
        "(SwiftBrush, Nguyen & Tran 2024; VSD of ProlificDreamer, Wang et al. 2023)"),
    "fdistill": MethodInfo(
        "fdistill", "FDistillConfig", "FDistillDistiller", 3000, True,
        "f-divergence distribution matching with density-ratio-weighted score "
        "differences and a GAN discriminator (f-distill, Xu, Nie & Vahdat 2025)"),
    "sim": MethodInfo(
        "sim", "SIMConfig", "SIMDistiller", 3000, False,
        "Score Implicit Matching with the pseudo-Huber score distance (SIM, Luo et al. 2024)"),
    "msd": MethodInfo(
        "msd", "MSDConfig", "MSDDistiller", 3000, False,
        "multi-student distillation: K one-step students, each distilled by distribution "
        "matching on its part of the class or noise space (MSD, Song et al. 2024)"),
    "hipa": MethodInfo(
        "hipa", "HiPAConfig", "HiPADistiller", 1500, False,
        "LoRA on the frozen teacher so that one step reproduces its multi-step sample, with a "
        "high-frequency promoted loss (HiPA, Zhang & Hooi 2023)"),
}


def describe(name: str) -> str:
    """The one-line description of method `name`."""
    return REGISTRY[name].description
