"""`onestep-image` end to end on the embedded digits with tiny runs: train -> sample (teacher,
.npz and .png) -> distill -> sample (student) -> train-features -> eval, methods, and one-line
errors with exit code 2. Quality is not measured here (the runs are seconds long); the demo and
the benchmark measure it."""

import json

import numpy as np
import pytest
from PIL import Image

from onestep.image.cli import COMMANDS, main

TINY = ["--threads", "1", "--no-progress"]


def _run(*argv):
    assert main([str(a) for a in argv]) == 0, argv


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("image-cli")
    _run("train", "--out", d / "teacher", "--steps", 30, "--ckpt-every", 15, "--grid-nfe", 2,
         *TINY)
    return d


def test_train_writes_a_teacher_with_grids(runs):
    info = json.loads((runs / "teacher" / "model.json").read_text())
    assert info["kind"] == "teacher" and info["extra"]["image_shape"] == [1, 8, 8]
    assert info["extra"]["num_classes"] == 10 and info["null_cond"] == 10
    grids = sorted(p.name for p in (runs / "teacher" / "grids").glob("*.png"))
    assert grids == ["step_00000015.png", "step_00000030.png"]
    assert Image.open(runs / "teacher" / "grids" / grids[-1]).size[0] > 80


def test_sample_teacher_npz_and_png(runs, tmp_path):
    _run("sample", "--model", runs / "teacher", "--n", 20, "--nfe", 4, "--solver", "dpm++2m",
         "--guidance", "2", "--out", tmp_path / "t.npz", *TINY)
    z = np.load(tmp_path / "t.npz")
    assert z["images"].shape == (20, 1, 8, 8) and np.isfinite(z["images"]).all()
    assert z["labels"].tolist() == [i % 10 for i in range(20)]
    _run("sample", "--model", runs / "teacher", "--n", 20, "--nfe", 2, "--labels", "3,4",
         "--out", tmp_path / "t.png", *TINY)
    assert Image.open(tmp_path / "t.png").size[0] > 8


def test_distill_then_sample_the_student(runs, tmp_path):
    _run("distill", "--teacher", runs / "teacher", "--method", "progressive", "--steps", 6,
         "--set", "start_steps=4 final_steps=2 steps_per_round=3", "--batch-size", 16,
         "--out", tmp_path / "s", *TINY)
    info = json.loads((tmp_path / "s" / "model.json").read_text())
    assert info["kind"] == "student" and info["student"]["method"] == "progressive"
    _run("sample", "--model", tmp_path / "s", "--n", 10, "--out", tmp_path / "s.npz", *TINY)
    z = np.load(tmp_path / "s.npz")
    assert z["images"].shape == (10, 1, 8, 8) and np.isfinite(z["images"]).all()


def test_data_free_method_on_a_conditional_teacher(runs, tmp_path):
    """A method that draws noise only gets class labels with it (the batches carry the cond)."""
    _run("distill", "--teacher", runs / "teacher", "--method", "dmd", "--steps", 2,
         "--batch-size", 8, "--set", "num_pairs=8 pair_nfe=2",
         "--out", tmp_path / "d", *TINY)
    run = json.loads((tmp_path / "d" / "run.json").read_text())
    assert run["data"] == "" and run["method"] == "dmd"


def test_features_and_eval(runs, tmp_path, capsys):
    _run("train-features", "--out", tmp_path / "f", "--steps", 60, *TINY)
    _run("sample", "--model", runs / "teacher", "--n", 50, "--nfe", 4, "--solver", "dpm++2m",
         "--out", tmp_path / "t.npz", *TINY)
    capsys.readouterr()
    _run("eval", "--samples", tmp_path / "t.npz", "--features", tmp_path / "f", "--json",
         tmp_path / "e.json", "--threads", 1)
    out = capsys.readouterr().out
    assert "FD-digits-cnn" in out and "floor" in out
    result = json.loads((tmp_path / "e.json").read_text())
    # the floor (real images) beats a 30-step teacher's samples
    assert result["floor"]["fd"] < result["samples"]["fd"]
    assert result["samples"]["n"] == 50 and result["floor"]["n"] == 50


def test_methods_lists_every_core_method(capsys):
    from onestep.core.distill import METHODS

    _run("methods")
    out = capsys.readouterr().out
    assert all(name in out for name in METHODS)
    _run("methods", "--method", "dmd2")
    assert json.loads(capsys.readouterr().out)["method"] == "dmd2"


def test_every_command_has_help_and_dry_run(capsys):
    for name, (_cls, _) in COMMANDS.items():
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "(default: )" not in capsys.readouterr().out
    assert main(["train", "--out", "x", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == "digits"


ERRORS = [
    (["train", "--out", "{d}/o", "--data", "nowhere-set"], "nowhere-set"),
    (["train", "--out", "{d}/o", "--arch", "vit"], "--arch must be one of"),
    (["train", "--data", "digits"], "--out is required"),
    (["train", "--out", "{r}/teacher", "--steps", "5"], "already holds a run"),
    (["sample", "--model", "{d}/missing"], "no such folder"),
    (["sample", "--model", "{r}/teacher", "--out", "{d}/x.jpg"], "use a .npz"),
    (["sample", "--model", "{r}/teacher", "--labels", "12", "--out", "{d}/x.npz"],
     "class indices must be in 0..9"),
    (["distill", "--teacher", "{r}/teacher", "--method", "nope", "--out", "{d}/o"],
     "unknown distillation method 'nope'"),
    (["distill", "--teacher", "{r}/teacher", "--out", "{r}/teacher"], "the teacher's folder"),
    (["eval", "--samples", "{d}/none.npz", "--features", "{d}/nofeat"], "nofeat"),
]


def test_errors_are_one_line(runs, tmp_path, capsys):
    import re

    for argv, message in ERRORS:
        argv = [a.format(d=tmp_path, r=runs) for a in argv] + ["--threads", "1"]
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert re.search(message, err), (argv, err)
        assert err.startswith(f"onestep-image {argv[0]}: error: ") and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_demo_end_to_end_in_miniature(tmp_path, capsys):
    out = tmp_path / "demo"
    _run("demo", "--out", out, "--steps", 20, "--distill-steps", 3, "--n", 40,
         "--search-iterations", 2, "--set", "num_pairs=64", *TINY)
    table = capsys.readouterr().out
    assert "(noise floor)" in table and "searched" in table and "student" in table
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["teacher_fd"]) == {"1", "4", "35"}
    for key in ("student_fd", "teacher_seconds_per_image", "student_seconds_per_image"):
        assert np.isfinite(summary[key]) and summary[key] > 0, key
    assert summary["args"]["method"] == "dmd" and summary["args"]["search_iterations"] == 2
    assert json.loads((out / "student" / "model.json").read_text())["extra"]["steps"] == 3
    assert Image.open(out / "grid.png").size[0] > 0
    _run("sample", "--model", out / "student", "--n", 5, "--out", tmp_path / "s.npz", *TINY)
    # a second demo into the same folder is refused, and does not offer --resume
    capsys.readouterr()
    assert main(["demo", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--resume" not in err


def test_search_schedule_on_an_image_teacher(runs, tmp_path):
    """search-schedule takes the shape and the classes from the image teacher (no --shape); the
    schedule it writes samples through `sample --schedule` at its own NFE and solver."""
    from onestep.image.commands import _search_model

    _, shape, cond_for = _search_model(str(runs / "teacher"))
    assert shape == (1, 8, 8) and cond_for(12).tolist() == [i % 10 for i in range(12)]
    out = tmp_path / "sched.json"
    _run("search-schedule", "--model", runs / "teacher", "--nfe", 3, "--iterations", 1,
         "--n-calib", 8, "--n-eval", 4, "--out", out, *TINY)
    meta = json.loads(out.read_text())["meta"]
    assert meta["nfe"] == 3 and meta["n_calib"] == 8 and meta["model"] == str(runs / "teacher")
    _run("sample", "--model", runs / "teacher", "--n", 10, "--schedule", out,  # nfe: 3, its own
         "--out", tmp_path / "t.npz", *TINY)
    assert np.isfinite(np.load(tmp_path / "t.npz")["images"]).all()
