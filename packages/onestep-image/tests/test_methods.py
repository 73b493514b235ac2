"""Every distillation method on an image teacher, the way `onestep-image distill` runs it: one tiny
class-conditional 8x8 digits teacher per module, then each name in the live registry
`onestep.core.distill.METHODS` distilled for a few steps through `commands.distill` with
`image_defaults` (only the fields that size a run are shrunk), its student reloaded from the
folder and sampled at its natural NFE. Quality is not measured here (the runs are steps long);
the benchmark measures it. Plus the places where `image_defaults` follows the papers' image
recipes rather than the toy ones.
"""

import dataclasses
import json
import math

import pytest
import torch

from onestep.core.distill import METHODS, get_method, toy_config, toy_steps
from onestep.core.io import load_model, load_student
from onestep.core.nn.lora import LoRALayer, lora_parameters
from onestep.image import commands
from onestep.image.defaults import IMAGE_OVERRIDES, image_defaults
from onestep.image.models import count_parameters

TINY = dict(  # the config fields that size a run, shrunk wherever a method has them
    num_pairs=16, pair_nfe=2, num_couplings=32, coupling_nfe=2, coupling_batch=32,
    regression_pairs=16, regression_nfe=2, start_steps=4, steps_per_round=2, reflow_steps=2,
    distill_steps=2, phase_steps=2, total_steps=4, record_steps=2, node_steps=2,
    num_checkpoints=2,
)
TINY_COUPLINGS = dict(num_couplings=8, coupling_nfe=2, progress=False)
MAX_STEPS = 4
N = 6


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("methods") / "teacher"
    commands.train(out=str(out), steps=120, batch_size=32, lr=5e-3, warmup=20, grid_nfe=0,
                   ckpt_every=1000, threads=1, progress=False)
    return out


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    den, _ = load_model(teacher_dir, kind="teacher")
    return den.eval().requires_grad_(False)


def _tiny(method: str) -> str:
    fields = {f.name for f in dataclasses.fields(get_method(method)[0])}
    return " ".join(f"{k}={v}" for k, v in TINY.items() if k in fields)


def _finite(records) -> bool:
    return all(math.isfinite(v) for r in records for v in r["logs"].values()
               if isinstance(v, (int, float)))


def _overrides(method: str, sets: str) -> dict:
    from onestep.core.runner import parse_overrides

    return parse_overrides(sets, get_method(method)[0])


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_distills_an_image_teacher(method, teacher, teacher_dir, tmp_path):
    sets = _tiny(method)
    planned = toy_steps(method, image_defaults(method, teacher, **_overrides(method, sets)))
    steps = min(planned, MAX_STEPS)
    out = tmp_path / method
    result = commands.distill(teacher=str(teacher_dir), method=method, out=str(out), steps=steps,
                              batch_size=8, set=sets, threads=1, progress=False)
    # the run: the steps asked for, finite logs, the image-scale config
    assert result["records"] and _finite(result["records"]), result["records"]
    assert result["records"][-1]["step"] == steps
    run = json.loads((out / "run.json").read_text())
    assert run["steps"] == steps and run["method"] == method
    for field, value in IMAGE_OVERRIDES.get(method, {}).items():
        if field not in sets:
            assert run["config"][field] == json.loads(json.dumps(value)), field
    # the saved student reloads and samples finite 8x8 images at its natural NFE
    gen, info = load_student(out)
    assert info["kind"] == "student" and info["student"]["method"] == method
    assert info["extra"]["steps"] == steps and info["extra"]["image_shape"] == [1, 8, 8]
    nfe = info["student"]["nfe"]
    assert nfe in (1, 2, 4), nfe
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(N, 1, 8, 8, generator=g)
    with torch.no_grad():
        x = gen.generate(noise, torch.arange(N) % 10, nfe=nfe, generator=g)
    assert x.shape == (N, 1, 8, 8) and bool(torch.isfinite(x).all())
    assert 0 < float(x.abs().max()) < 50  # not collapsed to zero, not diverged


# -- where the image recipe differs from the toy one ----------------------------------------------
def test_image_overrides_name_real_fields_that_differ_from_toy(teacher):
    for method, fields in IMAGE_OVERRIDES.items():
        assert method in METHODS, method
        toy = toy_config(method, teacher)
        image = image_defaults(method, teacher)
        for field, value in fields.items():
            assert getattr(image, field) == value != getattr(toy, field), (method, field)


def test_vsd_fake_score_is_lora_on_the_teacher(teacher):
    """SwiftBrush's "LoRA teacher": the fake score trains only low-rank factors on a frozen
    copy of the teacher's UNet, and equals the teacher before training."""
    d = get_method("vsd")[1](teacher, image_defaults("vsd", teacher))
    assert image_defaults("vsd", teacher).fake == "lora"
    wrapped = [m for m in d.fake.model.modules() if isinstance(m, LoRALayer)]
    assert len(wrapped) > 10 and {m.rank for m in wrapped} == {64}  # toy: 16
    trainable = {id(p) for p in d.fake.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in lora_parameters(d.fake.model)}
    x = torch.randn(4, 1, 8, 8)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    torch.testing.assert_close(d.fake.x0(x, t, torch.arange(4)), teacher.x0(x, t, torch.arange(4)))


def test_slimflow_student_is_a_smaller_unet(teacher):
    d = get_method("slimflow")[1](teacher, image_defaults("slimflow", teacher, **TINY_COUPLINGS))
    student, big = d.student.model, teacher.model
    assert type(student) is type(big) and type(student.net) is type(big.net)  # EDMPrecond(UNet)
    assert student.net.config["base"] < big.net.config["base"]
    assert count_parameters(student) < 0.5 * count_parameters(big)


def test_msd_has_one_student_per_class_group(teacher):
    c = image_defaults("msd", teacher)
    d = get_method("msd")[1](teacher, c)
    gen = d.generator()
    assert gen.num_students == c.num_students > 1
    labels = torch.arange(10)
    route = gen.route(torch.randn(10, 1, 8, 8), labels)
    # every class belongs to exactly one student, whatever the noise; every student has classes
    again = gen.route(torch.randn(10, 1, 8, 8), labels)
    assert torch.equal(route, again) and set(route.tolist()) == set(range(c.num_students))


def test_dmd2_discriminates_on_the_fake_unets_bottleneck_with_two_time_scales(teacher):
    c = image_defaults("dmd2", teacher)
    assert c.fake_updates >= 5 and c.gan_weight > 0 and c.disc_weight > 0  # DMD2 Sec. 4.2-4.3
    d = get_method("dmd2")[1](teacher, c)
    # the official code's conv head on EDMPrecond's UNet's bottleneck
    assert d.critic.layers == ["net.mid2"] and type(d.critic.head).__name__ == \
        "ConvDiscriminatorHead"
    x = torch.randn(4, 1, 8, 8)
    logits = d._discriminate(x, torch.arange(4), torch.Generator().manual_seed(0))
    assert logits.shape == (4,)
    # the GAN's gradient reaches the fake UNet through its features (the paper's shared trunk)
    logits.sum().backward()
    grads = [p.grad for n, p in d.fake.model.named_parameters() if n.startswith("net.down")]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_ict_image_recipe(teacher):
    """iCT on images: the pseudo-Huber metric (Song & Dhariwal 2023, Sec. 3.3), lognormal noise
    (Sec. 3.5) and the doubling curriculum from s0 = 10 to s1 = 1280 (Eq. 8)."""
    c = image_defaults("ict", teacher)
    assert (c.metric, c.p_mean, c.p_std, c.s0, c.s1) == ("pseudo_huber", -1.1, 2.0, 10, 1280)
