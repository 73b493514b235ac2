"""make-dataset on tiny budgets: a random HalfCheetah split, the policy splits of a behaviour
policy trained once (on Pendulum-v1, whose episodes are short) and reused, scripted Lift demos
read by robomimic's SequenceDataset, and the normalised score."""

import json

import numpy as np
import pytest

from onestep.policy.cli import main
from onestep.policy.data import load_dataset, read_d4rl
from onestep.policy.make import make_dataset
from onestep.policy.scores import normalized_score


def test_random_halfcheetah_split(tmp_path, capsys):
    out = tmp_path / "hc-random.hdf5"
    assert main(["make-dataset", "--env", "HalfCheetah-v5", "--quality", "random",
                 "--transitions", "300", "--out", str(out), "--no-progress"]) == 0
    assert "transitions" in capsys.readouterr().out
    d = read_d4rl(out)
    assert len(d) == 300 and d.obs_dim == 17 and d.action_dim == 6
    assert d.env == "HalfCheetah-v5" and d.attrs["quality"] == "random"
    assert d.timeouts[-1] and d.attrs["cut_last_episode"] and not d.terminals.any()
    assert np.abs(d.actions).max() <= 1 and d.actions.std() > 0.5  # uniform on [-1, 1]: 0.58
    np.testing.assert_array_equal(d.observations[1:], d.next_observations[:-1])
    side = json.loads((tmp_path / "hc-random.json").read_text())
    assert side["transitions"] == 300 and side["quality"] == "random"
    # the same split again is refused, then replaced with --overwrite and another seed
    assert main(["make-dataset", "--env", "HalfCheetah-v5", "--quality", "random",
                 "--transitions", "300", "--out", str(out), "--no-progress"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    make_dataset("HalfCheetah-v5", "random", out, transitions=300, seed=1, overwrite=True,
                 progress=False, log=None)
    assert not np.array_equal(read_d4rl(out).actions, d.actions)


def test_random_split_as_minari_dataset(tmp_path, monkeypatch):
    s = make_dataset("HalfCheetah-v5", "random", tmp_path / "minari", format="minari",
                     episodes=1, progress=False, log=None)
    assert s["dataset_id"] == "onestep/halfcheetah/random-v0" and s["transitions"] == 1000
    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    ds = minari.load_dataset("onestep/halfcheetah/random-v0")
    assert ds.total_episodes == 1 and ds.total_steps == 1000
    ep = next(ds.iterate_episodes())
    assert ep.truncations[-1] and float(np.sum(ep.rewards)) == pytest.approx(s["mean_return"])
    assert load_dataset(tmp_path / "minari" / "onestep/halfcheetah/random-v0").attrs[
        "quality"] == "random"


def test_policy_splits_train_once_and_reuse(tmp_path):
    """One tiny TD3 run on Pendulum-v1 serves every split; the second split does not train."""
    pdir = tmp_path / "policies"
    lines = []
    kw = dict(policy_dir=pdir, train_steps=1000, progress=False, log=lines.append)
    med = make_dataset("Pendulum-v1", "medium", tmp_path / "m.hdf5", episodes=2,
                       medium_score=0.0, **kw)
    assert any(line.startswith("training the behaviour policy") for line in lines)
    folder = pdir / "Pendulum-v1-td3-1000-seed0"
    info = json.loads((folder / "policy.json").read_text())
    assert len(info["evals"]) == 10 and info["evals"][-1][0] == 1000
    refs = info["references"]
    lo, hi = refs["random_return"], refs["expert_return"]
    best = max(info["evals"], key=lambda e: e[1])[0]
    medium = next((e[0] for e in info["evals"] if 100 * (e[1] - lo) / (hi - lo) >= 0), best)
    d = read_d4rl(tmp_path / "m.hdf5")
    assert d.num_episodes == 2 and len(d) == 400
    assert d.attrs["medium_step"] == medium and d.attrs["expert_step"] == best
    assert d.attrs["ref_random_return"] == refs["random_return"]
    assert d.attrs["ref_expert_return"] == refs["expert_return"]
    assert med["normalized_score"] == pytest.approx(
        normalized_score("Pendulum-v1", med["mean_return"], d))
    lines.clear()
    make_dataset("Pendulum-v1", "medium-replay", tmp_path / "mr.hdf5", **kw)
    assert any("trained before" in line for line in lines) and \
        not any(line.startswith("training") for line in lines)
    mr = read_d4rl(tmp_path / "mr.hdf5")
    assert len(mr) == medium  # the learner's buffer at the medium point
    np.testing.assert_array_equal(mr.actions,
                                  np.load(folder / "replay.npz")["actions"][:medium])
    make_dataset("Pendulum-v1", "medium-expert", tmp_path / "me.hdf5", episodes=2, **kw)
    me = read_d4rl(tmp_path / "me.hdf5")
    assert me.num_episodes == 2 and len(me) == 400


def test_normalized_score():
    assert normalized_score("X", 50.0, (0.0, 200.0)) == 25.0
    np.testing.assert_allclose(normalized_score("X", [10, 30], {"ref_random_return": 10,
                                                                "ref_expert_return": 30}),
                               [0, 100])
    with pytest.raises(ValueError, match="no reference returns for 'NoSuch-v0'"):
        normalized_score("NoSuch-v0", 1.0)


@pytest.mark.slow
def test_scripted_lift_demos_read_by_sequence_dataset(tmp_path):
    """Two scripted Lift demonstrations (robosuite, ~15 s with its start-up): they succeed,
    robomimic's SequenceDataset reads the file, and the task's observation widths are the
    simulator's."""
    out = tmp_path / "lift.hdf5"
    s = make_dataset("Lift", out=out, episodes=2, progress=False, log=None)
    assert s["success_rate"] == 1.0 and s["episodes"] == 2 and s["transitions"] < 150
    d = load_dataset(out)
    assert d.env == "Lift" and list(d.success) == [True, True] and d.terminals.sum() == 2
    assert d.rewards.sum() == 2 and np.abs(d.actions).max() <= 1

    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.utils.dataset import SequenceDataset

    keys = [k for k, _ in d.obs_keys]
    ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": keys, "rgb": []}})
    ds = SequenceDataset(str(out), obs_keys=keys, dataset_keys=("actions", "rewards", "dones"),
                         seq_length=8, hdf5_cache_mode="all", hdf5_use_swmr=False)
    assert len(ds) == len(d)
    first = ds[0]
    assert first["actions"].shape == (8, 7) and first["obs"]["object"].shape == (8, 10)
    np.testing.assert_allclose(first["actions"], d.actions[:8], rtol=1e-6)
