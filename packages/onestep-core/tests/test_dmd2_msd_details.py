"""DMD2's details as its official code does them, LPIPS by path for DMD's regression loss, and
MSD's adversarial stage.

Each check can fail: the fake score's loss against a hand computation of EDM's weighting (and its
time range against the old [0.02, 0.98]); the discriminator's input times over the whole schedule;
the conv head reading exactly a tiny UNet's bottleneck (decoder weights do not move its logits,
bottleneck weights do); LPIPS from a file of random weights against an independent functional
computation, with clear errors for a missing or mismatched file; MSD's adversarial stage pulling
the students towards real data the teacher does not know (and not with the discriminator's labels
swapped), and scrambled routing still worse with the stage on.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from onestep.core.denoiser import Denoiser
from onestep.core.distill import dmd, msd
from onestep.core.distill.dmd import (
    ConvDiscriminatorHead,
    DiscriminatorHead,
    DMD2Config,
    DMD2Distiller,
    DMDConfig,
    DMDDistiller,
    fake_score_loss,
    regression_loss,
)
from onestep.core.distill.msd import MSDConfig, MSDDistiller
from onestep.core.metrics import sliced_wasserstein
from onestep.core.nn import MLP, UNet
from onestep.core.nn.lpips import LPIPS
from onestep.core.paths import VP, RectifiedFlow
from onestep.core.sampling import sample

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def float32_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


def _mlp_teacher(seed=0, prediction="velocity", path=None):
    torch.manual_seed(seed)
    den = Denoiser(MLP(2, hidden=32, depth=2), path or RectifiedFlow(), prediction=prediction)
    return den.requires_grad_(False).eval()


def _unet_teacher(seed=0):
    torch.manual_seed(seed)
    net = UNet(1, base=8, mults=(1, 2))
    for p in net.parameters():  # the zero-initialised output convs would hide the decoder
        p.data.add_(0.05 * torch.randn_like(p))
    return Denoiser(net, RectifiedFlow(), prediction="velocity").requires_grad_(False).eval()


# ---------------------------------------------------------------------------------------------
# (a) the fake score's loss: x0 units, EDM's weight, the whole schedule


def test_fake_score_loss_is_edm_weighted_x0_error_over_whole_schedule():
    fake = _mlp_teacher(1)
    x0 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    sd = 0.7
    loss, t = fake_score_loss(fake, x0, weighting="edm", sigma_data=sd,
                              generator=torch.Generator().manual_seed(3))
    # by hand: RF has sigma/alpha = t / (1 - t), so sigma_min = 0.002 sits at t = 0.002 / 1.002
    g = torch.Generator().manual_seed(3)
    floor = 0.002 / 1.002
    t_h = floor + (1.0 - floor) * torch.rand(2000, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g)
    tt = t_h[:, None].float()
    x_t = (1 - tt) * x0 + tt * noise
    with torch.no_grad():
        x0_hat = x_t - tt * fake(x_t, t_h)  # the raw velocity v = eps - x0 on RF
    err = (x0_hat - x0).pow(2).mean(1)
    w = ((1 - t_h) / t_h) ** 2 + 1 / sd**2
    torch.testing.assert_close(t, t_h)
    torch.testing.assert_close(loss.detach(), (w.float() * err), rtol=2e-4, atol=1e-6)
    # the whole schedule, not DMD's [0.02, 0.98]
    assert t.min() < 0.01 and t.max() > 0.99 and t.min() >= floor - 1e-9
    # "snr" drops exactly the 1/sigma_data^2 term; "native" is the old velocity loss
    snr, _ = fake_score_loss(fake, x0, weighting="snr", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss.detach() - snr.detach(), err / sd**2, rtol=2e-4, atol=1e-6)
    native, t_n = fake_score_loss(fake, x0, weighting="native",
                                  generator=torch.Generator().manual_seed(3))
    assert t_n.min() >= 0.02 and t_n.max() <= 0.98
    assert not torch.allclose(native.detach(), loss.detach())


def test_fake_score_loss_discrete_path_uses_every_step():
    fake = _mlp_teacher(2, prediction="eps", path=VP.ddpm_linear(50))
    x0 = torch.randn(3000, 2, generator=torch.Generator().manual_seed(0))
    loss, t = fake_score_loss(fake, x0, generator=torch.Generator().manual_seed(1))
    steps = t * 50
    assert torch.allclose(steps, steps.round()), "times off the network's steps"
    assert set(steps.round().long().tolist()) == set(range(1, 51))
    assert torch.isfinite(loss).all()


# ---------------------------------------------------------------------------------------------
# (b) the discriminator sees every noise level


def _record_times(module):
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[1].detach()))
    return seen, handle


def test_discriminator_inputs_span_the_whole_schedule():
    teacher = _mlp_teacher(0)
    d = DMD2Distiller(teacher, DMD2Config(fake_updates=1))
    seen, handle = _record_times(d.fake.model)
    x = torch.randn(2000, 2)
    with torch.no_grad():
        logits = d._discriminate(x, None, torch.Generator().manual_seed(0))
    handle.remove()
    assert logits.shape == (2000,)
    t = torch.cat([s.reshape(-1) for s in seen])
    assert t.min() < 0.01 and t.max() > 0.99  # the old default drew [0.02, 0.98]
    assert t.min() >= 0.002 / 1.002 - 1e-9   # floored at sigma_min
    # a narrower configured range is honoured
    d2 = DMD2Distiller(teacher, DMD2Config(fake_updates=1, gan_t_range=(0.2, 0.4)))
    seen, handle = _record_times(d2.fake.model)
    with torch.no_grad():
        d2._discriminate(x, None, torch.Generator().manual_seed(0))
    handle.remove()
    t = torch.cat([s.reshape(-1) for s in seen])
    assert t.min() >= 0.2 and t.max() <= 0.4


# ---------------------------------------------------------------------------------------------
# (c) the conv head on a UNet's bottleneck


def test_conv_head_reads_the_unet_bottleneck():
    teacher = _unet_teacher()
    d = DMD2Distiller(teacher, DMD2Config(fake_updates=1))
    assert isinstance(d.disc, ConvDiscriminatorHead) and d.critic.layers == ["mid2"]
    net = d.fake.model
    x_t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)

    def logits():
        with torch.no_grad():
            return d.critic(x_t, t)

    # by hand: the bottleneck's output through the head's layers
    got = []
    h = net.mid2.register_forward_hook(lambda m, i, o: got.append(o))
    with torch.no_grad():
        d.fake(x_t, t)
        ref = d.disc.net(F.adaptive_avg_pool2d(got[0], 8)).flatten()
    h.remove()
    base = logits()
    torch.testing.assert_close(base, ref)
    with torch.no_grad():  # the decoder runs after the bottleneck: no effect on the logits
        net.conv_out.weight.add_(1.0)
        net.up[0][0].res.conv1.weight.mul_(3.0)
    torch.testing.assert_close(logits(), base)
    with torch.no_grad():  # the bottleneck itself: the logits move
        net.mid2.res.conv1.weight.add_(0.2 * torch.randn_like(net.mid2.res.conv1.weight))
    assert (logits() - base).abs().max() > 1e-4

    # one DMD2 step trains the head with the fake network; an MLP keeps the MLP head
    x = torch.randn(4, 1, 8, 8)
    before = [p.detach().clone() for p in d.disc.parameters()]
    logs = d.step(x, step=0, generator=torch.Generator().manual_seed(0))
    assert math.isfinite(logs["disc_loss"]) and math.isfinite(logs["gan_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, d.disc.parameters(), strict=True))
    assert isinstance(DMD2Distiller(_mlp_teacher(), DMD2Config()).disc, DiscriminatorHead)
    with pytest.raises(ValueError, match="needs a UNet"):
        DMD2Distiller(_mlp_teacher(), DMD2Config(disc_head="conv"))


# ---------------------------------------------------------------------------------------------
# (d) LPIPS from a weights file


_ALEX_HAND = [  # (kind, stride, padding) of each layer, stage by stage (torchvision AlexNet)
    [("conv", 4, 2, "net.slice1.0"), ("relu",)],
    [("pool", 3, 2), ("conv", 1, 2, "net.slice2.3"), ("relu",)],
    [("pool", 3, 2), ("conv", 1, 1, "net.slice3.6"), ("relu",)],
    [("conv", 1, 1, "net.slice4.8"), ("relu",)],
    [("conv", 1, 1, "net.slice5.10"), ("relu",)],
]


def _lpips_by_hand(state, x, y):
    """LPIPS Eq. 1 with functional ops on the saved tensors."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(z):
        z = (z.expand(-1, 3, -1, -1) - shift) / scale
        out = []
        for stage in _ALEX_HAND:
            for layer in stage:
                if layer[0] == "conv":
                    z = F.conv2d(z, state[layer[3] + ".weight"], state[layer[3] + ".bias"],
                                 stride=layer[1], padding=layer[2])
                elif layer[0] == "relu":
                    z = z.clamp_min(0)
                else:
                    z = F.max_pool2d(z, layer[1], layer[2])
            out.append(z / z.pow(2).sum(1, keepdim=True).sqrt().clamp_min(1e-10))
        return out

    total = 0.0
    for i, (a, b) in enumerate(zip(feats(x), feats(y), strict=True)):
        w = state[f"lin{i}.model.1.weight"].view(1, -1, 1, 1)
        total = total + (w * (a - b) ** 2).sum(1).mean((1, 2))
    return total


@pytest.fixture
def alex_file(tmp_path):
    torch.manual_seed(0)
    model = LPIPS("alex")
    for i in range(5):  # learned weights are non-negative
        getattr(model, f"lin{i}").model[1].weight.data.uniform_(0.0, 1.0)
    path = tmp_path / "lpips_alex.pt"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_lpips_from_file_matches_hand_computation(alex_file):
    path, state = alex_file
    lp = LPIPS.from_file(str(path), "alex")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    ref = _lpips_by_hand(state, x, y)
    with torch.no_grad():
        torch.testing.assert_close(lp(x, y), ref, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(lp(x, x), torch.zeros(3), rtol=0, atol=1e-6)
        loss, logs = regression_loss(x, y, lp)
    torch.testing.assert_close(loss, ref.mean(), rtol=1e-4, atol=1e-6)
    mse, _ = regression_loss(x, y)
    assert abs(mse.item() - loss.item()) > 1e-3
    # one-channel images are repeated to three; a resize lets small images through
    x1, y1 = x[:, :1, :16, :16], y[:, :1, :16, :16]
    small = LPIPS.from_file(str(path), "alex", resize=64)
    up = lambda z: F.interpolate(z.expand(-1, 3, -1, -1), size=(64, 64), mode="bilinear",  # noqa: E731
                                 align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(small(x1, y1), _lpips_by_hand(state, up(x1), up(y1)),
                                   rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="too small"):
        lp(x1, y1)


def test_lpips_weights_errors(alex_file, tmp_path):
    path, state = alex_file
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="does not exist"):
        LPIPS.from_file(missing)
    with pytest.raises(ValueError, match="lpips_weights"):
        DMDConfig(lpips_weights=missing).validate()
    with pytest.raises(ValueError, match="lack"):  # AlexNet weights for a VGG backbone
        LPIPS.from_file(str(path), "vgg")
    lin_only = tmp_path / "lin.pt"  # the reference package's file: linear layers only
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, lin_only)
    with pytest.raises(ValueError, match="net.slice1.0.weight"):
        LPIPS.from_file(str(lin_only), "alex")
    bad = dict(state)
    bad["lin0.model.1.weight"] = torch.ones(1, 32, 1, 1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"do not fit.*lin0"):
        LPIPS.from_file(str(tmp_path / "bad.pt"), "alex")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        LPIPS.from_file(str(tmp_path / "junk.pt"), "alex")
    with pytest.raises(ValueError, match="lpips_net"):
        DMDConfig(lpips_net="squeeze").validate()


def test_dmd_regression_uses_lpips_from_path(alex_file):
    path, state = alex_file
    teacher = _unet_teacher()
    cfg = DMDConfig(lpips_weights=str(path), lpips_net="alex", lpips_resize=64, num_pairs=8,
                    pair_nfe=2, reg_batch=4)
    d = DMDDistiller(teacher, cfg)
    assert d.lpips is not None and d.frozen_modules()["lpips"] is d.lpips
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    seen = []
    orig = dmd.regression_loss
    def spy(a, b, lp=None):
        seen.append((a.detach(), b, lp))
        return orig(a, b, lp)

    dmd.regression_loss = spy
    try:
        logs = d.step(x, step=0, generator=torch.Generator().manual_seed(0))
    finally:
        dmd.regression_loss = orig
    (a, b, lp), = seen
    assert lp is d.lpips
    up = lambda z: F.interpolate(z.expand(-1, 3, -1, -1), size=(64, 64), mode="bilinear",  # noqa: E731
                                 align_corners=False)
    assert logs["reg_loss"] == pytest.approx(_lpips_by_hand(state, up(a), up(b)).mean().item(),
                                             rel=1e-4)


# ---------------------------------------------------------------------------------------------
# MSD's adversarial stage


def _train(d, data, steps, batch=128, seed=0):
    g, gd = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    logs = {}
    for s in range(steps):
        logs = d.step(data[torch.randint(0, len(data), (batch,), generator=gd)], step=s,
                      generator=g)
    return logs


@pytest.mark.slow
def test_msd_adversarial_stage_pulls_students_to_real_data(flow_teacher, toy_data):
    """Real data shifted by -1.2 along x: the teacher (and so distribution matching) does not
    know the shift; only the adversarial stage's discriminator sees real data, so only it can move
    the students' mean towards it. Broken variant: the discriminator's real/fake labels swapped.
    Measured (150 steps, seed 0): mean x 0.02 (DM only), -0.96 (with the stage), +1.02 (labels
    swapped)."""
    train_x, _ = toy_data
    shift = torch.tensor([-1.2, 0.0])
    data = train_x + shift
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))

    def run(adv, swapped=False):
        torch.manual_seed(0)
        cfg = MSDConfig.toy_defaults(num_students=2, regression_weight=0.0, ema_decay=None,
                                     adv_start=0 if adv else None, gan_weight=1.0,
                                     disc_weight=1.0, gan_t_range=(0.0, 0.5), fake_updates=2)
        d = MSDDistiller(flow_teacher, cfg)
        orig = dmd.gan_discriminator_loss
        if swapped:
            dmd.gan_discriminator_loss = lambda real, fake: orig(fake, real)
        try:
            logs = _train(d, data, 150)
        finally:
            dmd.gan_discriminator_loss = orig
        with torch.no_grad():
            mean_x = d.generator().generate(z).mean(0)[0].item()
        return mean_x, logs, d

    m_dm, logs_dm, d_dm = run(False)
    m_adv, logs_adv, d_adv = run(True)
    m_bad, _, _ = run(True, swapped=True)
    print(f"msd adversarial: mean x {m_dm:.3f} (DM only), {m_adv:.3f} (ADM), "
          f"{m_bad:.3f} (labels swapped); real data {shift[0]:.2f}")
    assert "gan_loss" in logs_adv and "disc_loss" in logs_adv and "gan_loss" not in logs_dm
    changed = [not torch.equal(a, b) for a, b in zip(d_dm.students.parameters(),
                                                      d_adv.students.parameters(), strict=True)]
    assert any(changed)
    assert m_adv < m_dm - 0.5, (m_dm, m_adv)
    assert m_bad > m_dm + 0.5, (m_dm, m_bad)


@pytest.mark.slow
def test_msd_scrambled_routing_still_worse_with_adversarial_stage(flow_teacher, toy_data):
    """As test_must_fail's routing check, with the adversarial stage over the last 40 of 100
    steps: training student k on sector k + 1's noise still ends far from the teacher's map.
    Measured (seed 0): squared distance to the ODE map 0.21 vs 0.67 scrambled; one-step SW2
    0.243 vs 0.245 is too close to assert (without the stage: 0.16 vs 0.79, 0.20 vs 0.26)."""
    train_x, held = toy_data
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ode = sample(flow_teacher, z, nfe=16)
    right_fn = msd.noise_route

    def run(scrambled):
        torch.manual_seed(0)
        cfg = MSDConfig.toy_defaults(num_students=4, regression_pairs=256, regression_nfe=16,
                                     ema_decay=None, adv_start=60)
        d = MSDDistiller(flow_teacher, cfg)
        if scrambled:
            msd.noise_route = lambda noise, k: (right_fn(noise, k) + 1) % k
        try:
            _train(d, train_x, 100, batch=64)
        finally:
            msd.noise_route = right_fn
        with torch.no_grad():
            x = d.generator().generate(z, nfe=1)
        gap = (x - ode).pow(2).sum(1).mean().item()
        return gap, sliced_wasserstein(x, held, n_projections=128)

    (gap, sw), (gap_bad, sw_bad) = run(False), run(True)
    print(f"msd+adv: ODE-map gap {gap:.3f} vs scrambled {gap_bad:.3f}; SW2 {sw:.3f} vs "
          f"{sw_bad:.3f}")
    assert gap < 0.6 * gap_bad, (gap, gap_bad, sw, sw_bad)


def test_msd_adversarial_config_errors():
    for kw, match in [({"adv_start": -1}, "adv_start"), ({"tsm_steps": 5, "adv_start": 2},
                                                         "adv_start"),
                      ({"gan_weight": -1.0}, "gan_weight"), ({"disc_head": "x"}, "disc_head"),
                      ({"gan_t_range": (0.5, 0.5)}, "gan_t_range")]:
        with pytest.raises(ValueError, match=match):
            MSDConfig(**kw).validate()
    with pytest.raises(ValueError, match="fake_weighting"):
        DMD2Config(fake_weighting="x").validate()
    with pytest.raises(ValueError, match="disc_layers"):
        DMD2Config(disc_head="conv", disc_layers=("mid2",)).validate()
    d = MSDDistiller(_mlp_teacher(), MSDConfig(num_students=2, adv_start=0))
    assert isinstance(d.critic.head, DiscriminatorHead) and "disc" in d.modules()
