"""Text for speech models: normalisation (numbers, symbols and whitespace to plain words),
phonemes from eSpeak NG, a phoneme vocabulary (symbol <-> id) and a character-level tokenizer
for when no phonemizer is wanted.

eSpeak NG is found in one of two places, tried in this order by `backend="auto"`:
- "library": libespeak-ng and its voice data from the `espeakng-loader` wheel (a dependency of
  this package), called through ctypes; nothing else to install.
- "binary": the `espeak-ng` program on PATH (Debian's `espeak-ng` package), run as a subprocess.
The two may be different eSpeak NG versions whose phonemes differ for some words.
eSpeak NG itself is GPL-3.0 software, installed separately and loaded or run at run time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import unicodedata
from pathlib import Path

__all__ = ["CharTokenizer", "PhonemeTokenizer", "PhonemeVocab", "PhonemizerError",
           "TextError", "espeak_backend", "normalize_text", "number_to_words", "phonemize"]

PUNCTUATION = ",.!?"
"""Clause punctuation kept through normalisation and phonemisation (';' and ':' become ',')."""


class TextError(ValueError):
    """A text cannot be used (empty after normalisation, or a symbol a vocabulary lacks)."""


class PhonemizerError(TextError):
    """No eSpeak NG could be found or run."""


# -- normalisation ------------------------------------------------------------------------------
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth",
            "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}


def number_to_words(n: int) -> str:
    """English words for a whole number 0 <= n < 10**15: 1234 -> 'one thousand two hundred
    thirty four'."""
    if n < 0 or n >= 10**15:
        raise TextError(f"number_to_words covers 0 to 10**15 - 1, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    for scale, name in _SCALES:
        if n >= scale:
            rest = n % scale
            return (number_to_words(n // scale) + " " + name
                    + ("" if rest == 0 else " " + number_to_words(rest)))
    raise AssertionError(n)


def _ordinal_words(n: int) -> str:
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORDINAL:
        words[-1] = _ORDINAL[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _number(match: re.Match) -> str:
    whole, frac, suffix = match.group(1).replace(",", ""), match.group(2), match.group(3)
    if len(whole) > 15:  # too long to read as one number: read its digits
        return " " + " ".join(_ONES[int(d)] for d in whole) + " "
    if suffix:
        return f" {_ordinal_words(int(whole))} "
    words = number_to_words(int(whole))
    if frac:
        words += " point " + " ".join(_ONES[int(d)] for d in frac)
    return f" {words} "


_SYMBOLS = {"&": " and ", "%": " percent ", "@": " at ", "+": " plus ", "=": " equals ",
            "*": " star ", "#": " pound ", "$": " dollars ", "/": " slash "}
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                         "\u2013": "-", "\u2014": "-"})
_NUMBER = re.compile(r"(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?:(st|nd|rd|th)\b)?")
_DOLLARS = re.compile(r"\$\s*(\d[\d,]*)(?:\.(\d\d))?\b")
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "ms": "miss", "dr": "doctor", "st": "saint",
                  "jr": "junior", "sr": "senior", "vs": "versus", "etc": "et cetera",
                  "co": "company", "ltd": "limited", "gen": "general",
                  "capt": "captain", "lt": "lieutenant", "col": "colonel", "sgt": "sergeant",
                  "prof": "professor", "rev": "reverend", "hon": "honorable", "ft": "fort"}
_ABBREVIATION = re.compile(r"\b(" + "|".join(_ABBREVIATIONS) + r")\.(?=\s)|\b(no)\.(?=\s*\d)",
                           re.IGNORECASE)


def _dollars(match: re.Match) -> str:
    cents = f" and {match.group(2)} cents" if match.group(2) and int(match.group(2)) else ""
    return f" {match.group(1)} dollars{cents} "


def _abbreviation(match: re.Match) -> str:
    short = match.group(1) or match.group(2)
    word = _ABBREVIATIONS.get(short.lower(), "number")
    return word.capitalize() if short[0].isupper() else word


def normalize_text(text: str) -> str:
    """Plain words and clause punctuation for a phonemizer or tokenizer: Unicode NFKC, typographic
    quotes and dashes made plain, numbers as words ('28.8' -> 'twenty eight point eight',
    '3rd' -> 'third', '$5.50' -> 'five dollars and fifty cents'), common abbreviations spelt out
    ('Mr.' -> 'Mister'), symbols as words ('*' -> 'star', '#' -> 'pound', as telephone prompts
    read them), ';', ':' and dashes between words as ',', brackets and quotes dropped, one space
    between words. Case is kept."""
    t = unicodedata.normalize("NFKC", text).translate(_QUOTES)
    t = _ABBREVIATION.sub(_abbreviation, t)
    t = _DOLLARS.sub(_dollars, t)
    t = _NUMBER.sub(_number, t)
    t = "".join(_SYMBOLS.get(c, c) for c in t)
    t = re.sub(r"[;:]|\s-+\s|--+", ", ", t)
    t = re.sub(r"[\"()\[\]{}<>_|\\^~`]", " ", t)
    t = re.sub(r"\s+([,.!?])", r"\1", re.sub(r"\s+", " ", t)).strip()
    t = re.sub(r"([,.!?])(?:\s*[,.!?])+", r"\1", t)  # one mark per clause end: '?.' -> '?'
    return t.strip(" ,")


# -- eSpeak NG ---------------------------------------------------------------------------------
_LIBRARY = {"lib": None, "voice": None, "error": None}
_LIBRARY_LOCK = threading.Lock()
_AUDIO_OUTPUT_SYNCHRONOUS, _INITIALIZE_DONT_EXIT, _CHARS_UTF8 = 0x02, 0x8000, 1


def _load_library():
    """libespeak-ng from the espeakng-loader wheel, initialised once (the caller holds the
    lock); None (and the reason in _LIBRARY['error']) where it cannot be loaded."""
    if _LIBRARY["lib"] is not None or _LIBRARY["error"] is not None:
        return _LIBRARY["lib"]
    try:
        import ctypes

        import espeakng_loader

        lib = ctypes.cdll.LoadLibrary(str(espeakng_loader.get_library_path()))
        data = str(espeakng_loader.get_data_path()).encode()
        if lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_DONT_EXIT) <= 0:
            raise OSError("espeak_Initialize failed")
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                              ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        _LIBRARY["lib"] = lib
    except (ImportError, OSError, AttributeError) as e:
        _LIBRARY["error"] = " ".join(str(e).split())
    return _LIBRARY["lib"]


def espeak_backend(backend: str = "auto") -> str:
    """The eSpeak NG backend `backend` resolves to: 'library' (the espeakng-loader wheel) or
    'binary' (espeak-ng on PATH); PhonemizerError where the one asked for (or, for 'auto',
    either) is missing."""
    if backend not in ("auto", "library", "binary"):
        raise PhonemizerError(f"unknown eSpeak NG backend {backend!r}; use auto, library or "
                              "binary")
    if backend in ("auto", "library"):
        with _LIBRARY_LOCK:
            if _load_library() is not None:
                return "library"
        if backend == "library":
            raise PhonemizerError("libespeak-ng from the espeakng-loader package could not be "
                                  f"loaded ({_LIBRARY['error']}); pip install espeakng-loader")
    if shutil.which("espeak-ng") is not None:
        return "binary"
    if backend == "binary":
        raise PhonemizerError("the espeak-ng program is not on PATH; install the Debian "
                              "package espeak-ng (apt-get install espeak-ng)")
    raise PhonemizerError("no eSpeak NG found: pip install espeakng-loader, or install the "
                          "Debian package espeak-ng (apt-get install espeak-ng)")


def _library_phonemes(chunk: str, voice: str, ipa: bool) -> str:
    import ctypes

    with _LIBRARY_LOCK:
        lib = _load_library()
        if _LIBRARY["voice"] != voice:
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise PhonemizerError(f"eSpeak NG has no voice {voice!r}")
            _LIBRARY["voice"] = voice
        text = ctypes.c_char_p(chunk.encode())
        pointer = ctypes.pointer(text)
        clauses = []
        while pointer.contents.value:  # one call per clause; it advances the pointer
            clauses.append(lib.espeak_TextToPhonemes(pointer, _CHARS_UTF8,
                                                     2 if ipa else 0).decode())
    return " ".join(clauses)


def _binary_phonemes(chunk: str, voice: str, ipa: bool) -> str:
    done = subprocess.run(["espeak-ng", "-q", "--ipa" if ipa else "-x", "-v", voice, "--stdin"],
                          input=chunk, capture_output=True, text=True)
    if done.returncode != 0 or (done.stderr.strip() and not done.stdout.strip()):
        reason = " ".join(done.stderr.split()) or f"exit code {done.returncode}"
        raise PhonemizerError(f"espeak-ng failed on {chunk[:40]!r} ({reason})")
    return " ".join(done.stdout.split())


def phonemize(text: str, *, voice: str = "en-us", ipa: bool = True,
              backend: str = "auto") -> str:
    """Phonemes of `text` from eSpeak NG: IPA (or eSpeak's ASCII phoneme names with
    ipa=False), with stress marks, one space between words, and the clause punctuation
    , . ! ? kept after the word it follows. The text is normalised first (normalize_text)."""
    which = espeak_backend(backend)
    words = normalize_text(text)
    if not words:
        raise TextError(f"nothing to phonemize in {text[:60]!r}")
    run = _library_phonemes if which == "library" else _binary_phonemes
    pieces = []
    for chunk, mark in re.findall(r"([^,.!?]*)([,.!?]?)", words):
        phonemes = run(chunk, voice, ipa) if chunk.strip() else ""
        phonemes = re.sub(r"\([a-z]{2,3}(?:-[a-z0-9]+)?\)", "", phonemes)  # (fr)...(en) marks
        phonemes = " ".join(phonemes.split())
        if phonemes:
            pieces.append(phonemes + mark)
        elif mark and pieces and pieces[-1][-1] not in PUNCTUATION:
            pieces[-1] += mark
    out = " ".join(pieces)
    if not out:
        raise TextError(f"eSpeak NG gave no phonemes for {text[:60]!r}")
    return out


# -- vocabularies and tokenizers ----------------------------------------------------------------
PAD = "<pad>"


class PhonemeVocab:
    """Symbol <-> id for phoneme strings: one symbol per Unicode code point (IPA letters,
    stress and length marks, the space between words, punctuation); id 0 is padding.
    Build it from the phoneme strings of a corpus; save it beside a model."""

    def __init__(self, symbols):
        symbols = list(symbols)
        if not symbols or symbols[0] != PAD:
            symbols = [PAD, *[s for s in symbols if s != PAD]]
        if len(set(symbols)) != len(symbols):
            raise TextError("PhonemeVocab symbols must be distinct")
        bad = [s for s in symbols[1:] if len(s) != 1]
        if bad:
            raise TextError(f"PhonemeVocab symbols are single characters, got {bad[:3]}")
        self.symbols = tuple(symbols)
        self.ids = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def build(cls, phoneme_strings) -> PhonemeVocab:
        """The vocabulary of every symbol in `phoneme_strings`, in sorted order after <pad>."""
        found = set()
        for s in phoneme_strings:
            found.update(s)
        if not found:
            raise TextError("PhonemeVocab.build got no symbols")
        return cls([PAD, *sorted(found)])

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other) -> bool:
        return isinstance(other, PhonemeVocab) and self.symbols == other.symbols

    def encode(self, phonemes: str) -> list[int]:
        """Ids of the symbols of `phonemes`; a symbol not in the vocabulary is a TextError."""
        try:
            return [self.ids[c] for c in phonemes]
        except KeyError as e:
            raise TextError(f"phoneme symbol {e.args[0]!r} (U+{ord(e.args[0]):04X}) is not in "
                            f"the vocabulary of {len(self)} symbols") from None

    def decode(self, ids) -> str:
        """The phoneme string of `ids` (padding dropped)."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.symbols):
                raise TextError(f"id {i} is outside the vocabulary (0..{len(self) - 1})")
            if i:
                out.append(self.symbols[i])
        return "".join(out)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"kind": "phonemes", "symbols": list(self.symbols)},
                                   ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PhonemeVocab:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            symbols = data["symbols"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TextError(f"{path} is not a phoneme vocabulary file ({e})") from None
        return cls(symbols)


class PhonemeTokenizer:
    """Text -> phonemes (eSpeak NG) -> ids with a PhonemeVocab."""

    def __init__(self, vocab: PhonemeVocab, *, voice: str = "en-us", backend: str = "auto"):
        self.vocab, self.voice, self.backend = vocab, voice, backend

    def phonemes(self, text: str) -> str:
        return phonemize(text, voice=self.voice, backend=self.backend)

    def encode(self, text: str) -> list[int]:
        return self.vocab.encode(self.phonemes(text))

    def decode(self, ids) -> str:
        return self.vocab.decode(ids)

    def __len__(self) -> int:
        return len(self.vocab)


class CharTokenizer:
    """Characters -> ids with no phonemizer: the normalised text, lowercased, accents removed,
    over a fixed alphabet (padding 0, space, ' - and clause punctuation, a-z); any other
    character is dropped."""

    ALPHABET = (PAD, " ", "'", "-", *PUNCTUATION, *"abcdefghijklmnopqrstuvwxyz")

    def __init__(self):
        self.symbols = self.ALPHABET
        self.ids = {s: i for i, s in enumerate(self.symbols)}

    def clean(self, text: str) -> str:
        """The text as the tokenizer sees it (what decode(encode(text)) returns)."""
        t = unicodedata.normalize("NFKD", normalize_text(text).lower())
        t = "".join(c for c in t if c in self.ids and c != PAD)
        return " ".join(t.split())

    def encode(self, text: str) -> list[int]:
        t = self.clean(text)
        if not t.strip(" " + PUNCTUATION):
            raise TextError(f"no letters to tokenize in {text[:60]!r}")
        return [self.ids[c] for c in t]

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.symbols):
                raise TextError(f"id {i} is outside the alphabet (0..{len(self.symbols) - 1})")
            if i:
                out.append(self.symbols[i])
        return "".join(out)

    def __len__(self) -> int:
        return len(self.symbols)
