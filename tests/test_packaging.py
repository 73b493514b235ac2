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
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "no license file"
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "onestep distill" in metadata, "the package README (the long description) is empty"

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


@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv on PATH")
def test_image_wheel_installs_beside_the_core_wheel_alone(tmp_path):
    """onestep-image from its wheel and the core's, in a fresh venv (torch, numpy, pillow and
    scikit-learn exposed from this environment): it imports and loads the embedded digits."""
    dist = tmp_path / "dist"
    for package in ("onestep-core", "onestep-image"):
        subprocess.run(["uv", "build", "--package", package, "--wheel", "--out-dir", str(dist)],
                       cwd=ROOT, check=True, capture_output=True)
    (wheel,) = dist.glob("onestep_image-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "onestep/image/data.py" in names and "onestep/__init__.py" not in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "no license file"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([sys.executable, "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    pth = next((venv / "lib").glob("python3*/site-packages")) / "_deps.pth"
    pth.write_text(site + "\n")
    subprocess.run(["uv", "pip", "install", "--python", str(py), "--no-deps",
                    *map(str, dist.glob("*.whl"))], check=True, capture_output=True)
    out = subprocess.run(
        [str(py), "-c", "import onestep.image as i, onestep.core as c; d = i.load_digits(); "
         "print(i.__file__, c.__file__, len(d), d.num_classes)"],
        capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    image_file, core_file, n, classes = out.stdout.split()
    assert str(venv) in image_file and str(venv) in core_file, "imported from the workspace"
    assert (int(n), int(classes)) == (1797, 10)
    # the console script the wheel declares runs from the venv
    helped = subprocess.run([str(venv / "bin" / "onestep-image"), "--help"], capture_output=True,
                            text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "train-features" in helped.stdout, helped.stderr
