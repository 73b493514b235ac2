"""`onestep-image export` and `sample --compile` end to end through the command line, on a tiny
digits teacher and a 2-step progressive student: the exported ONNX and TorchScript files give the
images `sample` writes (same noise, same labels), and compiled sampling gives the eager images."""

import re

import numpy as np
import pytest
import torch

from onestep.core.export import load_exported
from onestep.image.cli import main

TINY = ["--threads", "1", "--no-progress"]


def _run(*argv):
    assert main([str(a) for a in argv]) == 0, argv


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("image-export")
    _run("train", "--out", d / "teacher", "--steps", 30, "--grid-nfe", 0, *TINY)
    _run("distill", "--teacher", d / "teacher", "--method", "progressive", "--steps", 4,
         "--set", "start_steps=4 final_steps=2 steps_per_round=2", "--batch-size", 16,
         "--out", d / "student", *TINY)
    return d


def _noise_and_labels(n, seed=0):
    """The noise and labels `sample --seed` draws (balanced labels over the 10 digits)."""
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)), \
        torch.arange(n) % 10


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_gives_the_images_sample_writes(runs, tmp_path, fmt, capsys):
    file = tmp_path / f"student.{fmt}"
    _run("export", "--model", runs / "student", "--format", fmt, "--out", file, "--threads", 1)
    assert re.search(rf"progressive student at 2 NFE as {fmt}", capsys.readouterr().out)
    run = load_exported(file)
    assert run.info["sample_shape"] == [1, 8, 8] and run.info["num_classes"] == 10
    assert run.info["nfe"] == 2 and run.info["inputs"] == ["noise", "labels"]
    _run("sample", "--model", runs / "student", "--n", 12, "--out", tmp_path / "s.npz", *TINY)
    images = torch.from_numpy(np.load(tmp_path / "s.npz")["images"])
    noise, labels = _noise_and_labels(12)
    exported = run(noise, labels).clamp(-1, 1)  # `sample` clamps to [-1, 1]
    assert (exported - images).abs().max() < 1e-4
    assert (run(noise[:5], labels[:5]).clamp(-1, 1) - images[:5]).abs().max() < 1e-4
    assert images.std() > 0.05  # not a constant image


ERRORS = [
    (["export", "--model", "{r}/teacher", "--out", "{d}/t.onnx"], "not a student"),
    (["export", "--model", "{r}/student", "--format", "tflite", "--out", "{d}/t"],
     "unknown --format 'tflite'"),
    (["export", "--model", "{r}/student"], "--out is required"),
    (["export", "--model", "{d}/missing", "--out", "{d}/t.onnx"], "no such folder"),
    (["export", "--model", "{r}/student", "--out", "{d}"], "is a folder"),
]


def test_export_errors_are_one_line(runs, tmp_path, capsys):
    for argv, message in ERRORS:
        argv = [a.format(d=tmp_path, r=runs) for a in argv] + ["--threads", "1"]
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert re.search(re.escape(message), err), (argv, err)
        assert err.startswith("onestep-image export: error: ") and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_sample_compile_gives_the_eager_images(runs, tmp_path, capsys):
    """torch.compile (inductor, C++ kernels on the CPU) of the student's 2-step generate: one
    batch, so it compiles once."""
    for name, flags in (("eager", []), ("compiled", ["--compile"])):
        _run("sample", "--model", runs / "student", "--n", 16, "--batch", 16, *flags,
             "--out", tmp_path / f"{name}.npz", *TINY)
    assert "torch.compile: compiled in" in capsys.readouterr().err
    eager, compiled = (np.load(tmp_path / f"{n}.npz")["images"] for n in ("eager", "compiled"))
    assert np.abs(eager - compiled).max() < 1e-4
