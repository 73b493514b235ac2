"""Multi-student distillation (MSD; Song, Lorraine, Nie, Kreis & Lucas 2024, "Multi-student
Diffusion Distillation for Better One-step Generators").

The condition space is partitioned among K one-step students; student k is distilled only on its
part, so each has less to learn and may be smaller than the teacher. The Generator routes every
sample to its student, so one sample still costs one student evaluation.

Partitions (`MSDConfig.partition`):
  "class"  class-conditional teachers (cond = integer labels (B,)): student k owns the classes
           `class_groups[k]` (default: labels c with c % K == k), as in the paper (Sec. 3).
           Its real score is the teacher conditioned on the sample's label, which lies in k's
           subset: the teacher conditioned on the subset.
  "noise"  unconditional (or continuously conditioned) teachers: the noise space is split into
           K equal-probability regions, angle sectors of the first two noise coordinates
           (theta = atan2(z_1, z_0) in K arcs of 2 pi / K; one-dimensional data: K quantile
           bins of z_0). Student k's target is the teacher's samples from its noise region,
           T#(N(0, I) restricted to region k), with T the teacher's ODE map; its score is not
           the teacher's, so the distribution-matching gradient is taken on the routed mixture
           (the K students together are one generator G(z) = g_k(z)(z), which DMD distils
           exactly); for unconditional teachers DMD's regression loss on teacher (noise, ODE
           sample) pairs (Yin et al. 2024, Sec. 3.3) ties each student to the teacher's map on
           its own region.
  "auto"   "class" when cond is an integer label tensor, else "noise".

Each student is trained with the base method, DMD-style distribution matching (Yin et al. 2024,
Eq. 7-8; MSD's "DM" stage, Sec. 3): x0 = g_k(z), gradient (x0_fake - x0_teacher)(x_t) /
mean|x0 - x0_teacher| on its own samples, one shared fake score (conditioned like the teacher)
that follows the routed mixture with DMD2's two time-scale update rule (`fake_updates` fake
updates per student update; Yin et al. 2024b, Sec. 4.2), as MSD's DMD2-based students.
Smaller students (`student_networks`) first take `tsm_steps` steps of teacher score matching
(MSD's "TSM" stage, Sec. 3): as denoisers, they regress the teacher's prediction on noisy real
data of their part.

From step `adv_start` on (off by default), MSD's adversarial stage ("ADM", Sec. 3; the last of
the smaller students' three stages): the students are fine-tuned with DMD2's GAN added to
distribution matching (Yin et al. 2024b, Sec. 4.3; the regression loss stays unless
`adv_regression=False`): a discriminator head on the shared fake score's features
(`dmd.FakeCritic`: the conv head on a UNet's bottleneck) tells the batch's real data from the
routed samples, both diffused to a random noise level, and is trained with the fake score; each
student adds `gan_weight` times the non-saturating generator loss on its own samples. The fake
score is conditioned like the teacher, so with class partitions each student's samples are
judged against real data of their own classes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser
from ..method_registry import describe
from ..sampling import sample
from ..train import optimizer_step
from . import dmd
from .base import (
    DenoiserGenerator,
    Distiller,
    Generator,
    denoising_loss,
    split_batch,
    student_from_teacher,
)
from .vsd import WEIGHTINGS, _check_common, _toy, dm_gradient, make_fake_score, sample_t

__all__ = [
    "MSDConfig",
    "MSDDistiller",
    "MultiStudentGenerator",
    "noise_route",
    "PARTITIONS",
    "METHODS",
]

PARTITIONS = ("auto", "class", "noise")


def noise_route(noise: Tensor, k: int) -> Tensor:
    """Student index (B,) of each noise sample: K equal angle sectors of (z_0, z_1), or K
    equal-probability bins of z_0 for one-dimensional noise."""
    z = noise.reshape(noise.shape[0], -1).float()
    if k == 1:
        return torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    if z.shape[1] >= 2:
        u = (torch.atan2(z[:, 1], z[:, 0]) + math.pi) / (2 * math.pi)  # in [0, 1]
    else:
        u = 0.5 * (1.0 + torch.erf(z[:, 0] / math.sqrt(2.0)))  # Phi(z_0)
    return (u * k).long().clamp(0, k - 1)


def _is_labels(cond) -> bool:
    return (
        torch.is_tensor(cond)
        and cond.ndim == 1
        and not cond.is_floating_point()
        and not cond.is_complex()
    )


def _take(cond, sel: Tensor):
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: _take(v, sel) for k, v in cond.items()}
    if torch.is_tensor(cond) and cond.ndim > 0:
        return cond[sel]
    return cond


class MultiStudentGenerator(Generator):
    """K students behind one `generate(noise, cond, nfe)`: each sample goes to the student that
    `route(noise, cond)` picks (by class label or by noise region) and costs one student call
    per step."""

    def __init__(
        self,
        students: list[Denoiser],
        *,
        t_start: float = 1.0,
        partition: str = "auto",
        class_groups=None,
    ):
        super().__init__()
        if partition not in PARTITIONS:
            raise ValueError(f"unknown partition {partition!r}; use one of {list(PARTITIONS)}")
        self.students = nn.ModuleList(students)
        self.partition = partition
        self.t_start = float(t_start)
        self._gens = [DenoiserGenerator(s, t_start=t_start) for s in students]
        table = torch.zeros(0, dtype=torch.long)
        if class_groups is not None:
            size = 1 + max(c for g in class_groups for c in g)
            table = torch.full((size,), -1, dtype=torch.long)
            for k, group in enumerate(class_groups):
                table[list(group)] = k
        self.register_buffer("class_table", table)

    @property
    def num_students(self) -> int:
        return len(self.students)

    def uses_classes(self, cond) -> bool:
        if self.partition == "noise":
            return False
        if self.partition == "class":
            if not _is_labels(cond):
                raise ValueError("partition='class' needs cond = integer class labels (B,)")
            return True
        return _is_labels(cond)

    def route(self, noise: Tensor, cond=None) -> Tensor:
        """The student index (B,) of every sample."""
        k = self.num_students
        if not self.uses_classes(cond):
            return noise_route(noise, k)
        labels = cond.long()
        if self.class_table.numel() == 0:
            return labels.remainder(k)
        if bool((labels < 0).any()) or bool((labels >= self.class_table.numel()).any()):
            raise ValueError(
                f"class labels outside the partition's classes 0..{self.class_table.numel() - 1}"
            )
        idx = self.class_table.to(labels.device)[labels]
        if bool((idx < 0).any()):
            missing = sorted(set(labels[idx < 0].tolist()))
            raise ValueError(f"classes {missing} belong to no student's group")
        return idx

    def generate(self, noise: Tensor, cond=None, nfe: int = 1, generator=None) -> Tensor:
        idx = self.route(noise, cond)
        outs, order = [], []
        for k, gen in enumerate(self._gens):
            sel = (idx == k).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            outs.append(gen.generate(noise[sel], _take(cond, sel), nfe, generator))
            order.append(sel)
        out, order = torch.cat(outs), torch.cat(order)
        return out[torch.argsort(order)]


@dataclass(frozen=True)
class MSDConfig:
    """Multi-student distillation with DMD-style distribution matching per student. Scale-free
    settings follow the papers; learning rates are sized for toy MLP teachers.

    Toy scale (2-16-D data, MLP teacher): `MSDConfig.toy_defaults()`, 2000-4000 steps,
    batch 256.
    """

    num_students: int = 4
    """K students (the paper's main results use 4)."""
    partition: str = "auto"
    """"class", "noise" or "auto" (see the module docstring)."""
    class_groups: tuple[tuple[int, ...], ...] | None = None
    """Explicit class partition, one tuple of labels per student (None: c % K)."""
    lr: float = 1e-4
    """Student learning rate (AdamW), one optimiser per student; sized for MLP students."""
    fake_lr: float = 1e-3
    """Fake score learning rate."""
    fake: str = "full"
    """Fake score: "full" teacher copy (DMD) or "lora"."""
    lora_rank: int = 64
    """LoRA rank when fake="lora"."""
    lora_alpha: float | None = None
    """LoRA alpha when fake="lora" (None: = rank)."""
    t_min: float = 0.02
    """Smallest time of the distribution-matching loss (DMD: t ~ U[0.02, 0.98])."""
    t_max: float = 0.98
    """Largest time of the distribution-matching loss."""
    weighting: str = "dmd"
    """Score-difference weighting: "dmd" (DMD Eq. 8), "sds" (sigma_t^2, VSD) or "none"."""
    t_start: float = 1.0
    """The students' input time (pure noise at t = 1; see `toy_defaults(teacher)` for eps
    teachers with alpha(1) ~ 0)."""
    fake_updates: int = 5
    """Fake-score updates per student update: DMD2's two time-scale update rule (Yin et al.
    2024b, Sec. 4.2: 5 for ImageNet), which MSD's students inherit (Song et al. 2024, Sec. 3:
    each student is distilled with DMD2's distribution matching). Updates after the first fit
    fresh samples of the just-updated students. With class partitions (a conditional teacher)
    there is no regression loss, and TTUR is what keeps the students from collapsing (DMD2
    Sec. 4.2: without regression, a lagging fake score destabilises DMD). Measured on the 8x8
    digits teacher (TINY_RECIPE; 35-NFE FD-digits-cnn 2.80, recall 0.94, per-class pixel std
    across noises 0.334), 400 steps at batch 32, one seed: one-step FD 3.98, recall 0.63,
    per-class std 0.231 with 1 update; 3.04, 0.87, 0.290 with 5 (dmd2 at the same steps: 3.20,
    0.87, 0.296). With 1 update the Fashion-MNIST students were one image per class (recall
    0.011)."""
    regression_weight: float = 0.25
    """lambda_reg of DMD's regression loss on teacher ODE pairs (Yin et al. 2024: 0.25; MSE
    instead of LPIPS); used for unconditional teachers only (the pairs carry no cond): a
    class-conditional teacher's students rely on `fake_updates` (TTUR), as DMD2's do."""
    regression_pairs: int = 1024
    """Number of (noise, teacher sample) pairs, drawn once from a fixed seed."""
    regression_nfe: int = 32
    """Teacher NFE per pair (dpm++2m)."""
    regression_seed: int = 0
    """Seed of the pairs' noise (recomputed identically after a resume)."""
    tsm_steps: int = 0
    """Steps of teacher score matching before distribution matching (MSD's TSM stage, for
    smaller students); 0 skips the stage (students initialised from the teacher)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float | None = 1.0
    """Gradient-norm clipping, per student and for the fake score (None: off)."""
    ema_decay: float | None = None
    """EMA of the students (None: no EMA)."""
    adv_start: int | None = None
    """Trainer step from which MSD's adversarial stage runs (ADM, Sec. 3: fine-tuning after the
    distribution matching stage with DMD2's GAN added); None: no adversarial stage (the default,
    MSD's DM students)."""
    adv_regression: bool = True
    """Keep the regression loss in the adversarial stage. DMD2 replaces it by the GAN, but here
    it is what keeps the noise partition's students stable: on the 8-gaussians toy (4 students,
    100 steps, stage from step 60) dropping it took the squared distance to the teacher's ODE
    map from 0.16 to 4.4 (sliced W2 0.20 -> 0.92)."""
    gan_weight: float = 3e-3
    """Weight of the students' non-saturating GAN loss in the adversarial stage (DMD2's ImageNet
    code: 3e-3)."""
    disc_weight: float = 1e-2
    """Weight of the discriminator loss added to the fake score's (DMD2's code: 1e-2)."""
    disc_head: str = "auto"
    """Discriminator head: "auto" (conv head on a UNet fake network's bottleneck, else MLP),
    "conv" or "mlp" (see `dmd.FakeCritic`)."""
    disc_hidden: int = 64
    """Width of the MLP head."""
    disc_layers: tuple[str, ...] | None = None
    """The fake network's submodules that feed the MLP head (None: `default_layers`)."""
    gan_t_range: tuple[float, float] = (0.0, 1.0)
    """Times the discriminator's inputs are diffused to (DMD2's code: the whole schedule)."""
    sigma_min: float = 0.002
    """Floor of the discriminator's noise level sigma/alpha (DMD2's code: EDM's 0.002)."""

    def validate(self) -> None:
        _check_common(self, "MSDConfig")
        if self.num_students < 1:
            raise ValueError(f"MSDConfig.num_students must be >= 1, got {self.num_students}")
        if self.partition not in PARTITIONS:
            raise ValueError(
                f"unknown MSDConfig.partition {self.partition!r}; use one of {list(PARTITIONS)}"
            )
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"unknown MSDConfig.weighting {self.weighting!r}; use one of {list(WEIGHTINGS)}"
            )
        if self.class_groups is not None:
            groups = [tuple(g) for g in self.class_groups]
            if len(groups) != self.num_students:
                raise ValueError(
                    f"MSDConfig.class_groups has {len(groups)} groups for "
                    f"{self.num_students} students"
                )
            flat = [c for g in groups for c in g]
            if any(not g for g in groups):
                raise ValueError("MSDConfig.class_groups: every student needs at least one class")
            if any(not isinstance(c, int) or c < 0 for c in flat):
                raise ValueError("MSDConfig.class_groups must hold non-negative integer labels")
            if len(set(flat)) != len(flat):
                raise ValueError("MSDConfig.class_groups must be disjoint")
        if self.regression_weight < 0:
            raise ValueError(
                f"MSDConfig.regression_weight must be >= 0, got {self.regression_weight}"
            )
        if self.regression_pairs < 1 or self.regression_nfe < 1:
            raise ValueError("MSDConfig.regression_pairs and regression_nfe must be >= 1")
        if self.tsm_steps < 0:
            raise ValueError(f"MSDConfig.tsm_steps must be >= 0, got {self.tsm_steps}")
        if self.adv_start is not None and not (
            isinstance(self.adv_start, int) and self.adv_start >= self.tsm_steps
        ):
            raise ValueError(f"MSDConfig.adv_start must be None or an integer >= tsm_steps "
                             f"({self.tsm_steps}), got {self.adv_start!r}")
        for name in ("gan_weight", "disc_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"MSDConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.disc_hidden < 1:
            raise ValueError(f"MSDConfig.disc_hidden must be >= 1, got {self.disc_hidden}")
        dmd.check_gan_fields(self)

    @classmethod
    def toy_defaults(cls, teacher: Denoiser | None = None, **overrides) -> MSDConfig:
        """For 2-16-D toy data and an MLP teacher: 2000-4000 steps, batch 256. Given an eps
        teacher with alpha(1) ~ 0 (`vsd.ill_conditioned_start`), the students start at
        `vsd.start_time(teacher)` with lr 3e-5; `overrides` replace any field. The EMA of the
        students (0.99, as SIM's and the dmd family's toy configs): on the distillation
        benchmark the one-step SW2 went from 3.51x / 2.99x the 50-NFE teacher's (checkerboard /
        gmm8d, no EMA) to 1.53x / 1.46x."""
        return _toy(
            cls, teacher, overrides, lr=3e-4, eps_lr=3e-5, fake_lr=1e-3, regression_pairs=2048,
            ema_decay=0.99,
        )


class MSDDistiller(Distiller):
    """K students, one shared fake score; each student descends the distribution-matching
    gradient (plus the regression loss in the noise partition) on the samples routed to it.

    `student_networks`: K (smaller) networks for the students (each becomes a Denoiser on the
    teacher's path and parameterisation); `student_network`: one network copied K times;
    default: K copies of the teacher.
    """

    kind = "msd"

    def __init__(
        self,
        teacher: Denoiser,
        config: MSDConfig = MSDConfig(),
        *,
        student_network: nn.Module | None = None,
        student_networks: list[nn.Module] | None = None,
        fake_network: nn.Module | None = None,
    ):
        super().__init__(teacher, config)
        c = config
        if student_networks is not None and student_network is not None:
            raise ValueError("pass student_network or student_networks, not both")
        if student_networks is None:
            student_networks = [
                None if student_network is None else copy.deepcopy(student_network)
                for _ in range(c.num_students)
            ]
        if len(student_networks) != c.num_students:
            raise ValueError(
                f"got {len(student_networks)} student networks for {c.num_students} students"
            )
        students = [student_from_teacher(teacher, net) for net in student_networks]
        self.students = self.add_module(
            "students",
            MultiStudentGenerator(
                students, t_start=c.t_start, partition=c.partition, class_groups=c.class_groups
            ),
        )
        for k, s in enumerate(students):
            self.add_optimizer(f"student_{k}", s.parameters(), lr=c.lr, betas=c.betas)
        fake, fake_params = make_fake_score(
            teacher, c.fake, rank=c.lora_rank, alpha=c.lora_alpha, network=fake_network
        )
        self.fake = self.add_module("fake", fake)
        self.critic = None
        if c.adv_start is not None:  # the adversarial stage's discriminator, trained with fake
            self.critic = dmd.FakeCritic(fake, head=c.disc_head, hidden=c.disc_hidden,
                                         layers=c.disc_layers)
            self.add_module("disc", self.critic.head)
            fake_params = list(fake_params) + list(self.critic.head.parameters())
        self.add_optimizer("fake", fake_params, lr=c.fake_lr, betas=c.betas)
        self.ema = self.add_ema("students", self.students, c.ema_decay) if c.ema_decay else None
        self._pairs: tuple[Tensor, Tensor] | None = None

    # -- pieces --------------------------------------------------------------------------------
    def _step_students(self, total: Tensor) -> list[float]:
        """One backward of the summed per-student losses, then each student's own update."""
        c = self.config
        for k in range(self.students.num_students):
            for p in self.students.students[k].parameters():
                p.grad = None
        total.backward()
        norms = []
        for k in range(self.students.num_students):
            opt = self._optimizers[f"student_{k}"]
            norms.append(optimizer_step(None, opt, clip=c.grad_clip))
            self._schedulers[f"student_{k}"].step()
        if self.ema is not None:
            self.ema.update(self.students)
        return norms

    @staticmethod
    def _per_student_mean(per_sample: Tensor, idx: Tensor, k: int) -> Tensor:
        """sum_k mean_{i routed to k} per_sample[i]: each student's loss is a mean over its own
        samples, whatever their number."""
        counts = torch.bincount(idx, minlength=k).clamp_min(1).to(per_sample)
        return (per_sample / counts[idx]).sum()

    def _regression_pairs(self, like: Tensor) -> tuple[Tensor, Tensor]:
        c = self.config
        if (
            self._pairs is None
            or self._pairs[0].device != like.device
            or self._pairs[0].shape[1:] != like.shape[1:]
        ):
            g = torch.Generator(like.device).manual_seed(c.regression_seed)
            z = torch.randn(
                (c.regression_pairs, *like.shape[1:]),
                generator=g,
                device=like.device,
                dtype=like.dtype,
            )
            with torch.no_grad():
                y = torch.cat(
                    [sample(self.teacher, zc, nfe=c.regression_nfe) for zc in z.split(1024)]
                )
            self._pairs = (z, y)
        return self._pairs

    def _tsm_step(self, x: Tensor, cond, generator) -> dict[str, float]:
        """Teacher score matching: each student regresses the teacher's prediction at
        x_t = alpha x + sigma eps on the real data of its part (all data for noise partitions)."""
        k = self.students.num_students
        by_class = self.students.uses_classes(cond)
        t = sample_t(x, generator, 1e-3, 1.0)
        x_t = self.diffuse(x, t, self.noise_like(x, generator))
        with torch.no_grad():
            target = self.teacher(x_t, t, cond)
        idx = self.students.route(x, cond) if by_class else None
        total = x_t.new_zeros(())
        for j, student in enumerate(self.students.students):
            sel = (idx == j).nonzero().squeeze(1) if by_class else None
            if sel is not None and sel.numel() == 0:
                continue
            xs, ts, tg = (x_t, t, target) if sel is None else (x_t[sel], t[sel], target[sel])
            student.train()
            err = student(xs, ts, _take(cond, sel) if sel is not None else cond) - tg
            total = total + err.float().pow(2).mean()
        self._step_students(total)
        return {"tsm_loss": total.item() / k}

    # -- train.Task ----------------------------------------------------------------------------
    def step(self, batch, *, step: int, generator: torch.Generator) -> dict[str, float]:
        c = self.config
        x, cond = split_batch(batch)
        if step < c.tsm_steps:
            return self._tsm_step(x, cond, generator)
        k = self.students.num_students
        adversarial = c.adv_start is not None and step >= c.adv_start
        logs: dict[str, float] = {}
        # 1. routed one-step samples x0 = g_k(z)(z)
        noise = self.noise_like(x, generator)
        for s in self.students.students:
            s.train()
        idx = self.students.route(noise, cond)
        x0 = self.students.generate(noise, cond)
        # 2. distribution matching: each student's mean over its own samples
        t = sample_t(x0, generator, c.t_min, c.t_max)
        g, aux = dm_gradient(
            self.teacher,
            self.fake,
            x0,
            t,
            self.noise_like(x0, generator),
            cond,
            weighting=c.weighting,
        )
        per = 0.5 * (x0.float() - (x0 - g).detach().float()).pow(2).flatten(1).mean(1)
        loss_dm = self._per_student_mean(per, idx, k)
        total = loss_dm
        # 3. regression on teacher pairs (unconditional: ties student k to its noise region);
        #    the adversarial stage replaces it with DMD2's GAN, each student on its own samples
        if adversarial and c.gan_weight > 0:
            logits = dmd.discriminate(self.critic, x0, cond, generator, c, self)
            per_gan = torch.nn.functional.softplus(-logits.float())  # -log D(x_t), (B,)
            loss_gan = self._per_student_mean(per_gan, idx, k)
            total = total + c.gan_weight * loss_gan
            logs["gan_loss"] = loss_gan.item() / k
        if c.regression_weight > 0 and cond is None and (c.adv_regression or not adversarial):
            z_all, y_all = self._regression_pairs(x)
            pick = torch.randint(
                0, z_all.shape[0], (x.shape[0],), generator=generator, device=x.device
            )
            z, y = z_all[pick], y_all[pick]
            ridx = self.students.route(z, None)
            pred = self.students.generate(z, None)
            per_reg = (pred.float() - y.float()).pow(2).flatten(1).mean(1)
            loss_reg = self._per_student_mean(per_reg, ridx, k)
            total = total + c.regression_weight * loss_reg
            logs["reg_loss"] = loss_reg.item() / k
        norms = self._step_students(total)
        # 4. the shared fake score follows the routed mixture
        #    (+ the discriminator: real batch vs routed samples, in the adversarial stage)
        #    Two time-scale update rule (DMD2 Sec. 4.2): updates after the first fit fresh samples
        #    of the just-updated students, so the fake score tracks where they are now.
        fake_loss = disc_loss = 0.0
        for i in range(c.fake_updates):
            if i == 0:
                xf = x0.detach()
            else:
                with torch.no_grad():
                    xf = self.students.generate(self.noise_like(x, generator), cond)
            err, _ = denoising_loss(
                self.fake, xf, generator=generator, cond=cond, t_min=c.t_min, t_max=c.t_max
            )
            loss = err.mean()
            fake_loss += loss.item()
            if adversarial and c.disc_weight > 0:
                d_loss = dmd.gan_discriminator_loss(
                    dmd.discriminate(self.critic, x, cond, generator, c, self),
                    dmd.discriminate(self.critic, xf, cond, generator, c, self),
                )
                loss = loss + c.disc_weight * d_loss
                disc_loss += d_loss.item()
            self.update("fake", loss, clip=c.grad_clip)
        logs["fake_loss"] = fake_loss / c.fake_updates
        if adversarial and c.disc_weight > 0:
            logs["disc_loss"] = disc_loss / c.fake_updates
        logs["loss"] = loss_dm.item() / k
        logs["score_gap"] = aux["gap"].mean().item()
        logs["student_grad_norm"] = max(norms)
        return logs

    def generator(self) -> Generator:
        return self.ema.module if self.ema is not None else self.students


METHODS = {  # descriptions: onestep.core.method_registry
    "msd": (MSDConfig, MSDDistiller, describe("msd")),
}
