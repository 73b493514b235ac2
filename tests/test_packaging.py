"""Each member builds a wheel that installs into a fresh virtual environment and imports alone."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv on PATH")
def test_core_wheel_installs_and_imports_alone(tmp_path):
    subprocess.run(["uv", "build", "--package", "onestep-core", "--wheel", "--out-dir",
                    str(tmp_path / "dist")], cwd=ROOT, check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("onestep_core-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "onestep/core/__init__.py" in names
    assert "onestep/__init__.py" not in names, "onestep must stay a namespace package"

    # A fresh venv that reuses this environment's torch (installing it anew is gigabytes):
    # --system-site-packages exposes the dependencies, while onestep itself comes only from the
    # wheel, since the workspace's editable install is not on the system site path.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([sys.executable, "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (venv / "lib").mkdir(exist_ok=True)
    pth = next((venv / "lib").glob("python3*/site-packages")) / "_deps.pth"
    pth.write_text(site + "\n")
    subprocess.run(["uv", "pip", "install", "--python", str(py), "--no-deps", str(wheel)],
                   check=True, capture_output=True)
    out = subprocess.run(
        [str(py), "-c", "import onestep.core, onestep.core.paths as p; "
         "print(onestep.core.__file__); print(p.RectifiedFlow().alpha(0.25).item())"],
        capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    file, alpha = out.stdout.split()
    assert str(venv) in file, f"imported from {file}, not from the wheel"
    assert float(alpha) == 0.75
