"""The onestep-policy command line: help without heavy imports, inspect, and one-line errors
(exit 2) for bad flags and malformed files."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from onestep.policy.cli import main
from onestep.policy.data import Transitions, write_d4rl


def test_help_imports_no_torch():
    code = ("import sys; from onestep.policy.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', [m for m in ('torch', 'gymnasium', 'robosuite', 'h5py') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "make-dataset" in out.stdout and "inspect" in out.stdout
    assert "LOADED []" in out.stdout


def _file(tmp_path, n=12, obs_dim=17, act_dim=6):
    rng = np.random.default_rng(0)
    eps = [{"observations": rng.normal(size=(n + 1, obs_dim)),
            "actions": rng.uniform(-1, 1, (n, act_dim)), "rewards": np.ones(n),
            "terminated": False}]
    d = Transitions.from_episodes(eps, env="HalfCheetah-v5",
                                  attrs={"ref_random_return": 0.0, "ref_expert_return": 24.0})
    return write_d4rl(tmp_path / "ok.hdf5", d)


def test_inspect_prints_and_writes_json(tmp_path, capsys):
    f = _file(tmp_path)
    assert main(["inspect", "--data", str(f), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "transitions" in out and "HalfCheetah-v5" in out
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["transitions"] == 12 and s["mean_return"] == 12.0 and s["normalized_score"] == 50.0


def _one_line_error(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onestep-policy ") and "error:" in err, err
    assert "\n" not in err and message in err, err


@pytest.mark.parametrize("argv, message", [
    (["make-dataset", "--env", "HalfCheetah-v5", "--quality", "great", "--out", "x.hdf5"],
     "unknown quality 'great'"),
    (["make-dataset", "--env", "NoSuchEnv-v0", "--quality", "random", "--out", "x.hdf5"],
     "unknown environment 'NoSuchEnv-v0'"),
    (["make-dataset", "--env", "HalfCheetah-v5", "--quality", "random", "--out", "x.hdf5",
      "--episodes", "2", "--transitions", "10"], "not both"),
    (["make-dataset", "--quality", "random", "--out", "x.hdf5"], "--env is required"),
    (["make-dataset", "--env", "HalfCheetah-v5", "--quality", "random"], "--out is required"),
    (["make-dataset", "--env", "Lift", "--quality", "medium", "--out", "x.hdf5"],
     "scripted demonstrations only"),
    (["make-dataset", "--env", "HalfCheetah-v5", "--quality", "random", "--out", "x.hdf5",
      "--format", "parquet"], "unknown format 'parquet'"),
    (["inspect"], "--data is required"),
])
def test_bad_flags_are_one_line_errors(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    _one_line_error(capsys, argv, message)
    assert not (tmp_path / "x.hdf5").exists()


def test_malformed_and_missing_files_are_one_line_errors(tmp_path, capsys):
    f = _file(tmp_path)
    with h5py.File(f, "a") as h:
        del h["terminals"]
    _one_line_error(capsys, ["inspect", "--data", str(f)], "missing dataset 'terminals'")
    g = _file(tmp_path)
    _one_line_error(capsys, ["inspect", "--data", str(g), "--env", "Hopper-v5"],
                    "observations have 17 columns but Hopper-v5 observes 11")
    _one_line_error(capsys, ["inspect", "--data", str(tmp_path / "none.hdf5")], "no such file")
    _one_line_error(capsys, ["inspect", "--data", "onestep/none/x-v0", "--root", str(tmp_path)],
                    "not found locally")


@pytest.mark.slow
def test_eval_sampler_reaches_the_policy_and_bad_samplers_are_refused(tmp_path, monkeypatch,
                                                                       capsys):
    """eval --sampler: ddim / ddpm set diffusion-policy's steps (10 / 100 network evaluations
    per chunk); an unknown name, or any sampler for an offline run, is a one-line error."""
    import dataclasses

    from onestep.policy import tasks
    from onestep.policy.data import write_robomimic
    from onestep.policy.imitation import train as train_imitation
    from onestep.policy.offline import train as train_offline

    task = tasks.ROBOT_TASKS["Lift"]
    monkeypatch.setitem(tasks.ROBOT_TASKS, "Lift", dataclasses.replace(task, horizon=4))
    rng = np.random.default_rng(0)
    eps = [{"observations": rng.normal(size=(9, task.obs_dim)),
            "actions": rng.uniform(-1, 1, (8, 7)), "rewards": np.zeros(8), "terminated": False,
            "success": False} for _ in range(3)]
    write_robomimic(tmp_path / "lift.hdf5",
                    Transitions.from_episodes(eps, env="Lift", obs_keys=task.obs_keys))
    tiny = {"hidden": "32", "depth": "2", "horizon": "4", "n_obs_steps": "1",
            "n_action_steps": "2", "warmup": "1", "ema_decay": "0"}
    dp = tmp_path / "dp"
    train_imitation("diffusion-policy", str(tmp_path / "lift.hdf5"), str(dp), steps=2,
                    batch_size=4, overrides=tiny, progress=False)
    for flag, sampler, nfe in ((["--sampler", "ddim"], "ddim", 10), ([], "ddpm", 100)):
        out = tmp_path / f"{sampler}.json"
        assert main(["eval", "--run", str(dp), "--episodes", "1", "--no-progress",
                     "--json", str(out), *flag]) == 0
        r = json.loads(out.read_text())
        assert (r["sampler"], r["nfe"], r["queries"]) == (sampler, nfe, 2)
    capsys.readouterr()
    _one_line_error(capsys, ["eval", "--run", str(dp), "--sampler", "dpm"],
                    "unknown --sampler 'dpm' for diffusion-policy; choose from ddpm, ddim")
    bc = tmp_path / "bc"
    train_offline("bc", str(_file(tmp_path)), str(bc), steps=1, batch_size=4, progress=False)
    _one_line_error(capsys, ["eval", "--run", str(bc), "--sampler", "ddim"],
                    "--sampler is for dm1 and diffusion-policy runs; bc has no sampler choice")
