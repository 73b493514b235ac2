"""LoRA students: the student as low-rank adaptors on the frozen teacher (DMD / DMD2
`student_lora_rank`), saved as the adaptors alone with the teacher's weight hash and loaded from
the teacher folder; a missing or different teacher is a one-line CheckpointError."""

import shutil

import pytest
import torch

from onestep.core.denoiser import Denoiser
from onestep.core.distill.dmd import DMD2Config, DMD2Distiller, DMDConfig, DMDDistiller
from onestep.core.io import CheckpointError, load_model, load_student, save_model, save_student
from onestep.core.nn import MLP, EDMPrecond, UNet, lora_parameters
from onestep.core.nn.guidance import with_guidance_cond
from onestep.core.paths import EDM, RectifiedFlow

torch.set_num_threads(1)


def mlp_teacher():
    torch.manual_seed(0)
    return Denoiser(MLP(2, hidden=64, depth=2, num_classes=3), RectifiedFlow(),
                    prediction="velocity", null_cond=3).eval().requires_grad_(False)


def batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g), torch.randint(0, 3, (n,), generator=g)


def train(d, steps):
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        d.step(batch(32, step), step=step, generator=g)
    return d


NOISE, LABELS = batch(64, 99)


def test_only_the_adaptors_train_and_the_teacher_stays(tmp_path):
    teacher = mlp_teacher()
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    d = DMDDistiller(teacher, DMDConfig(student_lora_rank=4, num_pairs=16, pair_nfe=4))
    trainable = [p for g in d.optimizers()["student"].param_groups for p in g["params"]]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(d.student.model)}
    with torch.no_grad():
        start = d.generator().generate(NOISE, LABELS)
    train(d, 20)
    with torch.no_grad():
        moved = (d.generator().generate(NOISE, LABELS) - start).abs().max()
    assert moved > 1e-4  # the adaptors learned something
    for k, v in teacher.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    frozen = {k: v for k, v in d.student.model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(v, before[k.replace(".base.", ".")]) for k, v in frozen.items())


def test_saved_alone_loaded_from_the_teacher_bit_exactly(tmp_path):
    teacher = mlp_teacher()
    save_model(tmp_path / "teacher", teacher)
    d = train(DMDDistiller(teacher, DMDConfig(student_lora_rank=4, num_pairs=16, pair_nfe=4)), 5)
    entry = save_student(tmp_path / "s", d, teacher_folder=tmp_path / "teacher")
    assert entry["format"] == "adapter" and entry["teacher"]["folder"] == "../teacher"
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == ["adapter.safetensors", "model.json"]
    lora_bytes = (tmp_path / "s" / "adapter.safetensors").stat().st_size
    full_bytes = (tmp_path / "teacher" / "model.safetensors").stat().st_size
    assert lora_bytes < 0.35 * full_bytes, (lora_bytes, full_bytes)
    gen, info = load_student(tmp_path / "s")
    with torch.no_grad():
        assert torch.equal(gen.generate(NOISE, LABELS), d.generator().generate(NOISE, LABELS))
    with pytest.raises(CheckpointError, match="load_student"):
        load_model(tmp_path / "s")
    # the teacher moved: pass its folder; gone: a clear error
    shutil.move(tmp_path / "teacher", tmp_path / "moved")
    with pytest.raises(CheckpointError, match="holds no saved model; pass the teacher"):
        load_student(tmp_path / "s")
    gen2, _ = load_student(tmp_path / "s", teacher=tmp_path / "moved")
    with torch.no_grad():
        assert torch.equal(gen2.generate(NOISE, LABELS), d.generator().generate(NOISE, LABELS))
    # another teacher (one weight changed): refused, naming both hashes
    other = mlp_teacher()
    with torch.no_grad():
        other.model.out.bias[0] += 1e-3
    save_model(tmp_path / "other", other)
    with pytest.raises(CheckpointError, match="is not the one .* was distilled from"):
        load_student(tmp_path / "s", teacher=tmp_path / "other")
    with pytest.raises(ValueError, match="another teacher"):
        save_student(tmp_path / "s2", d, teacher_folder=tmp_path / "other")


def test_without_a_teacher_folder_the_teacher_is_saved_beside_it(tmp_path):
    d = train(DMDDistiller(mlp_teacher(), DMDConfig(student_lora_rank=2, num_pairs=16,
                                                    pair_nfe=4, ema_decay=0.9)), 3)
    entry = save_student(tmp_path / "s", d)
    assert entry["teacher"]["folder"] == "teacher"
    gen, _ = load_student(tmp_path / "s")
    with torch.no_grad():
        assert torch.equal(gen.generate(NOISE, LABELS), d.generator().generate(NOISE, LABELS))


def test_lora_and_guidance_conditioned_dmd2_student_on_a_unet(tmp_path):
    """An image-like teacher (EDM-preconditioned UNet, 8x8): a rank-4 LoRA student that also takes
    w. Only the adaptors and the w embedding are saved; they are a small part of the network."""
    torch.manual_seed(0)
    net = EDMPrecond(UNet(1, base=32, mults=(1, 2), num_classes=10, time_scale=250.0))
    teacher = Denoiser(net, EDM(), prediction="x0", time_input="sigma",
                       null_cond=10).eval().requires_grad_(False)
    save_model(tmp_path / "teacher", teacher)
    config = DMD2Config(student_lora_rank=4, guidance_range=(1.0, 3.0), fake_updates=1)
    d = DMD2Distiller(teacher, config)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 8, 8, generator=g)
    d.step((x, torch.arange(8)), step=0, generator=g)
    save_student(tmp_path / "s", d, teacher_folder=tmp_path / "teacher")
    lora_bytes = (tmp_path / "s" / "adapter.safetensors").stat().st_size
    full_bytes = (tmp_path / "teacher" / "model.safetensors").stat().st_size
    assert lora_bytes < 0.3 * full_bytes, (lora_bytes, full_bytes)
    gen, info = load_student(tmp_path / "s")
    assert info["student"]["adapter"]["guidance"] is not None
    cond = with_guidance_cond(torch.arange(8), 2.0, 8)
    with torch.no_grad():
        assert torch.equal(gen.generate(x, cond), d.generator().generate(x, cond))


def test_lora_settings_are_checked():
    with pytest.raises(ValueError, match="student_lora_rank"):
        DMDConfig(student_lora_rank=0).validate()
    with pytest.raises(ValueError, match="cannot also take a student network"):
        DMDDistiller(mlp_teacher(), DMDConfig(student_lora_rank=2),
                     student_network=MLP(2, hidden=8, num_classes=3))
