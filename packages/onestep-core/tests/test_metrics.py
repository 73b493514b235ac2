"""Metrics against closed forms and slow references."""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from torch import nn

from onestep.core import metrics as M


def _close(actual, expected, rtol=1e-7, atol=0.0):
    """assert_allclose on tensors (torch.testing's first call imports torch.distributed, ~6 s)."""
    as_np = lambda t: torch.as_tensor(t).detach().cpu().double().numpy()
    np.testing.assert_allclose(as_np(actual), as_np(expected), rtol=rtol, atol=atol)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _random_spd(d, rng):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _fd_reference(mu1, c1, mu2, c2):
    """Textbook FD with scipy's (complex) sqrtm of C1 C2."""
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))


# --- Fréchet distance


def test_fd_commuting_covariances_closed_form():
    # Diagonal covariances commute: FD = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
    rng = _rng(1)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = M.frechet_distance_from_moments(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("d", [1, 3, 16])
def test_fd_non_commuting_covariances_match_sqrtm_reference(d):
    rng = _rng(d)
    c1, c2 = _random_spd(d, rng), _random_spd(d, rng)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    assert not np.allclose(c1 @ c2, c2 @ c1) or d == 1
    got = M.frechet_distance_from_moments(
        torch.from_numpy(mu1), torch.from_numpy(c1), torch.from_numpy(mu2), torch.from_numpy(c2)
    )
    assert got == pytest.approx(_fd_reference(mu1, c1, mu2, c2), rel=1e-8, abs=1e-10)


def test_fd_identical_moments_is_zero_and_singular_cov_ok():
    rng = _rng(2)
    a = rng.standard_normal((8, 3))
    c = a @ a.T  # rank 3 of 8: singular
    mu = rng.standard_normal(8)
    # sqrt amplifies round-off at the zero eigenvalues: ~sqrt(1e-16) each, so allow 1e-6
    assert abs(M.frechet_distance_from_moments(mu, c, mu, c)) < 1e-6


def test_feature_moments_match_numpy():
    x = _rng(3).standard_normal((50, 2, 3))  # flattened to (50, 6)
    mu, cov = M.feature_moments(x)
    flat = x.reshape(50, -1)
    np.testing.assert_allclose(mu.numpy(), flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(flat, rowvar=False), rtol=1e-10)


def test_fd_of_shifted_unit_gaussians_is_shift_squared():
    g = torch.Generator().manual_seed(0)
    m = torch.tensor([1.0, -1.0, 0.5, 0.0])
    x = torch.randn(20000, 4, generator=g)
    y = torch.randn(20000, 4, generator=g) + m
    assert M.frechet_distance(x, y) == pytest.approx(float(m.square().sum()), abs=0.05)
    assert M.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_with_network_uses_eval_no_grad_and_restores_mode():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Dropout(0.5))
    net.train()
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(64, 3, 4, generator=g), torch.randn(80, 3, 4, generator=g) + 1
    fd = M.frechet_distance_with(net, x1, x2, batch_size=16)
    assert net.training
    with torch.no_grad():
        net.eval()
        expected = M.frechet_distance(net(x1), net(x2))  # deterministic only in eval mode
    assert fd == pytest.approx(expected, rel=1e-5)
    feats = M.extract_features(net, x1, batch_size=10)
    assert feats.shape == (64, 5) and feats.dtype == torch.float64 and not feats.requires_grad


# --- KID, MMD, energy distance


def _poly_mmd2_slow(x, y, degree=3, gamma=None, coef0=1.0):
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    k = lambda a, b: (gamma * a @ b + coef0) ** degree
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_single_full_subset_matches_slow_unbiased_mmd():
    rng = _rng(4)
    x, y = rng.standard_normal((20, 3)), rng.standard_normal((20, 3)) + 0.3
    out = M.kid(x, y, subsets=1, subset_size=20)
    assert out["mean"] == pytest.approx(_poly_mmd2_slow(x, y), rel=1e-10)
    assert out["std"] == 0.0


def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1000, 8, generator=g), torch.randn(1000, 8, generator=g)
    same = M.kid(x, y, subsets=8, subset_size=300, seed=1)
    shifted = M.kid(x, y + 0.5, subsets=8, subset_size=300, seed=1)
    assert abs(same["mean"]) < 3 * same["std"] + 1e-3
    assert shifted["mean"] > 0.05 and shifted["mean"] > 10 * abs(same["mean"])
    assert M.kid(x, y, subsets=5, subset_size=100, seed=3) == M.kid(
        x, y, subsets=5, subset_size=100, generator=torch.Generator().manual_seed(3)
    )


def _rbf_mmd2_slow(x, y, bandwidths, unbiased):
    def k(a, b):
        d2 = ((a - b) ** 2).sum()
        return np.mean([math.exp(-d2 / (2 * h * h)) for h in bandwidths])

    def avg(a, b, skip_diag):
        vals = [
            k(a[i], b[j])
            for i in range(len(a))
            for j in range(len(b))
            if not (skip_diag and i == j)
        ]
        return sum(vals) / len(vals)

    return avg(x, x, unbiased) + avg(y, y, unbiased) - 2 * avg(x, y, False)


@pytest.mark.parametrize("unbiased", [True, False])
def test_mmd_matches_slow_reference(unbiased):
    rng = _rng(5)
    x, y = rng.standard_normal((15, 2)), rng.standard_normal((11, 2)) + 0.5
    bw = (0.5, 1.0, 3.0)
    got = M.mmd(x, y, bandwidths=bw, unbiased=unbiased)
    assert got == pytest.approx(_rbf_mmd2_slow(x, y, bw, unbiased), rel=1e-10)


def test_mmd_median_heuristic_default_bandwidths():
    rng = _rng(6)
    x, y = rng.standard_normal((30, 3)), rng.standard_normal((25, 3))
    z = np.concatenate([x, y])
    h = np.median(scipy.spatial.distance.pdist(z))
    assert M.mmd(x, y) == pytest.approx(M.mmd(x, y, bandwidths=(0.5 * h, h, 2 * h)), rel=1e-12)


def test_mmd_and_energy_near_zero_same_distribution_positive_shifted():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(1000, 4, generator=g), torch.randn(1000, 4, generator=g)
    shift = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert abs(M.mmd(x, y)) < 0.005
    assert M.mmd(x, y + shift) > 0.02
    assert abs(M.energy_distance(x, y)) < 0.01
    assert M.energy_distance(x, y + shift) > 0.2


def test_energy_distance_v_statistic_matches_scipy_in_1d():
    rng = _rng(7)
    x, y = rng.standard_normal(40), rng.standard_normal(55) * 2 + 1
    expected = scipy.stats.energy_distance(x, y) ** 2  # scipy returns the square root
    assert M.energy_distance(x, y, unbiased=False) == pytest.approx(expected, rel=1e-10)


def test_energy_distance_unbiased_matches_slow_reference():
    rng = _rng(8)
    x, y = rng.standard_normal((12, 3)), rng.standard_normal((9, 3)) + 1
    dist = scipy.spatial.distance.cdist
    dxx, dyy = dist(x, x), dist(y, y)
    expected = 2 * dist(x, y).mean() - dxx.sum() / (12 * 11) - dyy.sum() / (9 * 8)
    assert M.energy_distance(x, y) == pytest.approx(expected, rel=1e-10)


# --- sliced Wasserstein


def test_sliced_w2_of_a_shift_is_norm_over_sqrt_d():
    # W2 of a shift along theta is |theta.m|; E_theta (theta.m)^2 = |m|^2 / d on the sphere.
    d = 4
    g = torch.Generator().manual_seed(2)
    m = torch.tensor([2.0, 0.0, -1.0, 1.0])
    x = torch.randn(2000, d, generator=g)
    y = torch.randn(2000, d, generator=g) + m
    sw = M.sliced_wasserstein(x, y, n_projections=1000)
    assert sw == pytest.approx(float(m.norm()) / math.sqrt(d), rel=0.05)


def test_sliced_w2_identical_samples_is_zero_and_seeded():
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    assert M.sliced_wasserstein(x, x) == 0.0
    assert M.sliced_wasserstein(x, x[torch.randperm(300)]) == pytest.approx(0.0, abs=1e-12)
    y = x + 0.1 * torch.randn(300, 5, generator=torch.Generator().manual_seed(1))
    assert M.sliced_wasserstein(x, y, seed=3) == M.sliced_wasserstein(x, y, seed=3)


def test_sliced_w1_in_1d_unequal_sizes_matches_scipy():
    # In 1-D the projections are +-1, so SW_p = W_p; scipy computes W1 for any sample sizes.
    rng = _rng(9)
    x, y = rng.standard_normal(37), rng.standard_normal(50) * 1.5 + 0.3
    got = M.sliced_wasserstein(x, y, n_projections=4, p=1)
    assert got == pytest.approx(scipy.stats.wasserstein_distance(x, y), rel=1e-10)


def test_sliced_w2_in_1d_unequal_sizes_matches_replication_reference():
    # Replicating x M times and y N times gives equal-size samples with the same distributions.
    rng = _rng(10)
    x, y = rng.standard_normal(6), rng.standard_normal(4) + 1
    xr, yr = np.sort(np.repeat(x, 4)), np.sort(np.repeat(y, 6))
    expected = math.sqrt(((xr - yr) ** 2).mean())
    got = M.sliced_wasserstein(x[:, None], y[:, None], n_projections=3, p=2)
    assert got == pytest.approx(expected, rel=1e-10)


# --- precision / recall


def _mixture_modes(n_modes=8, dim=2, radius=10.0):
    a = torch.arange(n_modes, dtype=torch.float64) * 2 * math.pi / n_modes
    centres = torch.zeros(n_modes, dim, dtype=torch.float64)
    centres[:, 0], centres[:, 1] = radius * a.cos(), radius * a.sin()
    return centres


def _sample_modes(centres, modes, n, g):
    idx = torch.tensor(modes)[torch.randint(0, len(modes), (n,), generator=g)]
    return centres[idx] + 0.4 * torch.randn(n, centres.shape[1], generator=g, dtype=torch.float64)


def test_precision_recall_identical_far_and_half_modes():
    g = torch.Generator().manual_seed(0)
    centres = _mixture_modes()
    real = _sample_modes(centres, list(range(8)), 2000, g)
    assert M.precision_recall(real, real.clone()) == {"precision": 1.0, "recall": 1.0}
    assert M.precision_recall(real, real + 100.0) == {"precision": 0.0, "recall": 0.0}
    half = M.precision_recall(real, _sample_modes(centres, [0, 1, 2, 3], 2000, g), k=3)
    assert half["precision"] > 0.9
    assert half["recall"] == pytest.approx(0.5, abs=0.06)


# --- NFE and timing


def test_count_calls_on_function_and_module():
    f = M.count_calls(lambda x: 2 * x)
    for _ in range(3):
        assert f(2) == 4
    assert f.nfe == 3
    f.reset()
    assert f.nfe == 0

    lin = nn.Linear(3, 3)
    wrapped = M.count_calls(lin)
    assert isinstance(wrapped, M.CountingModule)
    x = torch.randn(4, 3)
    _close(wrapped(x), lin(x))
    wrapped(x)
    assert wrapped.nfe == 2
    assert len(list(wrapped.parameters())) == 2


def test_time_per_sample_reports_median_and_calls_warmup_plus_repeats():
    f = M.count_calls(lambda: torch.randn(100, 4).sum())
    out = M.time_per_sample(f, 100, repeats=5, warmup=2)
    assert f.nfe == 7
    assert len(out["all"]) == 5 and all(t >= 0 for t in out["all"])
    assert out["median_s"] == pytest.approx(float(np.median(out["all"])))
    assert out["per_sample_s"] == pytest.approx(out["median_s"] / 100)
