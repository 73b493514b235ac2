"""Distribution matching family: DMD, DMD2, Phased DMD and DisBack on the toy teachers (CPU).

Every method gets a short run in which its loss (or the teacher-vs-student discrepancy, MMD to
the teacher's 50-NFE samples) falls and the student's samples end closer to held-out data (sliced
W2) than the untrained student's (initialised from the teacher). Closed-form checks: the
distribution matching gradient on exact Gaussian denoisers, and the unbiasedness of Phased DMD's
subinterval score matching target on Gaussian data.
"""

import math

import pytest
import torch

from onestep.core.convert import from_x0_eps
from onestep.core.data import gaussian
from onestep.core.denoiser import Denoiser
from onestep.core.distill.disback import METHODS as DISBACK_METHODS
from onestep.core.distill.disback import DisBackConfig, DisBackDistiller
from onestep.core.distill.dmd import METHODS as DMD_METHODS
from onestep.core.distill.dmd import (
    DiscriminatorHead,
    DMD2Config,
    DMD2Distiller,
    DMDConfig,
    DMDDistiller,
    distribution_matching_loss,
)
from onestep.core.distill.phased_dmd import METHODS as PHASED_METHODS
from onestep.core.distill.phased_dmd import (
    PhasedDMDConfig,
    PhasedDMDDistiller,
    subinterval_target,
)
from onestep.core.metrics import mmd, sliced_wasserstein
from onestep.core.paths import VP, RectifiedFlow
from onestep.core.sampling import sample
from onestep.core.train import TrainConfig, Trainer

torch.set_num_threads(1)

N_EVAL = 1000


@pytest.fixture(autouse=True)
def float32_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


def _noise(n=N_EVAL, seed=7):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _samples(gen, nfe=1):
    return gen.generate(_noise(), nfe=nfe, generator=torch.Generator().manual_seed(8))


def _train(distiller, data, steps, batch=64, seed=0):
    g, dg = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    logs = []
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=dg)
        logs.append(distiller.step(data[idx], step=step, generator=g))
    return logs


def _mean(logs, key):
    vals = [log[key] for log in logs if key in log]
    assert vals, f"no {key!r} in the logs"
    return sum(vals) / len(vals)


@pytest.fixture(scope="module")
def flow_reference(flow_teacher):
    """The flow teacher's 50-NFE samples of the evaluation noise."""
    with torch.no_grad():
        return sample(flow_teacher, _noise(), nfe=50)


def _assert_improves(distiller, held_out, reference, train, nfe=1):
    """Train, then check SW2 to held-out data and MMD to the teacher's samples both fall."""
    gen = distiller.generator()
    before = _samples(gen, nfe)
    sw0, mmd0 = sliced_wasserstein(before, held_out), mmd(before, reference)
    logs = train()
    after = _samples(distiller.generator(), nfe)
    sw1, mmd1 = sliced_wasserstein(after, held_out), mmd(after, reference)
    print(f"SW2 {sw0:.3f} -> {sw1:.3f}, MMD to teacher {mmd0:.4f} -> {mmd1:.4f}")
    assert sw1 < 0.75 * sw0, (sw0, sw1)
    assert mmd1 < 0.3 * mmd0, (mmd0, mmd1)
    return logs, (sw0, sw1)


# ----------------------------------------------------------------------------------------------
# closed forms


def _exact(gm, path):
    """A Denoiser giving the exact posterior mean E[x0 | x_t] of a Gaussian mixture."""

    def model(x_t, t):
        c = path.coefficients(t)
        return gm.denoise(x_t, c.alpha, c.sigma)

    return Denoiser(model, path, prediction="x0")


def test_distribution_matching_gradient_closed_form():
    """Real N(0, I), fake N(mu, I): the gradient on x points along mu, so descent moves the
    samples towards the real distribution; it vanishes when fake == real."""
    path = RectifiedFlow()
    mu = torch.tensor([1.5, -0.5])
    real, fake = _exact(gaussian(2), path), _exact(gaussian(2, mean=mu), path)
    x = (mu + torch.randn(4096, 2, generator=torch.Generator().manual_seed(0))).requires_grad_()
    g = torch.Generator().manual_seed(1)
    loss, logs = distribution_matching_loss(x, real, fake, generator=g)
    loss.backward()
    direction = x.grad.mean(0)
    cos = torch.nn.functional.cosine_similarity(direction, mu, dim=0)
    assert cos > 0.99 and logs["dm_grad"] > 0.1
    x.grad = None
    loss, logs = distribution_matching_loss(x, real, real, generator=g)
    loss.backward()
    assert loss.item() == 0.0 and x.grad.abs().max() == 0.0


@pytest.mark.parametrize("path", [RectifiedFlow(), VP("linear")], ids=["flow", "vp"])
@pytest.mark.parametrize("kind", ["x0", "velocity"])
def test_subinterval_target_is_unbiased(path, kind):
    """E[target | x_t] of the subinterval objective equals the exact marginal prediction at t for
    Gaussian data (everything is jointly Gaussian, so a linear fit of target on x_t is the
    conditional mean); the naive target that treats x_s as clean data is biased."""
    g = torch.Generator().manual_seed(0)
    m, v, s, n = 1.5, 0.25, 0.4, 100_000
    t = torch.full((n,), 0.7, dtype=torch.float64)
    x0 = m + v**0.5 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    cs = path.coefficients(torch.tensor(s))
    x_s = cs.alpha * x0 + cs.sigma * torch.randn(n, 1, generator=g, dtype=torch.float64)
    noise = torch.randn(n, 1, generator=g, dtype=torch.float64)
    x_t, target, weight = subinterval_target(kind, path, x_s, s, t, noise)
    ct = path.coefficients(t)
    a, sg = ct.alpha[:, None], ct.sigma[:, None]
    x0_exact = m + a * v / (a * a * v + sg * sg) * (x_t - a * m)
    exact = from_x0_eps(kind, x0_exact, (x_t - a * x0_exact) / sg, x_t, t, path)

    design = torch.cat([x_t, torch.ones_like(x_t)], 1)  # (n, 2)
    exact_coef = torch.linalg.lstsq(design, exact).solution  # exact is linear in x_t

    def z_score(y):
        """Largest |fitted - exact| coefficient of y ~ x_t, in standard errors of the fit."""
        coef = torch.linalg.lstsq(design, y).solution
        resid_var = (y - design @ coef).var()
        se = (resid_var * torch.linalg.inv(design.T @ design).diagonal()).sqrt()
        return ((coef - exact_coef).flatten().abs() / se).max().item()

    assert z_score(target) < 5
    assert bool(((weight > 0) & (weight <= 1)).all())
    naive_x0 = x_s / cs.alpha
    naive = from_x0_eps(kind, naive_x0, (x_t - a * naive_x0) / sg, x_t, t, path)
    assert z_score(naive) > 25


# ----------------------------------------------------------------------------------------------
# tiny runs


def test_dmd_flow(flow_teacher, toy_data, flow_reference):
    train, held = toy_data
    cfg = DMDConfig.toy_defaults(num_pairs=512, pair_nfe=16, lr=1e-3, ema_decay=None)
    d = DMDDistiller(flow_teacher, cfg)
    logs, _ = _assert_improves(d, held, flow_reference, lambda: _train(d, train, 40))
    assert _mean(logs[-10:], "reg_loss") < 0.5 * _mean(logs[:10], "reg_loss")
    assert d.pairs["noise"].shape == (512, 2) and d.pairs["target"].shape == (512, 2)


def test_dmd_vp(vp_teacher, toy_data):
    """Discrete DDPM eps teacher (alpha(1) = 0.006): the generator starts at t = 0.75 on pure
    noise (see DMDConfig.t_start) with a smaller learning rate."""
    train, held = toy_data
    cfg = DMDConfig.toy_defaults(num_pairs=512, pair_nfe=16, lr=3e-5, ema_decay=None, t_start=0.75)
    d = DMDDistiller(vp_teacher, cfg)
    with torch.no_grad():
        reference = sample(vp_teacher, _noise(), nfe=16)
    logs, _ = _assert_improves(d, held, reference, lambda: _train(d, train, 50))
    assert _mean(logs[-10:], "reg_loss") < 0.7 * _mean(logs[:10], "reg_loss")


def test_dmd2_flow_gan(flow_teacher, toy_data, flow_reference):
    train, held = toy_data
    cfg = DMD2Config.toy_defaults(fake_updates=2, lr=5e-4, fake_lr=5e-4, ema_decay=None)
    d = DMD2Distiller(flow_teacher, cfg)
    logs, _ = _assert_improves(d, held, flow_reference, lambda: _train(d, train, 40, batch=128))
    assert {"gan_loss", "disc_loss", "fake_loss", "dm_loss"} <= set(logs[-1])


def test_dmd2_backward_simulation_inputs(flow_teacher):
    """DMD2 Sec. 4.5: a sample drawn at step k of the generator's grid starts from k steps of the
    current generator itself (x0 prediction, re-noised with fresh noise), never from data."""
    times = (1.0, 0.6, 0.3)
    d = DMD2Distiller(flow_teacher, DMD2Config(times=times, gan_weight=0.0, disc_weight=0.0))
    z, far_data = _noise(64), torch.full((64, 2), 100.0)
    with torch.no_grad():
        out = d._generate(z, far_data, None, torch.Generator().manual_seed(5), grad=False)
        g = torch.Generator().manual_seed(5)
        k = torch.randint(0, len(times), (64,), generator=g)
        xs = [z * flow_teacher.path.sigma(1.0).item()]
        for i in range(1, len(times)):
            x0 = d.student.x0(xs[-1], times[i - 1])
            xs.append(d.diffuse(x0, times[i], torch.randn(x0.shape, generator=g)))
        x_in = torch.stack([xs[int(kj)][j] for j, kj in enumerate(k)])
        expected = d.student.x0(x_in, torch.tensor(times, dtype=torch.float64)[k])
    assert set(k.tolist()) == {0, 1, 2}
    assert torch.allclose(out, expected, atol=1e-5)
    assert out.abs().max() < 20  # nothing of the (far away) data leaked in


def test_phased_dmd_flow(flow_teacher, toy_data, flow_reference):
    train, held = toy_data
    cfg = PhasedDMDConfig.toy_defaults(phase_steps=10, fake_updates=2)
    d = PhasedDMDDistiller(flow_teacher, cfg)
    state = {}

    def run():
        first = _train(d, train, 10)
        state["expert_0"] = {k: v.clone() for k, v in d.gen.experts[0].state_dict().items()}
        state["sw_phase_0"] = sliced_wasserstein(_samples(d.generator(), 2), held)
        return first + _train_from(d, train, 10, 40)

    logs, sw = _assert_improves(d, held, flow_reference, run, nfe=2)
    assert [log["phase"] for log in logs] == [0.0] * 10 + [1.0] * 30
    assert state["sw_phase_0"] < sw[0]  # training expert 0 alone already helps
    # progressive: expert 0 is frozen while phase 1 trains, and the fake restarted for phase 1
    for k, v in d.gen.experts[0].state_dict().items():
        assert torch.equal(v, state["expert_0"][k]), k
    assert d.fake_phase == 1
    with pytest.raises(ValueError, match="nfe=2"):
        d.generator().generate(_noise(4), nfe=1)


def _train_from(distiller, data, start, stop, batch=64, seed=0):
    g, dg = torch.Generator().manual_seed(seed + start), torch.Generator().manual_seed(seed + 99)
    logs = []
    for step in range(start, stop):
        idx = torch.randint(0, len(data), (batch,), generator=dg)
        logs.append(distiller.step(data[idx], step=step, generator=g))
    return logs


def test_disback_flow(flow_teacher, toy_data, flow_reference):
    train, held = toy_data
    cfg = DisBackConfig.toy_defaults(
        num_checkpoints=3, record_steps=21, node_steps=10, fake_updates=2, ema_decay=0.9
    )
    d = DisBackDistiller(flow_teacher, cfg)
    student0 = {k: v.clone() for k, v in d.student.state_dict().items()}
    state = {}

    def run():
        first = _train(d, train, 21)
        state["student"] = {k: v.clone() for k, v in d.student.state_dict().items()}
        return first + _train_from(d, train, 21, 61)

    logs, _ = _assert_improves(d, held, flow_reference, run)
    # stage 1 leaves the generator alone and records a path of growing distance from the teacher
    for k, v in state["student"].items():
        assert torch.equal(v, student0[k]), k
    teacher_w = torch.cat([p.flatten() for p in flow_teacher.parameters()])
    fake_w = torch.cat([p.flatten() for p in d.fake.parameters()])
    dist = [
        torch.cat([p.flatten() for p in node.parameters()]).sub(teacher_w).norm().item()
        for node in d.nodes
    ]
    assert 0 < dist[0] < dist[1], dist
    assert [log.get("node") for log in logs[21::10]] == [2.0, 1.0, 0.0, 0.0]
    assert _mean(logs[:7], "record_loss") > _mean(logs[14:21], "record_loss")
    assert fake_w.sub(teacher_w).norm() > 0


# ----------------------------------------------------------------------------------------------
# Trainer: checkpoint + exact resume (regression pairs, phase state, stage-1 snapshots)


def _tiny(name, teacher):
    torch.manual_seed(0)  # the same initial weights for every run (DMD2's discriminator head)
    if name == "dmd":
        return DMDDistiller(teacher, DMDConfig.toy_defaults(num_pairs=64, pair_nfe=4))
    if name == "dmd2":
        return DMD2Distiller(teacher, DMD2Config.toy_defaults(fake_updates=1))
    if name == "phased_dmd":
        return PhasedDMDDistiller(
            teacher, PhasedDMDConfig.toy_defaults(phase_steps=3, fake_updates=1)
        )
    return DisBackDistiller(
        teacher, DisBackConfig.toy_defaults(num_checkpoints=2, record_steps=4, node_steps=2)
    )


@pytest.mark.parametrize("name", ["dmd", "dmd2", "phased_dmd", "disback"])
def test_trainer_checkpoint_and_exact_resume(name, flow_teacher, toy_data, tmp_path):
    data = toy_data[0][:2048]

    def trainer(out, steps, resume=False):
        return Trainer(
            TrainConfig(
                steps=steps,
                batch_size=32,
                ckpt_every=4,
                out_dir=out,
                progress=False,
                resume=resume,
                seed=3,
            )
        )

    straight = _tiny(name, flow_teacher)
    records = trainer(tmp_path / "a", 8).fit(straight, data)
    assert records and (tmp_path / "a" / "checkpoints" / "latest").is_file()

    first = _tiny(name, flow_teacher)
    trainer(tmp_path / "b", 4).fit(first, data)
    resumed = _tiny(name, flow_teacher)
    trainer(tmp_path / "b", 8, resume=True).fit(resumed, data)
    for key, module in straight.modules().items():
        other = resumed.modules()[key].state_dict()
        for k, v in module.state_dict().items():
            assert torch.equal(v, other[k]), f"{key}.{k} differs after resume"
    nfe = len(straight.config.phase_times) if name == "phased_dmd" else 1
    assert torch.equal(_samples(straight.generator(), nfe), _samples(resumed.generator(), nfe))


@pytest.mark.parametrize("name", ["dmd2", "phased_dmd", "disback"])
def test_vp_teacher_smoke(name, vp_teacher, toy_data):
    """The other methods on the discrete DDPM eps teacher (index time input): every stage runs
    and stays finite (DMD's VP run above checks the improvement)."""
    d = _tiny(name, vp_teacher)
    logs = _train(d, toy_data[0], 6, batch=32)
    assert all(math.isfinite(v) for log in logs for v in log.values())
    x = _samples(d.generator(), len(d.config.phase_times) if name == "phased_dmd" else 1)
    assert x.shape == (N_EVAL, 2) and bool(torch.isfinite(x).all())


# ----------------------------------------------------------------------------------------------
# registry and configs


def test_methods_registry(flow_teacher):
    methods = {**DMD_METHODS, **PHASED_METHODS, **DISBACK_METHODS}
    assert set(methods) == {"dmd", "dmd2", "phased_dmd", "disback"}
    for name, (config_cls, distiller_cls, description) in methods.items():
        assert distiller_cls.kind == name and isinstance(description, str) and description
        config_cls().validate()
        config_cls.toy_defaults().validate()
        assert isinstance(distiller_cls(flow_teacher, config_cls()).generator(), torch.nn.Module)


def test_discriminator_head_any_shape():
    for shapes in [[(3, 16)], [(3, 4, 5)], [(3, 8, 4, 4), (3, 5)]]:
        head = DiscriminatorHead(hidden=8)
        assert head([torch.randn(s) for s in shapes]).shape == (3,)


def test_dmd2_discriminator_separates_real_from_generated(flow_teacher, toy_data):
    """The GAN head on the fake network's middle-block features tells the data from a generator
    far from it (the student at init is the 1-step teacher, sliced W2 ~1 from the data): the
    discriminator loss falls well below chance, 2 ln 2. (A head on per-coordinate features,
    mean-pooled, stayed at chance on 2-D and 8-D data.)"""
    train, _ = toy_data
    cfg = DMD2Config.toy_defaults(fake_updates=1, lr=1e-9, ema_decay=None)
    d = DMD2Distiller(flow_teacher, cfg)
    logs = _train(d, train, 160, batch=128)
    chance = 2 * math.log(2)
    assert _mean(logs[:3], "disc_loss") > 0.9 * chance
    assert _mean(logs[-10:], "disc_loss") < 0.85 * chance


@pytest.mark.parametrize(
    "config_cls, kwargs, match",
    [
        (DMDConfig, {"lr": -1e-4}, "lr must be a positive number"),
        (DMDConfig, {"t_min": 0.5, "t_max": 0.2}, "t_min < t_max"),
        (DMDConfig, {"reg_weight": -0.1}, "reg_weight must be >= 0"),
        (DMDConfig, {"num_pairs": 0}, "num_pairs must be >= 1"),
        (DMDConfig, {"pair_solver": "nope"}, "unknown solver"),
        (DMDConfig, {"ema_decay": 1.5}, "ema_decay"),
        (DMDConfig, {"lr": float("nan")}, "(?i)nan"),
        (DMD2Config, {"fake_updates": 0}, "fake_updates must be >= 1"),
        (DMD2Config, {"gan_weight": -1.0}, "gan_weight must be >= 0"),
        (DMD2Config, {"times": (0.5, 1.0)}, "strictly decreasing"),
        (DMD2Config, {"times": ()}, "at least one time"),
        (DMD2Config, {"betas": (0.9, 1.0)}, "betas"),
        (PhasedDMDConfig, {"phase_times": (1.0, 0.99)}, "phase boundary"),
        (PhasedDMDConfig, {"weighting": "snr"}, "unknown weighting"),
        (PhasedDMDConfig, {"phase_steps": 0}, "phase_steps must be >= 1"),
        (DisBackConfig, {"num_checkpoints": 0}, "num_checkpoints must be >= 1"),
        (DisBackConfig, {"record_steps": 2, "num_checkpoints": 4}, "record_steps"),
        (DisBackConfig, {"node_steps": 0}, "node_steps must be >= 1"),
    ],
)
def test_config_validation(config_cls, kwargs, match, flow_teacher):
    with pytest.raises(ValueError, match=match):
        config_cls(**kwargs).validate()
    distiller_cls = {
        DMDConfig: DMDDistiller,
        DMD2Config: DMD2Distiller,
        PhasedDMDConfig: PhasedDMDDistiller,
        DisBackConfig: DisBackDistiller,
    }
    with pytest.raises(ValueError, match=match):
        distiller_cls[config_cls](flow_teacher, config_cls(**kwargs))



@pytest.mark.parametrize("name", ["dmd2", "sim", "meanflow"])
def test_lr_decay_steps_cosine_decays_the_generator(name, flow_teacher, toy_data):
    """`lr_decay_steps` = K: the generator's learning rate follows a cosine from lr to 0 at
    step K (the fake score's, if any, stays constant)."""
    from onestep.core.distill import get_method, toy_config

    config = toy_config(name, flow_teacher, lr_decay_steps=4)
    d = get_method(name)[1](flow_teacher, config)
    lrs = []
    for step in range(4):
        lrs.append(d.optimizers()["student"].param_groups[0]["lr"])
        d.step(toy_data[0][:32], step=step, generator=torch.Generator().manual_seed(step))
    assert lrs[0] == pytest.approx(config.lr)
    assert lrs[2] == pytest.approx(config.lr / 2)
    assert d.optimizers()["student"].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    if "fake" in d.optimizers():
        assert d.optimizers()["fake"].param_groups[0]["lr"] == pytest.approx(config.fake_lr)
