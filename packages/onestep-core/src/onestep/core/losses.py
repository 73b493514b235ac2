"""Teacher losses: denoising score matching (eps / x0 / v targets), the EDM loss, and conditional
flow matching with independent or minibatch-OT couplings.

Each is a frozen dataclass called as `loss(denoiser, batch, *, generator=None) -> (loss, logs)`,
where batch is x_data or (x_data, cond). The loss owns noise-level sampling and weighting; the
network (inside the Denoiser) owns its preconditioning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .convert import broadcast, from_x0_eps
from .denoiser import Denoiser

__all__ = ["DSMLoss", "EDMLoss", "FlowMatchingLoss", "split_batch", "ot_pair", "sample_times"]


def split_batch(batch) -> tuple[Tensor, object]:
    """(x_data, cond) from a tensor or a (x_data, cond) tuple."""
    if torch.is_tensor(batch):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, (tuple, list)) and len(batch) == 1:
        return batch[0], None
    raise ValueError("a batch is a tensor x_data or a pair (x_data, cond); got a "
                     f"{type(batch).__name__}")


def _randn(x: Tensor, generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _rand(n: int, x: Tensor, generator) -> Tensor:
    return torch.rand(n, generator=generator, device=x.device, dtype=torch.float64)


def sample_times(denoiser: Denoiser, x: Tensor, generator, t_min: float = 1e-3,
                 sampler: str = "uniform") -> Tensor:
    """Training times (B,): uniform on [t_min, 1] ("uniform"), logit-normal (Esser et al. 2024,
    Eq. 19, m=0, s=1; "logit_normal"), or, for a discrete VP path, a uniform step index."""
    n = x.shape[0]
    steps = getattr(denoiser.path, "num_steps", None)
    if steps is not None and sampler == "uniform":
        idx = torch.randint(0, steps, (n,), generator=generator, device=x.device)
        return (idx.to(torch.float64) + 1.0) / steps
    if sampler == "uniform":
        return t_min + (1.0 - t_min) * _rand(n, x, generator)
    if sampler == "logit_normal":
        z = torch.randn(n, generator=generator, device=x.device, dtype=torch.float64)
        return torch.sigmoid(z).clamp(t_min, 1.0)
    raise ValueError(f"unknown time sampler {sampler!r}; use 'uniform' or 'logit_normal'")


def _drop_cond(denoiser: Denoiser, cond, p: float, generator):
    """Replace each sample's cond by the null cond with probability p (for guidance)."""
    if cond is None or p <= 0:
        return cond
    if denoiser.null_cond is None:
        raise ValueError("cond_dropout needs the Denoiser's null_cond (the 'no condition' input)")
    keep = torch.rand(cond.shape[0], generator=generator, device=cond.device) >= p
    null = torch.as_tensor(denoiser.null_cond, device=cond.device, dtype=cond.dtype)
    return torch.where(keep.reshape(-1, *[1] * (cond.ndim - 1)), cond, null.expand_as(cond))


def _per_sample_mse(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).float().pow(2).flatten(1).mean(1)


@dataclass(frozen=True)
class DSMLoss:
    """Denoising score matching (Ho et al. 2020, Eq. 14; Vincent 2011) with an eps, x0, v or
    velocity regression target: E_t,x,eps || target_pred(x_t, t) - target ||^2, unweighted
    ("simple" loss) or weighted by `weighting` ("snr" for min-SNR-gamma, Hang et al. 2023)."""

    target: str = "eps"
    """What is regressed: "eps", "x0", "v" or "velocity"."""
    t_min: float = 1e-3
    """Smallest training time for continuous paths."""
    time_sampler: str = "uniform"
    """"uniform" or "logit_normal"."""
    weighting: str = "none"
    """"none", or "min_snr" (min(SNR, gamma)/SNR on eps targets, Hang et al. 2023, Eq. 10)."""
    min_snr_gamma: float = 5.0
    cond_dropout: float = 0.0
    """Probability of dropping cond to the null cond, to train classifier-free guidance."""

    def __call__(self, denoiser: Denoiser, batch, *, generator=None):
        x, cond = split_batch(batch)
        cond = _drop_cond(denoiser, cond, self.cond_dropout, generator)
        t = sample_times(denoiser, x, generator, self.t_min, self.time_sampler)
        noise = _randn(x, generator)
        c = denoiser.path.coefficients(t)
        x_t = broadcast(c.alpha, x) * x + broadcast(c.sigma, x) * noise
        target = from_x0_eps(self.target, x, noise, x_t, t, denoiser.path)
        err = _per_sample_mse(denoiser.predict(self.target, x_t, t, cond), target)
        if self.weighting == "min_snr":
            snr = torch.exp(denoiser.path.log_snr(t)).to(err)
            base = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}.get(self.target)
            if base is None:
                raise ValueError("min_snr weighting is defined for eps, x0 and v targets")
            w = torch.clamp(snr, max=self.min_snr_gamma) / base
        elif self.weighting == "none":
            w = torch.ones_like(err)
        else:
            raise ValueError(f"unknown weighting {self.weighting!r}; use 'none' or 'min_snr'")
        loss = (w * err).mean()
        return loss, {"loss": loss.detach().item(), "mse": err.mean().detach().item()}


@dataclass(frozen=True)
class EDMLoss:
    """The EDM training loss (Karras et al. 2022, Eq. 8 and Table 1): ln sigma ~ N(P_mean, P_std^2),
    weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on ||D(x; sigma) - x||^2.
    sigma is the variance-exploding level sigma/alpha, so the loss works on any path."""

    p_mean: float = -1.2
    """Table 1, P_mean."""
    p_std: float = 1.2
    """Table 1, P_std."""
    sigma_data: float | None = None
    """Data std (Table 1: 0.5); None takes the path's sigma_data, else 0.5."""
    cond_dropout: float = 0.0

    def __call__(self, denoiser: Denoiser, batch, *, generator=None):
        x, cond = split_batch(batch)
        cond = _drop_cond(denoiser, cond, self.cond_dropout, generator)
        sd = self.sigma_data or getattr(denoiser.path, "sigma_data", 0.5)
        z = torch.randn(x.shape[0], generator=generator, device=x.device, dtype=torch.float64)
        sigma = torch.exp(self.p_mean + self.p_std * z)
        t = denoiser.path.t_from_sigma_ve(sigma)
        noise = _randn(x, generator)
        c = denoiser.path.coefficients(t)
        x_t = broadcast(c.alpha, x) * x + broadcast(c.sigma, x) * noise
        err = _per_sample_mse(denoiser.x0(x_t, t, cond), x)
        sigma = denoiser.path.sigma_ve(t)  # after the clamp of t to [0, 1]
        w = ((sigma**2 + sd**2) / (sigma * sd) ** 2).to(err)
        loss = (w * err).mean()
        return loss, {"loss": loss.detach().item(), "mse_x0": err.mean().detach().item()}


def ot_pair(x: Tensor, noise: Tensor) -> Tensor:
    """Reorder `noise` so that (x[i], noise[i]) is an exact minibatch optimal-transport coupling
    under squared Euclidean cost (Tong et al. 2023, Sec. 3.2; Pooladian et al. 2023)."""
    cost = torch.cdist(x.detach().flatten(1).double(), noise.detach().flatten(1).double()) ** 2
    _, cols = linear_sum_assignment(cost.cpu().numpy())
    return noise[torch.as_tensor(np.asarray(cols), device=noise.device)]


@dataclass(frozen=True)
class FlowMatchingLoss:
    """Conditional flow matching (Lipman et al. 2022, Eq. 23; Liu et al. 2022): regress the
    network's velocity on d/dt (alpha x + sigma eps) = alpha' x + sigma' eps. With the rectified
    flow path that is eps - x. coupling="ot" pairs data and noise by minibatch OT
    (Tong et al. 2023, Alg. 1)."""

    coupling: str = "independent"
    """"independent" or "ot"."""
    time_sampler: str = "uniform"
    """"uniform" or "logit_normal" (Esser et al. 2024)."""
    t_min: float = 1e-3
    cond_dropout: float = 0.0

    def __call__(self, denoiser: Denoiser, batch, *, generator=None):
        x, cond = split_batch(batch)
        cond = _drop_cond(denoiser, cond, self.cond_dropout, generator)
        noise = _randn(x, generator)
        if self.coupling == "ot":
            noise = ot_pair(x, noise)
        elif self.coupling != "independent":
            raise ValueError(f"unknown coupling {self.coupling!r}; use 'independent' or 'ot'")
        t = sample_times(denoiser, x, generator, self.t_min, self.time_sampler)
        c = denoiser.path.coefficients(t)
        x_t = broadcast(c.alpha, x) * x + broadcast(c.sigma, x) * noise
        target = broadcast(c.d_alpha, x) * x + broadcast(c.d_sigma, x) * noise
        err = _per_sample_mse(denoiser.velocity(x_t, t, cond), target)
        loss = err.mean()
        return loss, {"loss": loss.detach().item()}
