"""Sample-quality metrics, NFE counting and timing.

Every metric takes torch tensors or numpy arrays of shape (N, D); inputs of higher rank are
flattened to (N, -1) and 1-D inputs read as (N, 1). Computation is in float64 on the input's
device (numpy goes to CPU), and results are python floats or dicts of floats.

Fréchet distance here is the generic statistic on whatever features it is given; tables should
call it FD-<net> (FD-raw, FD-dinov2, ...) and reserve "FID" for Inception-v3 pool features.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

ArrayLike = Tensor | np.ndarray

__all__ = [
    "CallCounter",
    "CountingModule",
    "count_calls",
    "energy_distance",
    "extract_features",
    "feature_moments",
    "frechet_distance",
    "frechet_distance_from_moments",
    "frechet_distance_with",
    "kid",
    "mmd",
    "precision_recall",
    "sliced_wasserstein",
    "time_per_sample",
]


# ----------------------------------------------------------------------------------------------
# Helpers


def _as_2d(x: ArrayLike, name: str = "x") -> Tensor:
    """(N, ...) tensor or array -> (N, D) float64 tensor on the input's device (CPU for numpy).

    1-D inputs are N scalar samples, (N, 1); higher ranks are flattened to (N, -1).
    """
    x = torch.as_tensor(x).detach()
    if x.ndim == 0:
        raise ValueError(f"{name} must have a batch dimension, got a scalar")
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _as_f64(x: ArrayLike) -> Tensor:
    return torch.as_tensor(x).detach().to(torch.float64)


def _check_dims(x: Tensor, y: Tensor) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")


def _sqdist(x: Tensor, y: Tensor) -> Tensor:
    """Squared Euclidean distances (N, M) between rows of x (N, D) and y (M, D), clamped >= 0."""
    d2 = x.square().sum(1)[:, None] + y.square().sum(1)[None, :] - 2.0 * (x @ y.T)
    return d2.clamp_(min=0.0)


def _row_chunk(m: int, budget: int = 1 << 22) -> int:
    """Rows per chunk so that a (rows, m) float64 block stays around 32 MiB."""
    return max(1, budget // max(m, 1))


def _pairwise_mean(
    x: Tensor, y: Tensor, fn: Callable[[Tensor], Tensor], *, exclude_diagonal: bool = False
) -> float:
    """Mean of fn(|x_i - y_j|^2) over all (i, j), or over i != j (x is y); chunked over rows.

    When x is y the diagonal distances are set to exactly 0 (the expansion leaves round-off).
    """
    n, m = x.shape[0], y.shape[0]
    same = x is y
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    step = _row_chunk(m)
    for i in range(0, n, step):
        d2 = _sqdist(x[i : i + step], y)  # (c, m)
        rows = torch.arange(d2.shape[0], device=d2.device)
        if same:
            d2[rows, rows + i] = 0.0
        v = fn(d2)
        if exclude_diagonal:
            v[rows, rows + i] = 0.0
        total += v.sum()
    count = n * (n - 1) if exclude_diagonal else n * m
    return float(total) / count


# ----------------------------------------------------------------------------------------------
# Fréchet distance


def feature_moments(feats: ArrayLike) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) (divisor N-1, as np.cov) of feats (N, D)."""
    f = _as_2d(feats, "feats")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {f.shape[0]}")
    mu = f.mean(0)
    centred = f - mu
    cov = centred.T @ centred / (f.shape[0] - 1)
    return mu, cov


def _sym_sqrt(c: Tensor) -> Tensor:
    """Symmetric PSD square root via eigh (negative round-off eigenvalues clamped to 0)."""
    evals, evecs = torch.linalg.eigh(0.5 * (c + c.T))
    return (evecs * evals.clamp(min=0.0).sqrt()) @ evecs.T


def frechet_distance_from_moments(
    mu1: ArrayLike, cov1: ArrayLike, mu2: ArrayLike, cov2: ArrayLike
) -> float:
    """Fréchet distance of N(mu1, C1), N(mu2, C2) (Heusel et al. 2017): |mu1-mu2|^2 + Tr(C1 + C2
    - 2 (C1 C2)^{1/2}). Tr (C1 C2)^{1/2} = sum sqrt(eig(C1^{1/2} C2 C1^{1/2})), a symmetric PSD
    matrix with the same spectrum as C1 C2, so no complex sqrtm is needed."""
    mu1 = _as_f64(mu1).reshape(-1)
    mu2, c1, c2 = (_as_f64(a).to(mu1.device) for a in (mu2, cov1, cov2))
    mu2 = mu2.reshape(-1)
    d = mu1.shape[0]
    if mu2.shape[0] != d or c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(
            f"moment shapes disagree: mu1 {tuple(mu1.shape)}, cov1 {tuple(c1.shape)}, "
            f"mu2 {tuple(mu2.shape)}, cov2 {tuple(c2.shape)}"
        )
    s1 = _sym_sqrt(c1)
    m = s1 @ c2 @ s1
    tr_sqrt = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp(min=0.0).sqrt().sum()
    fd = (mu1 - mu2).square().sum() + torch.trace(c1) + torch.trace(c2) - 2.0 * tr_sqrt
    return float(fd)


def frechet_distance(feats1: ArrayLike, feats2: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to feats1 (N, D) and feats2 (M, D)."""
    f1 = _as_2d(feats1, "feats1")
    f2 = _as_2d(feats2, "feats2").to(f1.device)
    _check_dims(f1, f2)
    return frechet_distance_from_moments(*feature_moments(f1), *feature_moments(f2))


@torch.no_grad()
def extract_features(
    net: Callable[[Tensor], Tensor], x: ArrayLike, batch_size: int = 256
) -> Tensor:
    """Run a feature network over x (N, ...) in eval mode under no_grad -> (N, F) float64 on CPU.

    Batches go to the device of net's first parameter (x's device if it has none); the network's
    train/eval flag is restored afterwards.
    """
    x = torch.as_tensor(x)
    device = x.device
    was_training = None
    if isinstance(net, nn.Module):
        param = next(iter(net.parameters()), None)
        device = param.device if param is not None else device
        was_training = net.training
        net.eval()
    try:
        feats = [net(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    finally:
        if was_training is not None:
            net.train(was_training)
    return torch.cat([f.reshape(f.shape[0], -1) for f in feats]).to("cpu", torch.float64)


def frechet_distance_with(
    net: Callable[[Tensor], Tensor], x1: ArrayLike, x2: ArrayLike, batch_size: int = 256
) -> float:
    """FD-<net>: Fréchet distance between net's features of x1 and x2 (eval mode, no_grad)."""
    return frechet_distance(
        extract_features(net, x1, batch_size), extract_features(net, x2, batch_size)
    )


# ----------------------------------------------------------------------------------------------
# Kernel and distance based two-sample statistics


def _unbiased_mmd2_from_kernels(kxx: Tensor, kyy: Tensor, kxy: Tensor) -> Tensor:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3): off-diagonal means within, full mean across."""
    m, n = kxx.shape[0], kyy.shape[0]
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return xx + yy - 2.0 * kxy.mean()


def kid(
    f1: ArrayLike,
    f2: ArrayLike,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Kernel Inception Distance (Binkowski et al. 2018, sec. 3): unbiased MMD^2 with the kernel
    k(x, y) = (gamma x.y + coef0)^degree, gamma = 1/D by default, averaged over `subsets` random
    subsets of min(subset_size, N, M) points drawn without replacement from each set.

    Returns dict(mean, std); std is the population std (ddof=0) over subsets. The subsets come from
    `generator` if given, else from a CPU generator seeded with `seed`.
    """
    x = _as_2d(f1, "f1")
    y = _as_2d(f2, "f2").to(x.device)
    _check_dims(x, y)
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"KID needs subsets of at least 2 points, got {m}")
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    kernel = lambda a, b: (gamma * (a @ b.T) + coef0) ** degree
    values = []
    for _ in range(subsets):
        xs = x[torch.randperm(x.shape[0], generator=generator)[:m].to(x.device)]
        ys = y[torch.randperm(y.shape[0], generator=generator)[:m].to(y.device)]
        values.append(_unbiased_mmd2_from_kernels(kernel(xs, xs), kernel(ys, ys), kernel(xs, ys)))
    v = torch.stack(values)
    return {"mean": float(v.mean()), "std": float(v.std(correction=0))}


def _median_heuristic(x: Tensor, y: Tensor, max_points: int = 1000) -> float:
    """Median pairwise Euclidean distance (i < j) of the first max_points rows of x and of y."""
    z = torch.cat([x[:max_points], y[:max_points]])
    d = _sqdist(z, z).sqrt()
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    med = float(d[iu[0], iu[1]].median())
    return med if med > 0 else 1.0


def mmd(
    x: ArrayLike,
    y: ArrayLike,
    kernel: str = "rbf",
    bandwidths: Sequence[float] | None = None,
    *,
    unbiased: bool = True,
) -> float:
    """Squared maximum mean discrepancy MMD^2 (Gretton et al. 2012) with a kernel mixture.

    kernel="rbf": k = mean_b exp(-|x-y|^2 / (2 h_b^2)); kernel="laplacian": k = mean_b
    exp(-|x-y| / h_b). Default bandwidths: the median heuristic h (median pairwise distance of the
    pooled sample, first 1000 points of each set) times (0.5, 1, 2). unbiased=True (default) is
    the U-statistic (eq. 3, can be slightly negative); unbiased=False the V-statistic (eq. 5, >= 0).
    """
    x = _as_2d(x, "x")
    y = _as_2d(y, "y").to(x.device)
    _check_dims(x, y)
    if kernel not in ("rbf", "laplacian"):
        raise ValueError(f"unknown kernel {kernel!r}; known: 'rbf', 'laplacian'")
    if bandwidths is None:
        h = _median_heuristic(x, y)
        bandwidths = (0.5 * h, h, 2.0 * h)
    bw = torch.as_tensor(list(bandwidths), dtype=torch.float64, device=x.device)
    if bw.numel() == 0 or bool((bw <= 0).any()):
        raise ValueError(f"bandwidths must be positive, got {list(bandwidths)}")

    def k(d2: Tensor) -> Tensor:  # (c, m) squared distances -> (c, m) mixture kernel
        if kernel == "rbf":
            return torch.exp(-d2[..., None] / (2.0 * bw.square())).mean(-1)
        return torch.exp(-d2.sqrt()[..., None] / bw).mean(-1)

    if unbiased and (x.shape[0] < 2 or y.shape[0] < 2):
        raise ValueError("unbiased MMD needs at least 2 samples in each set")
    xx = _pairwise_mean(x, x, k, exclude_diagonal=unbiased)
    yy = _pairwise_mean(y, y, k, exclude_diagonal=unbiased)
    xy = _pairwise_mean(x, y, k)
    return xx + yy - 2.0 * xy


def energy_distance(x: ArrayLike, y: ArrayLike, *, unbiased: bool = True) -> float:
    """Energy distance (Székely & Rizzo 2013): 2 E|X-Y| - E|X-X'| - E|Y-Y'| (not its square root).

    unbiased=True (default) averages the within-sample terms over i != j (U-statistics);
    unbiased=False includes the zero diagonal (V-statistic; equals scipy.stats.energy_distance**2
    in 1-D and is always >= 0).
    """
    x = _as_2d(x, "x")
    y = _as_2d(y, "y").to(x.device)
    _check_dims(x, y)
    if unbiased and (x.shape[0] < 2 or y.shape[0] < 2):
        raise ValueError("unbiased energy distance needs at least 2 samples in each set")
    dist = torch.sqrt
    xy = _pairwise_mean(x, y, dist)
    xx = _pairwise_mean(x, x, dist, exclude_diagonal=unbiased)
    yy = _pairwise_mean(y, y, dist, exclude_diagonal=unbiased)
    return 2.0 * xy - xx - yy


def _wasserstein_1d_pp(xs: Tensor, ys: Tensor, p: float) -> Tensor:
    """W_p^p between empirical measures of sorted columns xs (N, P) and ys (M, P) -> (P,).

    The quantile functions are step functions with jumps at i/N and j/M; between the merged jump
    levels both are constant, so the integral over levels u of |F_x^-1(u) - F_y^-1(u)|^p is exact.
    """
    n, m = xs.shape[0], ys.shape[0]
    if n == m:
        return (xs - ys).abs().pow(p).mean(0)
    levels = torch.cat(
        [
            torch.arange(1, n + 1, dtype=torch.float64, device=xs.device) / n,
            torch.arange(1, m + 1, dtype=torch.float64, device=xs.device) / m,
        ]
    )
    levels = torch.unique(torch.cat([levels.new_zeros(1), levels]))  # sorted, starts at 0
    width = levels[1:] - levels[:-1]  # (L,)
    mid = 0.5 * (levels[1:] + levels[:-1])
    ix = (mid * n).long().clamp_(max=n - 1)
    iy = (mid * m).long().clamp_(max=m - 1)
    return ((xs[ix] - ys[iy]).abs().pow(p) * width[:, None]).sum(0)


def sliced_wasserstein(
    x: ArrayLike, y: ArrayLike, n_projections: int = 256, p: float = 2, seed: int = 0
) -> float:
    """Sliced Wasserstein distance SW_p = (mean_theta W_p^p(theta.x, theta.y))^(1/p) (Rabin et al.
    2011) over n_projections directions uniform on the sphere (CPU generator seeded with seed).

    The 1-D W_p is exact for any sample sizes: for N != M the quantile functions are compared on
    the merged levels {i/N} U {j/M}. With p=2 this is SW2 = sqrt(mean W2^2).
    """
    x = _as_2d(x, "x")
    y = _as_2d(y, "y").to(x.device)
    _check_dims(x, y)
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("sliced_wasserstein needs non-empty samples")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], n_projections, generator=g, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)  # (D, P) unit columns
    xs = (x @ theta).sort(dim=0).values  # (N, P)
    ys = (y @ theta).sort(dim=0).values  # (M, P)
    return float(_wasserstein_1d_pp(xs, ys, p).mean() ** (1.0 / p))


# ----------------------------------------------------------------------------------------------
# Precision and recall


def _knn_radii(x: Tensor, k: int) -> Tensor:
    """Distance from each row of x (N, D) to its k-th nearest other row -> (N,)."""
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, N-1] = [1, {n - 1}], got {k}")
    radii = []
    step = _row_chunk(n)
    for i in range(0, n, step):
        d2 = _sqdist(x[i : i + step], x)  # (c, N)
        rows = torch.arange(d2.shape[0], device=x.device)
        d2[rows, rows + i] = float("inf")  # exclude the point itself
        radii.append(d2.kthvalue(k, dim=1).values)
    return torch.cat(radii).sqrt()


def _inside_manifold(query: Tensor, ref: Tensor, radii: Tensor) -> Tensor:
    """For each query row, whether it lies in some ball B(ref_j, radii_j) -> (Q,) bool."""
    out = []
    step = _row_chunk(ref.shape[0])
    r2 = radii.square()[None, :]
    for i in range(0, query.shape[0], step):
        out.append((_sqdist(query[i : i + step], ref) <= r2).any(1))
    return torch.cat(out)


def precision_recall(real: ArrayLike, fake: ArrayLike, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eq. 1-2): each set's manifold is
    the union of balls reaching each point's k-th nearest neighbour; precision is the fraction of
    fake points inside the real manifold, recall the fraction of real points inside the fake one."""
    r = _as_2d(real, "real")
    f = _as_2d(fake, "fake").to(r.device)
    _check_dims(r, f)
    precision = _inside_manifold(f, r, _knn_radii(r, k)).double().mean()
    recall = _inside_manifold(r, f, _knn_radii(f, k)).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


# ----------------------------------------------------------------------------------------------
# NFE and time accounting


class CallCounter:
    """Callable wrapper counting calls of fn in `.nfe` (number of function evaluations)."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.nfe = 0
        functools.update_wrapper(self, fn, updated=())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.nfe += 1
        return self.fn(*args, **kwargs)

    def reset(self) -> None:
        self.nfe = 0


class CountingModule(nn.Module):
    """nn.Module wrapper counting forward calls in `.nfe`; parameters stay those of `.module`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.nfe = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.nfe += 1
        return self.module(*args, **kwargs)

    def reset(self) -> None:
        self.nfe = 0


def count_calls(fn: Callable[..., Any]) -> CallCounter | CountingModule:
    """Wrap fn so that its calls are counted in `.nfe`: a CountingModule for an nn.Module (so it
    still registers parameters and moves with .to()), a CallCounter for any other callable."""
    return CountingModule(fn) if isinstance(fn, nn.Module) else CallCounter(fn)


def time_per_sample(
    fn: Callable[[], Any],
    n: int,
    *,
    repeats: int = 5,
    warmup: int = 1,
    sync_cuda: bool = True,
) -> dict[str, Any]:
    """Median wall time of fn(), a zero-argument callable producing n samples.

    Runs fn `warmup` times untimed, then `repeats` timed runs (time.perf_counter), synchronising
    CUDA before and after each run when sync_cuda and CUDA is available. Returns dict(median_s,
    per_sample_s = median_s / n, all = list of the timed runs in seconds).
    """
    if n <= 0 or repeats <= 0:
        raise ValueError(f"n and repeats must be positive, got n={n}, repeats={repeats}")
    sync = torch.cuda.synchronize if sync_cuda and torch.cuda.is_available() else lambda: None
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"median_s": median, "per_sample_s": median / n, "all": times}
