"""CoMoSpeech (onestep.audio.tts): shapes and padding, training with monotonic alignment search on
real asterisk prompts (the prior and decoder losses fall), synthesis lengths at 1 and 4 NFE, the
one-step consistency student against the teacher, save/load, and errors."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from onestep.audio.features import MEL_PRESETS, log_mel
from onestep.audio.text import PhonemeVocab, TextError, phonemize
from onestep.audio.tts import (
    AUDIO_CD,
    TTS,
    CoMoSpeechLoss,
    MelStats,
    SpeechBatches,
    SpeechItem,
    TeacherConfig,
    distill_student,
    durations_from_log,
    load_speech,
    make_decoder,
    make_teacher,
    train_teacher,
    upsample,
)
from onestep.core.io import CheckpointError, save_model

TEL = MEL_PRESETS["telephone"]
TINY = TeacherConfig(hidden=32, ffn=64, layers=1, prenet_layers=1, heads=2, duration_hidden=32,
                     decoder_dims=(64,), decoder_time_dim=32, dropout=0.0)
PROMPTS = ("auth-thankyou", "vm-goodbye")  # "Thank you.", "Goodbye." (about a second each)


def test_shapes_padding_and_upsampling():
    vocab = PhonemeVocab.build(["ab c.", "ba"])
    torch.manual_seed(0)
    model = make_teacher(len(vocab), 16, replace(TINY, decoder_dims=(16, 32)))
    enc = model.text_encoder.eval()
    tokens = torch.tensor([vocab.encode("ab c."), vocab.encode("ba") + [0, 0, 0]])
    lengths = torch.tensor([5, 2])
    with torch.no_grad():
        mu, log_d, mask = enc(tokens, lengths)
        alone, log_alone, _ = enc(tokens[1:, :2], lengths[1:])
    assert mu.shape == (2, 5, 16) and log_d.shape == (2, 5) and mask.tolist()[1] == [1, 1, 0, 0, 0]
    assert torch.all(mu[1, 2:] == 0) and torch.all(log_d[1, 2:] == 0)
    # padding changes nothing for the real tokens
    assert torch.allclose(mu[1, :2], alone[0], atol=1e-5)
    assert torch.allclose(log_d[1, :2], log_alone[0], atol=1e-5)
    d = durations_from_log(torch.log(torch.tensor([[1.2, 0.1, 3.0], [2.0, 1.0, 9.0]])),
                           torch.tensor([[True, True, True], [True, True, False]]))
    assert d.tolist() == [[2, 1, 3], [2, 1, 0]]  # rounded up, at least 1, 0 on padding
    frames = upsample(mu[:, :3], d)
    assert frames.shape == (2, 6, 16)
    assert torch.equal(frames[0, 2], mu[0, 1]) and torch.equal(frames[0, 5], mu[0, 2])
    assert torch.equal(frames[1, 3], torch.zeros(16))  # past item 2's 3 frames
    den = model.decoder
    x, cond = torch.randn(2, 8, 16), torch.randn(2, 8, 16)
    assert den.x0(x, 0.5, cond).shape == (2, 8, 16)
    stats = MelStats(tuple([0.0] * 16), tuple([1.0] * 16))
    tts = TTS(enc, vocab, replace(TEL, n_mels=16), stats, decoder=den)
    assert tts.decode(torch.randn(1, 7, 16), nfe=2).shape == (1, 7, 16)  # 7 padded to 8 inside
    batch = {"tokens": tokens, "token_lengths": lengths, "mel": torch.randn(2, 12, 16),
             "frame_lengths": torch.tensor([12, 9])}
    loss, logs = CoMoSpeechLoss(segment=8)(model, batch, generator=torch.Generator())
    assert loss.ndim == 0 and set(logs) == {"prior", "duration", "diffusion", "mse_x0"}
    assert all(np.isfinite(v) for v in logs.values())


@pytest.fixture(scope="module")
def overfit(asterisk, tmp_path_factory):
    """A tiny teacher trained for 300 steps on two real prompts (about 10 s on one CPU thread),
    and its loss components on a fixed batch (both prompts, 8 draws of segment and noise
    each) before and after."""
    items = load_speech([u for u in asterisk if u.id in PROMPTS], TEL)
    assert len(items) == 2
    vocab = PhonemeVocab.build(i.phonemes for i in items)
    torch.manual_seed(0)
    model = make_teacher(len(vocab), TEL.n_mels, TINY)
    loss = CoMoSpeechLoss(segment=64)
    batch = SpeechBatches(items, vocab, MelStats.fit([i.mel for i in items])).batch([0, 1] * 8)

    def components():
        with torch.no_grad():
            c = loss.components(model, batch, generator=torch.Generator().manual_seed(1))
        return {k: float(v) for k, v in c.items()}

    before = components()
    tts, records = train_teacher(items, mel_config=TEL, config=TINY, loss=loss, vocab=vocab,
                                 steps=300, batch_size=4, lr=3e-3, ema_decay=None, model=model,
                                 out_dir=tmp_path_factory.mktemp("teacher"))
    return {"tts": tts, "items": items, "before": before, "after": components(),
            "records": records}


def test_mas_training_reduces_the_prior_loss(overfit):
    """The prior loss -log N(y; mu~_A, I) per frame and band under the alignment that MAS finds
    falls as the encoder trains (measured: 1.50 -> 1.05 nats), the duration loss with it (4.2 ->
    0.004), and the predicted durations add up to about the recordings' frames (104 and 89
    frames for 96 and 87)."""
    before, after = overfit["before"], overfit["after"]
    assert after["prior"] < before["prior"] - 0.25, (before, after)
    assert after["duration"] < 0.2 * before["duration"], (before, after)
    tts = overfit["tts"]
    for item in overfit["items"]:
        _, durations, _ = tts.frames(item.text)
        frames = item.mel.shape[0]
        assert abs(int(durations.sum()) - frames) < 0.2 * frames, (item.id, durations, frames)


def test_decoder_loss_falls_on_a_tiny_overfit(overfit):
    """EDM's loss of the mel decoder on the same segments, noise levels and noise falls by more
    than a fifth (measured: 1.13 -> 0.72), as does its x0 error (0.18 -> 0.08)."""
    before, after = overfit["before"], overfit["after"]
    assert after["diffusion"] < 0.8 * before["diffusion"], (before, after)
    assert after["mse_x0"] < before["mse_x0"], (before, after)


def test_synthesis_has_the_predicted_length(overfit):
    tts = overfit["tts"]
    hop = TEL.hop
    for text in ("Thank you.", "Goodbye. Thank you."):
        for nfe in (1, 4):
            s = tts.synthesize(text, nfe=nfe, n_iter=4)
            n_frames = int(s.durations.sum())
            assert len(s.durations) == len(tts.vocab.encode(s.phonemes))
            assert int(s.durations.min()) >= 1 and s.nfe == nfe and s.sample_rate == 8000
            assert s.mel.shape == (TEL.n_mels, n_frames)
            assert s.audio.shape == ((n_frames - 1) * hop,) and np.isfinite(s.audio).all()
            assert log_mel(s.audio, TEL).shape[-1] == n_frames  # the audio has those frames
    slow = tts.synthesize("Thank you.", nfe=1, length_scale=2.0, vocoder=False)
    fast = tts.synthesize("Thank you.", nfe=1, vocoder=False)
    assert slow.audio is None
    assert int(slow.durations.sum()) >= 1.8 * int(fast.durations.sum())


@pytest.fixture(scope="module")
def student(overfit, tmp_path_factory):
    """300 steps of consistency distillation of the overfit teacher (about 11 s)."""
    tts, _ = distill_student(overfit["tts"], overfit["items"], steps=300, batch_size=8,
                             segment=64, config=AUDIO_CD,
                             out_dir=tmp_path_factory.mktemp("student"))
    return tts


@pytest.mark.slow  # with the teacher and student fixtures about 25 s on one CPU thread
def test_one_step_student_is_closer_to_the_teacher_than_its_one_step(overfit, student):
    """From the same noise, the student's one network evaluation lands nearer the teacher's
    35-NFE Heun output than the teacher's own 1-NFE output does (measured mean squares on
    normalised mels: 0.73-0.77 against 0.93-0.97 for two prompts and two noises)."""
    teacher = overfit["tts"]
    assert student.kind == "student" and teacher.kind == "teacher"
    own, distilled = [], []
    for text in ("Thank you.", "Goodbye."):
        mu, _, _ = teacher.frames(text)
        for seed in (0, 1):
            noise = torch.randn(mu.shape, generator=torch.Generator().manual_seed(seed))
            ref = teacher.decode(mu, nfe=35, noise=noise)
            own.append(float((teacher.decode(mu, nfe=1, noise=noise) - ref).pow(2).mean()))
            distilled.append(float((student.decode(mu, nfe=1, noise=noise) - ref).pow(2).mean()))
    assert np.mean(distilled) < 0.9 * np.mean(own), (distilled, own)
    two = student.synthesize("Thank you.", nfe=2, vocoder=False)  # multistep consistency
    assert two.nfe == 2 and torch.isfinite(two.mel).all()


def test_save_and_load_give_identical_output(overfit, student, tmp_path):
    teacher = overfit["tts"]
    for tts, nfe in ((teacher, 4), (student, 1)):
        folder = tts.save(tmp_path / tts.kind)
        again = TTS.load(folder)
        assert again.kind == tts.kind and again.vocab == tts.vocab
        assert again.stats == tts.stats and again.mel_config == tts.mel_config
        a = tts.synthesize("Goodbye.", nfe=nfe, seed=3, n_iter=4)
        b = again.synthesize("Goodbye.", nfe=nfe, seed=3, n_iter=4)
        assert torch.equal(a.mel, b.mel) and np.array_equal(a.audio, b.audio)
        assert torch.equal(a.durations, b.durations)
    assert TTS.load(tmp_path / "student").student_config == AUDIO_CD
    save_model(tmp_path / "plain", teacher.decoder)  # a core model, not a speech model
    with pytest.raises(CheckpointError, match="not a speech model"):
        TTS.load(tmp_path / "plain")
    (tmp_path / "teacher" / "text_encoder.safetensors").unlink()
    with pytest.raises(CheckpointError, match="text_encoder.safetensors is missing"):
        TTS.load(tmp_path / "teacher")


def test_clear_errors_for_empty_text_and_unknown_phonemes():
    vocab = PhonemeVocab.build([phonemize("one two three")])
    torch.manual_seed(0)
    model = make_teacher(len(vocab), TEL.n_mels, TINY)
    stats = MelStats(tuple([0.0] * 64), tuple([1.0] * 64))
    tts = TTS(model.text_encoder, vocab, TEL, stats, decoder=model.decoder)
    assert tts.synthesize("two", nfe=1, vocoder=False).mel.shape[0] == 64
    for empty in ("", "   ", " , . "):
        with pytest.raises(TextError, match="empty text") as e:
            tts.synthesize(empty)
        assert "\n" not in str(e.value)
    with pytest.raises(TextError, match=r"phoneme symbol '.*' \(U\+[0-9A-F]{4}\) is not in the "
                                        "vocabulary") as e:
        tts.synthesize("zebra")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="does not fit the vocabulary"):
        TTS(model.text_encoder, PhonemeVocab.build(["ab"]), TEL, stats, decoder=model.decoder)
    with pytest.raises(ValueError, match="either a teacher decoder or a student"):
        TTS(model.text_encoder, vocab, TEL, stats)
    assert make_decoder(64, TINY).prediction == "x0"


def test_training_resumes_exactly(tmp_path):
    """A run of 4 steps equals one of 2 steps resumed to 4 (the core Trainer's checkpoint: weights,
    EMA, optimiser, random states), on made-up utterances."""
    g = torch.Generator().manual_seed(0)
    items = [SpeechItem(f"u{i}", "x", p, torch.randn(n, 16, generator=g))
             for i, (p, n) in enumerate([("ab c.", 20), ("ba", 12), ("cab.", 17)])]
    kw = dict(mel_config=replace(TEL, n_mels=16), config=replace(TINY, decoder_dims=(16,)),
              loss=CoMoSpeechLoss(segment=8), batch_size=2, warmup=1, ema_decay=0.9)
    whole, _ = train_teacher(items, steps=4, out_dir=tmp_path / "whole", **kw)
    train_teacher(items, steps=2, out_dir=tmp_path / "parts", **kw)
    parts, _ = train_teacher(items, steps=4, out_dir=tmp_path / "parts", resume=True, **kw)
    for a, b in ((whole.text_encoder, parts.text_encoder), (whole.decoder, parts.decoder)):
        for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), key
    fresh, _ = train_teacher(items, steps=2, out_dir=tmp_path / "fresh", **kw)
    assert not torch.equal(fresh.decoder.model.net.final[1].weight,
                           whole.decoder.model.net.final[1].weight)
