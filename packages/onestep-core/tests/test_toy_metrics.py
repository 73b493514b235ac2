"""Toy-target metrics: exact likelihoods against scipy, true samples at the true values, blurred
samples worse on every measure, and C2ST at chance for one distribution and near 1 for two."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from onestep.core.data import GaussianMixture, gmm_8d, toy_sample
from onestep.core.toy_metrics import (
    c2st,
    checkerboard_in_squares,
    mixture_log_likelihood,
    mode_coverage,
    rescaled_mixture,
    toy_mixture,
)

CB_STD = math.sqrt(4 / 3)  # the checkerboard toy's exact std per coordinate


def gen(seed):
    return torch.Generator().manual_seed(seed)


def blur(x, std, seed=99):
    return x + std * torch.randn(x.shape, generator=gen(seed), dtype=x.dtype)


# -- exact log-likelihood ------------------------------------------------------------------------
def test_log_likelihood_one_mode_matches_scipy():
    mean = np.array([0.5, -1.0, 2.0])
    a = np.array([[1.0, 0.3, 0.0], [0.0, 0.7, 0.2], [0.1, 0.0, 0.5]])
    cov = a @ a.T + 0.1 * np.eye(3)
    mix = GaussianMixture(mean[None], cov[None])
    x = np.random.default_rng(0).normal(size=(50, 3)) * 2
    want = stats.multivariate_normal(mean, cov).logpdf(x).mean()
    assert mixture_log_likelihood(x, mix) == pytest.approx(want, rel=1e-10)
    assert mixture_log_likelihood(torch.from_numpy(x), mix) == pytest.approx(want, rel=1e-10)


def test_log_likelihood_two_modes_by_hand():
    means = np.array([[-1.0, 0.0], [2.0, 1.0]])
    covs = np.array([[[0.5, 0.1], [0.1, 0.3]], [[1.0, -0.4], [-0.4, 2.0]]])
    w = np.array([0.3, 0.7])
    mix = GaussianMixture(means, covs, w)
    x = np.random.default_rng(1).normal(size=(40, 2)) * 2
    per = np.stack([stats.multivariate_normal(means[k], covs[k]).logpdf(x) for k in range(2)], 1)
    want = logsumexp(per + np.log(w), axis=1).mean()
    assert mixture_log_likelihood(x, mix) == pytest.approx(want, rel=1e-10)


def test_true_samples_score_minus_the_entropy():
    # one Gaussian: E log p = -(D/2) log(2 pi e) - (1/2) log det C
    cov = np.diag([0.5, 2.0, 1.0])
    mix = GaussianMixture(np.zeros((1, 3)), cov[None])
    x = mix.sample(200_000, gen(0), dtype=torch.float64)
    want = -1.5 * math.log(2 * math.pi * math.e) - 0.5 * math.log(np.linalg.det(cov))
    assert mixture_log_likelihood(x, mix) == pytest.approx(want, abs=0.01)
    # the 8-gaussians toy: eight modes 7.6 std apart, so H = log 8 + one mode's entropy; this
    # also checks that toy_mixture is the density toy_sample draws from
    mix8 = toy_mixture("8gaussians")
    s = 0.2 / math.sqrt(2.0**2 / 2 + 0.2**2)
    want8 = -math.log(8) - math.log(2 * math.pi * math.e * s**2)
    x8 = toy_sample("8gaussians", 100_000, generator=gen(1))
    assert mixture_log_likelihood(x8, mix8) == pytest.approx(want8, abs=0.02)
    assert torch.allclose(mix8.mean(), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(mix8.cov(), torch.eye(2, dtype=torch.float64), atol=1e-12)
    # blurring lowers it by far more than the sampling noise
    assert mixture_log_likelihood(blur(x8, 0.1), mix8) < want8 - 0.3


def test_rescaled_mixture_is_the_law_of_the_rescaled_samples():
    mix = GaussianMixture.random(3, 4, seed=2)
    shift, scale = torch.tensor([1.0, -2.0, 0.5, 0.0]), torch.tensor([2.0, 0.5, 1.0, 3.0])
    r = rescaled_mixture(mix, shift, scale)
    assert torch.allclose(r.mean(), (mix.mean() - shift) / scale)
    assert torch.allclose(r.cov(), mix.cov() / torch.outer(scale, scale))
    x = mix.sample(100, gen(3), dtype=torch.float64)
    # change of variables: log p_y((x - b) / s) = log p_x(x) + sum log s
    got = r.log_prob((x - shift) / scale)
    assert torch.allclose(got, mix.log_prob(x) + scale.log().sum())
    with pytest.raises(ValueError, match="scale"):
        rescaled_mixture(mix, 0.0, -1.0)


# -- mode coverage --------------------------------------------------------------------------------
def test_mode_coverage_radius_is_k_sigma_in_one_dimension():
    mix = GaussianMixture([[0.0], [100.0]], stds=[1.0, 2.0])
    x = torch.tensor([[2.9], [-3.1], [100.0 + 5.9], [100.0 - 6.1], [50.0]])
    cov = mode_coverage(x, mix, k=3.0)
    assert cov["shares"] == pytest.approx([0.2, 0.2])
    assert cov["off_mode"] == pytest.approx(0.6)
    assert cov["min_share"] == pytest.approx(0.4)  # 0.2 / weight 0.5


def test_mode_coverage_of_data_dropped_modes_and_blur():
    mix = toy_mixture("8gaussians")
    x = toy_sample("8gaussians", 20_000, generator=gen(4))
    cov = mode_coverage(x, mix)
    assert cov["off_mode"] == pytest.approx(1 - math.erf(3 / math.sqrt(2)), abs=0.002)
    assert cov["min_share"] > 0.9
    assert sum(cov["shares"]) == pytest.approx(1 - cov["off_mode"])
    # a sampler that never visits one mode: its share is 0
    angle = torch.atan2(x[:, 1], x[:, 0])
    dropped = x[angle.abs() > math.pi / 8]  # the mode at angle 0 removed
    assert mode_coverage(dropped, mix)["min_share"] == 0.0
    # blur puts samples between modes
    assert mode_coverage(blur(x, 0.2), mix)["off_mode"] > 0.1
    # the 8-D benchmark mixture, where a bare 3-sigma ball would miss a third of the data
    g8 = gmm_8d(0)
    c8 = mode_coverage(g8.sample(20_000, gen(5)), g8)
    assert c8["off_mode"] < 0.01 and c8["min_share"] > 0.85
    assert mode_coverage(blur(g8.sample(20_000, gen(5)), 0.3), g8)["off_mode"] > 4 * c8["off_mode"]


# -- checkerboard -----------------------------------------------------------------------------
def test_checkerboard_geometry_by_hand():
    # raw cell centres: (col, row) = (0, 0) and (1, 1) are squares, (1, 0) and (0, 3) are not
    raw = torch.tensor([[-1.5, -1.5], [-0.5, -0.5], [-0.5, -1.5], [-1.5, 1.5], [2.5, 2.5]])
    inside = [checkerboard_in_squares(p[None], standardised=False) for p in raw]
    assert inside == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert checkerboard_in_squares(raw / CB_STD) == pytest.approx(0.4)


def test_checkerboard_in_squares_data_uniform_and_blur():
    x = toy_sample("checkerboard", 20_000, generator=gen(6))
    assert checkerboard_in_squares(x) > 0.999
    box = (4 * torch.rand(20_000, 2, generator=gen(7)) - 2) / CB_STD  # uniform on the board
    assert checkerboard_in_squares(box) == pytest.approx(0.5, abs=0.015)
    blurred = [checkerboard_in_squares(blur(x, s)) for s in (0.05, 0.1, 0.2)]
    assert 0.5 < blurred[2] < blurred[1] < blurred[0] < 0.95


# -- C2ST -------------------------------------------------------------------------------------
@pytest.mark.parametrize("classifier", ["knn", pytest.param("mlp", marks=pytest.mark.slow)])
def test_c2st_chance_for_one_distribution_near_one_for_two(classifier):
    kw = {"classifier": classifier, "steps": 200}
    a = toy_sample("checkerboard", 2000, generator=gen(8))
    b = toy_sample("checkerboard", 2000, generator=gen(9))
    same = c2st(a, b, **kw)
    assert same["n_test"] == 2000
    assert abs(same["accuracy"] - 0.5) < 0.04 and same["p_value"] > 0.001
    # N(0, I) against N(5 e_1, I): the Bayes classifier is right with probability Phi(2.5)
    z = torch.randn(4000, 2, generator=gen(10))
    far = c2st(z[:2000], z[2000:] + torch.tensor([5.0, 0.0]), **kw)
    assert far["accuracy"] > 0.97 and far["p_value"] < 1e-10


def test_c2st_knn_separates_the_checkerboard_from_its_complement():
    a = toy_sample("checkerboard", 2000, generator=gen(8))
    raw = toy_sample("checkerboard", 2000, generator=gen(9)) * CB_STD
    raw[:, 0] = (raw[:, 0] + 3.0) % 4.0 - 2.0  # one cell to the right, wrapped: the other squares
    assert checkerboard_in_squares(raw, standardised=False) == 0.0
    assert c2st(a, raw / CB_STD)["accuracy"] > 0.9


def test_c2st_sees_blur():
    a = toy_sample("checkerboard", 5000, generator=gen(11))
    b = toy_sample("checkerboard", 5000, generator=gen(12))
    clean, blurred = c2st(a, b)["accuracy"], c2st(a, blur(b, 0.3))["accuracy"]
    assert blurred > clean + 0.08
    assert c2st(a, blur(b, 0.3), k=25)["accuracy"] > clean + 0.08


def test_bad_inputs():
    mix = toy_mixture("8gaussians")
    with pytest.raises(ValueError, match="not a Gaussian mixture"):
        toy_mixture("moons")
    with pytest.raises(ValueError, match="2 columns"):
        mixture_log_likelihood(torch.zeros(5, 3), mix)
    with pytest.raises(ValueError, match="non-finite"):
        checkerboard_in_squares(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="k must be positive"):
        mode_coverage(torch.zeros(5, 2), mix, k=0)
    with pytest.raises(ValueError, match="odd"):
        c2st(torch.zeros(50, 2), torch.ones(50, 2), k=4)
    with pytest.raises(ValueError, match="classifier"):
        c2st(torch.zeros(50, 2), torch.ones(50, 2), classifier="svm")
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        c2st(torch.zeros(50), torch.ones(50, 2))
