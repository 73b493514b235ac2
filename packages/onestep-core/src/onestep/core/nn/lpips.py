"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", Eq. 1) with its weights read from a file, for DMD's regression loss.

    d(x, y) = sum_l 1 / (H_l W_l) sum_{h,w} || w_l * (f^l_hw(x) - f^l_hw(y)) ||_2^2

where f^l are the activations of backbone stage l normalised to unit length over channels and
w_l >= 0 a learned per-channel weight (a 1x1 convolution without bias). The backbones are the
paper's: the torchvision layouts of VGG16's and AlexNet's `features`, cut into five stages as the
reference implementation cuts them. Nothing is downloaded: the weights come from one file holding
a state dict with the reference implementation's key names (`torch.save(lpips.LPIPS(net="vgg")
.state_dict(), path)` writes one): `net.slice{1..5}.<torchvision index>.{weight,bias}` for the
backbone and `lin{0..4}.model.1.weight` for the learned layers; `scaling_layer.{shift,scale}` are
optional (the reference constants otherwise).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LPIPS", "BACKBONES"]

# One stage per tuple: the layers of torchvision's `features` it holds, by index.
# ("conv", c_in, c_out, kernel, stride, padding), ("relu",), ("pool", kernel, stride)
_VGG16 = (
    ((0, ("conv", 3, 64, 3, 1, 1)), (1, ("relu",)), (2, ("conv", 64, 64, 3, 1, 1)), (3, ("relu",))),
    ((4, ("pool", 2, 2)), (5, ("conv", 64, 128, 3, 1, 1)), (6, ("relu",)),
     (7, ("conv", 128, 128, 3, 1, 1)), (8, ("relu",))),
    ((9, ("pool", 2, 2)), (10, ("conv", 128, 256, 3, 1, 1)), (11, ("relu",)),
     (12, ("conv", 256, 256, 3, 1, 1)), (13, ("relu",)), (14, ("conv", 256, 256, 3, 1, 1)),
     (15, ("relu",))),
    ((16, ("pool", 2, 2)), (17, ("conv", 256, 512, 3, 1, 1)), (18, ("relu",)),
     (19, ("conv", 512, 512, 3, 1, 1)), (20, ("relu",)), (21, ("conv", 512, 512, 3, 1, 1)),
     (22, ("relu",))),
    ((23, ("pool", 2, 2)), (24, ("conv", 512, 512, 3, 1, 1)), (25, ("relu",)),
     (26, ("conv", 512, 512, 3, 1, 1)), (27, ("relu",)), (28, ("conv", 512, 512, 3, 1, 1)),
     (29, ("relu",))),
)
_ALEX = (
    ((0, ("conv", 3, 64, 11, 4, 2)), (1, ("relu",))),
    ((2, ("pool", 3, 2)), (3, ("conv", 64, 192, 5, 1, 2)), (4, ("relu",))),
    ((5, ("pool", 3, 2)), (6, ("conv", 192, 384, 3, 1, 1)), (7, ("relu",))),
    ((8, ("conv", 384, 256, 3, 1, 1)), (9, ("relu",))),
    ((10, ("conv", 256, 256, 3, 1, 1)), (11, ("relu",))),
)
BACKBONES = {"vgg": _VGG16, "alex": _ALEX}

# The reference ScalingLayer: inputs in [-1, 1] to the backbone's ImageNet statistics.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _layer(spec) -> nn.Module:
    if spec[0] == "conv":
        _, c_in, c_out, k, s, p = spec
        return nn.Conv2d(c_in, c_out, k, stride=s, padding=p)
    if spec[0] == "relu":
        return nn.ReLU()
    return nn.MaxPool2d(spec[1], spec[2])


def _stage_channels(stage) -> int:
    return [spec[2] for _, spec in stage if spec[0] == "conv"][-1]


class _Backbone(nn.Module):
    def __init__(self, stages):
        super().__init__()
        for i, stage in enumerate(stages, start=1):
            seq = nn.Sequential()
            for index, spec in stage:
                seq.add_module(str(index), _layer(spec))
            self.add_module(f"slice{i}", seq)
        self.num_stages = len(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"slice{i}")(x)
            feats.append(x)
        return feats


class _Scaling(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class _Lin(nn.Module):
    """The reference NetLinLayer: dropout (inactive in eval) then a bias-free 1x1 conv to one
    channel, so its weight is model.1.weight (1, C, 1, 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def normalize_channels(f: Tensor, eps: float = 1e-10) -> Tensor:
    """f / ||f||_2 over the channel axis (the eps inside the root keeps the gradient finite where
    a location's features are all zero)."""
    return f / (f.pow(2).sum(1, keepdim=True) + eps**2).sqrt()


class LPIPS(nn.Module):
    """LPIPS distance (Eq. 1): `lpips(x, y)` of images (B, C, H, W), C in {1, 3}, values in
    [-1, 1], is (B,). One-channel images are repeated to three. `resize` > 0 bilinearly resizes
    both inputs to resize x resize first (the backbones need some spatial extent: VGG16 at least
    16 x 16, AlexNet about 64 x 64). Frozen: build it with `LPIPS.from_file(path, net)`."""

    def __init__(self, net: str = "vgg", *, resize: int = 0):
        super().__init__()
        if net not in BACKBONES:
            raise ValueError(f"unknown LPIPS backbone {net!r}; use one of {sorted(BACKBONES)}")
        if resize < 0:
            raise ValueError(f"LPIPS resize must be >= 0, got {resize}")
        stages = BACKBONES[net]
        self.net_name, self.resize = net, int(resize)
        self.scaling_layer = _Scaling()
        self.net = _Backbone(stages)
        for i, stage in enumerate(stages):
            self.add_module(f"lin{i}", _Lin(_stage_channels(stage)))
        self.requires_grad_(False).eval()

    @classmethod
    def from_file(cls, path: str, net: str = "vgg", *, resize: int = 0) -> LPIPS:
        """The metric with the backbone and linear weights of the state dict saved at `path`.
        A ValueError names what is wrong: no such file, not a state dict, missing keys, or
        tensors of the wrong shape (e.g. AlexNet weights for net="vgg")."""
        if not path or not os.path.isfile(path):
            raise ValueError(f"LPIPS weights file {path!r} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a corrupt or non-torch file
            raise ValueError(f"cannot read LPIPS weights {path!r}: {e}") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise ValueError(f"LPIPS weights {path!r} must hold a state dict of tensors")
        model = cls(net, resize=resize)
        want = model.state_dict()
        state = dict(state)
        for i in range(model.net.num_stages):  # a reference net built without dropout
            old, new = f"lin{i}.model.0.weight", f"lin{i}.model.1.weight"
            if new not in state and old in state:
                state[new] = state.pop(old)
        missing = [k for k in want if k not in state and not k.startswith("scaling_layer.")]
        if missing:
            shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
            raise ValueError(f"LPIPS weights {path!r} lack {len(missing)} tensors of the {net!r} "
                             f"backbone and linear layers: {shown}")
        wrong = [f"{k} {tuple(state[k].shape)} (want {tuple(v.shape)})"
                 for k, v in want.items() if k in state and state[k].shape != v.shape]
        if wrong:
            shown = "; ".join(wrong[:4]) + ("; ..." if len(wrong) > 4 else "")
            raise ValueError(f"LPIPS weights {path!r} do not fit the {net!r} backbone: {shown}")
        model.load_state_dict({k: state[k] for k in want if k in state}, strict=False)
        return model.requires_grad_(False).eval()

    def features(self, x: Tensor) -> list[Tensor]:
        """The normalised stage activations of images x (B, C, H, W)."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS takes images (B, 1 or 3, H, W), got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear",
                              align_corners=False)
        try:
            feats = self.net(self.scaling_layer(x.float()))
        except RuntimeError as e:
            raise ValueError(f"images {tuple(x.shape[-2:])} are too small for the LPIPS "
                             f"{self.net_name!r} backbone ({e}); set a resize") from None
        return [normalize_channels(f) for f in feats]

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS compares equal shapes, got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        b = x.shape[0]
        total = x.new_zeros(b, dtype=torch.float32)
        for i, f in enumerate(self.features(torch.cat([x, y]))):  # one pass over both
            d = getattr(self, f"lin{i}")((f[:b] - f[b:]).pow(2))  # (B, 1, H_l, W_l)
            total = total + d.mean(dim=(1, 2, 3))
        return total
