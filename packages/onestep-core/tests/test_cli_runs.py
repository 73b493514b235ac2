"""Run folders are never lost: a second fresh run into one is refused, --overwrite and --resume
are explicit, filesystem errors and non-finite models end in one line with exit code 2, a damaged
newest checkpoint falls back to the previous one, and resuming to more steps is exact."""

import errno
import os
import pathlib
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from onestep.core.cli import main
from onestep.core.data import toy_sample
from onestep.core.runs import check_run_folder, describe_os_error, run_command
from onestep.core.train import CheckpointError, LossTask, TrainConfig, Trainer

TINY = ["--hidden", "16", "--ckpt-every", "10", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    x = toy_sample("moons", 500, generator=torch.Generator().manual_seed(0)).numpy()
    np.save(d / "moons.npy", x.astype(np.float32))
    return d / "moons.npy"


def _err(capsys, argv) -> str:
    capsys.readouterr()  # what earlier commands printed
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _weights(folder):
    return load_file(pathlib.Path(folder) / "model.safetensors")


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_fresh_run_is_refused_and_loses_nothing(data, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["train", "--data", str(data), "--out", str(out), "--steps", "20", *TINY]) == 0
    model, log = (out / "model.safetensors").read_bytes(), (out / "log.jsonl").read_text()
    err = _err(capsys, ["train", "--data", data, "--out", out, "--steps", 30, *TINY])
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "model.safetensors").read_bytes() == model
    assert (out / "log.jsonl").read_text() == log
    # distill into a student folder twice: the same rule
    args = ["distill", "--teacher", out, "--method", "instaflow", "--steps", 4, "--set",
            "num_couplings=64 coupling_nfe=2 reflow_steps=2 distill_steps=2", "--no-progress"]
    assert main([str(a) for a in [*args, "--out", tmp_path / "s"]]) == 0
    student = (tmp_path / "s" / "model.safetensors").read_bytes()
    assert "already holds a run" in _err(capsys, [*args, "--out", tmp_path / "s"])
    assert (tmp_path / "s" / "model.safetensors").read_bytes() == student


def test_overwrite_replaces_and_resume_needs_a_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "t"
    base = ["train", "--data", str(data), "--out", str(out), *TINY]
    assert main([*base, "--steps", "20"]) == 0
    (out / "note.txt").write_text("from the old run")
    assert main([*base, "--steps", "10", "--overwrite"]) == 0
    assert not (out / "note.txt").exists()
    assert [int(s.name[5:]) for s in (out / "checkpoints").glob("step_*")] == [10]
    # a mistyped argument refuses before --overwrite deletes anything
    assert "unknown objective" in _err(capsys, [*base, "--overwrite", "--objective", "x"])
    assert (out / "model.safetensors").exists()
    # --resume without a checkpoint is refused, not restarted
    err = _err(capsys, [*base, "--steps", "20", "--resume", "--out", tmp_path / "none"])
    assert "no run to continue" in err and not (tmp_path / "none").exists()
    (tmp_path / "empty").mkdir()
    assert "holds no checkpoint" in _err(capsys, [*base, "--resume", "--out", tmp_path / "empty"])
    assert "pass one of them" in _err(capsys, [*base, "--resume", "--overwrite"])
    # a folder with files but no run is never deleted
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    err = _err(capsys, [*base, "--overwrite", "--out", tmp_path / "mine"])
    assert "holds files but no onestep run" in err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"


def test_resume_30_to_60_equals_a_fresh_60(data, tmp_path):
    """The warm-up (100 steps) outlasts both runs: it is the run's, whatever --steps is."""
    base = ["train", "--data", str(data), *TINY]
    assert main([*base, "--out", str(tmp_path / "a"), "--steps", "30"]) == 0
    assert main([*base, "--out", str(tmp_path / "a"), "--steps", "60", "--resume"]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--steps", "60"]) == 0
    assert _equal(_weights(tmp_path / "a"), _weights(tmp_path / "b"))


def test_resume_with_other_settings_is_refused(data, tmp_path, capsys):
    base = ["train", "--data", str(data), "--out", str(tmp_path / "a"), *TINY]
    assert main([*base, "--steps", "10"]) == 0
    err = _err(capsys, [*base, "--steps", "20", "--resume", "--lr", "1e-3"])
    assert "lr: 0.002 -> 0.001" in err and "keeps the settings it started with" in err


def test_interrupted_run_points_to_resume(data, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["train", "--data", str(data), "--out", str(out), "--steps", "10", *TINY]) == 0
    (out / "model.json").unlink()  # as if killed after the checkpoint, before the model
    err = _err(capsys, ["sample", "--model", out, "--out", tmp_path / "x.npy", "--no-progress"])
    assert "unfinished run (checkpoint at step 10)" in err and "--resume" in err


def test_filesystem_errors_are_one_line(data, tmp_path, capsys, monkeypatch):
    teacher = tmp_path / "t"
    assert main(["train", "--data", str(data), "--out", str(teacher), "--steps", "2", *TINY]) == 0
    (tmp_path / "afile").write_text("")
    err = _err(capsys, ["sample", "--model", teacher, "--out", tmp_path / "afile" / "x.npy",
                        "--no-progress"])
    assert "afile" in err and "not a folder" in err
    err = _err(capsys, ["train", "--data", data, "--out", tmp_path / "afile" / "run", *TINY])
    assert "afile" in err and ("not a folder" in err or "is a file" in err)
    # a read-only file system (simulated: root may write anywhere, and tests cannot mount)
    real_mkdir = pathlib.Path.mkdir

    def read_only(self, *a, **k):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    err = _err(capsys, ["train", "--data", data, "--out", tmp_path / "ro" / "run", *TINY])
    assert f"{tmp_path / 'ro'}" in err and "read-only file system" in err.lower()
    monkeypatch.undo()
    if os.geteuid() != 0:  # a real read-only folder stops only non-root users
        (tmp_path / "ro2").mkdir()
        (tmp_path / "ro2").chmod(0o555)
        err = _err(capsys, ["sample", "--model", teacher, "--out", tmp_path / "ro2" / "x.npy",
                            "--no-progress"])
        assert "permission denied" in err.lower()


def test_describe_os_error_names_path_and_problem():
    e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run")
    assert describe_os_error(e) == "/data/run: no space left on the device"
    assert run_command("onestep x", lambda a: (_ for _ in ()).throw(e), None) == 2


def test_non_finite_models_are_refused(data, tmp_path, capsys):
    teacher = tmp_path / "t"
    assert main(["train", "--data", str(data), "--out", str(teacher), "--steps", "2", *TINY]) == 0
    w = _weights(teacher)
    w[next(iter(w))][0] = float("nan")
    save_file(w, teacher / "model.safetensors")
    err = _err(capsys, ["sample", "--model", teacher, "--out", tmp_path / "x.npy",
                        "--no-progress"])
    assert "1000 of 1000 samples" in err and str(teacher) in err and "not finite" in err
    assert not (tmp_path / "x.npy").exists()
    err = _err(capsys, ["distill", "--teacher", teacher, "--out", tmp_path / "s",
                        "--no-progress"])
    assert str(teacher) in err and "non-finite outputs" in err and "learning rate" not in err


def test_training_that_turns_non_finite_keeps_the_last_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "t"
    err = _err(capsys, ["train", "--data", data, "--out", out, "--steps", 200, "--lr", "1e20",
                        "--warmup", 0, "--ema-decay", 0, *TINY, "--ckpt-every", 1])
    assert "training turned non-finite" in err and "at step" in err and "loss=nan" in err
    steps = sorted(int(s.name[5:]) for s in (out / "checkpoints").glob("step_*"))
    assert steps, "the checkpoints before the step that failed are kept"
    ckpt = load_file(out / "checkpoints" / f"step_{steps[-1]:08d}" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in ckpt.values())
    assert f"checkpoint of step {steps[-1]}" in err


# -- the Trainer -------------------------------------------------------------------------------
def _task(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    def loss(model, batch, *, generator):
        noise = torch.randn(batch.shape, generator=generator)
        return ((model(batch + noise) - batch) ** 2).mean(), {}

    return LossTask(net, loss, lr=1e-2, ema_decay=0.9)


def _fit(out, steps, resume=False, seed=0):
    task = _task(seed)
    x = toy_sample("moons", 256, generator=torch.Generator().manual_seed(1))
    Trainer(TrainConfig(steps=steps, batch_size=32, ckpt_every=3, out_dir=out, progress=False,
                        resume=resume)).fit(task, x)
    return task


def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
    full = _fit(tmp_path / "full", 12)
    _fit(tmp_path / "cut", 12)
    step12 = tmp_path / "cut" / "checkpoints" / "step_00000012" / "model.safetensors"
    step12.write_bytes(step12.read_bytes()[:100])  # truncated
    resumed = _fit(tmp_path / "cut", 12, resume=True, seed=5)
    err = capsys.readouterr().err
    assert "skipped a damaged checkpoint" in err and "step_00000012" in err
    assert "step_00000009" in err  # says where it resumed from
    assert all(map(torch.equal, full.model.parameters(), resumed.model.parameters()))
    # nothing intact: an error naming what was tried, not a silent fresh start
    for p in (tmp_path / "cut" / "checkpoints").glob("step_*/state.pt"):
        p.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no intact checkpoint.*state.pt"):
        _fit(tmp_path / "cut", 15, resume=True)


def test_non_finite_weights_never_replace_a_checkpoint(tmp_path):
    task = _task()
    x = toy_sample("moons", 256, generator=torch.Generator().manual_seed(1))
    step = task.step

    def poisoned(batch, *, step, generator):  # step 4 leaves NaN in the EMA, not in the loss
        logs = steps(batch, step=step, generator=generator)
        if step == 4:
            with torch.no_grad():
                task.ema.module[0].weight[0, 0] = float("nan")
        return logs

    steps, task.step = step, poisoned
    with pytest.raises(FloatingPointError, match="step 6: weights of 'ema'"):
        Trainer(TrainConfig(steps=12, batch_size=32, ckpt_every=3, out_dir=tmp_path,
                            progress=False)).fit(task, x)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert kept == ["step_00000003"]


def test_check_run_folder_rules(tmp_path):
    assert check_run_folder(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "run" / "checkpoints" / "step_00000005").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step_00000005" / "meta.json").write_text("{}")
    with pytest.raises(ValueError, match="checkpoint at step 5"):
        check_run_folder(tmp_path / "run")
    assert check_run_folder(tmp_path / "run", resume=True) == tmp_path / "run"
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    (tmp_path / "run" / "log.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no checkpoint"):
        check_run_folder(tmp_path / "run", resume=True)
