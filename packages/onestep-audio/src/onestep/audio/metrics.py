"""Offline speech metrics: mel-cepstral distortion and log-spectral distance against a reference
recording (with dynamic time warping where the two are not frame-aligned), STOI, real-time
factor, and word error rate from an offline recogniser.

- **Mel-cepstrum**: the cepstrum of the log-mel magnitude spectrum (`features.log_mel`), a DCT-II
  over the M mel bands scaled so that log mel_k = c_0 + 2 sum_{d>=1} c_d cos(pi d (k + 1/2) / M).
  That is the log-amplitude convention of SPTK's mel-cepstra, for which the usual MCD constant is
  made; the envelope is the mel filterbank's rather than SPTK's all-pass-warped one (pysptk and
  pyworld ship no wheel for current Pythons), so figures are comparable between systems scored
  here, not digit for digit with SPTK-based MCDs.
- **MCD** (Kubichek 1993): per frame pair 10 / ln 10 * sqrt(2 sum_{d=1..K} (c_d - c'_d)^2) dB,
  c_0 (energy) left out; averaged over the DTW path between reference and synthesis (steps
  (1, 0), (0, 1), (1, 1), each frame pair's MCD its cost), or frame by frame with align=False.
- **LSD**: per frame sqrt(mean_f (20 log10 |X_ref(f)| - 20 log10 |X_est(f)|)^2) dB on STFT
  magnitudes (floored at features.LOG_FLOOR), averaged over frames (or the DTW path).
- **STOI** (Taal et al. 2011) through `pystoi`, on time-aligned signals. PESQ is not offered: the
  `pesq` package has no wheel (it compiles C at install).
- **RTF**: seconds of compute per second of audio, from `time_callable` (warm-up calls, then the
  median of repeats; CUDA synchronised when torch has initialised it).
- **WER**: word error rate (`jiwer`) of the transcript that pocketsphinx's en-us model (inside its
  wheel; 16 kHz, the audio resampled) hears, against the text, both normalised by
  `normalize_for_wer` (numbers to words, lower case, no punctuation).
"""

from __future__ import annotations

import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist

from .features import LOG_FLOOR, MelConfig, log_mel, stft_magnitude

__all__ = ["ASR_SAMPLE_RATE", "MCD_CONSTANT", "MetricError", "SpeechRecognizer", "Timing",
           "cepstral_distortion", "dtw_path", "log_spectral_distance", "mel_cepstral_distortion",
           "mel_cepstrum", "normalize_for_wer", "real_time_factor", "spectral_log_distance",
           "stoi", "time_callable", "transcribe", "word_error_rate"]

MCD_CONSTANT = 10.0 / math.log(10.0) * math.sqrt(2.0)
"""dB per unit of Euclidean cepstral distance: MCD = MCD_CONSTANT * ||c - c'|| over c_1..c_K."""
ASR_SAMPLE_RATE = 16000
"""The rate pocketsphinx's en-us acoustic model was trained at; other audio is resampled."""


class MetricError(ValueError):
    """A metric cannot be computed on what it was given (shapes, lengths, empty text)."""


def _array(x, name: str, ndim: int) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim or 0 in a.shape:
        raise MetricError(f"{name} must be a non-empty {ndim}-D array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise MetricError(f"{name} holds NaN or infinite values")
    return a


# -- dynamic time warping ------------------------------------------------------------------------
def dtw_path(cost) -> tuple[np.ndarray, np.ndarray]:
    """The warping path (i, j) (two int arrays) from (0, 0) to (N - 1, M - 1) through `cost`
    (N, M) with steps (1, 0), (0, 1) and (1, 1) that minimises the summed cost (Sakoe and Chiba
    1978, without slope weights or band). One row at a time: the moves within a row are a
    running minimum over prefix sums, D[i, j] = S[j] + min_{j' <= j} (a[j'] - S[j' - 1]), with
    S the row's cumulative cost and a[j'] = min(D[i - 1, j'], D[i - 1, j' - 1])."""
    c = _array(cost, "cost", 2)
    n, m = c.shape
    acc = np.empty((n, m))
    acc[0] = np.cumsum(c[0])
    for i in range(1, n):
        enter = acc[i - 1].copy()                        # from above: (i - 1, j)
        enter[1:] = np.minimum(enter[1:], acc[i - 1, :-1])  # or diagonally: (i - 1, j - 1)
        s = np.cumsum(c[i])
        s_before = np.concatenate([[0.0], s[:-1]])
        acc[i] = s + np.minimum.accumulate(enter - s_before)
    # backtracking: the cheapest predecessor, the diagonal on a tie
    i, j = n - 1, m - 1
    rows, cols = [i], [j]
    while i > 0 or j > 0:
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            diag, up, left = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
            if diag <= up and diag <= left:
                i, j = i - 1, j - 1
            elif up <= left:
                i -= 1
            else:
                j -= 1
        rows.append(i)
        cols.append(j)
    return np.array(rows[::-1]), np.array(cols[::-1])


def _frame_mean(distance: np.ndarray, align: bool) -> float:
    """Mean of a frame-pair distance matrix (N, M) along the DTW path, or on the diagonal of the
    common length."""
    if align:
        i, j = dtw_path(distance)
        return float(distance[i, j].mean())
    k = min(distance.shape)
    return float(np.diagonal(distance)[:k].mean())


# -- mel-cepstral distortion ---------------------------------------------------------------------
def mel_cepstrum(log_mel_spec, n_coeffs: int = 24) -> np.ndarray:
    """Mel-cepstra c_0..c_K (K = n_coeffs) (K + 1, frames) of a natural-log mel spectrogram
    (n_mels, frames): c_d = (1 / M) sum_k log mel_k cos(pi d (k + 1/2) / M), so that
    log mel_k = c_0 + 2 sum_{d>=1} c_d cos(pi d (k + 1/2) / M) with all M coefficients."""
    spec = _array(log_mel_spec, "log_mel_spec", 2)
    n_mels = spec.shape[0]
    if not 1 <= n_coeffs < n_mels:
        raise MetricError(f"n_coeffs must be between 1 and n_mels - 1 ({n_mels - 1}), got "
                          f"{n_coeffs}")
    d = np.arange(n_coeffs + 1)[:, None]
    k = np.arange(n_mels)[None, :]
    basis = np.cos(np.pi * d * (k + 0.5) / n_mels) / n_mels        # (K + 1, M)
    return basis @ spec


def cepstral_distortion(estimate, reference, *, align: bool = True) -> float:
    """MCD in dB between mel-cepstra (K + 1, frames) of a synthesis and a reference (c_0 is
    left out): the mean over the DTW path (align) or over the common frames (not align) of
    10 / ln 10 * sqrt(2 sum_{d=1..K} (c_d - c'_d)^2)."""
    est, ref = _array(estimate, "estimate", 2), _array(reference, "reference", 2)
    if est.shape[0] != ref.shape[0] or est.shape[0] < 2:
        raise MetricError(f"the cepstra must have the same number of coefficients (at least 2), "
                          f"got {est.shape[0]} and {ref.shape[0]}")
    distance = MCD_CONSTANT * cdist(ref[1:].T, est[1:].T)            # (N_ref, N_est)
    return _frame_mean(distance, align)


def mel_cepstral_distortion(estimate, reference, cfg: MelConfig | None = None, *,
                            n_coeffs: int = 24, align: bool = True) -> float:
    """MCD in dB between two waveforms (T,) at cfg.sample_rate (default MelConfig(): LJSpeech's
    22.05 kHz): mel-cepstra c_1..c_K of their log-mel spectrograms (`mel_cepstrum`),
    DTW-aligned unless align=False."""
    cfg = cfg or MelConfig()
    cepstra = [mel_cepstrum(log_mel(_array(x, name, 1).astype(np.float32), cfg).numpy(),
                            n_coeffs)
               for x, name in ((estimate, "estimate"), (reference, "reference"))]
    return cepstral_distortion(*cepstra, align=align)


# -- log-spectral distance -----------------------------------------------------------------------
def spectral_log_distance(estimate, reference, *, align: bool = False,
                          floor: float = LOG_FLOOR) -> float:
    """LSD in dB between magnitude spectrograms (n_freqs, frames): per frame pair the RMS over
    frequencies of 20 log10(max(|X_ref|, floor) / max(|X_est|, floor)), averaged over the
    common frames, or over the DTW path with align=True."""
    est, ref = _array(estimate, "estimate", 2), _array(reference, "reference", 2)
    if est.shape[0] != ref.shape[0]:
        raise MetricError(f"the spectrograms have {est.shape[0]} and {ref.shape[0]} frequency "
                          "bins")
    if est.min() < 0 or ref.min() < 0:
        raise MetricError("spectral_log_distance needs magnitudes (no negative values)")
    db_est, db_ref = (20 * np.log10(np.maximum(s, floor)) for s in (est, ref))
    if not align:
        k = min(est.shape[1], ref.shape[1])
        return float(np.sqrt(((db_ref[:, :k] - db_est[:, :k]) ** 2).mean(0)).mean())
    distance = cdist(db_ref.T, db_est.T) / math.sqrt(est.shape[0])  # (N_ref, N_est) RMS dB
    return _frame_mean(distance, align=True)


def log_spectral_distance(estimate, reference, cfg: MelConfig | None = None, *,
                          align: bool = False) -> float:
    """LSD in dB between two waveforms (T,) on cfg's STFT magnitudes (`spectral_log_distance`;
    default MelConfig()); align=True matches frames by DTW (a synthesis against a recording of
    the same text)."""
    cfg = cfg or MelConfig()
    mags = [stft_magnitude(_array(x, name, 1).astype(np.float32), cfg).numpy()
            for x, name in ((estimate, "estimate"), (reference, "reference"))]
    return spectral_log_distance(*mags, align=align)


# -- STOI ---------------------------------------------------------------------------------------
def stoi(estimate, reference, sample_rate: int, *, extended: bool = False) -> float:
    """Short-time objective intelligibility (Taal et al. 2011; extended: Jensen and Taal 2016)
    of `estimate` against `reference` (T,), time-aligned, through pystoi; the longer signal is
    cut to the shorter. About 1 for the same signal."""
    from pystoi import stoi as pystoi_stoi

    est, ref = _array(estimate, "estimate", 1), _array(reference, "reference", 1)
    n = min(len(est), len(ref))
    if n < sample_rate // 2:
        raise MetricError(f"STOI needs at least half a second of audio, got {n} samples at "
                          f"{sample_rate} Hz")
    return float(pystoi_stoi(ref[:n], est[:n], sample_rate, extended=extended))


# -- real-time factor ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of the timed calls of a callable (warm-up calls not included)."""

    seconds: tuple[float, ...]
    """Each timed call, in order."""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def _synchronize():
    torch = sys.modules.get("torch")  # only when the caller uses torch; never imported here
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_callable(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5) -> Timing:
    """Time `fn()` (no arguments: wrap them in a lambda): `warmup` untimed calls, then
    `repeats` timed ones (time.perf_counter, CUDA synchronised before and after each call when
    torch has initialised it)."""
    if warmup < 0 or repeats < 1:
        raise MetricError(f"time_callable needs warmup >= 0 and repeats >= 1, got {warmup}, "
                          f"{repeats}")
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        fn()
        _synchronize()
        seconds.append(time.perf_counter() - start)
    return Timing(tuple(seconds))


def real_time_factor(fn: Callable[[], object], audio_seconds: float, *, warmup: int = 1,
                     repeats: int = 5) -> float:
    """Seconds of compute per second of audio: the median time of `fn()` (which makes
    `audio_seconds` of audio) over `repeats` calls after `warmup`, divided by audio_seconds.
    Below 1 is faster than real time."""
    if not audio_seconds > 0:
        raise MetricError(f"audio_seconds must be positive, got {audio_seconds}")
    return time_callable(fn, warmup=warmup, repeats=repeats).median / audio_seconds


# -- word error rate ----------------------------------------------------------------------------
def normalize_for_wer(text: str) -> str:
    """Text as words for WER: numbers and symbols read out (text.normalize_text), lower case,
    only letters, digits and apostrophes kept, single spaces."""
    from .text import normalize_text

    words = re.sub(r"[^a-z0-9']+", " ", normalize_text(text).lower())
    return " ".join(w.strip("'") for w in words.split() if w.strip("'"))


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate (substitutions + deletions + insertions over reference words,
    summed over all pairs; jiwer) after normalize_for_wer on both sides."""
    import jiwer

    if isinstance(references, str) or isinstance(hypotheses, str):
        raise MetricError("word_error_rate takes lists of texts (wrap one text in a list)")
    if len(references) != len(hypotheses) or not references:
        raise MetricError(f"word_error_rate needs as many hypotheses as references (and at "
                          f"least one), got {len(references)} and {len(hypotheses)}")
    refs = [normalize_for_wer(r) for r in references]
    for r, raw in zip(refs, references, strict=True):
        if not r:
            raise MetricError(f"reference text {raw[:40]!r} has no words")
    return float(jiwer.wer(refs, [normalize_for_wer(h) for h in hypotheses]))


class SpeechRecognizer:
    """Offline English speech recognition: pocketsphinx with the en-us acoustic model, language
    model and dictionary that ship inside its wheel (16 kHz; other rates are resampled)."""

    def __init__(self):
        from pocketsphinx import Decoder

        self._decoder = Decoder(samprate=ASR_SAMPLE_RATE, loglevel="FATAL")

    def transcribe(self, samples, sample_rate: int) -> str:
        """The words heard in mono `samples` (T,) (floats in [-1, 1]) at `sample_rate`, lower
        case ('' for none)."""
        from .io import resample

        x = _array(samples, "samples", 1).astype(np.float32)
        if sample_rate != ASR_SAMPLE_RATE:
            x = resample(x, sample_rate, ASR_SAMPLE_RATE)
        pcm = (np.clip(x, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
        decoder = self._decoder
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""


_RECOGNIZER: SpeechRecognizer | None = None


def transcribe(samples, sample_rate: int) -> str:
    """SpeechRecognizer().transcribe with one recogniser kept for the process."""
    global _RECOGNIZER
    if _RECOGNIZER is None:
        _RECOGNIZER = SpeechRecognizer()
    return _RECOGNIZER.transcribe(samples, sample_rate)
