"""Method configs at image scale (`image_defaults`, beside core's `toy_defaults`): core's toy
config, with the changes a UNet teacher on images needs. Each change names the measurement or the
paper's line that justifies it.
"""

from __future__ import annotations

from onestep.core.distill import toy_config

__all__ = ["image_defaults"]

IMAGE_OVERRIDES: dict[str, dict] = {
    "ict": dict(
        # Song & Dhariwal 2023, Sec. 3.3: pseudo-Huber with c = 0.00054 sqrt(d) on images (the
        # toy config's L2 answers low-dimensional multimodal data, see ICTConfig.toy_defaults).
        metric="pseudo_huber",
    ),
}
"""Per method, the fields that differ from core's toy config at image scale. What the papers'
image recipes ask for and core's toy configs already do is not repeated here: DMD2's GAN head on
the fake UNet's bottleneck and five fake-score updates per generator update, SwiftBrush/VSD's
LoRA fake score, SlimFlow's half-width student UNet, MSD's students per class group of a
class-conditional teacher (tests/test_methods.py checks each)."""


def image_defaults(method: str, teacher=None, **overrides):
    """The config of `method` for distilling an image teacher: the toy config (adapted to
    `teacher` as core does), then IMAGE_OVERRIDES[method], then `overrides`."""
    return toy_config(method, teacher, **{**IMAGE_OVERRIDES.get(method, {}), **overrides})
