"""DM1 and Diffusion Policy on small robomimic files the tests write: both learn demonstrations
whose action chunk is a fixed function of the observation, a resumed run ends where an
uninterrupted one does, DM1 acts with one network evaluation per chunk and DDIM-10 / DDPM-100
with 10 / 100, malformed data and settings are refused in one line, and (slow) both act in
robosuite's Lift."""

import json

import h5py
import numpy as np
import pytest
import safetensors.torch

from onestep.core.metrics import count_calls
from onestep.policy.data import DatasetError, Transitions, write_robomimic
from onestep.policy.imitation import (
    chunk_windows,
    evaluate,
    load_policy,
    resolve_config,
    train,
    wilson_interval,
)

W = np.array([[1.2, -0.7], [0.4, 1.5], [-0.9, 0.3]])
TINY = {"hidden": "64", "depth": "2", "horizon": "4", "n_obs_steps": "1",
        "n_action_steps": "2", "warmup": "10", "ema_decay": "0", "lr": "3e-3"}


def _act(o):
    return np.tanh(o @ W)


def _step(o, a):
    return o + 0.1 * np.r_[a, a[0]]


def _demos(episodes=20, length=30, seed=0, env=""):
    """Deterministic demos: a = tanh(o W), o' = o + 0.1 (a, a_0), so a chunk is a function of o."""
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(episodes):
        o = rng.uniform(-1, 1, 3)
        obs, acts = [o], []
        for _ in range(length):
            a = _act(o)
            o = _step(o, a)
            acts.append(a)
            obs.append(o)
        eps.append({"observations": np.array(obs), "actions": np.array(acts),
                    "rewards": np.zeros(length), "terminated": True, "success": True})
    return Transitions.from_episodes(eps, env=env)


def _true_chunk(o, horizon=4):
    out = []
    for _ in range(horizon):
        a = _act(o)
        out.append(a)
        o = _step(o, a)
    return np.array(out)


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "toy.hdf5"
    write_robomimic(path, _demos())
    return path


def test_chunk_windows_pad_like_diffusion_policy():
    d = _demos(episodes=2, length=5)
    obs, act = chunk_windows(d, n_obs_steps=2, horizon=3)
    assert obs.shape == (10, 2, 3) and act.shape == (10, 3, 2)
    np.testing.assert_array_equal(obs[0, 0], obs[0, 1])  # the first observation repeated
    np.testing.assert_array_equal(obs[6], d.observations[[5, 6]])  # second episode, t = 1
    np.testing.assert_array_equal(act[3], d.actions[[3, 4, 4]])  # the last action repeated
    np.testing.assert_array_equal(act[5], d.actions[[5, 6, 7]])  # never across episodes


@pytest.mark.parametrize("algo,samplers", [("dm1", [""]), ("diffusion-policy", ["", "ddim"])])
def test_policy_learns_a_fixed_function_of_the_observation(tmp_path, toy_file, algo, samplers):
    s = train(algo, str(toy_file), str(tmp_path / "run"), steps=300, batch_size=128,
              overrides=TINY, progress=False)
    assert s["steps"] == 300 and s["train_seconds"] > 0 and s["episodes"] == 20
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["algo"] == algo and run["config"]["horizon"] == 4
    assert (tmp_path / "run" / "log.jsonl").read_text().count("\n") == 3  # every 100 steps
    d = _demos()
    starts = d.observations[::37]
    mean_err = np.mean([np.abs(d.actions.mean(0) - _true_chunk(o)).mean() for o in starts])
    for sampler in samplers:
        policy = load_policy(tmp_path / "run", sampler=sampler)
        err = np.mean([np.abs(policy.predict_chunk(o[None]) - _true_chunk(o)).mean()
                       for o in starts])
        # measured: dm1 0.08, DDPM 0.02, DDIM 0.03, against 0.55 for the mean action
        assert err < 0.25 * mean_err, (sampler, err, mean_err)


def test_resume_continues_exactly(tmp_path, toy_file):
    kw = dict(batch_size=32, progress=False,
              overrides={**TINY, "ckpt_every": "3", "lr_decay_steps": "6", "warmup": "2",
                         "ema_decay": "0.9"})
    train("dm1", str(toy_file), str(tmp_path / "a"), steps=6, **kw)
    train("dm1", str(toy_file), str(tmp_path / "b"), steps=3, **kw)
    s = train("dm1", str(toy_file), str(tmp_path / "b"), steps=6, resume=True, **kw)
    assert s["steps"] == 6
    a = safetensors.torch.load_file(tmp_path / "a" / "policy.safetensors")
    b = safetensors.torch.load_file(tmp_path / "b" / "policy.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert bool((a[k] == b[k]).all()), k
    # a fresh run over the folder is refused; other settings cannot resume it
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        train("dm1", str(toy_file), str(tmp_path / "b"), steps=6, **kw)
    with pytest.raises(ValueError, match="different settings: hidden"):
        train("dm1", str(toy_file), str(tmp_path / "b"), steps=8, resume=True,
              **{**kw, "overrides": {**kw["overrides"], "hidden": "32"}})


def test_network_evaluations_per_action_chunk(tmp_path, toy_file):
    for algo in ("dm1", "diffusion-policy"):
        train(algo, str(toy_file), str(tmp_path / algo), steps=2, batch_size=16,
              overrides=TINY, progress=False)
    policy = load_policy(tmp_path / "dm1")
    policy.model.net = net = count_calls(policy.model.net)
    policy.act(np.zeros(3))  # a query: one chunk
    policy.act(np.zeros(3))  # from the queue (n_action_steps = 2)
    assert net.nfe == 1 and policy.nfe == 1
    for sampler, nfe in (("ddpm", 100), ("ddim", 10)):
        policy = load_policy(tmp_path / "diffusion-policy", sampler=sampler)
        policy.model.model = net = count_calls(policy.model.model)
        chunk = policy.predict_chunk(np.zeros((1, 3)))
        assert net.nfe == nfe == policy.nfe and chunk.shape == (4, 2)
        # the tabulated denoiser acts exactly as core's Denoiser (with x0 clipping) does
        ref = load_policy(tmp_path / "diffusion-policy", sampler=sampler, seed=3)
        fast = load_policy(tmp_path / "diffusion-policy", sampler=sampler, seed=3)
        ref.reference = True
        obs = np.random.default_rng(0).normal(size=(1, 3))
        np.testing.assert_allclose(fast.predict_chunk(obs), ref.predict_chunk(obs), atol=1e-5)
    with pytest.raises(ValueError, match="no sampler 'ddim'"):
        load_policy(tmp_path / "dm1", sampler="ddim")


def test_unet1d_network_trains_resumes_and_disperses_its_middle(tmp_path, toy_file):
    """The paper's temporal UNet in place of the MLP: dm1 disperses its mid2 block, and the
    stored tuple setting (unet_dims) resumes."""
    kw = dict(batch_size=16, progress=False,
              overrides={**TINY, "network": "unet1d", "unet_dims": "8,16", "time_dim": "16"})
    train("dm1", str(toy_file), str(tmp_path / "u"), steps=2, **kw)
    s = train("dm1", str(toy_file), str(tmp_path / "u"), steps=4, resume=True, **kw)
    assert s["steps"] == 4
    log = [json.loads(line) for line in (tmp_path / "u" / "log.jsonl").read_text().splitlines()]
    assert "disp" in log[-1]["logs"] and log[-1]["step"] == 4
    policy = load_policy(tmp_path / "u")
    assert type(policy.model.net.net).__name__ == "UNet1D"
    assert policy.predict_chunk(np.zeros((1, 3))).shape == (4, 2)
    with pytest.raises(ValueError, match="horizon divisible"):
        train("diffusion-policy", str(toy_file), str(tmp_path / "v"),
              overrides={"network": "unet1d", "horizon": "6", "n_action_steps": "2"})


def test_overrides_as_text_or_values():
    a = resolve_config("dm1", "horizon=8 n_action_steps=4 unet_dims=32,64")
    b = resolve_config("dm1", {"horizon": 8, "n_action_steps": "4", "unet_dims": (32, 64)})
    assert a == b and a.horizon == 8 and a.unet_dims == (32, 64)
    assert resolve_config("diffusion-policy").num_train_steps == 100
    with pytest.raises(ValueError, match="not a valid int"):
        resolve_config("dm1", "horizon=eight")


def test_wilson_interval():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(27.75, abs=0.01)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(23.66, abs=0.01), pytest.approx(76.34, abs=0.01))


def test_bad_input_is_refused_in_one_line(tmp_path, toy_file):
    bad = tmp_path / "bad.hdf5"
    write_robomimic(bad, _demos(episodes=2, length=5))
    with h5py.File(bad, "a") as f:
        del f["data/demo_1/actions"]
    with pytest.raises(DatasetError) as e:
        train("dm1", str(bad), str(tmp_path / "r"), steps=1, progress=False)
    assert "demo_1" in str(e.value) and "actions" in str(e.value) and "\n" not in str(e.value)
    lift = tmp_path / "lift.hdf5"  # Lift's keys, but 5 object columns where Lift has 10
    keys = (("robot0_eef_pos", 3), ("robot0_eef_quat", 4), ("robot0_gripper_qpos", 2),
            ("object", 5))
    ep = {"observations": np.zeros((6, 14)), "actions": np.zeros((5, 7)), "rewards": np.zeros(5),
          "terminated": True, "success": True}
    write_robomimic(lift, Transitions.from_episodes([ep], env="Lift", obs_keys=keys))
    with pytest.raises(DatasetError, match="'object' has 5 columns but Lift observes 10"):
        train("diffusion-policy", str(lift), str(tmp_path / "r"), steps=1, progress=False)
    with pytest.raises(FileNotFoundError, match="missing.hdf5"):
        train("dm1", str(tmp_path / "missing.hdf5"), str(tmp_path / "r"), steps=1)
    with pytest.raises(ValueError, match="unknown imitation algorithm 'ofql'"):
        train("ofql", str(toy_file), str(tmp_path / "r"))
    with pytest.raises(ValueError, match="has no field 'horizn'"):
        train("dm1", str(toy_file), str(tmp_path / "r"), overrides={"horizn": "8"})
    with pytest.raises(ValueError, match="n_action_steps .9. exceeds the horizon .4."):
        train("dm1", str(toy_file), str(tmp_path / "r"),
              overrides={"horizon": "4", "n_action_steps": "9"})
    train("dm1", str(toy_file), str(tmp_path / "t"), steps=1, progress=False, overrides=TINY)
    with pytest.raises(ValueError, match="not a robot task"):  # trained without a task
        evaluate(str(tmp_path / "t"), episodes=1, progress=False)


def test_nan_in_training_is_a_clear_error(tmp_path, toy_file):
    with pytest.raises(FloatingPointError, match="NaN in training at step"):
        train("diffusion-policy", str(toy_file), str(tmp_path / "r"), steps=50, batch_size=16,
              overrides={**TINY, "lr": "1e30", "clip": "0", "warmup": "0"}, progress=False)


def test_both_policies_act_in_robosuite_lift(tmp_path):
    """A few training steps on Lift-shaped demos, then a short rollout in robosuite's Lift."""
    from onestep.policy.imitation import _evaluate
    from onestep.policy.tasks import ROBOT_TASKS

    task = ROBOT_TASKS["Lift"]
    rng = np.random.default_rng(0)
    eps = [{"observations": rng.normal(size=(9, task.obs_dim)),
            "actions": rng.uniform(-1, 1, (8, 7)), "rewards": np.zeros(8), "terminated": False,
            "success": False} for _ in range(3)]
    data = Transitions.from_episodes(eps, env="Lift", obs_keys=task.obs_keys)
    write_robomimic(tmp_path / "lift.hdf5", data)
    for algo, sampler, nfe in (("dm1", "", 1), ("diffusion-policy", "ddim", 10)):
        train(algo, str(tmp_path / "lift.hdf5"), str(tmp_path / algo), steps=3, batch_size=8,
              overrides=TINY, progress=False)
        r = _evaluate(str(tmp_path / algo), episodes=2, sampler=sampler, horizon=10,
                      progress=False)
        assert r["success"] == [0, 0] and r["score"] == 0.0 and r["nfe"] == nfe
        assert r["score_ci"] == [0.0, pytest.approx(wilson_interval(0, 2)[1])]
        assert r["queries"] == 2 * 5 and 0 < r["latency_ms_median"] <= r["latency_ms_p95"]
        assert json.loads((tmp_path / algo / f"eval-{r['sampler']}-seed0.json").read_text())[
            "nfe"] == nfe
