"""Sharp sample-quality measures for the toy targets, where the true distribution is known.

Sliced W2 and MMD average over the whole distribution and barely see blurred edges or mass
between modes. These measures look at exactly that:

- `mixture_log_likelihood`: the mean log density of samples under the true Gaussian mixture;
- `mode_coverage`: each sample's nearest mode (Mahalanobis), whether it lies within the k-sigma
  ellipsoid of that mode, the share per mode relative to its weight, and the share near no mode;
- `checkerboard_in_squares`: the share of samples inside the squares of onestep's checkerboard;
- `c2st`: a classifier two-sample test (Lopez-Paz & Oquab 2017): held-out accuracy of a kNN or
  MLP classifier told to separate samples from data (0.5 = indistinguishable).

Inputs are torch tensors or numpy arrays (N, D); results are python floats or dicts of floats.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

from onestep.core.data import _GAUSS8_RADIUS, _GAUSS8_STD, GaussianMixture, _toy_moments

ArrayLike = Tensor | np.ndarray

__all__ = [
    "c2st",
    "checkerboard_in_squares",
    "mixture_log_likelihood",
    "mode_coverage",
    "rescaled_mixture",
    "toy_mixture",
]


def _as_2d(x: ArrayLike, name: str, dim: int | None = None) -> Tensor:
    """(N, D) float64 CPU tensor; ValueError for other shapes, empty or non-finite input."""
    x = torch.as_tensor(x).detach().cpu()
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns, got {x.shape[1]}")
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} has non-finite values")
    return x


# ----------------------------------------------------------------------------------------------
# The true densities


def toy_mixture(name: str) -> GaussianMixture:
    """The exact Gaussian mixture of a standardised onestep toy (only '8gaussians' is one): eight
    N(2 (cos a_k, sin a_k), 0.2^2 I), a_k = 2 pi k / 8, divided by the toy's exact std."""
    if name != "8gaussians":
        raise ValueError(f"toy {name!r} is not a Gaussian mixture; only '8gaussians' is")
    _, std = _toy_moments(name)  # mean 0 by symmetry
    a = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    means = _GAUSS8_RADIUS * torch.stack([a.cos(), a.sin()], 1) / torch.from_numpy(std)
    return GaussianMixture(means, stds=_GAUSS8_STD / torch.from_numpy(std)[None].expand(8, 2))


def rescaled_mixture(
    mixture: GaussianMixture, shift: float | Tensor = 0.0, scale: float | Tensor = 1.0
) -> GaussianMixture:
    """The mixture of (x - shift) / scale for x ~ mixture (shift scalar or (D,), scale > 0
    scalar or (D,)): means (mu_k - shift) / scale, covariances diag(1/scale) C_k diag(1/scale)."""
    d = mixture.dim
    shift = torch.as_tensor(shift, dtype=torch.float64).expand(d)
    scale = torch.as_tensor(scale, dtype=torch.float64).expand(d)
    if not bool((scale > 0).all()):
        raise ValueError("scale must be positive")
    inv = 1.0 / scale
    covs = mixture.covs * inv[None, :, None] * inv[None, None, :]
    return GaussianMixture((mixture.means - shift) * inv, covs, mixture.weights)


# ----------------------------------------------------------------------------------------------
# Gaussian mixtures: likelihood and mode coverage


def mixture_log_likelihood(x: ArrayLike, mixture: GaussianMixture) -> float:
    """Mean exact log density (1/N) sum_i log sum_k w_k N(x_i; mu_k, C_k) of samples x (N, D)
    under the true mixture (nats per sample). For x ~ mixture its expectation is minus the
    mixture's differential entropy; blur, mass between modes and dropped modes lower it."""
    x = _as_2d(x, "x", mixture.dim)
    return float(mixture.log_prob(x).mean())


def _mahalanobis_sq(x: Tensor, mixture: GaussianMixture) -> Tensor:
    """Squared Mahalanobis distance (N, K) of each row of x (N, D) to each component."""
    chol = torch.linalg.cholesky(mixture.covs)  # (K, D, D), C_k = L_k L_k^T
    diff = x[None] - mixture.means[:, None, :]  # (K, N, D)
    z = torch.linalg.solve_triangular(chol, diff.transpose(1, 2), upper=False)  # (K, D, N)
    return z.square().sum(1).T  # (N, K)


def mode_coverage(x: ArrayLike, mixture: GaussianMixture, k: float = 3.0) -> dict:
    """Per-mode coverage of samples x (N, D) of a Gaussian mixture (mode dropping, as in the
    2-D mixture evaluation of VEEGAN, Srivastava et al. 2017: high-quality samples lie within
    3 std of a mode; here in Mahalanobis units).

    Each sample goes to its nearest component in Mahalanobis distance d_k(x) =
    |C_k^{-1/2}(x - mu_k)| and counts for it when d_k(x)^2 <= r^2, the chi-square(D) quantile at
    P(|N(0,1)| <= k) = erf(k / sqrt 2), so that the region holds the mass of +-k sigma in 1-D
    (exactly k sigma when D = 1; in D dimensions a bare k sigma would leave most true samples
    out). Returns
      min_share: min_k share_k / w_k, share_k the fraction of samples counted for mode k
        (1 for perfect coverage, 0 when a mode is dropped; relative to uniform for equal weights);
      off_mode: fraction of samples near no mode (about 1 - erf(k / sqrt 2), 0.0027 at k = 3, for
        samples of well-separated modes);
      shares: the K fractions share_k.
    """
    x = _as_2d(x, "x", mixture.dim)
    if not k > 0:
        raise ValueError(f"k must be positive, got {k}")
    r2 = float(stats.chi2.ppf(math.erf(k / math.sqrt(2)), df=mixture.dim))
    d2 = _mahalanobis_sq(x, mixture)  # (N, K)
    best, comp = d2.min(1)
    near = best <= r2
    counts = torch.bincount(comp[near], minlength=mixture.n_components).double()
    shares = counts / x.shape[0]
    return {
        "min_share": float((shares / mixture.weights).min()),
        "off_mode": float(1.0 - near.double().mean()),
        "shares": shares.tolist(),
    }


# ----------------------------------------------------------------------------------------------
# Checkerboard


def checkerboard_in_squares(x: ArrayLike, *, standardised: bool = True) -> float:
    """Fraction of samples x (N, 2) inside the squares of onestep's checkerboard toy: the unit
    cells (col, row) of [-2, 2]^2 with col + row even, col = floor(x + 2), row = floor(y + 2),
    after undoing the toy's standardisation (division by the exact std sqrt(4/3)) unless
    standardised=False. 1 for data; 0.5 for points uniform on the board."""
    x = _as_2d(x, "x", 2)
    if standardised:
        _, std = _toy_moments("checkerboard")
        x = x * torch.from_numpy(std)
    cell = torch.floor(x + 2.0)  # (N, 2) column and row indices
    on_board = ((cell >= 0) & (cell <= 3)).all(1)
    even = (cell.sum(1) % 2) == 0
    return float((on_board & even).double().mean())


# ----------------------------------------------------------------------------------------------
# Classifier two-sample test


def _knn_predict(train: Tensor, labels: Tensor, test: Tensor, k: int) -> Tensor:
    """Majority label (0/1) of the k nearest training rows of each test row (k odd)."""
    out = []
    step = max(1, (1 << 22) // train.shape[0])
    for i in range(0, test.shape[0], step):
        d2 = torch.cdist(test[i : i + step], train)  # (c, N_train)
        idx = d2.topk(k, dim=1, largest=False).indices  # (c, k)
        out.append((labels[idx].sum(1) * 2 > k).long())
    return torch.cat(out)


def _mlp_predict(
    train: Tensor, labels: Tensor, test: Tensor, *, hidden: int, steps: int, seed: int
) -> Tensor:
    """Label (0/1) from an MLP (two hidden layers, SiLU) fit by Adam on the logistic loss."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        d = train.shape[1]
        net = nn.Sequential(
            nn.Linear(d, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        ).double()
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        g = torch.Generator().manual_seed(seed)
        y = labels.double()
        batch = min(512, train.shape[0])
        for _ in range(steps):
            idx = torch.randint(0, train.shape[0], (batch,), generator=g)
            loss = nn.functional.binary_cross_entropy_with_logits(net(train[idx])[:, 0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            return (net(test)[:, 0] > 0).long()


def c2st(
    x: ArrayLike,
    y: ArrayLike,
    *,
    classifier: str = "knn",
    k: int | None = None,
    hidden: int = 64,
    steps: int = 1000,
    train_fraction: float = 0.5,
    seed: int = 0,
) -> dict:
    """Classifier two-sample test (Lopez-Paz & Oquab 2017, Sec. 2): label x (N, D) 1 and y (M, D)
    0 (the first min(N, M) rows of each, so the classes balance), shuffle, train a classifier on
    train_fraction of the pool, and take its accuracy t on the rest.

    classifier: "knn" (majority of the k nearest training points, k odd, default the odd number
    nearest sqrt(n_train)) or "mlp" (`hidden` units, `steps` Adam steps at batch 512). Features
    are standardised with the training pool's mean and std. Returns
      accuracy: t, about 0.5 when x and y come from one distribution, 1 when a classifier
        separates them;
      p_value: P(T >= t) under the null n_te T ~ Binomial(n_te, 1/2), normal approximation
        N(1/2, 1/(4 n_te));
      n_test: n_te.
    """
    x = _as_2d(x, "x")
    y = _as_2d(y, "y", x.shape[1])
    if classifier not in ("knn", "mlp"):
        raise ValueError(f"classifier must be 'knn' or 'mlp', got {classifier!r}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    n = min(x.shape[0], y.shape[0])
    pool = torch.cat([x[:n], y[:n]])  # (2n, D)
    labels = torch.cat([torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)])
    perm = torch.randperm(2 * n, generator=torch.Generator().manual_seed(seed))
    n_train = round(train_fraction * 2 * n)
    if n_train < 2 or 2 * n - n_train < 1:
        raise ValueError(f"too few samples ({n} per set) for a train/test split")
    tr, te = perm[:n_train], perm[n_train:]
    mean, std = pool[tr].mean(0), pool[tr].std(0).clamp(min=1e-12)
    train, test = (pool[tr] - mean) / std, (pool[te] - mean) / std
    if classifier == "knn":
        if k is None:
            k = 2 * round((math.sqrt(n_train) - 1) / 2) + 1
        if k < 1 or k % 2 == 0 or k > n_train:
            raise ValueError(f"k must be odd and in [1, {n_train}], got {k}")
        pred = _knn_predict(train, labels[tr], test, k)
    else:
        pred = _mlp_predict(train, labels[tr], test, hidden=hidden, steps=steps, seed=seed)
    acc = float((pred == labels[te]).double().mean())
    n_te = te.shape[0]
    p = float(stats.norm.sf((acc - 0.5) * 2.0 * math.sqrt(n_te)))
    return {"accuracy": acc, "p_value": p, "n_test": n_te}
