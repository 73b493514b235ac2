"""Guidance in distillation: the per-example guided teacher, the guidance-conditioned network (w as
an input, Meng et al. 2023), and DMD / DMD2 students distilled from the guided teacher, at one
scale or for a range of scales, on a class-conditional 2-D toy (CPU, seconds).

The toy: two Gaussian classes N((-1, 0), 0.7^2 I) and N((1, 0), 0.7^2 I). Classifier-free
guidance pushes each class away from the other, so the class margin E[sign(c) x_1] grows with w
(the guided teacher: about 1.0 at w=1, 1.6 at w=3). A student that ignores w keeps one margin.
"""

import pytest
import torch

from onestep.core.denoiser import Denoiser
from onestep.core.distill.dmd import DMD2Config, DMD2Distiller, DMDConfig, DMDDistiller
from onestep.core.distill.guidance import GuidedTeacher, is_guidance_conditioned
from onestep.core.io import load_student, save_student
from onestep.core.nn import MLP, DiT, EDMPrecond, UNet, build_network, network_name
from onestep.core.nn.guidance import GuidanceConditioned, with_guidance_cond
from onestep.core.paths import RectifiedFlow
from onestep.core.sampling import sample

torch.set_num_threads(1)

MU, STD = 1.0, 0.7


def toy(n, g):
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * STD
    x[:, 0] += MU * (2.0 * y - 1.0)
    return x, y


def exact_x0(x_t, t, y):
    """E[x0 | x_t] on the rectified-flow path for class y (0, 1) or the null class 2 (the
    two-class mixture)."""
    a = (1 - t)[:, None]
    v = a**2 * STD**2 + t[:, None] ** 2  # Var(x_t | class) per axis
    mus = torch.tensor([[-MU, 0.0], [MU, 0.0]])
    post = [mu + a * STD**2 / v * (x_t - a * mu) for mu in mus]  # per-class posterior means
    logp = torch.stack([-(x_t - a * mu).pow(2).sum(1) / (2 * v[:, 0]) for mu in mus], 1)
    r = torch.softmax(logp, 1)  # class responsibilities (B, 2)
    mixture = r[:, :1] * post[0] + r[:, 1:] * post[1]
    own = torch.where((y == 1)[:, None], post[1], post[0])
    return torch.where((y == 2)[:, None], mixture, own)


@pytest.fixture(scope="module")
def teacher():
    """An x0-prediction MLP regressed on the exact conditional and null posterior means."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    den = Denoiser(MLP(2, hidden=64, depth=2, num_classes=2), RectifiedFlow(), prediction="x0",
                   null_cond=2)
    opt = torch.optim.Adam(den.parameters(), lr=3e-3)
    for _ in range(600):
        x0, y = toy(256, g)
        y = torch.where(torch.rand(256, generator=g) < 0.3, 2, y)
        t = 0.01 + 0.99 * torch.rand(256, generator=g)
        x_t = (1 - t)[:, None] * x0 + t[:, None] * torch.randn(256, 2, generator=g)
        loss = (den(x_t, t, y) - exact_x0(x_t, t, y)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return den.eval().requires_grad_(False)


NOISE = torch.randn(2000, 2, generator=torch.Generator().manual_seed(7))
LABELS = torch.arange(2000) % 2


def margin(x):
    return ((2.0 * LABELS - 1) * x[:, 0]).mean().item()


@pytest.fixture(scope="module")
def teacher_margins(teacher):
    with torch.no_grad():
        return {w: margin(sample(teacher.with_guidance(w), NOISE, nfe=50, solver="heun",
                                 cond=LABELS)) for w in (1.0, 2.0, 3.0)}


def train(distiller, steps, batch=128, seed=0):
    g, dg = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    for step in range(steps):
        distiller.step(toy(batch, dg), step=step, generator=g)
    return distiller


def student_margin(gen, w=None):
    cond = LABELS if w is None else with_guidance_cond(LABELS, w, len(LABELS))
    with torch.no_grad():
        return margin(gen.generate(NOISE, cond))


# -- the pieces ---------------------------------------------------------------------------------
def test_guided_teacher_guides_each_example_with_its_own_scale(teacher):
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(6, 2, generator=g), torch.rand(6, generator=g)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    w = torch.tensor([0.0, 1.0, 1.5, 2.0, 3.0, 4.5])
    out = GuidedTeacher(teacher).x0(x, t, with_guidance_cond(y, w, 6))
    for i in range(6):
        ref = teacher.with_guidance(float(w[i])).x0(x[i:i + 1], t[i:i + 1], y[i:i + 1])
        torch.testing.assert_close(out[i:i + 1], ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(GuidedTeacher(teacher).x0(x, t, y), teacher.x0(x, t, y))  # no w: unguided


@pytest.mark.parametrize("make", [
    lambda: MLP(2, hidden=32, num_classes=3),
    lambda: EDMPrecond(UNet(1, base=8, num_classes=3)),
    lambda: DiT((8, 8), 4, 1, hidden=32, depth=2, heads=2, num_classes=3),
], ids=["mlp", "edm-unet", "dit"])
def test_guidance_conditioned_network_starts_as_the_wrapped_one_and_reads_w(make):
    torch.manual_seed(0)
    inner = make()
    shape = (4, 2) if isinstance(inner, MLP) else (4, 1, 8, 8)
    x, t, c = torch.randn(shape), torch.rand(4) + 0.1, torch.tensor([0, 1, 2, 1])
    for p in inner.parameters():  # zero-initialised output layers would hide any dependence
        p.data.add_(0.05 * torch.randn_like(p))
    ref = inner(x, t, c)
    net = GuidanceConditioned(inner)
    assert torch.equal(net(x, t, with_guidance_cond(c, 3.0, 4)), ref)  # w enters as zero at init
    torch.nn.init.normal_(net.embed.mlp[2].weight, std=0.1)
    w1, w3 = net(x, t, with_guidance_cond(c, 1.0, 4)), net(x, t, with_guidance_cond(c, 3.0, 4))
    assert (w1 - w3).abs().max() > 1e-3
    assert torch.equal(net(x, t, c), w1)  # a plain condition means w = 1
    again = build_network(network_name(net), net.config)
    again.load_state_dict(net.state_dict())
    assert torch.equal(again(x, t, with_guidance_cond(c, 3.0, 4)), w3)


def test_guidance_settings_are_checked(teacher):
    with pytest.raises(ValueError, match="guidance_range"):
        DMDConfig(guidance_range=(3.0, 1.0)).validate()
    with pytest.raises(ValueError, match="not both"):
        DMD2Config(guidance=2.0, guidance_range=(1.0, 3.0)).validate()
    d = DMDDistiller(teacher, DMDConfig(guidance_range=(1.0, 3.0), reg_weight=0.0))
    with pytest.raises(ValueError, match="conditional teacher"):
        d.step(torch.randn(8, 2), step=0, generator=torch.Generator())


# -- students ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_guided_dmd_student_separates_classes_like_the_guided_teacher(teacher, teacher_margins):
    """DMD with the real score guided at w=2 (DMD2's recipe) against w=1: the guided student's
    class margin grows as the guided teacher's does."""
    out = {}
    for w in (1.0, 2.0):
        config = DMDConfig.toy_defaults(guidance=w, num_pairs=256, pair_nfe=16)
        out[w] = student_margin(train(DMDDistiller(teacher, config), 200).generator())
    gap = teacher_margins[2.0] - teacher_margins[1.0]
    assert gap > 0.3
    assert out[2.0] - out[1.0] > 0.6 * gap, (out, teacher_margins)
    assert abs(out[2.0] - teacher_margins[2.0]) < 0.2, (out, teacher_margins)


@pytest.mark.slow
def test_guidance_conditioned_dmd_student_follows_the_teacher_at_every_w(teacher,
                                                                          teacher_margins):
    """One DMD student for w in [1, 3]: at w=1, 2, 3 its margins move as the guided teacher's
    (a student that ignored w would give one margin for all). Measured after 500 steps: 1.25,
    1.48, 1.52 against the teacher's 1.09, 1.45, 1.65 (the w embedding starts at zero and learns
    about half the teacher's spread in this short run; 600 steps on a larger toy teacher reached
    1.06, 1.49, 1.75 against 1.00, 1.42, 1.65)."""
    config = DMDConfig.toy_defaults(guidance_range=(1.0, 3.0), num_pairs=256, pair_nfe=16)
    d = train(DMDDistiller(teacher, config), 500)
    gen = d.generator()
    assert is_guidance_conditioned(gen) and is_guidance_conditioned(d.fake)
    m = {w: student_margin(gen, w) for w in (1.0, 2.0, 3.0)}
    gap = teacher_margins[3.0] - teacher_margins[1.0]
    assert m[1.0] < m[2.0] < m[3.0], m
    assert m[3.0] - m[1.0] > 0.4 * gap, (m, teacher_margins)
    for w in (1.0, 3.0):
        assert abs(m[w] - teacher_margins[w]) < 0.25, (m, teacher_margins)


def test_guidance_conditioned_dmd2_student_saves_and_loads(teacher, tmp_path):
    config = DMD2Config.toy_defaults(guidance_range=(1.0, 4.0), fake_updates=2)
    d = train(DMD2Distiller(teacher, config), 5, batch=64)
    assert d.student.model.embed.mlp[2].weight.abs().sum() > 0  # the w embedding trained
    save_student(tmp_path / "s", d)
    gen, info = load_student(tmp_path / "s")
    assert info["network"]["name"] == "guidance_cond"
    cond = with_guidance_cond(LABELS[:50], 2.5, 50)
    with torch.no_grad():
        assert torch.equal(gen.generate(NOISE[:50], cond), d.generator().generate(NOISE[:50], cond))
