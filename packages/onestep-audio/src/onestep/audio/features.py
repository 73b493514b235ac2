"""Log-mel spectrograms (torchaudio's MelSpectrogram) and their inversion by Griffin-Lim
(InverseMelScale, then GriffinLim): the baseline vocoder that teacher and student share, so that
differences in their audio come from the acoustic model.

The spectrogram is the magnitude (power 1) STFT with a Hann window, centred frames (reflect
padding), a Slaney-scale, Slaney-normalised mel filterbank (librosa's defaults, as HiFi-GAN and
Grad-TTS use), and log(max(mel, 1e-5)).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LOG_FLOOR", "MEL_PRESETS", "MelConfig", "griffin_lim", "log_mel",
           "mel_config_for_rate", "mel_to_magnitude", "plot_log_mel", "spectral_convergence",
           "stft_magnitude"]

LOG_FLOOR = 1e-5
"""Magnitudes are clamped to at least this before the log (log-mel floor: -11.51)."""


@dataclass(frozen=True)
class MelConfig:
    """STFT and mel filterbank of a log-mel spectrogram. The defaults are LJSpeech's at
    22.05 kHz as HiFi-GAN (V1) and Grad-TTS use them; MEL_PRESETS["telephone"] is for 8 kHz
    speech such as the asterisk prompts."""

    sample_rate: int = 22050
    """Audio sample rate in Hz."""
    n_fft: int = 1024
    """FFT size: n_fft // 2 + 1 frequency bins."""
    hop: int = 256
    """Samples between frames (11.6 ms at 22.05 kHz)."""
    win: int = 1024
    """Hann window length in samples, at most n_fft."""
    n_mels: int = 80
    """Mel bands."""
    fmin: float = 0.0
    """Lowest frequency of the filterbank in Hz."""
    fmax: float = 8000.0
    """Highest frequency of the filterbank in Hz, at most sample_rate / 2."""

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop", "win", "n_mels"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"MelConfig.{name} must be a positive integer, got {value}")
        if self.win > self.n_fft:
            raise ValueError(f"MelConfig.win ({self.win}) must be at most n_fft ({self.n_fft})")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"MelConfig needs 0 <= fmin < fmax <= sample_rate / 2, got fmin "
                             f"{self.fmin}, fmax {self.fmax} at {self.sample_rate} Hz")
        empty = int((self.filterbank().sum(0) == 0).sum())
        if empty:
            raise ValueError(f"MelConfig: {empty} of the {self.n_mels} mel filters cover no FFT "
                             f"bin (fewer mels, or a larger n_fft than {self.n_fft})")

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    def filterbank(self):
        """The mel filterbank, a float32 tensor (n_freqs, n_mels)."""
        import torchaudio.functional as AF

        with warnings.catch_warnings():  # empty filters are reported by __post_init__
            warnings.simplefilter("ignore", UserWarning)
            return AF.melscale_fbanks(self.n_freqs, float(self.fmin), float(self.fmax),
                                      self.n_mels, self.sample_rate, norm="slaney",
                                      mel_scale="slaney")

    def frames(self, n_samples: int) -> int:
        """Frames of the spectrogram of n_samples samples (centred frames)."""
        return n_samples // self.hop + 1


MEL_PRESETS = {
    "ljspeech": MelConfig(),
    # 8 kHz telephone speech: 32 ms windows, 10 ms hop, 64 bands up to Nyquist
    "telephone": MelConfig(sample_rate=8000, n_fft=512, hop=80, win=256, n_mels=64,
                           fmin=0.0, fmax=4000.0),
}
"""Named configurations: LJSpeech's 22.05 kHz one and an 8 kHz one for telephone speech."""


def mel_config_for_rate(sample_rate: int) -> MelConfig:
    """The preset made for `sample_rate` (22050 or 8000); another rate is a ValueError."""
    for cfg in MEL_PRESETS.values():
        if cfg.sample_rate == sample_rate:
            return cfg
    rates = ", ".join(f"{c.sample_rate} ({n})" for n, c in MEL_PRESETS.items())
    raise ValueError(f"no mel preset for {sample_rate} Hz (presets: {rates}); resample the "
                     "audio or pass a MelConfig")


@functools.lru_cache(maxsize=16)
def _transforms(cfg: MelConfig, device: str):
    import torchaudio.transforms as T

    mel = T.MelSpectrogram(sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win,
                           hop_length=cfg.hop, f_min=float(cfg.fmin), f_max=float(cfg.fmax),
                           n_mels=cfg.n_mels, power=1.0, center=True, pad_mode="reflect",
                           norm="slaney", mel_scale="slaney").to(device)
    inverse = T.InverseMelScale(n_stft=cfg.n_freqs, n_mels=cfg.n_mels,
                                sample_rate=cfg.sample_rate, f_min=float(cfg.fmin),
                                f_max=float(cfg.fmax), norm="slaney", mel_scale="slaney",
                                driver="gelsd" if device == "cpu" else "gels").to(device)
    return mel, inverse


def _tensor(samples):
    import torch

    x = samples if isinstance(samples, torch.Tensor) else torch.from_numpy(
        np.asarray(samples, dtype=np.float32))
    return x.float()


def log_mel(samples, cfg: MelConfig = MelConfig()):
    """Log-mel spectrogram (..., n_mels, frames) of `samples` (..., T) at cfg.sample_rate
    (numpy or torch; a float32 tensor out): log(max(mel magnitude, LOG_FLOOR))."""
    x = _tensor(samples)
    if x.shape[-1] < 2:
        raise ValueError(f"log_mel needs at least 2 samples, got shape {tuple(x.shape)}")
    mel, _ = _transforms(cfg, str(x.device))
    return mel(x).clamp(min=LOG_FLOOR).log()


def mel_to_magnitude(log_mel_spec, cfg: MelConfig = MelConfig()):
    """Linear STFT magnitudes (..., n_freqs, frames) whose mel projection best matches
    exp(log_mel_spec) (..., n_mels, frames): torchaudio's InverseMelScale (least squares,
    then negatives set to zero)."""
    m = _tensor(log_mel_spec)
    if m.shape[-2] != cfg.n_mels:
        raise ValueError(f"log-mel has {m.shape[-2]} bands, the MelConfig {cfg.n_mels}")
    _, inverse = _transforms(cfg, str(m.device))
    return inverse(m.exp())


def griffin_lim(log_mel_spec, cfg: MelConfig = MelConfig(), *, n_iter: int = 64,
                momentum: float = 0.99, length: int | None = None, seed: int = 0):
    """Waveform (..., T) from a log-mel spectrogram (..., n_mels, frames): InverseMelScale, then
    fast Griffin-Lim (Perraudin et al. 2013, torchaudio's GriffinLim) for n_iter iterations
    from a random phase drawn from `seed`; n_iter=0 gives that random-phase start itself
    (one inverse STFT). `length`: the number of samples (default: (frames - 1) * hop)."""
    import torch
    import torchaudio.transforms as T

    if n_iter < 0 or not 0 <= momentum < 1:
        raise ValueError(f"griffin_lim needs n_iter >= 0 and 0 <= momentum < 1, got {n_iter}, "
                         f"{momentum}")
    magnitude = mel_to_magnitude(log_mel_spec, cfg)
    g = torch.Generator(device=magnitude.device).manual_seed(seed)
    window = torch.hann_window(cfg.win, device=magnitude.device)
    if n_iter == 0:
        phase = torch.rand(magnitude.shape, generator=g, device=magnitude.device) * 2 * math.pi
        return torch.istft(torch.polar(magnitude, phase), cfg.n_fft, cfg.hop, cfg.win, window,
                           center=True, length=length)
    gl = T.GriffinLim(n_fft=cfg.n_fft, n_iter=n_iter, win_length=cfg.win, hop_length=cfg.hop,
                      power=1.0, momentum=momentum, length=length,
                      rand_init=True).to(magnitude.device)
    # GriffinLim draws its start from the global generator: seed it here, restore it after
    with torch.random.fork_rng(devices=[] if magnitude.device.type == "cpu"
                               else [magnitude.device]):
        torch.manual_seed(seed)
        return gl(magnitude)


def stft_magnitude(samples, cfg: MelConfig = MelConfig()):
    """|STFT| (..., n_freqs, frames) of `samples` (..., T) with cfg's FFT, hop and Hann
    window (centred frames)."""
    import torch

    x = _tensor(samples)
    window = torch.hann_window(cfg.win, device=x.device)
    shape = x.shape
    spec = torch.stft(x.reshape(-1, shape[-1]), cfg.n_fft, cfg.hop, cfg.win, window,
                      center=True, pad_mode="reflect", return_complex=True).abs()
    return spec.reshape(*shape[:-1], *spec.shape[-2:])


def spectral_convergence(estimate, reference, cfg: MelConfig = MelConfig()) -> float:
    """||S_ref - S_est||_F / ||S_ref||_F on STFT magnitudes (Sturmel & Daudet 2011; Arik et al.
    2019), over the common length of the two waveforms; 0 is a perfect magnitude match."""
    est, ref = _tensor(estimate), _tensor(reference)
    n = min(est.shape[-1], ref.shape[-1])
    s_est, s_ref = stft_magnitude(est[..., :n], cfg), stft_magnitude(ref[..., :n], cfg)
    return float((s_ref - s_est).norm() / s_ref.norm().clamp(min=1e-12))


def plot_log_mel(log_mel_spec, cfg: MelConfig, path: str | os.PathLike,
                 title: str = "") -> Path:
    """Write log-mel (n_mels, frames) as a PNG image: time in seconds, mel band, log magnitude."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = _tensor(log_mel_spec)
    if m.ndim != 2:
        raise ValueError(f"plot_log_mel needs one spectrogram (n_mels, frames), got shape "
                         f"{tuple(m.shape)}")
    seconds = m.shape[1] * cfg.hop / cfg.sample_rate
    fig, ax = plt.subplots(figsize=(max(4.0, min(16.0, 2.0 + 3.0 * seconds)), 3.2))
    image = ax.imshow(m.numpy(), origin="lower", aspect="auto", cmap="magma",
                      extent=(0.0, seconds, 0, cfg.n_mels))
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"mel band ({cfg.fmin:g}-{cfg.fmax:g} Hz)")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="log magnitude")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
