"""Paths, conversions and the Denoiser against closed forms, in float64."""

import itertools

import pytest
import torch

from onestep.core.convert import KINDS, convert, to_x0_eps
from onestep.core.denoiser import TIME_INPUTS, Denoiser
from onestep.core.paths import EDM, VP, Affine, RectifiedFlow, path_from_config


@pytest.fixture(autouse=True)
def float64():
    """Every tensor in this module is float64; restore the default for other modules."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


PATHS = {
    "vp_linear": VP("linear"),
    "vp_cosine": VP("cosine"),
    "vp_discrete": VP.ddpm_linear(1000),
    "edm": EDM(),
    "rectified_flow": RectifiedFlow(),
    "affine": Affine(lambda t: torch.cos(t * torch.pi / 2), lambda t: torch.sin(t * torch.pi / 2)),
}
T = torch.linspace(0.02, 0.98, 17, dtype=torch.float64)


def times(name):
    """Test times per path: off the discrete grid's kinks (where d_alpha jumps), and for EDM where
    sigma = 80 t^7 is large enough that float64 resolves x_t - x0 (it is 1e-10 at t=0.02)."""
    edm = torch.linspace(0.3, 0.98, 17, dtype=torch.float64)
    return {"vp_discrete": T + 0.3e-3, "edm": edm}.get(name, T)


@pytest.mark.parametrize("name", PATHS)
def test_derivatives_match_finite_differences(name):
    path, h = PATHS[name], 1e-6
    t = times(name)
    for f, df in ((path.alpha, path.d_alpha), (path.sigma, path.d_sigma)):
        fd = (f(t + h) - f(t - h)) / (2 * h)
        torch.testing.assert_close(df(t), fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", PATHS)
def test_log_snr_inverts_and_decreases(name):
    path = PATHS[name]
    lam = path.log_snr(T)
    assert (lam[1:] < lam[:-1]).all()
    torch.testing.assert_close(path.t_from_log_snr(lam), T, rtol=0, atol=1e-9)
    torch.testing.assert_close(path.t_from_sigma_ve(path.sigma_ve(T)), T, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", PATHS)
def test_endpoints(name):
    path = PATHS[name]
    assert path.sigma(0.0).item() == 0.0 and path.alpha(0.0).item() == 1.0


def test_discrete_vp_matches_ddpm_alphas_cumprod():
    betas = torch.linspace(1e-4, 0.02, 1000)
    path = VP.from_betas(betas)
    acp = torch.cumprod(1 - betas, 0)
    n = torch.arange(1000)
    t = path.t_from_index(n)
    torch.testing.assert_close(path.alpha(t) ** 2, acp, rtol=1e-10, atol=0)
    torch.testing.assert_close(path.index(t), n.double())
    vp = path_from_config(path.config)
    torch.testing.assert_close(vp.alpha(T), path.alpha(T))


def test_vp_is_variance_preserving_and_rf_is_linear():
    for path in (VP("linear"), VP("cosine"), VP.ddpm_linear(50)):
        torch.testing.assert_close(path.alpha(T) ** 2 + path.sigma(T) ** 2, torch.ones_like(T))
    rf = RectifiedFlow()
    torch.testing.assert_close(rf.alpha(T), 1 - T)
    torch.testing.assert_close(rf.sigma(T), T)


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize("src,dst", list(itertools.product(KINDS, KINDS)))
def test_every_conversion_round_trips(name, src, dst):
    path = PATHS[name]
    t = times(name)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(17, 3, 4, generator=g)
    pred = torch.randn(17, 3, 4, generator=g)
    there = convert(pred, src, dst, x_t, t, path)
    back = convert(there, dst, src, x_t, t, path)
    torch.testing.assert_close(back, pred, rtol=1e-9, atol=1e-9)


def test_conversions_agree_with_definitions():
    path = VP("cosine")
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(17, 5, generator=g), torch.randn(17, 5, generator=g)
    c = path.coefficients(T)
    a, s, da, ds = (v[:, None] for v in (c.alpha, c.sigma, c.d_alpha, c.d_sigma))
    x_t = a * x0 + s * eps
    expected = {"x0": x0, "eps": eps, "v": a * eps - s * x0, "velocity": da * x0 + ds * eps,
                "score": -eps / s}
    for kind, value in expected.items():
        torch.testing.assert_close(convert(eps, "eps", kind, x_t, T, path), value)
        got_x0, got_eps = to_x0_eps(kind, value, x_t, T, path)
        torch.testing.assert_close(got_x0, x0)
        torch.testing.assert_close(got_eps, eps)


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown prediction kind 'noise'"):
        convert(torch.zeros(2, 1), "eps", "noise", torch.zeros(2, 1), 0.5, RectifiedFlow())
    with pytest.raises(ValueError, match="unknown prediction"):
        Denoiser(lambda x, t: x, RectifiedFlow(), prediction="epsilon")


# -- the exact Gaussian denoiser ------------------------------------------------------------
MU, S0 = 0.7, 1.3  # data ~ N(MU, S0^2) in every coordinate


def gaussian_net(path, kind, time_input):
    """The exact network for Gaussian data, written from the Gaussian formulas directly."""

    def to_t(time):
        time = time.double()
        if callable(time_input):
            return (time - 0.25) / 2.0
        return {
            "t": lambda: time,
            "t1000": lambda: time / 1000,
            "index": lambda: path.t_from_index(time),
            "sigma": lambda: path.t_from_sigma_ve(time),
            "log_sigma": lambda: path.t_from_sigma_ve(time.exp()),
        }[time_input]()

    def net(x, time):
        c = path.coefficients(to_t(time))
        a, s, da, ds = (v[:, None] for v in (c.alpha, c.sigma, c.d_alpha, c.d_sigma))
        var = a**2 * S0**2 + s**2
        score = -(x - a * MU) / var  # marginal N(a MU, a^2 S0^2 + s^2)
        x0 = MU + a * S0**2 / var * (x - a * MU)  # posterior mean (Wiener filter)
        eps = -s * score
        return {"score": score, "x0": x0, "eps": eps, "v": a * eps - s * x0,
                "velocity": da * x0 + ds * eps}[kind]

    return net


@pytest.mark.parametrize("name", ["vp_linear", "vp_discrete", "edm", "rectified_flow"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("time_input", [*TIME_INPUTS, "callable"])
def test_denoiser_recovers_the_closed_form(name, kind, time_input):
    path = PATHS[name]
    if time_input == "index" and name != "vp_discrete":
        pytest.skip("index time needs a discrete path")
    ti = (lambda t: 2.0 * t + 0.25) if time_input == "callable" else time_input
    den = Denoiser(gaussian_net(path, kind, ti), path, prediction=kind, time_input=ti)
    g = torch.Generator().manual_seed(2)
    x_t = torch.randn(17, 4, generator=g) * 2
    t = times(name)
    c = path.coefficients(t)
    a, s = c.alpha[:, None], c.sigma[:, None]
    x0 = MU + a * S0**2 / (a**2 * S0**2 + s**2) * (x_t - a * MU)
    torch.testing.assert_close(den.x0(x_t, t), x0, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(den.eps(x_t, t), (x_t - a * x0) / s, rtol=1e-7, atol=1e-7)


def test_classifier_free_guidance_combines_both_halves():
    path = RectifiedFlow()

    def net(x, t, cond=None):
        return x * 0 + (0.0 if cond is None else cond[:, None].double())

    x = torch.zeros(4, 2)
    cond = torch.tensor([1.0, 2.0, 3.0, 4.0])
    for null in (None, 0.0):
        den = Denoiser(net, path, prediction="velocity", guidance=3.0, null_cond=null)
        # uncond prediction is 0, cond is c: guided = 0 + 3 (c - 0)
        torch.testing.assert_close(den(x, 0.5, cond), 3 * cond[:, None].expand(4, 2))
    assert torch.equal(Denoiser(net, path).with_guidance(1.0)(x, 0.5, cond), net(x, 0.5, cond))


def test_denoiser_rejects_wrong_output_shape_and_times():
    den = Denoiser(lambda x, t: x[:, :1], RectifiedFlow())
    with pytest.raises(ValueError, match="returned shape"):
        den.x0(torch.zeros(3, 2), 0.5)
    den = Denoiser(lambda x, t: x, RectifiedFlow())
    with pytest.raises(ValueError, match="2 times for a batch of 3"):
        den.x0(torch.zeros(3, 2), torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="discrete path"):
        Denoiser(lambda x, t: x, VP(), time_input="index")
