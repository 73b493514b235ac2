"""onestep.core.export: a student at a fixed NFE as an ONNX or TorchScript file whose output
equals the eager student's (onnxruntime within 1e-4) at two batch sizes (the dynamic batch
axis), a stochastic multi-step student refused, one-line errors, and the timing of the four
backends. Tiny networks with perturbed weights (the fresh UNet's zero-initialised output layers
would make every output trivially equal)."""

import sys

import pytest
import torch

from onestep.core.denoiser import Denoiser
from onestep.core.distill import get_method, toy_config
from onestep.core.distill.base import DenoiserGenerator
from onestep.core.export import (
    ExportError,
    MissingDependency,
    compile_module,
    export_generator,
    export_student,
    load_exported,
    read_export_info,
    time_backends,
)
from onestep.core.io import CheckpointError, load_student, save_model, save_student
from onestep.core.nn import DiT, EDMPrecond, UNet
from onestep.core.paths import EDM, RectifiedFlow

SHAPE = (1, 8, 8)


def _perturbed(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def _edm_unet(num_classes=10) -> Denoiser:
    net = UNet(in_channels=1, base=16, mults=(1, 2), num_res=1, attn_resolutions=(),
               num_classes=num_classes or None, time_scale=250.0)
    return Denoiser(EDMPrecond(_perturbed(net), sigma_data=0.5), EDM(sigma_data=0.5),
                    prediction="x0", time_input="sigma", null_cond=num_classes or None)


def _flow_dit() -> Denoiser:
    net = DiT(in_channels=1, input_shape=(8, 8), patch_size=2, hidden=32, depth=2, heads=2)
    return Denoiser(_perturbed(net, 1), RectifiedFlow(), prediction="velocity", time_input="t")


def _inputs(n, seed, num_classes=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(num_classes, (n,), generator=g)


def test_onnx_equals_torch_at_two_batch_sizes(tmp_path):
    gen = DenoiserGenerator(_edm_unet()).eval()
    info = export_generator(gen, tmp_path / "s.onnx", format="onnx", sample_shape=SHAPE,
                            num_classes=10, nfe=1, method="test")
    assert read_export_info(tmp_path / "s.onnx") == info
    assert info["sample_shape"] == [1, 8, 8] and info["num_classes"] == 10 and info["nfe"] == 1
    assert info["inputs"] == ["noise", "labels"] and info["method"] == "test"
    run = load_exported(tmp_path / "s.onnx")
    for n in (3, 7):
        noise, labels = _inputs(n, seed=n)
        with torch.no_grad():
            ref = gen.generate(noise, labels, nfe=1)
        out = run(noise, labels)
        assert out.shape == (n, *SHAPE)
        assert (out - ref).abs().max() < 1e-4
        # the labels reach the network: other labels give other images
        assert (run(noise, (labels + 1) % 10) - out).abs().max() > 1e-2
    assert not list(tmp_path.glob(".*"))  # the temporary file was renamed


def test_torchscript_and_onnx_of_a_deterministic_two_step_dit(tmp_path):
    """An unconditional rectified-flow DiT at 2 steps (DDIM re-noising): one input, both
    formats equal to torch."""
    gen = DenoiserGenerator(_flow_dit(), stochastic=False).eval()
    noise = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = gen.generate(noise, nfe=2)
    for fmt in ("torchscript", "onnx"):
        file = tmp_path / f"s.{fmt}"
        info = export_generator(gen, file, format=fmt, sample_shape=SHAPE, nfe=2)
        assert info["inputs"] == ["noise"] and info["num_classes"] == 0
        run = load_exported(file)
        assert run.info["format"] == fmt
        assert (run(noise) - ref).abs().max() < 1e-4, fmt
        assert (run(noise[:2]) - ref[:2]).abs().max() < 1e-4, fmt


def test_a_guidance_conditioned_student_takes_w_as_an_input(tmp_path):
    """One file for every guidance scale: w is the third input (a number or one per sample)."""
    from onestep.core.nn.guidance import GuidanceConditioned, with_guidance_cond

    den = _edm_unet()
    net = GuidanceConditioned(den.model)
    torch.nn.init.normal_(net.embed.mlp[2].weight, std=0.1)  # w reaches the output
    den = Denoiser(net.eval(), den.path, prediction="x0", time_input="sigma", null_cond=10)
    gen = DenoiserGenerator(den).eval()
    info = export_generator(gen, tmp_path / "s.onnx", format="onnx", sample_shape=SHAPE,
                            num_classes=10)
    assert info["inputs"] == ["noise", "labels", "guidance"]
    run = load_exported(tmp_path / "s.onnx")
    noise, labels = _inputs(5, seed=2)
    for w in (1.0, 3.0):
        with torch.no_grad():
            ref = gen.generate(noise, with_guidance_cond(labels, w, 5))
        assert (run(noise, labels, w) - ref).abs().max() < 1e-4
    assert (run(noise, labels, 1.0) - run(noise, labels, 3.0)).abs().max() > 1e-2
    with pytest.raises(ValueError, match="takes guidance"):
        run(noise, labels)


def test_stochastic_multistep_student_is_refused(tmp_path):
    gen = DenoiserGenerator(_edm_unet(), stochastic=True)
    with pytest.raises(ExportError, match="fresh noise at each of its 2 steps"):
        export_generator(gen, tmp_path / "s.onnx", format="onnx", sample_shape=SHAPE,
                         num_classes=10, nfe=2)
    assert not (tmp_path / "s.onnx").exists()
    # at one step it is a function of (noise, labels)
    export_generator(gen, tmp_path / "s.pt", format="torchscript", sample_shape=SHAPE,
                     num_classes=10, nfe=1)


def _saved_student(folder, method):
    teacher = _edm_unet()
    d = get_method(method)[1](teacher, toy_config(method, teacher))
    return save_student(folder, d, extra={"image_shape": list(SHAPE), "num_classes": 10})


def test_export_student_from_a_folder(tmp_path):
    """MeanFlow's two-time student (saved as a generator, not a Denoiser) at 2 steps."""
    entry = _saved_student(tmp_path / "student", "meanflow")
    assert entry["format"] == "generator"
    info = export_student(tmp_path / "student", tmp_path / "s.onnx", format="onnx", nfe=2)
    assert info["method"] == "meanflow" and info["nfe"] == 2 and info["num_classes"] == 10
    gen, _ = load_student(tmp_path / "student")
    noise, labels = _inputs(6, seed=1)
    with torch.no_grad():
        ref = gen.generate(noise, labels, nfe=2)
    assert (load_exported(tmp_path / "s.onnx")(noise, labels) - ref).abs().max() < 1e-4


def test_a_saved_stochastic_student_exports_at_one_step_only(tmp_path):
    """SiM's student re-noises with fresh noise between steps (consistency-style multistep)."""
    _saved_student(tmp_path / "student", "sim")
    with pytest.raises(ExportError, match="export it at nfe=1"):
        export_student(tmp_path / "student", tmp_path / "s.pt", format="torchscript", nfe=2)
    assert export_student(tmp_path / "student", tmp_path / "s.pt", format="torchscript")["nfe"] == 1


def test_errors(tmp_path, monkeypatch):
    gen = DenoiserGenerator(_edm_unet())
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_generator(gen, tmp_path / "s", format="tflite", sample_shape=SHAPE)
    save_model(tmp_path / "teacher", _edm_unet(), kind="teacher")
    with pytest.raises(CheckpointError, match="not a distilled student"):
        export_student(tmp_path / "teacher", tmp_path / "s.onnx", format="onnx")
    with pytest.raises(CheckpointError, match="no such file"):
        export_student(tmp_path, tmp_path / "s.onnx", format="onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError, match="not an ONNX file"):
        load_exported(tmp_path / "junk.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(MissingDependency, match=r"onestep-core\[export\]"):
        export_generator(gen, tmp_path / "s.onnx", format="onnx", sample_shape=SHAPE)
    assert not (tmp_path / "s.onnx").exists()
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        compile_module(gen)


def test_time_backends_reports_seconds_per_image():
    gen = DenoiserGenerator(_edm_unet()).eval()
    times = time_backends(gen, sample_shape=SHAPE, num_classes=10, batch=8, repeats=2, warmup=1,
                          backends=("eager", "onnx", "torchscript"))
    assert set(times) == {"eager", "onnx", "torchscript"}
    assert all(0 < s < 1 for s in times.values())
    with pytest.raises(ValueError, match="unknown backends"):
        time_backends(gen, sample_shape=SHAPE, backends=("tensorrt",))
