"""Guidance and LoRA students through the command line on the embedded digits (tiny runs, so
nothing about quality): `distill --set guidance=2` reaches the real score, a student distilled
with `guidance_range` samples at the `--guidance` it is given, and a `student_lora_rank` student
is saved as its adaptors alone and needs its teacher."""

import json
import shutil

import numpy as np
import pytest

from onestep.image.cli import main

TINY = ["--threads", "1", "--no-progress"]
DMD = ["--method", "dmd", "--steps", 3, "--batch-size", 8]


def _run(*argv):
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    d = tmp_path_factory.mktemp("guidance")
    assert _run("train", "--out", d / "teacher", "--steps", 20, "--ckpt-every", 20,
                "--grid-nfe", 2, *TINY) == 0
    return d / "teacher"


def _images(model, out, *extra):
    assert _run("sample", "--model", model, "--n", 10, "--out", out, *extra, *TINY) == 0
    return np.load(out)["images"]


def test_guided_student_differs_from_the_unguided_one(teacher, tmp_path):
    for w in (1, 2):
        assert _run("distill", "--teacher", teacher, *DMD, "--set",
                    f"guidance={w} num_pairs=8 pair_nfe=2", "--out", tmp_path / f"w{w}",
                    *TINY) == 0
    info = json.loads((tmp_path / "w2" / "model.json").read_text())
    assert info["student"]["config"]["guidance"] == 2.0
    one, two = _images(tmp_path / "w1", tmp_path / "1.npz"), _images(tmp_path / "w2",
                                                                       tmp_path / "2.npz")
    # same seeds, so only the real score's w differs (this 20-step teacher's conditional and null
    # predictions are close; the direction of the effect is measured in core's tests)
    assert not np.array_equal(one, two)


def test_guidance_conditioned_student_samples_at_the_given_w(teacher, tmp_path, capsys):
    assert _run("distill", "--teacher", teacher, *DMD, "--set",
                "guidance_range=1,3 num_pairs=8 pair_nfe=2", "--out", tmp_path / "s", *TINY) == 0
    info = json.loads((tmp_path / "s" / "model.json").read_text())
    assert info["network"]["name"] == "guidance_cond"
    a = _images(tmp_path / "s", tmp_path / "a.npz", "--guidance", 1)
    b = _images(tmp_path / "s", tmp_path / "b.npz", "--guidance", 3)
    assert not np.array_equal(a, b)
    capsys.readouterr()
    _images(tmp_path / "s", tmp_path / "c.npz", "--guidance", 5)
    assert "outside the range [1.0, 3.0]" in capsys.readouterr().err
    # a plain student has no w input: --guidance stays refused
    assert _run("distill", "--teacher", teacher, *DMD, "--set", "num_pairs=8 pair_nfe=2",
                "--out", tmp_path / "plain", *TINY) == 0
    capsys.readouterr()
    assert _run("sample", "--model", tmp_path / "plain", "--guidance", 2, "--out",
                tmp_path / "p.npz", *TINY) == 2
    assert "guidance-conditioned" in capsys.readouterr().err


def test_lora_student_is_saved_alone_and_needs_its_teacher(teacher, tmp_path, capsys):
    copy = tmp_path / "teacher"
    shutil.copytree(teacher, copy)
    assert _run("distill", "--teacher", copy, *DMD, "--set",
                "student_lora_rank=4 num_pairs=8 pair_nfe=2", "--out", tmp_path / "s", *TINY) == 0
    adapter = (tmp_path / "s" / "adapter.safetensors").stat().st_size
    full = (copy / "model.safetensors").stat().st_size
    assert not (tmp_path / "s" / "model.safetensors").exists() and adapter < 0.3 * full
    x = _images(tmp_path / "s", tmp_path / "x.npz")
    assert np.isfinite(x).all()
    shutil.rmtree(copy)
    capsys.readouterr()
    assert _run("sample", "--model", tmp_path / "s", "--out", tmp_path / "y.npz", *TINY) == 2
    err = capsys.readouterr().err
    assert "LoRA student" in err and len(err.strip().splitlines()) == 1
