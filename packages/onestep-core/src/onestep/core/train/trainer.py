"""The training loop: sample, `task.step`, log, checkpoint; exact resume; DDP via torchrun."""

from __future__ import annotations

import json
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn.parameter import is_lazy
from tqdm.auto import tqdm

from .checkpoint import (
    CheckpointError,
    capture_rng,
    clean_temporaries,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    restore_rng,
    save_checkpoint,
)
from .distributed import barrier, broadcast_modules, gather_objects, init_distributed
from .helpers import check_finite


@dataclass(frozen=True)
class TrainConfig:
    """One training run."""

    steps: int = 1000
    """Global step to train up to (a resumed run continues from its checkpoint up to here)."""
    batch_size: int = 64
    """Global batch size, split into equal contiguous slices over ranks (must divide evenly)."""
    log_every: int = 50
    """Steps between log records (each averages the logs since the previous record)."""
    ckpt_every: int = 1000
    """Steps between checkpoints; 0: only at the end. One is always written at the end."""
    seed: int = 0
    """Seeds model init (in Trainer()), data sampling, the task's generator and global RNGs."""
    out_dir: str | os.PathLike = "runs/train"
    """Run directory: log.jsonl, checkpoints/, tb/."""
    keep_last: int = 3
    """Step checkpoints to keep; 0 keeps all."""
    progress: bool = True
    """tqdm progress bar on rank 0."""
    tensorboard: bool = False
    """TensorBoard scalars in out_dir/tb (skipped with a warning if tensorboard is missing)."""
    device: str | None = None
    """Device; None: cuda:LOCAL_RANK when CUDA is available, else cpu."""
    resume: bool = False
    """Continue from out_dir/checkpoints/latest when there is one."""


def _derive_seed(*ints: int) -> int:
    """An independent 63-bit seed for each tuple (numpy SeedSequence mixing)."""
    return int(np.random.SeedSequence(list(ints)).generate_state(1, np.uint64)[0]) >> 1


def _is_damage(error: CheckpointError) -> bool:
    """Whether a checkpoint failed to load because a file is missing, corrupt or truncated (an
    older checkpoint may then serve), rather than because it does not fit the task."""
    text = str(error)
    return any(s in text for s in ("corrupt", "truncated", "is missing", "does not exist"))


def _to_device(obj, device: torch.device):
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


class Trainer:
    """Runs any Task: `Trainer(config).fit(task, data)`.

    Under torchrun it starts the process group (gloo on CPU, nccl on CUDA), picks the device from
    LOCAL_RANK and seeds every rank alike (models built after `Trainer()` start identical; `fit`
    also broadcasts rank 0's weights). Gradients are averaged in `optimizer_step`.
    """

    def __init__(self, config: TrainConfig):
        c = config
        if c.steps < 0 or c.batch_size <= 0 or c.log_every <= 0 or c.ckpt_every < 0:
            raise ValueError(f"invalid TrainConfig: {c}")
        self.config = config
        self.rank, self.world, self.local_rank = init_distributed(c.device)
        if c.device is not None:
            self.device = torch.device(c.device)
        elif torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        if c.batch_size % self.world:
            raise ValueError(
                f"batch_size={c.batch_size} is not divisible by the world size {self.world}"
            )
        self.local_batch = c.batch_size // self.world
        self.out_dir = Path(c.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        torch.manual_seed(c.seed)

    # ------------------------------------------------------------------ data

    def _sampler(self, data) -> tuple[Callable[[torch.Generator], object], bool]:
        """(sample(generator) -> local batch, whether every rank shares the data generator)."""
        if callable(data) and not isinstance(data, Tensor):
            return (lambda g: data(self.local_batch, g)), False
        if isinstance(data, Tensor):
            tensors, pack = [data], lambda ts: ts[0]
        elif isinstance(data, Mapping):
            keys = list(data)
            tensors, pack = [data[k] for k in keys], lambda ts: dict(zip(keys, ts, strict=True))
        elif isinstance(data, (tuple, list)):
            tensors, pack = list(data), tuple
        else:
            raise TypeError(f"data must be a Tensor, tuple of Tensors or callable, not {data!r}")
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            raise ValueError(f"data tensors differ in length: {[len(t) for t in tensors]}")
        lo = self.rank * self.local_batch

        def sample(g: torch.Generator):
            # the same global index batch on every rank; this rank takes its contiguous slice
            idx = torch.randint(n, (self.config.batch_size,), generator=g)
            idx = idx[lo : lo + self.local_batch]
            return pack([t[idx.to(t.device)] for t in tensors])

        return sample, True

    # ------------------------------------------------------------------ logging

    def _open_log(self, start: int):
        """log.jsonl with the records after `start` dropped (a resumed run rewrites them)."""
        path = self.out_dir / "log.jsonl"
        kept = []
        if path.is_file() and start > 0:
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= start:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    continue
        f = open(path, "w")
        f.writelines(kept)
        f.flush()
        return f

    def _tensorboard(self, start: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn(
                "tensorboard is not installed; skipping TensorBoard logs "
                "(pip install 'onestep-core[tensorboard]')",
                stacklevel=3,
            )
            return None
        return SummaryWriter(log_dir=str(self.out_dir / "tb"), purge_step=start or None)

    # ------------------------------------------------------------------ checkpoints

    def _save(self, task, step: int, generators: dict) -> None:
        # a finite loss can still leave non-finite weights behind (an update that overflowed):
        # stop before they replace the last good checkpoint
        for name, module in task.modules().items():
            for key, t in module.state_dict().items():
                if is_lazy(t) or not t.is_floating_point():
                    continue
                if not bool(torch.isfinite(t).all()):
                    raise FloatingPointError(
                        f"NaN in training at step {step}: weights of '{name}' ({key}) are not "
                        "finite"
                    )
        rng = gather_objects(capture_rng(generators, self.device))
        if self.rank == 0:
            save_checkpoint(
                self.ckpt_dir, step, task, rng=rng, extra_meta={"world_size": self.world}
            )
            prune_checkpoints(self.ckpt_dir, self.config.keep_last, up_to=step)
        barrier()

    def _resume(self, task, generators: dict) -> int:
        ckpt = self._load_newest_intact(task)
        if ckpt is None:
            return 0
        path = ckpt["path"]
        rngs = ckpt["state"].get("rng") or []
        if len(rngs) == self.world:
            restore_rng(rngs[self.rank], generators, self.device)
        else:
            warnings.warn(
                f"{path} was written by {len(rngs)} rank(s), this run has {self.world}: "
                "RNG states are re-seeded, so the resumed run is not bit-exact",
                stacklevel=3,
            )
            self._seed(generators, ckpt["step"])
        return ckpt["step"]

    def _load_newest_intact(self, task) -> dict | None:
        """Load the newest checkpoint that loads; a corrupt newer one is skipped with a note on
        stderr saying which and why. None when there is no checkpoint; CheckpointError (naming
        each one tried) when none loads, or when the newest fails for a reason other than
        damage (a checkpoint that does not fit the task)."""
        try:
            newest = latest_checkpoint(self.out_dir)
        except CheckpointError:  # `latest` names a step folder that is gone
            newest = None
        candidates = [p for _, p in reversed(list_checkpoints(self.ckpt_dir))]
        if newest is not None and newest in candidates:  # `latest` first, then by step
            candidates.remove(newest)
            candidates.insert(0, newest)
        skipped = []
        for path in candidates:
            try:
                ckpt = load_checkpoint(path, task)
            except CheckpointError as e:
                if not _is_damage(e):
                    raise
                skipped.append(str(e))
                continue
            if skipped and self.rank == 0:
                for reason in skipped:
                    print(f"warning: skipped a damaged checkpoint: {reason}", file=sys.stderr)
                print(f"resuming from {path} instead", file=sys.stderr)
            return ckpt
        if skipped:
            raise CheckpointError("no intact checkpoint to resume from: " + "; ".join(skipped))
        return None

    def _seed(self, generators: dict, offset: int = 0) -> None:
        """Seeds from (seed, offset, stream, rank); tensor data is indexed alike on all ranks."""
        s, r = self.config.seed, self.rank
        generators["data"].manual_seed(_derive_seed(s, offset, 0, 0 if self._shared_data else r))
        generators["task"].manual_seed(_derive_seed(s, offset, 1, r))
        torch.manual_seed(_derive_seed(s, offset, 2, r))  # dropout and other global draws
        np.random.seed(_derive_seed(s, offset, 3, r) % 2**32)
        random.seed(_derive_seed(s, offset, 4, r))

    # ------------------------------------------------------------------ the loop

    def fit(self, task, data, *, resume: bool | None = None,
            on_checkpoint: Callable[[int], None] | None = None) -> list[dict]:
        """Train `task` on `data` up to `config.steps`; returns this run's log records.

        `data`: a Tensor (N, ...), a tuple/dict of Tensors sharing N (random global index batches
        from the trainer's seeded generator), or `sample(local_batch_size, generator) -> batch`.
        `on_checkpoint(step)` runs on rank 0 after each checkpoint is written (e.g. to draw a grid
        of samples); it must not draw from the global RNGs it does not restore (resume would then
        differ), so give it its own seeded generator.
        """
        c = self.config
        resume = c.resume if resume is None else resume
        modules = task.modules()
        for m in (*modules.values(), *getattr(task, "frozen_modules", dict)().values()):
            m.to(self.device)
        broadcast_modules(modules)
        sample, shared_data = self._sampler(data)
        self._shared_data = shared_data
        generators = {"data": torch.Generator(), "task": torch.Generator(self.device)}
        self._seed(generators)

        if self.rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            clean_temporaries(self.ckpt_dir)
            if not resume and list_checkpoints(self.ckpt_dir):
                warnings.warn(
                    f"{self.ckpt_dir} already holds checkpoints; this fresh run overwrites them",
                    stacklevel=2,
                )
        barrier()
        start = self._resume(task, generators) if resume else 0
        if start >= c.steps:
            if start > c.steps:
                warnings.warn(f"checkpoint step {start} is past steps={c.steps}", stacklevel=2)
            return []

        log = self._open_log(start) if self.rank == 0 else None
        writer = self._tensorboard(start) if c.tensorboard and self.rank == 0 else None
        bar = tqdm(
            total=c.steps,
            initial=start,
            desc="train",
            dynamic_ncols=True,
            disable=not (c.progress and self.rank == 0),
        )
        optimizers = task.optimizers()
        records: list[dict] = []
        sums: dict[str, float] = {}
        count = 0
        t0 = time.perf_counter()
        try:
            for step in range(start, c.steps):
                batch = _to_device(sample(generators["data"]), self.device)
                lrs = {k: o.param_groups[0]["lr"] for k, o in optimizers.items()}
                logs = task.step(batch, step=step, generator=generators["task"])
                check_finite(logs, step)
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
                done = step + 1
                bar.update(1)
                if "loss" in logs:
                    bar.set_postfix(loss=f"{float(logs['loss']):.4g}", refresh=False)

                if done % c.log_every == 0 or done == c.steps:
                    # mean over the window's steps and over ranks
                    windows = gather_objects((sums, count))
                    total = sum(n for _, n in windows)
                    keys = sorted(set().union(*(s for s, _ in windows)))
                    mean = {k: sum(s.get(k, 0.0) for s, _ in windows) / total for k in keys}
                    rec = {"step": done, "time": time.perf_counter() - t0, "lr": lrs, "logs": mean}
                    records.append(rec)
                    if log is not None:
                        log.write(json.dumps(rec) + "\n")
                        log.flush()
                    if writer is not None:
                        for k, v in mean.items():
                            writer.add_scalar(f"train/{k}", v, done)
                        for k, v in lrs.items():
                            writer.add_scalar(f"lr/{k}", v, done)
                    sums, count = {}, 0

                if (c.ckpt_every and done % c.ckpt_every == 0) or done == c.steps:
                    self._save(task, done, generators)
                    if on_checkpoint is not None and self.rank == 0:
                        on_checkpoint(done)
        finally:
            bar.close()
            if log is not None:
                log.close()
            if writer is not None:
                writer.close()
        return records
