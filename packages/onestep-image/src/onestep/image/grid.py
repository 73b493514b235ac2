"""PNG grids of images in [-1, 1]: `save_grid` (one grid, optional per-image labels and a title),
`save_panels` (several titled grids side by side: real / teacher / student) and
`checkpoint_grid` (sample a teacher on class-balanced labels and save the grid; what a training
run writes at each checkpoint).

Images are (N, C, H, W) with C = 1 (grey) or 3 (RGB), or (N, H, W) grey, as a torch tensor or a
numpy array; values are clamped to [-1, 1] and mapped to 0..255 by (x + 1) * 127.5. Each image is
upscaled by an integer factor with nearest-neighbour (8x8 digits become 64x64 by default) and the
cells are separated by `pad` white pixels. Files are written atomically (a temporary file in the
same folder, then a rename), so a reader never sees half a PNG.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["balanced_labels", "checkpoint_grid", "grid_image", "grid_on_checkpoint",
           "panels_image", "save_grid", "save_panels", "to_uint8"]

BACKGROUND = 255
TEXT = 0
FONT_SIZE = 12


def _font(size: int = FONT_SIZE):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _line_height(font) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return bottom + 2


def _text_width(font, text: str) -> int:
    return int(math.ceil(font.getlength(text)))


def to_uint8(images) -> np.ndarray:
    """(N, H, W, C) uint8 with C = 1 or 3 from images in [-1, 1] (see the module docstring)."""
    if torch.is_tensor(images):
        images = images.detach().to("cpu", torch.float32).numpy()
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError("images must be (N, C, H, W) with C = 1 or 3, or (N, H, W), and N > 0; "
                         f"got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"images hold {int((~np.isfinite(x)).sum())} non-finite values")
    u8 = np.rint((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return u8.transpose(0, 2, 3, 1)


def _auto_scale(height: int, width: int) -> int:
    return max(1, round(64 / max(height, width)))


def grid_image(images, *, nrow: int | None = None, labels: Sequence | None = None,
               title: str | None = None, scale: int | None = None, pad: int = 2) -> Image.Image:
    """A PIL image ("L" for grey, "RGB" for colour) of the images in rows of `nrow`.

    nrow: images per row (torchvision's convention); default ceil(sqrt(N)). scale: integer
    nearest-neighbour upscaling; default round(64 / max(H, W)), at least 1. labels: one per
    image (str() of each is drawn in a strip under it). title: drawn in a strip above the grid.
    Size: width = max(cols * W * scale + (cols + 1) * pad, the title's width + 2 * pad), height =
    title strip + rows * (H * scale + label strip) + (rows + 1) * pad, where the strips are the
    font's line height (plus pad for the title), and 0 when there is no title / are no labels.
    """
    u8 = to_uint8(images)
    n, h, w, c = u8.shape
    if scale is None:
        scale = _auto_scale(h, w)
    if int(scale) != scale or scale < 1 or pad < 0:
        raise ValueError(f"scale must be a positive integer and pad >= 0, got {scale}, {pad}")
    scale = int(scale)
    cols = min(n, nrow or math.ceil(math.sqrt(n)))
    if cols < 1:
        raise ValueError(f"nrow must be positive, got {nrow}")
    rows = math.ceil(n / cols)
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} images")
    font = _font()
    label_h = _line_height(font) if labels is not None else 0
    title_h = _line_height(font) + pad if title else 0
    cell_h, cell_w = h * scale, w * scale
    width = cols * cell_w + (cols + 1) * pad
    if title:
        width = max(width, _text_width(font, title) + 2 * pad)
    height = title_h + rows * (cell_h + label_h) + (rows + 1) * pad
    mode = "L" if c == 1 else "RGB"
    canvas = Image.new(mode, (width, height), BACKGROUND if mode == "L" else (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(canvas)
    ink = TEXT if mode == "L" else (TEXT,) * 3
    if title:
        draw.text((pad, pad), title, fill=ink, font=font)
    big = u8.repeat(scale, axis=1).repeat(scale, axis=2)  # nearest-neighbour upscaling
    for i in range(n):
        r, col = divmod(i, cols)
        x0 = pad + col * (cell_w + pad)
        y0 = title_h + pad + r * (cell_h + label_h + pad)
        tile = big[i, :, :, 0] if c == 1 else big[i]
        canvas.paste(Image.fromarray(tile, mode), (x0, y0))
        if labels is not None:
            draw.text((x0, y0 + cell_h), str(labels[i]), fill=ink, font=font)
    return canvas


def panels_image(panels: Sequence[tuple], *, nrow: int | None = None, scale: int | None = None,
                 pad: int = 2, gap: int = 12, title: str | None = None) -> Image.Image:
    """Titled grids side by side, top-aligned, `gap` pixels apart; each panel is (title, images)
    or (title, images, labels). RGB if any panel is colour, else grey. `title` goes above all."""
    if not panels:
        raise ValueError("save_panels needs at least one (title, images) panel")
    grids = []
    for panel in panels:
        if not isinstance(panel, (tuple, list)) or len(panel) not in (2, 3):
            raise ValueError("each panel is (title, images) or (title, images, labels)")
        name, images, *rest = panel
        grids.append(grid_image(images, nrow=nrow, labels=rest[0] if rest else None,
                                title=str(name), scale=scale, pad=pad))
    mode = "RGB" if any(g.mode == "RGB" for g in grids) else "L"
    grids = [g.convert(mode) for g in grids]
    font = _font()
    top = _line_height(font) + pad if title else 0
    width = sum(g.width for g in grids) + gap * (len(grids) - 1)
    if title:
        width = max(width, _text_width(font, title) + 2 * pad)
    height = top + max(g.height for g in grids)
    canvas = Image.new(mode, (width, height), BACKGROUND if mode == "L" else (BACKGROUND,) * 3)
    if title:
        ImageDraw.Draw(canvas).text((pad, pad), title, fill=TEXT if mode == "L" else (TEXT,) * 3,
                                    font=font)
    x = 0
    for g in grids:
        canvas.paste(g, (x, top))
        x += g.width + gap
    return canvas


def _write_png(image: Image.Image, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_grid(images, path, *, nrow: int | None = None, labels: Sequence | None = None,
              title: str | None = None, scale: int | None = None, pad: int = 2) -> Path:
    """Write `grid_image(images, ...)` to `path` as a PNG (atomically); returns the path."""
    return _write_png(grid_image(images, nrow=nrow, labels=labels, title=title, scale=scale,
                                 pad=pad), path)


def save_panels(panels: Sequence[tuple], path, *, nrow: int | None = None,
                scale: int | None = None, pad: int = 2, gap: int = 12,
                title: str | None = None) -> Path:
    """Write `panels_image(panels, ...)` (titled grids side by side) to `path` as a PNG."""
    return _write_png(panels_image(panels, nrow=nrow, scale=scale, pad=pad, gap=gap,
                                   title=title), path)


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., num_classes - 1, 0, 1, ... (n labels): with nrow = num_classes each column of
    the grid is one class."""
    return torch.arange(n) % num_classes


def checkpoint_grid(denoiser, path, *, n: int | None = None, num_classes: int | None = None,
                    nfe: int = 35, solver: str = "heun", schedule="karras",
                    guidance: float = 1.0, seed: int = 0, title: str | None = None,
                    class_names: Sequence[str] | None = None,
                    image_shape: Sequence[int] | None = None, batch_size: int = 256) -> Path:
    """Sample `denoiser` (a core Denoiser, e.g. a LossTask's EMA module) from fixed noise and save
    a grid; returns the path.

    Conditional teachers (num_classes > 0, default: read from the network) get class-balanced
    labels, one class per column (n defaults to num_classes * (64 // num_classes) up to 16
    classes, else 64), sampled with classifier-free guidance `guidance` (1: none); class_names
    label every image. Unconditional ones: n = 64 in an 8x8 grid. The noise comes from
    torch.Generator().manual_seed(seed) on the CPU, so grids of successive checkpoints show the
    same noise; stochastic solvers get their own generator (seed + 1): the global RNGs are left
alone, as `Trainer.fit(on_checkpoint=)` requires for exact resume. Sampling runs under no_grad
in eval mode; the network's mode is restored.
    image_shape: (C, H, W) of one sample; needed for a UNet (a DiT knows its own).
    """
    from onestep.core.sampling import sample

    from .models import teacher_num_classes

    k = teacher_num_classes(denoiser) if num_classes is None else int(num_classes)
    if n is None:
        n = k * (64 // k) if 2 <= k <= 16 else 64
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    nrow = k if 2 <= k <= 16 else None
    labels = balanced_labels(n, k) if k else None
    params = list(denoiser.parameters())
    device = params[0].device if params else torch.device("cpu")
    shape = _sample_shape(denoiser, image_shape)
    noise = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))
    solver_rng = torch.Generator(device).manual_seed(seed + 1)  # stochastic solvers' noise
    den = denoiser.with_guidance(guidance) if (k and guidance != 1.0) else denoiser
    was_training = denoiser.training
    denoiser.eval()
    try:
        with torch.no_grad():
            out = []
            for i in range(0, n, batch_size):
                cond = None if labels is None else labels[i:i + batch_size].to(device)
                out.append(sample(den, noise[i:i + batch_size].to(device), nfe=nfe,
                                  solver=solver, schedule=schedule, cond=cond,
                                  generator=solver_rng).cpu())
    finally:
        denoiser.train(was_training)
    images = torch.cat(out)
    names = None
    if class_names is not None and labels is not None:
        names = [class_names[int(y)] for y in labels]
    return save_grid(images, path, nrow=nrow, labels=names, title=title)


def grid_on_checkpoint(denoiser, folder, *, name: str = "samples_{step:07d}.png",
                       title: str = "step {step}", **options):
    """A `Trainer.fit(on_checkpoint=...)` callback: at each checkpoint, `checkpoint_grid` of
    `denoiser` (e.g. `task.ema.module`) to folder / name.format(step=step), titled
    title.format(step=step); `options` go to checkpoint_grid (image_shape, nfe, guidance, ...)."""
    folder = Path(folder)

    def on_checkpoint(step: int) -> None:
        checkpoint_grid(denoiser, folder / name.format(step=step),
                        title=title.format(step=step) if title else None, **options)

    return on_checkpoint


def _sample_shape(denoiser, image_shape) -> tuple[int, ...]:
    """(C, H, W) of one sample: `image_shape`, else a DiT's own (a UNet does not fix H and W)."""
    if image_shape is not None:
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
        return shape
    net = denoiser.model
    net = getattr(net, "net", net)  # inside EDMPrecond
    config = getattr(net, "config", None) or {}
    if "input_shape" in config and "in_channels" in config:
        return (int(config["in_channels"]), *(int(s) for s in config["input_shape"]))
    raise ValueError(f"checkpoint_grid needs image_shape=(C, H, W) for a {type(net).__name__} "
                     "(only a DiT knows its input size)")
