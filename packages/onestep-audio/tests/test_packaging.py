"""onestep-audio builds a wheel that installs beside the core's into a fresh virtual environment
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
def test_audio_wheel_installs_beside_the_core_wheel_alone(tmp_path):
    dist = tmp_path / "dist"
    for package in ("onestep-core", "onestep-audio"):
        subprocess.run(["uv", "build", "--package", package, "--wheel", "--out-dir", str(dist)],
                       cwd=ROOT, check=True, capture_output=True)
    (wheel,) = dist.glob("onestep_audio-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "onestep/audio/features.py" in names and "onestep/__init__.py" not in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "no license file"
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist: espeakng-loader" in metadata
    assert "onestep-audio prepare" in metadata, "the package README is not the description"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([sys.executable, "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    pth = next((venv / "lib").glob("python3*/site-packages")) / "_deps.pth"
    pth.write_text(site + "\n")
    subprocess.run(["uv", "pip", "install", "--python", str(py), "--no-deps",
                    *map(str, dist.glob("*.whl"))], check=True, capture_output=True)
    code = ("import numpy as np, onestep.audio as a, onestep.core as c\n"
            "cfg = a.MEL_PRESETS['telephone']\n"
            "t = np.arange(8000) / 8000\n"
            "a.write_wav('x.wav', 0.5 * np.sin(2 * np.pi * 440 * t), 8000)\n"
            "x, rate = a.read_wav('x.wav', 8000)\n"
            "y = a.griffin_lim(a.log_mel(x, cfg), cfg, n_iter=16, length=len(x))\n"
            "print(a.__file__, c.__file__, a.spectral_convergence(y, x, cfg), "
            "a.phonemize('hello'))")
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    audio_file, core_file, sc, phonemes = out.stdout.split()
    assert str(venv) in audio_file and str(venv) in core_file, "imported from the workspace"
    assert float(sc) < 0.2 and phonemes == "həlˈoʊ"
    helped = subprocess.run([str(venv / "bin" / "onestep-audio"), "--help"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "prepare" in helped.stdout, helped.stderr
