"""Shared fixtures: small teachers trained once per test session on a built-in 2-D distribution."""

import pytest
import torch

from onestep.core.data import toy_sample
from onestep.core.denoiser import Denoiser
from onestep.core.losses import DSMLoss, FlowMatchingLoss
from onestep.core.nn import MLP
from onestep.core.paths import VP, RectifiedFlow

TOY = "8gaussians"


def _fit(den, loss_fn, data, steps=1500, batch=256, lr=2e-3, seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(den.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        loss, _ = loss_fn(den, data[torch.randint(0, len(data), (batch,), generator=g)],
                          generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    den.eval()
    for p in den.parameters():
        p.requires_grad_(False)
    return den


@pytest.fixture(scope="session")
def toy_data():
    """(train, held_out): 20k and 2k points of the 8-gaussians toy (unit variance per axis)."""
    g = torch.Generator().manual_seed(123)
    return toy_sample(TOY, 20_000, generator=g), toy_sample(TOY, 2000, generator=g)


@pytest.fixture(scope="session")
def flow_teacher(toy_data):
    """A rectified-flow velocity teacher (MLP) on the toy data."""
    torch.manual_seed(0)  # the same initialisation whichever tests ran before
    den = Denoiser(MLP(2, hidden=128, depth=3), RectifiedFlow(), prediction="velocity")
    return _fit(den, FlowMatchingLoss(), toy_data[0])


@pytest.fixture(scope="session")
def vp_teacher(toy_data):
    """A discrete-VP (DDPM, 1000 steps) eps teacher taking the step index, on the toy data."""
    torch.manual_seed(0)
    den = Denoiser(MLP(2, hidden=128, depth=3, time_scale=1.0), VP.ddpm_linear(1000),
                   prediction="eps", time_input="index")
    return _fit(den, DSMLoss(target="eps"), toy_data[0])
