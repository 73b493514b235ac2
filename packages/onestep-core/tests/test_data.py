"""Data loading, toys, exact Gaussian mixtures and splits."""

import math
import re

import numpy as np
import pytest
import scipy.stats
import torch

from onestep.core import data as D


def _close(actual, expected, rtol=1e-7, atol=0.0):
    """assert_allclose on tensors (torch.testing's first call imports torch.distributed, ~6 s)."""
    as_np = lambda t: torch.as_tensor(t).detach().cpu().double().numpy()
    np.testing.assert_allclose(as_np(actual), as_np(expected), rtol=rtol, atol=atol)


# --- load_vectors


def test_load_npy_2d_and_1d(tmp_path):
    a = np.arange(12, dtype=np.int64).reshape(4, 3)
    np.save(tmp_path / "a.npy", a)
    x = D.load_vectors(tmp_path / "a.npy")
    assert x.dtype == torch.float32 and x.shape == (4, 3)
    np.testing.assert_array_equal(x.numpy(), a)
    np.save(tmp_path / "b.npy", np.arange(5.0))
    assert D.load_vectors(str(tmp_path / "b.npy")).shape == (5, 1)


@pytest.mark.parametrize("header", [True, False])
def test_load_csv_with_and_without_header(tmp_path, header):
    text = ("x,y\n" if header else "") + "1,2\n3.5, -4e-1\n\n5,6\n"
    (tmp_path / "v.csv").write_text(text)
    x = D.load_vectors(tmp_path / "v.csv")
    np.testing.assert_allclose(x.numpy(), [[1, 2], [3.5, -0.4], [5, 6]], rtol=1e-6)


def _raises(path, *patterns, exc=ValueError):
    with pytest.raises(exc) as info:
        D.load_vectors(path)
    msg = str(info.value)
    assert str(path) in msg
    for p in patterns:
        assert re.search(p, msg), msg


def test_load_errors_name_file_and_problem(tmp_path):
    _raises(tmp_path / "missing.npy", "no such file", exc=FileNotFoundError)
    (tmp_path / "v.txt").write_text("1,2\n")
    _raises(tmp_path / "v.txt", "unsupported extension", r"\.npy", r"\.csv")
    np.save(tmp_path / "three.npy", np.zeros((2, 3, 4)))
    _raises(tmp_path / "three.npy", r"\(2, 3, 4\)", "3-D")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    _raises(tmp_path / "empty.npy", "empty")
    (tmp_path / "empty.csv").write_text("a,b\n\n")
    _raises(tmp_path / "empty.csv", "empty")
    np.save(tmp_path / "str.npy", np.array([["a", "b"]]))
    _raises(tmp_path / "str.npy", "non-numeric")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,oops\n")
    _raises(tmp_path / "bad.csv", "non-numeric", "oops", "line 3", "column 2")
    (tmp_path / "ragged.csv").write_text("1,2\n3\n")
    _raises(tmp_path / "ragged.csv", "line 2", "columns")


def test_load_reports_nonfinite_count_and_first_row(tmp_path):
    a = np.ones((6, 2))
    a[2, 1], a[4, 0], a[4, 1] = np.nan, np.inf, -np.inf
    np.save(tmp_path / "nan.npy", a)
    _raises(tmp_path / "nan.npy", "3 non-finite", "row 2")
    (tmp_path / "nan.csv").write_text("x,y\n1,2\nnan,3\n")
    _raises(tmp_path / "nan.csv", "1 non-finite", "row 1")


# --- toys


def test_toys_shapes_determinism_and_unit_moments():
    assert D.toy_names() == ["checkerboard", "moons", "rings", "8gaussians", "swissroll"]
    for name in D.toy_names():
        x = D.toy_sample(name, 100_000, generator=torch.Generator().manual_seed(0))
        assert x.shape == (100_000, 2) and x.dtype == torch.float32
        x64 = x.double()
        _close(x64.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.02, rtol=0)
        _close(x64.var(0), torch.ones(2, dtype=torch.float64), atol=0.03, rtol=0)
        again = D.TOYS[name](100, generator=torch.Generator().manual_seed(1))
        _close(again, D.toy_sample(name, 100, generator=torch.Generator().manual_seed(1)))


def test_checkerboard_only_uses_even_cells():
    x = D.toy_sample("checkerboard", 5000, generator=torch.Generator().manual_seed(0))
    cells = torch.floor(x.double() * math.sqrt(4 / 3) + 2).long()  # undo standardisation
    assert bool(((cells[:, 0] + cells[:, 1]) % 2 == 0).all())


def test_unknown_toy_lists_known_names():
    with pytest.raises(ValueError, match="checkerboard.*moons.*rings.*8gaussians.*swissroll"):
        D.toy_sample("spiral", 10)


# --- Gaussian mixtures


def test_single_gaussian_log_prob_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 3))
    cov = a @ a.T + 0.5 * np.eye(3)
    mean = rng.standard_normal(3)
    gm = D.gaussian(3, mean, cov)
    x = rng.standard_normal((20, 3)) * 2
    expected = scipy.stats.multivariate_normal(mean, cov).logpdf(x)
    got = gm.log_prob(torch.from_numpy(x))
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def _three_component():
    means = torch.tensor([[0.0, 0.0], [3.0, 1.0], [-2.0, 2.5]], dtype=torch.float64)
    covs = torch.tensor(
        [[[1.0, 0.3], [0.3, 0.5]], [[0.4, -0.1], [-0.1, 0.8]], [[0.2, 0.0], [0.0, 1.5]]],
        dtype=torch.float64,
    )
    return D.GaussianMixture(means, covs, weights=torch.tensor([1.0, 2.0, 1.0]))


def test_mixture_log_prob_matches_manual_mixture_and_normalises():
    gm = _three_component()
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    w = [0.25, 0.5, 0.25]
    manual = sum(
        w[k]
        * scipy.stats.multivariate_normal(gm.means[k].numpy(), gm.covs[k].numpy()).pdf(x.numpy())
        for k in range(3)
    )
    np.testing.assert_allclose(gm.log_prob(x).numpy(), np.log(manual), rtol=1e-10)
    # integrates to 1 on a grid covering the mass
    t = torch.linspace(-9, 9, 401, dtype=torch.float64)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    dens = gm.log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)).exp()
    assert float(dens.sum() * (t[1] - t[0]) ** 2) == pytest.approx(1.0, abs=1e-4)


def test_sample_moments_match_mean_and_cov():
    gm = D.gmm_8d(seed=0)
    x = gm.sample(200_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    scale = gm.cov().diagonal().sqrt().max()
    _close(x.mean(0), gm.mean(), atol=0.03 * float(scale), rtol=0)
    _close(torch.cov(x.T), gm.cov(), atol=0.05 * float(scale) ** 2, rtol=0)


def test_denoise_single_gaussian_is_wiener_filter():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 4))
    cov = torch.from_numpy(a @ a.T + 0.1 * np.eye(4))
    mu = torch.from_numpy(rng.standard_normal(4))
    gm = D.gaussian(4, mu, cov)
    x_t = torch.from_numpy(rng.standard_normal((7, 4)))
    for alpha, sigma in [(1.0, 0.5), (0.3, 0.95), (0.999, 1e-3), (0.0, 1.0)]:
        s = alpha**2 * cov + sigma**2 * torch.eye(4, dtype=torch.float64)
        expected = mu + (alpha * cov @ torch.linalg.solve(s, (x_t - alpha * mu).T)).T
        _close(gm.denoise(x_t, alpha, sigma), expected, rtol=1e-9, atol=1e-10)


def test_denoise_mixture_matches_importance_estimate():
    # E[x0 | x_t] = E_p[x0 w(x0)] / E_p[w(x0)], w(x0) = N(x_t; alpha x0, sigma^2 I), x0 ~ p.
    gm = _three_component()
    x0 = gm.sample(400_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    alpha, sigma = 0.8, 0.6
    x_t = torch.tensor([[0.5, 0.5], [2.0, 1.0], [-1.5, 2.0], [1.0, 3.0]], dtype=torch.float64)
    logw = -0.5 * ((x_t[:, None, :] - alpha * x0[None]) ** 2).sum(-1) / sigma**2  # (4, S)
    w = torch.softmax(logw, dim=1)
    expected = w @ x0
    _close(gm.denoise(x_t, alpha, sigma), expected, atol=0.02, rtol=0)


def test_denoise_per_sample_alpha_sigma_and_dtype():
    gm = D.gmm_8d(seed=1)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(5, 8, generator=g)
    alpha = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])
    sigma = torch.tensor([0.1, 0.6, 0.87, 0.98, 1.0])
    batched = gm.denoise(x_t, alpha, sigma)
    assert batched.dtype == torch.float32 and batched.shape == (5, 8)
    for i in range(5):
        one = gm.denoise(x_t[i : i + 1], float(alpha[i]), float(sigma[i]))
        _close(batched[i : i + 1], one, rtol=1e-6, atol=1e-7)
    # pure noise: the posterior mean is the data mean
    _close(batched[4].double(), gm.mean(), atol=1e-6, rtol=0)
    r = gm.responsibilities(x_t, alpha, sigma)
    _close(r.sum(1), torch.ones(5), atol=1e-6)


def test_mixture_constructors_and_validation():
    gm = D.GaussianMixture.random(3, 5, seed=4)
    assert (gm.n_components, gm.dim) == (3, 5)
    _close(gm.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    again = D.GaussianMixture.random(3, 5, seed=4)
    _close(gm.covs, again.covs)
    iso = D.GaussianMixture(torch.zeros(2, 3), stds=torch.tensor([1.0, 2.0]))
    _close(iso.covs[1], 4 * torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="covs must be"):
        D.GaussianMixture(torch.zeros(2, 3), torch.eye(3)[None])
    with pytest.raises(ValueError, match="positive semi-definite"):
        D.GaussianMixture(torch.zeros(1, 2), -torch.eye(2)[None])


# --- splits


def test_split_is_deterministic_disjoint_and_complete():
    x = torch.arange(100.0)[:, None]
    train, val = D.split(x, 0.2, seed=3)
    assert (len(train), len(val)) == (80, 20)
    again = D.DataSource.split(x, 0.2, seed=3)
    _close(train, again[0])
    merged = torch.cat([train, val]).reshape(-1).sort().values
    _close(merged, x.reshape(-1))
    assert not torch.equal(val, D.split(x, 0.2, seed=4)[1])
    assert bool((train[1:] > train[:-1]).all())  # original order kept
    src = D.DataSource.from_toy("moons", 1000, val_fraction=0.1, seed=0)
    assert src.train.shape == (900, 2) and src.val.shape == (100, 2) and src.dim == 2
    assert src.batch(16, generator=torch.Generator().manual_seed(0)).shape == (16, 2)
    with pytest.raises(ValueError):
        D.split(x, 1.0)
