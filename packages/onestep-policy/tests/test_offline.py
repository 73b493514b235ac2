"""Offline RL (onestep.policy.offline): every algorithm trains and evaluates on a small D4RL file
written here, resume continues exactly, closed-form checks of the policies, one-line errors, and
the train / eval command line."""

import json
import shutil
import sys
import types

import numpy as np
import pytest
import safetensors.torch
import torch

from onestep.policy import offline
from onestep.policy.cli import main
from onestep.policy.data import DatasetError, Transitions, write_d4rl

ENV = "Pendulum-v1"  # 3 observations, 1 action in [-2, 2], 200-step episodes, fast
W = np.array([[0.8], [-0.5], [0.3]])
TINY = {"hidden": 32, "depth": 2}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def expert(obs):
    """The dataset's action, a fixed function of the state, in Pendulum's range [-2, 2]."""
    return 2 * np.tanh(obs @ W)


def dataset(path, n=600, rewards=None):
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    timeouts = np.zeros(n, bool)
    timeouts[199::200] = True
    d = Transitions(obs, expert(obs), rng.normal(size=n) if rewards is None else rewards,
                    rng.normal(size=(n, 3)), np.zeros(n, bool), timeouts, env=ENV,
                    attrs={"ref_random_return": -1200.0, "ref_expert_return": -150.0})
    return write_d4rl(path, d)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return dataset(tmp_path_factory.mktemp("data") / "pendulum.hdf5")


def weights(run):
    return safetensors.torch.load_file(run / offline.POLICY_FILE)


@pytest.mark.parametrize("algo,nfe", [("ofql", 1), ("dql", 5), ("fbc", 10), ("bc", 1)])
def test_every_algo_trains_and_evaluates(data, tmp_path, algo, nfe):
    s = offline.train(algo, str(data), str(tmp_path / algo), steps=4, batch_size=16,
                      overrides=TINY, progress=False)
    assert s["steps"] == 4 and s["train_seconds"] > 0 and s["env"] == ENV
    run = json.loads((tmp_path / algo / "run.json").read_text())
    assert run["algo"] == algo and run["action_low"] == [-2.0] and run["config"]["hidden"] == 32
    log = [json.loads(x) for x in (tmp_path / algo / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and "loss" in log[-1]["logs"]
    e = offline.evaluate(str(tmp_path / algo), episodes=1, progress=False)
    assert len(e["returns"]) == 1 and e["nfe"] == nfe
    assert e["score"] == pytest.approx(100 * (e["returns"][0] + 1200) / 1050)
    assert e["score_ci"] == [e["score"], e["score"]]
    assert 0 < e["latency_ms_median"] <= e["latency_ms_p95"]


@pytest.mark.parametrize("algo", ["ofql", "dql"])
def test_resume_continues_exactly(data, tmp_path, algo):
    """A run stopped after its step-3 checkpoint and resumed ends with the same weights, critics
    and EMA included, as the run that went through in one go."""
    kw = dict(steps=6, batch_size=16, progress=False,
              overrides={**TINY, "ckpt_every": 3, "ema_start": 0, "ema_every": 1})
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    offline.train(algo, str(data), str(whole), **kw)
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "step_00000006")
    (cut / "checkpoints" / "latest").write_text("step_00000003\n")
    (cut / offline.POLICY_FILE).unlink()
    offline.train(algo, str(data), str(cut), resume=True, **kw)
    a, b = weights(whole), weights(cut)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    step = "checkpoints/step_00000006"
    for name in ("policy_ema", "critic"):
        x = safetensors.torch.load_file(whole / step / f"{name}.safetensors")
        y = safetensors.torch.load_file(cut / step / f"{name}.safetensors")
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)
    # and the run was not a no-op: the weights moved from the step-3 checkpoint
    p3 = safetensors.torch.load_file(whole / "checkpoints/step_00000003/policy.safetensors")
    assert any(not torch.equal(p3[k], a[f"policy.{k}"]) for k in p3)


@pytest.mark.parametrize("algo,steps,tol", [("bc", 600, 0.02), ("fbc", 1500, 0.05)])
def test_behaviour_cloning_learns_a_function_of_the_state(data, tmp_path, algo, steps, tol):
    """The data's action is a fixed function of the state: the cloned policy's action on new
    states matches it (mean squared error in Pendulum's action units, range [-2, 2])."""
    torch.manual_seed(0)
    offline.train(algo, str(data), str(tmp_path / algo), steps=steps, batch_size=128,
                  overrides={"hidden": 64, "depth": 2, "lr": 3e-3}, progress=False)
    policy, _, info = offline.load_policy(tmp_path / algo)
    obs = np.random.default_rng(1).normal(size=(256, 3)).astype(np.float32)
    with torch.no_grad():
        a = 2 * policy.act(torch.from_numpy(obs), torch.Generator().manual_seed(0)).numpy()
    err = float(((a - expert(obs)) ** 2).mean())
    assert err < tol, err
    assert err < 0.1 * float(expert(obs).var())


def test_ofql_action_is_one_step_of_its_average_velocity():
    """OFQL acts with a = eps - u(eps, r=0, t=1 | s), clipped: the same noise through the
    average-velocity network gives the same action, in one network evaluation."""
    torch.manual_seed(0)
    c = offline.OFQLConfig(hidden=16, depth=2)
    policy = offline.MeanFlowPolicy(3, 2, c)
    torch.nn.init.normal_(policy.model.net.net.time_embed.gap.mlp[-1].weight)  # r matters
    s = torch.randn(7, 3)
    calls = []
    hook = policy.model.net.net.net.register_forward_hook(lambda m, i, o: calls.append(i))
    a = policy.act(s, torch.Generator().manual_seed(3))
    hook.remove()
    eps = torch.randn(7, 2, generator=torch.Generator().manual_seed(3))
    u = policy.model(eps, torch.zeros(7), torch.ones(7), s)
    torch.testing.assert_close(a, (eps - u).clamp(-1, 1))
    assert len(calls) == 1  # one pass of the MLP per action


def test_dql_sampler_recovers_the_action_of_an_exact_eps_network():
    """With the exact eps of a point mass a* (eps = (a_i - alpha_i a*) / sigma_i) the 5-step
    DDPM sampler returns a* whatever its noise; x0 is clipped to the action range."""
    c = offline.DQLConfig(hidden=8, depth=1)
    policy = offline.DiffusionPolicy(2, 2, c)
    path = policy.path

    class Exact(torch.nn.Module):  # reads the step index through its "time embedding"
        dim = 2

        def __init__(self, target):
            super().__init__()
            self.target = target

        def time_embed(self, index, n):
            return index.reshape(n, 1)

        def forward_embedded(self, x, emb, cond=None):
            t = (emb[:, 0].double() + 1) / c.n_timesteps
            a, s = path.alpha(t)[:, None].float(), path.sigma(t)[:, None].float()
            return (x - a * self.target) / s

    for target, expect in (([0.4, -0.9], [0.4, -0.9]), ([1.7, -3.0], [1.0, -1.0])):
        policy.net = Exact(torch.tensor(target))
        out = policy.act(torch.zeros(5, 2), torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, torch.tensor(expect).expand(5, 2), atol=1e-5, rtol=0)


def _clipped_ddpm(net, path):
    """Core's reference for DQL's sampler: a Denoiser of the eps network (fed the step index)
    whose x0 is clipped to [-1, 1], eps recomputed from it, for core's sample_ddim."""
    from onestep.core.convert import as_batch_time, to_x0_eps
    from onestep.core.denoiser import Denoiser

    class Clipped(Denoiser):
        def x0_eps(self, x_t, t, cond=None):
            x0, _ = super().x0_eps(x_t, t, cond)
            return to_x0_eps("x0", x0.clamp(-1.0, 1.0), x_t, as_batch_time(t, x_t), self.path)

    return Clipped(net, path, prediction="eps", time_input="index")


def test_fast_samplers_equal_core_solvers():
    """The policies' samplers (coefficients and time embeddings precomputed) equal core's
    solvers on the same noise: DQL = sample_ddim(eta=1) with x0 clipped on the step grid, fbc
    = sample_euler on the rectified-flow path, OFQL = MeanFlowModel(eps, 0, 1)."""
    from onestep.core.denoiser import Denoiser
    from onestep.core.paths import RectifiedFlow
    from onestep.core.solvers import sample_ddim, sample_euler

    torch.manual_seed(0)
    s = torch.randn(6, 3)
    dql = offline.DiffusionPolicy(3, 2, offline.DQLConfig(hidden=16, depth=2))
    with torch.no_grad():
        dql.net.net[-1].weight.mul_(20)  # x0 far outside [-1, 1]: the clip matters
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 2, generator=g)
    ref = sample_ddim(_clipped_ddpm(dql.net, dql.path), z, torch.linspace(1, 0, 6).double(),
                      cond=s, generator=g, eta=1.0).clamp(-1, 1)
    fast = dql.act(s, torch.Generator().manual_seed(1))
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    assert 0 < (fast.abs() == 1).float().mean() < 1

    fbc = offline.FlowPolicy(3, 2, offline.FBCConfig(hidden=16, depth=2, nfe=4))
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(2))
    den = Denoiser(fbc.net, RectifiedFlow(), prediction="velocity", time_input="t")
    ref = sample_euler(den, z, torch.linspace(1, 0, 5).double(), cond=s).clamp(-1, 1)
    torch.testing.assert_close(fbc.act(s, torch.Generator().manual_seed(2)), ref)

    ofql = offline.MeanFlowPolicy(3, 2, offline.OFQLConfig(hidden=16, depth=2))
    torch.nn.init.normal_(ofql.model.net.net.time_embed.gap.mlp[-1].weight)  # r matters
    z = torch.randn(6, 2)
    torch.testing.assert_close(ofql.one_step(z, s),
                               z - ofql.model(z, torch.zeros(6), torch.ones(6), s))

    # freeze() (deployment) keeps the grid's time embeddings: the same actions; train() drops them
    for policy in (dql, fbc, ofql):
        before = policy.act(s, torch.Generator().manual_seed(5))
        policy.eval().freeze()
        assert policy._frozen is not None
        torch.testing.assert_close(policy.act(s, torch.Generator().manual_seed(5)), before)
        policy.train()
        assert policy._frozen is None


def test_dql_betas_are_the_papers_vp_schedule():
    b = offline.dql_betas(5).numpy()
    i = np.arange(1, 6)
    ref = 1 - np.exp(-0.1 / 5 - 0.5 * 9.9 * (2 * i - 1) / 25)
    np.testing.assert_allclose(b, ref)
    assert offline.DQLConfig().n_timesteps == 5


def test_dql_q_loss_moves_the_policy_through_its_five_steps():
    """DQL backpropagates the Q loss through the whole sampling chain: the policy's sampled
    action depends on the network's weights with a non-zero gradient."""
    torch.manual_seed(0)
    policy = offline.DiffusionPolicy(3, 2, offline.DQLConfig(hidden=16, depth=2))
    a = policy.act(torch.randn(4, 3), torch.Generator().manual_seed(0))
    a.sum().backward()
    assert all(p.grad is not None for p in policy.net.parameters())
    assert policy.net.net[0].weight.grad.abs().sum() > 0


def test_errors_are_one_line(data, tmp_path):
    with pytest.raises(ValueError, match="unknown algorithm 'sac'"):
        offline.train("sac", str(data), str(tmp_path / "x"))
    with pytest.raises(ValueError, match="has no field 'etaa'"):
        offline.train("ofql", str(data), str(tmp_path / "x"), overrides={"etaa": 1})
    with pytest.raises(ValueError, match="not a valid float"):
        offline.train("ofql", str(data), str(tmp_path / "x"), overrides="eta=big")
    with pytest.raises(ValueError, match="gamma"):
        offline.train("dql", str(data), str(tmp_path / "x"), overrides={"gamma": 2.0})
    with pytest.raises(FileNotFoundError, match="no such file"):
        offline.train("bc", str(tmp_path / "none.hdf5"), str(tmp_path / "x"))
    import h5py

    bad = tmp_path / "bad.hdf5"
    shutil.copy(data, bad)
    with h5py.File(bad, "a") as f:
        del f["rewards"]
    with pytest.raises(DatasetError, match="missing dataset 'rewards'") as e:
        offline.train("bc", str(bad), str(tmp_path / "x"))
    assert "\n" not in str(e.value)
    with pytest.raises(DatasetError, match="observes"):  # HalfCheetah observes 17 columns
        offline.train("bc", str(data), str(tmp_path / "x"), env="HalfCheetah-v5")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="holds no run.json"):
        offline.evaluate(str(tmp_path))


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_non_finite_training_is_a_clear_error(tmp_path):
    """Rewards of 1e30 overflow the critic's squared error at the first step."""
    f = dataset(tmp_path / "huge.hdf5", n=200, rewards=np.full(200, 1e30))
    with pytest.raises(ValueError, match="training turned non-finite.*step 0"):
        offline.train("ofql", str(f), str(tmp_path / "run"), steps=3, batch_size=8,
                      overrides=TINY, progress=False)


def test_cli_train_eval(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--algo", "ofql", "--data", str(data), "--out", str(out),
                 "--steps", "3", "--batch-size", "8", "--set", "hidden=16",
                 "--set", "depth=1 eta=0.5", "--no-progress"]) == 0
    assert "ofql on Pendulum-v1: 3 steps" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["eta"] == 0.5 and run["config"]["depth"] == 1
    assert main(["eval", "--run", str(out), "--episodes", "1", "--json",
                 str(tmp_path / "e.json"), "--no-progress"]) == 0
    assert "latency ms" in capsys.readouterr().out
    e = json.loads((tmp_path / "e.json").read_text())
    assert e["nfe"] == 1 and len(e["returns"]) == 1
    # a second fresh run into the same folder is refused; --dry-run shows the config
    assert main(["train", "--algo", "ofql", "--data", str(data), "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--algo", "dql", "--data", str(data), "--out", str(tmp_path / "d"),
                 "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["n_timesteps"] == 5
    assert main(["train", "--algo", "sac", "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown --algo 'sac'" in err and "diffusion-policy" in err and err.count("\n") == 1


def test_help_lists_all_six_algorithms(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for algo in ("ofql", "dql", "fbc", "bc", "dm1", "diffusion-policy"):
        assert algo in text


def test_imitation_algorithms_go_to_the_imitation_module(monkeypatch, tmp_path):
    """dm1 and diffusion-policy are trained and evaluated by onestep.policy.imitation's train /
    evaluate, with the same arguments."""
    from onestep.policy import commands

    seen = {}
    fake = types.ModuleType("onestep.policy.imitation")
    fake.train = lambda algo, dataset, out, **kw: seen.setdefault("train", (algo, dataset, kw)) \
        and {"steps": 1, "train_seconds": 0.0, "env": "Lift"}
    fake.evaluate = lambda run, **kw: seen.setdefault("eval", (run, kw)) and {"algo": "dm1"}
    monkeypatch.setitem(sys.modules, "onestep.policy.imitation", fake)
    commands.train(algo="dm1", data="demos.hdf5", out=str(tmp_path / "r"), steps=1,
                   progress=False)
    assert seen["train"][0] == "dm1" and seen["train"][2]["steps"] == 1
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text(json.dumps({"algo": "diffusion-policy"}))
    commands.eval(run=str(tmp_path / "r"), episodes=2, progress=False)
    assert seen["eval"][1]["episodes"] == 2
