"""EDM preconditioning (Karras et al. 2022, Table 1 and Eq. 7) around any `net(x, t, cond)`."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def edm_coefficients(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM Table 1: c_skip, c_out, c_in, c_noise for noise levels sigma (any shape)."""
    var = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / var
    c_out = sigma * sigma_data / var.sqrt()
    c_in = 1 / var.sqrt()
    c_noise = sigma.clamp_min(1e-20).log() / 4  # clamp: sigma = 0 gives D = x, not NaN
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, cond) (EDM Eq. 7). x (B, ...) -> x's shape.

    `sigma` is a scalar or (B,) (or any shape with one value per sample), broadcast over x's rank.
    The inner net receives t = c_noise = ln(sigma) / 4, about [-1.6, 1.1] for sigma in
    [0.002, 80]; build it with `time_scale=250` so its sinusoidal embedding sees a range of
    width ~700, like t in [0, 1] with the default scale of 1000.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net, self.sigma_data = net, float(sigma_data)

    @property
    def config(self) -> dict:
        from onestep.core.nn import network_name

        return {
            "net": {"name": network_name(self.net), "config": self.net.config},
            "sigma_data": self.sigma_data,
        }

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        if sigma.numel() not in (1, batch):
            raise ValueError(f"sigma must be a scalar or (B={batch},), got {tuple(sigma.shape)}")
        sigma = sigma.reshape(-1).expand(batch)  # (B,)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        view = (batch,) + (1,) * (x.ndim - 1)
        out = self.net(c_in.view(view) * x, c_noise, cond)
        return c_skip.view(view) * x + c_out.view(view) * out.to(x.dtype)
