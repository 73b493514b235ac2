"""Image teachers: class-conditional core UNets and DiTs on the EDM path (Karras et al. 2022
preconditioning) or on rectified flow, their training losses with label dropout for
classifier-free guidance, and the (images, labels) data the core Trainer draws batches from.

    data = load_images("digits")
    den = make_teacher(data.shape, num_classes=data.num_classes)          # tiny EDM UNet
    task = LossTask(den, teacher_loss("edm"), lr=5e-3, warmup=100, ema_decay=0.995)
    Trainer(TrainConfig(steps=1000, batch_size=64)).fit(task, training_data(data, den))
    x = sample(den.with_guidance(2.0), noise, nfe=35, solver="heun", cond=labels)

The teacher is a plain core Denoiser around a registered network (UNet, DiT, or EDMPrecond
around one), so `onestep.core.io.save_model` writes it and `load_model` rebuilds it; labels are
the cond the Denoiser, the losses, `sample(..., cond=labels)` and the distillers pass along, and
the null class index `num_classes` (CondEmbed's learned "no label" row) is its `null_cond`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from torch import Tensor, nn

from onestep.core.denoiser import Denoiser
from onestep.core.losses import EDMLoss, FlowMatchingLoss
from onestep.core.nn import DiT, EDMPrecond, UNet
from onestep.core.paths import EDM, RectifiedFlow

from .data import ImageData

__all__ = [
    "ARCHS",
    "OBJECTIVES",
    "PRESETS",
    "SIZES",
    "TINY_RECIPE",
    "count_parameters",
    "make_teacher",
    "network_config",
    "teacher_loss",
    "teacher_num_classes",
    "training_data",
]

ARCHS = ("unet", "dit")
OBJECTIVES = ("edm", "flow")
SIZES = ("tiny", "small", "base")

PRESETS: dict[str, dict[str, dict]] = {
    "unet": {
        # 8x8 digits on a CPU; see make_teacher's docstring for what it does in a minute
        "tiny": dict(base=16, mults=(1, 2), num_res=1, attn_resolutions=()),
        # 28x28 (Fashion-)MNIST on a CPU: levels 28, 14, 7, 0.28M parameters. Measured on one
        # loaded CPU thread, batch 64: 0.75 s per EDM training step; base 32 with attention at
        # 7x7 (1.2M) took 2.3-3 s, too slow for the benchmark's thousands of steps
        "small": dict(base=16, mults=(1, 2, 2), num_res=1, attn_resolutions=()),
        # DDPM's CIFAR-10 network (Ho et al. 2020, App. B: 35.7M parameters), for a GPU
        "base": dict(base=128, mults=(1, 2, 2, 2), num_res=2, attn_resolutions=(2,), dropout=0.1),
    },
    "dit": {
        # max_tokens picks the patch size: the smallest of 2, 4, 8 dividing H and W that leaves
        # at most this many tokens (8x8 -> 2 (16 tokens), 28x28 -> 4 (49), 32x32 -> 4 (64))
        "tiny": dict(hidden=64, depth=4, heads=4, max_tokens=64),
        "small": dict(hidden=128, depth=6, heads=4, max_tokens=64),
        # DiT-S (Peebles & Xie 2023, Table 1: hidden 384, depth 12, 6 heads), for a GPU
        "base": dict(hidden=384, depth=12, heads=6, max_tokens=256),  # 32x32 -> 2 (256)
    },
}
"""Network settings per architecture and size; any of them can be overridden by keyword."""

TINY_RECIPE = dict(steps=1000, batch_size=64, lr=5e-3, warmup=100, ema_decay=0.995)
"""The measured digits recipe for the "tiny" UNet (see make_teacher): about a minute on 1 CPU
thread; the DiT used lr 2e-3."""

EDM_TIME_SCALE = 250.0
"""The inner network's time_scale under EDMPrecond, whose c_noise = ln(sigma) / 4 spans about
[-1.6, 1.1] (see EDMPrecond): a width of ~700 in the sinusoidal embedding, like t in [0, 1]."""


def _patch_size(shape: tuple[int, int], max_tokens: int) -> int:
    """The smallest of 2, 4, 8 dividing H and W that leaves at most `max_tokens` tokens (else the
    largest that divides them; 1 when none does)."""
    h, w = shape
    fits = [p for p in (2, 4, 8) if h % p == 0 and w % p == 0]
    for p in fits:
        if (h // p) * (w // p) <= max_tokens:
            return p
    return fits[-1] if fits else 1


def network_config(image_shape: Sequence[int], *, num_classes: int = 0, arch: str = "unet",
                   size: str = "tiny", objective: str = "edm", **overrides) -> dict:
    """The keyword arguments `make_teacher` gives the core UNet or DiT constructor."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; use one of {list(ARCHS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; use one of {list(SIZES)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; use one of {list(OBJECTIVES)}")
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    if num_classes < 0 or num_classes == 1:
        raise ValueError(f"num_classes must be 0 (unconditional) or at least 2, got {num_classes}")
    channels, height, width = shape
    config = dict(PRESETS[arch][size])
    max_tokens = config.pop("max_tokens", None)
    cls = UNet if arch == "unet" else DiT
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    fixed = {"in_channels", "num_classes", "input_shape", "time_scale"}
    bad = sorted(set(overrides) - (allowed - fixed) - ({"max_tokens"} if arch == "dit" else set()))
    if bad:
        raise ValueError(f"{cls.__name__} takes no setting(s) {bad}; settings: "
                         f"{sorted(allowed - fixed)}")
    max_tokens = overrides.pop("max_tokens", max_tokens)
    config.update(overrides)
    config.update(in_channels=channels, num_classes=num_classes or None)
    if objective == "edm":
        config["time_scale"] = EDM_TIME_SCALE
    if arch == "dit":
        config["input_shape"] = (height, width)
        config.setdefault("patch_size", _patch_size((height, width), max_tokens))
    return config


def make_teacher(image_shape: Sequence[int], *, num_classes: int = 0, arch: str = "unet",
                 objective: str = "edm", size: str = "tiny", sigma_data: float = 0.5,
                 sigma_max: float = 80.0, **overrides) -> Denoiser:
    """A fresh image teacher: a core UNet or DiT as a Denoiser on the EDM path or rectified flow.

    image_shape: (C, H, W). num_classes > 0 makes the network class-conditional on integer labels
    (B,) with the learned null class `num_classes` as the Denoiser's null_cond, which label dropout
    (teacher_loss) trains and classifier-free guidance (`den.with_guidance(w)`) uses.
    objective "edm": EDM(sigma_max, sigma_data) path, the network inside EDMPrecond (Karras et al.
    2022, Table 1 preconditioning, inner time c_noise = ln(sigma)/4 with time_scale 250),
    prediction "x0", time input "sigma". "flow": RectifiedFlow, prediction "velocity", time "t".
    size: a preset of PRESETS[arch]; any network setting (base, mults, num_res, attn_resolutions,
    dropout for the UNet; hidden, depth, heads, mlp_ratio, patch_size or max_tokens for the DiT)
    can be given by keyword to override it.

    Measured on a shared 2-core CPU box with torch.set_num_threads(1) (other jobs were running,
    so the times are upper bounds), class-conditional, AdamW with LossTask's defaults:
      "tiny" on digits 8x8, batch 64, 1000 steps, EMA 0.995, 10 classes, label dropout 0.1:
        UNet EDM  (173,921 parameters, lr 5e-3): 62-77 s; final loss 0.45
        UNet flow (173,921, lr 5e-3):            62 s
        DiT EDM   (328,964, patch 2, lr 2e-3):   59 s
      Sampled with heun, nfe=35, karras schedule: the digits are recognisable (grainy, like the
      8x8 data). A logistic-regression classifier fit on the real digits gives the conditioning
      label to 93% / 94% / 83% (UNet EDM / UNet flow / DiT EDM) of 500 samples without guidance
      and to 99.4% / 99.8% / 98.4% with guidance 2. (base=32, 0.69M parameters, managed only
      400 steps in the same time and gave visibly worse digits.)
      "small" on 28x28 (Fashion-MNIST), batch 128, ms per training step: UNet 1.19M parameters,
      2,800 ms; DiT (patch 4, 49 tokens) 1.87M parameters, 1,140 ms.
    """
    config = network_config(image_shape, num_classes=num_classes, arch=arch, size=size,
                            objective=objective, **overrides)
    net: nn.Module = UNet(**config) if arch == "unet" else DiT(**config)
    null = num_classes if num_classes else None
    if objective == "edm":
        return Denoiser(EDMPrecond(net, sigma_data=sigma_data),
                        EDM(sigma_max=sigma_max, sigma_data=sigma_data),
                        prediction="x0", time_input="sigma", null_cond=null)
    return Denoiser(net, RectifiedFlow(), prediction="velocity", time_input="t", null_cond=null)


def teacher_loss(objective: str, *, label_dropout: float = 0.1, sigma_data: float = 0.5,
                 **options):
    """The core loss for `objective`: EDMLoss(sigma_data) (Karras et al. 2022, Eq. 8 with Table 1's
    P_mean, P_std) or FlowMatchingLoss, each dropping a sample's label to the null class with
    probability `label_dropout` (Ho & Salimans 2022 use 0.1-0.2). Unlabelled batches ignore it.
    `options` go to the loss (p_mean, p_std for EDM; coupling, time_sampler, t_min for flow)."""
    if not 0.0 <= label_dropout <= 1.0:
        raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")
    if objective == "edm":
        return EDMLoss(sigma_data=sigma_data, cond_dropout=label_dropout, **options)
    if objective == "flow":
        return FlowMatchingLoss(cond_dropout=label_dropout, **options)
    raise ValueError(f"unknown objective {objective!r}; use one of {list(OBJECTIVES)}")


def _inner(net: nn.Module) -> nn.Module:
    return net.net if isinstance(net, EDMPrecond) else net


def teacher_num_classes(denoiser: Denoiser) -> int:
    """The number of classes a teacher's network is conditioned on (0: unconditional)."""
    config = getattr(_inner(denoiser.model), "config", None) or {}
    unet = config.get("unet") or {}  # a diffusers UNet2DModel (onestep.image.diffusers)
    return int(config.get("num_classes") or unet.get("num_class_embeds") or 0)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def training_data(data: ImageData, denoiser: Denoiser) -> tuple[Tensor, Tensor] | Tensor:
    """What `Trainer.fit(task, ...)` samples batches from for this teacher: (images, labels) for a
    class-conditional one (each batch reaches the loss as (x, labels) through split_batch), images
    alone for an unconditional one. A conditional teacher needs labels with the same classes."""
    k = teacher_num_classes(denoiser)
    if k == 0:
        return data.images
    if data.labels is None:
        raise ValueError(f"the teacher is conditioned on {k} classes but the data {data.name!r} "
                         "has no labels; make an unconditional teacher (num_classes=0)")
    if data.num_classes != k:
        raise ValueError(f"the teacher is conditioned on {k} classes but the data "
                         f"{data.name!r} has {data.num_classes}")
    return data.images, data.labels
