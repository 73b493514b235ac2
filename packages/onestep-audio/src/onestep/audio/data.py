"""Speech corpora as lists of utterances (id, text, normalized text, wav path).

- The LJSpeech layout, by path: `metadata.csv` with one `ID|transcript|normalized` line per
  utterance (the normalized column may be empty or absent) and `wavs/ID.wav`.
- Debian's asterisk-core-sounds-en-wav: 568 prompts recorded by one speaker (Allison Smith,
  8 kHz, CC-BY-SA-3.0), with their transcripts from asterisk-core-sounds-en's
  core-sounds-en.txt.gz. Both paths are arguments; the defaults are where Debian puts them.
- `write_ljspeech` writes any list of utterances in the LJSpeech layout (one sample rate,
  16-bit PCM), so the asterisk prompts or a user's own recordings become such a corpus.
- `split_utterances`: a deterministic train/test split by utterance id.

Every problem with a corpus is a one-line CorpusError naming the file and line.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .io import AudioError, read_wav, write_wav
from .text import normalize_text

__all__ = ["ASTERISK_SOUNDS", "ASTERISK_TRANSCRIPTS", "CorpusError", "Utterance", "load_corpus",
           "read_asterisk", "read_ljspeech", "split_utterances", "write_ljspeech"]

ASTERISK_SOUNDS = "/usr/share/asterisk/sounds/en_US_f_Allison"
"""Where Debian's asterisk-core-sounds-en-wav puts the wav prompts (subfolders digits/, ...)."""
ASTERISK_TRANSCRIPTS = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
"""Where Debian's asterisk-core-sounds-en puts the prompts' transcripts (`id: text` lines)."""


class CorpusError(ValueError):
    """A corpus cannot be read or written (a bad metadata line, a missing wav or folder)."""


@dataclass(frozen=True)
class Utterance:
    """One recording and its text."""

    id: str
    """Identifier, unique in its corpus (the wav's file name stem in the LJSpeech layout)."""
    text: str
    """The transcript as the corpus gives it."""
    normalized: str
    """The text a model reads: the corpus' own normalisation, or normalize_text(text)."""
    wav: Path
    """The recording."""


# -- LJSpeech layout ----------------------------------------------------------------------------
def read_ljspeech(root: str | os.PathLike, *, check_wavs: bool = True) -> list[Utterance]:
    """The utterances of an LJSpeech-layout corpus at `root`, in metadata order. A line with no
    transcript, an empty transcript, a repeated id or (with check_wavs) a missing wav is a
    CorpusError; blank lines are skipped."""
    root = Path(root)
    meta = root / "metadata.csv"
    if not root.is_dir():
        raise CorpusError(f"no corpus folder {root}")
    if not meta.is_file():
        raise CorpusError(f"{root} has no metadata.csv (the LJSpeech layout: metadata.csv with "
                          "ID|transcript|normalized lines, and wavs/ID.wav)")
    try:
        lines = meta.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise CorpusError(f"{meta} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    utterances, seen = [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{meta} line {number}"
        fields = line.split("|")
        uid = fields[0].strip()
        if not uid:
            raise CorpusError(f"{where}: no utterance id before the first '|'")
        if len(fields) < 2:
            raise CorpusError(f"{where} ({uid}): no transcript (expected "
                              "ID|transcript|normalized)")
        if len(fields) > 3:
            raise CorpusError(f"{where} ({uid}): {len(fields)} fields, expected at most 3 "
                              "(ID|transcript|normalized)")
        text = " ".join(fields[1].split())
        if not text:
            raise CorpusError(f"{where} ({uid}): empty transcript")
        normalized = " ".join(fields[2].split()) if len(fields) == 3 else ""
        normalized = normalized or normalize_text(text)
        if not re.search(r"\w", normalized):
            raise CorpusError(f"{where} ({uid}): the text has no words ({text[:40]!r})")
        if uid in seen:
            raise CorpusError(f"{where}: id {uid} repeats line {seen[uid]}")
        seen[uid] = number
        wav = root / "wavs" / f"{uid}.wav"
        if check_wavs and not wav.is_file():
            raise CorpusError(f"{where} ({uid}): no wav file {wav}")
        utterances.append(Utterance(uid, text, normalized, wav))
    if not utterances:
        raise CorpusError(f"{meta} lists no utterances")
    return utterances


def write_ljspeech(utterances, out: str | os.PathLike, *, sample_rate: int | None = None,
                   overwrite: bool = False) -> list[Utterance]:
    """Write `utterances` in the LJSpeech layout at `out`: wavs/ID.wav (mono 16-bit PCM,
    resampled to `sample_rate` when given; otherwise every recording must have one rate) and
    metadata.csv. An id's '/' becomes '_'. Returns the written utterances (read_ljspeech(out)
    reads the same). A folder holding other files is refused; `overwrite` replaces an
    existing corpus."""
    utterances = list(utterances)
    if not utterances:
        raise CorpusError("write_ljspeech got no utterances")
    out = Path(out)
    stems = {}
    for u in utterances:
        stem = u.id.replace("/", "_")
        if not re.fullmatch(r"[\w.+-]+", stem) or stem.startswith("."):
            raise CorpusError(f"utterance id {u.id!r} cannot name a wav file (use letters, "
                              "digits, _ . + - and /)")
        if stem in stems:
            raise CorpusError(f"utterance ids {stems[stem]!r} and {u.id!r} both become "
                              f"wavs/{stem}.wav")
        for field, value in (("text", u.text), ("normalized", u.normalized)):
            if "|" in value or "\n" in value or not value.strip():
                raise CorpusError(f"utterance {u.id}: its {field} must be one non-empty line "
                                  f"with no '|', got {value[:40]!r}")
        stems[stem] = u.id
    if out.exists():
        if not out.is_dir():
            raise CorpusError(f"{out} is a file, not a folder")
        if any(out.iterdir()):
            others = sorted(p.name for p in out.iterdir() if p.name not in ("metadata.csv",
                                                                          "wavs"))
            if others:
                raise CorpusError(f"{out} holds other files ({', '.join(others[:3])}); choose "
                                  "an empty or new folder")
            if not overwrite:
                raise CorpusError(f"{out} already holds a corpus; replace it with "
                                  "overwrite=True (--overwrite)")
            (out / "metadata.csv").unlink(missing_ok=True)
            shutil.rmtree(out / "wavs", ignore_errors=True)
    wavs = out / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    written, rates = [], {}
    for u, stem in zip(utterances, list(stems), strict=True):  # stems: in utterance order
        try:
            samples, rate = read_wav(u.wav, sample_rate, resample_to_rate=True)
        except AudioError as e:
            raise CorpusError(f"utterance {u.id}: {e}") from None
        rates.setdefault(rate, u.id)
        if len(rates) > 1:
            (a, ida), (b, idb) = list(rates.items())[:2]
            raise CorpusError(f"recordings at different rates ({ida}: {a} Hz, {idb}: {b} Hz); "
                              "pass a sample rate to resample them to")
        path = write_wav(wavs / f"{stem}.wav", samples, rate)
        written.append(Utterance(stem, u.text, u.normalized, path))
    tmp = out / "metadata.csv.tmp"
    tmp.write_text("".join(f"{u.id}|{u.text}|{u.normalized}\n" for u in written),
                   encoding="utf-8")
    tmp.replace(out / "metadata.csv")
    return written


# -- asterisk prompts ----------------------------------------------------------------------------
_ANNOTATION = re.compile(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)")


def read_asterisk(sounds: str | os.PathLike = ASTERISK_SOUNDS,
                  transcripts: str | os.PathLike = ASTERISK_TRANSCRIPTS, *,
                  include_nonspeech: bool = False) -> list[Utterance]:
    """The asterisk prompts (sorted by id, e.g. 'auth-thankyou', 'digits/1') that have both a
    wav under `sounds` and a transcript in `transcripts` (gzip or plain `id: text` lines).
    The text is what is said: notes in [], <> or () are removed ('at [@]' -> 'at'), and
    prompts with nothing said (tones, silences) are left out unless include_nonspeech, where
    their note is their text."""
    sounds, transcripts = Path(sounds), Path(transcripts)
    if not sounds.is_dir():
        raise CorpusError(f"no asterisk recordings at {sounds}: install the Debian package "
                          "asterisk-core-sounds-en-wav (apt-get install "
                          "asterisk-core-sounds-en-wav) or pass the folder")
    if not transcripts.is_file():
        raise CorpusError(f"no asterisk transcripts at {transcripts}: install the Debian package "
                          "asterisk-core-sounds-en (apt-get install asterisk-core-sounds-en) "
                          "or pass the file")
    opener = gzip.open if transcripts.suffix == ".gz" else open
    try:
        with opener(transcripts, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"{transcripts} cannot be read ({e})") from None
    said = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        uid, colon, text = line.partition(":")
        if not colon or not uid.strip() or " " in uid.strip():
            raise CorpusError(f"{transcripts} line {number}: expected 'id: text', got "
                              f"{line[:50]!r}")
        said[uid.strip()] = " ".join(text.split())
    utterances = []
    for uid in sorted(said):
        wav = sounds / f"{uid}.wav"
        if not wav.is_file():
            continue
        raw = said[uid]
        spoken = " ".join(_ANNOTATION.sub(" ", raw).split())
        if not re.search(r"\w", spoken):
            if not include_nonspeech:
                continue
            spoken = raw
        normalized = normalize_text(spoken)
        if not normalized:
            raise CorpusError(f"{transcripts}: the transcript of {uid} has no words ({raw!r})")
        utterances.append(Utterance(uid, spoken, normalized, wav))
    if not utterances:
        raise CorpusError(f"no transcript in {transcripts} names a wav under {sounds}")
    return utterances


# -- choosing and splitting -----------------------------------------------------------------------
def load_corpus(source: str | os.PathLike) -> list[Utterance]:
    """'asterisk' (Debian's prompts at their Debian paths) or the folder of an LJSpeech-layout
    corpus."""
    if str(source) == "asterisk":
        return read_asterisk()
    return read_ljspeech(source)


def split_utterances(utterances, test_fraction: float = 0.1, *,
                     seed: int = 0) -> tuple[list[Utterance], list[Utterance]]:
    """(train, test): round(n * test_fraction) utterances (at least one) go to test, chosen by a
    hash of (seed, id), so the split depends on the ids and the seed only, not on the order
    of the list; both keep the list's order."""
    utterances = list(utterances)
    if not 0 < test_fraction < 1:
        raise CorpusError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    if len(utterances) < 2:
        raise CorpusError(f"a split needs at least 2 utterances, got {len(utterances)}")
    ids = [u.id for u in utterances]
    if len(set(ids)) != len(ids):
        raise CorpusError("utterance ids repeat; a split by id needs unique ids")
    n_test = min(len(ids) - 1, max(1, round(len(ids) * test_fraction)))
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    test_ids = set(ranked[:n_test])
    return ([u for u in utterances if u.id not in test_ids],
            [u for u in utterances if u.id in test_ids])
