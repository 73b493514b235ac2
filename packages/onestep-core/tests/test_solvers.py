"""Solvers, schedules and the sampling front door against closed forms, in float64.

For Gaussian data N(MU, S0^2) per coordinate the exact denoiser is linear and the probability-flow
ODE keeps z = (x_t - alpha MU) / sqrt(alpha^2 S0^2 + sigma^2) fixed along a trajectory, so
x_t1 = alpha_1 MU + sqrt(alpha_1^2 S0^2 + sigma_1^2) z(x_t0) is the exact solution.
"""

import math

import pytest
import torch

from onestep.core import schedules, solvers
from onestep.core.denoiser import Denoiser
from onestep.core.paths import EDM, VP, RectifiedFlow
from onestep.core.sampling import ALIASES, resolve_solver, sample
from onestep.core.schedules import SCHEDULES, Schedule, get_schedule, get_times
from onestep.core.solvers._common import dynamic_threshold

F64 = torch.float64
MU, S0 = 0.7, 1.3
PATHS = {"vp": VP("linear"), "rf": RectifiedFlow(), "edm": EDM(), "vp_discrete": VP.ddpm_linear()}
DETERMINISTIC = [
    "euler",
    "heun",
    "ddim",
    "dpm_solver",
    "dpmpp_2s",
    "dpmpp_2m",
    "dpmpp_3m",
    "deis",
    "unipc",
    "ipndm",
]
STOCHASTIC = ["euler_ancestral", "dpmpp_sde", "euler_maruyama"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: torch's thread pool only adds overhead (10x on 2 shared cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def assert_close(actual, expected, rtol=1e-7, atol=1e-7):
    """torch.testing.assert_close without its first-call import of torch.distributed (~10 s)."""
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual - expected).abs().max().item()
    assert err <= atol + rtol * expected.abs().max().item(), (err, actual, expected)


def _col(v, x):
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def gaussian_net(path, kind="eps"):
    """The exact network for Gaussian data, predicting `kind` from (x_t, t)."""

    def net(x, t):
        c = path.coefficients(t)
        a, s, da, ds = (_col(v, x) for v in (c.alpha, c.sigma, c.d_alpha, c.d_sigma))
        x0 = MU + a * S0**2 / (a**2 * S0**2 + s**2) * (x - a * MU)
        eps = (x - a * x0) / s
        return {"eps": eps, "x0": x0, "velocity": da * x0 + ds * eps}[kind]

    return net


def gaussian(path, kind="eps"):
    return Denoiser(gaussian_net(path, kind), path, prediction=kind)


def exact_flow(path, x, t0, t1):
    """The probability-flow ODE solution from (x, t0) to t1 for Gaussian data."""
    a0, s0, a1, s1 = (
        path.alpha(t0).item(),
        path.sigma(t0).item(),
        path.alpha(t1).item(),
        path.sigma(t1).item(),
    )
    z = (x - a0 * MU) / math.sqrt(a0**2 * S0**2 + s0**2)
    return a1 * MU + math.sqrt(a1**2 * S0**2 + s1**2) * z


MIX = ((0.4, -1.0, 0.3), (0.6, 1.2, 0.5))  # (weight, mean, std) of a 1-D Gaussian mixture


def mixture_velocity_net(path):
    """Exact velocity of the Gaussian-mixture data MIX on `path`: a nonlinear field."""

    def net(x, t):
        c = path.coefficients(t)
        a, s, da, ds = (_col(v, x) for v in (c.alpha, c.sigma, c.d_alpha, c.d_sigma))
        logw, means = [], []
        for w, m, sd in MIX:
            var = a**2 * sd**2 + s**2
            logw.append(math.log(w) - 0.5 * torch.log(var) - 0.5 * (x - a * m) ** 2 / var)
            means.append(m + a * sd**2 / var * (x - a * m))
        post = torch.softmax(torch.stack(logw), 0)
        x0 = (post * torch.stack(means)).sum(0)
        return da * x0 + ds * (x - a * x0) / s

    return net


class Counting:
    """A network wrapper counting its calls."""

    def __init__(self, net):
        self.net, self.calls = net, 0

    def __call__(self, x, t, *cond):
        self.calls += 1
        return self.net(x, t)


def lam_times(path, t0, t1, k):
    """k steps uniform in logSNR from t0 to t1 > 0 (no final step to t=0)."""
    lam = torch.linspace(path.log_snr(t0).item(), path.log_snr(t1).item(), k + 1, dtype=F64)
    times = path.t_from_log_snr(lam)
    times[0], times[-1] = t0, t1
    return times


# -- (a) every solver spends exactly nfe network calls ----------------------------------------
@pytest.mark.parametrize("name", [n for n in solvers.available() if n != "rk45"])
def test_sample_spends_exactly_nfe(name):
    path = PATHS["vp"]
    noise = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    for schedule, t_min in (
        ("logsnr", None),
        ("karras", None),
        ("uniform", None),
        ("uniform", 0.01),
    ):
        for nfe in (1, 2, 3, 4, 5, 6, 7, 10):
            net = Counting(gaussian_net(path))
            x = sample(
                Denoiser(net, path),
                noise,
                nfe=nfe,
                solver=name,
                schedule=schedule,
                t_min=t_min,
                generator=torch.Generator().manual_seed(1),
            )
            assert net.calls == nfe, (schedule, t_min, nfe)
            assert torch.isfinite(x).all()


def test_every_solver_takes_image_batches_and_dict_conditions():
    path = PATHS["vp"]

    def net(x, t, cond):
        assert set(cond) == {"label"} and cond["label"].shape == (2,)
        return gaussian_net(path)(x, t)

    noise = torch.randn(2, 3, 4, 4, dtype=F64)
    for name in solvers.available():
        out = sample(
            Denoiser(net, path),
            noise,
            nfe=None if name == "rk45" else 4,
            solver=name,
            cond={"label": torch.tensor([1, 2])},
        )
        assert out.shape == noise.shape and torch.isfinite(out).all(), name


def test_nfe_counts_one_call_per_guided_batch_and_order_options():
    path = PATHS["rf"]
    net = Counting(lambda x, t, *c: gaussian_net(path, "velocity")(x, t))
    den = Denoiser(net, path, prediction="velocity", guidance=2.0, null_cond=0)
    noise, cond = torch.randn(4, 3, dtype=F64), torch.arange(4)
    sample(den, noise, nfe=9, solver="dpm++3m", cond=cond)
    assert net.calls == 9  # guidance batches cond and uncond into one call
    for solver, opts, nfe in (
        ("dpm_solver", {"order": 2}, 6),
        ("dpm_solver", {"order": 1}, 5),
        ("heun", {}, 8),
        ("dpm_solver", {"orders": (3, 2, 1)}, 6),
    ):
        net.calls = 0
        sample(den, noise, nfe=nfe, solver=solver, cond=cond, **opts)
        assert net.calls == nfe, solver


def test_plans_follow_the_fast_order_schedule():
    dpm = solvers.SOLVERS["dpm_solver"]
    assert dpm.plan(10) == (4, (3, 3, 3, 1))
    assert dpm.plan(9) == (4, (3, 3, 2, 1))
    assert dpm.plan(8) == (4, (3, 3, 1, 1))
    assert dpm.plan(1) == (1, (1,))
    assert solvers.SOLVERS["heun"].plan(7) == (4, (2, 2, 2, 1))  # K steps cost 2K - 1
    assert solvers.SOLVERS["heun"].nfe_for(4) == 7
    assert solvers.SOLVERS["unipc"].plan(7) == (7, None)
    assert solvers.SOLVERS["dpmpp_2s"].nfe_for(5, to_zero=False) == 10


def test_rk45_reports_its_nfe():
    path = PATHS["vp"]
    net = Counting(gaussian_net(path))
    stats = {}
    x = sample(
        Denoiser(net, path), torch.randn(5, 2, dtype=F64), nfe=None, solver="dopri5", stats=stats
    )
    assert stats["nfe"] == net.calls > 10 and stats["accepted"] > 0
    assert torch.isfinite(x).all()


# -- (b) empirical order on the exact Gaussian denoiser -----------------------------------------
ORDER_CASES = [
    ("euler", {}, 1),
    ("heun", {}, 2),
    ("ddim", {}, 1),
    ("euler_ancestral", {"eta": 0.0}, 1),
    ("dpm_solver", {"order": 1}, 1),
    ("dpm_solver", {"order": 2}, 2),
    ("dpm_solver", {"order": 3}, 3),
    ("dpmpp_2s", {}, 2),
    ("dpmpp_2m", {}, 2),
    ("dpmpp_3m", {}, 3),
    ("dpmpp_sde", {"eta": 0.0}, 2),
    ("deis", {"order": 1}, 1),
    ("deis", {"order": 2}, 2),
    ("deis", {"order": 3}, 3),
    ("deis", {"order": 3, "form": "x0"}, 3),
    ("unipc", {"order": 1}, 2),
    ("unipc", {"order": 2}, 3),
    ("unipc", {"order": 3}, 4),
    ("unipc", {"order": 2, "variant": "bh1"}, 3),
    ("unipc", {"order": 2, "corrector": False}, 2),
    ("ipndm", {"order": 2}, 2),
    ("ipndm", {"order": 3}, 3),
    ("ipndm", {"order": 4}, 4),
]
MULTISTEP = {"dpmpp_2m", "dpmpp_3m", "dpmpp_sde", "deis", "unipc", "ipndm"}


@pytest.mark.parametrize("path_name", ["vp", "rf"])
@pytest.mark.parametrize(
    "name,opts,order",
    ORDER_CASES,
    ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o, _ in ORDER_CASES],
)
def test_error_shrinks_by_two_to_the_order(path_name, name, opts, order):
    """Endpoint error at t=0.05 from t=0.995 on a logSNR grid, K = 64 and 128 steps. Multistep
    methods run without `lower_order_final`: one first-order step near the data would cap the
    global order at 2. (Gaussian data can show a little super-convergence, hence the +1.)"""
    path = PATHS[path_name]
    den = gaussian(path)
    x = torch.linspace(-2.5, 2.5, 11, dtype=F64)[:, None]
    if name in MULTISTEP:
        opts = {**opts, "lower_order_final": False}
    errors = []
    for k in (64, 128):
        times = lam_times(path, 0.995, 0.05, k)
        out = solvers.SOLVERS[name].fn(den, x, times, **opts)
        errors.append((out - exact_flow(path, x, 0.995, 0.05)).abs().max().item())
    measured = math.log2(errors[0] / errors[1])
    assert order - 0.7 <= measured <= order + 1.0, (errors, measured)


def test_heun_and_rk45_on_the_edm_path():
    path = PATHS["edm"]
    den = gaussian(path)
    x = torch.linspace(-2.5, 2.5, 11, dtype=F64)[:, None] * 40
    errs = [
        (
            solvers.sample_heun(den, x, torch.linspace(0.9, 0.2, k + 1, dtype=F64))
            - exact_flow(path, x, 0.9, 0.2)
        )
        .abs()
        .max()
        .item()
        for k in (32, 64)
    ]
    assert 1.4 <= math.log2(errs[0] / errs[1]) <= 2.7


# -- (c) Euler on the closed-form velocity 3 t^2 -------------------------------------------------
def test_euler_on_velocity_3t2_is_the_left_riemann_sum():
    den = Denoiser(lambda x, t: 3 * _col(t, x) ** 2 + 0 * x, RectifiedFlow(), prediction="velocity")
    x1 = torch.randn(4, 2, dtype=F64)
    for k in (1, 4, 10, 100):
        out = solvers.sample_euler(den, x1, torch.linspace(1, 0, k + 1, dtype=F64))
        # sum_i (t_i - t_{i+1}) 3 t_i^2 = 1 + 3 / (2K) + 1 / (2K^2) on the uniform grid
        assert_close(out, x1 - (1 + 1.5 / k + 0.5 / k**2), rtol=0, atol=1e-12)
    out = solvers.sample_rk45(den, x1, torch.tensor([1.0, 0.0], dtype=F64))
    assert_close(out, x1 - 1, rtol=0, atol=1e-6)  # dopri5 is exact on cubics


# -- (d) flow-matching variants agree with many-step Euler ----------------------------------------
def test_flow_matching_solvers_agree_with_many_step_euler():
    """A velocity network on rectified flow (the exact field of a Gaussian mixture, nonlinear):
    every deterministic solver lands where 2000 Euler steps and tight Dormand-Prince land."""
    path = RectifiedFlow()
    den = Denoiser(mixture_velocity_net(path), path, prediction="velocity")
    noise = torch.randn(64, 1, dtype=F64, generator=torch.Generator().manual_seed(3))
    ref = sample(den, noise, nfe=2000, solver="euler", schedule="uniform", t_max=0.98)
    dopri = sample(den, noise, nfe=None, solver="rk45", t_max=0.98, rtol=1e-8, atol=1e-8)
    assert (dopri - ref).abs().max() < 3e-3
    for name in DETERMINISTIC:
        nfe = 400 if name in ("euler", "ddim") else 80
        out = sample(den, noise, nfe=nfe, solver=name, schedule="uniform", t_max=0.98)
        assert (out - ref).abs().max() < 2e-2, name


def test_solvers_start_at_pure_noise_on_rectified_flow():
    """alpha(1) = 0 on rectified flow: solvers flagged pure_noise_start integrate from t=1; the
    others refuse, and the front door starts them just below (here on EDM's Karras grid)."""
    path = RectifiedFlow()
    den = gaussian(path, "velocity")
    noise = torch.linspace(-2.5, 2.5, 11, dtype=F64)[:, None]
    exact = exact_flow(path, noise, 1.0, 0.0)
    times = torch.linspace(1, 0, 61, dtype=F64)
    for name, spec in solvers.SOLVERS.items():
        if spec.stochastic:
            continue
        if spec.pure_noise_start:
            err = (spec.fn(den, noise, times) - exact).abs().max()
            assert err < (0.1 if name in ("euler", "ddim") else 1e-2), name
        else:
            with pytest.raises(ValueError, match="alpha = 0"):
                spec.fn(den, noise, times)
            out = sample(den, noise, nfe=121, solver=name, schedule="karras")
            assert (out - exact).abs().max() < 3e-2, name  # 1e-2 of it: the prior at sigma=80


# -- (e) the adaptive reference matches the closed form -----------------------------------------
@pytest.mark.parametrize("path_name", ["vp", "rf", "edm"])
def test_rk45_matches_the_closed_form(path_name):
    path = PATHS[path_name]
    den = gaussian(path)
    x = torch.linspace(-2.5, 2.5, 11, dtype=F64)[:, None] * path.sigma(0.9).item()
    out = solvers.sample_rk45(
        den, x, torch.tensor([0.9, 0.3, 0.05], dtype=F64), rtol=1e-9, atol=1e-9
    )
    assert_close(out, exact_flow(path, x, 0.9, 0.05), rtol=0, atol=1e-6)
    out = solvers.sample_rk45(den, x, torch.tensor([0.9, 0.0], dtype=F64), rtol=1e-9, atol=1e-9)
    assert_close(out, exact_flow(path, x, 0.9, 0.0), rtol=0, atol=1e-6)


# -- (f) stochastic samplers map the prior onto the data Gaussian --------------------------------
@pytest.mark.parametrize(
    "name,opts,nfe",
    [
        ("euler_ancestral", {}, 100),
        ("dpmpp_sde", {}, 50),
        ("dpmpp_sde", {"order": 1}, 100),
        ("dpmpp_sde", {"eta": 0.5}, 50),
        ("euler_maruyama", {}, 250),
        ("ddim", {"eta": 1.0}, 100),
        ("heun", {"s_churn": 10.0}, 61),
    ],
)
@pytest.mark.parametrize("path_name", ["vp", "rf"])
def test_stochastic_samplers_reach_the_data_distribution(name, opts, nfe, path_name):
    path = PATHS[path_name]
    noise = torch.randn(4000, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = sample(
        gaussian(path),
        noise,
        nfe=nfe,
        solver=name,
        schedule="uniform",
        generator=torch.Generator().manual_seed(1),
        **opts,
    )
    assert abs(out.mean().item() - MU) < 0.07, out.mean()
    assert abs(out.std().item() / S0 - 1) < 0.05, out.std()


def test_per_sample_generators_make_samples_independent_of_the_batch():
    path = PATHS["vp"]
    den = gaussian(path)
    noise = torch.randn(3, 2, dtype=F64)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    batch = sample(den, noise, nfe=8, solver="euler_a", generator=gens)
    alone = sample(
        den, noise[1:2], nfe=8, solver="euler_a", generator=[torch.Generator().manual_seed(6)]
    )
    assert_close(batch[1:2], alone)


# -- the front door's errors, callbacks, thresholding --------------------------------------------
def test_front_door_errors_are_clear():
    den = gaussian(PATHS["vp"])
    noise = torch.randn(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="unknown solver 'dpm\\+\\+9m'.*dpmpp_2m"):
        sample(den, noise, nfe=4, solver="dpm++9m")
    with pytest.raises(ValueError, match="nfe must be a positive integer"):
        sample(den, noise, nfe=0)
    with pytest.raises(ValueError, match="adaptive"):
        sample(den, noise, nfe=10, solver="rk45")
    with pytest.raises(ValueError, match="floating-point"):
        sample(den, torch.zeros(2, 3, dtype=torch.long), nfe=4)
    with pytest.raises(ValueError, match="non-empty batch"):
        sample(den, torch.tensor(1.0, dtype=F64), nfe=4)
    with pytest.raises(ValueError, match="cond has batch 3"):
        sample(den, noise, nfe=4, cond=torch.zeros(3))
    with pytest.raises(ValueError, match="takes no option.*'etaa'"):
        sample(den, noise, nfe=4, solver="ddim", etaa=1.0)
    with pytest.raises(ValueError, match="orders 1..3"):
        sample(den, noise, nfe=4, solver="dpm_solver", order=4)
    with pytest.raises(ValueError, match="cost 5 NFE, not nfe=4"):
        sample(den, noise, nfe=4, solver="heun", schedule=torch.linspace(1, 0, 4, dtype=F64))
    with pytest.raises(ValueError, match="first order"):
        solvers.sample_dpm_solver(den, noise, torch.linspace(0.9, 0, 3, dtype=F64), orders=[2, 2])
    with pytest.raises(ValueError, match="strictly decreasing"):
        solvers.sample_euler(den, noise, torch.tensor([0.1, 0.5], dtype=F64))


def test_aliases_resolve():
    assert resolve_solver("dpm++2m") == "dpmpp_2m"
    assert resolve_solver("euler_a") == "euler_ancestral"
    assert resolve_solver("em") == "euler_maruyama"
    assert all(v in solvers.SOLVERS for v in ALIASES.values())
    assert solvers.available() == sorted(solvers.SOLVERS)


def test_callback_sees_every_step_and_a_fixed_schedule_with_orders():
    den = gaussian(PATHS["vp"])
    seen = []
    sched = Schedule(torch.tensor([1.0, 0.6, 0.2, 0.0], dtype=F64), orders=(3, 2, 1))
    x = sample(
        den,
        torch.randn(2, 3, dtype=F64),
        nfe=6,
        solver="dpm_solver",
        schedule=sched,
        callback=lambda d: seen.append((d["step"], d["t"], d["x0"].shape)),
    )
    assert [s for s, _, _ in seen] == [0, 1, 2] and seen[0][1] == pytest.approx(
        schedules.clip_t_max(PATHS["vp"], 1.0)
    )
    assert x.shape == (2, 3)


def test_dynamic_thresholding_clips_x0():
    x0 = torch.tensor([[0.5, -3.0, 2.0], [0.1, 0.2, -0.3]], dtype=F64)
    out = dynamic_threshold(x0, 1.0, max_value=10.0)
    assert_close(out[0], torch.tensor([0.5 / 3, -1.0, 2 / 3], dtype=F64))
    assert_close(out[1], x0[1])  # s < 1 is raised to 1: no change
    den = Denoiser(lambda x, t: 5 * x, PATHS["vp"], prediction="x0")
    out = sample(den, torch.randn(4, 16, dtype=F64), nfe=5, solver="dpm++2m", thresholding=0.9)
    assert out.abs().max() <= 1.0 + 1e-12


# -- (g) schedules ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("path_name", sorted(PATHS))
def test_schedules_decrease_and_end_at_zero(name, path_name):
    path = PATHS[path_name]
    for n in (1, 2, 5, 17):
        t = SCHEDULES[name](n, path)
        assert t.dtype == F64 and t.shape == (n + 1,)
        assert (t[1:] < t[:-1]).all() and t[-1] == 0 and t[0] <= 1
        if name not in ("uniform", "uniform_t", "quadratic"):  # these start at t_max = 1
            assert path.sigma_ve(t[0]) <= schedules.MAX_SIGMA_VE * (1 + 1e-9)


def test_schedule_shapes():
    vp, edm = PATHS["vp"], PATHS["edm"]
    lam = vp.log_snr(schedules.uniform_logsnr(9, vp, t_min=0.01)[:-1])
    assert_close(lam.diff(), lam.diff().mean().expand(8))
    assert schedules.uniform_logsnr(4, vp, t_min=0.01)[-2] == 0.01
    # Karras' sigma_max = 80 on the EDM path is t = 1, and the rho-schedule is uniform in t there
    t = schedules.karras(6, edm)
    assert_close(t[:-1].diff(), t[:-1].diff().mean().expand(5))
    assert_close(edm.sigma_ve(t[:-1])[[0, -1]], torch.tensor([80, 0.002], dtype=F64))
    assert_close(schedules.edm(6, edm), t)
    # on a discrete VP, t_max = 1 is index N - 1 and the smallest default time is index 0
    disc = PATHS["vp_discrete"]
    assert schedules.default_t_min(disc) == pytest.approx(1 / 1000)
    assert schedules.uniform_logsnr(5, disc)[-2] == pytest.approx(1 / 1000)
    assert disc.index(schedules.uniform_t(5, disc)[0]) == pytest.approx(999)
    # rectified flow is pure noise at t = 1: logSNR schedules start at sigma/alpha = 1e3
    assert schedules.uniform_logsnr(5, RectifiedFlow())[0] == pytest.approx(1e3 / (1 + 1e3))
    assert_close(
        schedules.quadratic(4, vp), torch.tensor([1, 9 / 16, 4 / 16, 1 / 16, 0], dtype=F64)
    )
    assert_close(schedules.uniform_t(2, vp, t_min=0.1), torch.tensor([1, 0.1, 0], dtype=F64))


def test_schedule_save_load_round_trip(tmp_path):
    s = Schedule(
        torch.tensor([1.0, 0.5, 0.1, 0.0], dtype=F64),
        orders=(2, 2, 1),
        predictions=("x0", "eps", "x0"),
        coefficients={"a": [1.0, 2.0]},
        meta={"found_by": "test"},
    )
    file = tmp_path / "s.json"
    s.save(file)
    back = Schedule.load(file)
    assert torch.equal(back.times, s.times) and back.orders == s.orders
    assert back.predictions == s.predictions and back.coefficients == s.coefficients
    assert back.meta == s.meta
    assert_close(get_times(str(file), 3, PATHS["vp"]), s.times)
    assert get_schedule(s, None, PATHS["vp"]) is s


def test_schedule_errors():
    vp = PATHS["vp"]
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        get_times("cosine", 5, vp)
    with pytest.raises(ValueError, match="has 2 steps, 5 were asked"):
        get_times(torch.tensor([1.0, 0.5, 0.0]), 5, vp)
    with pytest.raises(ValueError, match="strictly decreasing"):
        Schedule(torch.tensor([0.5, 0.5, 0.0]))
    with pytest.raises(ValueError, match="3 steps but 2 orders"):
        Schedule(torch.tensor([1.0, 0.5, 0.2, 0.0]), orders=(1, 2))
    with pytest.raises(ValueError, match="positive integer"):
        schedules.karras(0, vp)
    with pytest.raises(ValueError, match="t_min must be in"):
        schedules.uniform_t(4, vp, t_min=1.5)
    with pytest.raises(ValueError, match="a schedule is a name"):
        get_times(3.0, 4, vp)
