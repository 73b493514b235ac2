"""Wav files in and out, resampling, and the one-line errors for bad files."""

import numpy as np
import pytest
import soundfile as sf
import torch

from onestep.audio.io import AudioError, read_wav, resample, write_wav


def _sine(freq, rate, seconds=1.0, amp=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x, rate):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * rate / len(x)


def test_wav_round_trip_16_bit_and_float(tmp_path):
    x = _sine(440.0, 8000) + _sine(1234.0, 8000, amp=0.3)
    write_wav(tmp_path / "a" / "x16.wav", x, 8000)
    y, rate = read_wav(tmp_path / "a" / "x16.wav")
    assert rate == 8000 and y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() <= 1 / 32768 + 1e-7  # 16-bit quantisation, nothing more
    assert sf.info(str(tmp_path / "a" / "x16.wav")).subtype == "PCM_16"
    write_wav(tmp_path / "xf.wav", torch.from_numpy(x), 22050, subtype="FLOAT")
    z, rate = read_wav(tmp_path / "xf.wav", 22050)
    assert rate == 22050 and np.array_equal(z, x)


def test_write_clips_and_stereo_reads_as_mono(tmp_path):
    write_wav(tmp_path / "loud.wav", np.array([2.0, -3.0, 0.25], np.float32), 8000)
    y, _ = read_wav(tmp_path / "loud.wav")
    assert np.allclose(y, [32767 / 32768, -1.0, 0.25], atol=1e-6)
    stereo = np.stack([_sine(300.0, 8000), np.zeros(8000, np.float32)], axis=1)
    sf.write(str(tmp_path / "st.wav"), stereo, 8000, subtype="FLOAT")
    mono, _ = read_wav(tmp_path / "st.wav")
    assert np.allclose(mono, stereo.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize(("freq", "orig", "new"), [(440.0, 8000, 22050), (3000.0, 22050, 16000),
                                                   (1000.0, 16000, 8000)])
def test_resampling_a_sine_keeps_its_frequency(freq, orig, new):
    x = _sine(freq, orig, seconds=2.0)
    y = resample(x, orig, new)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert abs(len(y) - 2.0 * new) <= 1
    # frequency resolution of a 2 s window: 0.5 Hz
    assert abs(_peak_hz(y, new) - freq) <= 0.5
    assert abs(_peak_hz(x, orig) - freq) <= 0.5
    # amplitude kept away from the edges (the sinc filter passes 440-3000 Hz at these rates)
    mid = y[len(y) // 4: 3 * len(y) // 4]
    assert abs(np.sqrt(2 * np.mean(mid ** 2)) - 0.5) < 0.01
    assert torch.is_tensor(resample(torch.from_numpy(x), orig, new))


def test_resampling_removes_what_the_new_rate_cannot_hold():
    x = _sine(6000.0, 22050)  # above the 4 kHz Nyquist limit of 8 kHz
    y = resample(x, 22050, 8000)
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) < 0.02 * np.sqrt(np.mean(x ** 2))


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_text("this is not a wav file at all")
    write_wav(tmp_path / "ok.wav", _sine(440.0, 8000), 8000)
    (tmp_path / "cut.wav").write_bytes((tmp_path / "ok.wav").read_bytes()[:30])
    sf.write(str(tmp_path / "none.wav"), np.zeros(0, np.float32), 8000)
    cases = {"missing.wav": "no such audio file", "empty.wav": r"is empty \(0 bytes\)",
             "junk.wav": "is not a readable audio file", "cut.wav": "is not a readable audio "
             "file", "none.wav": "holds no samples", ".": "is a folder"}
    for name, message in cases.items():
        with pytest.raises(AudioError, match=message) as e:
            read_wav(tmp_path / name)
        assert "\n" not in str(e.value)
    with pytest.raises(AudioError, match=r"ok.wav has sample rate 8000 Hz, expected 22050 Hz"):
        read_wav(tmp_path / "ok.wav", 22050)
    y, rate = read_wav(tmp_path / "ok.wav", 22050, resample_to_rate=True)
    assert rate == 22050 and abs(len(y) - 22050) <= 1


def test_write_and_resample_refuse_bad_arguments(tmp_path):
    with pytest.raises(AudioError, match="mono samples"):
        write_wav(tmp_path / "x.wav", np.zeros((2, 100)), 8000)
    with pytest.raises(AudioError, match="non-finite"):
        write_wav(tmp_path / "x.wav", np.array([0.0, np.nan]), 8000)
    with pytest.raises(AudioError, match="positive integer"):
        write_wav(tmp_path / "x.wav", np.zeros(10), 0)
    with pytest.raises(AudioError, match="new sample rate"):
        resample(np.zeros(10), 8000, -1)
