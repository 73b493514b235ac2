"""Dispersive regularisation (Wang & He 2025, "Diffuse and Disperse: Image Generation with
Representation Regularization"): a contrastive loss without positive pairs on a network's
intermediate features, added to any regression objective, L = L_diff + lambda * L_disp.

`dispersive_loss(z, variant)` implements the four dispersive variants of the paper's Table 1 on a
batch of features z (B, ...) (flattened to (B, D)); `FeatureHook` collects intermediate outputs
through forward hooks; `DispersiveRegularizer` ties the two for a Distiller (capture features
during a forward, then add `weight * loss`), and `Dispersive(loss_fn, ...)` wraps a teacher loss
`loss_fn(model, batch, *, generator) -> (loss, logs)` (DSMLoss, FlowMatchingLoss...) so that any
`LossTask` trains with it. Not a registered method: a regulariser.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "VARIANTS",
    "Dispersive",
    "DispersiveConfig",
    "DispersiveRegularizer",
    "FeatureHook",
    "default_layers",
    "dispersive_loss",
]

VARIANTS = ("infonce_l2", "infonce_cosine", "hinge", "covariance")


def _flat(z: Tensor) -> Tensor:
    if z.ndim < 2:
        raise ValueError(f"features must be (B, ...) with B samples, got shape {tuple(z.shape)}")
    return z.reshape(z.shape[0], -1).float()


def _sq_l2(z: Tensor) -> Tensor:
    """Squared L2 distances over the full B x B grid (zeros on the diagonal) divided by the
    feature dimension D, the normalisation of the authors' released code."""
    n = z.square().sum(1)
    d2 = n[:, None] + n[None, :] - 2.0 * (z @ z.T)
    return d2.clamp_min(0.0) / z.shape[1]


def dispersive_loss(
    features: Tensor, variant: str = "infonce_l2", *, tau: float = 0.5, margin: float = 1.0
) -> Tensor:
    """Dispersive loss on features (B, ...) (Wang & He 2025, Table 1, "dispersive" column).

    With i, j running over every pair of the batch (the diagonal included):
      "infonce_l2":     log E_ij exp(-D(z_i, z_j) / tau), D = ||z_i - z_j||^2 / dim  (the
                        paper's default variant)
      "infonce_cosine": the same with D = -cos(z_i, z_j)
      "hinge":          E_ij max(0, margin - D(z_i, z_j))^2, D = ||z_i - z_j||^2 / dim
      "covariance":     sum_mn Cov_mn^2 of the l2-normalised features, Cov = z^T z / B taken
                        about the origin. Taken about the batch mean, a fully collapsed batch
                        would have zero covariance, the minimum; about the origin the sum equals
                        the mean squared cosine similarity over pairs, 1 for a collapsed batch
                        and 1/D for an isotropic one.
    Returns a scalar (float32). Lower means more dispersed.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown dispersive variant {variant!r}; known: {list(VARIANTS)}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    z = _flat(features)
    if variant == "infonce_l2":
        d = _sq_l2(z)
        return torch.logsumexp(-d.flatten() / tau, 0) - torch.log(torch.tensor(float(d.numel())))
    if variant == "infonce_cosine":
        u = nn.functional.normalize(z, dim=1)
        d = -(u @ u.T)
        return torch.logsumexp(-d.flatten() / tau, 0) - torch.log(torch.tensor(float(d.numel())))
    if variant == "hinge":
        return (margin - _sq_l2(z)).clamp_min(0.0).square().mean()
    u = nn.functional.normalize(z, dim=1)
    cov = u.T @ u / u.shape[0]  # (D, D)
    return cov.square().sum()


class FeatureHook:
    """Collect the outputs of named submodules of `module` through forward hooks.

    hook = FeatureHook(net, ["blocks.1"]); net(x, t); hook.features -> {"blocks.1": [tensor]}
    Every forward call appends (a guided call batching cond and uncond adds one tensor holding
    both halves). Use `with hook.capture():` to start from an empty record, `clear()` to drop the
    record, `remove()` to detach the hooks. Tuple outputs keep their first element.
    """

    def __init__(self, module: nn.Module, layer_names):
        if isinstance(layer_names, str):
            layer_names = [layer_names]
        names = list(layer_names)
        if not names:
            raise ValueError("FeatureHook needs at least one layer name")
        available = dict(module.named_modules())
        missing = [n for n in names if n not in available]
        if missing:
            shown = [n for n in available if n][:20]
            raise ValueError(
                f"no submodule(s) {missing} in {type(module).__name__}; some names: {shown}"
            )
        self.layer_names = names
        self.features: dict[str, list[Tensor]] = {n: [] for n in names}
        self.enabled = True
        self._handles = [available[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def fn(_module, _inputs, output):
            if not self.enabled:
                return
            if isinstance(output, (tuple, list)):
                output = output[0]
            if torch.is_tensor(output):
                self.features[name].append(output)

        return fn

    def clear(self) -> None:
        for v in self.features.values():
            v.clear()

    def tensors(self) -> list[Tensor]:
        return [t for n in self.layer_names for t in self.features[n]]

    @contextlib.contextmanager
    def capture(self):
        """Clear, record only inside the block, and keep the record for reading afterwards."""
        self.clear()
        self.enabled = True
        try:
            yield self
        finally:
            self.enabled = False

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def default_layers(module: nn.Module) -> list[str]:
    """A default feature layer: the middle block of a `blocks` ModuleList (MLP, DiT), else the
    UNet's second middle layer `mid2`, looked for inside a wrapper's `net` (EDMPrecond). Pass
    names explicitly for anything else."""
    names = dict(module.named_modules())
    blocks = getattr(module, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
        prefix = next(n for n, m in names.items() if m is blocks)
        return [f"{prefix}.{len(blocks) // 2}"]
    if "mid2" in names:
        return ["mid2"]
    inner = getattr(module, "net", None)
    if isinstance(inner, nn.Module):  # a wrapper: EDMPrecond, GuidanceConditioned
        return [f"net.{name}" for name in default_layers(inner)]
    raise ValueError(
        f"cannot choose a default feature layer in {type(module).__name__}; pass "
        "layer names (see dict(net.named_modules()))"
    )


@dataclass(frozen=True)
class DispersiveConfig:
    """The regulariser's settings (Wang & He 2025)."""

    weight: float = 0.5
    """lambda in L = L_diff + lambda L_disp."""
    variant: str = "infonce_l2"
    """One of VARIANTS (Table 1); InfoNCE with squared L2 distance is the paper's default."""
    tau: float = 0.5
    """InfoNCE temperature tau."""
    margin: float = 1.0
    """epsilon of the hinge variant."""

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(
                f"unknown dispersive variant {self.variant!r}; known: {list(VARIANTS)}"
            )
        if self.weight < 0:
            raise ValueError(f"dispersive weight must be >= 0, got {self.weight}")
        if self.tau <= 0:
            raise ValueError(f"dispersive tau must be positive, got {self.tau}")
        if self.margin <= 0:
            raise ValueError(f"dispersive margin must be positive, got {self.margin}")


class DispersiveRegularizer:
    """Dispersive loss on `module`'s intermediate features, for use inside a Distiller's step:

        reg = DispersiveRegularizer(student.model, weight=0.5)
        with reg.capture():
            x0 = generator.generate(noise)
        loss = loss + reg.loss()          # weight * mean over captured tensors

    `layers`: names of submodules (default: `default_layers(module)`).
    """

    def __init__(
        self,
        module: nn.Module,
        layers=None,
        *,
        weight: float = 0.5,
        variant: str = "infonce_l2",
        tau: float = 0.5,
        margin: float = 1.0,
    ):
        self.config = DispersiveConfig(weight=weight, variant=variant, tau=tau, margin=margin)
        self.config.validate()
        self.hook = FeatureHook(module, layers if layers is not None else default_layers(module))
        self.hook.enabled = False

    def capture(self):
        return self.hook.capture()

    def raw_loss(self) -> Tensor:
        """Unweighted mean dispersive loss over the tensors captured by the last `capture`."""
        feats = self.hook.tensors()
        if not feats:
            raise RuntimeError(
                "no features were captured: run the network inside `with reg.capture():`"
            )
        c = self.config
        losses = [dispersive_loss(f, c.variant, tau=c.tau, margin=c.margin) for f in feats]
        return torch.stack(losses).mean()

    def loss(self) -> Tensor:
        return self.config.weight * self.raw_loss()

    def remove(self) -> None:
        self.hook.remove()


class Dispersive:
    """Wrap a loss `loss_fn(model, batch, *, generator) -> (loss, logs)` as
    loss + weight * dispersive_loss(features of `layers` of model.model (a Denoiser's network)
    or of model itself). Logs "disp" (unweighted) and "base_loss"."""

    def __init__(
        self,
        loss_fn,
        layers=None,
        *,
        weight: float = 0.5,
        variant: str = "infonce_l2",
        tau: float = 0.5,
        margin: float = 1.0,
    ):
        self.loss_fn = loss_fn
        self.layers = layers
        self.config = DispersiveConfig(weight=weight, variant=variant, tau=tau, margin=margin)
        self.config.validate()
        self._regs: dict[int, DispersiveRegularizer] = {}

    def _reg(self, model: nn.Module) -> DispersiveRegularizer:
        net = model.model if isinstance(getattr(model, "model", None), nn.Module) else model
        key = id(net)
        if key not in self._regs:
            c = self.config
            self._regs[key] = DispersiveRegularizer(
                net, self.layers, weight=c.weight, variant=c.variant, tau=c.tau, margin=c.margin
            )
        return self._regs[key]

    def __call__(self, model, batch, *, generator=None):
        reg = self._reg(model)
        with reg.capture():
            loss, logs = self.loss_fn(model, batch, generator=generator)
        disp = reg.raw_loss()
        total = loss + self.config.weight * disp
        logs = dict(logs)
        logs["base_loss"] = loss.detach().item()
        logs["disp"] = disp.detach().item()
        logs["loss"] = total.detach().item()
        return total, logs
