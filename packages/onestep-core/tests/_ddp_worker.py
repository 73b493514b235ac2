"""DDP probe for test_train.py: `main(out)` in each rank (torchrun's environment, gloo, CPU);
`run` alone is the single-process reference. Also runnable as `torchrun --nproc_per_node 2
_ddp_worker.py OUT`.

Each rank records the gradients `optimizer_step` hands to the optimiser (SGD with lr=0, so the
weights never move) and the batch slice it was given; rank files go to OUT/rank{r}.pt.
"""

import sys

import torch
import torch.distributed as dist
from torch import nn

from onestep.core.train import TrainConfig, Trainer, optimizer_step


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
        self.head = nn.Linear(1, 1)
        self.unused = nn.Linear(2, 2)  # never receives a gradient on any rank

    def forward(self, x):
        return self.head(self.body(x))


def make_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    return x, torch.sin(x.sum(1, keepdim=True))


class GradProbe:
    """One network, SGD(lr=0); keeps a copy of the averaged gradients at every optimiser step."""

    kind = "grad-probe"

    def __init__(self, net):
        self.net = net
        self.opt = torch.optim.SGD(net.parameters(), lr=0.0)
        self.opt.register_step_pre_hook(self._capture)
        self.grads, self.batches = [], []

    def _capture(self, opt, args, kwargs):
        named = self.net.named_parameters()
        self.grads.append({n: None if p.grad is None else p.grad.clone() for n, p in named})

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {"net": self.opt}

    def schedulers(self):
        return {}

    def step(self, batch, *, step, generator):
        x, y = batch
        self.batches.append(x.clone())
        loss = ((self.net(x) - y) ** 2).mean()
        grad_norm = optimizer_step(loss, self.opt, self.net.parameters())
        return {"loss": float(loss.detach()), "grad_norm": grad_norm}


def run(out_dir, steps=2):
    config = TrainConfig(
        steps=steps, batch_size=8, log_every=1, ckpt_every=0, progress=False,
        out_dir=out_dir, device="cpu",
    )  # fmt: skip
    trainer = Trainer(config)
    torch.manual_seed(1000 + trainer.rank)  # different init per rank: fit() must broadcast rank 0's
    task = GradProbe(Net())
    records = trainer.fit(task, make_data())
    return trainer, task, records


def main(out):
    trainer, task, records = run(out)
    torch.save(
        {"grads": task.grads, "batches": task.batches, "records": records, "world": trainer.world},
        f"{out}/rank{trainer.rank}.pt",
    )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
