"""HiPA (Zhang & Hooi 2023): the high-frequency promoted loss on hand-computed images, the
teacher targets, a short adaptation of the toy teachers (one step ends closer to the teacher's
multi-step samples than the teacher's own one step, only LoRA factors move), a LoRA UNet step on
images, save / load, checkpoint resume and config errors."""

import math

import pytest
import torch

from onestep.core.denoiser import Denoiser
from onestep.core.distill import toy_config
from onestep.core.distill.base import DenoiserGenerator
from onestep.core.distill.hipa import (
    SD_LAST_SIGMA_VE,
    HiPAConfig,
    HiPADistiller,
    default_t_start,
    high_frequency_loss,
    high_pass,
    make_pairs,
    sobel_edges,
)
from onestep.core.io import load_student, save_student
from onestep.core.metrics import sliced_wasserstein
from onestep.core.nn import MLP, UNet
from onestep.core.nn.lora import LoRALayer
from onestep.core.paths import RectifiedFlow
from onestep.core.sampling import sample
from onestep.core.train import TrainConfig, Trainer

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def float32_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


def checkerboard(h=8, w=8):
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((-1.0) ** (i + j)).reshape(1, 1, h, w)


# ------------------------------------------------------------------ the high-frequency loss


def test_constant_image_has_no_high_frequency_and_checkerboard_is_all_high():
    const = torch.full((2, 3, 8, 8), 0.7)
    assert high_pass(const).abs().max() < 1e-6
    assert sobel_edges(const).abs().max() < 1e-6
    board = checkerboard()
    torch.testing.assert_close(high_pass(board), board)  # every bit of its energy is high
    assert sobel_edges(board).abs().max() < 1e-6  # [1, 2, 1] smoothing cancels Nyquist
    # hand-computed loss: the Fourier term is mean(board^2) = 1, the edge term 0
    loss = high_frequency_loss(board, torch.zeros_like(board))
    torch.testing.assert_close(loss, torch.tensor([1.0]))


def test_high_pass_splits_by_radius_and_sobel_measures_slope():
    i = torch.arange(8.0)
    low = torch.cos(2 * math.pi * i / 8).reshape(1, 1, 1, 8).expand(1, 1, 8, 8)  # radius 0.25
    high = torch.cos(2 * math.pi * 3 * i / 8).reshape(1, 1, 8, 1).expand(1, 1, 8, 8)  # 0.75
    torch.testing.assert_close(high_pass(low + high, 0.5), high, atol=1e-5, rtol=0)
    torch.testing.assert_close(high_pass(low + high, 0.8), torch.zeros_like(low), atol=1e-5,
                               rtol=0)
    ramp = i.reshape(1, 1, 1, 8).expand(1, 1, 8, 8)  # slope 1 along x
    e = sobel_edges(ramp)
    torch.testing.assert_close(e[:, 0], torch.ones(1, 6, 6))  # d/dx
    assert e[:, 1].abs().max() < 1e-6  # no vertical edges
    # the loss only sees the difference, and is zero for a low-frequency-only shift
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(high_frequency_loss(x + 0.3, x, edge_weight=0.0),
                               torch.zeros(2), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="image batches"):
        high_frequency_loss(torch.zeros(4, 2), torch.zeros(4, 2))


# ------------------------------------------------------------------ teacher targets


def test_pairs_are_the_teachers_multistep_samples_from_the_start_time(vp_teacher):
    t = default_t_start(vp_teacher)
    assert vp_teacher.path.sigma_ve(torch.tensor(t, dtype=torch.float64)).item() == \
        pytest.approx(SD_LAST_SIGMA_VE, rel=1e-4)
    flow = Denoiser(MLP(2, hidden=8, depth=1), RectifiedFlow(), prediction="velocity")
    assert default_t_start(flow) == 1.0
    pairs = make_pairs(vp_teacher, torch.zeros(4, 2), None, 16, nfe=8, solver="ddim",
                       t_start=t, generator=torch.Generator().manual_seed(0))
    want = sample(vp_teacher, pairs["noise"], nfe=8, solver="ddim", t_max=t)
    torch.testing.assert_close(pairs["target"], want)


# ------------------------------------------------------------------ toy distillation


def train(dist, data, steps, batch=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    gd = torch.Generator().manual_seed(seed + 1)
    return [dist.step(data[torch.randint(0, len(data), (batch,), generator=gd)], step=s,
                      generator=g) for s in range(steps)]


def one_step_error(gen, pairs):
    with torch.no_grad():
        x = gen.generate(pairs["noise"], nfe=1)
    return (x - pairs["target"]).pow(2).mean().item(), x


def test_flow_teacher_one_step_moves_toward_its_multistep_samples(flow_teacher, toy_data):
    check_adaptation(flow_teacher, toy_data)


def test_vp_eps_teacher_one_step_moves_toward_its_multistep_samples(vp_teacher, toy_data):
    check_adaptation(vp_teacher, toy_data)


def check_adaptation(teacher, toy_data):
    base = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(0)
    d = HiPADistiller(teacher, toy_config("hipa", teacher, num_pairs=512, pair_nfe=32))
    held = make_pairs(teacher, toy_data[1][:4], None, 500, nfe=32, solver="dpm++2m",
                      t_start=d.t_start, generator=torch.Generator().manual_seed(99))
    before, x_before = one_step_error(DenoiserGenerator(teacher, t_start=d.t_start), held)
    logs = train(d, toy_data[0], 150, batch=128)
    after, x_after = one_step_error(d.generator(), held)
    # measured: 0.97 -> 0.009 (flow), 0.91 -> 0.013 (vp) in 300 steps at batch 256
    assert after < 0.1 * before, (before, after)
    assert logs[-1]["spatial_loss"] < logs[0]["spatial_loss"]
    sw = [sliced_wasserstein(x, toy_data[1], n_projections=128) for x in (x_before, x_after)]
    assert sw[1] < sw[0], sw
    # only the LoRA factors trained: the teacher's own weights are bit-identical, and so are
    # the base weights inside the student's LoRA layers
    assert all(torch.equal(base[k], v) for k, v in teacher.state_dict().items())
    trained = {n for n, p in d.student.named_parameters() if p.requires_grad}
    assert trained and all(n.endswith(("lora_A", "lora_B")) for n in trained)
    for name, m in d.student.model.named_modules():
        if isinstance(m, LoRALayer):
            torch.testing.assert_close(m.base.weight, base[f"model.{name}.weight"], rtol=0,
                                       atol=0)


# ------------------------------------------------------------------ images, save, resume


def tiny_unet_teacher():
    torch.manual_seed(0)
    net = UNet(in_channels=1, base=8, mults=(1, 2), num_res=1, attn_resolutions=())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random weights everywhere: a fresh UNet zeroes its output layer
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return Denoiser(net, RectifiedFlow(), prediction="velocity").eval()


def test_unet_teacher_images_hf_term_save_and_load(tmp_path):
    teacher = tiny_unet_teacher()
    config = toy_config("hipa", teacher, num_pairs=32, pair_nfe=4, rank=2)
    d = HiPADistiller(teacher, config)
    x = torch.zeros(8, 1, 8, 8)
    logs = train(d, x, 3, batch=8)
    assert all(math.isfinite(log["hf_loss"]) and log["hf_loss"] > 0 for log in logs)
    assert logs[0]["loss"] == pytest.approx(logs[0]["spatial_loss"] + logs[0]["hf_loss"])
    # the merged student equals the LoRA student, and saves / loads as a Denoiser
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = d.one_step(d.student, z)
        got = d.generator().generate(z)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    entry = save_student(tmp_path, d)
    assert entry["format"] == "denoiser" and entry["nfe"] == 1
    gen, info = load_student(tmp_path)
    assert info["student"]["method"] == "hipa"
    with torch.no_grad():
        torch.testing.assert_close(gen.generate(z), got)


def tiny_mlp_teacher():
    torch.manual_seed(0)
    return Denoiser(MLP(2, hidden=16, depth=1), RectifiedFlow(), prediction="velocity").eval()


def test_trainer_resume_is_exact(tmp_path):
    teacher, data = tiny_mlp_teacher(), torch.randn(512, 2)

    def run(steps, resume):
        torch.manual_seed(1)  # the LoRA factors' initialisation
        d = HiPADistiller(teacher, toy_config("hipa", num_pairs=128, pair_nfe=4))
        cfg = TrainConfig(steps=steps, batch_size=32, ckpt_every=3, seed=0,
                          out_dir=str(tmp_path / "run"), resume=resume, progress=False)
        Trainer(cfg).fit(d, data)
        return d
    torch.manual_seed(1)
    full = HiPADistiller(teacher, toy_config("hipa", num_pairs=128, pair_nfe=4))
    Trainer(TrainConfig(steps=6, batch_size=32, seed=0, out_dir=str(tmp_path / "full"),
                        progress=False)).fit(full, data)
    run(3, False)
    resumed = run(6, True)
    for (n, a), b in zip(full.student.state_dict().items(),
                         resumed.student.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("field, value, match", [
    ("rank", 0, "rank must be a positive integer"),
    ("hf_weight", -1.0, "hf_weight must be >= 0"),
    ("t_start", 1.5, r"t_start must be in \(0, 1\]"),
    ("pair_solver", "nope", "unknown solver 'nope'"),
    ("lr", float("nan"), "lr is NaN"),
])
def test_config_errors(field, value, match):
    with pytest.raises(ValueError, match=match):
        HiPADistiller(tiny_mlp_teacher(), HiPAConfig(**{field: value}))
