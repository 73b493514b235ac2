"""onestep-policy builds a wheel that installs beside the core's into a fresh virtual environment
and works there alone (its dependencies exposed from this environment, as in the workspace's
tests/test_packaging.py)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv on PATH")
def test_policy_wheel_installs_beside_the_core_wheel_alone(tmp_path):
    dist = tmp_path / "dist"
    for package in ("onestep-core", "onestep-policy"):
        subprocess.run(["uv", "build", "--package", package, "--wheel", "--out-dir", str(dist)],
                       cwd=ROOT, check=True, capture_output=True)
    (wheel,) = dist.glob("onestep_policy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "onestep/policy/data.py" in names and "onestep/__init__.py" not in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "no license file"
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist: minari[hdf5,create]==0.5.3" in metadata
    assert "onestep-policy make-dataset" in metadata, "the package README is not the description"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([sys.executable, "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    pth = next((venv / "lib").glob("python3*/site-packages")) / "_deps.pth"
    pth.write_text(site + "\n")
    subprocess.run(["uv", "pip", "install", "--python", str(py), "--no-deps",
                    *map(str, dist.glob("*.whl"))], check=True, capture_output=True)
    code = ("import numpy as np, onestep.policy as p, onestep.core as c\n"
            "d = p.Transitions.from_episodes([{'observations': np.zeros((4, 17)), "
            "'actions': np.zeros((3, 6)), 'rewards': np.ones(3), 'terminated': True}], "
            "env='HalfCheetah-v5')\n"
            "p.write_d4rl('t.hdf5', d)\n"
            "print(p.__file__, c.__file__, len(p.load_dataset('t.hdf5')))")
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    policy_file, core_file, n = out.stdout.split()
    assert str(venv) in policy_file and str(venv) in core_file, "imported from the workspace"
    assert int(n) == 3
    helped = subprocess.run([str(venv / "bin" / "onestep-policy"), "--help"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "make-dataset" in helped.stdout, helped.stderr
