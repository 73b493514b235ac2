"""VP.ddpm_cosine: the discrete cosine (squaredcos_cap_v2) schedule of Nichol & Dhariwal 2021."""

import math

import torch

from onestep.core.paths import VP


def test_ddpm_cosine_matches_the_closed_form_alpha_bar():
    n, s = 100, 0.008
    path = VP.ddpm_cosine(n)
    assert path.num_steps == n
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    # abar_n = prod_{k<=n} (1 - beta_k) = f((n+1)/N) / f(0) wherever no beta was clipped
    for k in (0, 10, 50, 90):
        assert float(path.alphas_cumprod[k]) == pytest_approx(f((k + 1) / n) / f(0))
    assert float(path.betas.max()) == 0.999  # the last beta is clipped (f(1) = cos(pi/2)^2 ~ 0)
    # the path reaches the data at t = 0 and its noise level grows with the step
    a, sig = path.alpha_sigma(torch.tensor([0.0, 0.01, 0.5, 1.0], dtype=torch.float64))
    assert float(a[0]) == 1.0 and float(sig[0]) == 0.0
    assert bool((sig[1:].diff() > 0).all())


def pytest_approx(x):
    import pytest

    return pytest.approx(x, rel=1e-9, abs=1e-12)
