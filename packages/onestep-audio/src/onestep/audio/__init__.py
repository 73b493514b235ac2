"""onestep audio: one-step speech models built on onestep.core: the speech front end and
CoMoSpeech (a diffusion TTS teacher and its one-step consistency student, `tts`).
The `onestep-audio` command line runs `prepare`, `mel` and `phonemes`.

    from onestep.audio import read_wav, log_mel, griffin_lim, phonemize, read_asterisk
    samples, rate = read_wav("prompt.wav", 8000)           # mono float32, the rate checked
    spec = log_mel(samples, MEL_PRESETS["telephone"])      # (n_mels, frames)
    audio = griffin_lim(spec, MEL_PRESETS["telephone"])     # the baseline vocoder
    phonemize("Thank you.")                                # 'θˈæŋk juː.'
    monotonic_alignment_search(log_likelihood)             # (tokens, frames) -> 0/1 alignment
    mel_cepstral_distortion(synthesis, recording, cfg)     # dB, DTW-aligned
    teacher, _ = train_teacher(load_speech(utterances, cfg), mel_config=cfg, out_dir="t")
    student, _ = distill_student(teacher, load_speech(utterances, cfg), out_dir="s")
    student.synthesize("Thank you.").audio                 # CoMoSpeech, one network evaluation
"""

from importlib import import_module

_EXPORTS = {
    "AudioError": "io", "read_wav": "io", "write_wav": "io", "resample": "io",
    "MelConfig": "features", "MEL_PRESETS": "features", "mel_config_for_rate": "features",
    "log_mel": "features", "mel_to_magnitude": "features", "griffin_lim": "features",
    "stft_magnitude": "features", "spectral_convergence": "features",
    "plot_log_mel": "features",
    "TextError": "text", "PhonemizerError": "text", "normalize_text": "text",
    "number_to_words": "text", "phonemize": "text", "espeak_backend": "text",
    "PhonemeVocab": "text", "PhonemeTokenizer": "text", "CharTokenizer": "text",
    "CorpusError": "data", "Utterance": "data", "read_ljspeech": "data",
    "write_ljspeech": "data", "read_asterisk": "data", "load_corpus": "data",
    "split_utterances": "data",
    "AlignmentError": "align", "monotonic_alignment_search": "align",
    "durations_from_alignment": "align", "alignment_from_durations": "align",
    "MetricError": "metrics", "mel_cepstrum": "metrics", "mel_cepstral_distortion": "metrics",
    "cepstral_distortion": "metrics", "log_spectral_distance": "metrics",
    "spectral_log_distance": "metrics", "dtw_path": "metrics", "stoi": "metrics",
    "time_callable": "metrics", "real_time_factor": "metrics", "word_error_rate": "metrics",
    "normalize_for_wer": "metrics", "SpeechRecognizer": "metrics", "transcribe": "metrics",
    "prepare": "commands", "mel": "commands", "phonemes": "commands",
    "TTS": "tts", "TeacherConfig": "tts", "CoMoSpeechLoss": "tts", "MelStats": "tts",
    "AUDIO_CD": "tts", "load_speech": "tts", "make_teacher": "tts", "train_teacher": "tts",
    "distill_student": "tts",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import the module that defines `name` on first use (torch loads only when needed)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'onestep.audio' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return __all__
