"""onestep image: image datasets, image teachers, one-step image distillation and evaluation,
built on onestep.core. Work in progress (see the project's issue on onestep-image): the data
loaders and the diffusers teacher adapter are in; training, sampling, distillation, evaluation and
the demo follow.

    from onestep.image import load_images, from_diffusers
    data = load_images("digits")               # ImageData: images (N, C, H, W) in [-1, 1], labels
    teacher = from_diffusers("path/to/ddpm")   # a core Denoiser for a local diffusers UNet2DModel
"""

from importlib import import_module

_EXPORTS = {
    "ImageData": "data", "ImageDataError": "data", "load_cifar10": "data", "load_digits": "data",
    "load_idx": "data", "load_image_folder": "data", "load_images": "data", "load_mnist": "data",
    "from_diffusers": "diffusers",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import the module that defines `name` on first use (torch loads only when needed)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'onestep.image' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return __all__
