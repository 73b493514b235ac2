"""Dataset formats: round trips of D4RL, robomimic and Minari files on small synthetic data, the
formats' own readers (robomimic's SequenceDataset, minari.load_dataset) on what we write, and one
clear error per kind of malformed file."""

import json
import os

import h5py
import numpy as np
import pytest

from onestep.policy.data import (
    DatasetError,
    Transitions,
    detect_format,
    load_dataset,
    read_d4rl,
    read_minari,
    read_robomimic,
    write_d4rl,
    write_minari,
    write_robomimic,
)
from onestep.policy.tasks import ROBOT_TASKS


def toy(lengths=(5, 7, 3), obs_dim=17, act_dim=6, env="HalfCheetah-v5", terminal_last=False,
        seed=0, obs_keys=(), success=None):
    """Episodes whose next observations continue into the next step (as a simulator makes them);
    each ends in a timeout, or the last one in a terminal state."""
    rng = np.random.default_rng(seed)
    eps = []
    for i, t in enumerate(lengths):
        ep = {"observations": rng.normal(size=(t + 1, obs_dim)),
              "actions": rng.uniform(-1, 1, size=(t, act_dim)), "rewards": rng.normal(size=t),
              "terminated": terminal_last and i == len(lengths) - 1}
        if success is not None:
            ep["success"] = success[i]
        eps.append(ep)
    return Transitions.from_episodes(eps, env=env, obs_keys=obs_keys,
                                     attrs={"quality": "toy", "mean_return": 1.5})


def lift_toy(n=3):
    task = ROBOT_TASKS["Lift"]
    return toy(lengths=(6, 4, 9)[:n], obs_dim=task.obs_dim, act_dim=7, env="Lift",
               terminal_last=True, obs_keys=task.obs_keys, success=[False, True, True][:n])


def same(a: Transitions, b: Transitions):
    for k in ("observations", "actions", "rewards", "next_observations", "terminals",
              "timeouts"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)


def test_transitions_episodes_head_and_concat():
    d = toy()
    assert len(d) == 15 and d.num_episodes == 3
    np.testing.assert_array_equal(d.episode_lengths(), [5, 7, 3])
    np.testing.assert_allclose(d.episode_returns()[1], d.rewards[5:12].sum(), rtol=1e-6)
    eps = d.episodes()
    assert [len(e) for e in eps] == [5, 7, 3] and eps[1].timeouts[-1]
    h = d.head(8)  # cuts the second episode after 3 of its 7 steps
    assert len(h) == 8 and h.num_episodes == 2 and h.timeouts[-1]
    assert not d.timeouts[7], "head must not change the original"
    both = Transitions.concat([d, h])
    assert len(both) == 23 and both.num_episodes == 5
    with pytest.raises(DatasetError, match="'actions' has 3 rows"):
        Transitions(d.observations[:4], d.actions[:3], d.rewards[:4], d.next_observations[:4],
                    d.terminals[:4], d.timeouts[:4])


def test_d4rl_round_trip(tmp_path):
    d = toy(terminal_last=True)
    f = write_d4rl(tmp_path / "toy.hdf5", d)
    with h5py.File(f) as h:
        assert sorted(h.keys()) == sorted(["observations", "actions", "rewards", "terminals",
                                           "timeouts", "next_observations"])
        assert h["terminals"].dtype == bool and h["observations"].dtype == np.float32
    r = read_d4rl(f)
    same(d, r)
    assert r.env == "HalfCheetah-v5" and r.attrs["quality"] == "toy" and r.num_episodes == 3
    assert r.terminals[-1] and not r.timeouts[-1]
    assert detect_format(f) == "d4rl"
    same(d, load_dataset(f))


def test_robomimic_round_trip_and_sequence_dataset(tmp_path):
    d = lift_toy()
    f = write_robomimic(tmp_path / "lift.hdf5", d)
    with h5py.File(f) as h:
        assert json.loads(h["data"].attrs["env_args"])["env_name"] == "Lift"
        assert h["data"].attrs["total"] == len(d)
        assert h["data/demo_2/obs/object"].shape == (9, 10)
        assert list(h["data/demo_2/dones"][()]) == [0] * 8 + [1]
        assert sorted(h["mask/valid"][()].tolist() + h["mask/train"][()].tolist()) == \
            [b"demo_0", b"demo_1", b"demo_2"]
    r = read_robomimic(f)
    same(d, r)
    assert r.obs_keys == d.obs_keys and list(r.success) == [False, True, True]
    assert detect_format(f) == "robomimic"

    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.utils.dataset import SequenceDataset

    keys = [k for k, _ in d.obs_keys]
    ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": keys, "rgb": []}})
    ds = SequenceDataset(str(f), obs_keys=keys, dataset_keys=("actions", "rewards", "dones"),
                         seq_length=4, hdf5_cache_mode="low_dim", hdf5_use_swmr=False)
    assert len(ds) == len(d)
    item = ds[6]  # demo_1's first step: 4 actions from there
    np.testing.assert_allclose(item["actions"], d.actions[6:10], rtol=1e-6)
    np.testing.assert_allclose(item["obs"]["object"][0], d.obs_dict()["object"][6], rtol=1e-6)
    ds_valid = SequenceDataset(str(f), obs_keys=keys, dataset_keys=("actions",),
                               filter_by_attribute="valid", hdf5_use_swmr=False)
    assert ds_valid.n_demos == 1


def test_minari_round_trip_and_load_dataset(tmp_path, monkeypatch):
    d = toy(terminal_last=True)
    d.attrs.update(ref_random_return=-300.0, ref_expert_return=5000.0)
    folder = write_minari(d, "onestep/halfcheetah/toy-v0", tmp_path / "minari")
    assert (folder / "data").is_dir()
    r = read_minari(folder)
    same(d, r)
    assert r.env == "HalfCheetah-v5" and r.attrs["quality"] == "toy"
    assert detect_format(folder) == "minari"
    r2 = read_minari("onestep/halfcheetah/toy-v0", root=tmp_path / "minari")
    same(d, r2)

    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    ds = minari.load_dataset("onestep/halfcheetah/toy-v0")
    assert ds.total_episodes == 3 and ds.total_steps == len(d)
    ep = next(ds.iterate_episodes())
    np.testing.assert_allclose(ep.observations[:-1], d.observations[:5])
    assert ds.spec.env_spec.id == "HalfCheetah-v5"
    assert float(minari.get_normalized_score(ds, np.array(2350.0))) == pytest.approx(0.5)


def test_minari_robot_data_without_a_gym_env(tmp_path):
    d = lift_toy()
    folder = write_minari(d, "onestep/lift/toy-v0", tmp_path)
    r = read_minari(folder)
    same(d, r)
    assert r.env == "Lift" and r.obs_keys == d.obs_keys and list(r.success) == [False, True, True]


def test_minari_missing_id_is_not_a_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found locally"):
        read_minari("onestep/none/missing-v0", root=tmp_path)
    assert not os.environ.get("MINARI_DATASETS_PATH", "").startswith(str(tmp_path))


# -- malformed files ----------------------------------------------------------------------------
def _d4rl_file(tmp_path, edit):
    f = write_d4rl(tmp_path / "bad.hdf5", toy())
    with h5py.File(f, "a") as h:
        edit(h)
    return f


@pytest.mark.parametrize("edit, message", [
    (lambda h: h.__delitem__("timeouts"), "missing dataset 'timeouts'"),
    (lambda h: (h.__delitem__("actions"), h.create_dataset("actions", data=np.zeros((14, 6)))),
     "'actions' has 14 rows but 'observations' has 15"),
    (lambda h: (h.__delitem__("rewards"), h.create_dataset("rewards", data=np.zeros(16))),
     "'rewards' has 16 rows"),
    (lambda h: (h.__delitem__("observations"), h.__delitem__("next_observations"),
                h.create_dataset("observations", data=np.zeros((15, 11))),
                h.create_dataset("next_observations", data=np.zeros((15, 11)))),
     "observations have 11 columns but HalfCheetah-v5 observes 17"),
    (lambda h: (h.__delitem__("actions"), h.create_dataset("actions", data=np.zeros((15, 3)))),
     "actions have 3 columns but HalfCheetah-v5 acts with 6"),
    (lambda h: (h.__delitem__("next_observations"),
                h.create_dataset("next_observations", data=np.zeros((15, 16)))),
     "next_observations have 16 columns but observations have 17"),
    (lambda h: h["rewards"].__setitem__(3, np.nan), "'rewards' holds NaN"),
])
def test_malformed_d4rl_files(tmp_path, edit, message):
    f = _d4rl_file(tmp_path, edit)
    with pytest.raises(DatasetError) as e:
        load_dataset(f)
    assert message in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)


def test_d4rl_checked_against_the_env_given(tmp_path):
    f = write_d4rl(tmp_path / "t.hdf5", toy())
    with pytest.raises(DatasetError, match="17 columns but Hopper-v5 observes 11"):
        read_d4rl(f, env="Hopper-v5")
    with pytest.raises(ValueError, match="unknown environment 'NoSuchEnv-v0'"):
        read_d4rl(f, env="NoSuchEnv-v0")


def test_not_hdf5_and_missing_files(tmp_path):
    junk = tmp_path / "junk.hdf5"
    junk.write_text("not hdf5")
    with pytest.raises(DatasetError, match=f"{junk}: not a readable HDF5 file"):
        load_dataset(junk)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_dataset(tmp_path / "absent.hdf5")


def _robomimic_file(tmp_path, edit):
    f = write_robomimic(tmp_path / "bad.hdf5", lift_toy())
    with h5py.File(f, "a") as h:
        edit(h)
    return f


@pytest.mark.parametrize("edit, message", [
    (lambda h: h.__delitem__("data/demo_1/actions"), "data/demo_1: missing 'actions'"),
    (lambda h: h.__delitem__("data/demo_0/obs/object"), "data/demo_0/obs: missing 'object'"),
    (lambda h: (h.__delitem__("data/demo_2/obs/robot0_eef_pos"),
                h.create_dataset("data/demo_2/obs/robot0_eef_pos", data=np.zeros((8, 3)))),
     "data/demo_2/obs/robot0_eef_pos has 8 rows but 'actions' has 9"),
    (lambda h: h["data/demo_0"].attrs.__setitem__("num_samples", 99),
     "data/demo_0: num_samples is 99 but 'actions' has 6 rows"),
    (lambda h: [(h.__delitem__(f"data/demo_{i}/{g}/object"),
                 h.create_dataset(f"data/demo_{i}/{g}/object", data=np.zeros((t, 9))))
                for i, t in enumerate((6, 4, 9)) for g in ("obs", "next_obs")],
     "observation 'object' has 9 columns but Lift observes 10"),
    (lambda h: [(h.__delitem__(f"data/demo_{i}/actions"),
                 h.create_dataset(f"data/demo_{i}/actions", data=np.zeros((t, 6))))
                for i, t in enumerate((6, 4, 9))],
     "actions have 6 columns but Lift acts with 7"),
    (lambda h: h.__delitem__("data"), "no 'data' group"),
    (lambda h: h["data"].move("demo_1", "episode_1"), "'data/episode_1' is not named demo_"),
])
def test_malformed_robomimic_files(tmp_path, edit, message):
    f = _robomimic_file(tmp_path, edit)
    with pytest.raises(DatasetError) as e:
        read_robomimic(f)
    assert message in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)


def test_malformed_minari_folder(tmp_path):
    folder = write_minari(toy(), "onestep/halfcheetah/bad-v0", tmp_path)
    (folder / "data" / "main_data.hdf5").write_text("broken")
    with pytest.raises(DatasetError, match="not a readable Minari dataset"):
        read_minari(folder)
    folder2 = write_minari(toy(), "onestep/halfcheetah/bad-v1", tmp_path)
    with pytest.raises(DatasetError, match="observations have 17 columns but Hopper-v5"):
        read_minari(folder2, env="Hopper-v5")
