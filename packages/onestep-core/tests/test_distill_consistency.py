"""Trajectory distillation, part 1: progressive distillation, consistency distillation (CD),
improved consistency training (iCT) and segment-wise multistep CD, on tiny CPU runs."""

import math
from dataclasses import replace

import pytest
import torch

from onestep.core.denoiser import Denoiser
from onestep.core.distill.consistency import METHODS as CONSISTENCY_METHODS
from onestep.core.distill.consistency import (
    CDConfig,
    CDDistiller,
    ICTConfig,
    ICTDistiller,
    SegmentCDConfig,
    SegmentCDDistiller,
    cd_loss,
    consistency_distance,
    ict_loss,
    ict_num_points,
    ict_point_probs,
    karras_times,
    segment_cd_loss,
    teacher_ode_step,
)
from onestep.core.distill.progressive import METHODS as PROGRESSIVE_METHODS
from onestep.core.distill.progressive import (
    ProgressiveConfig,
    ProgressiveDistiller,
    ddim_step,
    ddim_target_x0,
    make_student,
)
from onestep.core.metrics import sliced_wasserstein
from onestep.core.nn import MLP, EDMPrecond
from onestep.core.paths import EDM, VP, RectifiedFlow
from onestep.core.sampling import sample
from onestep.core.train import TrainConfig, Trainer

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def float32_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


def one_step_sw2(distiller, held_out, nfe=1, n=1000, seed=7):
    """Sliced W2 between `nfe`-step student samples (fixed noise) and held-out data."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, *held_out.shape[1:], generator=g)
    with torch.no_grad():
        x = distiller.generator().generate(noise, nfe=nfe, generator=g)
    return sliced_wasserstein(x, held_out)


def train(distiller, data, steps, batch=128, seed=0):
    """A plain loop (the Trainer is exercised separately); returns the per-step logs."""
    g = torch.Generator().manual_seed(seed)
    gd = torch.Generator().manual_seed(seed + 1)
    logs = []
    for step in range(steps):
        x = data[torch.randint(0, len(data), (batch,), generator=gd)]
        logs.append(distiller.step(x, step=step, generator=g))
    return logs


def fixed_loss(fn, batch, seed=3):
    """A loss function evaluated on a fixed batch and fixed randomness (no gradient)."""
    with torch.no_grad():
        return fn(batch, torch.Generator().manual_seed(seed))[0].item()


# ------------------------------------------------------------------------------------------------
# Math (no torch.testing.assert_close: its first call imports for ~15 s)


def gaussian_denoiser(path, c=0.7):
    """The exact x0 denoiser of data ~ N(0, c^2 I): x0 = alpha c^2 x / (alpha^2 c^2 + sigma^2)."""

    def model(x, t):
        a = path.alpha(t.double()).to(x).reshape(-1, *[1] * (x.ndim - 1))
        s = path.sigma(t.double()).to(x).reshape(-1, *[1] * (x.ndim - 1))
        return a * c * c * x / (a * a * c * c + s * s)

    return Denoiser(model, path, prediction="x0")


@pytest.mark.parametrize("path", [RectifiedFlow(), VP("linear"), EDM()], ids=["rf", "vp", "edm"])
def test_teacher_ode_step_matches_the_exact_flow(path):
    """On Gaussian data the ODE maps x_t to x_t' = x_t sqrt(a'^2 c^2 + s'^2) / sqrt(a^2 c^2 + s^2).
    Euler's error is first order, Heun's second order: halving the step cuts the local error by
    about 4x and 8x."""
    torch.set_default_dtype(torch.float64)
    c = 0.7
    den = gaussian_denoiser(path, c)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def err(solver, t, h):
        def scale(u):
            return torch.sqrt(path.alpha(u) ** 2 * c * c + path.sigma(u) ** 2)

        exact = x * scale(torch.tensor(t - h)) / scale(torch.tensor(t))
        return (teacher_ode_step(den, x, t, t - h, solver=solver) - exact).abs().max().item()

    t = 0.6
    for solver, order in (("euler", 1), ("heun", 2)):
        ratio = err(solver, t, 0.02) / err(solver, t, 0.01)
        assert ratio == pytest.approx(2 ** (order + 1), rel=0.25), (solver, ratio)
    assert err("heun", t, 0.02) < 0.5 * err("euler", t, 0.02)


def test_ddim_target_x0_lands_on_the_target():
    """One DDIM step from (x_t, t) with x0 = x~ reaches x_s exactly (Alg. 2's x~), on any path."""
    torch.set_default_dtype(torch.float64)
    g = torch.Generator().manual_seed(0)
    for path in (RectifiedFlow(), VP("cosine"), EDM()):
        x_t, x_s = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
        t = torch.rand(8, generator=g) * 0.8 + 0.2
        s = t * torch.rand(8, generator=g)
        x0 = ddim_target_x0(path, x_t, t, x_s, s)

        def model(x, tt, x0=x0):
            return x0

        jumped = ddim_step(Denoiser(model, path, prediction="x0"), x_t, t, s)
        assert (jumped - x_s).abs().max().item() < 1e-12, path


def test_boundary_condition(flow_teacher, vp_teacher):
    """f(x, 0) = x0 prediction at t = 0 equals x for RF velocity, VP eps, VP v (the "auto" student
    of an eps teacher) and EDM-preconditioned networks."""
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    edm = Denoiser(
        EDMPrecond(MLP(2, hidden=16, time_scale=250.0)), EDM(), prediction="x0", time_input="sigma"
    )
    v_student = make_student(vp_teacher)
    assert v_student.prediction == "v"
    for den in (flow_teacher, vp_teacher, v_student, edm):
        with torch.no_grad():
            assert (den.x0(x, 0.0) - x).abs().max().item() < 1e-6, den


def test_ict_curriculum_and_noise_distribution():
    # Eq. 8 with the paper's K = 400k: K' = 50k, N doubles from 11 to 1281
    assert ict_num_points(0, 400_000) == 11
    assert ict_num_points(49_999, 400_000) == 11
    assert ict_num_points(50_000, 400_000) == 21
    assert ict_num_points(350_000, 400_000) == 1281
    assert ict_num_points(10**7, 400_000) == 1281
    # the discretised lognormal: a distribution whose mode sits near exp(P_mean)
    sigmas = torch.exp(torch.linspace(math.log(0.002), math.log(80.0), 200, dtype=torch.float64))
    p = ict_point_probs(sigmas, -1.1, 2.0)
    assert p.shape == (199,) and p.sum().item() == pytest.approx(1.0)
    mode = sigmas[p.argmax()].item()
    assert math.exp(-1.1) / 1.2 < mode < math.exp(-1.1) * 1.2


def test_karras_times_and_distance():
    path = RectifiedFlow()
    t = karras_times(18, path)
    sig = path.sigma_ve(t)
    assert t.shape == (18,) and bool((t[1:] > t[:-1]).all())
    assert sig[0].item() == pytest.approx(0.002, rel=1e-6)
    assert sig[-1].item() == pytest.approx(80.0, rel=1e-6)
    a, b = torch.zeros(2, 4), torch.ones(2, 4)
    assert consistency_distance(a, b, "l2").tolist() == [1.0, 1.0]
    c = 0.00054 * 2.0
    ph = consistency_distance(a, b, "pseudo_huber")  # sqrt(4 + c^2) - c
    assert ph[0].item() == pytest.approx(math.sqrt(4 + c * c) - c)
    with pytest.raises(ValueError, match="unknown metric"):
        consistency_distance(a, b, "lpips")


def test_ict_loss_vanishes_on_the_exact_consistency_function():
    """For data at one point c the consistency function is f(x, t) = c: the consistency-training
    loss is 0 there (pseudo-Huber of 0 is 0) and positive for the identity f(x, t) = x."""
    path = RectifiedFlow()
    c = torch.tensor([0.5, -1.0])
    x = c.expand(64, 2).clone()
    times = karras_times(21, path)

    def const(xt, t):
        return c.expand_as(xt)

    exact = Denoiser(const, path, prediction="x0")
    identity = Denoiser(lambda xt, t: xt, path, prediction="x0")
    g = torch.Generator().manual_seed(0)
    zero, logs = ict_loss(exact, x, times=times, generator=g)
    assert zero.item() == 0.0 and logs["distance"] == 0.0
    assert ict_loss(identity, x, times=times, generator=g)[0].item() > 0.1


# ------------------------------------------------------------------------------------------------
# Distillation runs: the loss falls and one-step samples move to the data


def test_progressive_flow(flow_teacher, toy_data):
    """Two rounds 4 -> 2 -> 1 steps: the one-step student ends close to the 4-step teacher."""
    data, held = toy_data
    torch.manual_seed(0)
    cfg = ProgressiveConfig(start_steps=4, steps_per_round=100)
    d = ProgressiveDistiller(flow_teacher, cfg)
    assert cfg.rounds == 2 and cfg.total_steps == 200
    noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = sample(flow_teacher, noise, nfe=4, solver="ddim", schedule="uniform")

    def gap():  # student 1 step vs teacher 4 DDIM steps from the same noise
        with torch.no_grad():
            return (d.generator().generate(noise, nfe=1) - ref).pow(2).mean().item()

    gap0, sw0 = gap(), one_step_sw2(d, held)
    logs = train(d, data, cfg.total_steps)
    gap1, sw1 = gap(), one_step_sw2(d, held)
    assert d.student_steps == 1 and logs[-1]["round"] == 1.0
    # each round's loss falls from its start (the new teacher) to its end
    for k in range(2):
        r = [entry["loss"] for entry in logs if entry["round"] == k]
        assert sum(r[-20:]) < 0.5 * sum(r[:20]), k
    assert gap1 < 0.2 * gap0, (gap0, gap1)
    assert sw1 < 0.3 * sw0 and sw1 < 0.25, (sw0, sw1)
    print(f"progressive flow: one-step SW2 {sw0:.3f} -> {sw1:.3f}")


def test_progressive_vp(vp_teacher, toy_data):
    """A discrete-VP eps teacher, one round 4 -> 2 with the "auto" (v) student: its two steps get
    closer to the data than the untrained student's two steps."""
    data, held = toy_data
    torch.manual_seed(0)
    cfg = ProgressiveConfig(start_steps=4, final_steps=2, steps_per_round=100)
    d = ProgressiveDistiller(vp_teacher, cfg)
    assert d.student.prediction == "v" and d.t_max == 1.0
    sw0 = one_step_sw2(d, held, nfe=2)
    logs = train(d, data, cfg.total_steps)
    sw1 = one_step_sw2(d, held, nfe=2)
    r = [entry["loss"] for entry in logs]
    assert sum(r[-20:]) < 0.5 * sum(r[:20])
    assert sw1 < 0.6 * sw0 and sw1 < 0.35, (sw0, sw1)
    print(f"progressive vp (4 -> 2): two-step SW2 {sw0:.3f} -> {sw1:.3f}")


@pytest.mark.parametrize("teacher_name, steps", [("flow_teacher", 150), ("vp_teacher", 200)])
def test_cd(teacher_name, steps, toy_data, request):
    """CD from the teacher's ODE; with the eps teacher the student is "auto" v-parameterized."""
    teacher = request.getfixturevalue(teacher_name)
    data, held = toy_data
    torch.manual_seed(0)
    d = CDDistiller(teacher, CDConfig(num_points=10))
    batch = held[:512]

    def loss(x, g):
        return cd_loss(d.student, d.target(), teacher, x, times=d.times, generator=g)

    loss0, sw0 = fixed_loss(loss, batch), one_step_sw2(d, held)
    train(d, data, steps)
    loss1, sw1 = fixed_loss(loss, batch), one_step_sw2(d, held)
    assert loss1 < 0.5 * loss0, (loss0, loss1)
    assert sw1 < 0.75 * sw0 and sw1 < 0.25, (sw0, sw1)
    sw2 = one_step_sw2(d, held, nfe=2)  # multistep consistency sampling (Alg. 1)
    if teacher_name == "flow_teacher":
        assert sw2 < 0.3, sw2
    print(f"cd {teacher_name}: one-step SW2 {sw0:.3f} -> {sw1:.3f} (2 steps {sw2:.3f})")


def test_ict(flow_teacher, toy_data):
    """Consistency training from data alone, fine-tuning from the teacher's weights (init="teacher";
    from scratch: tests/test_fidelity_phased_sim_ict.py): the one-step map moves towards the
    probability-flow ODE's map, here the teacher's 32-step Heun solution from the same noise,
    without ever calling the teacher."""
    data, held = toy_data
    torch.manual_seed(0)
    d = ICTDistiller(flow_teacher, ICTConfig(total_steps=100, init="teacher"))
    noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(5))
    t0 = d.t_start
    # the generator starts from sigma(t0) * noise: solve the teacher's ODE from the same point
    ode = noise * flow_teacher.path.sigma(torch.tensor(t0)).item()
    times = torch.linspace(t0, 0.0, 33, dtype=torch.float64).tolist()
    for a, b in zip(times[:-1], times[1:], strict=True):
        ode = teacher_ode_step(flow_teacher, ode, a, b, solver="heun")

    def gap():
        with torch.no_grad():
            return (d.generator().generate(noise, nfe=1) - ode).pow(2).mean().item()

    calls = []
    hook = flow_teacher.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        gap0, sw0 = gap(), one_step_sw2(d, held)
        logs = train(d, data, 100)
        gap1, sw1 = gap(), one_step_sw2(d, held)
    finally:
        hook.remove()
    assert not calls, "iCT must not evaluate the teacher"
    assert logs[0]["num_points"] == 11 and logs[-1]["num_points"] == 1281
    assert gap1 < 0.3 * gap0, (gap0, gap1)
    assert sw1 < 0.3 * sw0 and sw1 < 0.25, (sw0, sw1)
    print(f"ict flow: one-step SW2 {sw0:.3f} -> {sw1:.3f}, gap to the ODE {gap0:.3f} -> {gap1:.3f}")


def test_segment_cd(flow_teacher, toy_data):
    """S = 2 segments: two student steps beat the initial student's two DDIM steps."""
    data, held = toy_data
    torch.manual_seed(0)
    d = SegmentCDDistiller(flow_teacher, SegmentCDConfig(segments=2, steps_per_segment=4))
    assert d.boundaries() == [1.0, 0.5]
    batch = held[:512]

    def loss(x, g):
        return segment_cd_loss(
            d.student, d.target(), flow_teacher, x, segments=2, steps_per_segment=4, generator=g
        )

    loss0, sw0 = fixed_loss(loss, batch), one_step_sw2(d, held, nfe=2)
    train(d, data, 60)
    loss1, sw1 = fixed_loss(loss, batch), one_step_sw2(d, held, nfe=2)
    assert loss1 < 0.5 * loss0, (loss0, loss1)
    assert sw1 < 0.5 * sw0 and sw1 < 0.2, (sw0, sw1)
    print(f"segment_cd flow (S=2): two-step SW2 {sw0:.3f} -> {sw1:.3f}")


def test_one_segment_is_cd(flow_teacher, toy_data):
    """With S = 1 the segment loss is the CD loss on the uniform grid 0, 1/M, ..., 1."""
    x = toy_data[1][:256]
    student = make_student(flow_teacher)
    times = torch.linspace(0.0, 1.0, 9, dtype=torch.float64)
    with torch.no_grad():
        seg, _ = segment_cd_loss(
            student,
            flow_teacher,
            flow_teacher,
            x,
            segments=1,
            steps_per_segment=8,
            generator=torch.Generator().manual_seed(1),
        )
        cd, _ = cd_loss(
            student,
            flow_teacher,
            flow_teacher,
            x,
            times=times,
            generator=torch.Generator().manual_seed(1),
        )
    assert seg.item() > 0 and seg.item() == pytest.approx(cd.item(), rel=1e-4)


def test_segment_generator_uses_one_evaluation_per_segment(flow_teacher):
    d = SegmentCDDistiller(flow_teacher, SegmentCDConfig(segments=4))
    calls = []
    d.student.model.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        x = d.generator().generate(torch.randn(5, 2), nfe=4)
    assert x.shape == (5, 2) and len(calls) == 4


# ------------------------------------------------------------------------------------------------
# Any shape, conditioning, Trainer, checkpoints, configs


def all_methods():
    return {**PROGRESSIVE_METHODS, **CONSISTENCY_METHODS}


def test_registry():
    assert set(all_methods()) == {"progressive", "cd", "ict", "segment_cd"}
    for name, (cfg_cls, dist_cls, desc) in all_methods().items():
        assert dist_cls.kind == name and isinstance(desc, str) and desc
        cfg_cls().validate()
        if name == "ict":  # toy scale: squared L2 and a longer curriculum (see toy_defaults)
            toy = cfg_cls.toy_defaults()
            assert (toy.metric, toy.total_steps) == ("l2", 16000)
            assert replace(toy, metric="pseudo_huber", total_steps=4000) == cfg_cls()
            assert cfg_cls.toy_defaults(total_steps=100).total_steps == 100
        else:
            assert cfg_cls.toy_defaults() == cfg_cls()


def test_ict_fresh_student(flow_teacher):
    """init="scratch" (the default, as the paper) trains a fresh network of the teacher's
    architecture; init="teacher" (ECT-style fine-tuning) starts from its weights."""
    d = ICTDistiller(flow_teacher, ICTConfig())
    assert d.student.model.config == flow_teacher.model.config
    pairs = zip(d.student.parameters(), flow_teacher.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)
    tuned = ICTDistiller(flow_teacher, ICTConfig(init="teacher"))
    pairs = zip(tuned.student.parameters(), flow_teacher.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


@pytest.mark.parametrize("name", ["progressive", "cd", "ict", "segment_cd"])
@pytest.mark.parametrize("kind", ["rf_velocity", "vp_eps"])
def test_images_with_cond(name, kind):
    """(B, C, H, W) data and class labels go through step and generate on any path."""
    torch.manual_seed(0)
    net = MLP(16, hidden=32, depth=1, num_classes=3, time_scale=1.0 if kind == "vp_eps" else 1e3)
    if kind == "vp_eps":
        teacher = Denoiser(net, VP.ddpm_linear(100), prediction="eps", time_input="index")
    else:
        teacher = Denoiser(net, RectifiedFlow(), prediction="velocity")
    cfg_cls, dist_cls, _ = all_methods()[name]
    small = {
        "progressive": dict(start_steps=4, steps_per_round=1),
        "cd": dict(num_points=5),
        "ict": dict(total_steps=4),
        "segment_cd": dict(segments=2, steps_per_segment=2),
    }[name]
    d = dist_cls(teacher, cfg_cls(**small))
    x, cond = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        logs = d.step((x, cond), step=step, generator=g)
        assert all(math.isfinite(v) for v in logs.values()), logs
    with torch.no_grad():
        for nfe in (1, 2):
            out = d.generator().generate(torch.randn(8, 1, 4, 4), cond=cond, nfe=nfe, generator=g)
            assert out.shape == (8, 1, 4, 4) and bool(torch.isfinite(out).all())


def _weights(d):
    return {
        k: v.clone()
        for name, m in d.modules().items()
        for k, v in ((f"{name}.{k}", v) for k, v in m.state_dict().items())
    }


@pytest.mark.parametrize("name", ["progressive", "cd"])
def test_trainer_checkpoint_and_resume(name, flow_teacher, toy_data, tmp_path):
    """A run cut at step 3 and resumed to 8 equals an uninterrupted run (progressive crosses a
    round boundary at step 4 after the resume; CD carries its EMA target)."""
    data = toy_data[0][:512]
    cfg_cls, dist_cls, _ = all_methods()[name]
    cfg = (
        cfg_cls(start_steps=4, steps_per_round=4)
        if name == "progressive"
        else cfg_cls(num_points=6)
    )

    def run(out, steps, resume=False):
        torch.manual_seed(0)
        d = dist_cls(flow_teacher, cfg)
        tc = TrainConfig(
            steps=steps,
            batch_size=16,
            out_dir=out,
            ckpt_every=3,
            log_every=1,
            progress=False,
            resume=resume,
        )
        Trainer(tc).fit(d, data)
        return d

    straight = run(tmp_path / "a", 8)
    run(tmp_path / "b", 3)
    resumed = run(tmp_path / "b", 8, resume=True)
    wa, wb = _weights(straight), _weights(resumed)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    if name == "progressive":
        assert resumed.round == straight.round == 1
        assert not torch.equal(
            wa["round_teacher.model.out.weight"],
            _weights(dist_cls(flow_teacher, cfg))["round_teacher.model.out.weight"],
        )


@pytest.mark.parametrize(
    "cfg_cls, kwargs, match",
    [
        (ProgressiveConfig, dict(start_steps=12), "power of two"),
        (ProgressiveConfig, dict(start_steps=4, final_steps=4), "power of two"),
        (ProgressiveConfig, dict(weighting="snr"), "weighting"),
        (ProgressiveConfig, dict(lr=-1.0), "lr must be positive"),
        (ProgressiveConfig, dict(steps_per_round=0), "steps_per_round"),
        (ProgressiveConfig, dict(student_prediction="noise"), "student_prediction"),
        (CDConfig, dict(num_points=1), "num_points"),
        (CDConfig, dict(solver="rk4"), "solver"),
        (CDConfig, dict(metric="lpips"), "metric"),
        (CDConfig, dict(target_ema=1.0), "target_ema"),
        (CDConfig, dict(sigma_min=100.0), "sigma_min"),
        (CDConfig, dict(lr=float("nan")), "NaN"),
        (ICTConfig, dict(s1=5), "s1"),
        (ICTConfig, dict(total_steps=0), "total_steps"),
        (ICTConfig, dict(p_std=0.0), "p_std"),
        (ICTConfig, dict(weighting="snr"), "weighting"),
        (ICTConfig, dict(huber_c=-1.0), "huber_c"),
        (SegmentCDConfig, dict(segments=0), "segments"),
        (SegmentCDConfig, dict(t_max=1.5), "t_max"),
        (SegmentCDConfig, dict(ema_decay=1.5), "ema_decay"),
    ],
)
def test_config_errors(cfg_cls, kwargs, match, flow_teacher):
    dist_cls = {
        ProgressiveConfig: ProgressiveDistiller,
        CDConfig: CDDistiller,
        ICTConfig: ICTDistiller,
        SegmentCDConfig: SegmentCDDistiller,
    }[cfg_cls]
    with pytest.raises(ValueError, match=match):
        dist_cls(flow_teacher, cfg_cls(**kwargs))

