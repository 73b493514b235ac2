"""Networks: every one is called as `net(x, t, cond=None)` and rebuilt from `net.config`."""

from __future__ import annotations

from torch import nn

from onestep.core.nn.dit import DiT
from onestep.core.nn.embed import CondEmbed, SinusoidalEmbedding, TimeEmbed, broadcast_time
from onestep.core.nn.lora import (
    LoRAConv2d,
    LoRALinear,
    apply_lora,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)
from onestep.core.nn.mlp import MLP
from onestep.core.nn.precond import EDMPrecond, edm_coefficients
from onestep.core.nn.unet import UNet

NETWORKS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "unet": UNet,
    "dit": DiT,
    "edm_precond": EDMPrecond,
}


def build_network(name: str, config: dict) -> nn.Module:
    """Rebuild a network from `network_name(net)` and `net.config`."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {sorted(NETWORKS)}")
    if name == "edm_precond":  # config nests the inner network's name and config
        inner = build_network(config["net"]["name"], config["net"]["config"])
        return EDMPrecond(inner, sigma_data=config["sigma_data"])
    return NETWORKS[name](**config)


def network_name(net: nn.Module) -> str:
    """The registry name of `net`'s class (exact type first, then the closest base class)."""
    for name, cls in NETWORKS.items():
        if type(net) is cls:
            return name
    for name, cls in NETWORKS.items():
        if isinstance(net, cls):
            return name
    raise ValueError(f"{type(net).__name__} is not a registered network; known: {sorted(NETWORKS)}")


__all__ = [
    "NETWORKS",
    "MLP",
    "CondEmbed",
    "DiT",
    "EDMPrecond",
    "LoRAConv2d",
    "LoRALinear",
    "SinusoidalEmbedding",
    "TimeEmbed",
    "UNet",
    "apply_lora",
    "broadcast_time",
    "build_network",
    "edm_coefficients",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "network_name",
]
