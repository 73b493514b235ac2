"""Image data sets: scikit-learn digits, MNIST / Fashion-MNIST IDX files, CIFAR-10 python batches
and folders of image files, each loaded whole as an ImageData of float32 images in [-1, 1].

Nothing is downloaded. digits ships with scikit-learn; Fashion-MNIST is read by default from
Debian's dataset-fashion-mnist package (FASHION_MNIST_DIR); MNIST, CIFAR-10 and image folders are
read from a path you give. uint8 pixels map to [-1, 1] by x / 127.5 - 1 (0 -> -1, 255 -> 1).

Errors: a malformed file or folder raises ImageDataError (a ValueError) whose message is one line
naming the file and the problem; a missing file or folder raises FileNotFoundError naming it.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from onestep.core.data import split as _split_rows

__all__ = [
    "DATASET_NAMES",
    "FASHION_MNIST_DIR",
    "IMAGE_SUFFIXES",
    "ImageData",
    "ImageDataError",
    "load_cifar10",
    "load_digits",
    "load_idx",
    "load_image_folder",
    "load_images",
    "load_mnist",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's dataset-fashion-mnist package puts train-images-idx3-ubyte.gz and the rest."""

IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"
)
"""File name endings (any case) that load_image_folder reads; other files are skipped."""

DATASET_NAMES = ("digits", "mnist", "fashion-mnist", "cifar10")
"""The names load_images accepts besides paths."""


class ImageDataError(ValueError):
    """A malformed data file or folder; the message is one line naming it and the problem."""


def _oneline(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _from_uint8(arr: np.ndarray) -> Tensor:
    """uint8 array (N, C, H, W) -> contiguous float32 tensor in [-1, 1] (0 -> -1, 255 -> 1)."""
    x = np.ascontiguousarray(arr, dtype=np.float32)  # a fresh, writable copy
    x /= 127.5
    x -= 1.0
    return torch.from_numpy(x)


# ----------------------------------------------------------------------------------------------
# The container


@dataclass(frozen=True, eq=False)
class ImageData:
    """A whole image data set in memory.

    images: float32 (N, C, H, W) in [-1, 1]; labels: int64 (N,) in [0, num_classes), or None;
    num_classes: 0 when unlabelled; name: for logs and plots; class_names: one per class where
    the source names them (image folders' sub-folders), else ().
    """

    images: Tensor
    labels: Tensor | None = None
    num_classes: int = 0
    name: str = ""
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        x = self.images
        if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"images must be a floating (N, C, H, W) tensor, got {got}")
        n = x.shape[0]
        if self.labels is None:
            if self.num_classes != 0 or self.class_names:
                raise ValueError("num_classes must be 0 and class_names empty without labels")
        else:
            y = self.labels
            if not isinstance(y, Tensor) or y.dtype != torch.int64 or tuple(y.shape) != (n,):
                raise ValueError(f"labels must be an int64 tensor of shape ({n},)")
            if n and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(
                    f"labels must lie in [0, {self.num_classes}), found "
                    f"[{int(y.min())}, {int(y.max())}]"
                )
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class_names for num_classes={self.num_classes}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    def __repr__(self) -> str:
        c, h, w = self.shape
        labels = f", num_classes={self.num_classes}" if self.labels is not None else ""
        return f"ImageData({self.name!r}, {len(self)} x {c}x{h}x{w}{labels})"

    def subset(self, indices: Sequence[int] | Tensor | np.ndarray) -> ImageData:
        """The images (and labels) at indices (integers or a boolean mask), in that order."""
        idx = torch.as_tensor(indices)
        if idx.dtype != torch.bool:
            idx = idx.long()
        labels = None if self.labels is None else self.labels[idx]
        return ImageData(self.images[idx], labels, self.num_classes, self.name, self.class_names)

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple[ImageData, ImageData]:
        """Deterministic random (train, val) split, as onestep.core.data.split does for rows."""
        train_idx, val_idx = _split_rows(torch.arange(len(self)), val_fraction, seed)
        return self.subset(train_idx), self.subset(val_idx)


# ----------------------------------------------------------------------------------------------
# scikit-learn digits


def load_digits() -> ImageData:
    """scikit-learn's embedded digits: 1797 grey 8x8 images (1, 8, 8), labels 0-9.

    Pixel values 0..16 map to [-1, 1] by x / 8 - 1. Nothing is downloaded.
    """
    from sklearn.datasets import load_digits as sk_load_digits  # slow import; only when used

    bunch = sk_load_digits()
    x = bunch.images.astype(np.float32)[:, None] / 8.0 - 1.0  # (1797, 1, 8, 8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return ImageData(torch.from_numpy(np.ascontiguousarray(x)), labels, 10, "digits")


# ----------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)

_IDX_IMAGES = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, cols)
_IDX_LABELS = 0x00000801  # unsigned bytes, 1 dimension (N,)
_IDX_WHAT = {_IDX_IMAGES: "IDX ubyte images", _IDX_LABELS: "IDX ubyte labels"}


def _read_file(path: Path) -> tuple[bytes, bool]:
    """The file's bytes, gunzipped if they start with gzip's magic 1f 8b; and whether they were."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ImageDataError(f"{path}: is a folder, expected a file")
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw, False
    try:
        return gzip.decompress(raw), True
    except (OSError, EOFError, zlib.error) as e:
        raise ImageDataError(f"{path}: corrupt or truncated gzip data ({_oneline(e)})") from None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX ubyte array with the given magic number, checked against the file's length."""
    data, gunzipped = _read_file(path)
    what = _IDX_WHAT[magic]
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    unzipped = " (after gunzip)" if gunzipped else ""
    if len(data) < 4:
        raise ImageDataError(
            f"{path}: truncated: {len(data)} bytes{unzipped}, too short for an IDX header"
        )
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        hint = f"; this is an {_IDX_WHAT[found]} file" if found in _IDX_WHAT else ""
        if path.suffix.lower() == ".gz" and not gunzipped:
            hint += "; the file is not gzip-compressed despite its .gz name"
        raise ImageDataError(
            f"{path}: wrong magic number 0x{found:08x} ({found}), expected 0x{magic:08x} "
            f"({magic}) for {what}{hint}"
        )
    if len(data) < header:
        raise ImageDataError(
            f"{path}: truncated: the {what} header needs {header} bytes, found {len(data)}"
            f"{unzipped}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "trailing bytes"
        raise ImageDataError(
            f"{path}: {problem}: expected {expected} bytes{unzipped} for {what} of shape "
            f"{dims}, found {len(data)}"
        )
    if expected == header:
        raise ImageDataError(f"{path}: empty: {what} of shape {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _idx_name(path: Path) -> str:
    return path.name[:-3] if path.name.lower().endswith(".gz") else path.name


def load_idx(
    images_path: str | Path, labels_path: str | Path | None = None, *, name: str | None = None
) -> ImageData:
    """Grey images (N, 1, H, W) from an IDX ubyte image file (magic 0x00000803 = 2051, then N, H,
    W as big-endian uint32, then the pixels), with labels from an IDX ubyte label file (magic
    0x00000801 = 2049, then N) when labels_path is given; num_classes = max label + 1.

    Either file may be gzip-compressed, detected by its content (1f 8b), whatever its name.
    """
    images_path = Path(images_path)
    imgs = _read_idx(images_path, _IDX_IMAGES)
    labels, num_classes = None, 0
    if labels_path is not None:
        labels_path = Path(labels_path)
        lab = _read_idx(labels_path, _IDX_LABELS)
        if len(lab) != len(imgs):
            raise ImageDataError(
                f"{labels_path}: {len(lab)} labels, but {images_path} has {len(imgs)} images"
            )
        labels, num_classes = torch.from_numpy(lab.astype(np.int64)), int(lab.max()) + 1
    name = _idx_name(images_path) if name is None else name
    return ImageData(_from_uint8(imgs[:, None]), labels, num_classes, name)


_MNIST_SPLITS = {"train": "train", "test": "t10k"}


def _check_split(split: str) -> str:
    if split not in _MNIST_SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _mnist_file(folder: Path, stem: str) -> Path | None:
    """folder/stem, stem.gz, or the same with '.idx' for '-idx' (as some unzippers write)."""
    for s in (stem, stem.replace("-idx", ".idx")):
        for candidate in (folder / s, folder / f"{s}.gz"):
            if candidate.is_file():
                return candidate
    return None


def load_mnist(
    folder: str | Path = FASHION_MNIST_DIR, split: str = "train", *, name: str | None = None
) -> ImageData:
    """MNIST or Fashion-MNIST from a folder with the standard IDX file names.

    split "train": train-images-idx3-ubyte and train-labels-idx1-ubyte; "test": t10k-images-...
    and t10k-labels-...; each may end in .gz. The default folder is Debian's
    dataset-fashion-mnist (Fashion-MNIST). Images (N, 1, 28, 28), labels 0-9. name defaults to
    "<folder name>/<split>".
    """
    folder = Path(folder)
    _check_split(split)
    if not folder.is_dir():
        hint = (
            " (install Debian's dataset-fashion-mnist package, or pass the folder)"
            if folder == FASHION_MNIST_DIR
            else ""
        )
        raise FileNotFoundError(f"{folder}: no such folder{hint}")
    prefix = _MNIST_SPLITS[split]
    paths = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        stem = f"{prefix}-{kind}"
        path = _mnist_file(folder, stem)
        if path is None:
            raise FileNotFoundError(f"{folder}: no {stem} or {stem}.gz (the {split} split)")
        paths.append(path)
    name = f"{folder.name}/{split}" if name is None else name
    return load_idx(*paths, name=name)


# ----------------------------------------------------------------------------------------------
# CIFAR-10 python batches

_CIFAR_BATCHES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_CIFAR_ROW = 3 * 32 * 32


def _entry(batch: dict, key: str):
    return batch[key.encode()] if key.encode() in batch else batch.get(key)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data (N, 3072) uint8, labels (N,) int64) from one pickled CIFAR-10 batch."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a CIFAR-10 python batch)")
    try:
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
    except Exception as e:  # pickle raises nearly anything on a damaged file
        raise ImageDataError(f"{path}: cannot unpickle a CIFAR-10 batch ({_oneline(e)})") from None
    if not isinstance(batch, dict):
        raise ImageDataError(f"{path}: expected a pickled dict, found {type(batch).__name__}")
    data, labels = _entry(batch, "data"), _entry(batch, "labels")
    for key, value in (("data", data), ("labels", labels)):
        if value is None:
            keys = ", ".join(sorted(repr(k) for k in batch)[:8])
            raise ImageDataError(f"{path}: no b'{key}' entry (keys: {keys or 'none'})")
    try:
        data, labels = np.asarray(data), np.asarray(labels)
    except ValueError as e:
        raise ImageDataError(f"{path}: b'data'/b'labels' are not arrays ({_oneline(e)})") from None
    if data.ndim != 2 or data.shape[1] != _CIFAR_ROW:
        raise ImageDataError(
            f"{path}: b'data' has shape {data.shape}, expected (N, {_CIFAR_ROW}) rows "
            "(1024 red, 1024 green, 1024 blue values of a 32x32 image)"
        )
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or (
            data.size and (data.min() < 0 or data.max() > 255)
        ):
            raise ImageDataError(f"{path}: b'data' must hold bytes 0..255, found {data.dtype}")
        data = data.astype(np.uint8)
    if labels.ndim != 1 or len(labels) != len(data):
        raise ImageDataError(
            f"{path}: {labels.size} labels in b'labels' for {len(data)} images in b'data'"
        )
    if labels.size and (
        not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 9
    ):
        raise ImageDataError(f"{path}: b'labels' must be integers 0..9")
    return data, labels.astype(np.int64)


def load_cifar10(folder: str | Path, split: str = "train") -> ImageData:
    """CIFAR-10 from its python batches: folder is cifar-10-batches-py (or the folder holding it).

    split "train": data_batch_1 .. data_batch_5 (50000 images); "test": test_batch (10000). Each
    batch is a pickled dict with b'data', (N, 3072) uint8 rows (the 1024 red, then green, then
    blue values of a row-major 32x32 image), and b'labels', N integers 0-9. Images (N, 3, 32, 32).

    The batches are pickles, and unpickling can run arbitrary code: load only files you trust.
    """
    folder = Path(folder)
    names = _CIFAR_BATCHES.get(split)
    if names is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    parts = [_read_cifar_batch(folder / n) for n in names]
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    images = _from_uint8(data.reshape(-1, 3, 32, 32))
    return ImageData(images, torch.from_numpy(labels), 10, f"cifar10/{split}")


# ----------------------------------------------------------------------------------------------
# Folders of image files


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    """Image files (by suffix) under folder, sorted; hidden files and folders are skipped."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def _resize_center_crop(im: Image.Image, size: int) -> Image.Image:
    """Scale the short side to size (bicubic; untouched if already so), then crop the centre."""
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def _load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """(size, size, channels) uint8 from one image file."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if "A" in im.getbands() or "transparency" in im.info:  # composite onto white
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, im.convert("RGBA"))
            im = _resize_center_crop(im.convert("RGB" if channels == 3 else "L"), size)
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:  # Pillow raises many types on damaged files
        raise ImageDataError(f"{path}: cannot read as an image ({_oneline(e)})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def load_image_folder(folder: str | Path, size: int, channels: int = 3) -> ImageData:
    """Every image file in a folder, each scaled so its short side is size (bicubic) and
    centre-cropped to size x size; channels 3 (RGB) or 1 (grey). Images (N, channels, size, size).

    Layouts: image files directly in folder (unlabelled), or class sub-folders (images anywhere
    below each; labels 0.. by sorted sub-folder name, kept in class_names; sub-folders without
    images are ignored), not both. Files are read in sorted order; files whose names do not end
    in IMAGE_SUFFIXES, and hidden files and folders, are skipped; transparency is composited onto
    white; EXIF orientation is applied. The whole set is held in memory as float32.
    """
    folder = Path(folder)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ImageDataError(f"{folder}: is a file, expected a folder of images")
    top = _image_files(folder, recursive=False)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = [(d.name, files) for d in subdirs if (files := _image_files(d, recursive=True))]
    if top and classes:
        raise ImageDataError(
            f"{folder}: holds images both at the top ({top[0].name}, ...) and in class "
            f"sub-folders ({classes[0][0]}/, ...); use one layout"
        )
    if not top and not classes:
        raise ImageDataError(
            f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)} files in it "
            "and in its sub-folders)"
        )
    if classes:
        files = [f for _, fs in classes for f in fs]
        labels = torch.tensor([k for k, (_, fs) in enumerate(classes) for _ in fs])
        class_names = tuple(c for c, _ in classes)
    else:
        files, labels, class_names = top, None, ()
    arr = np.stack([_load_image(f, size, channels) for f in files])  # (N, size, size, C)
    images = _from_uint8(arr.transpose(0, 3, 1, 2))
    return ImageData(images, labels, len(class_names), folder.name, class_names)


# ----------------------------------------------------------------------------------------------
# The front door


def _only(spec: object, **options: object) -> None:
    given = [k for k, v in options.items() if v is not None]
    if given:
        raise ValueError(f"{spec}: option {', '.join(given)} does not apply to this data set")


def load_images(
    spec: str | Path,
    *,
    split: str | None = None,
    root: str | Path | None = None,
    size: int | None = None,
    channels: int | None = None,
) -> ImageData:
    """Load an image data set by name or path.

    Names: "digits" (scikit-learn's, embedded); "fashion-mnist" (root, default FASHION_MNIST_DIR)
    and "mnist" (root required), the IDX files of load_mnist; "cifar10" (root required, the
    cifar-10-batches-py folder). split "train" (default) or "test" for mnist, fashion-mnist and
    cifar10.
    Paths: an IDX image file (unlabelled; load_idx takes a label file); a folder with the
    standard MNIST file names (load_mnist; split); a CIFAR-10 batches folder (load_cifar10;
    split); any other folder is an image folder (load_image_folder; size required, channels
    3 by default). A string that is a data set name is taken as the name; pass a Path for a
    folder of that name. Options that do not apply to the data set are errors.
    """
    if isinstance(spec, str):
        key = spec.strip().lower().replace("_", "-")
        key = {"cifar-10": "cifar10", "fashionmnist": "fashion-mnist"}.get(key, key)
        if key in DATASET_NAMES:
            _only(key, size=size, channels=channels)
            if key == "digits":
                _only(key, split=split, root=root)
                return load_digits()
            split = split or "train"
            if key == "fashion-mnist":
                folder = FASHION_MNIST_DIR if root is None else root
                return load_mnist(folder, split, name=f"fashion-mnist/{split}")
            if root is None:
                where = (
                    "the folder with train-images-idx3-ubyte[.gz] etc."
                    if key == "mnist"
                    else "the cifar-10-batches-py folder"
                )
                raise ValueError(f"{key}: give root=, {where} (it has no default folder)")
            if key == "mnist":
                return load_mnist(root, split, name=f"mnist/{split}")
            return load_cifar10(root, split)
    path = Path(spec)
    if not path.exists():
        raise ImageDataError(
            f"{spec}: neither a data set name ({', '.join(DATASET_NAMES)}) nor an existing "
            "path (an IDX image file, a CIFAR-10 batches folder, an MNIST folder or an image "
            "folder)"
        )
    _only(path, root=root)
    if path.is_file():
        _only(path, split=split, size=size, channels=channels)
        return load_idx(path)
    if any(_mnist_file(path, f"{p}-images-idx3-ubyte") for p in _MNIST_SPLITS.values()):
        _only(path, size=size, channels=channels)
        return load_mnist(path, split or "train")
    if (path / "cifar-10-batches-py").is_dir() or any(
        (path / n).is_file() for names in _CIFAR_BATCHES.values() for n in names
    ):
        _only(path, size=size, channels=channels)
        return load_cifar10(path, split or "train")
    _only(path, split=split)
    if size is None:
        raise ValueError(f"{path}: an image folder needs size= (images become size x size)")
    return load_image_folder(path, size, 3 if channels is None else channels)
