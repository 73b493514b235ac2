"""Distribution matching, part 2 (VSD / SwiftBrush, f-distill, SIM, MSD) and the dispersive
regulariser: closed-form checks of the losses, tiny distillation runs on the toy teachers, the
Trainer with checkpoint + exact resume, and config errors."""

import math

import pytest
import torch
from torch import nn

from onestep.core.denoiser import Denoiser
from onestep.core.distill.base import validate_config
from onestep.core.distill.dispersive import (
    VARIANTS,
    Dispersive,
    DispersiveConfig,
    FeatureHook,
    dispersive_loss,
)
from onestep.core.distill.fdistill import (
    DIVERGENCES,
    FDistillConfig,
    FDistillDistiller,
    f_weight,
)
from onestep.core.distill.msd import (
    MSDConfig,
    MSDDistiller,
    MultiStudentGenerator,
    noise_route,
)
from onestep.core.distill.sim import SIMConfig, SIMDistiller, pseudo_huber, sim_loss
from onestep.core.distill.vsd import METHODS as VSD_METHODS
from onestep.core.distill.vsd import VSDConfig, VSDDistiller
from onestep.core.losses import DSMLoss
from onestep.core.metrics import sliced_wasserstein
from onestep.core.nn import MLP
from onestep.core.paths import RectifiedFlow
from onestep.core.train import LossTask, TrainConfig, Trainer

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def float32_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


# ------------------------------------------------------------------------------ helpers


def one_step_sw(gen, held, n=1000, seed=0):
    """Sliced W2 between `n` one-step samples and the held-out data."""
    z = torch.randn(n, held.shape[1], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        x = gen.generate(z, nfe=1)
    return sliced_wasserstein(x, held, n_projections=128)


def train(dist, data, steps, batch=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    gd = torch.Generator().manual_seed(seed + 1)
    logs = []
    for s in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=gd)
        logs.append(dist.step(data[idx], step=s, generator=g))
    return logs


def window(logs, key, lo, hi):
    vals = [log[key] for log in logs[int(lo * len(logs)) : int(hi * len(logs))]]
    return sum(vals) / len(vals)


def distill_and_check(dist, toy_data, key, steps, ratio=0.6, early=(0.15, 0.45)):
    """Train; the logged discrepancy `key` falls from its early window to the last quarter and
    the one-step SW2 to held-out data ends below `ratio` times the untrained student's."""
    train_x, held = toy_data
    before = one_step_sw(dist.generator(), held)
    logs = train(dist, train_x, steps)
    after = one_step_sw(dist.generator(), held)
    first, last = window(logs, key, *early), window(logs, key, 0.75, 1.0)
    assert all(math.isfinite(v) for log in logs for v in log.values())
    assert last < first, f"{key}: {first:.4f} -> {last:.4f}"
    assert after < ratio * before, f"one-step SW2 {before:.3f} -> {after:.3f}"
    return before, after


# ------------------------------------------------------------------------------ VSD


def test_vsd_flow_teacher_lora_fake(flow_teacher, toy_data):
    torch.manual_seed(0)
    # no EMA: a 150-step test run is too short for the toy config's 0.99 average
    dist = VSDDistiller(flow_teacher, VSDConfig.toy_defaults(ema_decay=None))
    assert dist.kind == "vsd" and set(VSD_METHODS) == {"vsd"}
    before, after = distill_and_check(dist, toy_data, "score_gap", steps=150)
    print(f"vsd flow: SW2 {before:.3f} -> {after:.3f}")


def test_vsd_vp_teacher_full_fake(vp_teacher, toy_data):
    """DDPM's alpha(1) = 0.006: toy_defaults(teacher) starts the eps student at alpha = 0.07."""
    torch.manual_seed(0)
    cfg = VSDConfig.toy_defaults(vp_teacher, fake="full", lr=3e-5)
    assert 0.6 < cfg.t_start < 0.8
    dist = VSDDistiller(vp_teacher, cfg)
    before, after = distill_and_check(dist, toy_data, "score_gap", steps=150)
    print(f"vsd vp: SW2 {before:.3f} -> {after:.3f}")


def test_vsd_lora_fake_starts_as_teacher_and_trains_only_lora(flow_teacher):
    dist = VSDDistiller(flow_teacher, VSDConfig(lora_rank=4))
    x, t = torch.randn(16, 2), torch.rand(16, dtype=torch.float64)
    assert torch.allclose(dist.fake(x, t), flow_teacher(x, t))
    trainable = {n for n, p in dist.fake.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


# ------------------------------------------------------------------------------ f-distill

# f(r) of Xu et al. 2025, Table 1; h(r) = f''(r) r^2 must match f_weight.
F_OF_R = {
    "reverse_kl": lambda r: -torch.log(r),
    "softened_rkl": lambda r: (r + 1) * torch.log((r + 1) / (2 * r)),
    "js": lambda r: r * torch.log(r) - (r + 1) * torch.log((r + 1) / 2),
    "squared_hellinger": lambda r: 1 - torch.sqrt(r),
    "forward_kl": lambda r: r * torch.log(r),
    "jeffreys": lambda r: (r - 1) * torch.log(r),
}


@pytest.mark.parametrize("divergence", sorted(DIVERGENCES))
def test_f_weight_is_second_derivative_of_f(divergence):
    logit = torch.linspace(-4, 4, 41, dtype=torch.float64)
    r = logit.exp().requires_grad_(True)
    (d1,) = torch.autograd.grad(F_OF_R[divergence](r).sum(), r, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), r)
    expected = d2 * r.detach() ** 2
    h = f_weight(logit, divergence, normalize=False)
    assert torch.allclose(h.double(), expected, rtol=1e-4, atol=1e-6)
    hn = f_weight(logit, divergence)
    assert torch.allclose(hn.mean(), torch.tensor(1.0)) and (hn > 0).all()


def test_fdistill_js_flow_teacher(flow_teacher, toy_data):
    torch.manual_seed(0)
    # no EMA: a 100-step test run is too short for the toy config's 0.99 average
    dist = FDistillDistiller(flow_teacher, FDistillConfig.toy_defaults(ema_decay=None))
    before, after = distill_and_check(dist, toy_data, "score_gap", steps=100)
    print(f"fdistill js flow: SW2 {before:.3f} -> {after:.3f}")


def test_fdistill_forward_kl_vp_teacher(vp_teacher, toy_data):
    torch.manual_seed(0)
    # no EMA: a 100-step test run is too short for the toy config's 0.99 average
    cfg = FDistillConfig.toy_defaults(vp_teacher, divergence="forward_kl", ema_decay=None)
    dist = FDistillDistiller(vp_teacher, cfg)
    before, after = distill_and_check(dist, toy_data, "score_gap", steps=100)
    print(f"fdistill fkl vp: SW2 {before:.3f} -> {after:.3f}")


# ------------------------------------------------------------------------------ SIM


def test_sim_loss_gradient_is_pseudo_huber_score_gradient():
    """Thm. 3.1 on Gaussians, where every score is closed-form: data N(m, v), generator
    x0 = mu + s z, x_t = a x0 + b eps. The gradient of E_{x_t ~ sg(q_t)} d(x0_p - x0_q(theta))
    equals the gradient of the SIM loss (up to Monte Carlo error)."""
    g = torch.Generator().manual_seed(0)
    n, m, v, a, b, c = 400_000, 1.5, 0.25, 0.8, 0.6, 0.3
    z = torch.randn(n, 1, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 1, generator=g, dtype=torch.float64)
    mu = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)

    def x0_p(x):
        return m + a * v * (x - a * m) / (a * a * v + b * b)

    def x0_q(x, mu_, s_):
        return mu_ + a * s_**2 * (x - a * mu_) / (a * a * s_**2 + b * b)

    # the divergence's gradient through q's parameters, samples from sg(q_t)
    x_t = a * (mu.detach() + s.detach() * z) + b * eps
    div = pseudo_huber(x0_p(x_t) - x0_q(x_t, mu, s), c).mean()
    want = torch.autograd.grad(div, (mu, s))
    # the SIM loss: gradient through x0 and x_t only
    x0 = mu + s * z
    x_t = a * x0 + b * eps
    loss, logs = sim_loss(x0, x0_p(x_t), x0_q(x_t, mu.detach(), s.detach()), c=c)
    got = torch.autograd.grad(loss, (mu, s))
    for w, h in zip(want, got, strict=True):
        assert abs(h.item() - w.item()) < 0.03 * abs(w.item()) + 2e-3, (want, got)
    assert logs["divergence"] == pytest.approx(div.item(), rel=1e-6)


def test_sim_flow_teacher(flow_teacher, toy_data):
    torch.manual_seed(0)
    dist = SIMDistiller(flow_teacher, SIMConfig.toy_defaults())
    before, after = distill_and_check(dist, toy_data, "divergence", steps=100)
    print(f"sim flow: SW2 {before:.3f} -> {after:.3f}")


def test_sim_vp_teacher(vp_teacher, toy_data):
    torch.manual_seed(0)
    dist = SIMDistiller(vp_teacher, SIMConfig.toy_defaults(vp_teacher, weighting="dmd"))
    before, after = distill_and_check(dist, toy_data, "divergence", steps=120)
    print(f"sim vp: SW2 {before:.3f} -> {after:.3f}")


# ------------------------------------------------------------------------------ MSD


class _Const(nn.Module):
    """A network predicting x0 = value everywhere."""

    def __init__(self, value):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x, t, cond=None):
        return torch.zeros_like(x) + self.value


def test_msd_routes_by_class_group_and_by_noise_sector():
    students = [Denoiser(_Const(k), RectifiedFlow(), prediction="x0") for k in range(3)]
    gen = MultiStudentGenerator(students, partition="auto", class_groups=((0, 3), (1,), (2, 4)))
    labels = torch.tensor([0, 1, 2, 3, 4, 4, 1, 0])
    out = gen.generate(torch.randn(8, 2), labels)
    assert out[:, 0].tolist() == [0, 1, 2, 0, 2, 2, 1, 0]
    with pytest.raises(ValueError, match="no student"):
        MultiStudentGenerator(students, class_groups=((0,), (1,), (3,))).route(
            torch.randn(1, 2), torch.tensor([2])
        )
    # noise: equal-probability sectors, each sample made by its own sector's student
    z = torch.randn(6000, 2, generator=torch.Generator().manual_seed(0))
    idx = noise_route(z, 3)
    frac = torch.bincount(idx, minlength=3) / len(z)
    assert torch.allclose(frac, torch.full((3,), 1 / 3), atol=0.03)
    assert torch.equal(gen.generate(z)[:, 0].long(), idx)
    u = noise_route(torch.randn(6000, 1, generator=torch.Generator().manual_seed(1)), 4)
    assert torch.allclose(
        torch.bincount(u, minlength=4) / 6000.0, torch.full((4,), 0.25), atol=0.03
    )


def test_msd_noise_partition_flow_teacher(flow_teacher, toy_data):
    torch.manual_seed(0)
    # no EMA: a short test run is too short for the toy config's 0.99 average
    cfg = MSDConfig.toy_defaults(regression_pairs=256, regression_nfe=16, ema_decay=None)
    dist = MSDDistiller(flow_teacher, cfg)
    before, after = distill_and_check(dist, toy_data, "reg_loss", steps=80, early=(0.0, 0.25))
    print(f"msd flow: SW2 {before:.3f} -> {after:.3f}")
    used = noise_route(torch.randn(512, 2), 4).unique()
    assert used.numel() == 4


def test_msd_smaller_students_teacher_score_matching(flow_teacher, toy_data):
    torch.manual_seed(0)
    cfg = MSDConfig(num_students=2, tsm_steps=60, lr=2e-3, regression_weight=0.0)
    nets = [MLP(2, hidden=32, depth=1) for _ in range(2)]
    dist = MSDDistiller(flow_teacher, cfg, student_networks=nets)
    logs = train(dist, toy_data[0], 64)
    tsm = [log["tsm_loss"] for log in logs[:60]]
    assert sum(tsm[-15:]) < 0.5 * sum(tsm[:15])
    assert "score_gap" in logs[-1] and "tsm_loss" not in logs[-1]
    n_params = sum(p.numel() for p in dist.students.students[0].parameters())
    assert n_params < sum(p.numel() for p in flow_teacher.parameters()) / 4


# ------------------------------------------------------------------------------ shapes, cond


@pytest.mark.parametrize("method", ["vsd", "fdistill", "sim", "msd"])
def test_image_shaped_class_conditional_smoke(method):
    """(B, 1, 4, 4) data and a class-conditional teacher: cond reaches every network, MSD
    routes by class (no regression loss), and generate() returns the data's shape."""
    torch.manual_seed(0)
    net = MLP(16, hidden=16, depth=1, num_classes=4)
    teacher = Denoiser(net, RectifiedFlow(), prediction="velocity", null_cond=4)
    teacher.requires_grad_(False)
    x = torch.randn(8, 1, 4, 4)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    dist = {
        "vsd": lambda: VSDDistiller(teacher, VSDConfig(lora_rank=2)),
        "fdistill": lambda: FDistillDistiller(teacher, FDistillConfig()),
        "sim": lambda: SIMDistiller(teacher, SIMConfig(fake="lora", lora_rank=2)),
        "msd": lambda: MSDDistiller(teacher, MSDConfig(num_students=2, tsm_steps=1)),
    }[method]()
    g = torch.Generator().manual_seed(0)
    logs = [dist.step((x, labels), step=s, generator=g) for s in range(2)]
    assert all(math.isfinite(v) for log in logs for v in log.values())
    assert "reg_loss" not in logs[-1]
    out = dist.generator().generate(torch.randn(8, 1, 4, 4), labels)
    assert out.shape == (8, 1, 4, 4)


# ------------------------------------------------------------------------------ Trainer


@pytest.mark.parametrize("method", ["vsd", "msd"])
def test_trainer_fit_checkpoint_and_exact_resume(method, flow_teacher, toy_data, tmp_path):
    data = toy_data[0][:2000]

    def make():
        torch.manual_seed(0)
        if method == "vsd":
            return VSDDistiller(
                flow_teacher, VSDConfig(lora_rank=4, ema_decay=0.9, dispersive_weight=0.1)
            )
        return MSDDistiller(
            flow_teacher, MSDConfig(num_students=2, regression_pairs=32, regression_nfe=4)
        )

    def cfg(out, steps, **kw):
        return TrainConfig(
            steps=steps,
            batch_size=32,
            log_every=2,
            ckpt_every=3,
            seed=1,
            progress=False,
            device="cpu",
            out_dir=out,
            **kw,
        )

    full = make()
    records = Trainer(cfg(tmp_path / "full", 6)).fit(full, data)
    assert records and "score_gap" in records[-1]["logs"]
    part = make()
    Trainer(cfg(tmp_path / "part", 3)).fit(part, data)
    resumed = make()
    Trainer(cfg(tmp_path / "part", 6, resume=True)).fit(resumed, data)
    for name, module in full.modules().items():
        other = resumed.modules()[name].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(value, other[key]), f"{name}.{key} differs after resume"
    x = full.generator().generate(torch.randn(5, 2), nfe=2, generator=torch.Generator())
    assert x.shape == (5, 2)


# ------------------------------------------------------------------------------ dispersive


@pytest.mark.parametrize("variant", VARIANTS)
def test_dispersive_loss_prefers_dispersed_features(variant):
    g = torch.Generator().manual_seed(0)
    dispersed = torch.randn(64, 4, 2, 2, generator=g)  # (B, C, H, W): flattened to 16-D
    collapsed = torch.randn(1, 4, 2, 2, generator=g) + 0.01 * torch.randn(64, 4, 2, 2, generator=g)
    lo, hi = dispersive_loss(dispersed, variant), dispersive_loss(collapsed, variant)
    assert lo.ndim == 0 and lo < hi - 0.1, (lo, hi)


def test_dispersive_infonce_l2_closed_form():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # squared distance 4, dim 2 -> D = 2
    expected = math.log((2 + 2 * math.exp(-2.0 / 0.5)) / 4)
    assert dispersive_loss(z, "infonce_l2", tau=0.5).item() == pytest.approx(expected, rel=1e-5)


def test_feature_hook_captures_named_layers():
    net = MLP(2, hidden=16, depth=2)
    hook = FeatureHook(net, ["blocks.1"])
    net(torch.randn(5, 2), torch.rand(5))
    assert hook.features["blocks.1"][0].shape == (5, 16)
    with hook.capture():
        net(torch.randn(3, 2), torch.rand(3))
    assert [f.shape[0] for f in hook.tensors()] == [3]
    net(torch.randn(4, 2), torch.rand(4))  # outside capture: not recorded
    assert len(hook.tensors()) == 1
    hook.remove()
    with pytest.raises(ValueError, match="no submodule"):
        FeatureHook(net, ["blocks.9"])


def test_dispersive_with_dsm_loss_task_trains_and_disperses(toy_data):
    data = toy_data[0]

    def run(weight):
        torch.manual_seed(0)
        den = Denoiser(MLP(2, hidden=32, depth=2), RectifiedFlow(), prediction="eps")
        loss = Dispersive(DSMLoss(target="eps"), weight=weight)
        task = LossTask(den, loss, lr=3e-3, ema_decay=None)
        g, gd = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
        logs = [
            task.step(data[torch.randint(0, len(data), (128,), generator=gd)], step=s, generator=g)
            for s in range(150)
        ]
        return logs

    plain, disp = run(0.0), run(0.5)
    assert window(disp, "base_loss", 0.75, 1.0) < 0.8 * window(disp, "base_loss", 0.0, 0.1)
    assert window(disp, "disp", 0.75, 1.0) < window(plain, "disp", 0.75, 1.0)
    assert window(disp, "base_loss", 0.75, 1.0) < 1.2 * window(plain, "base_loss", 0.75, 1.0)


def test_distiller_dispersive_weight_adds_the_term(flow_teacher, toy_data):
    torch.manual_seed(0)
    dist = SIMDistiller(
        flow_teacher, SIMConfig(dispersive_weight=0.5, dispersive_variant="covariance")
    )
    logs = train(dist, toy_data[0], 2)
    assert all(math.isfinite(log["disp"]) for log in logs)


# ------------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (VSDConfig, {"lr": -1.0}, "lr must be positive"),
        (VSDConfig, {"lr": float("nan")}, "NaN"),
        (VSDConfig, {"fake": "huge"}, "unknown VSDConfig.fake"),
        (VSDConfig, {"t_min": 0.5, "t_max": 0.4}, "t_min < t_max"),
        (VSDConfig, {"weighting": "snr"}, "unknown VSDConfig.weighting"),
        (VSDConfig, {"lora_rank": 0}, "lora_rank"),
        (VSDConfig, {"ema_decay": 1.5}, "ema_decay"),
        (VSDConfig, {"dispersive_variant": "l1"}, "dispersive_variant"),
        (FDistillConfig, {"divergence": "tv"}, "unknown FDistillConfig.divergence"),
        (FDistillConfig, {"gan_weight": -1.0}, "gan_weight"),
        (FDistillConfig, {"disc_lr": 0.0}, "disc_lr"),
        (SIMConfig, {"huber_c": 0.0}, "huber_c"),
        (SIMConfig, {"weighting": "sds"}, "unknown SIMConfig.weighting"),
        (MSDConfig, {"num_students": 0}, "num_students"),
        (MSDConfig, {"partition": "kmeans"}, "unknown MSDConfig.partition"),
        (MSDConfig, {"num_students": 2, "class_groups": ((0, 1), (1, 2))}, "disjoint"),
        (MSDConfig, {"num_students": 3, "class_groups": ((0,), (1,))}, "2 groups for 3"),
        (MSDConfig, {"tsm_steps": -1}, "tsm_steps"),
        (DispersiveConfig, {"variant": "l1"}, "unknown dispersive variant"),
        (DispersiveConfig, {"tau": 0.0}, "tau"),
    ],
)
def test_config_errors_are_clear(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        validate_config(cls(**kwargs))


def test_distillers_reject_bad_configs(flow_teacher):
    with pytest.raises(ValueError, match="lr must be positive"):
        VSDDistiller(flow_teacher, VSDConfig(lr=0.0))
    with pytest.raises(ValueError, match="student networks for"):
        MSDDistiller(flow_teacher, MSDConfig(num_students=2), student_networks=[MLP(2)])
    with pytest.raises(ValueError, match="unknown dispersive variant"):
        dispersive_loss(torch.randn(4, 3), "l1")
