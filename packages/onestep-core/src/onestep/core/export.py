"""Deployment of distilled students: a student at a fixed NFE as one file that maps (noise,
class labels) to samples, for ONNX (run by onnxruntime) or TorchScript, plus torch.compile and a
timing of the four ways to run it. A guidance-conditioned student (w as an input of the network,
`nn.guidance`) takes w as a third input, so one file serves every guidance scale.

    info = export_student("runs/student", "student.onnx", format="onnx")
    run = load_exported("student.onnx")           # onnxruntime, CPU
    x = run(torch.randn(8, *info["sample_shape"]), torch.arange(8))

What is exported is `Sampler(generator, nfe)`: the generator's whole `generate` loop at that NFE,
traced with the time grid and every path coefficient folded into constants, so the file needs no
onestep code to run. The batch axis is dynamic. The file carries its own description (ONNX
metadata or a TorchScript extra file, key "onestep"): sample_shape, num_classes, nfe, method.

A student that draws fresh noise at each of its steps (a stochastic multi-step student, such as
consistency models' multistep sampling, Song et al. 2023, Alg. 1) is not a function of (noise,
labels); export refuses it and says to export it at one step. The check is generic: the student
is run twice on the same noise with two random generators, and must agree.

ONNX export uses torch's TorchScript-based exporter (`torch.onnx.export(dynamo=False)` with a
dynamic batch axis): the dynamo exporter cannot trace the float64 time handling of the core
Denoiser. Every export is checked before it is written: the file's output must equal the eager
student's within `atol` (relative to the samples' scale) at two batch sizes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import statistics
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path as FilePath

import torch
from torch import Tensor, nn

from .distill.base import Generator
from .io import _atomic_write, load_student

__all__ = ["FORMATS", "BACKENDS", "ExportError", "MissingDependency", "Sampler", "export_generator",
           "export_student", "load_exported", "read_export_info", "compile_module",
           "compile_networks",
           "time_backends"]

FORMATS = ("onnx", "torchscript")
BACKENDS = ("eager", "compile", "onnx", "torchscript")
INFO_KEY = "onestep"
INFO_VERSION = 1


class ExportError(ValueError):
    """A student that cannot be exported as asked (one line naming why)."""


class MissingDependency(ImportError, ValueError):
    """An optional package that a format needs is not installed (it names the extra)."""


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise MissingDependency(
            f"{module} is not installed; ONNX export and running ONNX files need "
            "onestep-core's 'export' extra: pip install 'onestep-core[export]'") from None


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; use one of {list(FORMATS)}")


class Sampler(nn.Module):
    """A Generator at a fixed NFE as a pure function of its inputs `names`:
    forward(noise (B, *shape)[, labels (B,) int64][, guidance (B,) float32]) -> samples
    (B, *shape); labels when `conditional`, the guidance scale w when the student takes it as
    an input (a guidance-conditioned student, `nn.guidance`)."""

    def __init__(self, generator: Generator, nfe: int, conditional: bool,
                 guided: bool = False):
        super().__init__()
        self.generator = generator
        self.nfe = int(nfe)
        self.conditional = conditional
        self.guided = guided
        self.names = ["noise", *(["labels"] if conditional else []),
                      *(["guidance"] if guided else [])]

    def condition(self, noise: Tensor, *rest: Tensor):
        """The generator's cond from the inputs after the noise."""
        labels = rest[0] if self.conditional else None
        if not self.guided:
            return labels
        from .nn.guidance import with_guidance_cond

        return with_guidance_cond(labels, rest[-1], noise.shape[0])

    def forward(self, noise: Tensor, *rest: Tensor) -> Tensor:
        return self.generator.generate(noise, self.condition(noise, *rest), nfe=self.nfe)


def _sampler(generator: Generator, nfe: int, num_classes: int) -> Sampler:
    from .nn.guidance import GuidanceConditioned

    guided = any(isinstance(m, GuidanceConditioned) for m in generator.modules())
    sampler = Sampler(copy.deepcopy(generator).cpu().eval(), nfe, num_classes > 0, guided).eval()
    for p in sampler.parameters():
        p.requires_grad_(False)
    return sampler


def _inputs(sampler: Sampler, batch: int, shape, num_classes: int,
            seed: int) -> tuple[Tensor, ...]:
    """Seeded example inputs: noise, labels in 0..num_classes-1, w in [1, 4]."""
    g = torch.Generator().manual_seed(seed)
    values = {"noise": torch.randn(batch, *shape, generator=g)}
    if sampler.conditional:
        values["labels"] = torch.randint(num_classes, (batch,), generator=g)
    if sampler.guided:
        values["guidance"] = 1.0 + 3.0 * torch.rand(batch, generator=g)
    return tuple(values[name] for name in sampler.names)


def check_deterministic(sampler: Sampler, inputs: tuple[Tensor, ...]) -> None:
    """ExportError when the sampler's output depends on its random generator, not only on
    its inputs: a student that draws fresh noise at each step."""
    cond = sampler.condition(*inputs)
    with torch.no_grad():
        a, b = (sampler.generator.generate(inputs[0], cond, nfe=sampler.nfe,
                                           generator=torch.Generator().manual_seed(s))
                for s in (1, 2))
    if not torch.equal(a, b):
        raise ExportError(
            f"this student draws fresh noise at each of its {sampler.nfe} steps, so it is not a "
            "function of (noise, labels) and cannot be exported; export it at nfe=1")


def _max_error(ours: Tensor, ref: Tensor) -> float:
    """Largest absolute difference, relative to the samples' scale (at least 1)."""
    return float((ours - ref).abs().max()) / max(1.0, float(ref.abs().max()))


def export_generator(generator: Generator, out, *, format: str, sample_shape, num_classes: int = 0,
                     nfe: int = 1, method: str = "", batch: int = 4, atol: float = 1e-4,
                     extra: dict | None = None) -> dict:
    """Write `generator` at `nfe` steps to `out` as ONNX or TorchScript (atomically: a temporary
    file, then a rename) and return the description stored in it. sample_shape: one sample's
    shape, e.g. (C, H, W); num_classes > 0: the second input is int64 class labels (B,); a
    guidance-conditioned student takes w, float32 (B,), as its last input. `extra`: more entries
    for the stored description.
    The written file is checked against the eager generator at `batch` and `batch + 3` samples
    (max |difference| <= atol, relative to the samples' scale)."""
    _check_format(format)
    if format == "onnx":
        _require("onnx")
        _require("onnxruntime")
    if nfe < 1:
        raise ExportError(f"nfe must be at least 1, got {nfe}")
    shape = tuple(int(s) for s in sample_shape)
    sampler = _sampler(generator, nfe, num_classes)
    example = _inputs(sampler, batch, shape, num_classes, seed=0)
    check_deterministic(sampler, example)
    names = sampler.names
    info = {"version": INFO_VERSION, "format": format, "inputs": names, "output": "samples",
            "sample_shape": list(shape), "num_classes": int(num_classes), "nfe": nfe,
            "method": method, **(extra or {})}
    out = FilePath(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # tracer warnings: the check below is what counts
        warnings.simplefilter("ignore")
        if format == "onnx":
            _atomic_write(out, lambda p: _write_onnx(sampler, example, names, info, p))
        else:
            _atomic_write(out, lambda p: _write_torchscript(sampler, example, info, p))
    _check_file(out, sampler, shape, num_classes, batch, atol)
    return info


def _write_onnx(sampler: Sampler, example, names, info: dict, file: str) -> None:
    import onnx

    axes = {name: {0: "batch"} for name in [*names, "samples"]}
    torch.onnx.export(sampler, example, file, dynamo=False, input_names=names,
                      output_names=["samples"], dynamic_axes=axes, opset_version=17)
    model = onnx.load(file)
    entry = model.metadata_props.add()
    entry.key, entry.value = INFO_KEY, json.dumps(info)
    onnx.save(model, file)


def _write_torchscript(sampler: Sampler, example, info: dict, file: str) -> None:
    # check_trace off: trace's own check re-runs the trace in the profiling executor (10+ s for
    # a tiny UNet); `_check_file` runs the saved file at two batch sizes instead
    traced = torch.jit.trace(sampler, example, check_trace=False)
    torch.jit.save(traced, file, _extra_files={f"{INFO_KEY}.json": json.dumps(info)})


def _check_file(out: FilePath, sampler: Sampler, shape, num_classes: int, batch: int,
                atol: float) -> None:
    """Remove `out` and raise ExportError unless it reproduces `sampler` at two batch sizes."""
    run = load_exported(out)
    for n, seed in ((batch, 1), (batch + 3, 2)):
        inputs = _inputs(sampler, n, shape, num_classes, seed)
        with torch.no_grad():
            ref = sampler(*inputs)
        err = _max_error(run(**dict(zip(sampler.names, inputs, strict=True))), ref)
        if not err <= atol:
            out.unlink(missing_ok=True)
            raise ExportError(f"the exported {run.info['format']} student differs from the "
                              f"eager one by {err:.2e} (> {atol:g}) at batch {n}: it does not "
                              "trace to a fixed graph; nothing was written")


def export_student(folder, out, *, format: str, nfe: int = 0, sample_shape=None,
                   atol: float = 1e-4) -> dict:
    """Export the student saved in `folder` (`io.save_student`) to `out`; nfe 0: the student's
    own. sample_shape defaults to model.json's extra "image_shape" (set by onestep-image);
    num_classes to its extra "num_classes"."""
    _check_format(format)
    gen, info = load_student(folder)
    extra = info.get("extra") or {}
    shape = sample_shape or extra.get("image_shape")
    if shape is None:
        raise ExportError(f"{FilePath(folder) / 'model.json'} records no sample shape "
                          "(extra.image_shape); pass sample_shape")
    entry = info["student"]
    w_range = (entry.get("config") or {}).get("guidance_range")
    return export_generator(gen, out, format=format, sample_shape=shape,
                            num_classes=int(extra.get("num_classes") or 0),
                            nfe=nfe or int(entry.get("nfe") or 1), method=entry.get("method", ""),
                            atol=atol, extra={"guidance_range": w_range} if w_range else None)


# -- running exported files --------------------------------------------------------------------
def _feed(info: dict, noise: Tensor, labels, guidance) -> dict[str, Tensor]:
    """The named inputs of an exported student (w may be a number: one for every sample)."""
    feed = {"noise": noise.detach().cpu().float()}
    for name, value in (("labels", labels), ("guidance", guidance)):
        if name in info["inputs"]:
            if value is None:
                raise ValueError(f"this exported student takes {name}: pass {name}=")
            value = torch.as_tensor(value).detach().cpu()
            feed[name] = value.long() if name == "labels" else \
                value.float().reshape(-1).expand(noise.shape[0]).contiguous()
    return feed


class _OnnxRunner:
    """An ONNX student on onnxruntime's CPU provider:
    run(noise, labels=None, guidance=None) -> samples."""

    def __init__(self, file: FilePath, threads: int = 0):
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(file), options,
                                            providers=["CPUExecutionProvider"])
        self.info = read_export_info(file)

    def __call__(self, noise: Tensor, labels=None, guidance=None) -> Tensor:
        feed = {k: v.numpy() for k, v in _feed(self.info, noise, labels, guidance).items()}
        return torch.from_numpy(self.session.run(None, feed)[0])


class _TorchScriptRunner:
    def __init__(self, file: FilePath):
        with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.x, not gone
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(str(file), map_location="cpu")
        self.info = read_export_info(file)

    def __call__(self, noise: Tensor, labels=None, guidance=None) -> Tensor:
        with torch.no_grad():
            return self.module(*_feed(self.info, noise, labels, guidance).values())


def read_export_info(file) -> dict:
    """The description stored in an exported student (sample_shape, num_classes, nfe, ...)."""
    file = FilePath(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file")
    if zipfile.is_zipfile(file):  # TorchScript: a zip archive with our extra file
        with zipfile.ZipFile(file) as z:
            names = [n for n in z.namelist() if n.endswith(f"/extra/{INFO_KEY}.json")]
            text = z.read(names[0]).decode() if names else ""
    else:
        onnx = _require("onnx")
        try:
            props = {p.key: p.value for p in onnx.load(str(file)).metadata_props}
        except Exception as e:  # noqa: BLE001 (onnx raises its own DecodeError types)
            raise ExportError(f"{file} is not an ONNX file ({type(e).__name__})") from None
        text = props.get(INFO_KEY, "")
    if not text:
        raise ExportError(f"{file} was not exported by onestep (no {INFO_KEY!r} description)")
    return json.loads(text)


def load_exported(file, *, threads: int = 0) -> Callable[..., Tensor]:
    """A callable `run(noise, labels=None, guidance=None) -> samples` for an exported student
    (ONNX through onnxruntime on the CPU, with `threads` intra-op threads, 0: its default;
    TorchScript through torch.jit.load); `run.info` is its description."""
    fmt = read_export_info(file)["format"]
    return _OnnxRunner(FilePath(file), threads) if fmt == "onnx" else \
        _TorchScriptRunner(FilePath(file))


# -- torch.compile -----------------------------------------------------------------------------
@contextlib.contextmanager
def _compile_errors():
    """A failed torch.compile compilation (raised when the compiled code first runs) as one
    ValueError line."""
    try:
        yield
    except Exception as e:
        if not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"torch.compile failed: {first}") from e


class _Compiled(nn.Module):
    """A torch.compile'd module that reports a failed compilation as one line."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.compiled = torch.compile(module)

    def forward(self, *args, **kwargs):
        with _compile_errors():
            return self.compiled(*args, **kwargs)


def compile_module(fn, *, device: str = "cpu"):
    """torch.compile(fn) (inductor) for a module (returned as a module, to put in its place) or a
    function. On the CPU inductor compiles C++ kernels, so a C++ compiler must be on PATH; a
    failed compilation is a ValueError when the compiled code first runs."""
    if device == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise ValueError("torch.compile on the CPU needs a C++ compiler (g++ or clang++) on "
                         "PATH; install one or run without --compile")
    if isinstance(fn, nn.Module):
        return _Compiled(fn)
    compiled = torch.compile(fn)

    def run(*args, **kwargs):
        with _compile_errors():
            return compiled(*args, **kwargs)

    return run


def compile_networks(model: nn.Module) -> nn.Module:
    """Compile, in place, the network of every Denoiser in `model` (a teacher Denoiser, or a
    student Generator: each of its networks is one graph, reused by every step, so a few-step
    sampler compiles once per batch shape); returns `model`."""
    from .denoiser import Denoiser

    found = []

    def visit(module: nn.Module) -> None:
        if isinstance(module, Denoiser):  # its network holds any Denoiser nested in it
            if not isinstance(module.model, _Compiled):
                module.model = compile_module(module.model)
            found.append(module)
            return
        for child in module.children():
            visit(child)

    visit(model)
    if not found:
        raise ValueError(f"found no network to compile in {type(model).__name__}")
    return model


# -- timing ------------------------------------------------------------------------------------
def _median_seconds(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_backends(generator: Generator, *, sample_shape, num_classes: int = 0, nfe: int = 1,
                  batch: int = 64, repeats: int = 5, warmup: int = 2,
                  backends=BACKENDS, threads: int = 0) -> dict[str, float]:
    """Median seconds per image of `generator` at `nfe` steps, over `repeats` runs on one batch
    of `batch` images after `warmup` runs (torch.compile's compilation happens in the warm-up),
    for each backend: "eager" (torch), "compile" (torch.compile), "onnx" (onnxruntime, CPU,
    `threads` intra-op threads, 0: torch's current count), "torchscript". Exports go to a
    temporary folder."""
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise ValueError(f"unknown backends {unknown}; use some of {list(BACKENDS)}")
    shape = tuple(int(s) for s in sample_shape)
    sampler = _sampler(generator, nfe, num_classes)
    inputs = _inputs(sampler, batch, shape, num_classes, seed=0)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in backends:
            if name in FORMATS:
                file = FilePath(tmp) / f"student.{name}"
                export_generator(generator, file, format=name, sample_shape=shape,
                                 num_classes=num_classes, nfe=nfe)
                run = load_exported(file, threads=threads or torch.get_num_threads()) \
                    if name == "onnx" else load_exported(file)
                named = dict(zip(sampler.names, inputs, strict=True))
                call = partial(run, **named)
            else:
                call = partial(compile_networks(copy.deepcopy(sampler))
                               if name == "compile" else sampler, *inputs)

            result[name] = _median_seconds(call, repeats, warmup) / batch
    return result
