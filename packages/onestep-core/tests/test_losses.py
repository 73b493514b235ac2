"""Teacher losses decrease on toy data, and a trained toy teacher beats the prior on held-out
data."""

import pytest
import torch

from onestep.core.data import toy_sample
from onestep.core.denoiser import Denoiser
from onestep.core.losses import DSMLoss, EDMLoss, FlowMatchingLoss, ot_pair
from onestep.core.metrics import sliced_wasserstein
from onestep.core.nn import MLP, EDMPrecond
from onestep.core.paths import EDM, VP, RectifiedFlow
from onestep.core.sampling import sample


def _setup(kind):
    if kind == "dsm_discrete":
        return Denoiser(MLP(2, hidden=128, depth=2, time_scale=1.0), VP.ddpm_linear(1000),
                        prediction="eps", time_input="index"), DSMLoss(), "ddim"
    if kind.startswith("dsm"):
        target = kind.split("_")[1]
        net = MLP(2, hidden=128, depth=2)
        return Denoiser(net, VP("linear"), prediction=target), DSMLoss(target=target), "ddim"
    if kind == "edm":
        net = EDMPrecond(MLP(2, hidden=128, depth=2, time_scale=250.0), sigma_data=1.0)
        return (Denoiser(net, EDM(sigma_data=1.0), prediction="x0", time_input="sigma"),
                EDMLoss(sigma_data=1.0), "heun")
    coupling = kind.split("_")[1]
    return (Denoiser(MLP(2, hidden=128, depth=2), RectifiedFlow(), prediction="velocity"),
            FlowMatchingLoss(coupling=coupling), "euler")


@pytest.mark.parametrize(
    "kind", ["dsm_eps", "dsm_x0", "dsm_v", "dsm_discrete", "edm", "fm_independent", "fm_ot"]
)
def test_loss_decreases_and_teacher_beats_the_prior(kind):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = toy_sample("8gaussians", 20_000, generator=g)
    held_out = toy_sample("8gaussians", 2000, generator=g)
    den, loss_fn, solver = _setup(kind)

    def eval_loss():  # the same 1024 points, times and noise each time: no sampling noise
        with torch.no_grad():
            return loss_fn(den, data[:1024], generator=torch.Generator().manual_seed(1))[0].item()

    before = eval_loss()
    opt = torch.optim.Adam(den.parameters(), lr=2e-3)
    for _ in range(500):
        batch = data[torch.randint(0, len(data), (256,), generator=g)]
        loss, logs = loss_fn(den, batch, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert set(logs) >= {"loss"} and all(isinstance(v, float) for v in logs.values())
    after = eval_loss()
    assert after < 0.9 * before, (before, after)

    noise = torch.randn(2000, 2, generator=g)
    with torch.no_grad():
        schedule = "karras" if kind == "edm" else "logsnr"
        x = sample(den, noise, nfe=20, solver=solver, schedule=schedule)
    sw_model, sw_prior = sliced_wasserstein(x, held_out), sliced_wasserstein(noise, held_out)
    assert sw_model < 0.8 * sw_prior, (sw_model, sw_prior)


def test_minibatch_ot_coupling_is_optimal_and_a_permutation():
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(64, 3, generator=g) + 3, torch.randn(64, 3, generator=g)
    paired = ot_pair(x, noise)
    assert sorted(map(tuple, paired.tolist())) == sorted(map(tuple, noise.tolist()))
    cost = lambda n: ((x - n) ** 2).sum()
    assert cost(paired) <= cost(noise)
    for _ in range(20):  # no random transposition improves an optimal assignment
        i, j = torch.randint(0, 64, (2,), generator=g).tolist()
        swapped = paired.clone()
        swapped[[i, j]] = paired[[j, i]]
        assert cost(swapped) >= cost(paired) - 1e-9


def test_loss_errors_are_clear():
    den = Denoiser(MLP(2), RectifiedFlow(), prediction="velocity")
    with pytest.raises(ValueError, match="unknown coupling"):
        FlowMatchingLoss(coupling="sinkhorn")(den, torch.randn(4, 2))
    with pytest.raises(ValueError, match="null_cond"):
        FlowMatchingLoss(cond_dropout=0.1)(den, (torch.randn(4, 2), torch.zeros(4).long()))
