"""`onestep.image.diffusers.from_diffusers`: tiny random diffusers UNet2DModels saved with
save_pretrained load as core Denoisers whose x0 (and velocity) equal diffusers' own predictions,
and distil end to end."""

import json

import pytest
import torch

from onestep.core.paths import VP, RectifiedFlow
from onestep.image.diffusers import from_diffusers

diffusers = pytest.importorskip("diffusers")

F64 = torch.float64


@pytest.fixture(autouse=True)
def float32_default():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(dtype)


def tiny_unet(seed=0, **kw):
    torch.manual_seed(seed)
    config = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                  layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    config.update(kw)
    return diffusers.UNet2DModel(**config).eval()


def save(folder, unet, scheduler):
    """UNet2DModel.save_pretrained, with the scheduler's config beside it."""
    unet.save_pretrained(folder)
    if scheduler is not None:
        scheduler.save_pretrained(folder)
    return folder


def images(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randn(n, 1, 8, 8, generator=g)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


# -- 1. discrete DDPM/DDIM schedulers: x0 equals the scheduler's pred_original_sample ----------
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_ddpm_x0_matches_diffusers(tmp_path, kind, schedule):
    unet = tiny_unet()
    sched = diffusers.DDPMScheduler(beta_schedule=schedule, prediction_type=kind,
                                    clip_sample=False)
    den = from_diffusers(save(tmp_path, unet, sched))
    assert isinstance(den.path, VP) and den.path.num_steps == 1000
    assert den.prediction == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[kind]
    assert den.time_input == "index"
    x0, noise = images()
    for n in (0, 10, 300, 700, 999):
        ts = torch.full((3,), n, dtype=torch.long)
        x_n = sched.add_noise(x0, noise, ts)
        t = (n + 1) / 1000  # the core time of step n
        # the time mapping: the path's x_t at t is diffusers' x_n at step n
        a, s = den.path.alpha_sigma(torch.tensor(t, dtype=F64))
        assert rel_err((a * x0 + s * noise).float(), x_n) < 1e-6
        with torch.no_grad():
            out = unet(x_n, ts).sample
            ref = sched.step(out, n, x_n).pred_original_sample
            got = den.x0(x_n, t)
        assert got.dtype == torch.float32
        assert rel_err(got, ref) < 1e-5, n


def test_ddim_and_clipping(tmp_path):
    """DDIMScheduler's pred_original_sample; DDPM's default clip_sample=True clips x0 in its step
    only (the Denoiser's x0 is the raw prediction, clipped here it matches)."""
    unet = tiny_unet()
    ddim = diffusers.DDIMScheduler(prediction_type="v_prediction", clip_sample=False)
    den = from_diffusers(save(tmp_path / "ddim", unet, ddim))
    ddim.set_timesteps(1000)
    ddpm = diffusers.DDPMScheduler()  # clip_sample=True
    den_clip = from_diffusers(save(tmp_path / "ddpm", unet, ddpm))
    x0, noise = images()
    for n in (5, 400, 900):
        ts = torch.full((3,), n, dtype=torch.long)
        x_n = ddim.add_noise(x0, noise, ts)
        with torch.no_grad():
            out = unet(x_n, ts).sample
            assert rel_err(den.x0(x_n, (n + 1) / 1000),
                           ddim.step(out, n, x_n).pred_original_sample) < 1e-5
            ref = ddpm.step(out, n, x_n).pred_original_sample
            assert rel_err(den_clip.x0(x_n, (n + 1) / 1000).clamp(-1, 1), ref) < 1e-5


# -- 2. flow matching ---------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_match_velocity_and_x0(tmp_path, shift):
    """x_sigma = (1 - sigma) x0 + sigma noise; the UNet sees sigma * 1000 and predicts noise - x0,
    onestep's "velocity" with the same sign: one Euler step of each sampler agrees, and
    x0 = x - sigma v. shift moves the sampler's sigmas only."""
    unet = tiny_unet()
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    den = from_diffusers(save(tmp_path, unet, sched))
    assert isinstance(den.path, RectifiedFlow) and den.prediction == "velocity"
    x0, noise = images()
    sched.set_timesteps(4)
    sigmas = sched.sigmas
    for i, timestep in enumerate(sched.timesteps):
        sigma = sigmas[i].item()
        x = sched.scale_noise(x0, timestep.reshape(1), noise)
        assert rel_err(x, (1 - sigma) * x0 + sigma * noise) < 1e-6
        with torch.no_grad():
            v = unet(x, timestep.expand(3)).sample  # what the pipeline feeds and gets
            assert rel_err(den.velocity(x, sigma), v) < 1e-5
            assert rel_err(den.x0(x, sigma), x - sigma * v) < 1e-5
            ref = sched.step(v, timestep, x).prev_sample  # Euler: x + (sigma_next - sigma) v
            ours = x + (sigmas[i + 1].item() - sigma) * den.velocity(x, sigma)
            assert rel_err(ours, ref) < 1e-5


# -- 3. class-conditional -----------------------------------------------------------------------
def test_class_conditional_and_guidance(tmp_path):
    unet = tiny_unet(num_class_embeds=3)
    folder = save(tmp_path, unet, diffusers.DDPMScheduler(clip_sample=False))
    den = from_diffusers(folder)
    x, _ = images(4)
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        a = den.x0(x, 0.5, labels)
        b = den.x0(x, 0.5, torch.tensor([1, 2, 0, 1]))
        ref = unet(x, torch.full((4,), 499.0), class_labels=labels).sample
        assert rel_err(den(x, 0.5, labels), ref) < 1e-5
    assert not torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="class-conditional"):
        den.x0(x, 0.5)

    g = from_diffusers(folder, guidance=3.0, null_class=2)
    with torch.no_grad():
        out = g(x, 0.5, labels)
        cond = unet(x, torch.full((4,), 499.0), class_labels=labels).sample
        uncond = unet(x, torch.full((4,), 499.0), class_labels=torch.full((4,), 2)).sample
    assert torch.isfinite(out).all()
    assert rel_err(out, uncond + 3.0 * (cond - uncond)) < 1e-5
    with pytest.raises(ValueError, match="null_class"):
        from_diffusers(folder, guidance=3.0)


# -- 4. folder layouts --------------------------------------------------------------------------
def test_pipeline_and_sibling_folders(tmp_path):
    unet = tiny_unet()
    sched = diffusers.DDPMScheduler(prediction_type="v_prediction")
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "pipe")
    unet.save_pretrained(tmp_path / "split" / "unet")  # no model_index.json: scheduler/ sibling
    sched.save_pretrained(tmp_path / "split" / "scheduler")
    unet.save_pretrained(tmp_path / "bare")  # no scheduler config: pass one
    x, _ = images()
    with torch.no_grad():
        ref = from_diffusers(save(tmp_path / "same", unet, sched)).x0(x, 0.3)
        for den in (from_diffusers(tmp_path / "pipe"),
                    from_diffusers(str(tmp_path / "pipe"), subfolder="unet"),
                    from_diffusers(tmp_path / "split" / "unet"),
                    from_diffusers(tmp_path / "bare", scheduler=sched),
                    from_diffusers(tmp_path / "bare", scheduler=dict(sched.config,
                                                                    _class_name="DDPMScheduler")),
                    from_diffusers(tmp_path / "bare", scheduler=tmp_path / "split" / "scheduler")):
            assert den.prediction == "v"
            assert torch.equal(den.x0(x, 0.3), ref)


def test_learned_variance_is_split(tmp_path):
    unet = tiny_unet(out_channels=2)
    den = from_diffusers(save(tmp_path, unet, diffusers.DDPMScheduler(
        variance_type="learned_range", clip_sample=False)))
    x, _ = images()
    with torch.no_grad():
        assert torch.equal(den(x, 0.5), unet(x, torch.full((3,), 499.0)).sample[:, :1])


# -- 5. errors ----------------------------------------------------------------------------------
def _one_line_error(exc_type, match, *args, **kw):
    with pytest.raises(exc_type, match=match) as e:
        from_diffusers(*args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_errors(tmp_path):
    missing = tmp_path / "nope"
    assert str(missing) in _one_line_error(FileNotFoundError, "no such local folder", missing)
    (tmp_path / "empty").mkdir()
    _one_line_error(ValueError, "no config.json", tmp_path / "empty")
    (tmp_path / "cond").mkdir()
    (tmp_path / "cond" / "config.json").write_text(json.dumps(
        {"_class_name": "UNet2DConditionModel"}))
    _one_line_error(ValueError, "UNet2DConditionModel, not a UNet2DModel", tmp_path / "cond")

    tiny_unet(time_embedding_type="fourier").save_pretrained(tmp_path / "fourier")
    _one_line_error(ValueError, "time_embedding_type='fourier'", tmp_path / "fourier",
                    scheduler=diffusers.DDPMScheduler())

    unet = tiny_unet()
    bare = tmp_path / "bare"
    unet.save_pretrained(bare)
    msg = _one_line_error(FileNotFoundError, "no scheduler_config.json", bare)
    assert "scheduler=" in msg and str(bare) in msg

    def with_config(name, **config):
        folder = tmp_path / name
        unet.save_pretrained(folder)
        (folder / "scheduler_config.json").write_text(json.dumps(config))
        return folder

    _one_line_error(ValueError, "unknown prediction_type 'flow'",
                    with_config("pred", _class_name="DDPMScheduler", prediction_type="flow"))
    _one_line_error(ValueError, "unknown scheduler class 'NoSuchScheduler'",
                    with_config("cls", _class_name="NoSuchScheduler"))
    _one_line_error(ValueError, "unsupported scheduler class ScoreSdeVeScheduler",
                    with_config("ve", _class_name="ScoreSdeVeScheduler"))
    _one_line_error(ValueError, "invert_sigmas",
                    with_config("inv", _class_name="FlowMatchEulerDiscreteScheduler",
                                invert_sigmas=True))
    _one_line_error(ValueError, "unconditional", bare, scheduler=diffusers.DDPMScheduler(),
                    guidance=2.0)


# -- 6. end to end: a 2-step progressive distillation of the loaded teacher ----------------------
def test_progressive_distillation_end_to_end(tmp_path):
    from onestep.core.distill import get_method, toy_config
    from onestep.core.train import TrainConfig, Trainer

    teacher = from_diffusers(save(tmp_path / "teacher", tiny_unet(),
                                  diffusers.DDPMScheduler(clip_sample=False)))
    config = toy_config("progressive", teacher, start_steps=4, final_steps=2, steps_per_round=3)
    distiller = get_method("progressive")[1](teacher, config)
    data = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    before = [p.detach().clone() for p in distiller.student.parameters()]
    Trainer(TrainConfig(steps=3, batch_size=4, out_dir=tmp_path / "run", progress=False,
                        device="cpu", log_every=1)).fit(distiller, data)
    assert distiller.student_steps == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, distiller.student.parameters(),
                                                     strict=True))
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = distiller.generator().generate(noise, nfe=2)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()


# -- 7. the command line takes a diffusers folder wherever it takes a teacher --------------------
def test_cli_samples_and_distills_a_diffusers_teacher(tmp_path):
    """`sample --model` and `distill --teacher` on a class-conditional diffusers folder; the
    2-step student saves as an onestep model (its network the diffusers UNet, rebuilt from its
    config) and samples through `sample --model`; a saved teacher round-trips exactly."""
    import numpy as np

    from onestep.core.io import load_model, save_model
    from onestep.image.cli import main
    from onestep.image.commands import load_teacher

    folder = save(tmp_path / "ddpm", tiny_unet(num_class_embeds=10),
                  diffusers.DDPMScheduler(clip_sample=False))
    tiny = ["--threads", "1", "--no-progress"]
    assert main(["sample", "--model", str(folder), "--n", "6", "--nfe", "3", "--solver", "ddim",
                 "--out", str(tmp_path / "t.npz"), *tiny]) == 0
    z = np.load(tmp_path / "t.npz")
    assert z["images"].shape == (6, 1, 8, 8) and z["labels"].tolist() == [0, 1, 2, 3, 4, 5]

    assert main(["distill", "--teacher", str(folder), "--method", "progressive", "--steps", "3",
                 "--set", "start_steps=4 final_steps=2 steps_per_round=3", "--batch-size", "8",
                 "--out", str(tmp_path / "student"), *tiny]) == 0
    info = json.loads((tmp_path / "student" / "model.json").read_text())
    assert info["network"]["name"] == "onestep.image.diffusers:UNetAdapter"
    assert info["student"]["nfe"] == 2 and info["extra"]["num_classes"] == 10
    assert main(["sample", "--model", str(tmp_path / "student"), "--n", "4",
                 "--out", str(tmp_path / "s.npz"), *tiny]) == 0
    s = np.load(tmp_path / "s.npz")["images"]
    assert s.shape == (4, 1, 8, 8) and np.isfinite(s).all()

    teacher, _ = load_teacher(str(folder))
    save_model(tmp_path / "saved", teacher, kind="teacher")
    again, _ = load_model(tmp_path / "saved", kind="teacher")
    x, t, c = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 0.5, 0.9]), torch.tensor([1, 2, 3])
    assert torch.equal(teacher.x0(x, t, c), again.x0(x, t, c))


def test_search_schedule_opens_a_diffusers_teacher(tmp_path):
    """search-schedule's loader takes the shape and the classes from a diffusers folder (the
    search itself is tested on an onestep-image teacher in test_cli)."""
    from onestep.image.commands import _search_model

    folder = save(tmp_path / "ddpm", tiny_unet(num_class_embeds=10),
                  diffusers.DDPMScheduler(clip_sample=False))
    den, shape, cond_for = _search_model(str(folder))
    assert shape == (1, 8, 8) and cond_for(3).tolist() == [0, 1, 2]
    x = torch.randn(3, 1, 8, 8)
    assert den.x0(x, torch.full((3,), 0.5), cond_for(3)).shape == x.shape
    plain = save(tmp_path / "plain", tiny_unet(), diffusers.DDPMScheduler(clip_sample=False))
    assert _search_model(str(plain))[2](4) is None
