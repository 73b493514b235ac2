"""Masked discrete diffusion on real digit tokens and learnable sampler distillation (LSD/LSD+)."""

import math

import pytest
import torch

from onestep.core.discrete import (
    MaskedDiffusion,
    MaskedMLP,
    MaskedTransformer,
    learn_discrete_sampler,
    load_digit_tokens,
    position_tv,
    sample_masked,
    token_frechet,
)

pytest.importorskip("sklearn")


def _split():
    data = load_digit_tokens()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    return data[perm[:1400]], data[perm[1400:]]


def _train(net, diffusion, data, steps, lr=2e-3, batch=128, seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    logs = []
    for _ in range(steps):
        loss, log = diffusion.loss(net, data[torch.randint(0, len(data), (batch,), generator=g)],
                                   generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        logs.append(log["loss"])
    return logs


@pytest.fixture(scope="module")
def teacher():
    train, test = _split()
    diffusion = MaskedDiffusion(17, 64)
    net = MaskedMLP(17, 64, hidden=256, depth=2)
    logs = _train(net, diffusion, train, 500)
    net.eval()
    return net, diffusion, train, test, logs


def test_digit_tokens_are_real_digits():
    x = load_digit_tokens()
    assert x.shape == (1797, 64) and x.dtype == torch.int64
    assert int(x.min()) == 0 and int(x.max()) == 16


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_forward_marginals_match_closed_form(schedule):
    d = MaskedDiffusion(5, 3, schedule)
    x0 = torch.tensor([[0, 3, 4]]).repeat(20000, 1)
    for t in (0.1, 0.5, 0.9):
        a = d.alpha(torch.tensor(t)).item()
        if schedule == "linear":
            assert a == pytest.approx(1 - t)
        else:
            assert a == pytest.approx(1 - math.cos(math.pi / 2 * (1 - t)), abs=1e-7)
        x_t = d.q_sample(x0, t, generator=torch.Generator().manual_seed(1))
        emp = torch.nn.functional.one_hot(x_t, 6).double().mean(0)  # (3, 6)
        exact = d.marginal(x0[:1], t)[0].double()
        assert (emp - exact).abs().max() < 0.015
        assert exact.sum(-1).allclose(torch.ones(3, dtype=torch.float64))
    # alpha' against a finite difference
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    fd = (d.alpha(t + 1e-6) - d.alpha(t - 1e-6)) / 2e-6
    assert torch.allclose(d.d_alpha(t), fd, atol=1e-6)


@pytest.mark.slow  # shares a teacher trained for 500 steps (about 40 s on one thread)
def test_loss_decreases_on_digits(teacher):
    *_, logs = teacher
    first, last = logs[0], sum(logs[-50:]) / 50
    # at initialisation the masked positions cost about log 17 = 2.83 nats each
    assert first > 2.0 and last < 0.5 * first, (first, last)


def test_transformer_loss_decreases():
    train, _ = _split()
    d = MaskedDiffusion(17, 64)
    net = MaskedTransformer(17, 64, hidden=32, depth=1)
    logs = _train(net, d, train, 60, lr=3e-3, batch=32)
    assert sum(logs[-15:]) / 15 < 0.85 * sum(logs[:15]) / 15


@pytest.mark.slow  # shares a teacher trained for 500 steps (about 40 s on one thread)
def test_many_step_sampler_matches_data(teacher):
    net, d, train, test, _ = teacher
    g = torch.Generator().manual_seed(3)
    x = sample_masked(net, d, 400, nfe=32, generator=g)
    assert x.shape == (400, 64) and int(x.max()) <= 16  # no mask left
    # trivial baseline: every pixel drawn from its own data marginal (no correlations)
    cols = [train[torch.randint(0, len(train), (400,), generator=g), j] for j in range(64)]
    indep = torch.stack(cols, 1)
    fd, fd_indep = token_frechet(x, test), token_frechet(indep, test)
    assert fd < 0.5 * fd_indep, (fd, fd_indep)
    noise = torch.randint(0, 17, (400, 64), generator=g)
    assert position_tv(x, test, 17) < min(0.15, 0.25 * position_tv(noise, test, 17))
    # a one-step sampler is the independent baseline again: much worse than many steps
    one = sample_masked(net, d, 400, nfe=1, generator=g)
    assert token_frechet(one, test) > 1.5 * fd


@pytest.mark.slow  # shares a teacher trained for 500 steps (about 40 s on one thread)
def test_lsd_selection_never_worse_than_its_start(teacher):
    net, d, *_ = teacher
    s = learn_discrete_sampler(net, d, nfe=2, teacher_steps=8, n_train=64, n_heldout=100,
                               iterations=6, batch=16, eval_every=3)
    assert s.meta["heldout_metric"] <= s.meta["heldout_metric_initial"]
    assert s.coefficients.shape == (2,) and s.meta["method"] == "lsd"


def test_bad_input():
    d = MaskedDiffusion(17, 64)
    net = MaskedMLP(17, 64, hidden=16, depth=1)
    with pytest.raises(ValueError, match="schedule"):
        MaskedDiffusion(17, 64, "quadratic")
    with pytest.raises(ValueError, match="vocab_size"):
        MaskedDiffusion(1, 64)
    with pytest.raises(ValueError, match="tokens must lie"):
        d.q_sample(torch.full((2, 64), 17), 0.5)
    with pytest.raises(ValueError, match="shape"):
        d.loss(net, torch.zeros(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        d.marginal(torch.zeros(2, 64), 0.5)
    with pytest.raises(ValueError, match="exactly one"):
        sample_masked(net, d, 4)
    with pytest.raises(ValueError, match="decrease"):
        sample_masked(net, d, 4, times=torch.tensor([1.0, 0.6, 0.7, 0.0]))
    with pytest.raises(ValueError, match="coefficients"):
        sample_masked(net, d, 4, nfe=3, coefficients=torch.ones(2))
    with pytest.raises(ValueError, match="teacher_steps"):
        learn_discrete_sampler(net, d, nfe=4, teacher_steps=6)
    with pytest.raises(ValueError, match="nfe"):
        learn_discrete_sampler(net, d, nfe=0)
    with pytest.raises(ValueError, match="nothing to learn"):
        learn_discrete_sampler(net, d, nfe=2, teacher_steps=4, learn_coefficients=False,
                               n_train=4, n_heldout=4, iterations=1)
    with pytest.raises(ValueError, match="logits"):
        sample_masked(net, MaskedDiffusion(16, 64), 2, nfe=2)  # net has 17 outputs
