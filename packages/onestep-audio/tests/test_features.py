"""Log-mel spectrograms against closed forms, the mel configuration's checks, and Griffin-Lim on
a real recording."""

import math

import numpy as np
import pytest
import torch

from onestep.audio.features import (
    LOG_FLOOR,
    MEL_PRESETS,
    MelConfig,
    griffin_lim,
    log_mel,
    mel_config_for_rate,
    mel_to_magnitude,
    spectral_convergence,
    stft_magnitude,
)
from onestep.audio.io import read_wav


def _slaney_mel(hz):
    """Slaney's mel scale (the Auditory Toolbox's): linear to 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(hz < 1000.0, hz * 3.0 / 200.0,
                    15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / log_step)


def _slaney_hz(mel):
    log_step = math.log(6.4) / 27.0
    return np.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * np.exp(log_step * (mel - 15.0)))


def _band_centres(cfg):
    edges = np.linspace(_slaney_mel(cfg.fmin), _slaney_mel(cfg.fmax), cfg.n_mels + 2)
    return _slaney_hz(edges[1:-1])


def _sine(freq, rate, seconds=1.0, amp=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("preset", ["ljspeech", "telephone"])
def test_log_mel_of_a_sine_peaks_in_the_band_centred_on_it(preset):
    cfg = MEL_PRESETS[preset]
    centres = _band_centres(cfg)
    for band in (6, 20, 35, cfg.n_mels - 10):
        spec = log_mel(_sine(centres[band], cfg.sample_rate), cfg)
        assert spec.shape == (cfg.n_mels, cfg.frames(cfg.sample_rate))
        inner = spec[:, 4:-4].mean(dim=1)  # away from the padded edges
        assert int(inner.argmax()) == band, (preset, band, centres[band])


def test_log_mel_is_the_log_of_a_magnitude():
    cfg = MelConfig()
    x = _sine(1000.0, cfg.sample_rate)
    one, two = log_mel(x, cfg), log_mel(2 * x, cfg)
    above = one > math.log(LOG_FLOOR) + 1.0  # bands clear of the floor
    assert above.sum() > 100
    assert torch.allclose((two - one)[above], torch.full_like(two[above], math.log(2.0)),
                          atol=1e-4)
    silent = log_mel(np.zeros(4096, np.float32), cfg)
    assert torch.equal(silent, torch.full_like(silent, math.log(LOG_FLOOR)))
    batch = log_mel(torch.from_numpy(np.stack([x, 2 * x])), cfg)
    assert batch.shape == (2, *one.shape) and torch.allclose(batch[1], two, atol=1e-5)


def test_mel_config_refuses_what_cannot_work():
    with pytest.raises(ValueError, match="fmax"):
        MelConfig(sample_rate=8000, fmax=8000.0)
    with pytest.raises(ValueError, match="win"):
        MelConfig(n_fft=512, win=1024)
    with pytest.raises(ValueError, match="mel filters cover no FFT bin"):
        MelConfig(sample_rate=8000, n_fft=128, win=128, hop=64, n_mels=80, fmax=4000.0)
    with pytest.raises(ValueError, match="positive integer"):
        MelConfig(hop=0)
    assert mel_config_for_rate(8000) is MEL_PRESETS["telephone"]
    assert mel_config_for_rate(22050) is MEL_PRESETS["ljspeech"]
    with pytest.raises(ValueError, match="no mel preset for 16000 Hz"):
        mel_config_for_rate(16000)
    with pytest.raises(ValueError, match="64 bands"):
        mel_to_magnitude(torch.zeros(64, 10), MelConfig())


def test_griffin_lim_on_a_real_recording_beats_its_random_phase_start(asterisk):
    cfg = MEL_PRESETS["telephone"]
    (u,) = [u for u in asterisk if u.id == "auth-thankyou"]
    x, _ = read_wav(u.wav, cfg.sample_rate)
    spec = log_mel(x, cfg)
    start = spectral_convergence(griffin_lim(spec, cfg, n_iter=0, length=len(x)), x, cfg)
    sc = {n: spectral_convergence(griffin_lim(spec, cfg, n_iter=n, length=len(x)), x, cfg)
          for n in (8, 64)}
    assert start > 0.5, start  # random phases smear the magnitudes
    assert sc[64] < 0.15 and sc[64] < 0.3 * start, (sc, start)
    assert sc[64] < sc[8]
    # the inverse mel scale alone: magnitudes close to the recording's own
    truth = stft_magnitude(x, cfg)
    estimate = mel_to_magnitude(spec, cfg)
    assert float((estimate - truth).norm() / truth.norm()) < 0.2
    # deterministic for a seed, not the same for another
    a = griffin_lim(spec, cfg, n_iter=4, seed=1)
    assert torch.equal(a, griffin_lim(spec, cfg, n_iter=4, seed=1))
    assert not torch.equal(a, griffin_lim(spec, cfg, n_iter=4, seed=2))
    assert len(a) == (spec.shape[-1] - 1) * cfg.hop


def test_spectral_convergence_is_zero_for_the_same_signal_and_one_for_silence():
    cfg = MEL_PRESETS["telephone"]
    x = _sine(500.0, 8000)
    assert spectral_convergence(x, x, cfg) == 0.0
    assert spectral_convergence(np.zeros_like(x), x, cfg) == pytest.approx(1.0)
    assert spectral_convergence(x[:4000], x, cfg) == 0.0  # over the common length
