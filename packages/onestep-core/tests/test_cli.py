"""The vector-data CLI end to end through `cli.main`: train -> sample -> eval, distill (a student
saved as a Denoiser and one saved as a generator) -> sample, exact resume, `methods`, and a clear
message with exit code 2 for every user error. Small and short: tiny MLPs, a few hundred steps."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from onestep.core.cli import main
from onestep.core.cli_vector import needs_data
from onestep.core.data import toy_sample
from onestep.core.denoiser import Denoiser
from onestep.core.distill import METHODS, toy_config
from onestep.core.io import CheckpointError, load_model, load_student, save_student
from onestep.core.nn import MLP
from onestep.core.paths import RectifiedFlow

torch.set_num_threads(1)

TEACHER = ["--steps", "400", "--hidden", "64", "--ckpt-every", "200", "--seed", "3",
           "--no-progress"]
COUPLINGS = "num_couplings=1024 coupling_nfe=8"


def _moons(n, seed):
    x = toy_sample("moons", n, generator=torch.Generator().manual_seed(seed)).numpy()
    return (3.0 * x + np.array([5.0, -2.0])).astype(np.float32)  # not standardised


def _run(*argv):
    assert main([str(a) for a in argv]) == 0


def _sw(tmp, samples, held):
    out = tmp / "eval.json"
    _run("eval", "--samples", samples, "--data", held, "--json", out)
    return json.loads(out.read_text())["sliced_w2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    np.save(d / "moons.npy", _moons(2000, 0))
    np.save(d / "held.npy", _moons(1000, 1))
    _run("train", "--data", d / "moons.npy", "--out", d / "teacher", *TEACHER)
    _run("distill", "--teacher", d / "teacher", "--method", "instaflow", "--out", d / "insta",
         "--set", f"{COUPLINGS} reflow_steps=150 distill_steps=100", "--no-progress")
    return d


def test_teacher_samples_beat_the_prior(files, tmp_path, capsys):
    _run("sample", "--model", files / "teacher", "--n", 1000, "--nfe", 16, "--out",
         tmp_path / "t.npy", "--no-progress")
    x = np.load(tmp_path / "t.npy")
    assert x.shape == (1000, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    # the prior, mapped to the data's mean and std: a Gaussian fit of the data
    data = np.load(files / "moons.npy")
    z = np.random.default_rng(0).standard_normal((1000, 2)) * data.std(0) + data.mean(0)
    np.save(tmp_path / "prior.npy", z.astype(np.float32))
    capsys.readouterr()
    teacher, prior = _sw(tmp_path, tmp_path / "t.npy", files / "held.npy"), \
        _sw(tmp_path, tmp_path / "prior.npy", files / "held.npy")
    out = capsys.readouterr().out
    assert "sliced W2" in out and "MMD" in out and "energy" in out and "1000 x 2" in out
    assert teacher < 0.6 * prior, (teacher, prior)
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert set(metrics) >= {"sliced_w2", "mmd", "energy_distance", "n_samples", "n_data"}


def test_instaflow_student_beats_one_euler_step(files, tmp_path):
    """Denoiser-format student: one step beats the teacher's single Euler step (= the untrained
    student) and the reflow loss fell."""
    _run("sample", "--model", files / "insta", "--n", 1000, "--out", tmp_path / "s.npy",
         "--no-progress")
    _run("sample", "--model", files / "teacher", "--n", 1000, "--nfe", 1, "--solver", "euler",
         "--out", tmp_path / "e.npy", "--no-progress")
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (1000, 2) and np.isfinite(x).all()
    student = _sw(tmp_path, tmp_path / "s.npy", files / "held.npy")
    euler = _sw(tmp_path, tmp_path / "e.npy", files / "held.npy")
    assert student < 0.7 * euler, (student, euler)
    info = json.loads((files / "insta" / "model.json").read_text())
    assert info["kind"] == "student" and info["student"]["method"] == "instaflow"
    assert info["student"]["format"] == "denoiser" and info["student"]["nfe"] == 1
    log = [json.loads(s) for s in (files / "insta" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["logs"]["phase"] == 1.0  # reached the distillation phase
    den, _ = load_model(files / "insta", kind="instaflow")  # also a plain Denoiser
    assert isinstance(den.model, MLP)


def test_meanflow_student_from_data(files, tmp_path):
    """Generator-format student (two-time network): trained on data, saved, rebuilt, sampled."""
    out = tmp_path / "mf"
    _run("distill", "--teacher", files / "teacher", "--method", "meanflow", "--data",
         files / "moons.npy", "--steps", 200, "--out", out, "--no-progress")
    info = json.loads((out / "model.json").read_text())
    assert info["student"]["format"] == "generator"
    _run("sample", "--model", out, "--n", 1000, "--out", tmp_path / "m.npy", "--no-progress")
    _run("sample", "--model", files / "teacher", "--n", 1000, "--nfe", 1, "--solver", "euler",
         "--out", tmp_path / "e.npy", "--no-progress")
    x = np.load(tmp_path / "m.npy")
    assert x.shape == (1000, 2) and np.isfinite(x).all()
    log = [json.loads(s)["logs"]["loss"] for s in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1] < log[0], log
    assert _sw(tmp_path, tmp_path / "m.npy", files / "held.npy") < \
        _sw(tmp_path, tmp_path / "e.npy", files / "held.npy")


def test_teacher_resume_is_exact(files, tmp_path):
    """Stopped at step 200 and resumed to 400 == the uninterrupted 400-step teacher."""
    out = tmp_path / "t"
    first = [a if a != "400" else "200" for a in TEACHER]
    _run("train", "--data", files / "moons.npy", "--out", out, *first)
    _run("train", "--data", files / "moons.npy", "--out", out, *TEACHER, "--resume")
    a, b = load_file(out / "model.safetensors"), load_file(files / "teacher" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_distill_resume_across_a_phase_is_exact(files, tmp_path):
    args = ["--teacher", files / "teacher", "--method", "instaflow", "--set",
            f"{COUPLINGS} reflow_steps=20 distill_steps=20", "--ckpt-every", 15, "--no-progress"]
    _run("distill", *args, "--out", tmp_path / "a", "--steps", 25)
    _run("distill", *args, "--out", tmp_path / "a", "--steps", 40, "--resume")
    _run("distill", *args, "--out", tmp_path / "b", "--steps", 40)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), \
        load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_methods_lists_all_18(capsys):
    _run("methods")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(METHODS) == 18
    assert [ln.split()[0] for ln in lines] == list(METHODS)
    _run("methods", "--method", "dmd", "--set", "lr=1e-3 betas=0.5,0.9 ema_decay=none")
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"]["lr"] == 1e-3 and shown["config"]["betas"] == [0.5, 0.9]
    assert shown["config"]["ema_decay"] is None and shown["needs_data"] is False


def test_dry_run_prints_and_stops(files, tmp_path, capsys):
    _run("distill", "--teacher", files / "teacher", "--out", tmp_path / "s", "--dry-run",
         "--method", "dmd", "--set", "lr=1e-3", "--set", "fake_lr=2e-3")
    shown = json.loads(capsys.readouterr().out)
    assert shown["args"]["method"] == "dmd" and shown["steps"] > 0
    assert shown["config"]["lr"] == 1e-3 and shown["config"]["fake_lr"] == 2e-3  # both --set
    assert not (tmp_path / "s").exists()
    _run("train", "--data", tmp_path / "x.npy", "--out", tmp_path / "t", "--dry-run")
    assert json.loads(capsys.readouterr().out)["data"].endswith("x.npy")
    assert not (tmp_path / "t").exists()


def test_lr_decay_ends_with_the_run(files, tmp_path, capsys):
    """SIM's toy config decays its learning rate over its 3000 default steps; --steps moves the
    end of the decay with the run, and an explicit --set lr_decay_steps is kept."""
    def plan(*extra):
        _run("distill", "--teacher", files / "teacher", "--out", tmp_path / "s", "--dry-run",
             "--method", "sim", *extra)
        shown = json.loads(capsys.readouterr().out)
        return shown["steps"], shown["config"]["lr_decay_steps"]

    assert plan() == (3000, 3000)
    assert plan("--steps", "40") == (40, 40)
    assert plan("--steps", "40", "--set", "lr_decay_steps=100") == (40, 100)


def _tiny_teacher():
    torch.manual_seed(0)
    return Denoiser(MLP(2, hidden=16, depth=1), RectifiedFlow(), prediction="velocity")


SMALL = dict(num_couplings=64, coupling_nfe=4, num_pairs=64, pair_nfe=4, regression_pairs=64,
             regression_nfe=4, progress=False)


def _small_config(name, teacher):
    fields = METHODS[name][0].__dataclass_fields__
    return toy_config(name, teacher, **{k: v for k, v in SMALL.items() if k in fields})


def test_needs_data_matches_what_each_step_reads():
    """A method needs --data iff one step on shifted data differs (same seeds)."""
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(5))
    for name, (_, cls, _) in METHODS.items():
        logs = []
        for shift in (0.0, 3.0):
            teacher = _tiny_teacher()
            config = _small_config(name, teacher)
            torch.manual_seed(9)
            d = cls(teacher, config)
            logs.append(d.step(x + shift, step=0, generator=torch.Generator().manual_seed(3)))
        same = all(logs[0][k] == logs[1][k] for k in logs[0])
        assert needs_data(name, config) == (not same), name


@pytest.mark.parametrize("name", ["phased_dmd", "msd", "tdm"])
def test_students_round_trip(tmp_path, name):
    teacher = _tiny_teacher()
    d = METHODS[name][1](teacher, _small_config(name, teacher))
    for step in range(2):
        d.step(torch.randn(16, 2), step=step, generator=torch.Generator().manual_seed(step))
    entry = save_student(tmp_path, d)
    gen, info = load_student(tmp_path)
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = d.generator().generate(z, nfe=entry["nfe"], generator=torch.Generator())
        got = gen.generate(z, nfe=entry["nfe"], generator=torch.Generator())
    torch.testing.assert_close(got, want)
    assert info["student"]["method"] == name
    if entry["format"] == "generator":
        with pytest.raises(CheckpointError, match="load it with onestep.core.io.load_student"):
            load_model(tmp_path)


# -- errors: exit code 2, one line naming the problem, no traceback ------------------------------
def _bad_files(d):
    np.save(d / "cube.npy", np.zeros((4, 2, 2)))
    np.save(d / "text.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(d / "objects.npy", np.array([[1, None]], dtype=object), allow_pickle=True)
    x = _moons(100, 2)
    x[7, 1] = np.nan
    np.save(d / "nan.npy", x)
    np.save(d / "three.npy", np.zeros((10, 3), dtype=np.float32))
    (d / "empty").mkdir()


ERRORS = [
    (["train", "--data", "{d}/missing.npy", "--out", "{d}/o"], "missing.npy: no such file"),
    (["train", "--data", "{d}/cube.npy", "--out", "{d}/o"], "expected a 1-D or 2-D array"),
    (["train", "--data", "{d}/text.npy", "--out", "{d}/o"], "non-numeric dtype"),
    (["train", "--data", "{d}/objects.npy", "--out", "{d}/o"], "cannot read as a numeric"),
    (["train", "--data", "{d}/nan.npy", "--out", "{d}/o"], "non-finite value.*row 7"),
    (["train", "--data", "{d}/nan.npy"], "--out is required"),
    (["train", "--data", "{f}/moons.npy", "--out", "{d}/o", "--objective", "ddpm"],
     "unknown objective 'ddpm'"),
    (["train", "--data", "{f}/moons.npy", "--out", "{f}/insta"], "already holds a student"),
    (["distill", "--teacher", "{f}/teacher", "--method", "nope", "--out", "{d}/o"],
     "unknown distillation method 'nope'"),
    (["distill", "--teacher", "{f}/insta", "--out", "{d}/o"],
     "holds a student of 'instaflow', not a teacher"),
    (["distill", "--teacher", "{d}/empty", "--out", "{d}/o"], "model.json: no such file"),
    (["distill", "--teacher", "{d}/nowhere", "--out", "{d}/o"], "nowhere: no such folder"),
    (["distill", "--teacher", "{f}/teacher", "--out", "{f}/teacher"], "the teacher's folder"),
    (["distill", "--teacher", "{f}/teacher", "--method", "ict", "--out", "{d}/o"],
     "ict trains on real data: pass --data"),
    (["distill", "--teacher", "{f}/teacher", "--out", "{d}/o", "--set", "lrr=1"],
     "has no field 'lrr'"),
    (["distill", "--teacher", "{f}/teacher", "--out", "{d}/o", "--set", "lr=fast"],
     "lr=fast: not a valid float"),
    (["distill", "--teacher", "{f}/teacher", "--out", "{d}/o", "--nfe", "4"],
     "instaflow trains a one-step student"),
    (["distill", "--teacher", "{f}/teacher", "--method", "cd", "--out", "{d}/o", "--data",
      "{d}/three.npy"], "3 columns; the teacher was trained on 2"),
    (["distill", "--teacher", "{f}/teacher", "--method", "dmd", "--out", "{f}/insta",
      "--resume", "--steps", "5"], "checkpoint kind 'instaflow' does not match .*'dmd'"),
    (["distill", "--teacher", "{f}/teacher", "--out", "{d}/o", "--set", "rounds"],
     "'rounds': expected key=value"),
    (["distill", "--teacher", "{d}/edm", "--method", "meanflow", "--out", "{d}/o", "--data",
      "{f}/moons.npy"], "meanflow is written for the rectified-flow path"),
    (["sample", "--model", "{d}/empty"], "model.json: no such file"),
    (["sample", "--model", "{f}/moons.npy"], "is a file; expected a model folder"),
    (["sample", "--model", "{f}/insta", "--solver", "heun", "--out", "{d}/x.npy"],
     "--solver applies to teachers"),
    (["sample", "--model", "{f}/teacher", "--out", "{d}/x.txt"], "use a .npy or .csv"),
    (["eval", "--samples", "{f}/teacher", "--data", "{f}/moons.npy"],
     "is a saved model folder, not a data file"),
    (["eval", "--samples", "{d}/three.npy", "--data", "{f}/moons.npy"],
     "--samples has 3 columns but --data has 2"),
]


def test_errors_are_clear(files, tmp_path, capsys):
    import re

    _bad_files(tmp_path)
    _run("train", "--data", files / "moons.npy", "--out", tmp_path / "edm", "--objective", "edm",
         "--steps", 2, "--hidden", 16, "--no-progress")
    for argv, message in ERRORS:
        argv = [a.format(d=tmp_path, f=files) for a in argv] + ["--no-progress"] * (
            argv[0] in ("train", "distill", "sample"))
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert re.search(message, err), (argv, err)
        assert err.startswith(f"onestep {argv[0]}: error: ") and "Traceback" not in err
