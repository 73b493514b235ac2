"""The sampler `sample(denoiser, noise, nfe=k)` runs when given neither a solver nor a schedule
(onestep.core.sampling.default_sampler): its table covers every path kind and NFE, it spends
exactly k network calls, and on a toy teacher of each path kind its endpoint error to RK45 at
NFE 4 is no worse than the old default's (DPM-Solver++(2M) on the logSNR schedule)."""

import math

import pytest
import torch

from onestep.core import solvers
from onestep.core.data import GaussianMixture
from onestep.core.denoiser import Denoiser
from onestep.core.paths import EDM, VP, Affine, RectifiedFlow
from onestep.core.sampling import DEFAULTS, default_sampler, path_kind, sample
from onestep.core.schedules import SCHEDULES, clip_t_max
from onestep.core.search import endpoint_error

F64 = torch.float64
ANGLES = torch.arange(8, dtype=F64) * math.pi / 4
RING = GaussianMixture(  # 8 modes on a circle, as the 8gaussians toy, but wider
    torch.stack([2 * ANGLES.cos(), 2 * ANGLES.sin()], 1),
    torch.eye(2, dtype=F64).expand(8, 2, 2) * 0.25,
    torch.full((8,), 1 / 8, dtype=F64),
)
PATHS = {
    "vp": [VP("linear"), VP("cosine"), VP.ddpm_linear(1000)],
    "flow": [RectifiedFlow(), Affine(lambda t: 1 - t, lambda t: t)],
    "edm": [EDM(), EDM(sigma_max=10.0, rho=3.0)],
}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def exact(path):
    """The exact x0 network of RING on `path`: a toy teacher with no training error."""

    def net(x, t):
        c = path.coefficients(t)
        col = (lambda v: v.reshape(-1, 1).to(x.dtype))
        return RING.denoise(x.double(), col(c.alpha), col(c.sigma)).to(x.dtype)

    return Denoiser(net, path, prediction="x0")


class Counting(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, *args):
        self.calls += 1
        return self.net(*args)


def test_the_table_covers_every_path_kind_and_nfe():
    assert set(DEFAULTS) == set(PATHS)
    for kind, paths in PATHS.items():
        assert all(path_kind(p) == kind for p in paths), kind
        rows = DEFAULTS[kind]
        assert rows[-1][0] == math.inf, f"{kind}: the last row must cover every NFE"
        assert [r[0] for r in rows] == sorted(r[0] for r in rows)
        for nfe in range(1, 65):
            solver, schedule = default_sampler(paths[0], nfe)
            assert solver in solvers.SOLVERS and schedule in SCHEDULES
            assert not solvers.SOLVERS[solver].stochastic
    assert path_kind(Affine(lambda t: torch.cos(t), lambda t: torch.sin(t))) == "vp"
    with pytest.raises(ValueError, match="nfe must be a positive integer"):
        default_sampler(VP("linear"), 0)
    with pytest.raises(ValueError, match="nfe must be a positive integer"):
        sample(exact(VP("linear")), torch.zeros(2, 2, dtype=F64), nfe=None)


@pytest.mark.parametrize("kind", list(PATHS))
def test_the_default_spends_exactly_nfe_and_is_what_it_says(kind):
    noise = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    for path in PATHS[kind]:
        den = exact(path)
        counted = Denoiser(Counting(den.model), path, prediction="x0")
        for nfe in range(1, 11):
            counted.model.calls = 0
            x = sample(counted, noise, nfe=nfe)
            assert counted.model.calls == nfe, (path, nfe)
            solver, schedule = default_sampler(path, nfe)
            spelled = sample(den, noise, nfe=nfe, solver=solver, schedule=schedule,
                             t_max=clip_t_max(path))
            assert torch.equal(x, spelled), (path, nfe)
            # a solver alone keeps the logsnr schedule; a schedule alone gets the default solver
            assert torch.equal(sample(den, noise, nfe=nfe, solver="dpm++2m"),
                               sample(den, noise, nfe=nfe, solver="dpm++2m", schedule="logsnr"))
            assert torch.equal(sample(den, noise, nfe=nfe, schedule="karras"),
                               sample(den, noise, nfe=nfe, solver=solver, schedule="karras"))


def _errors(den, noise, nfes):
    with torch.no_grad():
        ref = sample(den, noise, nfe=None, solver="rk45", rtol=1e-6, atol=1e-6)
        new = {n: endpoint_error(sample(den, noise, nfe=n), ref) for n in nfes}
        old = {n: endpoint_error(sample(den, noise, nfe=n, solver="dpm++2m", schedule="logsnr"),
                                 ref) for n in nfes}
    return new, old


@pytest.mark.parametrize("teacher", ["vp_teacher", "flow_teacher"])
def test_the_default_beats_dpmpp_2m_logsnr_on_the_toy_teachers(teacher, request):
    """The session's trained toy teachers (discrete VP eps, rectified-flow velocity)."""
    den = request.getfixturevalue(teacher)
    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    new, old = _errors(den, noise, [4])
    assert new[4] <= old[4], (new, old)


@pytest.mark.parametrize("path", [VP("linear"), VP("cosine"), EDM()], ids=["vp", "cosine", "edm"])
def test_the_default_beats_dpmpp_2m_logsnr_on_exact_teachers(path):
    """The exact x0 of the ring mixture on the continuous VP paths and on EDM (no trained toy
    teacher of these kinds in conftest)."""
    noise = torch.randn(512, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    new, old = _errors(exact(path), noise, [4])
    assert new[4] <= old[4], (new, old)
