"""Students built on the teacher's own network, described by a small JSON recipe:

    {"lora": {"rank": r, "alpha": a, "layers": [...]} or None,   LoRA on the frozen teacher
     "guidance": {"dim": d, "scale": s} or None}                 w as an input (nn.guidance)

A LoRA student (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models": W + (a/r) B A
with only A and B trained; LCM-LoRA, Luo et al. 2023, distils a one-step student this way) keeps
every teacher weight frozen, so its own weights are a small fraction of the network: `save_student`
writes only those (`own` keys of `adapted_network`) with the teacher's weight hash, and
`load_student` rebuilds the student from the teacher folder and the recipe.
"""

from __future__ import annotations

import copy
import hashlib
from itertools import chain

import torch
from torch import nn

from ..nn.guidance import GuidanceConditioned
from ..nn.lora import LoRALayer, apply_lora

__all__ = ["adapted_network", "recipe_of", "weights_sha256"]


def adapted_network(net: nn.Module, *, lora_rank: int | None = None,
                    lora_alpha: float | None = None, lora_layers: list[str] | None = None,
                    guidance: dict | None = None) -> tuple[nn.Module, list[str]]:
    """(network, own keys): a copy of the teacher's `net`, wrapped by `GuidanceConditioned`
    (`guidance`: its dim and scale) and/or with LoRA (rank, alpha; on `lora_layers`, names in the
    returned network, or by default on every Linear and Conv2d but the w embedding's own); `own`
    lists the state-dict keys of the weights that are not the teacher's (LoRA factors, the w
    embedding)."""
    net = copy.deepcopy(net)
    teacher_ids = {id(t) for t in chain(net.parameters(), net.buffers())}
    if guidance is not None:
        net = GuidanceConditioned(net, **guidance)
    if lora_rank:
        if lora_layers is not None:
            wanted = set(lora_layers)
            include = wanted.__contains__
        else:  # the w embedding is new: it trains in full, not through an adaptor
            skip = f"{net._embed_name}." if isinstance(net, GuidanceConditioned) else None
            wanted = None

            def include(name: str) -> bool:
                return skip is None or not name.startswith(skip) or name.startswith(skip + "time.")
        chosen = apply_lora(net, lora_rank, lora_alpha, include=include)
        if wanted is not None and set(chosen) != wanted:
            raise ValueError(f"LoRA layers {sorted(wanted - set(chosen))} are not Linear or Conv2d "
                             "layers of the teacher's network")
    state_keys = set(net.state_dict())
    named = chain(net.named_parameters(), net.named_buffers())
    own = [n for n, t in named if id(t) not in teacher_ids and n in state_keys]
    return net, own


def recipe_of(net: nn.Module) -> dict:
    """The recipe `adapted_network` rebuilds `net` from (a plain network: both entries None)."""
    guidance = None
    if isinstance(net, GuidanceConditioned):
        guidance = {"dim": net.config["dim"], "scale": net.config["scale"]}
    layers = {n: m for n, m in net.named_modules() if isinstance(m, LoRALayer)}
    lora = None
    if layers:
        settings = {(m.rank, m.alpha) for m in layers.values()}
        if len(settings) != 1:
            raise ValueError(f"LoRA layers with different (rank, alpha): {sorted(settings)}")
        rank, alpha = settings.pop()
        lora = {"rank": rank, "alpha": alpha, "layers": sorted(layers)}
    return {"lora": lora, "guidance": guidance}


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes, in key order): which
    teacher a LoRA student was trained on."""
    h = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
