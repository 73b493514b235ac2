"""Speech metrics: DTW against a plain dynamic programme, the mel-cepstrum's scaling, MCD and LSD
closed forms and their behaviour on a real recording (noise, delay, gain), STOI, real-time
factor on a callable that sleeps, and WER of the offline recogniser on real recordings."""

import math
import time

import numpy as np
import pytest

from onestep.audio.features import MEL_PRESETS
from onestep.audio.io import read_wav
from onestep.audio.metrics import (
    MCD_CONSTANT,
    MetricError,
    SpeechRecognizer,
    cepstral_distortion,
    dtw_path,
    log_spectral_distance,
    mel_cepstral_distortion,
    mel_cepstrum,
    normalize_for_wer,
    real_time_factor,
    spectral_log_distance,
    stoi,
    time_callable,
    word_error_rate,
)

CFG = MEL_PRESETS["telephone"]


@pytest.fixture(scope="module")
def prompt(asterisk):
    """'Please enter your password, followed by the pound key.' (3.3 s, 8 kHz)."""
    (u,) = [u for u in asterisk if u.id == "agent-pass"]
    return read_wav(u.wav, 8000)[0]


# -- DTW ---------------------------------------------------------------------------------------
def _dtw_reference(cost):
    """The minimal path cost by the textbook double loop."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    return acc[n, m]


@pytest.mark.parametrize(("n", "m"), [(1, 1), (1, 6), (5, 1), (7, 7), (9, 4), (13, 20)])
def test_dtw_path_is_valid_and_minimal(n, m):
    rng = np.random.default_rng(n * 31 + m)
    for _ in range(10):
        cost = rng.random((n, m))
        i, j = dtw_path(cost)
        assert (i[0], j[0], i[-1], j[-1]) == (0, 0, n - 1, m - 1)
        steps = set(zip(np.diff(i), np.diff(j), strict=True))
        assert steps <= {(1, 0), (0, 1), (1, 1)}
        assert cost[i, j].sum() == pytest.approx(_dtw_reference(cost), rel=1e-12)


# -- mel-cepstral distortion -------------------------------------------------------------------
def test_mel_cepstrum_scaling():
    """All M coefficients rebuild the log-mel as c_0 + 2 sum c_d cos(pi d (k + 1/2) / M); a flat
    spectrum has only c_0."""
    rng = np.random.default_rng(5)
    spec = rng.normal(size=(16, 9))
    c = mel_cepstrum(spec, n_coeffs=15)
    k = np.arange(16)
    rebuilt = c[0] + 2 * sum(c[d] * np.cos(np.pi * d * (k + 0.5) / 16)[:, None]
                             for d in range(1, 16))
    np.testing.assert_allclose(rebuilt, spec, atol=1e-12)
    flat = mel_cepstrum(np.full((16, 3), -2.0), n_coeffs=8)
    np.testing.assert_allclose(flat[0], -2.0)
    np.testing.assert_allclose(flat[1:], 0.0, atol=1e-15)


def test_cepstral_distortion_closed_form():
    """One coefficient off by delta everywhere: 10 / ln 10 * sqrt(2) * |delta| dB; c_0 ignored."""
    ref = np.random.default_rng(6).normal(size=(25, 30))
    est = ref.copy()
    est[0] += 5.0
    assert cepstral_distortion(est, ref) == 0.0
    est[3] -= 0.2
    expected = 10 / math.log(10) * math.sqrt(2) * 0.2
    assert MCD_CONSTANT * 0.2 == pytest.approx(expected)
    assert cepstral_distortion(est, ref, align=False) == pytest.approx(expected, rel=1e-12)
    assert cepstral_distortion(est, ref) <= expected + 1e-12  # DTW can only lower the mean


def test_mcd_zero_for_itself_and_grows_with_noise(prompt):
    assert mel_cepstral_distortion(prompt, prompt, CFG) == 0.0
    assert mel_cepstral_distortion(prompt, prompt, CFG, align=False) == 0.0
    rng = np.random.default_rng(7)
    noise = rng.normal(size=prompt.shape).astype(np.float32)
    mcds = [mel_cepstral_distortion(prompt + level * noise, prompt, CFG)
            for level in (0.003, 0.01, 0.03)]
    assert 0.5 < mcds[0] < mcds[1] < mcds[2], mcds  # about 2.3, 3.5, 4.6 dB measured


def test_mcd_dtw_absorbs_a_delay(prompt):
    """100 ms of silence before the same speech: with DTW almost nothing (0.01 dB measured);
    frame by frame every frame is off (6.1 dB measured)."""
    delayed = np.concatenate([np.zeros(800, np.float32), prompt])
    aligned = mel_cepstral_distortion(delayed, prompt, CFG)
    unaligned = mel_cepstral_distortion(delayed, prompt, CFG, align=False)
    assert aligned < 0.2 and unaligned > 3.0 and aligned < 0.05 * unaligned, (aligned, unaligned)


# -- log-spectral distance ---------------------------------------------------------------------
@pytest.mark.parametrize("gain", [0.5, 2.0, 10.0, 0.01])
def test_lsd_of_a_scaled_spectrum_is_the_gain_in_db(gain):
    spec = np.random.default_rng(8).uniform(0.1, 10.0, size=(129, 40))
    expected = abs(20 * math.log10(gain))
    assert spectral_log_distance(gain * spec, spec) == pytest.approx(expected, rel=1e-12)
    assert spectral_log_distance(spec, gain * spec, align=True) == pytest.approx(expected,
                                                                                 rel=1e-12)
    assert spectral_log_distance(spec, spec) == 0.0


def test_lsd_on_waveforms(prompt):
    """A gain of 1/2 on the recording: 6.02 dB, less a little where silence sits at the floor;
    a delay: small with DTW, large frame by frame."""
    assert log_spectral_distance(prompt, prompt, CFG) == 0.0
    assert log_spectral_distance(0.5 * prompt, prompt, CFG) == pytest.approx(6.0206, abs=0.05)
    delayed = np.concatenate([np.zeros(800, np.float32), prompt])
    aligned = log_spectral_distance(delayed, prompt, CFG, align=True)
    assert aligned < 0.1 * log_spectral_distance(delayed, prompt, CFG)  # 0.6 vs 22.7 dB measured


# -- STOI --------------------------------------------------------------------------------------
def test_stoi_is_one_for_itself_and_falls_with_noise(prompt):
    assert stoi(prompt, prompt, 8000) == pytest.approx(1.0, abs=1e-6)
    noise = np.random.default_rng(9).normal(size=prompt.shape).astype(np.float32)
    scores = [stoi(prompt + level * noise, prompt, 8000) for level in (0.01, 0.03, 0.1)]
    assert 1.0 > scores[0] > scores[1] > scores[2] > 0.3, scores  # 0.96, 0.88, 0.74 measured
    with pytest.raises(MetricError, match="at least half a second"):
        stoi(prompt[:1000], prompt[:1000], 8000)


# -- real-time factor --------------------------------------------------------------------------
def test_rtf_of_a_callable_that_sleeps():
    calls = []

    def synthesize():
        calls.append(None)
        time.sleep(0.05)

    rtf = real_time_factor(synthesize, audio_seconds=0.5, warmup=2, repeats=3)
    assert len(calls) == 5
    assert 0.1 <= rtf < 0.2, rtf  # 0.05 s of compute for 0.5 s of audio


def test_time_callable_skips_warmup_and_takes_the_median():
    delays = iter([0.3, 0.3, 0.01, 0.01, 0.01, 0.3])  # slow warm-up, one slow outlier

    timing = time_callable(lambda: time.sleep(next(delays)), warmup=1, repeats=5)
    assert len(timing.seconds) == 5 and timing.seconds[0] >= 0.3
    assert 0.01 <= timing.median < 0.1
    with pytest.raises(MetricError, match="repeats >= 1"):
        time_callable(lambda: None, repeats=0)
    with pytest.raises(MetricError, match="audio_seconds must be positive"):
        real_time_factor(lambda: None, 0.0)


# -- word error rate ---------------------------------------------------------------------------
def test_word_error_rate_closed_forms():
    assert normalize_for_wer("Press 1, then the pound-key!") == "press one then the pound key"
    assert word_error_rate(["Press 1."], ["press one"]) == 0.0
    assert word_error_rate(["a b c d"], ["a x c d"]) == 0.25  # one substitution in four
    assert word_error_rate(["a b", "c d e f"], ["a b", "c d"]) == pytest.approx(2 / 6)
    assert word_error_rate(["a b"], ["a b c d"]) == 1.0  # two insertions over two words
    with pytest.raises(MetricError, match="as many hypotheses as references"):
        word_error_rate(["a"], ["a", "b"])
    with pytest.raises(MetricError, match="has no words"):
        word_error_rate(["..."], ["a"])
    with pytest.raises(MetricError, match="lists of texts"):
        word_error_rate("a b", "a b")


# Five prompts of 6 to 12 words, every 24th of the 120 such prompts in id order (chosen by that
# rule, not by their score). Over all 551 spoken prompts pocketsphinx's WER is about 0.70
# (8 kHz telephone speech upsampled for a 16 kHz model with a general language model).
WER_PROMPTS = ["agent-incorrect", "confbridge-begin-leader", "demo-nomatch", "queue-quantity2",
               "vm-reenterpassword"]


def test_pocketsphinx_wer_on_real_recordings(asterisk):
    by_id = {u.id: u for u in asterisk}
    utterances = [by_id[i] for i in WER_PROMPTS]
    recognizer = SpeechRecognizer()
    hypotheses = [recognizer.transcribe(read_wav(u.wav, 8000)[0], 8000) for u in utterances]
    texts = [u.text for u in utterances]
    wer = word_error_rate(texts, hypotheses)
    shuffled = word_error_rate(texts[1:] + texts[:1], hypotheses)  # each against another text
    assert wer < 0.8, (wer, hypotheses)  # 0.65 measured
    assert shuffled > wer + 0.3, (wer, shuffled)  # 1.02 measured
