"""Image teachers (make_teacher, teacher_loss, training_data) and PNG grids (save_grid,
save_panels, checkpoint_grid): forward passes with labels, guidance, save/load round trips,
short training runs through the core Trainer, label dropout, pixel sizes of the PNGs."""


import numpy as np
import pytest
import torch
from PIL import Image

from onestep.core.denoiser import Denoiser
from onestep.core.io import load_model, save_model
from onestep.core.losses import EDMLoss, FlowMatchingLoss
from onestep.core.nn import DiT, EDMPrecond, UNet
from onestep.core.paths import EDM, RectifiedFlow
from onestep.core.sampling import sample
from onestep.core.train import LossTask, TrainConfig, Trainer
from onestep.image.data import ImageData, load_images
from onestep.image.grid import (
    checkpoint_grid,
    grid_image,
    grid_on_checkpoint,
    panels_image,
    save_grid,
    save_panels,
)
from onestep.image.models import (
    make_teacher,
    network_config,
    teacher_loss,
    teacher_num_classes,
    training_data,
)

SHAPE = (1, 8, 8)


def _perturb(den: Denoiser, seed: int = 0) -> Denoiser:
    """Random weights everywhere: fresh nets zero their output layers (output independent of
    the labels), which would let label and guidance tests pass vacuously."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in den.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return den.eval()


@pytest.fixture(scope="module")
def digits():
    return load_images("digits")


# ---------------------------------------------------------------------------------- teachers


@pytest.mark.parametrize("arch", ["unet", "dit"])
@pytest.mark.parametrize("objective", ["edm", "flow"])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_make_teacher_forward_guidance_and_round_trip(tmp_path, arch, objective, num_classes):
    torch.manual_seed(0)
    den = _perturb(make_teacher(SHAPE, num_classes=num_classes, arch=arch, objective=objective))
    inner = den.model.net if objective == "edm" else den.model
    assert isinstance(inner, UNet if arch == "unet" else DiT)
    if objective == "edm":
        assert isinstance(den.model, EDMPrecond) and isinstance(den.path, EDM)
        assert (den.prediction, den.time_input) == ("x0", "sigma")
        assert den.path.sigma_data == den.model.sigma_data == 0.5
    else:
        assert isinstance(den.path, RectifiedFlow)
        assert (den.prediction, den.time_input) == ("velocity", "t")
    assert den.null_cond == (num_classes or None)
    assert teacher_num_classes(den) == num_classes

    x = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(1))
    t = torch.linspace(0.2, 0.9, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 9]) if num_classes else None
    with torch.no_grad():
        out = den(x, t, labels)
    assert out.shape == x.shape and torch.isfinite(out).all()

    if num_classes:
        null = torch.full_like(labels, num_classes)
        with torch.no_grad():
            other = den(x, t, (labels + 1) % num_classes)
            uncond = den(x, t, null)
            guided = den.with_guidance(3.0)(x, t, labels)
        assert not torch.allclose(out, other)  # the labels reach the network
        assert not torch.allclose(out, uncond)
        torch.testing.assert_close(guided, uncond + 3.0 * (out - uncond), rtol=1e-4, atol=1e-5)
    else:
        with pytest.raises(ValueError, match="unconditional"):
            den(x, t, torch.zeros(6, dtype=torch.long))

    save_model(tmp_path / "teacher", den)
    loaded, info = load_model(tmp_path / "teacher", kind="teacher")
    assert info["null_cond"] == den.null_cond and teacher_num_classes(loaded) == num_classes
    assert type(loaded.model) is type(den.model) and type(loaded.path) is type(den.path)
    with torch.no_grad():
        again = loaded(x, t, labels)
    assert torch.equal(again, out)
    if num_classes:
        with torch.no_grad():
            assert torch.equal(loaded.with_guidance(3.0)(x, t, labels), guided)


def test_network_config_presets_and_overrides():
    unet = network_config(SHAPE, num_classes=10)
    assert unet["base"] == 16 and unet["num_classes"] == 10 and unet["time_scale"] == 250.0
    assert network_config(SHAPE, objective="flow").get("time_scale") is None  # core default 1000
    assert network_config(SHAPE)["num_classes"] is None
    assert len(network_config(SHAPE, size="small")["mults"]) > len(unet["mults"])
    assert network_config(SHAPE, base=8, mults=(1,))["base"] == 8
    assert network_config(SHAPE, arch="dit")["patch_size"] == 2  # 16 tokens
    assert network_config((1, 28, 28), arch="dit", size="small")["patch_size"] == 4  # 49
    assert network_config((3, 32, 32), arch="dit", size="base")["patch_size"] == 2  # 256
    assert network_config((1, 28, 28), arch="dit", patch_size=7)["patch_size"] == 7
    assert network_config((1, 9, 9), arch="dit")["patch_size"] == 1
    den = make_teacher((3, 16, 16), arch="dit", hidden=32, depth=1, heads=2)
    assert den.model.net.config["hidden"] == 32 and den.model.net.config["in_channels"] == 3
    for bad in (dict(arch="vit"), dict(size="huge"), dict(objective="ddpm"), dict(widht=3),
                dict(num_classes=1), dict(hidden=64)):
        with pytest.raises(ValueError):
            make_teacher(SHAPE, **bad)
    with pytest.raises(ValueError, match="image_shape"):
        make_teacher((8, 8))


def test_teacher_loss_settings():
    edm = teacher_loss("edm", label_dropout=0.2, sigma_data=0.7, p_mean=-1.0)
    assert isinstance(edm, EDMLoss)
    assert (edm.cond_dropout, edm.sigma_data, edm.p_mean) == (0.2, 0.7, -1.0)
    flow = teacher_loss("flow", time_sampler="logit_normal")
    assert isinstance(flow, FlowMatchingLoss)
    assert (flow.cond_dropout, flow.time_sampler) == (0.1, "logit_normal")
    for bad in (dict(objective="vp"), dict(objective="edm", label_dropout=1.5)):
        with pytest.raises(ValueError):
            teacher_loss(**bad)


class _Probe(torch.nn.Module):
    """Records the labels the loss hands the network; predicts zeros (x0 and velocity alike)."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, cond=None):
        self.seen.append(None if cond is None else cond.clone())
        return x * self.w


@pytest.mark.parametrize("objective", ["edm", "flow"])
@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_label_dropout_drops_labels_at_the_rate(objective, rate):
    probe = _Probe()
    path = EDM() if objective == "edm" else RectifiedFlow()
    pred = "x0" if objective == "edm" else "velocity"
    den = Denoiser(probe, path, prediction=pred, time_input="t", null_cond=10)
    n = 4000
    labels = torch.arange(n) % 10
    x = torch.zeros(n, *SHAPE)
    loss, _ = teacher_loss(objective, label_dropout=rate)(
        den, (x, labels), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    (seen,) = probe.seen
    dropped = seen == 10
    assert abs(dropped.float().mean().item() - rate) < 0.03
    assert torch.equal(seen[~dropped], labels[~dropped])  # kept labels are untouched


def test_training_data(digits):
    cond = make_teacher(digits.shape, num_classes=10)
    images, labels = training_data(digits, cond)
    assert images is digits.images and labels is digits.labels
    assert training_data(digits, make_teacher(digits.shape)) is digits.images
    unlabelled = ImageData(digits.images[:20])
    with pytest.raises(ValueError, match="no labels"):
        training_data(unlabelled, cond)
    with pytest.raises(ValueError, match="5 classes"):
        training_data(digits, make_teacher(digits.shape, num_classes=5))


def _fit(digits, out, steps, *, resume=False):
    torch.manual_seed(0)
    trainer = Trainer(TrainConfig(steps=steps, batch_size=32, seed=0, out_dir=out, log_every=10,
                                  ckpt_every=10, progress=False, resume=resume))
    den = make_teacher(digits.shape, num_classes=10)  # after Trainer(): seeded
    task = LossTask(den, teacher_loss("edm"), lr=5e-3, warmup=5, ema_decay=0.9)
    records = trainer.fit(task, training_data(digits, den))
    return task, records


def test_training_lowers_the_loss_and_resumes_exactly(digits, tmp_path):
    torch.set_num_threads(1)
    task, records = _fit(digits, tmp_path / "full", 40)
    losses = [r["logs"]["loss"] for r in records]
    assert len(losses) == 4 and losses[-1] < 0.75 * losses[0], losses
    assert (tmp_path / "full" / "checkpoints").is_dir()

    _fit(digits, tmp_path / "cut", 20)
    resumed, _ = _fit(digits, tmp_path / "cut", 40, resume=True)
    for name in ("model", "ema"):
        a, b = task.modules()[name].state_dict(), resumed.modules()[name].state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


# ---------------------------------------------------------------------------------- grids


def _images(n, c=1, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g) * 2 - 1


def _ink(region: Image.Image) -> int:
    """How many dark (text) pixels a white strip holds."""
    return int((np.asarray(region.convert("L")) < 128).sum())


def test_save_grid_pixels_and_size(tmp_path):
    x = _images(5)
    x[0] = 1.0
    x[1] = -1.0
    path = save_grid(x, tmp_path / "sub" / "grid.png", nrow=3, scale=4, pad=2)
    assert path == tmp_path / "sub" / "grid.png"
    im = Image.open(path)
    assert im.format == "PNG" and im.mode == "L"
    assert im.size == (3 * 32 + 4 * 2, 2 * 32 + 3 * 2)
    a = np.asarray(im)
    assert (a[2:34, 2:34] == 255).all() and (a[2:34, 36:68] == 0).all()  # images 0 and 1
    want = np.rint((x[4, 0].numpy() + 1) * 127.5).astype(np.uint8)  # image 4: row 1, col 1
    assert np.array_equal(a[36:68, 36:68], want.repeat(4, 0).repeat(4, 1))
    assert (a[:2] == 255).all() and (a[34:36] == 255).all()  # padding
    assert (a[36:68, 70:102] == 255).all()  # the empty sixth cell
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temporary left

    default = grid_image(_images(9))  # 8x8 -> 64x64 cells, 3 per row
    assert default.size == (3 * 64 + 4 * 2, 3 * 64 + 4 * 2)
    rgb = grid_image(_images(4, c=3, h=5, w=6), nrow=4, scale=2, pad=0)
    assert rgb.mode == "RGB" and rgb.size == (4 * 12, 10)
    grey_hw = grid_image(_images(2)[:, 0], scale=1, pad=0)  # (N, H, W)
    assert grey_hw.size == (16, 8)

    for bad in (torch.full((2, 1, 8, 8), float("nan")), torch.zeros(2, 2, 8, 8),
                torch.zeros(0, 1, 8, 8), torch.zeros(8, 8)):
        with pytest.raises(ValueError):
            grid_image(bad)
    with pytest.raises(ValueError, match="labels"):
        grid_image(_images(3), labels=[1, 2])


def test_save_grid_title_and_labels_are_drawn(tmp_path):
    x = -torch.ones(4, 1, 8, 8)  # black cells: any dark pixel in a strip is text
    plain = grid_image(x, nrow=2, scale=4, pad=2)
    titled = Image.open(save_grid(x, tmp_path / "t.png", nrow=2, scale=4, pad=2,
                                  title="teacher samples"))
    strip = titled.height - plain.height
    assert strip > 8 and titled.width >= plain.width
    assert _ink(titled.crop((0, 0, titled.width, strip))) > 20
    assert _ink(grid_image(x, nrow=2, scale=4, pad=2, title=" ").crop((0, 0, 10, strip))) == 0
    assert titled.width > grid_image(x, nrow=2, scale=1, pad=2).width  # widened to fit the title
    labelled = grid_image(x, nrow=2, scale=4, pad=2, labels=["zero", "one", "two", "three"])
    label_h = (labelled.height - plain.height) // 2
    assert label_h > 8
    under_first = labelled.crop((2, 2 + 32, 2 + 32, 2 + 32 + label_h))
    assert _ink(under_first) > 5


def test_save_panels(tmp_path):
    real, fake = -torch.ones(6, 1, 8, 8), -torch.ones(6, 1, 8, 8)
    path = save_panels([("real", real), ("teacher", fake, list(range(6)))], tmp_path / "p.png",
                       nrow=3, scale=2, pad=1, gap=10)
    im = Image.open(path)
    a = grid_image(real, nrow=3, scale=2, pad=1, title="real")
    b = grid_image(fake, nrow=3, scale=2, pad=1, title="teacher", labels=list(range(6)))
    assert im.mode == "L" and im.size == (a.width + 10 + b.width, max(a.height, b.height))
    assert np.array_equal(np.asarray(im.crop((0, 0, a.width, a.height))), np.asarray(a))
    assert np.array_equal(np.asarray(im.crop((a.width + 10, 0, im.width, b.height))),
                          np.asarray(b))
    title_h = a.height - grid_image(real, nrow=3, scale=2, pad=1).height
    assert _ink(im.crop((0, 0, a.width, title_h))) > 5  # "real" is drawn
    assert _ink(im.crop((a.width + 10, 0, im.width, title_h))) > 5  # "teacher" too

    mixed = panels_image([("grey", real), ("rgb", _images(6, c=3))], title="overall")
    assert mixed.mode == "RGB"
    with pytest.raises(ValueError):
        panels_image([])
    with pytest.raises(ValueError):
        panels_image([("only a title",)])


def test_checkpoint_grid(tmp_path):
    torch.manual_seed(0)
    den = _perturb(make_teacher(SHAPE, num_classes=10, base=8))
    den.train()
    path = checkpoint_grid(den, tmp_path / "ckpt" / "step_10.png", n=20, nfe=2, solver="euler",
                           guidance=2.0, image_shape=SHAPE, title="step 10")
    im = Image.open(path)
    plain = grid_image(torch.zeros(20, *SHAPE), nrow=10)  # one class per column
    title = grid_image(torch.zeros(20, *SHAPE), nrow=10, title="step 10")
    assert im.size == title.size and title.height > plain.height
    assert den.training  # the mode is restored
    noise = torch.randn(20, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # class-balanced labels, one class per column, guided, seeded noise
        x = sample(den.with_guidance(2.0), noise, nfe=2, solver="euler", schedule="karras",
                   cond=torch.arange(20) % 10)
    want = grid_image(x, nrow=10, title="step 10")
    assert np.array_equal(np.asarray(im), np.asarray(want))

    again = checkpoint_grid(den, tmp_path / "again.png", n=20, nfe=2, solver="euler",
                            guidance=2.0, image_shape=SHAPE, title="step 10")
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(im))  # same noise
    other = checkpoint_grid(den, tmp_path / "seed1.png", n=20, nfe=2, solver="euler",
                            guidance=2.0, image_shape=SHAPE, title="step 10", seed=1)
    assert not np.array_equal(np.asarray(Image.open(other)), np.asarray(im))

    with pytest.raises(ValueError, match="image_shape"):
        checkpoint_grid(den, tmp_path / "x.png", nfe=2, solver="euler")
    state = torch.get_rng_state()
    checkpoint_grid(den, tmp_path / "sde.png", n=10, nfe=3, solver="euler_a",
                    image_shape=SHAPE)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    dit = make_teacher(SHAPE, arch="dit", objective="flow", hidden=16, depth=1, heads=2)
    default = Image.open(checkpoint_grid(dit, tmp_path / "dit.png", nfe=2, solver="euler"))
    assert default.size == grid_image(torch.zeros(64, *SHAPE)).size  # 64 in an 8x8 grid


def test_grid_on_checkpoint_with_the_trainer(digits, tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(TrainConfig(steps=4, batch_size=8, ckpt_every=2, out_dir=tmp_path / "run",
                                  progress=False))
    den = make_teacher(digits.shape, num_classes=10, base=8)
    task = LossTask(den, teacher_loss("edm"), ema_decay=0.9)
    callback = grid_on_checkpoint(task.ema.module, tmp_path / "run" / "samples", n=10, nfe=2,
                                  solver="euler", image_shape=digits.shape)
    trainer.fit(task, training_data(digits, den), on_checkpoint=callback)
    files = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())
    assert files == ["samples_0000002.png", "samples_0000004.png"]
