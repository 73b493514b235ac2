"""The `onestep-audio` verbs as Python functions: each takes its Args dataclass (from the
command line) or the same fields as keyword arguments (from a notebook), prints what the
command prints and returns it as a dict."""

from __future__ import annotations

from pathlib import Path

from .cli import MelArgs, PhonemesArgs, PrepareArgs


def _args(cls, args, kwargs):
    """The Args dataclass from the command line, or from a notebook's keyword arguments."""
    if args is not None and kwargs:
        raise TypeError("pass the Args dataclass or keyword arguments, not both")
    return args if args is not None else cls(**kwargs)


def prepare(args: PrepareArgs | None = None, **kwargs) -> dict:
    """`onestep-audio prepare`: a corpus written in the LJSpeech layout at args.out."""
    import soundfile as sf

    from .data import (
        ASTERISK_SOUNDS,
        ASTERISK_TRANSCRIPTS,
        read_asterisk,
        read_ljspeech,
        split_utterances,
        write_ljspeech,
    )

    a = _args(PrepareArgs, args, kwargs)
    if not a.corpus or not a.out:
        raise ValueError("--corpus (asterisk or an LJSpeech-layout folder) and --out are "
                         "required")
    if a.sample_rate < 0:
        raise ValueError(f"--sample-rate must be positive (or 0 to keep), got {a.sample_rate}")
    if a.corpus == "asterisk":
        utterances = read_asterisk(a.sounds or ASTERISK_SOUNDS,
                                   a.transcripts or ASTERISK_TRANSCRIPTS)
    elif a.sounds or a.transcripts:
        raise ValueError("--sounds and --transcripts are for --corpus asterisk")
    else:
        if Path(a.corpus).resolve() == Path(a.out).resolve():
            raise ValueError("--out must differ from the --corpus folder")
        utterances = read_ljspeech(a.corpus)
    train, test = split_utterances(utterances, a.test_fraction, seed=a.seed)
    written = write_ljspeech(utterances, a.out, sample_rate=a.sample_rate or None,
                             overwrite=a.overwrite)
    info = [sf.info(str(u.wav)) for u in written]
    seconds = sum(i.frames / i.samplerate for i in info)
    summary = {"corpus": a.corpus, "out": str(a.out), "utterances": len(written),
               "sample_rate": info[0].samplerate, "hours": seconds / 3600,
               "train": len(train), "test": len(test)}
    print(f"wrote {len(written)} utterances ({seconds / 60:.1f} minutes at "
          f"{summary['sample_rate']} Hz) to {a.out} in the LJSpeech layout; a split with "
          f"test fraction {a.test_fraction} and seed {a.seed}: {len(train)} train, "
          f"{len(test)} test")
    return summary


def mel(args: MelArgs | None = None, **kwargs) -> dict:
    """`onestep-audio mel`: the log-mel spectrogram of a wav as a PNG (and, on request, its
    Griffin-Lim inversion)."""
    from .features import (
        MEL_PRESETS,
        griffin_lim,
        log_mel,
        mel_config_for_rate,
        plot_log_mel,
        spectral_convergence,
    )
    from .io import read_wav, write_wav

    a = _args(MelArgs, args, kwargs)
    if not a.wav or not a.out:
        raise ValueError("--wav and --out are required")
    if a.preset != "auto" and a.preset not in MEL_PRESETS:
        raise ValueError(f"unknown --preset {a.preset!r}; use auto, "
                         f"{', '.join(MEL_PRESETS)}")
    if a.n_iter < 1:
        raise ValueError(f"--n-iter must be at least 1, got {a.n_iter}")
    samples, rate = read_wav(a.wav)
    if a.preset == "auto":
        cfg = mel_config_for_rate(rate) if rate == 8000 else MEL_PRESETS["ljspeech"]
    else:
        cfg = MEL_PRESETS[a.preset]
    if rate != cfg.sample_rate:
        samples, rate = read_wav(a.wav, cfg.sample_rate, resample_to_rate=True)
    spec = log_mel(samples, cfg)
    title = f"{Path(a.wav).name}: {cfg.n_mels} mel bands, {cfg.sample_rate} Hz"
    plot_log_mel(spec, cfg, a.out, title=title)
    summary = {"wav": str(a.wav), "png": str(a.out), "frames": int(spec.shape[-1]),
               "n_mels": cfg.n_mels, "sample_rate": cfg.sample_rate}
    print(f"wrote {a.out}: {spec.shape[-1]} frames x {cfg.n_mels} mel bands")
    if a.griffin_lim:
        y = griffin_lim(spec, cfg, n_iter=a.n_iter, length=len(samples))
        start = griffin_lim(spec, cfg, n_iter=0, length=len(samples))
        write_wav(a.griffin_lim, y, cfg.sample_rate)
        summary.update(griffin_lim=str(a.griffin_lim),
                       spectral_convergence=spectral_convergence(y, samples, cfg),
                       spectral_convergence_start=spectral_convergence(start, samples, cfg))
        print(f"wrote {a.griffin_lim}: Griffin-Lim, {a.n_iter} iterations; spectral "
              f"convergence {summary['spectral_convergence']:.3f} (random-phase start "
              f"{summary['spectral_convergence_start']:.3f})")
    return summary


def phonemes(args: PhonemesArgs | None = None, **kwargs) -> dict:
    """`onestep-audio phonemes`: the normalised text and its phonemes."""
    from .text import espeak_backend, normalize_text, phonemize

    a = _args(PhonemesArgs, args, kwargs)
    if not a.text.strip():
        raise ValueError("--text is required and must not be empty")
    backend = espeak_backend(a.backend)
    out = phonemize(a.text, voice=a.voice, ipa=not a.ascii, backend=backend)
    summary = {"text": normalize_text(a.text), "phonemes": out, "backend": backend}
    print(summary["text"])
    print(out)
    return summary
