"""CoMoSpeech (Ye et al. 2023, ACM MM): a diffusion text-to-speech teacher in the manner of
Grad-TTS (Popov et al. 2021) with EDM's preconditioning (Karras et al. 2022), and its one-step
student by consistency distillation (Song et al. 2023). Speech only for now.

The teacher, with y the normalised log-mel frames (T, M) and the phonemes x_1..x_N:
- **Text encoder** (Grad-TTS Sec. 3): phoneme embedding, a convolutional prenet, transformer
  blocks and a linear map to mu~_i, a mel-space mean per phoneme (N, M).
- **Alignment**: monotonic alignment search (Glow-TTS Alg. 1, `align`) for the alignment A that
  maximises sum_j log N(y_j; mu~_A(j), I), under no gradient; then Grad-TTS's prior (encoder)
  loss L_enc = -1/(T M) sum_j log N(y_j; mu~_A(j), I) with mu = mu~_A, the encoding upsampled
  to the frames.
- **Duration predictor** on the stop-gradient encoder states (Grad-TTS): log-durations, trained
  by L_dp = mean_i (log d^_i - log d_i)^2 with d_i = sum_j 1[A(j) = i] the frames MAS gives
  phoneme i. At synthesis d_i = ceil(exp(log d^_i) * length_scale), at least one frame.
- **Mel decoder**: a core Denoiser on the EDM path, D(x; sigma, mu) = c_skip(sigma) x +
  c_out(sigma) F(c_in(sigma) x, c_noise(sigma), mu) (EDM Eq. 7 and Table 1) with F a core
  UNet1D over frames (mel bands as channels) taking mu as frame-aligned local conditioning
  (concatenated to its input, as Grad-TTS's decoder stacks mu with x_t), trained by EDM's loss
  lambda(sigma) ||D(y + sigma n; sigma, mu) - y||^2 with ln sigma ~ N(-1.2, 1.2^2) (EDM Eq. 2
  and Table 1; core `EDMLoss`) on random segments of `segment` frames (Grad-TTS's out_size).
  CoMoSpeech's teacher is this decoder (Sec. 3: EDM preconditioning in place of Grad-TTS's
  score network with the prior N(mu, I); here the prior is EDM's N(0, sigma_max^2 I)).
  The teacher's loss is L_enc + L_dp + L_diff, Grad-TTS's sum.

The student (CoMoSpeech Sec. 3, consistency distillation): the consistency function
f(x, sigma, mu) = c_skip(sigma) x + c_out(sigma) F_theta(c_in x, c_noise, mu), a copy of the
teacher's decoder, trained by core's `CDDistiller` (Song et al. 2023, Alg. 2): x_{t_{n+1}} = y +
sigma_{n+1} z on the Karras grid, one teacher Heun step to x^_{t_n}, loss
||f_theta(x_{t_{n+1}}) - f_theta^-(x^_{t_n})||^2 with an EMA target theta^-. Core's EDM
coefficients meet the boundary condition f(x, 0) = x (c_skip(0) = 1, c_out(0) = 0); CoMoSpeech,
as the consistency-model paper, shifts them to hold at sigma_min = 0.002 exactly, which differs
by O(sigma_min). The encoder and durations are the teacher's, unchanged. The student samples
in one network evaluation (f at sigma_max = 80), or in several by multistep consistency
sampling (Song et al. 2023, Alg. 1).

Mels are `features.log_mel` frames, normalised per band to mean 0 and standard deviation 1 with
the training corpus' statistics (kept with the model, `MelStats`), so sigma_data = 1. Synthesis:
text -> normalize_text -> phonemize (eSpeak NG) -> PhonemeVocab ids -> mu~, durations -> mu
(T, M) -> the decoder (teacher: core `sample` with a solver and schedule at a given NFE;
student: its Generator) -> denormalised log-mel -> `features.griffin_lim`.

    cfg = MEL_PRESETS["telephone"]
    items = load_speech(train_utterances, cfg)
    teacher, logs = train_teacher(items, mel_config=cfg, steps=2000, out_dir="runs/teacher")
    teacher.synthesize("Please hold.", nfe=10).audio        # float32 samples at 8 kHz
    student, logs = distill_student(teacher, items, steps=1000, out_dir="runs/student")
    student.save("models/student"); TTS.load("models/student").synthesize("Goodbye.")
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from onestep.core.denoiser import Denoiser
from onestep.core.distill.base import Generator
from onestep.core.distill.consistency import CDConfig, CDDistiller
from onestep.core.losses import EDMLoss
from onestep.core.nn import EDMPrecond, SinusoidalEmbedding, UNet1D
from onestep.core.paths import EDM
from onestep.core.train import LossTask, TrainConfig, Trainer

from .align import alignment_from_durations, monotonic_alignment_search
from .features import MelConfig, griffin_lim, log_mel
from .text import PhonemeVocab, TextError, normalize_text, phonemize

__all__ = ["AUDIO_CD", "MODEL_FORMAT", "CoMoSpeech", "CoMoSpeechLoss", "DurationPredictor",
           "MelStats", "SpeechBatches", "SpeechItem", "Synthesis", "TTS", "TeacherConfig",
           "TextEncoder", "distill_student", "load_speech", "make_teacher", "text_phonemes",
           "train_teacher"]

MODEL_FORMAT = 1
"""Version of the "tts" entry a saved speech model keeps in model.json's extra."""
EDM_TIME_SCALE = 250.0
"""The UNet1D's time_scale under EDMPrecond, whose c_noise = ln(sigma) / 4 spans about
[-1.6, 1.1] (core EDMPrecond's note): a width of ~700 in the sinusoidal embedding."""
LOG_2PI = math.log(2 * math.pi)
TEXT_ENCODER_FILE = "text_encoder.safetensors"


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherConfig:
    """Sizes of the CoMoSpeech teacher. The defaults are tiny, for a CPU and 8 kHz telephone
    mels; Grad-TTS's own are given with each field (its decoder is a 2-D UNet)."""

    hidden: int = 128
    """Text encoder width (Grad-TTS: 192)."""
    prenet_layers: int = 3
    """Residual conv-ReLU-LayerNorm blocks before the transformer (Grad-TTS: 3)."""
    kernel: int = 5
    """Prenet convolution width (Grad-TTS: 5)."""
    layers: int = 3
    """Transformer blocks (Grad-TTS: 6)."""
    heads: int = 2
    """Attention heads (Grad-TTS: 2)."""
    ffn: int = 384
    """Feed-forward width of a transformer block (Grad-TTS: 768)."""
    dropout: float = 0.1
    """Dropout in the text encoder and duration predictor (Grad-TTS: 0.1)."""
    duration_hidden: int = 128
    """Duration predictor channels (Grad-TTS: 256)."""
    duration_kernel: int = 3
    """Duration predictor convolution width (Grad-TTS: 3)."""
    decoder_dims: tuple[int, ...] = (64,)
    """UNet1D channels per level (frame counts are padded to a multiple of 2^(levels - 1)).
    One level by default: core UNet1D keeps Diffusion Policy's wiring, whose output is made
    from half-resolution features (the finest skip is unused), and a mel denoiser at low noise
    must pass per-frame detail through. Measured on one asterisk prompt overfitted for 1000
    steps: x0 error at sigma = 1 of 0.10 with (64,) against 0.26 with (32, 64), and 50-step
    ODE samples 0.57 from the recording against 1.35 (normalised mels, mean squares); on the
    training split, 600 steps of batch 16: mel MCD at 50 NFE 7.1 dB with (64,) against 7.6 dB
    with (64, 128), 1.35x faster."""
    decoder_time_dim: int = 64
    """UNet1D time-embedding width."""
    decoder_kernel: int = 5
    """UNet1D convolution width (over frames)."""
    decoder_groups: int = 8
    """GroupNorm groups in the UNet1D."""
    sigma_data: float = 1.0
    """EDM's sigma_data: 1 for mels normalised per band to unit variance (EDM Table 1 uses 0.5
    for images in [-1, 1])."""
    sigma_max: float = 80.0
    """The EDM path's largest noise level (EDM Table 1; CoMoSpeech samples from it)."""

    def validate(self) -> None:
        for name in ("hidden", "prenet_layers", "kernel", "layers", "heads", "ffn",
                     "duration_hidden", "duration_kernel", "decoder_time_dim", "decoder_kernel",
                     "decoder_groups"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"TeacherConfig.{name} must be a positive integer, got {v!r}")
        if self.hidden % self.heads:
            raise ValueError(f"TeacherConfig.hidden ({self.hidden}) must be divisible by heads "
                             f"({self.heads})")
        if not self.decoder_dims or min(self.decoder_dims) < 1:
            raise ValueError(f"TeacherConfig.decoder_dims must be positive, got "
                             f"{self.decoder_dims}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"TeacherConfig.dropout must be in [0, 1), got {self.dropout}")
        if not (self.sigma_data > 0 and self.sigma_max > 0):
            raise ValueError("TeacherConfig.sigma_data and sigma_max must be positive")


AUDIO_CD = CDConfig(num_points=18, lr=1e-3, target_ema=0.95, solver="heun", metric="l2")
"""Consistency distillation of the mel decoder: core's CD with the Karras grid of 18 points from
sigma 0.002 to 80, Heun teacher steps, squared L2 and an EMA target of decay 0.95 (Song et al.
2023, Table 3's CIFAR-10 values), and a learning rate of 1e-3 for a few minutes of CPU training
(the paper: 4e-4 at batch 512 for 800k steps). Measured on the asterisk prompts, 800 steps of
batch 16 from a 1500-step teacher: the one-step student's mel is 3.89 dB MCD from the teacher's
50-NFE mel from the same noise with lr 1e-3, 4.15 dB with 2e-4, 4.90 dB for the teacher's own
one step."""


# -- mel statistics ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MelStats:
    """Per-band mean and standard deviation of training log-mels: y = (log_mel - mean) / std."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, mels: Sequence[Tensor]) -> MelStats:
        """Statistics over every frame of `mels`, each (frames, n_mels)."""
        if not mels:
            raise ValueError("MelStats.fit needs at least one mel spectrogram")
        frames = torch.cat([m.reshape(-1, m.shape[-1]).double() for m in mels])
        mean, std = frames.mean(0), frames.std(0).clamp_min(1e-3)
        return cls(tuple(mean.float().tolist()), tuple(std.float().tolist()))

    def _tensors(self, like: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device)
        return mean, std

    def normalize(self, mel: Tensor) -> Tensor:
        """(..., frames, n_mels) log-mel -> normalised."""
        mean, std = self._tensors(mel)
        return (mel - mean) / std

    def denormalize(self, y: Tensor) -> Tensor:
        """(..., frames, n_mels) normalised -> log-mel."""
        mean, std = self._tensors(y)
        return y * std + mean


# -- networks -----------------------------------------------------------------------------------
class _ConvNorm(nn.Module):
    """Conv1d over tokens -> ReLU -> LayerNorm over channels -> dropout; (B, N, C) in and out."""

    def __init__(self, cin: int, cout: int, kernel: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, padding=kernel // 2)
        self.norm = nn.LayerNorm(cout)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.drop(self.norm(torch.relu(self.conv(h.transpose(1, 2)).transpose(1, 2))))


class DurationPredictor(nn.Module):
    """Grad-TTS's duration predictor: two conv-ReLU-LayerNorm-dropout blocks and a linear map
    to a log-duration per token. (B, N, hidden), mask (B, N) -> (B, N), zero on padding."""

    def __init__(self, hidden: int, channels: int, kernel: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList([_ConvNorm(hidden, channels, kernel, dropout),
                                     _ConvNorm(channels, channels, kernel, dropout)])
        self.proj = nn.Linear(channels, 1)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        m = mask[..., None].to(h.dtype)
        for block in self.blocks:
            h = block(h * m)
        return self.proj(h * m)[..., 0] * m[..., 0]


class TextEncoder(nn.Module):
    """Grad-TTS's text encoder, small: phoneme embedding (scaled by sqrt(hidden)), residual conv
    prenet, sinusoidal positions, pre-norm transformer blocks and a linear map to mu~ per token;
    with the duration predictor on its stop-gradient states.
    forward(tokens (B, N) ids, 0 = padding; lengths (B,)) -> (mu~ (B, N, n_mels), log-durations
    (B, N), mask (B, N) bool)."""

    def __init__(self, n_symbols: int, n_mels: int, hidden: int = 128, prenet_layers: int = 3,
                 kernel: int = 5, layers: int = 3, heads: int = 2, ffn: int = 384,
                 dropout: float = 0.1, duration_hidden: int = 128, duration_kernel: int = 3):
        super().__init__()
        self.config = dict(n_symbols=n_symbols, n_mels=n_mels, hidden=hidden,
                           prenet_layers=prenet_layers, kernel=kernel, layers=layers, heads=heads,
                           ffn=ffn, dropout=dropout, duration_hidden=duration_hidden,
                           duration_kernel=duration_kernel)
        self.n_symbols, self.n_mels, self.hidden = n_symbols, n_mels, hidden
        self.embed = nn.Embedding(n_symbols, hidden, padding_idx=0)
        nn.init.normal_(self.embed.weight, 0.0, hidden**-0.5)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        self.prenet = nn.ModuleList([_ConvNorm(hidden, hidden, kernel, dropout)
                                     for _ in range(prenet_layers)])
        self.position = SinusoidalEmbedding(hidden, scale=1.0)
        block = nn.TransformerEncoderLayer(hidden, heads, ffn, dropout, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.to_mu = nn.Linear(hidden, n_mels)
        self.duration = DurationPredictor(hidden, duration_hidden, duration_kernel, dropout)

    @classmethod
    def from_config(cls, config: dict) -> TextEncoder:
        return cls(**config)

    def forward(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if tokens.ndim != 2 or tokens.shape[1] == 0:
            raise ValueError(f"tokens must be (batch, tokens), got shape {tuple(tokens.shape)}")
        n = tokens.shape[1]
        if int(tokens.max()) >= self.n_symbols or int(tokens.min()) < 0:
            raise TextError(f"token ids must be in 0..{self.n_symbols - 1}")
        mask = torch.arange(n, device=tokens.device)[None, :] < lengths.to(tokens.device)[:, None]
        m = mask[..., None].float()
        h = self.embed(tokens) * math.sqrt(self.hidden)                      # (B, N, H)
        for layer in self.prenet:
            h = h + layer(h * m)
        h = h + self.position(torch.arange(n, device=tokens.device))[None]
        h = self.blocks(h * m, src_key_padding_mask=~mask)
        h = self.norm(h) * m
        mu = self.to_mu(h) * m                                               # (B, N, M)
        log_durations = self.duration(h.detach(), mask)   # stop-gradient input (Grad-TTS)
        return mu, log_durations, mask


def durations_from_log(log_durations: Tensor, mask: Tensor, length_scale: float = 1.0) -> Tensor:
    """Frames per token (B, N) long: ceil(exp(log d^) * length_scale), at least 1 on real tokens,
    0 on padding (Grad-TTS's rounding up)."""
    if not length_scale > 0:
        raise ValueError(f"length_scale must be positive, got {length_scale}")
    d = torch.ceil(torch.exp(log_durations.float()) * length_scale).clamp_min(1)
    return (d * mask).long()


def upsample(mu: Tensor, durations: Tensor, n_frames: int | None = None) -> Tensor:
    """mu~ (B, N, M) repeated by durations (B, N) -> (B, T, M) (a length regulator)."""
    path = alignment_from_durations(durations, n_frames).to(mu.dtype)      # (B, N, T)
    return torch.einsum("bnt,bnm->btm", path, mu)


class CoMoSpeech(nn.Module):
    """The CoMoSpeech teacher: the text encoder (with the duration predictor) and the EDM mel
    decoder, a core Denoiser whose cond is mu (B, T, n_mels), the encoding upsampled to the
    frames. Its training loss is `CoMoSpeechLoss`."""

    def __init__(self, text_encoder: TextEncoder, decoder: Denoiser):
        super().__init__()
        self.text_encoder, self.decoder = text_encoder, decoder


def make_decoder(n_mels: int, config: TeacherConfig = TeacherConfig()) -> Denoiser:
    """The mel decoder: core UNet1D (any length, mu as local cond) in EDMPrecond on the EDM path,
    predicting x0 from sigma (EDM Eq. 7, Table 1)."""
    net = UNet1D(n_mels, None, dims=tuple(config.decoder_dims), kernel=config.decoder_kernel,
                 groups=config.decoder_groups, time_dim=config.decoder_time_dim,
                 time_scale=EDM_TIME_SCALE, local_cond_dim=n_mels)
    path = EDM(sigma_max=config.sigma_max, sigma_data=config.sigma_data)
    return Denoiser(EDMPrecond(net, sigma_data=config.sigma_data), path, prediction="x0",
                    time_input="sigma")


def make_teacher(n_symbols: int, n_mels: int, config: TeacherConfig = TeacherConfig()
                 ) -> CoMoSpeech:
    """A fresh (untrained) teacher for a vocabulary of n_symbols (id 0 is padding)."""
    config.validate()
    if n_symbols < 2 or n_mels < 2:
        raise ValueError(f"a teacher needs at least 2 symbols and 2 mel bands, got {n_symbols}, "
                         f"{n_mels}")
    encoder = TextEncoder(n_symbols, n_mels, hidden=config.hidden,
                          prenet_layers=config.prenet_layers, kernel=config.kernel,
                          layers=config.layers, heads=config.heads, ffn=config.ffn,
                          dropout=config.dropout, duration_hidden=config.duration_hidden,
                          duration_kernel=config.duration_kernel)
    return CoMoSpeech(encoder, make_decoder(n_mels, config))


def _multiple(decoder_net: nn.Module) -> int:
    """The frame multiple the decoder's UNet1D needs (inside EDMPrecond)."""
    return getattr(decoder_net, "net", decoder_net).multiple


# -- data ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeechItem:
    """One utterance ready for training: its phonemes and log-mel frames."""

    id: str
    text: str
    phonemes: str
    mel: Tensor
    """Log-mel (frames, n_mels), float32 (`features.log_mel`, transposed)."""


def text_phonemes(text: str, *, voice: str = "en-us") -> str:
    """The phonemes a model reads for `text` (normalize_text, then phonemize); an empty text
    is a one-line TextError."""
    if not isinstance(text, str) or not normalize_text(text).strip(" ,.!?"):
        raise TextError(f"empty text: nothing to synthesize in {str(text)[:40]!r}")
    return phonemize(text, voice=voice)


def load_speech(utterances, mel_config: MelConfig, *, voice: str = "en-us",
                max_seconds: float | None = None) -> list[SpeechItem]:
    """Phonemes and log-mels of `utterances` (data.Utterance: the wav read at, or resampled to,
    mel_config.sample_rate). Recordings longer than max_seconds are left out."""
    from .io import read_wav

    items = []
    for u in utterances:
        samples, _ = read_wav(u.wav, mel_config.sample_rate, resample_to_rate=True)
        if max_seconds is not None and len(samples) > max_seconds * mel_config.sample_rate:
            continue
        mel = log_mel(samples, mel_config).T.contiguous()                     # (T, M)
        items.append(SpeechItem(u.id, u.normalized, text_phonemes(u.normalized, voice=voice),
                                mel))
    if not items:
        raise ValueError("load_speech: no utterance left (all longer than max_seconds?)")
    return items


class SpeechBatches:
    """The teacher's training data: `(n, generator) -> batch`, n random utterances padded to
    the longest: {"tokens" (B, N) long, "token_lengths" (B,), "mel" (B, T, n_mels) normalised,
    "frame_lengths" (B,)}. `batch(indices)` gives the batch of chosen utterances."""

    def __init__(self, items: Sequence[SpeechItem], vocab: PhonemeVocab, stats: MelStats):
        if not items:
            raise ValueError("SpeechBatches needs at least one utterance")
        self.tokens = [torch.tensor(vocab.encode(i.phonemes), dtype=torch.long) for i in items]
        self.mels = [stats.normalize(i.mel.float()) for i in items]
        for item, tok, mel in zip(items, self.tokens, self.mels, strict=True):
            if len(tok) > len(mel):
                raise ValueError(f"utterance {item.id}: {len(tok)} phonemes but only {len(mel)} "
                                 "frames; every phoneme needs a frame")
        self.ids = [i.id for i in items]

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, indices) -> dict[str, Tensor]:
        idx = [int(i) for i in indices]
        toks, mels = [self.tokens[i] for i in idx], [self.mels[i] for i in idx]
        return {"tokens": nn.utils.rnn.pad_sequence(toks, batch_first=True),
                "token_lengths": torch.tensor([len(t) for t in toks]),
                "mel": nn.utils.rnn.pad_sequence(mels, batch_first=True),
                "frame_lengths": torch.tensor([len(m) for m in mels])}

    def __call__(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        return self.batch(torch.randint(len(self), (n,), generator=generator))


def _crop(y: Tensor, mu: Tensor, lengths: Tensor, segment: int, generator) -> tuple[Tensor, Tensor]:
    """Random segments (B, segment, M) of y and mu (B, T, M) inside each item's frames; an item
    shorter than the segment repeats its last frame (Grad-TTS's out_size crops)."""
    b = y.shape[0]
    lengths = lengths.to(y.device)
    room = (lengths - segment).clamp_min(0) + 1                               # start choices
    start = (torch.rand(b, generator=generator, device=y.device) * room).long()
    idx = start[:, None] + torch.arange(segment, device=y.device)[None]
    idx = torch.minimum(idx, lengths[:, None] - 1)[..., None].expand(-1, -1, y.shape[-1])
    return y.gather(1, idx), mu.gather(1, idx)


def log_likelihood(y: Tensor, mu: Tensor) -> Tensor:
    """log N(y_j; mu~_i, I) for every token i and frame j: (B, N, T) from y (B, T, M) and mu~
    (B, N, M)."""
    m = y.shape[-1]
    cross = torch.einsum("bnm,btm->bnt", mu, y)
    return -0.5 * (mu.pow(2).sum(-1)[..., None] - 2 * cross + y.pow(2).sum(-1)[:, None, :]
                   + m * LOG_2PI)


@dataclass(frozen=True)
class CoMoSpeechLoss:
    """The teacher's loss L_enc + L_dp + L_diff (Grad-TTS's sum; L_diff is EDM's, as in
    CoMoSpeech): `loss(model, batch, *, generator) -> (loss, logs)` with model a CoMoSpeech and
    batch a `SpeechBatches` batch. Logs: prior, duration, diffusion, mse_x0."""

    segment: int = 128
    """Frames of the random segment the decoder trains on (Grad-TTS's out_size: 172 frames,
    2 s at 22.05 kHz; 128 frames are 1.28 s at the telephone preset's 10 ms hop)."""
    p_mean: float = -1.2
    """EDM's training noise distribution: ln sigma ~ N(p_mean, p_std^2) (EDM Table 1)."""
    p_std: float = 1.2

    def components(self, model: CoMoSpeech, batch: dict, *, generator=None) -> dict[str, Tensor]:
        """The three losses (and the x0 error) as tensors."""
        y, tokens = batch["mel"], batch["tokens"]
        n_tok, n_frm = batch["token_lengths"].to(y.device), batch["frame_lengths"].to(y.device)
        mu_x, log_d, mask = model.text_encoder(tokens, n_tok)
        frames = (torch.arange(y.shape[1], device=y.device)[None] < n_frm[:, None]).to(y.dtype)
        # 1. monotonic alignment search under log N(y_j; mu~_i, I), no gradient
        with torch.no_grad():
            path = monotonic_alignment_search(log_likelihood(y, mu_x.detach()), n_tok, n_frm)
        path = path.to(y.dtype)                                               # (B, N, T)
        # 2. prior loss: -log N(y_j; mu_j, I) per frame and band, mu = mu~ upsampled by A
        mu_y = torch.einsum("bnt,bnm->btm", path, mu_x)                       # (B, T, M)
        nll = 0.5 * ((y - mu_y) ** 2 + LOG_2PI) * frames[..., None]
        prior = nll.sum() / (frames.sum() * y.shape[-1])
        # 3. duration loss on log frames per token
        target = torch.log(path.sum(-1).clamp_min(1e-8)) * mask
        duration = ((log_d - target) ** 2 * mask).sum() / mask.sum()
        # 4. EDM denoising loss on random segments, conditioned on mu
        y_seg, mu_seg = _crop(y, mu_y, n_frm, self.segment, generator)
        diffusion, logs = EDMLoss(p_mean=self.p_mean, p_std=self.p_std)(
            model.decoder, (y_seg, mu_seg), generator=generator)
        return {"prior": prior, "duration": duration, "diffusion": diffusion,
                "mse_x0": torch.tensor(logs["mse_x0"])}

    def __call__(self, model: CoMoSpeech, batch: dict, *, generator=None):
        c = self.components(model, batch, generator=generator)
        loss = c["prior"] + c["duration"] + c["diffusion"]
        return loss, {k: float(v.detach()) for k, v in c.items()}


# -- the speech model ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Synthesis:
    """What `TTS.synthesize` makes."""

    audio: np.ndarray | None
    """Samples (float32) at sample_rate, (frames - 1) * hop of them; None without a vocoder."""
    mel: Tensor
    """Log-mel (n_mels, frames)."""
    phonemes: str
    durations: Tensor
    """Frames per phoneme (N,), from the duration predictor."""
    sample_rate: int
    nfe: int
    """Decoder network evaluations."""


class _StudentRecord:
    """What core io's save_student reads of a distiller: its method, config and Generator."""

    def __init__(self, kind: str, config, generator: Generator):
        self.kind, self.config, self._generator = kind, config, generator

    def generator(self) -> Generator:
        return self._generator


class TTS:
    """A speech model ready to synthesise: the text encoder and duration predictor, the mel
    decoder (a teacher's Denoiser, sampled by core solvers; or a student's Generator), the
    phoneme vocabulary, the mel settings and the mel normalisation. `save` / `load` keep it in a
    core model folder (model.json + model.safetensors for the decoder, through core io) with
    text_encoder.safetensors beside it."""

    def __init__(self, text_encoder: TextEncoder, vocab: PhonemeVocab, mel_config: MelConfig,
                 stats: MelStats, *, decoder: Denoiser | None = None,
                 student: Generator | None = None, student_method: str | None = None,
                 student_config=None, voice: str = "en-us"):
        if (decoder is None) == (student is None):
            raise ValueError("a TTS has either a teacher decoder or a student, not both")
        if len(vocab) != text_encoder.n_symbols or text_encoder.n_mels != mel_config.n_mels:
            raise ValueError(f"the text encoder ({text_encoder.n_symbols} symbols, "
                             f"{text_encoder.n_mels} mels) does not fit the vocabulary "
                             f"({len(vocab)}) and mel settings ({mel_config.n_mels} mels)")
        self.text_encoder = text_encoder.eval()
        self.vocab, self.mel_config, self.stats, self.voice = vocab, mel_config, stats, voice
        self.decoder = decoder.eval() if decoder is not None else None
        self.student = student.eval() if student is not None else None
        self.student_method, self.student_config = student_method, student_config

    @property
    def kind(self) -> str:
        return "teacher" if self.decoder is not None else "student"

    @property
    def denoiser(self) -> Denoiser:
        """The decoder's Denoiser (the student's own for a student)."""
        return self.decoder if self.decoder is not None else self.student.denoiser

    # -- text to frames ---------------------------------------------------------------------
    def tokens(self, text: str) -> tuple[Tensor, str]:
        """(ids (1, N), phonemes) of `text`; an empty text or a phoneme the vocabulary lacks
        is a one-line TextError."""
        phonemes = text_phonemes(text, voice=self.voice)
        return torch.tensor([self.vocab.encode(phonemes)], dtype=torch.long), phonemes

    @torch.no_grad()
    def frames(self, text: str, *, length_scale: float = 1.0) -> tuple[Tensor, Tensor, str]:
        """(mu (1, T, n_mels), durations (N,), phonemes) of `text`: the encoding upsampled by
        the predicted durations."""
        tokens, phonemes = self.tokens(text)
        mu_x, log_d, mask = self.text_encoder(tokens, torch.tensor([tokens.shape[1]]))
        durations = durations_from_log(log_d, mask, length_scale)
        return upsample(mu_x, durations), durations[0], phonemes

    # -- frames to mel ----------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, mu: Tensor, *, nfe: int | None = None, noise: Tensor | None = None,
               seed: int = 0, solver: str = "heun", schedule: str = "karras") -> Tensor:
        """Normalised mel (B, T, n_mels) for mu (B, T, n_mels): the teacher samples its
        probability-flow ODE with core `sample` (solver, schedule; nfe default 50), the student
        runs its Generator (nfe default 1). `noise`: unit normal (B, T', n_mels) with T' the
        frames padded to the decoder's multiple (default: drawn from `seed`)."""
        from onestep.core.sampling import sample

        b, t, m = mu.shape
        multiple = _multiple(self.denoiser.model)
        padded = -(-t // multiple) * multiple
        if padded > t:  # repeat the last frame (trailing silence) to the decoder's multiple
            mu = torch.cat([mu, mu[:, -1:].expand(b, padded - t, m)], dim=1)
        if noise is None:
            g = torch.Generator().manual_seed(seed)
            noise = torch.randn(b, padded, m, generator=g)
        if tuple(noise.shape) != (b, padded, m):
            raise ValueError(f"noise must be (batch, frames padded to {multiple}, n_mels) = "
                             f"{(b, padded, m)}, got {tuple(noise.shape)}")
        if self.decoder is not None:
            y = sample(self.decoder, noise, nfe=50 if nfe is None else nfe, solver=solver,
                       schedule=schedule, cond=mu)
        else:
            g = torch.Generator().manual_seed(seed + 1)
            y = self.student.generate(noise, cond=mu, nfe=1 if nfe is None else nfe,
                                      generator=g)
        return y[:, :t]

    def synthesize(self, text: str, *, nfe: int | None = None, seed: int = 0,
                   solver: str = "heun", schedule: str = "karras", length_scale: float = 1.0,
                   vocoder: bool = True, n_iter: int = 64) -> Synthesis:
        """Speech for `text`: phonemes, mu and durations, the decoder at `nfe` evaluations (a
        teacher: 50 by default, with `solver` and `schedule`; a student: 1), then Griffin-Lim
        (n_iter iterations; vocoder=False skips it)."""
        mu, durations, phonemes = self.frames(text, length_scale=length_scale)
        nfe = (50 if self.decoder is not None else 1) if nfe is None else nfe
        y = self.decode(mu, nfe=nfe, seed=seed, solver=solver, schedule=schedule)
        mel = self.stats.denormalize(y)[0].T.contiguous()                     # (M, T)
        audio = None
        if vocoder:
            length = (mel.shape[1] - 1) * self.mel_config.hop
            audio = griffin_lim(mel, self.mel_config, n_iter=n_iter, length=length,
                                seed=seed).numpy()
        return Synthesis(audio, mel, phonemes, durations, self.mel_config.sample_rate, nfe)

    # -- saving -----------------------------------------------------------------------------
    def _extra(self) -> dict:
        return {"tts": {"format": MODEL_FORMAT, "model": "comospeech",
                        "text_encoder": dict(self.text_encoder.config),
                        "symbols": list(self.vocab.symbols), "voice": self.voice,
                        "mel": asdict(self.mel_config), "mel_mean": list(self.stats.mean),
                        "mel_std": list(self.stats.std)}}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the model to `folder` with core io (the decoder: save_model for a teacher,
        save_student for a student) and the text encoder's weights beside it."""
        from safetensors.torch import save_file

        from onestep.core.io import save_model, save_student

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous()
                 for k, v in self.text_encoder.state_dict().items()}
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{TEXT_ENCODER_FILE}.")
        os.close(fd)
        try:
            save_file(state, tmp)
            os.replace(tmp, folder / TEXT_ENCODER_FILE)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        if self.decoder is not None:
            save_model(folder, self.decoder, kind="teacher", extra=self._extra())
        else:
            record = _StudentRecord(self.student_method, self.student_config, self.student)
            save_student(folder, record, extra=self._extra())
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> TTS:
        """A TTS from a folder `save` wrote (teacher or student); CheckpointError or ValueError
        naming the folder otherwise."""
        from onestep.core.io import (
            CheckpointError,
            config_from_dict,
            load_model,
            load_student,
            read_model_info,
        )
        from onestep.core.train.checkpoint import check_match, read_weights

        folder = Path(folder)
        info = read_model_info(folder)
        entry = (info.get("extra") or {}).get("tts")
        if not isinstance(entry, dict):
            raise CheckpointError(f"{folder} holds a onestep model but not a speech model (no "
                                  "'tts' entry in model.json's extra)")
        if entry.get("format") != MODEL_FORMAT:
            raise CheckpointError(f"{folder}: speech model format {entry.get('format')!r}, this "
                                  f"version reads {MODEL_FORMAT}")
        try:
            encoder = TextEncoder.from_config(entry["text_encoder"])
            vocab = PhonemeVocab(entry["symbols"])
            mel_config = MelConfig(**entry["mel"])
            stats = MelStats(tuple(entry["mel_mean"]), tuple(entry["mel_std"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{folder / 'model.json'}: a broken 'tts' entry ({e})") from None
        file = folder / TEXT_ENCODER_FILE
        weights = read_weights(file, {"modules": ["text_encoder"]})
        check_match(file, "text_encoder", encoder, weights)
        encoder.load_state_dict(weights)
        voice = entry.get("voice", "en-us")
        if info["kind"] == "student":
            gen, info = load_student(folder)
            method = info["student"]["method"]
            config = config_from_dict(CDConfig, info["student"]["config"]) \
                if method == "cd" else None
            return cls(encoder, vocab, mel_config, stats, student=gen, student_method=method,
                       student_config=config, voice=voice)
        decoder, _ = load_model(folder, kind="teacher")
        return cls(encoder, vocab, mel_config, stats, decoder=decoder, voice=voice)


# -- training ---------------------------------------------------------------------------------
def train_teacher(items: Sequence[SpeechItem], *, mel_config: MelConfig,
                  config: TeacherConfig = TeacherConfig(), loss: CoMoSpeechLoss = CoMoSpeechLoss(),
                  vocab: PhonemeVocab | None = None, steps: int = 2000, batch_size: int = 16,
                  lr: float = 2e-3, warmup: int = 100, ema_decay: float | None = 0.995,
                  out_dir: str | os.PathLike = "runs/comospeech-teacher", seed: int = 0,
                  progress: bool = False, voice: str = "en-us", resume: bool = False,
                  model: CoMoSpeech | None = None) -> tuple[TTS, list[dict]]:
    """Train a CoMoSpeech teacher on `items` (`load_speech`) with the core Trainer (a checkpoint
    in out_dir at the end; `resume=True` with the same arguments and a larger `steps` continues
    from it, bit for bit as one longer run: the learning rate is constant after warm-up). The
    vocabulary is built from the items' phonemes unless given; the mel statistics from their
    frames. Returns (the TTS with the EMA weights, or the trained ones without EMA; the log
    records)."""
    if not items:
        raise ValueError("train_teacher needs at least one utterance")
    n_mels = items[0].mel.shape[-1]
    if mel_config.n_mels != n_mels:
        raise ValueError(f"the items have {n_mels} mel bands, the MelConfig {mel_config.n_mels}")
    if loss.segment % 2 ** (len(config.decoder_dims) - 1):
        raise ValueError(f"CoMoSpeechLoss.segment ({loss.segment}) must be a multiple of "
                         f"2^(levels - 1) of decoder_dims {config.decoder_dims}")
    vocab = vocab or PhonemeVocab.build(i.phonemes for i in items)
    stats = MelStats.fit([i.mel for i in items])
    data = SpeechBatches(items, vocab, stats)
    trainer = Trainer(TrainConfig(steps=steps, batch_size=batch_size, seed=seed,
                                  out_dir=out_dir, progress=progress, log_every=max(1, steps // 20),
                                  ckpt_every=0, resume=resume))
    model = model or make_teacher(len(vocab), n_mels, config)
    task = LossTask(model, loss, lr=lr, warmup=warmup, ema_decay=ema_decay, kind="comospeech")
    records = trainer.fit(task, data)
    final = task.ema.module if task.ema is not None else model
    final = final.cpu().eval()
    return TTS(final.text_encoder, vocab, mel_config, stats, decoder=final.decoder,
               voice=voice), records


class ConsistencyCrops:
    """The student's training data: `(n, generator) -> (y, mu)`, random segments (n, segment,
    n_mels) of normalised mels and of the teacher's mu aligned to them by monotonic alignment
    search (the pairs the teacher's decoder was trained on)."""

    def __init__(self, teacher: TTS, items: Sequence[SpeechItem], segment: int):
        data = SpeechBatches(items, teacher.vocab, teacher.stats)
        self.segment = segment
        self.mels, self.mus = data.mels, []
        with torch.no_grad():
            for i in range(len(data)):
                b = data.batch([i])
                mu_x, _, _ = teacher.text_encoder(b["tokens"], b["token_lengths"])
                path = monotonic_alignment_search(log_likelihood(b["mel"], mu_x))
                self.mus.append(torch.einsum("bnt,bnm->btm", path, mu_x)[0])

    def __call__(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(len(self.mels), (n,), generator=generator).tolist()
        y = nn.utils.rnn.pad_sequence([self.mels[i] for i in idx], batch_first=True)
        mu = nn.utils.rnn.pad_sequence([self.mus[i] for i in idx], batch_first=True)
        lengths = torch.tensor([len(self.mels[i]) for i in idx])
        return _crop(y, mu, lengths, self.segment, generator)


def distill_student(teacher: TTS, items: Sequence[SpeechItem], *, config: CDConfig = AUDIO_CD,
                    steps: int = 1000, batch_size: int = 16, segment: int = 128,
                    out_dir: str | os.PathLike = "runs/comospeech-student", seed: int = 0,
                    progress: bool = False, resume: bool = False) -> tuple[TTS, list[dict]]:
    """One-step consistency distillation of a teacher's mel decoder (CoMoSpeech Sec. 3) through
    core's `CDDistiller` (Song et al. 2023, Alg. 2), on segments of the training mels with the
    teacher's aligned mu as the cond. The student starts from the teacher's decoder weights and
    keeps its text encoder and durations. `resume=True` continues from the checkpoint in out_dir
    (written at the end). Returns (the student TTS, the log records)."""
    if teacher.decoder is None:
        raise ValueError("distill_student needs a teacher (a TTS with a decoder), got a student")
    if segment % _multiple(teacher.decoder.model):
        raise ValueError(f"segment ({segment}) must be a multiple of "
                         f"{_multiple(teacher.decoder.model)}")
    data = ConsistencyCrops(teacher, items, segment)
    trainer = Trainer(TrainConfig(steps=steps, batch_size=batch_size, seed=seed, out_dir=out_dir,
                                  progress=progress, log_every=max(1, steps // 20),
                                  ckpt_every=0, resume=resume))
    distiller = CDDistiller(teacher.decoder, config)
    records = trainer.fit(distiller, data)
    gen = distiller.generator().cpu().eval()
    teacher.decoder.cpu()
    return TTS(teacher.text_encoder, teacher.vocab, teacher.mel_config, teacher.stats,
               student=gen, student_method=distiller.kind, student_config=distiller.config,
               voice=teacher.voice), records
