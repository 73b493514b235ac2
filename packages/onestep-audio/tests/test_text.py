"""Text normalisation, eSpeak NG phonemes (the wheel's library and Debian's program), the phoneme
vocabulary and the character tokenizer."""

import pytest

from onestep.audio import text as T
from onestep.audio.text import (
    CharTokenizer,
    PhonemeTokenizer,
    PhonemeVocab,
    PhonemizerError,
    TextError,
    espeak_backend,
    normalize_text,
    number_to_words,
    phonemize,
)


def test_number_to_words():
    assert number_to_words(0) == "zero"
    assert number_to_words(13) == "thirteen"
    assert number_to_words(40) == "forty"
    assert number_to_words(105) == "one hundred five"
    assert number_to_words(1234) == "one thousand two hundred thirty four"
    assert number_to_words(2_000_017) == "two million seventeen"
    assert number_to_words(10**12) == "one trillion"
    with pytest.raises(TextError):
        number_to_words(-1)


@pytest.mark.parametrize(("raw", "normal"), [
    ("Dial  600 now!", "Dial six hundred now!"),
    ("press * to toggle pause, press # to enter", "press star to toggle pause, press pound to "
     "enter"),
    ("a 28.8 kilobit modem", "a twenty eight point eight kilobit modem"),
    ("It costs $5.50 on the 21st", "It costs five dollars and fifty cents on the twenty first"),
    ("Mr. Smith’s dog -- 100% sure?.", "Mister Smith's dog, one hundred percent sure?"),
    ('a polite "don\'t call" menu; ok', "a polite don't call menu, ok"),
    ("  No. 3  ", "Number three"),
    ("card 1234567890123456.", "card one two three four five six seven eight nine zero one two "
     "three four five six."),
])
def test_normalize_text(raw, normal):
    assert normalize_text(raw) == normal


def test_phonemes_of_known_words_from_the_wheel():
    assert espeak_backend() == "library"
    assert phonemize("hello") == "həlˈoʊ"
    assert phonemize("Thank you.") == "θˈæŋk juː."
    assert phonemize("Hello, world!") == "həlˈoʊ, wˈɜːld!"
    assert phonemize("hello", ipa=False) == "h@l'oU"
    assert phonemize("ich sieben", voice="de") == "ɪç zˈiːbən"  # German rules
    with pytest.raises(PhonemizerError, match="no voice"):
        phonemize("hello", voice="no-such-voice")
    with pytest.raises(TextError, match="nothing to phonemize"):
        phonemize(" [] ")


def test_the_debian_program_agrees_on_plain_words(espeak_program):
    for words in ("hello", "Thank you.", "Please enter your password, followed by the pound "
                  "key."):
        assert phonemize(words, backend="binary") == phonemize(words, backend="library")
    assert phonemize("hello", ipa=False, backend="binary") == "h@l'oU"


def test_missing_espeak_names_what_to_install(monkeypatch):
    monkeypatch.setattr(T.shutil, "which", lambda name: None)
    with pytest.raises(PhonemizerError, match="Debian package espeak-ng"):
        espeak_backend("binary")
    monkeypatch.setitem(T._LIBRARY, "lib", None)
    monkeypatch.setitem(T._LIBRARY, "error", "cannot open shared object file")
    with pytest.raises(PhonemizerError, match="pip install espeakng-loader"):
        espeak_backend("library")
    with pytest.raises(PhonemizerError, match="pip install espeakng-loader, or install the "
                       "Debian package espeak-ng"):
        phonemize("hello")
    with pytest.raises(PhonemizerError, match="unknown eSpeak NG backend"):
        espeak_backend("festival")


def test_auto_falls_back_to_the_program_without_the_wheel(monkeypatch, espeak_program):
    monkeypatch.setitem(T._LIBRARY, "lib", None)
    monkeypatch.setitem(T._LIBRARY, "error", "no wheel")
    assert espeak_backend() == "binary"
    assert phonemize("hello") == "həlˈoʊ"


def test_phoneme_vocabulary_round_trips_a_real_corpus(asterisk, tmp_path):
    phonemes = [phonemize(u.normalized) for u in asterisk]
    vocab = PhonemeVocab.build(phonemes)
    assert vocab.symbols[0] == "<pad>" and " " in vocab.symbols and "ˈ" in vocab.symbols
    assert 30 < len(vocab) < 80
    for p in phonemes:
        ids = vocab.encode(p)
        assert 0 not in ids and vocab.decode(ids) == p
    assert vocab.decode([0, *vocab.encode("hɛ"), 0]) == "hɛ"  # padding dropped
    again = PhonemeVocab.load(vocab.save(tmp_path / "vocab.json"))
    assert again == vocab and again.encode(phonemes[3]) == vocab.encode(phonemes[3])
    with pytest.raises(TextError, match=r"'ʁ' \(U\+0281\) is not in the vocabulary"):
        vocab.encode("ʁ")
    with pytest.raises(TextError, match="outside the vocabulary"):
        vocab.decode([len(vocab)])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(TextError, match="not a phoneme vocabulary"):
        PhonemeVocab.load(tmp_path / "bad.json")
    tok = PhonemeTokenizer(vocab)
    assert tok.decode(tok.encode("Thank you.")) == "θˈæŋk juː."


def test_char_tokenizer_round_trips_the_cleaned_text():
    tok = CharTokenizer()
    text = "Café au lait, 2 please -- NOW!"
    ids = tok.encode(text)
    assert tok.decode(ids) == tok.clean(text) == "cafe au lait, two please, now!"
    assert min(ids) > 0 and max(ids) < len(tok)
    with pytest.raises(TextError, match="no letters"):
        tok.encode("!!! ...")
    with pytest.raises(TextError, match="outside the alphabet"):
        tok.decode([99])
