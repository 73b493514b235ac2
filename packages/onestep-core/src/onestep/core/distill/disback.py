"""DisBack (Zhang et al. 2024/2025, "Distribution Backtracking Builds A Faster Convergence
Trajectory for Diffusion Distillation", ICLR 2025).

Score distillation starts with a large score mismatch: the teacher's score is far from the
untrained generator's distribution. DisBack first records how the teacher degrades into a model
of that initial distribution, then walks the generator back along that path.

Stage 1, degradation recording: a copy of the teacher (the auxiliary / fake score) is fine-tuned
by denoising score matching on samples of the initial generator G_0; N snapshots along the way
form the degradation path s'_1, ..., s'_N (s'_0 = the teacher, s'_N fits G_0).
Stage 2, distribution backtracking: the generator is trained with the score-difference loss of
DMD (Eq. 7-8, `dmd.distribution_matching_loss`) whose "real" score is the node s'_{N-1}, then
s'_{N-2}, ..., s'_1, and finally the teacher, each for a fixed number of generator updates, while
the fake score (continuing from s'_N, which already fits G_0) keeps fitting the generator.

Both stages run inside `step`: steps [0, record_steps) are stage 1 (the generator is not
updated), later steps stage 2, so the Trainer checkpoints and resumes either stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..denoiser import Denoiser
from ..method_registry import describe
from .base import (
    DenoiserGenerator,
    Distiller,
    Generator,
    denoising_loss,
    frozen_copy,
    split_batch,
    student_from_teacher,
)
from .dmd import _check_betas, _check_ema, _check_t_range, _positive, distribution_matching_loss

__all__ = ["DisBackConfig", "DisBackDistiller", "METHODS"]


@dataclass(frozen=True)
class DisBackConfig:
    """DisBack (Zhang et al., ICLR 2025). Total training = record_steps + stage-2 steps. The
    path length and schedule (num_checkpoints, record_steps, node_steps) are our choices: the
    paper saves checkpoints along the degradation run and moves on after a fixed number of
    iterations per node. Toy scale (2-16-D, MLP teacher): `DisBackConfig.toy_defaults()` with
    2000-4000 steps, batch 256."""

    num_checkpoints: int = 4
    """N: snapshots of the degradation path, the last one fitting G_0; the generator
    backtracks through N - 1 intermediate nodes and then the teacher."""
    record_steps: int = 400
    """Stage 1 length: denoising updates of the degrading copy on G_0's samples; snapshots every
    record_steps / N updates."""
    node_steps: int = 200
    """Stage 2: generator updates against each intermediate node before switching to the next
    (a fixed schedule; after the last node the teacher itself is the target)."""
    fake_updates: int = 5
    """Fake score updates per generator update in stage 2 (the official code builds on DMD2's
    training loop and its two time-scale update rule, 5 for ImageNet)."""
    lr: float = 1e-4
    """Generator learning rate (AdamW); the paper's ImageNet/SDXL runs follow DMD2 (2e-6, 5e-7)
    on large networks."""
    fake_lr: float = 1e-4
    """Learning rate of the degrading copy in stage 1 and of the fake score in stage 2."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    t_min: float = 0.02
    """Smallest noise level of the losses (DMD's 0.02 T)."""
    t_max: float = 0.98
    """Largest noise level (0.98 T)."""
    normalize: bool = True
    """DMD Eq. 8's per-sample normaliser 1 / mean|x0_target(x_t) - x| of the score gap; False:
    the plain x0 gap (w_t = sigma_t^2 / alpha_t)."""
    norm_floor: float = 0.0
    """Floor of each sample's normaliser as a fraction of the batch mean (0: the paper's
    normaliser; see `dmd.distribution_matching_loss`)."""
    guidance: float = 1.0
    """Classifier-free guidance of the target ("real") score: path nodes and teacher."""
    t_start: float = 1.0
    """Time of the generator's input noise."""
    ema_decay: float | None = None
    """EMA of the generator's weights used by `generator()`; None: the raw weights."""
    grad_clip: float = 10.0
    """Gradient-norm clip of both optimizers (0 or None: off)."""

    def validate(self) -> None:
        _positive(self, "lr", "fake_lr")
        _check_betas(self.betas)
        _check_t_range(self.t_min, self.t_max)
        if self.num_checkpoints < 1:
            raise ValueError(
                f"DisBackConfig.num_checkpoints must be >= 1, got {self.num_checkpoints}"
            )
        if self.record_steps < self.num_checkpoints:
            raise ValueError(
                f"DisBackConfig.record_steps ({self.record_steps}) must be >= "
                f"num_checkpoints ({self.num_checkpoints}): one update per snapshot"
            )
        if self.fake_updates < 1:
            raise ValueError(f"DisBackConfig.fake_updates must be >= 1, got {self.fake_updates}")
        if self.node_steps < 1:
            raise ValueError(f"DisBackConfig.node_steps must be >= 1, got {self.node_steps}")
        if self.guidance < 0:
            raise ValueError(f"DisBackConfig.guidance must be >= 0, got {self.guidance}")
        if not 0.0 < self.t_start <= 1.0:
            raise ValueError(f"DisBackConfig.t_start must be in (0, 1], got {self.t_start}")
        _check_ema(self.ema_decay)

    @classmethod
    def toy_defaults(cls, teacher=None, **overrides) -> DisBackConfig:
        """Settings for 2-16-D toy data with an MLP teacher: 3000 steps, batch 256. The fake
        score at lr 1e-3 (as the dmd family's other toy configs): on the distillation benchmark
        the one-step SW2 went from 1.24x / 1.97x the 50-NFE teacher's (checkerboard / gmm8d,
        fake lr 3e-4) to 1.21x / 1.79x."""
        base = dict(
            lr=3e-4,
            fake_lr=1e-3,
            num_checkpoints=4,
            record_steps=60,
            node_steps=80,
            fake_updates=2,
            ema_decay=0.99,
        )
        base.update(overrides)
        return cls(**base)


class DisBackDistiller(Distiller):
    """DisBack: stage 1 (steps < record_steps) fine-tunes the fake score from the teacher towards
    the initial generator and snapshots the path; stage 2 trains the generator towards path nodes
    N-1, ..., 1, then the teacher (`target_index(step)`), the fake score tracking the generator.
    Modules: student, fake, path_1 .. path_{N-1} (the snapshots; s'_N is the fake itself at the
    end of stage 1)."""

    kind = "disback"

    def __init__(
        self,
        teacher: Denoiser,
        config: DisBackConfig | None = None,
        *,
        student_network: nn.Module | None = None,
    ):
        config = DisBackConfig() if config is None else config
        super().__init__(teacher, config)
        c = config
        self.student = self.add_module("student", student_from_teacher(teacher, student_network))
        self.fake = self.add_module("fake", student_from_teacher(teacher))
        self.nodes: list[Denoiser] = [
            self.add_module(f"path_{i}", frozen_copy(teacher)) for i in range(1, c.num_checkpoints)
        ]
        self.add_optimizer("student", self.student.parameters(), lr=c.lr, betas=c.betas)
        self.add_optimizer("fake", self.fake.parameters(), lr=c.fake_lr, betas=c.betas)
        self.ema = self.add_ema("student", self.student, c.ema_decay) if c.ema_decay else None
        self.gen = DenoiserGenerator(self.student, t_start=c.t_start)

    # -- schedules ---------------------------------------------------------------------------
    def snapshot_steps(self) -> list[int]:
        """Stage-1 update counts after which s'_1 .. s'_{N-1} are saved."""
        c = self.config
        return [i * c.record_steps // c.num_checkpoints for i in range(1, c.num_checkpoints)]

    def target_index(self, step: int) -> int:
        """The stage-2 target's index on the path: N-1, ..., 1, then 0 (the teacher)."""
        c = self.config
        back = (step - c.record_steps) // c.node_steps
        return max(c.num_checkpoints - 1 - back, 0)

    def target(self, step: int) -> Denoiser:
        i = self.target_index(step)
        den = self.teacher if i == 0 else self.nodes[i - 1]
        g = self.config.guidance
        return den.with_guidance(g) if g != 1.0 else den

    # -- the update ---------------------------------------------------------------------------
    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]:
        c = self.config
        x_data, cond = split_batch(batch)
        clip = c.grad_clip or None
        self.fake.train()
        if step < c.record_steps:
            return self._record(x_data, cond, step, generator, clip)

        # stage 2a: the fake score tracks the generator (DMD2's two time-scale rule)
        self.student.train()
        fake_sum = 0.0
        for _ in range(c.fake_updates):
            with torch.no_grad():
                x = self.gen.generate(self.noise_like(x_data, generator), cond)
            fake_loss, _ = denoising_loss(
                self.fake, x, generator=generator, cond=cond, t_min=c.t_min, t_max=c.t_max
            )
            fake_loss = fake_loss.mean()
            fake_sum += fake_loss.detach().item()
            fake_norm = self.update("fake", fake_loss, clip=clip)

        # stage 2b: distribution backtracking of the generator towards the current node
        x = self.gen.generate(self.noise_like(x_data, generator), cond)
        loss, logs = distribution_matching_loss(
            x,
            self.target(step),
            self.fake,
            cond=cond,
            generator=generator,
            t_min=c.t_min,
            t_max=c.t_max,
            normalize=c.normalize,
            norm_floor=c.norm_floor,
        )
        logs["gen_grad_norm"] = self.update("student", loss, clip=clip)
        if self.ema is not None:
            self.ema.update(self.student)
        logs["fake_grad_norm"] = fake_norm
        logs["fake_loss"] = fake_sum / c.fake_updates
        logs["node"] = float(self.target_index(step))
        logs["loss"] = loss.detach().item()
        return logs

    def _record(self, x_data, cond, step, generator, clip) -> dict[str, float]:
        """Stage 1: one denoising update of the degrading copy on G_0's samples; snapshot."""
        with torch.no_grad():
            x = self.gen.generate(self.noise_like(x_data, generator), cond)
        loss, _ = denoising_loss(
            self.fake,
            x,
            generator=generator,
            cond=cond,
            t_min=self.config.t_min,
            t_max=self.config.t_max,
        )
        loss = loss.mean()
        logs = {
            "record_loss": loss.detach().item(),
            "fake_grad_norm": self.update("fake", loss, clip=clip),
        }
        done = step + 1
        snaps = self.snapshot_steps()
        if done in snaps:
            node = self.nodes[snaps.index(done)]
            node.model.load_state_dict(self.fake.model.state_dict())
        return logs

    def generator(self) -> Generator:
        student = self.ema.module if self.ema is not None else self.student
        return DenoiserGenerator(student, t_start=self.config.t_start)


METHODS = {  # descriptions: onestep.core.method_registry
    "disback": (DisBackConfig, DisBackDistiller, describe("disback")),
}
