"""`onestep --help` and `onestep methods` start at once: importing onestep.core.cli imports no
torch, numpy, scipy or matplotlib (each command's function is imported when it runs), and the
method list comes from the torch-free registry."""

import re
import subprocess
import sys
import time

import pytest

HEAVY = ("torch", "numpy", "scipy", "matplotlib")


def _python(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _imported(importtime_stderr: str) -> dict[str, int]:
    """{module: cumulative microseconds} from the lines of `python -X importtime`."""
    out = {}
    for line in importtime_stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)$", line)
        if m:
            out[m.group(4)] = int(m.group(2))
    return out


def _heavy(modules) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_importing_the_cli_is_light_and_fast():
    proc = _python("-X", "importtime", "-c", "import onestep.core.cli")
    assert proc.returncode == 0, proc.stderr
    modules = _imported(proc.stderr)
    assert "onestep.core.cli" in modules, proc.stderr[-2000:]
    assert _heavy(modules) == []
    seconds = sum(modules[m] for m in ("onestep", "onestep.core", "onestep.core.cli")
                  if m in modules) / 1e6
    assert seconds < 2.0, f"import onestep.core.cli took {seconds:.2f} s"


def test_methods_lists_all_18_without_torch():
    proc = _python("-X", "importtime", "-m", "onestep.core.cli", "methods")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _heavy(_imported(proc.stderr)) == []
    names = [line.split()[0] for line in proc.stdout.strip().splitlines()]
    from onestep.core.method_registry import REGISTRY

    assert names == list(REGISTRY) and len(names) == 18
    # and through main(), checking sys.modules when the command is done
    code = ("import sys; from onestep.core.cli import main; rc = main(['methods']); "
            f"print('heavy:', [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]); "
            "sys.exit(rc)")
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "heavy: []"
    assert len(proc.stdout.strip().splitlines()) == len(REGISTRY) + 1  # the methods, heavy


@pytest.mark.parametrize("argv", [["--help"], ["methods"], ["eval", "--dry-run"]])
def test_light_commands_run_in_under_2_seconds(argv):
    _python("-c", "import onestep.core.cli")  # warm the file cache
    t0 = time.perf_counter()
    proc = _python("-m", "onestep.core.cli", *argv)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert seconds < 2.0, f"onestep {' '.join(argv)} took {seconds:.2f} s"


def test_the_package_is_lazy_with_the_same_public_names():
    code = ("import sys, onestep.core as c; heavy = [m for m in sys.modules if "
            f"m.split('.')[0] in {HEAVY!r}]; print(heavy); print(sorted(c.__all__))")
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    heavy, names = proc.stdout.strip().splitlines()
    assert heavy == "[]"
    assert names == str(sorted([
        "EDM", "KINDS", "VP", "Affine", "DSMLoss", "Denoiser", "EDMLoss", "FlowMatchingLoss",
        "Path", "RectifiedFlow", "Schedule", "convert", "learn_sampler", "sample",
        "search_schedule", "solvers"]))


def test_lazy_names_resolve():
    import types

    import onestep.core as core
    import onestep.core.denoiser  # noqa: F401  binds the submodule `convert` on the package
    from onestep.core import convert as convert_module_or_fn
    from onestep.core.convert import convert
    from onestep.core.paths import RectifiedFlow

    assert convert_module_or_fn is convert and core.convert is convert
    assert core.RectifiedFlow is RectifiedFlow and isinstance(core.solvers, types.ModuleType)
    for name in core.__all__:
        assert getattr(core, name) is not None and name in dir(core)
    with pytest.raises(AttributeError):
        core.no_such_name  # noqa: B018
