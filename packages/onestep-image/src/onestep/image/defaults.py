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
        # Measured on the 8x8 digits teacher (TINY_RECIPE; its 35-NFE FD-digits-cnn 2.80, the
        # real-digit floor 2.77), 400 steps with the whole curriculum (total_steps=400), batch
        # 64, one seed: one-step FD 6.47 with pseudo-Huber, 9.92 with L2 (both initialised from
        # the teacher, then the default). The student now starts from scratch, as the paper's
        # (core's ICTConfig.init); --set init=teacher is ECT-style consistency fine-tuning.
        metric="pseudo_huber",
    ),
    "meanflow": dict(
        # core's MeanFlow trains from data by default (the paper's from-scratch model, which
        # needs the paper's hundreds of epochs); `distill` distils the given teacher. On the
        # toy checkerboard (3000 steps, one seed) one-step SW2 over the 50-NFE teacher's is
        # 4.98x from data and 1.67x distilled.
        mode="teacher",
    ),
    "vsd": dict(
        # VSDConfig's own default, 64 (the toy config takes 16 for its small MLPs);
        # on the digits teacher, 300 steps, one seed: one-step FD 4.94 at rank 64, 5.47 at 16.
        lora_rank=64,
    ),
}
"""Per method, the fields that differ from core's toy config at image scale. What the papers'
image recipes ask for and core's toy configs already do is not repeated here: DMD2's GAN head on
the fake UNet's bottleneck and five fake-score updates per generator update, SwiftBrush/VSD's
LoRA fake score, SlimFlow's half-width student UNet, MSD's students per class group of a
class-conditional teacher (tests/test_methods.py checks each). Measured and kept at the toy
value: SlimFlow's distillation distance (the paper's LPIPS needs downloaded weights; on the digits
teacher, 300 reflow + 200 distillation steps on 2000 couplings, one-step FD 9.47 with L2, 11.48
with pseudo-Huber)."""


def image_defaults(method: str, teacher=None, **overrides):
    """The config of `method` for distilling an image teacher: the toy config (adapted to
    `teacher` as core does), then IMAGE_OVERRIDES[method], then `overrides`."""
    return toy_config(method, teacher, **{**IMAGE_OVERRIDES.get(method, {}), **overrides})
