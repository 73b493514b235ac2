"""Networks: every one is called as `net(x, t, cond=None)` and rebuilt from `net.config`.

A domain package's own network (a class in an onestep module with `config` and a `from_config`
classmethod) is saved under the name "onestep.<module>:<Class>" and rebuilt by importing it."""

from __future__ import annotations

from importlib import import_module

from torch import nn

from onestep.core.nn.dit import DiT
from onestep.core.nn.embed import CondEmbed, SinusoidalEmbedding, TimeEmbed, broadcast_time
from onestep.core.nn.guidance import GuidanceConditioned
from onestep.core.nn.lora import (
    LoRAConv2d,
    LoRALinear,
    apply_lora,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)
from onestep.core.nn.mlp import MLP, ConcatMLP
from onestep.core.nn.precond import EDMPrecond, edm_coefficients
from onestep.core.nn.unet import UNet
from onestep.core.nn.unet1d import UNet1D

NETWORKS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "concat_mlp": ConcatMLP,
    "unet": UNet,
    "unet1d": UNet1D,
    "dit": DiT,
    "edm_precond": EDMPrecond,
    "guidance_cond": GuidanceConditioned,
}


def _external(name: str) -> type[nn.Module]:
    """The class a "onestep.<module>:<Class>" name refers to: a network that a domain package
    defines (e.g. onestep.image's diffusers adapter). Only onestep modules are imported, so a
    model file cannot make us import arbitrary code."""
    module, _, qualname = name.partition(":")
    if not module.startswith("onestep.") or not qualname:
        raise ValueError(f"unknown network {name!r}; known: {sorted(NETWORKS)} or a "
                         "'onestep.<module>:<Class>' network of an installed onestep package")
    try:
        cls = getattr(import_module(module), qualname)
    except ImportError as e:
        raise ValueError(f"network {name!r} needs {module} ({e}); install the onestep package "
                         "that provides it") from None
    except AttributeError:
        raise ValueError(f"network {name!r}: {module} has no {qualname}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and hasattr(cls, "from_config")):
        raise ValueError(f"network {name!r} is not a network class with from_config")
    return cls


def build_network(name: str, config: dict) -> nn.Module:
    """Rebuild a network from `network_name(net)` and `net.config`."""
    if ":" in name:
        return _external(name).from_config(config)
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {sorted(NETWORKS)}")
    if name == "edm_precond":  # config nests the inner network's name and config
        inner = build_network(config["net"]["name"], config["net"]["config"])
        return EDMPrecond(inner, sigma_data=config["sigma_data"])
    if name == "guidance_cond":  # likewise, plus the w embedding's settings
        return GuidanceConditioned.from_config(config)
    return NETWORKS[name](**config)


def network_name(net: nn.Module) -> str:
    """The registry name of `net`'s class (exact type first, then the closest base class)."""
    for name, cls in NETWORKS.items():
        if type(net) is cls:
            return name
    for name, cls in NETWORKS.items():
        if isinstance(net, cls):
            return name
    cls = type(net)
    if cls.__module__.startswith("onestep.") and hasattr(cls, "from_config"):
        return f"{cls.__module__}:{cls.__qualname__}"  # a domain package's network
    raise ValueError(f"{cls.__name__} is not a registered network; known: {sorted(NETWORKS)}")


__all__ = [
    "NETWORKS",
    "MLP",
    "ConcatMLP",
    "CondEmbed",
    "DiT",
    "EDMPrecond",
    "GuidanceConditioned",
    "LoRAConv2d",
    "LoRALinear",
    "SinusoidalEmbedding",
    "TimeEmbed",
    "UNet",
    "UNet1D",
    "apply_lora",
    "broadcast_time",
    "build_network",
    "edm_coefficients",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "network_name",
]
