"""The `onestep-audio` command: one frozen dataclass per verb, parsed by core's `run_cli`; each
verb runs the function of the same name in `onestep.audio.commands`.

Importing this module imports no torch, so `onestep-audio --help` starts at once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from onestep.core.cli import run_cli

DESCRIPTION = """The speech front end of onestep: corpora in the LJSpeech layout (Debian's asterisk
prompts, or your own), log-mel spectrograms with Griffin-Lim inversion, and phonemes from
eSpeak NG.

`onestep-audio COMMAND --help` shows a command's flags."""


@dataclass(frozen=True)
class PrepareArgs:
    """Write a speech corpus in the LJSpeech layout (metadata.csv + wavs/ID.wav, 16-bit PCM).

    --corpus asterisk reads Debian's asterisk-core-sounds-en-wav prompts with the transcripts of
    asterisk-core-sounds-en (the spoken prompts only: tones and silences are left out); a folder
    reads an LJSpeech-layout corpus (to resample it or check it). Prints the utterances, hours
    and the train/test split sizes."""

    corpus: str = ""
    """asterisk, or the folder of an LJSpeech-layout corpus (required)."""
    out: str = ""
    """The folder to write (required; new or empty, or an earlier corpus with --overwrite)."""
    sample_rate: int = 0
    """Resample every recording to this rate in Hz; 0 keeps the corpus' rate."""
    sounds: str = ""
    """asterisk: the folder of the wav prompts (default: Debian's)."""
    transcripts: str = ""
    """asterisk: the transcripts file, core-sounds-en.txt(.gz) (default: Debian's)."""
    test_fraction: float = 0.1
    """Fraction of the utterances in the test split that is printed (split by utterance id)."""
    seed: int = 0
    """Seed of the train/test split."""
    overwrite: bool = False
    """Replace a corpus already at --out."""


@dataclass(frozen=True)
class MelArgs:
    """Draw the log-mel spectrogram of a wav file as a PNG image.

    The mel preset follows the file's rate (8000 Hz: telephone; otherwise LJSpeech's 22.05 kHz
    one, the audio resampled to it) unless --preset names one. With --griffin-lim, also write
    the Griffin-Lim inversion of that spectrogram and print its spectral convergence against
    the file (0 is a perfect magnitude match) beside that of the random-phase start."""

    wav: str = ""
    """The sound file to draw (required)."""
    out: str = ""
    """The PNG file to write (required)."""
    preset: str = "auto"
    """auto, ljspeech (22.05 kHz, 80 bands) or telephone (8 kHz, 64 bands)."""
    griffin_lim: str = ""
    """Also write the Griffin-Lim reconstruction to this wav file."""
    n_iter: int = 64
    """Griffin-Lim iterations."""


@dataclass(frozen=True)
class PhonemesArgs:
    """Print the normalised text and the eSpeak NG phonemes of a text."""

    text: str = ""
    """The text (required)."""
    voice: str = "en-us"
    """eSpeak NG voice (language), e.g. en-us, en-gb, de, fr."""
    ascii: bool = False
    """eSpeak's ASCII phoneme names instead of IPA."""
    backend: str = "auto"
    """auto, library (the espeakng-loader wheel) or binary (the espeak-ng program)."""


COMMANDS = {
    "prepare": (PrepareArgs, "onestep.audio.commands:prepare"),
    "mel": (MelArgs, "onestep.audio.commands:mel"),
    "phonemes": (PhonemesArgs, "onestep.audio.commands:phonemes"),
}


def main(argv: list[str] | None = None) -> int:
    return run_cli("onestep-audio", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
