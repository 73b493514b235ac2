"""Vector data: file loading, toy 2-D distributions, exact Gaussian mixtures, train/val splits.

Noising convention (shared with the rest of onestep): x_t = alpha x_data + sigma noise, with t=0
data and t=1 noise.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "TOYS",
    "DataSource",
    "GaussianMixture",
    "gaussian",
    "gmm_8d",
    "load_vectors",
    "split",
    "toy_names",
    "toy_sample",
]

# ----------------------------------------------------------------------------------------------
# Loading vectors from files

_SUPPORTED = (".npy", ".csv")


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:  # object arrays need pickle; corrupt headers also land here
        raise ValueError(f"{path}: cannot read as a numeric .npy array ({e})") from e
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{path}: expected a single array, got {type(arr).__name__}")
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{path}: non-numeric dtype {arr.dtype} (need integer or float)")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path}: non-numeric dtype {arr.dtype} (need integer or float)")
    return arr


def _parse_float(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _load_csv(path: Path) -> np.ndarray:
    with open(path, newline="") as fh:
        rows = [
            (line, [c.strip() for c in row])
            for line, row in enumerate(csv.reader(fh), start=1)
            if any(c.strip() for c in row)  # skip blank lines
        ]
    # A first row with any non-numeric cell is a header.
    if rows and any(_parse_float(c) is None for c in rows[0][1]):
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{path}: empty (no data rows)")
    width = len(rows[0][1])
    data = np.empty((len(rows), width), dtype=np.float64)
    for r, (line, cells) in enumerate(rows):
        if len(cells) != width:
            raise ValueError(
                f"{path}: line {line} has {len(cells)} columns, expected {width} (ragged rows)"
            )
        for c, cell in enumerate(cells):
            value = _parse_float(cell)
            if value is None:
                raise ValueError(
                    f"{path}: non-numeric value {cell!r} at line {line}, column {c + 1}"
                )
            data[r, c] = value
    return data


def load_vectors(path: str | Path) -> Tensor:
    """Load an (N, D) float32 tensor from a .npy or .csv file.

    .npy: integer or float arrays (no pickles, bool or complex). .csv: comma-separated numbers;
    a first row containing any non-numeric cell is taken as a header; blank lines are skipped.
    A 1-D array becomes (N, 1) (N scalar samples); 0-D and >2-D arrays are errors, as are empty
    arrays and NaN/inf values. Errors are ValueError (FileNotFoundError if missing) naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected a .npy or .csv file")
    suffix = path.suffix.lower()
    if suffix not in _SUPPORTED:
        raise ValueError(
            f"{path}: unsupported extension {path.suffix!r}; supported: {', '.join(_SUPPORTED)}"
        )
    arr = _load_npy(path) if suffix == ".npy" else _load_csv(path)

    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(
            f"{path}: expected a 1-D or 2-D array (N, D), got shape {arr.shape} ({arr.ndim}-D)"
        )
    if arr.size == 0:
        raise ValueError(f"{path}: empty array of shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        first_row = int(np.argmax(bad.any(axis=1)))
        raise ValueError(
            f"{path}: {int(bad.sum())} non-finite value(s) (NaN/inf); first in row {first_row} "
            "(0-based data row)"
        )
    return torch.from_numpy(arr).float()


# ----------------------------------------------------------------------------------------------
# Toy 2-D distributions
#
# Each raw shape below is standardised with its exact moments (closed form or Gauss-Legendre
# quadrature of the generating curve), so every toy has mean 0 and variance 1 per coordinate.


def _u(n: int, g: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64)


def _z(n: int, g: torch.Generator | None, d: int = 2) -> Tensor:
    return torch.randn(n, d, generator=g, dtype=torch.float64)


_MOONS_NOISE = 0.1
_RINGS_RADII = (1.0, 2.0, 3.0)
_RINGS_NOISE = 0.08
_GAUSS8_RADIUS, _GAUSS8_STD = 2.0, 0.2
_SWISS_NOISE = 0.5


def _raw_checkerboard(n: int, g: torch.Generator | None) -> Tensor:
    # 8 of the 16 unit cells of [-2, 2]^2, those with (col + row) even; each marginal is U[-2, 2].
    col = torch.randint(0, 4, (n,), generator=g)
    row = 2 * torch.randint(0, 2, (n,), generator=g) + col % 2
    return torch.stack([col + _u(n, g), row + _u(n, g)], 1) - 2.0


def _raw_moons(n: int, g: torch.Generator | None) -> Tensor:
    # Two interleaved half circles: (cos t, sin t) and (1 - cos t, 1/2 - sin t), t ~ U[0, pi].
    t = math.pi * _u(n, g)
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, t.cos(), 1.0 - t.cos())
    y = torch.where(upper, t.sin(), 0.5 - t.sin())
    return torch.stack([x, y], 1) + _MOONS_NOISE * _z(n, g)


def _raw_rings(n: int, g: torch.Generator | None) -> Tensor:
    # Concentric circles, a ring chosen with probability proportional to its radius (uniform
    # density along the arcs).
    radii = torch.tensor(_RINGS_RADII, dtype=torch.float64)
    r = radii[torch.multinomial(radii, n, replacement=True, generator=g)]
    a = 2 * math.pi * _u(n, g)
    return torch.stack([r * a.cos(), r * a.sin()], 1) + _RINGS_NOISE * _z(n, g)


def _raw_8gaussians(n: int, g: torch.Generator | None) -> Tensor:
    a = (2 * math.pi / 8) * torch.randint(0, 8, (n,), generator=g).double()
    centres = _GAUSS8_RADIUS * torch.stack([a.cos(), a.sin()], 1)
    return centres + _GAUSS8_STD * _z(n, g)


def _raw_swissroll(n: int, g: torch.Generator | None) -> Tensor:
    # (t cos t, t sin t), t ~ U[1.5 pi, 4.5 pi] (the classic 2-D swiss roll), plus noise.
    t = 1.5 * math.pi * (1 + 2 * _u(n, g))
    return torch.stack([t * t.cos(), t * t.sin()], 1) + _SWISS_NOISE * _z(n, g)


def _curve_moments(
    curve: Callable[[np.ndarray], np.ndarray], lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean (2,) and E[x^2] (2,) of curve(t), t ~ U[lo, hi], by 200-point Gauss-Legendre."""
    nodes, weights = np.polynomial.legendre.leggauss(200)
    t = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)
    pts = curve(t)  # (2, Q)
    w = 0.5 * weights  # quadrature weights of the uniform density on [lo, hi]
    return (pts * w).sum(1), (pts**2 * w).sum(1)


@cache
def _toy_moments(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean (2,) and std (2,) of the raw toy `name`."""
    if name == "checkerboard":
        mean, var = np.zeros(2), np.full(2, 16.0 / 12.0)  # U[-2, 2] marginals
    elif name == "moons":
        m1, s1 = _curve_moments(lambda t: np.stack([np.cos(t), np.sin(t)]), 0, math.pi)
        m2, s2 = _curve_moments(lambda t: np.stack([1 - np.cos(t), 0.5 - np.sin(t)]), 0, math.pi)
        mean = 0.5 * (m1 + m2)
        var = 0.5 * (s1 + s2) - mean**2 + _MOONS_NOISE**2
    elif name == "rings":
        r = np.asarray(_RINGS_RADII)
        mean = np.zeros(2)
        var = np.full(2, (r**3).sum() / r.sum() / 2 + _RINGS_NOISE**2)  # E[r^2] / 2 + noise
    elif name == "8gaussians":
        mean, var = np.zeros(2), np.full(2, _GAUSS8_RADIUS**2 / 2 + _GAUSS8_STD**2)
    elif name == "swissroll":
        mean, sq = _curve_moments(
            lambda t: np.stack([t * np.cos(t), t * np.sin(t)]), 1.5 * math.pi, 4.5 * math.pi
        )
        var = sq - mean**2 + _SWISS_NOISE**2
    else:  # pragma: no cover - guarded by toy_sample
        raise KeyError(name)
    return mean, np.sqrt(var)


def _standardised(name: str, raw: Callable[[int, torch.Generator | None], Tensor]):
    def sampler(n: int, *, generator: torch.Generator | None = None) -> Tensor:
        mean, std = _toy_moments(name)
        x = (raw(n, generator) - torch.from_numpy(mean)) / torch.from_numpy(std)
        return x.float()

    sampler.__name__ = f"sample_{name}"
    sampler.__doc__ = f"{name} toy: (n, 2) float32, mean 0 and variance 1 per coordinate."
    return sampler


TOYS: dict[str, Callable[..., Tensor]] = {
    "checkerboard": _standardised("checkerboard", _raw_checkerboard),
    "moons": _standardised("moons", _raw_moons),
    "rings": _standardised("rings", _raw_rings),
    "8gaussians": _standardised("8gaussians", _raw_8gaussians),
    "swissroll": _standardised("swissroll", _raw_swissroll),
}


def toy_names() -> list[str]:
    """Names of the toy 2-D distributions in TOYS."""
    return list(TOYS)


def toy_sample(name: str, n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """n samples (n, 2) float32 from a toy 2-D distribution, on CPU.

    Every toy is standardised with its exact moments to mean 0 and variance 1 per coordinate
    (an axis-wise affine map, so e.g. the moons are stretched vertically).
    """
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; known: {', '.join(toy_names())}")
    return TOYS[name](n, generator=generator)


# ----------------------------------------------------------------------------------------------
# Gaussian mixtures with exact densities and denoisers


def _as_per_sample(v: float | Tensor, n: int, ref: Tensor) -> Tensor:
    """Scalar or (N,) alpha/sigma -> (N, 1, 1) float64 on ref's device, broadcastable over K, D."""
    v = torch.as_tensor(v, dtype=torch.float64, device=ref.device)
    if v.ndim == 0:
        v = v.expand(n)
    v = v.reshape(-1)
    if v.shape[0] != n:
        raise ValueError(f"expected a scalar or ({n},) tensor, got shape {tuple(v.shape)}")
    return v[:, None, None]


class GaussianMixture:
    """Mixture sum_k w_k N(mu_k, C_k) in D dimensions, stored in float64 on CPU.

    means (K, D); covs (K, D, D) full covariances, or stds: scalar, (K,) isotropic or (K, D)
    diagonal standard deviations (exactly one of covs/stds; neither means identity covariances);
    weights (K,) non-negative, normalised here (uniform if None). Methods accept any device and
    return results on the input's device in the input's floating dtype (computed in float64).
    """

    def __init__(
        self,
        means: Tensor | np.ndarray | Sequence,
        covs: Tensor | np.ndarray | Sequence | None = None,
        weights: Tensor | np.ndarray | Sequence | None = None,
        *,
        stds: float | Tensor | np.ndarray | Sequence | None = None,
    ):
        means = torch.as_tensor(means, dtype=torch.float64).cpu()
        if means.ndim != 2:
            raise ValueError(f"means must be (K, D), got shape {tuple(means.shape)}")
        k, d = means.shape
        if covs is not None and stds is not None:
            raise ValueError("give covs or stds, not both")
        if covs is not None:
            covs = torch.as_tensor(covs, dtype=torch.float64).cpu()
            if covs.shape != (k, d, d):
                raise ValueError(f"covs must be (K, D, D) = {(k, d, d)}, got {tuple(covs.shape)}")
            if not torch.allclose(covs, covs.transpose(1, 2), rtol=1e-10, atol=1e-12):
                raise ValueError("covs must be symmetric")
            covs = 0.5 * (covs + covs.transpose(1, 2))
        else:
            s = torch.as_tensor(1.0 if stds is None else stds, dtype=torch.float64).cpu()
            if s.ndim == 1 and s.shape[0] == k:
                s = s[:, None]
            s = s.expand(k, d) if s.ndim <= 2 else s
            if s.shape != (k, d):
                raise ValueError(f"stds must be scalar, (K,) or (K, D); got {tuple(s.shape)}")
            covs = torch.diag_embed(s.square())
        if weights is None:
            weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64).cpu().reshape(-1)
        if weights.shape[0] != k or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(f"weights must be (K,) = ({k},), non-negative with positive sum")

        self.means = means  # (K, D)
        self.covs = covs  # (K, D, D)
        self.weights = weights / weights.sum()  # (K,)
        evals, evecs = torch.linalg.eigh(covs)
        if bool((evals < -1e-10 * evals.abs().amax().clamp(min=1.0)).any()):
            raise ValueError("covs must be positive semi-definite")
        self._evals = evals.clamp(min=0.0)  # (K, D)  C_k = U_k diag(lambda_k) U_k^T
        self._evecs = evecs  # (K, D, D)

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, D={self.dim})"

    # --- moments and sampling

    def mean(self) -> Tensor:
        """Mixture mean sum_k w_k mu_k, (D,) float64."""
        return self.weights @ self.means

    def cov(self) -> Tensor:
        """Mixture covariance sum_k w_k (C_k + mu_k mu_k^T) - mu mu^T, (D, D) float64."""
        mu = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covs) + torch.einsum(
            "k,ki,kj->ij", self.weights, self.means, self.means
        )
        return second - torch.outer(mu, mu)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """n samples (n, D) on CPU: a component index, then mu_k + U_k sqrt(lambda_k) z."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scaled = z * self._evals[comp].sqrt()  # (n, D)
        x = self.means[comp] + torch.einsum("nij,nj->ni", self._evecs[comp], scaled)
        return x.to(dtype)

    # --- densities and the exact denoiser

    def _component_terms(
        self, x_t: Tensor, alpha: float | Tensor, sigma: float | Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-component quantities for x_t ~ sum_k w_k N(alpha mu_k, alpha^2 C_k + sigma^2 I).

        Returns y = U_k^T (x_t - alpha mu_k) (N, K, D), the marginal variances
        v = alpha^2 lambda_k + sigma^2 (N, K, D) in the eigenbasis, log w_k N(x_t; ...) (N, K),
        and alpha (N, 1, 1).
        """
        x = torch.as_tensor(x_t).to(torch.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected x of shape (N, {self.dim}), got {tuple(x.shape)}")
        n, dev = x.shape[0], x.device
        a = _as_per_sample(alpha, n, x)  # (N, 1, 1)
        s = _as_per_sample(sigma, n, x)
        means, evecs, evals = self.means.to(dev), self._evecs.to(dev), self._evals.to(dev)
        diff = x[:, None, :] - a * means[None]  # (N, K, D)
        y = torch.einsum("kji,nkj->nki", evecs, diff)  # (N, K, D)
        v = a.square() * evals[None] + s.square()  # (N, K, D)
        log_norm = -0.5 * (self.dim * math.log(2 * math.pi) + v.log().sum(-1))  # (N, K)
        log_joint = log_norm - 0.5 * (y.square() / v).sum(-1) + self.weights.to(dev).log()
        return y, v, log_joint, a

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log density log sum_k w_k N(x; mu_k, C_k) of x (N, D) -> (N,).

        Needs non-singular covariances (a singular one gives -inf/nan off its support).
        """
        x = torch.as_tensor(x)
        _, _, log_joint, _ = self._component_terms(x, 1.0, 0.0)
        out = torch.logsumexp(log_joint, dim=1)
        return out.to(x.dtype) if torch.is_floating_point(x) else out

    def responsibilities(self, x_t: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> Tensor:
        """Posterior component probabilities p(k | x_t) (N, K) under x_t = alpha x0 + sigma eps."""
        _, _, log_joint, _ = self._component_terms(x_t, alpha, sigma)
        return torch.softmax(log_joint, dim=1).to(torch.as_tensor(x_t).dtype)

    def denoise(self, x_t: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> Tensor:
        """Exact posterior mean E[x0 | x_t] for x_t = alpha x0 + sigma eps, x_t (N, D) -> (N, D).

        alpha, sigma: scalars or (N,) tensors. Each component's Wiener filter
        mu_k + alpha C_k (alpha^2 C_k + sigma^2 I)^{-1} (x_t - alpha mu_k), weighted by the
        responsibilities under N(alpha mu_k, alpha^2 C_k + sigma^2 I). Needs sigma > 0 or
        non-singular covariances.
        """
        y, v, log_joint, a = self._component_terms(x_t, alpha, sigma)
        dev = y.device
        resp = torch.softmax(log_joint, dim=1)  # (N, K)
        gain = a * self._evals.to(dev)[None] / v  # (N, K, D)  alpha lambda / (alpha^2 lambda + s^2)
        post = self.means.to(dev)[None] + torch.einsum(
            "kij,nkj->nki", self._evecs.to(dev), gain * y
        )
        out = torch.einsum("nk,nki->ni", resp, post)
        return out.to(torch.as_tensor(x_t).dtype)

    # --- constructors

    @classmethod
    def random(
        cls,
        K: int,
        D: int,
        seed: int = 0,
        spread: float = 3.0,
        std_range: tuple[float, float] = (0.3, 1.0),
    ) -> GaussianMixture:
        """Random mixture: means ~ N(0, (2 spread^2 / D) I), so two means lie about 2 spread
        apart; covs Q diag(s^2) Q^T with Q a Haar rotation and s ~ U[std_range]; weights
        ~ U[0.5, 1.5] normalised. Deterministic in seed."""
        g = torch.Generator().manual_seed(seed)
        means = spread * math.sqrt(2.0 / D) * torch.randn(K, D, generator=g, dtype=torch.float64)
        q, r = torch.linalg.qr(torch.randn(K, D, D, generator=g, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # Haar rotation
        lo, hi = std_range
        s = lo + (hi - lo) * torch.rand(K, D, generator=g, dtype=torch.float64)
        covs = q @ torch.diag_embed(s.square()) @ q.transpose(1, 2)
        weights = 0.5 + torch.rand(K, generator=g, dtype=torch.float64)
        return cls(means, covs, weights)


def gmm_8d(seed: int = 0) -> GaussianMixture:
    """Benchmark target: a random 8-component mixture in 8 dimensions (GaussianMixture.random)."""
    return GaussianMixture.random(8, 8, seed=seed, spread=3.0)


def gaussian(
    D: int,
    mean: float | Tensor | np.ndarray | Sequence | None = None,
    cov: float | Tensor | np.ndarray | Sequence | None = None,
) -> GaussianMixture:
    """Single Gaussian N(mean, cov) as a one-component mixture. mean: None (zero), scalar or (D,);
    cov: None (identity), scalar variance, (D,) diagonal variances or (D, D)."""
    m = torch.zeros(D, dtype=torch.float64)
    if mean is not None:
        m = m + torch.as_tensor(mean, dtype=torch.float64)
    c = torch.as_tensor(1.0 if cov is None else cov, dtype=torch.float64)
    if c.ndim == 0:
        c = c * torch.eye(D, dtype=torch.float64)
    elif c.ndim == 1:
        c = torch.diag(c)
    if m.shape != (D,) or c.shape != (D, D):
        raise ValueError(f"mean must be (D,) and cov (D, D) with D={D}")
    return GaussianMixture(m[None], c[None])


# ----------------------------------------------------------------------------------------------
# Train/val splits


def split(
    x: Tensor | np.ndarray, val_fraction: float = 0.1, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Deterministic random split of the rows of x (N, ...) -> (train, val).

    round(val_fraction * N) rows go to val (at least 1 if val_fraction > 0); both parts keep the
    original row order. Depends only on (N, val_fraction, seed), not on the global RNG.
    """
    x = torch.as_tensor(x)
    n = x.shape[0]
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if n - n_val < 1:
        raise ValueError(f"cannot split {n} rows with val_fraction={val_fraction}: no train rows")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return x[train_idx.to(x.device)], x[val_idx.to(x.device)]


@dataclass(frozen=True)
class DataSource:
    """A train/val pair of (N, D) tensors; build with from_tensor, from_path or from_toy."""

    train: Tensor
    """Training rows (N_train, D)."""
    val: Tensor
    """Held-out rows (N_val, D), for metrics."""

    split = staticmethod(split)

    @classmethod
    def from_tensor(
        cls, x: Tensor | np.ndarray, val_fraction: float = 0.1, seed: int = 0
    ) -> DataSource:
        return cls(*split(x, val_fraction, seed))

    @classmethod
    def from_path(cls, path: str | Path, val_fraction: float = 0.1, seed: int = 0) -> DataSource:
        return cls.from_tensor(load_vectors(path), val_fraction, seed)

    @classmethod
    def from_toy(cls, name: str, n: int, val_fraction: float = 0.1, seed: int = 0) -> DataSource:
        x = toy_sample(name, n, generator=torch.Generator().manual_seed(seed))
        return cls.from_tensor(x, val_fraction, seed)

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    def batch(self, batch_size: int, *, generator: torch.Generator | None = None) -> Tensor:
        """batch_size training rows drawn uniformly with replacement."""
        idx = torch.randint(0, self.train.shape[0], (batch_size,), generator=generator)
        return self.train[idx.to(self.train.device)]
