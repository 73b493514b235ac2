"""The onestep-audio command line: help without torch, a tiny run of every command, and one-line
errors (exit 2) for bad input."""

import subprocess
import sys

import numpy as np
import soundfile as sf

from onestep.audio.cli import main
from onestep.audio.data import read_ljspeech
from onestep.audio.io import write_wav


def test_help_imports_no_torch():
    code = ("import sys; from onestep.audio.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', [m for m in ('torch', 'torchaudio', 'soundfile', 'numpy') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert all(c in out.stdout for c in ("prepare", "mel", "phonemes"))
    assert "LOADED []" in out.stdout


def test_prepare_asterisk_and_resample_the_result(asterisk, tmp_path, capsys):
    some = [u for u in asterisk if u.id.startswith("digits/")][:5]
    (tmp_path / "t.txt").write_text("".join(f"{u.id}: {u.text}\n" for u in some))
    args = ["prepare", "--corpus", "asterisk", "--sounds", str(some[0].wav.parents[1]),
            "--transcripts", str(tmp_path / "t.txt"), "--out", str(tmp_path / "ast")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "wrote 5 utterances" in out and "8000 Hz" in out and "4 train, 1 test" in out
    back = read_ljspeech(tmp_path / "ast")
    assert [u.text for u in back] == [u.text for u in some]
    assert main(args) == 2
    assert "already holds a corpus" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert main(["prepare", "--corpus", str(tmp_path / "ast"), "--out", str(tmp_path / "up"),
                 "--sample-rate", "16000"]) == 0
    assert {sf.info(str(u.wav)).samplerate for u in read_ljspeech(tmp_path / "up")} == {16000}
    capsys.readouterr()
    assert main(["prepare", "--corpus", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onestep-audio prepare: error: no corpus folder") and err.count("\n") == 1


def test_mel_draws_and_inverts(tmp_path, capsys):
    t = np.arange(8000) / 8000
    write_wav(tmp_path / "x.wav", 0.4 * np.sin(2 * np.pi * 440 * t) * np.hanning(8000), 8000)
    assert main(["mel", "--wav", str(tmp_path / "x.wav"), "--out", str(tmp_path / "m.png"),
                 "--griffin-lim", str(tmp_path / "gl.wav"), "--n-iter", "16"]) == 0
    out = capsys.readouterr().out
    assert "101 frames x 64 mel bands" in out and "spectral convergence" in out
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sf.info(str(tmp_path / "gl.wav")).samplerate == 8000
    assert main(["mel", "--wav", str(tmp_path / "x.wav"), "--out", str(tmp_path / "l.png"),
                 "--preset", "ljspeech"]) == 0
    assert "80 mel bands" in capsys.readouterr().out
    assert main(["mel", "--wav", str(tmp_path / "x.wav"), "--out", str(tmp_path / "b.png"),
                 "--preset", "studio"]) == 2
    assert "unknown --preset 'studio'" in capsys.readouterr().err
    assert main(["mel", "--wav", str(tmp_path / "no.wav"), "--out", str(tmp_path / "b.png")]) == 2
    assert "error: no such audio file" in capsys.readouterr().err


def test_phonemes(capsys):
    assert main(["phonemes", "--text", "Press 1 now."]) == 0
    assert capsys.readouterr().out == "Press one now.\npɹˈɛs wˈʌn nˈaʊ.\n"
    assert main(["phonemes", "--text", "  "]) == 2
    assert "--text is required" in capsys.readouterr().err
