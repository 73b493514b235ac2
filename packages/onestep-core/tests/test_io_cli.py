"""Saved models round-trip and fail clearly; the `onestep demo` command runs end to end."""

import json

import pytest
import torch

from onestep.core.cli import main
from onestep.core.denoiser import Denoiser
from onestep.core.io import CheckpointError, load_model, load_student, save_model
from onestep.core.nn import MLP, EDMPrecond
from onestep.core.paths import EDM, VP


def _models():
    yield Denoiser(MLP(3, hidden=32, depth=1), VP.ddpm_linear(100), prediction="eps",
                   time_input="index")
    yield Denoiser(EDMPrecond(MLP(3, hidden=32, depth=1), sigma_data=0.5), EDM(),
                   prediction="x0", time_input="sigma")


@pytest.mark.parametrize("den", list(_models()))
def test_saved_model_round_trips(tmp_path, den):
    save_model(tmp_path, den, kind="teacher", extra={"note": "x"})
    loaded, info = load_model(tmp_path, kind="teacher")
    x, t = torch.randn(5, 3), torch.rand(5) * 0.9 + 0.05
    torch.testing.assert_close(loaded.x0(x, t), den.x0(x, t))
    assert info["extra"] == {"note": "x"} and loaded.time_input == den.time_input
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_bad_model_folders_name_the_file_and_problem(tmp_path):
    den = next(_models())
    with pytest.raises(CheckpointError, match="model.json: no such file"):
        load_model(tmp_path)
    save_model(tmp_path, den)
    with pytest.raises(CheckpointError, match="holds a 'teacher' model, expected a 'dmd2'"):
        load_model(tmp_path, kind="dmd2")
    info = json.loads((tmp_path / "model.json").read_text())
    info["network"]["config"]["hidden"] = 64
    (tmp_path / "model.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"model.safetensors does not match.*shape"):
        load_model(tmp_path)
    save_model(tmp_path, den)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt or truncated"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="model.json is corrupt"):
        load_model(tmp_path)


def test_demo_runs_end_to_end(tmp_path, capsys):
    code = main(["demo", "--steps", "150", "--nfe", "2", "8", "--n-samples", "500",
                 "--distill-steps", "30", "--no-progress", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    # the teacher samples with the default sampler of its path (rectified flow: unipc uniform)
    assert "sliced W2" in out and "unipc uniform" in out and "instaflow student" in out
    result = json.loads((tmp_path / "demo.json").read_text())
    assert [r["nfe"] for r in result["rows"]] == [0, 0, 2, 8, 1]
    assert result["rows"][0]["sampler"] == "real data (floor)" and "real data (floor)" in out
    assert result["rows"][-1]["sampler"] == "instaflow student"
    assert all(r["sw2"] > 0 for r in result["rows"])
    # the floor (a second real sample) is below the prior and the 2-NFE teacher
    assert result["rows"][0]["sw2"] < min(r["sw2"] for r in result["rows"][1:3])
    assert (tmp_path / "samples.png").stat().st_size > 1000
    den, _ = load_model(tmp_path / "teacher", kind="teacher")
    assert isinstance(den.model, MLP)
    gen, info = load_student(tmp_path / "student")
    assert info["student"]["method"] == "instaflow" and info["student"]["nfe"] == 1
    # a second demo into the same folder is refused (the first is kept), --overwrite replaces it
    assert main(["demo", "--steps", "5", "--no-progress", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--resume" not in err and (tmp_path / "demo.json").exists()
    assert main(["demo", "--steps", "5", "--nfe", "1", "--method", "none", "--n-samples", "100",
                 "--no-progress", "--overwrite", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "demo.json").read_text())["args"]["steps"] == 5
    assert not (tmp_path / "student").exists()


def test_demo_rejects_bad_options(capsys):
    assert main(["demo", "--objective", "ddpm", "--steps", "1", "--no-progress",
                 "--out", "/tmp/unused-onestep"]) == 2
    assert "unknown objective 'ddpm'" in capsys.readouterr().err
    assert main(["demo", "--method", "nope", "--no-progress", "--out", "/tmp/unused-onestep"]) == 2
    assert "unknown distillation method 'nope'" in capsys.readouterr().err
    assert main(["demo", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == "checkerboard"
