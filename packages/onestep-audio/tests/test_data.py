"""Corpora: the LJSpeech layout read and written, its malformed files, the asterisk prompts, and
the train/test split."""

import gzip

import numpy as np
import pytest
import soundfile as sf

from onestep.audio.data import (
    CorpusError,
    Utterance,
    load_corpus,
    read_asterisk,
    read_ljspeech,
    split_utterances,
    write_ljspeech,
)
from onestep.audio.io import read_wav, write_wav


def _corpus(root, lines, wavs=("LJ001-0001", "LJ001-0002"), rate=22050):
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for i, uid in enumerate(wavs):
        write_wav(root / "wavs" / f"{uid}.wav", 0.1 * np.sin(np.arange(2000) * (0.05 + i / 50)),
                  rate)
    return root


def test_ljspeech_reader(tmp_path):
    root = _corpus(tmp_path / "lj", ["LJ001-0001|Printing, in 1 sense.|Printing, in one sense.",
                                     "", "LJ001-0002|Dr. Who at 3 pm"])
    a, b = read_ljspeech(root)
    assert a == Utterance("LJ001-0001", "Printing, in 1 sense.", "Printing, in one sense.",
                          root / "wavs" / "LJ001-0001.wav")
    assert b.normalized == "Doctor Who at three pm"  # no normalized column: normalize_text


@pytest.mark.parametrize(("lines", "message"), [
    (["LJ001-0001|Fine.|Fine.", "LJ001-0002"], r"line 2 \(LJ001-0002\): no transcript"),
    (["LJ001-0001|   |", "LJ001-0002|x|x"], r"line 1 \(LJ001-0001\): empty transcript"),
    (["LJ001-0001|...|", "LJ001-0002|x|x"], "the text has no words"),
    (["LJ001-0001|a|a", "LJ001-0001|b|b"], "id LJ001-0001 repeats line 1"),
    (["LJ001-0001|a|a", "LJ001-0003|b|b"], r"line 2 \(LJ001-0003\): no wav file"),
    (["LJ001-0001|a|b|c"], "4 fields"),
    (["|a|a"], "no utterance id"),
    ([""], "lists no utterances"),
])
def test_ljspeech_malformed_metadata_is_a_one_line_error(tmp_path, lines, message):
    root = _corpus(tmp_path / "lj", lines)
    with pytest.raises(CorpusError, match=message) as e:
        read_ljspeech(root)
    assert "\n" not in str(e.value) and "metadata.csv" in str(e.value)


def test_ljspeech_missing_folder_or_metadata(tmp_path):
    with pytest.raises(CorpusError, match="no corpus folder"):
        read_ljspeech(tmp_path / "nope")
    with pytest.raises(CorpusError, match="has no metadata.csv"):
        read_ljspeech(tmp_path)
    (tmp_path / "metadata.csv").write_bytes(b"LJ1|\xff\xfe bad\n")
    with pytest.raises(CorpusError, match="not UTF-8"):
        read_ljspeech(tmp_path)


def test_ljspeech_writer_and_reader_round_trip(tmp_path):
    src = _corpus(tmp_path / "src", ["LJ001-0001|One.|One.", "LJ001-0002|Two, 2.|Two, two."],
                  rate=8000)
    utts = read_ljspeech(src)
    written = write_ljspeech(utts, tmp_path / "out")
    assert read_ljspeech(tmp_path / "out") == written
    for u, w in zip(utts, written, strict=True):
        assert (u.id, u.text, u.normalized) == (w.id, w.text, w.normalized)
        x, rx = read_wav(u.wav)
        y, ry = read_wav(w.wav)
        assert rx == ry == 8000 and np.array_equal(x, y)  # 16-bit in, 16-bit out: exact
    up = write_ljspeech(utts, tmp_path / "up", sample_rate=16000)
    assert {sf.info(str(u.wav)).samplerate for u in up} == {16000}
    assert sf.info(str(up[0].wav)).frames == 4000
    with pytest.raises(CorpusError, match="already holds a corpus"):
        write_ljspeech(utts, tmp_path / "out")
    assert write_ljspeech(utts[:1], tmp_path / "out", overwrite=True)[0].id == "LJ001-0001"
    assert len(read_ljspeech(tmp_path / "out")) == 1
    assert not (tmp_path / "out" / "wavs" / "LJ001-0002.wav").exists()


def test_ljspeech_writer_refuses_what_it_cannot_write(tmp_path):
    src = _corpus(tmp_path / "src", ["a|A.|A.", "b|B.|B."], wavs=("a", "b"))
    a, b = read_ljspeech(src)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(CorpusError, match="holds other files"):
        write_ljspeech([a], tmp_path / "busy", overwrite=True)
    with pytest.raises(CorpusError, match="both become wavs/x_y.wav"):
        write_ljspeech([Utterance("x/y", "A", "A", a.wav), Utterance("x_y", "B", "B", b.wav)],
                       tmp_path / "o1")
    with pytest.raises(CorpusError, match="its text must be one non-empty line"):
        write_ljspeech([Utterance("c", "A|B", "A B", a.wav)], tmp_path / "o2")
    write_wav(tmp_path / "slow.wav", np.zeros(800), 8000)
    with pytest.raises(CorpusError, match="different rates"):
        write_ljspeech([a, Utterance("s", "S.", "S.", tmp_path / "slow.wav")], tmp_path / "o3")
    (tmp_path / "bad.wav").write_text("junk")
    with pytest.raises(CorpusError, match="utterance z: .*not a readable audio file"):
        write_ljspeech([Utterance("z", "Z.", "Z.", tmp_path / "bad.wav")], tmp_path / "o4")


def test_asterisk_prompts_with_their_transcripts(asterisk):
    every = read_asterisk(include_nonspeech=True)
    assert len(every) == 568  # every recording of the Debian package has a transcript
    assert all(u.text.strip() and u.normalized.strip() and u.wav.is_file() for u in every)
    assert 545 <= len(asterisk) < 568  # tones and silences left out
    ids = {u.id for u in asterisk}
    assert "silence/1" not in ids and "beep" not in ids and "digits/7" in ids
    by_id = {u.id: u for u in asterisk}
    assert by_id["auth-thankyou"].text == "Thank you."
    assert by_id["letters/at"].text == "at"  # the '[@]' note removed
    assert by_id["digits/7"].normalized == "seven"
    assert "pound" in by_id["dictate/both_help"].normalized
    rates = {sf.info(str(u.wav)).samplerate for u in asterisk[::25]}
    assert rates == {8000}


def test_asterisk_paths_are_arguments(asterisk, tmp_path):
    some = asterisk[:3]
    lines = ["; a comment", ""] + [f"{u.id}: {u.text}" for u in some] + ["not-recorded: Hi."]
    plain = tmp_path / "t.txt"
    plain.write_text("\n".join(lines))
    zipped = tmp_path / "t.txt.gz"
    with gzip.open(zipped, "wt") as f:
        f.write("\n".join(lines))
    sounds = some[0].wav.parent
    assert [u.id for u in read_asterisk(sounds, plain)] == [u.id for u in some]
    assert read_asterisk(sounds, zipped) == read_asterisk(sounds, plain)
    with pytest.raises(CorpusError, match="Debian package asterisk-core-sounds-en-wav"):
        read_asterisk(tmp_path / "none", plain)
    with pytest.raises(CorpusError, match="Debian package asterisk-core-sounds-en "):
        read_asterisk(sounds, tmp_path / "none.txt.gz")
    (tmp_path / "bad.txt").write_text("this line has no colon\n")
    with pytest.raises(CorpusError, match="line 1: expected 'id: text'"):
        read_asterisk(sounds, tmp_path / "bad.txt")


def test_asterisk_converts_to_the_ljspeech_layout(asterisk, tmp_path):
    some = [u for u in asterisk if u.id.startswith("digits/")][:4] + asterisk[:2]
    written = write_ljspeech(some, tmp_path / "ast")
    back = read_ljspeech(tmp_path / "ast")
    assert back == written and back[0].id == some[0].id.replace("/", "_")
    assert [u.normalized for u in back] == [u.normalized for u in some]
    for u, w in zip(some, back, strict=True):
        x, _ = read_wav(u.wav)
        y, _ = read_wav(w.wav, 8000)
        assert np.abs(x - y).max() <= 1 / 32768 + 1e-7


def test_split_is_deterministic_by_id(asterisk):
    train, test = split_utterances(asterisk, 0.1, seed=0)
    assert len(test) == round(0.1 * len(asterisk)) and len(train) + len(test) == len(asterisk)
    assert not {u.id for u in train} & {u.id for u in test}
    train_r, test_r = split_utterances(list(reversed(asterisk)), 0.1, seed=0)
    assert {u.id for u in test_r} == {u.id for u in test}  # the order does not matter
    assert {u.id for u in split_utterances(asterisk, 0.1, seed=1)[1]} != {u.id for u in test}
    with pytest.raises(CorpusError, match="between 0 and 1"):
        split_utterances(asterisk, 1.0)
    with pytest.raises(CorpusError, match="at least 2"):
        split_utterances(asterisk[:1])
    with pytest.raises(CorpusError, match="ids repeat"):
        split_utterances([asterisk[0], asterisk[0]])
    assert load_corpus("asterisk") == asterisk
