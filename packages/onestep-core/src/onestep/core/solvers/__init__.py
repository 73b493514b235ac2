"""Samplers of diffusion and flow models: pure functions over a Denoiser and a time grid.

    x_data = sample_<name>(denoiser, x, times, *, cond=None, generator=None, callback=None, **opts)

x: (B, ...) noise already scaled to times[0] (sigma(t_0) * noise); times: a float64 1-D tensor,
strictly decreasing from t_0 to t_K (usually 0; t=1 noise, t=0 data). Every solver asks the
Denoiser only for x0 / eps / velocity, works on any path through alpha, sigma and
lam = log(alpha / sigma), and keeps its state in local variables. callback, if given, receives
{"step", "t", "x", "x0"} once per step. `SOLVERS[name]` also says what a number of steps costs
in network evaluations (NFE), so `onestep.core.sampling.sample` can spend exactly `nfe`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .classic import sample_ddim, sample_euler, sample_heun, sample_ipndm, sample_rk45
from .exponential import (
    sample_deis,
    sample_dpm_solver,
    sample_dpmpp_2m,
    sample_dpmpp_2s,
    sample_dpmpp_3m,
    sample_unipc,
)
from .stochastic import sample_dpmpp_sde, sample_euler_ancestral, sample_euler_maruyama

__all__ = [
    "Solver",
    "SOLVERS",
    "available",
    "get",
    "sample_euler",
    "sample_heun",
    "sample_ddim",
    "sample_dpm_solver",
    "sample_dpmpp_2s",
    "sample_dpmpp_2m",
    "sample_dpmpp_3m",
    "sample_deis",
    "sample_unipc",
    "sample_ipndm",
    "sample_rk45",
    "sample_euler_ancestral",
    "sample_dpmpp_sde",
    "sample_euler_maruyama",
]


@dataclass(frozen=True)
class Solver:
    """A solver function and its cost model.

    kind: "multistep" (one NFE per step: the model at each step's start), "singlestep" (a step of
        order k costs k NFE; per-step `orders`), or "adaptive" (chooses its own NFE).
    max_order, default_order: the orders a singlestep solver's steps may take.
    stochastic: draws noise from `generator`.
    pure_noise_start: may start where alpha = 0 (rectified flow at t = 1); otherwise the
        front door starts it just below (sigma/alpha = 1e3).
    """

    fn: Callable
    kind: str = "multistep"
    max_order: int = 1
    default_order: int = 1
    stochastic: bool = False
    pure_noise_start: bool = True

    def nfe_for(
        self,
        steps: int,
        *,
        orders: Sequence[int] | None = None,
        order: int | None = None,
        to_zero: bool = True,
    ) -> int:
        """NFE spent by `steps` steps (with per-step `orders` for a singlestep solver); `to_zero`:
        the last step ends at sigma = 0 (first order there)."""
        if self.kind == "adaptive":
            raise ValueError(f"{self.fn.__name__} is adaptive: its NFE depends on rtol/atol")
        if self.kind == "multistep":
            return steps
        if orders is None:
            orders = [order or self.default_order] * steps
            if to_zero:
                orders[-1] = 1
        return sum(orders)

    def steps_for(self, nfe: int, *, order: int | None = None) -> int:
        """The number of steps `plan(nfe)` takes."""
        return self.plan(nfe, order=order)[0]

    def plan(self, nfe: int, *, order: int | None = None) -> tuple[int, tuple[int, ...] | None]:
        """(steps, per-step orders or None) spending exactly `nfe` on times that end at t = 0.
        Singlestep: DPM-Solver's "fast" plan (Lu et al. 2022): steps of the top order,
        the leftover NFE as one lower-order step, then the first-order step to sigma = 0."""
        if self.kind == "adaptive":
            raise ValueError(
                f"{self.fn.__name__} is adaptive and chooses its own NFE; pass "
                "nfe=None (it reports the NFE spent in stats=dict())"
            )
        if not isinstance(nfe, int) or nfe < 1:
            raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
        if self.kind == "multistep":
            return nfe, None
        k = order or self.default_order
        if not 1 <= k <= self.max_order:
            raise ValueError(f"{self.fn.__name__} supports orders 1..{self.max_order}, got {k}")
        rest = nfe - 1
        orders = [k] * (rest // k) + ([rest % k] if rest % k else []) + [1]
        return len(orders), tuple(orders)


SOLVERS: dict[str, Solver] = {
    "euler": Solver(sample_euler),
    "heun": Solver(sample_heun, "singlestep", 2, 2, pure_noise_start=False),
    "ddim": Solver(sample_ddim),
    "dpm_solver": Solver(sample_dpm_solver, "singlestep", 3, 3, pure_noise_start=False),
    "dpmpp_2s": Solver(sample_dpmpp_2s, "singlestep", 2, 2, pure_noise_start=False),
    "dpmpp_2m": Solver(sample_dpmpp_2m),
    "dpmpp_3m": Solver(sample_dpmpp_3m),
    "deis": Solver(sample_deis),
    "unipc": Solver(sample_unipc),
    "ipndm": Solver(sample_ipndm),
    "rk45": Solver(sample_rk45, "adaptive"),
    "euler_ancestral": Solver(sample_euler_ancestral, stochastic=True),
    "dpmpp_sde": Solver(sample_dpmpp_sde, stochastic=True),
    "euler_maruyama": Solver(sample_euler_maruyama, stochastic=True, pure_noise_start=False),
}


def available() -> list[str]:
    """Names of the registered solvers."""
    return sorted(SOLVERS)


def get(name: str) -> Solver:
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; available: {available()}")
    return SOLVERS[name]
