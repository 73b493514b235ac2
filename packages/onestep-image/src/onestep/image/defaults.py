"""Method configs at image scale (`image_defaults`, beside core's `toy_defaults`): core's toy
config, with the changes a UNet teacher on images needs. Each change names the measurement or the
paper's line that justifies it.
"""

from __future__ import annotations

from onestep.core.distill import toy_config

__all__ = ["image_defaults"]

IMAGE_OVERRIDES: dict[str, dict] = {}
"""Per method, the fields that differ from core's toy config at image scale."""


def image_defaults(method: str, teacher=None, **overrides):
    """The config of `method` for distilling an image teacher: the toy config (adapted to
    `teacher` as core does), then IMAGE_OVERRIDES[method], then `overrides`."""
    return toy_config(method, teacher, **{**IMAGE_OVERRIDES.get(method, {}), **overrides})
