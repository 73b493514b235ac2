"""Sample quality of image generators in a trained feature net's space (see features.py).

`evaluate(samples, reference, net)` reports, for N samples against a reference set of real images:
  fd            Fréchet distance of the net's penultimate features, labelled FD-<net> (never FID)
  kid           KID (polynomial-kernel unbiased MMD^2 over random subsets): mean and std
  precision     improved precision (Kynkäänniemi et al. 2019), k-th neighbour balls: fidelity
  recall        improved recall: how much of the reference the samples cover
  label_entropy entropy in nats of the net's predicted-class histogram over the samples (mode
                coverage: 0 when every sample is one class, log(num_classes) when uniform)
`noise_floor(train_images, reference, net, n)` is the same for n real training images, which is
what "no gap" scores at this N: FD and KID are biased at small N, so a sample set's numbers mean
something only next to it. `load_samples(path)` reads sample files (.npz / .npy).

Metric functions are onestep.core.metrics' (frechet_distance, kid, precision_recall).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from onestep.core.metrics import extract_features, frechet_distance, kid, precision_recall

from .data import ImageData, ImageDataError
from .features import FeatureNet

__all__ = ["RANGE_LIMIT", "evaluate", "load_samples", "noise_floor", "sample_features"]

RANGE_LIMIT = 1.5
"""Samples may lie in [-RANGE_LIMIT, RANGE_LIMIT]; values outside [-1, 1] are clamped to it for
the feature net (and counted in "out_of_range"); anything beyond RANGE_LIMIT is an error, as it
usually means another scale ([0, 255] pixels, unnormalised data)."""


class _FeaturesAndLogits(nn.Module):
    """(N, C, H, W) -> (N, feature_dim + num_classes): features then logits, in one pass."""

    def __init__(self, net: FeatureNet):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        f, logits = self.net.features_and_logits(x.float())
        return torch.cat([f, logits], dim=1)


def _shape_text(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _images(x, what: str) -> Tensor:
    """An ImageData's images, or a tensor / array (N, C, H, W), as a float tensor."""
    if isinstance(x, ImageData):
        return x.images
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a tensor, an array or an ImageData, got "
                        f"{type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{what} must be images (N, C, H, W), got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype == torch.uint8):
        raise ValueError(f"{what} must be floating images in [-1, 1], got dtype {x.dtype}")
    if x.dtype == torch.uint8:
        raise ValueError(f"{what} are uint8 pixels; convert them to [-1, 1] first "
                         "(x / 127.5 - 1), or read the file with load_samples")
    return x


def _check_images(x: Tensor, expected: tuple[int, ...], what: str, net: FeatureNet) -> Tensor:
    """Checked and clamped float32 copy of x (N, C, H, W); raises one-line ValueErrors."""
    shape = tuple(x.shape[1:])
    if shape != expected:
        hint = ""
        if tuple(x.shape[-1:] + x.shape[1:-1]) == expected:
            hint = " (these look channels-last: permute them to (N, C, H, W))"
        raise ValueError(f"{what} are {_shape_text(shape)} images, but the feature net "
                         f"{net.name} takes {_shape_text(expected)}{hint}")
    n_bad = int((~torch.isfinite(x)).sum())
    if n_bad:
        rows = int((~torch.isfinite(x.reshape(len(x), -1))).any(1).sum())
        raise ValueError(f"{what}: {n_bad} NaN or infinite values in {rows} of {len(x)} images")
    if len(x):
        lo, hi = float(x.min()), float(x.max())
        if lo < -RANGE_LIMIT or hi > RANGE_LIMIT:
            raise ValueError(f"{what} range over [{lo:.4g}, {hi:.4g}]; expected images in "
                             f"[-1, 1] (values within +-{RANGE_LIMIT} are clamped)")
    return x.float().clamp(-1.0, 1.0)


def sample_features(
    net: FeatureNet, images, *, batch_size: int = 256, what: str = "images"
) -> tuple[Tensor, Tensor]:
    """(features (N, feature_dim) float64, logits (N, num_classes) float64), both on the CPU, of
    images (N, C, H, W) in [-1, 1] (checked, and clamped to [-1, 1] as in evaluate)."""
    x = _check_images(_images(images, what), net.image_shape, what, net)
    out = extract_features(_FeaturesAndLogits(net), x, batch_size)
    return out[:, : net.feature_dim], out[:, net.feature_dim :]


def _entropy_nats(counts: Tensor) -> float:
    p = counts.double() / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum()) if len(p) else 0.0


def evaluate(
    samples,
    reference,
    feature_net: FeatureNet,
    *,
    labels_of_samples=None,
    batch_size: int = 256,
    k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    seconds_per_image: float | None = None,
    reference_features: tuple[Tensor, Tensor] | None = None,
) -> dict:
    """Sample quality of `samples` against `reference` in feature_net's feature space.

    samples, reference: images (N, C, H, W) in [-1, 1] (tensors, arrays or ImageData) of the
    shape the feature net was trained on. Values slightly outside [-1, 1] (up to RANGE_LIMIT =
    1.5) are clamped to [-1, 1] for the feature net; their fraction is reported as
    "out_of_range". A shape mismatch, NaN or infinite values, or values beyond RANGE_LIMIT are
    ValueErrors. labels_of_samples (N,): the classes the samples were asked for (class-conditional
    generation), giving "class_accuracy", the fraction the feature net classifies as asked.
    reference_features: sample_features(feature_net, reference) computed once, for evaluating
    several sample sets against one reference.

    Returns a dict (plain floats, ints, strings and lists: JSON-ready):
      feature_net, fd_label ("FD-<net>"), kid_label ("KID-<net>"): names for tables
      n, n_reference: the sample and reference counts
      fd: Fréchet distance of the Gaussians fitted to the two feature sets
      kid: {"mean", "std"} over kid_subsets subsets of min(kid_subset_size, N, N_ref) points
           (std is the spread over subsets, not a standard error); kid_subset_size: that size
      precision, recall: improved precision/recall with k-th nearest neighbour balls
      label_entropy: entropy in nats of the net's predicted-class histogram over the samples;
      label_entropy_max: log(num_classes), its value for a uniform histogram
      class_histogram: predicted-class counts; classes_covered: classes given at least a tenth of
      their fair share of the samples (n / num_classes / 10, and at least one sample)
      class_accuracy: with labels_of_samples, else None
      out_of_range: fraction of sample values that were clamped
      seconds_per_image: passed through (None when not given)
    """
    net = feature_net
    if not isinstance(net, FeatureNet):
        raise TypeError(f"feature_net must be a FeatureNet, got {type(net).__name__}")
    x = _images(samples, "samples")
    n = len(x)
    if n < k + 1 or n < 2:
        raise ValueError(f"need at least {max(2, k + 1)} samples (k={k} neighbours), got {n}")
    if labels_of_samples is not None:
        y = torch.as_tensor(labels_of_samples)
        if y.ndim != 1 or len(y) != n or y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"labels_of_samples must be {n} integer labels, got "
                             f"{y.dtype} of shape {tuple(y.shape)}")
        if n and (int(y.min()) < 0 or int(y.max()) >= net.num_classes):
            raise ValueError(f"labels_of_samples must lie in [0, {net.num_classes}), found "
                             f"[{int(y.min())}, {int(y.max())}]")
    if seconds_per_image is not None and not (
        isinstance(seconds_per_image, (int, float)) and seconds_per_image >= 0
    ):
        raise ValueError(f"seconds_per_image must be a number >= 0, got {seconds_per_image!r}")

    if reference_features is None:
        ref = _images(reference, "reference images")
        if len(ref) < k + 1:
            raise ValueError(f"need at least {k + 1} reference images (k={k} neighbours), "
                             f"got {len(ref)}")
        ref_feats, _ = sample_features(net, ref, batch_size=batch_size,
                                       what="reference images")
    else:
        ref_feats = reference_features[0]
        if ref_feats.ndim != 2 or ref_feats.shape[1] != net.feature_dim or len(ref_feats) < k + 1:
            raise ValueError(f"reference_features must be ({k + 1} or more, {net.feature_dim}) "
                             f"features of {net.name}, got {tuple(ref_feats.shape)}")
    feats, logits = sample_features(net, x, batch_size=batch_size, what="samples")
    out_of_range = float((x.abs() > 1).double().mean())

    predicted = logits.argmax(1)
    counts = torch.bincount(predicted, minlength=net.num_classes)
    share = max(1.0, n / net.num_classes / 10.0)
    kid_stats = kid(feats, ref_feats, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    pr = precision_recall(ref_feats, feats, k=k)
    return {
        "feature_net": net.name,
        "fd_label": net.fd_label,
        "kid_label": f"KID-{net.name}",
        "n": n,
        "n_reference": len(ref_feats),
        "fd": frechet_distance(feats, ref_feats),
        "kid": kid_stats,
        "kid_subset_size": min(kid_subset_size, n, len(ref_feats)),
        "precision": pr["precision"],
        "recall": pr["recall"],
        "label_entropy": _entropy_nats(counts),
        "label_entropy_max": math.log(net.num_classes),
        "label_entropy_unit": "nats",
        "class_histogram": [int(c) for c in counts],
        "classes_covered": int((counts.double() >= share).sum()),
        "num_classes": net.num_classes,
        "class_accuracy": (
            float((predicted == y.long()).double().mean())
            if labels_of_samples is not None
            else None
        ),
        "out_of_range": out_of_range,
        "seconds_per_image": None if seconds_per_image is None else float(seconds_per_image),
    }


def noise_floor(
    train_images,
    reference,
    feature_net: FeatureNet,
    n: int,
    *,
    seed: int = 0,
    **kwargs,
) -> dict:
    """evaluate() of n real training images (drawn at random without replacement, fixed by seed)
    against the same reference: what a perfect generator scores at this N. Compare a sample
    set's numbers with these, at the same n. train_images: tensor, array or ImageData (with an
    ImageData's labels, the result includes class_accuracy). Other keywords go to evaluate;
    seconds_per_image is None."""
    labels = train_images.labels if isinstance(train_images, ImageData) else None
    x = _images(train_images, "train images")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if n > len(x):
        raise ValueError(f"noise floor at n={n} needs {n} training images; there are only "
                         f"{len(x)} (evaluate fewer samples, or more training images)")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    kwargs.pop("seconds_per_image", None)
    return evaluate(x[idx], reference, feature_net, seed=seed,
                    labels_of_samples=None if labels is None else labels[idx], **kwargs)


def load_samples(path: str | os.PathLike) -> tuple[Tensor, Tensor | None]:
    """(images float32 (N, C, H, W), labels int64 (N,) or None) from a sample file.

    .npz: an "images" array, and optionally "labels"; .npy: the images array alone. Images are
    (N, C, H, W), or (N, H, W) for grey (read as C = 1). Floating arrays are taken as values in
    [-1, 1] (not checked here: evaluate checks the range); uint8 arrays as pixels 0..255, mapped
    by x / 127.5 - 1 as the data loaders do. Errors: FileNotFoundError for a missing file,
    ImageDataError (a ValueError) for anything else, one line naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ImageDataError(f"{path}: is a folder; expected a .npz or .npy sample file")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy"):
        raise ImageDataError(f"{path}: unknown sample file type {suffix or '(none)'!r}; expected "
                             ".npz (arrays 'images' and optional 'labels') or .npy (images)")
    labels = None
    try:
        loaded = np.load(path, allow_pickle=False)
        if suffix == ".npz":
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ImageDataError(f"{path}: not a .npz archive")
            with loaded:
                if "images" not in loaded.files:
                    keys = ", ".join(repr(k) for k in loaded.files[:8]) or "none"
                    raise ImageDataError(f"{path}: no 'images' array (arrays: {keys})")
                images = loaded["images"]
                labels = loaded["labels"] if "labels" in loaded.files else None
        else:
            if not isinstance(loaded, np.ndarray):
                raise ImageDataError(f"{path}: not a .npy array")
            images = loaded
    except ImageDataError:
        raise
    except Exception as e:  # numpy raises ValueError, OSError, zipfile errors, EOFError ...
        text = " ".join(str(e).split())
        raise ImageDataError(f"{path}: cannot read ({type(e).__name__}: {text})") from None

    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise ImageDataError(f"{path}: images have shape {images.shape}; expected (N, C, H, W) "
                             "or (N, H, W)")
    if len(images) == 0:
        raise ImageDataError(f"{path}: no images (shape {images.shape})")
    if images.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 127.5 - 1.0)
    elif np.issubdtype(images.dtype, np.floating):
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    else:
        raise ImageDataError(f"{path}: images have dtype {images.dtype}; expected floats in "
                             "[-1, 1] or uint8 pixels")
    if labels is not None:
        if labels.ndim != 1 or len(labels) != len(x) or not np.issubdtype(labels.dtype,
                                                                          np.integer):
            raise ImageDataError(f"{path}: 'labels' must be {len(x)} integers, got dtype "
                                 f"{labels.dtype} and shape {labels.shape}")
        if labels.min() < 0:
            raise ImageDataError(f"{path}: negative labels (min {int(labels.min())})")
        labels = torch.from_numpy(labels.astype(np.int64))
    return x, labels
