"""Wav files in and out (soundfile, which bundles libsndfile: no system package) and resampling
(torchaudio's windowed-sinc `functional.resample`).

Samples are mono float32 in [-1, 1]; a multi-channel file is averaged to mono. Every failure a
user can cause (a missing, empty or unreadable file, a rate other than the one required) is an
`AudioError`: one line naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["AudioError", "read_wav", "resample", "write_wav"]


class AudioError(ValueError):
    """An audio file cannot be used as asked (missing, empty, unreadable, wrong sample rate)."""


def read_wav(path: str | os.PathLike, sample_rate: int | None = None, *,
             resample_to_rate: bool = False) -> tuple[np.ndarray, int]:
    """(samples (T,) float32 mono, sample rate) of the sound file at `path`.

    `sample_rate`: the rate the caller needs; a file at another rate is an AudioError, or with
    `resample_to_rate` it is resampled to it (and that rate is returned).
    """
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioError(f"no such audio file: {path}")
    if path.is_dir():
        raise AudioError(f"{path} is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path} is empty (0 bytes)")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        reason = " ".join((getattr(e, "error_string", "") or str(e)).split()).rstrip(".")
        raise AudioError(f"{path} is not a readable audio file ({reason})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path} holds no samples")
    samples = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(samples).all():
        raise AudioError(f"{path} holds non-finite samples")
    if sample_rate is not None and rate != sample_rate:
        if not resample_to_rate:
            raise AudioError(f"{path} has sample rate {rate} Hz, expected {sample_rate} Hz "
                             "(resample it first)")
        samples, rate = resample(samples, rate, sample_rate), sample_rate
    return np.ascontiguousarray(samples, dtype=np.float32), int(rate)


def write_wav(path: str | os.PathLike, samples, sample_rate: int, *,
              subtype: str = "PCM_16") -> Path:
    """Write mono `samples` (T,) (numpy or torch, values in [-1, 1]; clipped there) to a wav
    file at `path` (its folder is made); `subtype` PCM_16 (LJSpeech's), PCM_24 or FLOAT."""
    import soundfile as sf

    x = _as_numpy(samples)
    if x.ndim != 1 or x.size == 0:
        raise AudioError(f"write_wav needs mono samples of shape (T,) with T > 0, "
                         f"got shape {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise AudioError(f"refusing to write non-finite samples to {path}")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise AudioError(f"sample rate must be a positive integer, got {sample_rate}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(x, -1.0, 1.0), int(sample_rate), subtype=subtype, format="WAV")
    return path


def resample(samples, orig_rate: int, new_rate: int):
    """`samples` (..., T) from `orig_rate` to `new_rate` Hz (torchaudio's band-limited sinc
    interpolation, Hann window); numpy in, float32 numpy out; a tensor in, a tensor out."""
    import torch
    import torchaudio.functional as AF

    for name, rate in (("original", orig_rate), ("new", new_rate)):
        if int(rate) != rate or rate <= 0:
            raise AudioError(f"{name} sample rate must be a positive integer, got {rate}")
    is_tensor = isinstance(samples, torch.Tensor)
    x = samples if is_tensor else torch.from_numpy(np.asarray(samples, dtype=np.float32))
    if not x.is_floating_point():
        x = x.float()
    y = x if orig_rate == new_rate else AF.resample(x, int(orig_rate), int(new_rate))
    return y if is_tensor else y.numpy().astype(np.float32, copy=False)


def _as_numpy(samples) -> np.ndarray:
    if hasattr(samples, "detach"):
        samples = samples.detach().cpu().numpy()
    return np.asarray(samples, dtype=np.float32)
