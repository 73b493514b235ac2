"""Searched and learned samplers (onestep.core.search): the USF solver against closed forms and
independent solvers, the searches and LSD against the default sampler on held-out noise, exact
NFE, saved schedules, the `search-schedule` command, and clear errors."""

import math

import pytest
import torch

from onestep.core import search, solvers
from onestep.core.cli_search import SearchArgs, search_schedule_cmd
from onestep.core.data import GaussianMixture
from onestep.core.denoiser import Denoiser
from onestep.core.io import save_model
from onestep.core.nn import MLP
from onestep.core.paths import VP, RectifiedFlow
from onestep.core.sampling import sample
from onestep.core.schedules import Schedule, uniform_logsnr

F64 = torch.float64
MU, S0 = 0.7, 1.3  # Gaussian data N(MU, S0^2) per coordinate: the probability-flow ODE is known
N_CALIB, N_HELD = 128, 256


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def assert_close(actual, expected, tol):
    """Max-abs closeness (torch.testing's first call imports torch.distributed: ~10 s)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= tol, err


def _col(v, x):
    return v.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def gaussian(path):
    """The exact eps network for Gaussian data N(MU, S0^2)."""

    def net(x, t):
        c = path.coefficients(t)
        a, s = _col(c.alpha, x), _col(c.sigma, x)
        x0 = MU + a * S0**2 / (a**2 * S0**2 + s**2) * (x - a * MU)
        return (x - a * x0) / s

    return Denoiser(net, path, prediction="eps")


def exact_flow(path, x, t0, t1):
    """The probability-flow ODE solution from (x, t0) to t1 for the Gaussian data."""
    a0, s0 = path.alpha(t0).item(), path.sigma(t0).item()
    a1, s1 = path.alpha(t1).item(), path.sigma(t1).item()
    z = (x - a0 * MU) / math.sqrt(a0**2 * S0**2 + s0**2)
    return a1 * MU + math.sqrt(a1**2 * S0**2 + s1**2) * z


MIX = GaussianMixture(
    torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]], dtype=F64),
    torch.eye(2, dtype=F64).expand(3, 2, 2) * 0.09,
    torch.tensor([0.3, 0.3, 0.4], dtype=F64),
)


def mixture(path, prediction="x0"):
    """The exact x0 network of a 2-D Gaussian mixture: a nonlinear probability-flow field."""

    def net(x, t):
        c = path.coefficients(t)
        return MIX.denoise(x.double(), _col(c.alpha, x), _col(c.sigma, x)).to(x.dtype)

    return Denoiser(net, path, prediction=prediction)


class Counting(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x, t, *cond):
        self.calls += 1
        return self.net(x, t, *cond)


def counted(den):
    return Denoiser(
        Counting(den.model), den.path, prediction=den.prediction, time_input=den.time_input
    )


# -- the USF solver ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", [VP("linear"), RectifiedFlow(), VP.ddpm_linear(1000)], ids=["vp", "rf", "ddpm"]
)
def test_usf_is_dpmpp_2m_deis_and_euler_where_they_coincide(path):
    den = mixture(path)
    noise = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    for k in (2, 3, 6):
        times = uniform_logsnr(k, path)
        x = noise * path.sigma(times[0]).item()
        coef = search.dpmpp_2m_coefficients(path, times)
        assert_close(
            search.sample_usf(den, x, times, coefficients=coef),
            solvers.sample_dpmpp_2m(den, x, times),
            1e-12,
        )
        euler = search.sample_usf(
            den, x, times, orders=[1] * k, predictions=["velocity"] * (k - 1) + ["x0"]
        )
        assert_close(euler, solvers.sample_euler(den, x, times), 1e-12)
        for form, kinds in (("x0", ["x0"] * k), ("eps", ["eps"] * (k - 1) + ["x0"])):
            deis = solvers.sample_deis(
                den, x, times, order=3, form=form, variable="log_rho", lower_order_final=False
            )
            usf = search.sample_usf(den, x, times, orders=[3] * k, predictions=kinds)
            assert_close(usf, deis, 1e-9)


@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_usf_error_shrinks_by_two_to_its_order(prediction):
    path = VP("linear")
    den = gaussian(path)
    x = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    t0, t1 = 0.8, 0.02
    exact = exact_flow(path, x, t0, t1)

    def err(k, **opts):
        lam = torch.linspace(path.log_snr(t0).item(), path.log_snr(t1).item(), k + 1, dtype=F64)
        times = path.t_from_log_snr(lam)
        times[0], times[-1] = t0, t1
        plan = {key: [v] * k for key, v in opts.items()}
        out = search.sample_usf(den, x, times, predictions=[prediction] * k, **plan)
        return (out - exact).abs().max().item()

    cases = [
        ({"orders": 1}, 1),
        ({"orders": 2}, 2),
        ({"orders": 1, "correctors": True}, 2),
        ({"orders": 2, "correctors": True}, 3),
    ]
    if prediction == "eps":  # (x0's third order is pre-asymptotic here; test_..._deis checks it)
        cases += [({"orders": 3}, 3), ({"orders": 3, "correctors": True}, 4)]
    for opts, order in cases:
        ratio = err(16, **opts) / err(32, **opts)
        assert 2 ** (order - 0.5) < ratio < 2 ** (order + 1), (opts, ratio)


def test_usf_plans_at_pure_noise_and_at_t0():
    path = RectifiedFlow()
    den = mixture(path, "velocity")
    noise = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    times = torch.tensor([1.0, 0.8, 0.5, 0.25, 0.0], dtype=F64)
    plan = search.usf_plan(path, times, [3] * 4, ["eps"] * 4, [True] * 4)
    # from alpha = 0: data prediction, first order, no corrector; the history starts after it
    assert plan.orders == (1, 1, 2, 3) and plan.predictions[0] == "x0"
    assert plan.correctors == (False, True, True, False) and plan.terms == (1, 2, 3, 3)
    out = search.sample_usf(
        den, noise, times, orders=[3] * 4, predictions=["eps"] * 4, correctors=[True] * 4
    )
    assert torch.isfinite(out).all()
    # a data-prediction step to t = 0 is first order
    assert search.usf_plan(path, times, [3] * 4).orders == (1, 1, 2, 1)
    # the velocity (in t) counts the pure-noise prediction as history and may be corrected there
    plan = search.usf_plan(path, times, [3] * 4, ["velocity"] * 4, [True] * 4)
    assert plan.orders == (1, 2, 3, 3) and plan.correctors == (True, True, True, False)
    out = search.sample_usf(
        den, noise, times, orders=[3] * 4, predictions=["velocity"] * 4, correctors=[True] * 4
    )
    assert torch.isfinite(out).all()


# -- the searches on the toy teachers, judged on held-out noise ----------------------------------
@pytest.fixture(scope="module")
def references(flow_teacher, vp_teacher):
    """Calibration and held-out noise and their RK45 endpoints, once per teacher."""
    out = {}
    for name, den in (("flow", flow_teacher), ("vp", vp_teacher)):
        g = torch.Generator().manual_seed(11)
        noise = torch.randn(N_CALIB + N_HELD, 2, generator=g)
        with torch.no_grad():
            ref = sample(den, noise, nfe=None, solver="rk45")
        out[name] = (den, noise[:N_CALIB], ref[:N_CALIB], noise[N_CALIB:], ref[N_CALIB:])
    return out


def held_out_error(den, schedule_or_none, nfe, noise, ref):
    with torch.no_grad():
        if schedule_or_none is None:  # the old default: dpm++2m on the logsnr schedule
            x = sample(den, noise, nfe=nfe, solver="dpm++2m", schedule="logsnr")
        else:
            x = sample(den, noise, nfe=nfe, schedule=schedule_or_none)
    return search.endpoint_error(x, ref)


@pytest.mark.parametrize("teacher", ["flow", "vp"])
def test_searched_schedule_beats_the_default_on_held_out_noise(references, teacher):
    den, calib, ref_c, held, ref_h = references[teacher]
    for nfe in (4, 5):
        found = search.search_schedule(
            den, nfe=nfe, noise=calib, reference=ref_c, iterations=12, population=12, progress=False
        )
        assert found.meta["method"] == "evolutionary" and found.meta["nfe"] == nfe
        assert found.meta["calibration_error"] < found.meta["default_error"]
        searched = held_out_error(den, found, nfe, held, ref_h)
        default = held_out_error(den, None, nfe, held, ref_h)
        assert searched < 0.8 * default, (nfe, searched, default)


def test_lsd_beats_its_initialisation_on_held_out_noise(references):
    den, calib, ref_c, held, ref_h = references["flow"]
    nfe = 4
    t0 = uniform_logsnr(nfe, den.path)[0].item()
    traj = search.teacher_trajectory(den, calib, t0=t0, points=32, rtol=1e-5, atol=1e-5)
    # the initialisation is dpm++2m on the logsnr schedule: the default sampler
    init = search.learn_sampler(
        den, nfe=nfe, noise=calib, trajectory=traj, iterations=0, progress=False
    )
    with torch.no_grad():
        assert_close(
            sample(den, held, nfe=nfe, schedule=init),
            sample(den, held, nfe=nfe, solver="dpm++2m", schedule="logsnr"),
            1e-5,
        )
    learned = search.learn_sampler(
        den, nfe=nfe, noise=calib, trajectory=traj, iterations=30, progress=False
    )
    assert learned.meta["method"] == "lsd" and learned.meta["base"] == "dpm++2m"
    assert learned.meta["calibration_error"] < learned.meta["init_error"]
    default = held_out_error(den, None, nfe, held, ref_h)
    assert held_out_error(den, learned, nfe, held, ref_h) < 0.9 * default


# -- exact NFE, saved schedules, gradient and AutoDiffusion --------------------------------------
def test_searched_and_learned_schedules_spend_exactly_nfe(tmp_path):
    path = RectifiedFlow()
    den = mixture(path, "velocity")
    calib = torch.randn(32, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    held = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = sample(den, calib, nfe=None, solver="rk45")
    traj = search.teacher_trajectory(den, calib, t0=uniform_logsnr(2, path)[0].item(), points=8)
    for nfe in (1, 2, 5):
        common = dict(nfe=nfe, noise=calib, reference=ref, iterations=2, progress=False)
        found = [
            search.search_schedule(den, **common, population=4),
            search.search_schedule(den, **common, method="gradient"),
            search.search_schedule(
                den, **common, method="autodiffusion", population=4, solver="heun"
            ),
            search.learn_sampler(
                den,
                nfe=nfe,
                noise=calib,
                iterations=2,
                trajectory=traj,
                learn_times=True,
                progress=False,
            ),
        ]
        for sched in found:
            cden = counted(den)
            sched.save(tmp_path / "s.json")
            x = sample(cden, held, nfe=nfe, schedule=str(tmp_path / "s.json"))
            assert cden.model.calls == nfe, sched.meta
            assert torch.isfinite(x).all()


def test_schedule_round_trips_through_json(tmp_path):
    path = VP("linear")
    den = mixture(path, "eps")
    calib = torch.randn(24, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    learned = search.learn_sampler(den, nfe=4, noise=calib, iterations=3, points=8, progress=False)
    found = search.search_schedule(
        den, nfe=4, noise=calib, iterations=3, population=6, progress=False
    )
    for sched in (found, learned):
        sched.save(tmp_path / "s.json")
        back = Schedule.load(tmp_path / "s.json")
        assert torch.equal(back.times, sched.times) and back.orders == sched.orders
        assert back.predictions == sched.predictions and back.correctors == sched.correctors
        assert back.coefficients == sched.coefficients and back.meta == sched.meta
        assert back.meta["solver"] == "usf"
        a = sample(den, calib, nfe=4, schedule=sched)
        b = sample(den, calib, nfe=4, schedule=str(tmp_path / "s.json"))
        assert torch.equal(a, b)


def test_gradient_and_autodiffusion_never_end_worse_than_their_start():
    path = VP("linear")
    den = mixture(path, "eps")
    calib = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = sample(den, calib, nfe=None, solver="rk45")
    grad = search.search_schedule(
        den, nfe=3, noise=calib, reference=ref, method="gradient", iterations=10, progress=False
    )
    start = search.search_schedule(
        den, nfe=3, noise=calib, reference=ref, method="gradient", iterations=0, progress=False
    )
    assert grad.meta["calibration_error"] <= start.meta["calibration_error"]
    auto = search.search_schedule(
        den,
        nfe=3,
        noise=calib,
        reference=ref,
        method="autodiffusion",
        iterations=4,
        population=6,
        progress=False,
    )
    assert auto.meta["solver"] == "dpmpp_2m" and auto.orders is None
    seed = search.endpoint_error(sample(den, calib, nfe=3, solver="dpm++2m"), ref)  # logsnr
    assert auto.meta["calibration_error"] <= seed + 1e-12
    x = sample(den, calib, nfe=3, schedule=auto)  # runs on dpm++2m, the solver it was made for
    assert search.endpoint_error(x, ref) == pytest.approx(auto.meta["calibration_error"])


# -- the command, and errors ---------------------------------------------------------------------
def test_search_schedule_command_writes_a_schedule(tmp_path, capsys):
    den = Denoiser(MLP(2, hidden=16, depth=1), RectifiedFlow(), prediction="velocity")
    save_model(tmp_path / "model", den)
    out = tmp_path / "sched.json"
    result = search_schedule_cmd(
        SearchArgs(
            model=str(tmp_path / "model"),
            nfe=3,
            n_calib=16,
            n_eval=16,
            iterations=2,
            learn=True,
            lsd_iterations=2,
            out=str(out),
            progress=False,
        )
    )
    sched = Schedule.load(out)
    assert sched.steps == 3 and sched.meta["method"] == "lsd" and sched.coefficients
    assert sched.meta["model"] == str(tmp_path / "model")
    assert math.isfinite(result["held_out_error"]) and "held-out" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--model is required"):
        search_schedule_cmd(SearchArgs())
    # the same through the `onestep` command line
    from onestep.core.cli import main

    argv = ["search-schedule", "--model", str(tmp_path / "model"), "--nfe", "2", "--method",
            "autodiffusion", "--iterations", "2", "--n-calib", "16", "--n-eval", "0",
            "--out", str(tmp_path / "cli.json"), "--no-progress"]
    assert main(argv) == 0
    assert Schedule.load(tmp_path / "cli.json").steps == 2
    with pytest.raises(ValueError, match="add --learn"):
        search_schedule_cmd(SearchArgs(model=str(tmp_path / "model"), method="none"))


def test_errors_are_clear():
    path = VP("linear")
    den = mixture(path, "eps")
    noise = torch.randn(8, 2, dtype=F64)
    with pytest.raises(ValueError, match="nfe must be a positive integer"):
        search.search_schedule(den, nfe=0, noise=noise)
    with pytest.raises(ValueError, match="unknown search method 'random'"):
        search.search_schedule(den, nfe=3, noise=noise, method="random")
    with pytest.raises(ValueError, match="floating-point batch"):
        search.search_schedule(den, nfe=3, noise=torch.zeros(8, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="reference must be the rk45 endpoint"):
        search.search_schedule(den, nfe=3, noise=noise, reference=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="fixed deterministic"):
        search.search_schedule(
            den, nfe=3, noise=noise, method="autodiffusion", solver="euler_a", reference=noise
        )
    with pytest.raises(ValueError, match="base must be a Schedule of 3 steps"):
        search.learn_sampler(
            den, nfe=3, noise=noise, base=Schedule(torch.tensor([1.0, 0.5, 0.0], dtype=F64))
        )
    times = torch.tensor([0.9, 0.5, 0.1, 0.0], dtype=F64)
    with pytest.raises(ValueError, match="orders 1..3"):
        search.sample_usf(den, noise, times, orders=[4, 2, 1])
    with pytest.raises(ValueError, match="got 2 predictions for 3 steps"):
        search.sample_usf(den, noise, times, predictions=["x0", "eps"])
    with pytest.raises(ValueError, match="step 1 has 2 Taylor terms"):
        search.sample_usf(den, noise, times, coefficients=[[1.0], [1.0], [1.0]])
    sched = Schedule(
        times, orders=(1, 2, 1), predictions=("x0", "eps", "x0"), meta={"solver": "usf"}
    )
    with pytest.raises(ValueError, match="for the 'usf' solver; pass solver=None"):
        sample(den, noise, nfe=3, schedule=sched, solver="dpm++2m")
    with pytest.raises(ValueError, match="cost 3 NFE, not nfe=4"):
        sample(den, noise, nfe=4, schedule=sched)
