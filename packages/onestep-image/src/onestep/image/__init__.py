"""onestep image: image datasets, image teachers, one-step image distillation and evaluation,
built on onestep.core. The `onestep-image` command line runs each verb below.

    from onestep.image import load_images, from_diffusers, train, distill, evaluate
    data = load_images("digits")               # ImageData: images (N, C, H, W) in [-1, 1], labels
    teacher = from_diffusers("path/to/ddpm")   # a core Denoiser for a local diffusers UNet2DModel
    train(data="digits", out="runs/teacher")   # the same as `onestep-image train`
"""

from importlib import import_module

_EXPORTS = {
    "ImageData": "data", "ImageDataError": "data", "load_cifar10": "data", "load_digits": "data",
    "load_idx": "data", "load_image_folder": "data", "load_images": "data", "load_mnist": "data",
    "from_diffusers": "diffusers",
    "FeatureNet": "features", "train_features": "features", "load_features": "features",
    "evaluate": "evaluate", "noise_floor": "evaluate", "load_samples": "evaluate",
    "make_teacher": "models", "teacher_loss": "models", "save_grid": "grid", "save_panels": "grid",
    "train": "commands", "sample": "commands", "distill": "commands", "demo": "commands",
    "image_defaults": "defaults",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import the module that defines `name` on first use (torch loads only when needed)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'onestep.image' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return __all__
