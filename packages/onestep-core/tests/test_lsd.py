"""learn_sampler's two learners (onestep.core.search): LSD as Fu et al. 2025 define it (one scale
of the model output per step, every step's state matched to the teacher's with equal weight,
each scale by its own step's gradient) and the endpoint learner; held-out selection; errors."""

import math

import pytest
import torch

from onestep.core import search
from onestep.core.cli_search import SearchArgs, search_schedule_cmd
from onestep.core.data import GaussianMixture
from onestep.core.denoiser import Denoiser
from onestep.core.io import save_model
from onestep.core.nn import MLP
from onestep.core.paths import VP, RectifiedFlow
from onestep.core.sampling import sample
from onestep.core.schedules import Schedule, uniform_logsnr

F64 = torch.float64
N_CALIB, N_HELD = 128, 256


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


MIX = GaussianMixture(
    torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]], dtype=F64),
    torch.eye(2, dtype=F64).expand(3, 2, 2) * 0.09,
    torch.tensor([0.3, 0.3, 0.4], dtype=F64),
)


def _col(v, x):
    return v.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def mixture(path, prediction="eps"):
    """The exact network of a 2-D Gaussian mixture (as in test_search): a nonlinear ODE."""

    def net(x, t):
        c = path.coefficients(t)
        return MIX.denoise(x.double(), _col(c.alpha, x), _col(c.sigma, x)).to(x.dtype)

    return Denoiser(net, path, prediction="x0") if prediction == "x0" else _as(net, path)


def _as(net, path):
    """The mixture's eps network (x0 -> eps by x = alpha x0 + sigma eps)."""

    def eps(x, t):
        c = path.coefficients(t)
        return (x - _col(c.alpha, x) * net(x, t)) / _col(c.sigma, x)

    return Denoiser(eps, path, prediction="eps")


def states_of(den, noise, times, coefficients, **plan):
    """The USF sampler's states (K, N, ...) after every step, from noise scaled to times[0]."""
    seen = []
    x = noise * den.path.sigma(times[0]).item()
    end = search.sample_usf(
        den, x, times, coefficients=coefficients, callback=lambda d: seen.append(d["x"]), **plan
    )
    return torch.stack(seen[1:] + [end])


def scaled(coefficients, phi):
    return [[p * c for c in step] for p, step in zip(phi, coefficients, strict=True)]


# -- on the toy teachers: LSD improves on where it starts ----------------------------------------
@pytest.fixture(scope="module")
def references(flow_teacher, vp_teacher):
    """Calibration and held-out noise and the held-out RK45 endpoints, once per teacher."""
    out = {}
    for name, den in (("flow", flow_teacher), ("vp", vp_teacher)):
        noise = torch.randn(N_CALIB + N_HELD, 2, generator=torch.Generator().manual_seed(11))
        with torch.no_grad():
            ref = sample(den, noise[N_CALIB:], nfe=None, solver="rk45")
        out[name] = (den, noise[:N_CALIB], noise[N_CALIB:], ref)
    return out


@pytest.mark.parametrize("teacher", ["flow", "vp"])
def test_lsd_lowers_the_endpoint_error_of_its_start(references, teacher):
    den, calib, held, ref = references[teacher]
    nfe = 4
    learned = search.learn_sampler(den, nfe=nfe, noise=calib, iterations=60, progress=False)
    m = learned.meta
    assert m["method"] == "lsd" and m["optimiser"] == "adam" and m["base"] == "dpm++2m"
    assert m["selection"] == "heldout" and m["n_train"] + m["n_heldout"] == N_CALIB
    assert m["heldout_error"] < m["init_heldout_error"] and m["calibration_error"] < m["init_error"]
    # one scale per step, times the base's (dpm++2m's) multipliers
    base = search.dpmpp_2m_coefficients(den.path, learned.times)
    assert len(m["scales"]) == nfe and learned.coefficients == scaled(base, m["scales"])
    with torch.no_grad():
        start = sample(den, held, nfe=nfe, solver="dpm++2m", schedule="logsnr")
        end = sample(den, held, nfe=nfe, schedule=learned)
    assert search.endpoint_error(end, ref) < 0.9 * search.endpoint_error(start, ref)


# -- the definition -------------------------------------------------------------------------------
def test_unit_scales_are_the_base_sampler_exactly():
    path = VP("linear")
    den = mixture(path)
    noise = torch.randn(40, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    times = uniform_logsnr(4, path)
    base = Schedule(
        times,
        orders=(1, 2, 3, 1),
        predictions=("x0", "eps", "x0", "x0"),
        correctors=(False, True, False, False),
        coefficients=[[0.9], [1.0, 1.1, 0.8], [1.2, 0.7, 1.0], [1.05]],
        meta={"solver": "usf", "method": "evolutionary"},
    )
    for b in (None, base):
        start = search.learn_sampler(den, nfe=4, noise=noise, base=b, iterations=0, progress=False)
        assert start.meta["scales"] == [1.0] * 4 and start.meta["evaluations"] == 1
        assert torch.equal(start.times, times)
        want = b.coefficients if b else search.dpmpp_2m_coefficients(path, times)
        assert start.coefficients == want
        x = noise * path.sigma(times[0]).item()
        opts = (
            {}
            if b is None
            else dict(orders=b.orders, predictions=b.predictions, correctors=b.correctors)
        )
        assert torch.equal(
            sample(den, noise, nfe=4, schedule=start),
            search.sample_usf(den, x, times, coefficients=want, **opts),
        )


def on_nodes(den, noise, t0, nodes, points=16):
    """A teacher trajectory from t0 and the times [t0, its lam nodes, 0]: a student on these
    times is matched to the trajectory's states at those nodes (interpolation weight 1)."""
    traj = search.teacher_trajectory(den, noise, t0=t0, points=points)
    inner = den.path.t_from_log_snr(2 * traj.lam[list(nodes)])
    times = torch.cat([torch.tensor([t0], dtype=F64), inner, torch.zeros(1, dtype=F64)])
    return traj, times


def replaced(traj, nodes, made):
    """The trajectory with the states `made` (K, N, ...) at its nodes and at t = 0."""
    states = traj.states.clone()
    states[list(nodes)] = made[:-1]
    return search.Trajectory(traj.t0, traj.lam, states, made[-1])


def test_lsd_recovers_the_scales_that_made_its_teacher():
    """A teacher whose state after every step is the base sampler's with scales phi: LSD's
    per-step loss vanishes only there, so it finds phi."""
    path = VP("linear")
    den = mixture(path)
    noise = torch.randn(32, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    nodes = (5, 11)
    traj, times = on_nodes(den, noise, uniform_logsnr(3, path)[0].item(), nodes)
    base = Schedule(times, meta={"solver": "usf"})  # order 2 in x0, multipliers 1
    ones = [[1.0] * k for k in search.usf_plan(path, times).terms]
    phi = [1.08, 0.93, 1.05]
    teacher = replaced(traj, nodes, states_of(den, noise, times, scaled(ones, phi)))
    learned = search.learn_sampler(
        den, nfe=3, noise=noise, base=base, trajectory=teacher, iterations=100, progress=False
    )
    assert max(abs(a - b) for a, b in zip(learned.meta["scales"], phi, strict=True)) < 3e-3
    assert learned.meta["heldout_error"] < 1e-2 * learned.meta["init_heldout_error"]


def test_each_scale_follows_its_own_step():
    """Alg. 2: scale k moves with the gradient of step k's loss alone. A teacher equal to the
    base sampler except at t_2 leaves the first scale (its step ends at t_1, matched) at 1,
    and moves the second; the endpoint learner, backpropagating through the states (here with
    weight 1 on the intermediate ones), changes the first step to trade errors."""
    path = VP("linear")
    den = mixture(path)
    noise = torch.randn(48, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    nodes = (5, 11)
    traj, times = on_nodes(den, noise, uniform_logsnr(3, path)[0].item(), nodes)
    base = Schedule(times, orders=(1, 1, 1), meta={"solver": "usf"})  # DDIM steps
    made = states_of(den, noise, times, [[1.0]] * 3, orders=(1, 1, 1))
    made[1] = made[1] * 1.2  # the teacher at t_2 only
    teacher = replaced(traj, nodes, made)
    common = dict(nfe=3, noise=noise, base=base, trajectory=teacher, progress=False)
    lsd = search.learn_sampler(den, **common, iterations=100)
    phi = lsd.meta["scales"]
    assert abs(phi[0] - 1) < 1e-4 and abs(phi[1] - 1) > 0.05
    end = search.learn_sampler(
        den, **common, iterations=40, method="endpoint", trajectory_weight=2.0
    )
    assert abs(end.coefficients[0][0] - 1) > 1e-2


def test_every_step_counts():
    """Moving the teacher at one intermediate time (t_1) moves LSD's scales; an endpoint-only
    fit (weight 0 on the intermediate states) is unchanged to the bit."""
    path = VP("linear")
    den = mixture(path)
    noise = torch.randn(32, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    nodes = (5, 11)
    traj, times = on_nodes(den, noise, uniform_logsnr(3, path)[0].item(), nodes)
    base = Schedule(times, meta={"solver": "usf"})
    made = states_of(den, noise, times, None)
    moved = made.clone()
    moved[0] = moved[0] * 1.3
    common = dict(nfe=3, noise=noise, base=base, iterations=60, progress=False)
    lsd, end = [], []
    for m in (made, moved):
        teacher = replaced(traj, nodes, m)
        lsd.append(search.learn_sampler(den, **common, trajectory=teacher))
        end.append(
            search.learn_sampler(
                den, **common, trajectory=teacher, method="endpoint", trajectory_weight=0
            )
        )
    assert end[0].coefficients == end[1].coefficients
    assert end[0].meta["method"] == "endpoint" and end[0].meta["optimiser"] == "lbfgs"
    assert max(abs(v - 1) for v in lsd[0].meta["scales"]) < 1e-3  # its teacher: scales 1
    assert abs(lsd[1].meta["scales"][0] - 1) > 0.1


# -- held-out selection ---------------------------------------------------------------------------
class Seen(torch.nn.Module):
    """The network, recording the rows it is called on at time t0, and whether with grad."""

    def __init__(self, net, t0):
        super().__init__()
        self.net, self.t0, self.calls = net, t0, []

    def forward(self, x, t):
        at_t0 = (t - self.t0).abs() < 1e-12
        if bool(at_t0.any()):
            self.calls.append((torch.is_grad_enabled(), x[at_t0].detach().clone()))
        return self.net(x, t)


def rows_in(rows, batch):
    """Whether each row of `rows` is one of batch's rows."""
    return [bool(((batch - r).abs().amax(1) < 1e-12).any()) for r in rows]


def test_heldout_selection_uses_samples_no_gradient_saw():
    path = VP("linear")
    den = mixture(path)
    noise = torch.randn(40, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    other = torch.randn(24, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    t0 = uniform_logsnr(3, path)[0].item()
    traj = search.teacher_trajectory(den, noise, t0=t0, points=16)
    sigma0 = path.sigma(torch.tensor(t0, dtype=F64)).item()
    for method in search.LEARNERS:
        common = dict(nfe=3, trajectory=traj, method=method, iterations=6, progress=False)
        # the last quarter of `noise` is held out: the model sees it only without gradients,
        # and the errors recorded are the returned schedule's on each part
        seen = Seen(den.model, t0)
        split = search.learn_sampler(Denoiser(seen, path, prediction="eps"), noise=noise, **common)
        m = split.meta
        assert (m["n_train"], m["n_heldout"], m["selection"]) == (30, 10, "heldout")
        train, held = noise[:30] * sigma0, noise[30:] * sigma0
        with_grad = torch.cat([x for g, x in seen.calls if g])
        without = torch.cat([x for g, x in seen.calls if not g])
        assert all(rows_in(with_grad, train)) and not any(rows_in(with_grad, held))
        assert all(rows_in(held, without))
        with torch.no_grad():
            x = sample(den, noise, nfe=3, schedule=split)
        assert search.endpoint_error(x[:30], traj.endpoint[:30]) == pytest.approx(
            m["calibration_error"], rel=1e-9
        )
        assert search.endpoint_error(x[30:], traj.endpoint[30:]) == pytest.approx(
            m["heldout_error"], rel=1e-9
        )
        # heldout_noise: a separate set, with its own teacher; heldout=0 selects on the training
        held = search.learn_sampler(den, noise=noise, heldout_noise=other, **common)
        alone = search.learn_sampler(den, noise=noise, heldout=0, **common)
        assert held.meta["n_train"] == 40 and held.meta["n_heldout"] == 24
        assert alone.meta["selection"] == "train" and "heldout_error" not in alone.meta
        assert held.meta["init_error"] == alone.meta["init_error"]  # the same start and path
        assert held.meta["train_loss"] >= alone.meta["train_loss"]  # alone: its minimum
        with torch.no_grad():
            ref = sample(den, other, nfe=None, solver="rk45")
            err = search.endpoint_error(sample(den, other, nfe=3, schedule=held), ref)
        assert err == pytest.approx(held.meta["heldout_error"], rel=1e-3)


# -- the command, and errors ---------------------------------------------------------------------
def test_search_schedule_command_takes_the_learner(tmp_path):
    den = Denoiser(MLP(2, hidden=16, depth=1), RectifiedFlow(), prediction="velocity")
    save_model(tmp_path / "model", den)
    for method in ("endpoint", "lsd"):
        search_schedule_cmd(
            SearchArgs(
                model=str(tmp_path / "model"),
                nfe=2,
                n_calib=16,
                n_eval=0,
                method="none",
                learn=True,
                lsd_method=method,
                lsd_iterations=2,
                out=str(tmp_path / "s.json"),
                progress=False,
            )
        )
        sched = Schedule.load(tmp_path / "s.json")
        assert sched.meta["method"] == method and sched.meta["n_heldout"] == 4
    with pytest.raises(ValueError, match="unknown --lsd-method 'lsd2'"):
        search_schedule_cmd(
            SearchArgs(model=str(tmp_path / "model"), learn=True, lsd_method="lsd2")
        )


def test_errors_are_clear():
    path = VP("linear")
    den = mixture(path)
    noise = torch.randn(8, 2, dtype=F64)
    with pytest.raises(ValueError, match="unknown learn_sampler method 'lsd2'"):
        search.learn_sampler(den, nfe=3, noise=noise, method="lsd2")
    with pytest.raises(ValueError, match=r"heldout must be a fraction in \[0, 1\)"):
        search.learn_sampler(den, nfe=3, noise=noise, heldout=1.0)
    with pytest.raises(ValueError, match="leaves none to learn from"):
        search.learn_sampler(den, nfe=3, noise=noise[:1])
    with pytest.raises(ValueError, match="heldout_noise must be a non-empty floating-point"):
        search.learn_sampler(den, nfe=3, noise=noise, heldout_noise=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="pass heldout_cond"):
        search.learn_sampler(
            den, nfe=3, noise=noise, cond=torch.zeros(8), heldout_noise=torch.zeros(4, 2)
        )
    with pytest.raises(ValueError, match="lr must be a positive number"):
        search.learn_sampler(den, nfe=3, noise=noise, lr=0.0)
    assert math.isfinite(
        search.learn_sampler(den, nfe=3, noise=noise, iterations=1, progress=False).meta[
            "heldout_error"
        ]
    )
