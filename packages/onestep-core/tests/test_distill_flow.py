"""Trajectory family, part 2: reflow, InstaFlow, SlimFlow, MeanFlow and TDM on the toy teachers.

Each method gets a short CPU run in which its loss (or, for TDM, the teacher-vs-student
discrepancy) falls and the student's 1-step samples end closer to held-out data (sliced W2) than
the untrained student's. Exact checks: MeanFlow's total derivative against closed forms and
across JVP implementations, the two-time network reduces to the teacher at initialisation,
TDM's forward transition kernel, and bit-exact checkpoint resume of a multi-phase reflow run.
"""

import copy

import pytest
import torch

from onestep.core.denoiser import Denoiser
from onestep.core.distill.base import DenoiserGenerator
from onestep.core.distill.meanflow import METHODS as MEANFLOW_METHODS
from onestep.core.distill.meanflow import (
    MeanFlowConfig,
    MeanFlowDistiller,
    MeanFlowModel,
    TwoTimeNet,
    meanflow_loss,
    rectified_view,
    sample_two_times,
    total_derivative,
)
from onestep.core.distill.rectified import METHODS as RECTIFIED_METHODS
from onestep.core.distill.rectified import (
    InstaFlowConfig,
    InstaFlowDistiller,
    ReflowConfig,
    ReflowDistiller,
    SlimFlowConfig,
    SlimFlowDistiller,
    anneal_beta,
    anneal_noise,
    smaller_network,
)
from onestep.core.distill.tdm import METHODS as TDM_METHODS
from onestep.core.distill.tdm import TDMConfig, TDMDistiller, tdm_diffuse, tdm_times
from onestep.core.metrics import sliced_wasserstein
from onestep.core.nn import EDMPrecond, UNet
from onestep.core.paths import EDM, VP, RectifiedFlow
from onestep.core.sampling import sample
from onestep.core.train import TrainConfig, Trainer

torch.set_num_threads(1)

N_EVAL = 1000
# small coupling sets for the tests: 2048 pairs from 16-NFE DPM-Solver++ solves
COUPLINGS = dict(num_couplings=2048, coupling_nfe=16, coupling_solver="dpm++2m", progress=False)


@pytest.fixture(autouse=True)
def float32_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


def _noise(n=N_EVAL, seed=7, dim=2):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _sw(gen, held_out, nfe=1):
    x = gen.generate(_noise(), nfe=nfe)
    return sliced_wasserstein(x, held_out, n_projections=128)


def _train(distiller, data, steps, batch=128, seed=0, start=0):
    g, dg = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    logs = []
    for step in range(start, start + steps):
        idx = torch.randint(0, len(data), (batch,), generator=dg)
        logs.append(distiller.step(data[idx], step=step, generator=g))
    return logs


def _mean(logs, key, sl):
    vals = [log[key] for log in logs[sl] if key in log]
    assert vals, f"no {key!r} in the logs"
    return sum(vals) / len(vals)


# ----------------------------------------------------------------------------------------------
# Reflow, InstaFlow, SlimFlow


def test_reflow_straightens_the_flow_teacher(flow_teacher, toy_data):
    train, held = toy_data
    d = ReflowDistiller(flow_teacher, ReflowConfig(reflow_steps=100, lr=2e-3, **COUPLINGS))
    before = _sw(d.generator(), held)  # the teacher itself, one Euler step
    logs = _train(d, train, 100)
    after = _sw(d.generator(), held)
    early, late = (
        _mean(logs, "reflow_loss", slice(0, 20)),
        _mean(logs, "reflow_loss", slice(-20, None)),
    )
    print(f"reflow: 1-step SW2 {before:.3f} -> {after:.3f}; loss {early:.4f} -> {late:.4f}")
    assert late < 0.3 * early
    assert after < 0.4 * before
    noise, x, cond = d.couplings()
    assert noise.shape == x.shape == (2048, 2) and cond is None


def test_reflow_on_the_discrete_vp_eps_teacher(vp_teacher, toy_data):
    """The student re-purposes the eps teacher's weights to predict v ("auto")."""
    train, held = toy_data
    d = ReflowDistiller(vp_teacher, ReflowConfig(reflow_steps=150, lr=2e-3, **COUPLINGS))
    assert d.student.prediction == "v" and vp_teacher.prediction == "eps"
    teacher = _sw(DenoiserGenerator(vp_teacher), held)  # x0 = (x_1 - sigma eps) / 0.006
    before = _sw(d.generator(), held)
    logs = _train(d, train, 150)
    after = _sw(d.generator(), held)
    early, late = (
        _mean(logs, "reflow_loss", slice(0, 30)),
        _mean(logs, "reflow_loss", slice(-30, None)),
    )
    print(
        f"reflow (VP eps -> v): 1-step SW2 {teacher:.3f} (teacher) / {before:.3f} (init) -> "
        f"{after:.3f}; loss {early:.4f} -> {late:.4f}"
    )
    assert late < 0.9 * early  # the teacher's few far-out couplings keep the MSE high
    assert after < 0.6 * before and after < 0.1 * teacher


def test_k_reflow_rounds_regenerate_couplings_from_the_previous_round(flow_teacher, toy_data):
    cfg = ReflowConfig(
        rounds=2,
        reflow_steps=3,
        num_couplings=64,
        coupling_nfe=4,
        coupling_solver="euler",
        progress=False,
    )
    d = ReflowDistiller(flow_teacher, cfg)
    _train(d, toy_data[0], 3, batch=16)
    first = [c.clone() for c in d.couplings()[:2]]
    round1 = copy.deepcopy(d.student.model.state_dict())
    _train(d, toy_data[0], 1, batch=16, start=3)  # first step of round 2
    noise, x, _ = d.couplings()
    assert not torch.equal(noise, first[0])  # fresh noise for the new round
    for k, v in d.snapshot.model.state_dict().items():  # the round-1 model made them
        assert torch.equal(v, round1[k])
    with torch.no_grad():
        expected = sample(d.snapshot, noise[:8], nfe=4, solver="euler")
    torch.testing.assert_close(x[:8], expected)
    assert d.locate(5) == (1, 2) and d.locate(100) == (1, 97)


def test_instaflow_distills_a_one_step_student(flow_teacher, toy_data):
    train, held = toy_data
    cfg = InstaFlowConfig(reflow_steps=80, distill_steps=50, lr=2e-3, distill_lr=1e-3, **COUPLINGS)
    d = InstaFlowDistiller(flow_teacher, cfg)
    before = _sw(d.generator(), held)
    logs = _train(d, train, 130)
    after = _sw(d.generator(), held)
    distill = logs[80:]
    early, late = (
        _mean(distill, "distill_loss", slice(0, 10)),
        _mean(distill, "distill_loss", slice(-10, None)),
    )
    print(
        f"instaflow: 1-step SW2 {before:.3f} -> {after:.3f}; distill loss {early:.4f} -> {late:.4f}"
    )
    assert late < early
    assert after < 0.4 * before
    assert d.couplings() is not None and d._key == "snapshot@1"  # distilled on 2-RF couplings


def test_slimflow_trains_a_smaller_student(flow_teacher, toy_data):
    train, held = toy_data
    cfg = SlimFlowConfig(
        reflow_steps=150,
        anneal_fraction=0.3,
        distill_steps=40,
        lr=3e-3,
        distill_lr=1e-3,
        **COUPLINGS,
    )
    d = SlimFlowDistiller(flow_teacher, cfg)
    n_student = sum(p.numel() for p in d.student.model.parameters())
    n_teacher = sum(p.numel() for p in flow_teacher.model.parameters())
    assert n_student < 0.4 * n_teacher and d.student.model.config["hidden"] == 64
    before = _sw(d.generator(), held)  # the fresh small network
    logs = _train(d, train, 190)
    after = _sw(d.generator(), held)
    early, late = (
        _mean(logs, "reflow_loss", slice(0, 20)),
        _mean(logs[:150], "reflow_loss", slice(-20, None)),
    )
    print(
        f"slimflow: 1-step SW2 {before:.3f} -> {after:.3f}; reflow loss {early:.4f} -> "
        f"{late:.4f}; final guidance loss {logs[-1]['guidance_loss']:.4f}"
    )
    assert logs[0]["beta"] == 1.0 and logs[100]["beta"] == 0.0
    assert late < 0.2 * early
    assert after < 0.6 * before


def test_annealing_and_smaller_networks():
    assert anneal_beta(0, 10) == 1.0 and anneal_beta(5, 10) == 0.5 and anneal_beta(20, 10) == 0
    assert anneal_beta(10, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    z = torch.randn(20000, 3, generator=torch.Generator().manual_seed(0))
    mixed = anneal_noise(z, 0.6, torch.Generator().manual_seed(1))
    assert abs(mixed.std().item() - 1.0) < 0.03  # still unit variance
    corr = (mixed * z).mean().item()
    assert abs(corr - 0.8) < 0.03  # sqrt(1 - 0.36)
    assert torch.equal(anneal_noise(z, 0.0), z)
    unet = UNet(1, base=16, mults=(1, 2))
    assert smaller_network(unet).config["base"] == 8
    with pytest.raises(ValueError, match="student_network"):
        from onestep.core.distill.rectified import _scaled_config

        _scaled_config("nope", {}, 0.5)


# ----------------------------------------------------------------------------------------------
# MeanFlow


class _Analytic(torch.nn.Module):
    """u(z, r, t) = t^2 z + sin(r) z^2, with d/dt along (v, 0, 1) = t^2 v + 2 sin(r) z v + 2 t z."""

    def forward(self, z, r, t, cond=None):
        t, r = t[:, None], r[:, None]
        return t**2 * z + torch.sin(r) * z**2


@pytest.mark.parametrize("method", ["func", "forward_ad", "double_backward"])
def test_total_derivative_matches_the_closed_form(method):
    g = torch.Generator().manual_seed(0)
    z, v = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    t, r = torch.rand(5, generator=g), torch.rand(5, generator=g)
    u, dudt = total_derivative(_Analytic(), z, r, t, v, method=method)
    tt, rr = t[:, None], r[:, None]
    torch.testing.assert_close(u, tt**2 * z + torch.sin(rr) * z**2)
    torch.testing.assert_close(dudt, tt**2 * v + 2 * torch.sin(rr) * z * v + 2 * tt * z)


def test_two_time_net_starts_as_the_teacher_and_jvps_agree(flow_teacher):
    net = TwoTimeNet(copy.deepcopy(flow_teacher.model))  # teacher's own time embedding
    model = MeanFlowModel(net, flow_teacher)
    g = torch.Generator().manual_seed(0)
    z, v = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    t = torch.rand(16, generator=g)
    r = t * torch.rand(16, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model(z, r, t), flow_teacher.velocity(z, t.double()))
    torch.nn.init.normal_(net.net.time_embed.gap.mlp[-1].weight, std=0.1)  # make r matter
    outs = {
        m: total_derivative(model, z, r, t, v, method=m)[1]
        for m in ("func", "forward_ad", "double_backward")
    }
    torch.testing.assert_close(outs["func"], outs["forward_ad"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(outs["func"], outs["double_backward"], rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="rectified-flow"):
        MeanFlowModel(net, Denoiser(net, VP(), prediction="velocity"))
    with pytest.raises(ValueError, match="time_embed"):
        TwoTimeNet(torch.nn.Linear(2, 2))


def test_two_time_sampler_ratio_and_order():
    r, t = sample_two_times(20000, ratio=0.25, generator=torch.Generator().manual_seed(0))
    assert bool((r <= t).all()) and bool(((t > 0) & (t < 1)).all())
    assert abs((r != t).double().mean().item() - 0.25) < 0.02


def test_meanflow_adaptive_weight_sums_over_dimensions():
    """w = 1 / (||delta||^2 + c)^p with ||delta||^2 summed over dimensions (the official code's),
    so the loss of an error delta per coordinate in D dimensions is D delta^2 / (D delta^2 + c)."""

    class Const(torch.nn.Module):
        def forward(self, z, r, t, cond=None):
            return torch.full_like(z, 0.1)

    for dim in (2, 64):
        x, noise = torch.zeros(4, dim), torch.zeros(4, dim)
        t = torch.full((4,), 0.5)
        loss, logs = meanflow_loss(Const(), x, noise, t, t, p=1.0, c=1e-3)  # u_tgt = v = 0
        err = dim * 0.01
        assert loss.item() == pytest.approx(err / (err + 1e-3), rel=1e-5)
        assert logs["mse"] == pytest.approx(0.01, rel=1e-5)
        loss, _ = meanflow_loss(Const(), x, noise, t, t, p=0.0)
        assert loss.item() == pytest.approx(err, rel=1e-5)


def test_meanflow_from_data_is_the_default(flow_teacher, toy_data):
    """The paper's training: v = eps - x and a fresh student of the teacher's architecture; the
    teacher network is never evaluated. mode="teacher" (distillation) starts from the teacher's
    weights, and init_from_teacher overrides the start in either mode."""
    train, held = toy_data
    assert MeanFlowConfig().mode == "data"
    torch.manual_seed(0)
    d = MeanFlowDistiller(flow_teacher, MeanFlowConfig(jvp="double_backward", lr=3e-3))
    assert not _same_weights(d.student.net.net, flow_teacher.model)
    calls = []
    hook = flow_teacher.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        before = _sw(d.generator(), held)
        logs = _train(d, train, 200, batch=96)
        after = _sw(d.generator(), held)
    finally:
        hook.remove()
    assert not calls, "MeanFlow from data must not evaluate the teacher"
    early, late = _mean(logs, "loss", slice(0, 20)), _mean(logs, "loss", slice(-20, None))
    print(f"meanflow from data: 1-step SW2 {before:.3f} -> {after:.3f}; loss {early:.3f} -> "
          f"{late:.3f}")
    assert after < 0.5 * before  # the adaptive-weighted loss stays near 1 from data
    for cfg, starts_as_teacher in [
        (MeanFlowConfig(mode="teacher"), True),
        (MeanFlowConfig(init_from_teacher=True), True),
        (MeanFlowConfig(mode="teacher", init_from_teacher=False), False),
    ]:
        net = MeanFlowDistiller(flow_teacher, cfg).student.net.net
        assert _same_weights(net, flow_teacher.model) == starts_as_teacher, cfg


def _same_weights(student, teacher) -> bool:
    """Whether the two-time student holds the teacher's weights outside the time embedding."""
    w = student.state_dict()
    return all(torch.equal(w[k], v) for k, v in teacher.state_dict().items()
               if not k.startswith("time_embed"))


def test_meanflow_distills_a_one_step_generator(flow_teacher, toy_data):
    train, held = toy_data
    cfg = MeanFlowConfig(mode="teacher", lr=3e-3, jvp="double_backward")
    d = MeanFlowDistiller(flow_teacher, cfg)
    untrained = _sw(
        MeanFlowDistiller(flow_teacher, MeanFlowConfig(mode="teacher", time_scale=None))
        .generator(), held
    )  # exactly the teacher, one Euler step
    before = _sw(d.generator(), held)
    logs = _train(d, train, 170, batch=96)
    after = _sw(d.generator(), held)
    after2 = _sw(d.generator(), held, nfe=2)
    early, late = _mean(logs, "mse", slice(0, 20)), _mean(logs, "mse", slice(-20, None))
    print(
        f"meanflow: 1-step SW2 {untrained:.3f} (teacher) / {before:.3f} (init) -> {after:.3f} "
        f"(2-step {after2:.3f}); mse {early:.4f} -> {late:.4f}"
    )
    assert late < 0.3 * early
    assert after < 0.5 * min(before, untrained)


# ----------------------------------------------------------------------------------------------
# TDM


def test_tdm_times_and_transition_kernel():
    i, t_i, t_mid, t = tdm_times(5000, 4, generator=torch.Generator().manual_seed(0))
    assert set(i.tolist()) == {1, 2, 3, 4}
    torch.testing.assert_close(t_mid, t_i - 0.25)
    assert bool((t >= t_mid.clamp_min(0.02)).all()) and bool((t <= t_i - 0.01 + 1e-12).all())
    # diffusing x_mid = alpha_m x0 + sigma_m eps to t: x_t = alpha_t x0 + sigma_t m, where m is
    # N(0, I) when eps is
    path = RectifiedFlow()
    g = torch.Generator().manual_seed(1)
    x0, eps, n = (torch.randn(20000, 2, generator=g) for _ in range(3))
    tm, tt = (
        torch.full((20000,), 0.3, dtype=torch.float64),
        torch.full((20000,), 0.6, dtype=torch.float64),
    )
    x_t, mixed = tdm_diffuse(path, x0, eps, tm, tt, n)
    torch.testing.assert_close(x_t, 0.4 * x0 + 0.6 * mixed)
    assert abs(mixed.std().item() - 1.0) < 0.02


def test_tdm_matches_the_teacher_trajectory(flow_teacher, toy_data):
    train, held = toy_data
    d = TDMDistiller(flow_teacher, TDMConfig(num_steps=2, lr=3e-4, fake_lr=1e-3))
    with torch.no_grad():
        reference = sample(flow_teacher, _noise(seed=11), nfe=32, solver="dpm++2m")

    def discrepancy():
        with torch.no_grad():
            x = d.generator().generate(_noise(seed=12), nfe=2)
        return sliced_wasserstein(x, reference, n_projections=128)

    gap_before, before = discrepancy(), _sw(d.generator(), held)
    logs = _train(d, train, 90, batch=96)
    gap_after, after = discrepancy(), _sw(d.generator(), held)
    after2 = _sw(d.generator(), held, nfe=2)
    print(
        f"tdm: 1-step SW2 {before:.3f} -> {after:.3f} (2-step {after2:.3f}); teacher-vs-student "
        f"2-step SW2 {gap_before:.3f} -> {gap_after:.3f}"
    )
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in logs)
    assert gap_after < 0.6 * gap_before
    assert after < 0.7 * before


# ----------------------------------------------------------------------------------------------
# Trainer, checkpoints, shapes, conditions, configs


TINY = dict(num_couplings=128, coupling_nfe=4, coupling_solver="euler", progress=False)
RESUMABLE = {
    # two reflow rounds then distillation on the 2nd round's couplings: 3 phases of 4 steps
    "instaflow": lambda t: InstaFlowDistiller(
        t, InstaFlowConfig(rounds=2, reflow_steps=4, distill_steps=4, **TINY)
    ),
    "instaflow_regenerate": lambda t: InstaFlowDistiller(
        t,
        InstaFlowConfig(rounds=2, reflow_steps=4, distill_steps=4, store_couplings=False, **TINY),
    ),
    "slimflow": lambda t: SlimFlowDistiller(
        t, SlimFlowConfig(reflow_steps=3, distill_steps=3, ema_decay=0.9, **TINY)
    ),
    "meanflow": lambda t: MeanFlowDistiller(
        t, MeanFlowConfig(ema_decay=0.9, jvp="double_backward")
    ),
    "tdm": lambda t: TDMDistiller(t, TDMConfig(num_steps=2)),
}


@pytest.mark.parametrize("name", list(RESUMABLE))
def test_trainer_resume_is_exact(flow_teacher, toy_data, tmp_path, name):
    """Trainer runs every method; a run cut at a checkpoint and resumed (at a phase boundary
    and inside a phase for the phased methods) ends bit-identical to an uninterrupted one."""
    data = toy_data[0][:2000]

    def fit(steps, out, resume=False):
        torch.manual_seed(0)
        d = RESUMABLE[name](flow_teacher)
        tc = TrainConfig(
            steps=steps, batch_size=32, log_every=2, ckpt_every=0, out_dir=out, progress=False
        )
        Trainer(tc).fit(d, data, resume=resume)
        return d

    total, splits = (12, (6, 8)) if name.startswith("instaflow") else (6, (4,))
    full = fit(total, tmp_path / "full")
    for split in splits:
        fit(split, tmp_path / f"part{split}")
        resumed = fit(total, tmp_path / f"part{split}", resume=True)
        for key, module in full.modules().items():
            other = resumed.modules()[key].state_dict()
            for k, v in module.state_dict().items():
                assert torch.equal(v, other[k]), (split, key, k)
    if name.startswith("instaflow"):
        path = tmp_path / "full" / "checkpoints" / "step_00000012" / "state.pt"
        extra = torch.load(path, weights_only=True)["extra"]
        assert ("noise" in extra) == (name == "instaflow") and extra["key"] == "snapshot@2"


def test_image_shapes_and_conditions():
    """Every method runs on (B, C, H, W) data with a conditional UNet teacher."""
    torch.manual_seed(0)
    net = UNet(1, base=8, mults=(1,), num_classes=3)
    teacher = Denoiser(net, RectifiedFlow(), prediction="velocity")
    x = torch.randn(8, 1, 4, 4)
    cond = torch.randint(0, 3, (8,))
    tiny = dict(
        num_couplings=16, coupling_nfe=2, coupling_solver="euler", coupling_batch=8, progress=False
    )
    distillers = [
        ReflowDistiller(teacher, ReflowConfig(reflow_steps=1, **tiny), conds=cond),
        InstaFlowDistiller(teacher, InstaFlowConfig(reflow_steps=1, distill_steps=1, **tiny)),
        SlimFlowDistiller(teacher, SlimFlowConfig(reflow_steps=1, distill_steps=1, **tiny)),
        MeanFlowDistiller(teacher, MeanFlowConfig()),
        TDMDistiller(teacher, TDMConfig(num_steps=2)),
    ]
    g = torch.Generator().manual_seed(0)
    for d in distillers:
        for step in range(2):
            logs = d.step((x, cond), step=step, generator=g)
            assert all(torch.isfinite(torch.tensor(v)) for v in logs.values()), (d.kind, logs)
        with torch.no_grad():
            for nfe in (1, 2):
                out = d.generator().generate(torch.randn(8, 1, 4, 4), cond=cond, nfe=nfe)
                assert out.shape == (8, 1, 4, 4) and bool(torch.isfinite(out).all())
        if hasattr(d, "couplings"):
            noise, xs, c = d.couplings()
            assert noise.shape == (16, 1, 4, 4) and c.shape == (16,)
    assert distillers[2].student.model.config["base"] == 4


def _gaussian_x0(path, s2=0.3):
    """The exact x0 predictor E[x | x_t] for data N(0, s2 I) on `path`, as a network called with
    the path's own time t."""
    def model(x_t, t):
        c = path.coefficients(t.to(torch.float64))
        a, sg = c.alpha.reshape(-1, 1), c.sigma.reshape(-1, 1)
        return (a * s2 / (a * a * s2 + sg * sg) * x_t).to(x_t.dtype)
    return model


@pytest.mark.parametrize("path", [EDM(), VP("linear")], ids=["edm", "vp"])
def test_rectified_view_is_the_teachers_flow_on_the_rectified_path(path):
    """For Gaussian data the exact denoiser is known on every path: the view of the exact EDM
    (or VP) teacher gives the exact rectified-flow velocity, within the teacher's noise range."""
    torch.set_default_dtype(torch.float64)
    try:
        teacher = Denoiser(_gaussian_x0(path), path, prediction="x0", time_input="t")
        exact = Denoiser(_gaussian_x0(RectifiedFlow()), RectifiedFlow(), prediction="x0",
                         time_input="t")
        view = rectified_view(teacher)
        assert view.path.name == RectifiedFlow().name and rectified_view(exact) is exact
        z = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
        t = torch.tensor([0.05, 0.2, 0.5, 0.8, 0.95, 0.98], dtype=torch.float64)
        torch.testing.assert_close(view.velocity(z, t), exact.velocity(z, t), rtol=1e-6,
                                   atol=1e-6)
    finally:
        torch.set_default_dtype(torch.float32)


def test_meanflow_distills_an_edm_teacher():
    """An EDM teacher (EDMPrecond around a UNet, the image package's default) is read on the
    rectified-flow path; the student is a two-time copy of its UNet, and a short run lowers the
    MeanFlow loss and samples finite images."""
    torch.manual_seed(0)
    net = UNet(1, base=8, mults=(1,), num_classes=3, time_scale=250.0)
    teacher = Denoiser(EDMPrecond(net), EDM(), prediction="x0", time_input="sigma", null_cond=3)
    d = MeanFlowDistiller(teacher, MeanFlowConfig(mode="teacher", jvp="double_backward", lr=3e-3))
    assert isinstance(d.student.net, TwoTimeNet) and isinstance(d.student.net.net, UNet)
    assert d.student.net.net is not net
    x = 0.5 * torch.randn(16, 1, 4, 4)
    cond = torch.randint(0, 3, (16,))
    g = torch.Generator().manual_seed(0)
    losses = [d.step((x, cond), step=i, generator=g)["mse"] for i in range(40)]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses
    with torch.no_grad():
        out = d.generator().generate(torch.randn(4, 1, 4, 4), cond=cond[:4])
    assert out.shape == (4, 1, 4, 4) and bool(torch.isfinite(out).all())
    with pytest.raises(ValueError, match="time_scale=None"):
        MeanFlowDistiller(teacher, MeanFlowConfig(time_scale=None))


def test_registries():
    methods = {**RECTIFIED_METHODS, **MEANFLOW_METHODS, **TDM_METHODS}
    assert set(methods) == {"reflow", "instaflow", "slimflow", "meanflow", "tdm"}
    for name, (config_cls, distiller_cls, description) in methods.items():
        assert distiller_cls.kind == name and isinstance(description, str)
        config_cls().validate()
        config_cls.toy_defaults().validate()
    # toy MeanFlow: mostly r != t and an EMA (see MeanFlowConfig.toy_defaults); overridable
    toy = MeanFlowConfig.toy_defaults()
    assert (toy.ratio_r_neq_t, toy.ema_decay, toy.jvp) == (0.75, 0.995, "double_backward")
    assert MeanFlowConfig.toy_defaults(ema_decay=None, ratio_r_neq_t=0.25).ema_decay is None


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (ReflowConfig, {"rounds": 0}, "rounds"),
        (ReflowConfig, {"lr": -1.0}, "lr"),
        (ReflowConfig, {"coupling_solver": "nope"}, "coupling_solver"),
        (ReflowConfig, {"time_sampler": "beta"}, "time_sampler"),
        (ReflowConfig, {"num_couplings": 0}, "num_couplings"),
        (InstaFlowConfig, {"distill_loss": "lpips"}, "distill_loss"),
        (InstaFlowConfig, {"distill_source": "data"}, "distill_source"),
        (SlimFlowConfig, {"width_factor": 0.0}, "width_factor"),
        (SlimFlowConfig, {"anneal_schedule": "step"}, "anneal_schedule"),
        (SlimFlowConfig, {"guidance_t_range": (0.8, 0.2)}, "guidance_t_range"),
        (MeanFlowConfig, {"mode": "student"}, "mode"),
        (MeanFlowConfig, {"init_from_teacher": "yes"}, "init_from_teacher"),
        (MeanFlowConfig, {"ratio_r_neq_t": 1.5}, "ratio_r_neq_t"),
        (MeanFlowConfig, {"jvp": "numeric"}, "jvp"),
        (MeanFlowConfig, {"time_scale": -1.0}, "time_scale"),
        (TDMConfig, {"num_steps": 0}, "num_steps"),
        (TDMConfig, {"num_steps": 50}, "too short"),
        (TDMConfig, {"loss": "l1"}, "loss"),
        (TDMConfig, {"fake_lr": 0.0}, "fake_lr"),
    ],
)
def test_config_errors_are_clear(cls, kwargs, match, flow_teacher):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs).validate()
    distiller = {
        ReflowConfig: ReflowDistiller,
        InstaFlowConfig: InstaFlowDistiller,
        SlimFlowConfig: SlimFlowDistiller,
        MeanFlowConfig: MeanFlowDistiller,
        TDMConfig: TDMDistiller,
    }[cls]
    with pytest.raises(ValueError, match=match):
        distiller(flow_teacher, cls(**kwargs))


def test_nan_in_config_is_rejected(flow_teacher):
    with pytest.raises(ValueError, match="NaN"):
        MeanFlowDistiller(flow_teacher, MeanFlowConfig(lr=float("nan")))
    with pytest.raises(ValueError, match="InstaFlowConfig"):
        InstaFlowDistiller(flow_teacher, ReflowConfig())
