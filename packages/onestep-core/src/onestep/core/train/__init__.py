"""One training loop for teachers and distillers (DESIGN.md, Trainer).

`Trainer(TrainConfig(...)).fit(task, data)` runs any `Task`; `LossTask` trains a model on one
loss; EMA, optimizer_step, warmup_cosine, autocast and check_finite build a task's `step`.
"""

from .checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .distributed import (
    all_reduce_grads,
    distributed_info,
    init_distributed,
    reduce_mean,
)
from .helpers import EMA, WarmupCosine, autocast, check_finite, optimizer_step, warmup_cosine
from .tasks import LossTask, Task
from .trainer import TrainConfig, Trainer

__all__ = [
    "EMA",
    "CheckpointError",
    "LossTask",
    "Task",
    "TrainConfig",
    "Trainer",
    "WarmupCosine",
    "all_reduce_grads",
    "autocast",
    "check_finite",
    "distributed_info",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "optimizer_step",
    "reduce_mean",
    "save_checkpoint",
    "warmup_cosine",
]
