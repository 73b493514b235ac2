"""Image benchmark: a class-conditional Fashion-MNIST (28x28) teacher sampled with every solver and
with searched and learned schedules, and distilled with every method of
`onestep.core.distill.METHODS`, all scored in one feature space against the same held-out images.

    uv run python benchmarks/image/run.py              # the full run: many CPU hours; resumable
    uv run python benchmarks/image/run.py --resume     # continue: finished rows and runs are kept
    uv run python benchmarks/image/run.py --quick      # a smoke run of every stage (minutes)
    uv run python benchmarks/image/run.py --report     # rewrite image.md / image.png from the json

Data: Fashion-MNIST from its IDX files (by default Debian's dataset-fashion-mnist folder; any
folder with --data-root). The teacher and the feature net train on the 60k training images; the
official 10k test images are split once (fixed seed) into the reference every row is scored
against and a floor set that nothing trained on: the floor row scores those real images as if they
were samples, at the same N, so a gap smaller than the floor's FD is noise.

Teacher: the "small" onestep-image UNet (EDM, Karras preconditioning, label dropout 0.1) trained
with `onestep-image train`. Rows: every deterministic solver at NFE 1-35 on the Karras schedule;
at 3-6 NFE the S^3-style searched schedule (evolutionary USF search against the RK45 endpoint)
and LSD / LSD+ (learned per-step coefficients and times); DPM-Solver++(2M) at the same NFE is the
baseline the searched schedules are held to. Students: `onestep-image distill` with each method's
`image_defaults` for a fixed step budget, one-step, and the few-step methods at 4 NFE.

Metrics: FD and KID in the feature net's penultimate features (FD-<net>, never "FID"),
precision / recall (k-NN manifolds), class accuracy of the samples' labels, seconds per image
(sampling batch 64, median of 3, interleaved with the 35-NFE teacher's on the same batch so that
load on a shared machine hits both alike), the speed-up over the 35-NFE teacher, and train time.
Writes benchmarks/results/image.{md,json,png}, one grid per student in
benchmarks/results/image/grids/, and the teacher and students' weights (each under 10 MB) in
benchmarks/results/image/models/, loadable with `onestep-image sample --model`. Work folders
(checkpoints) go to benchmarks/results/image/runs/, which git ignores; every stage resumes.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path as FilePath

import torch

from onestep.core.cli import parse_dataclass
from onestep.core.distill import METHODS
from onestep.core.io import load_student
from onestep.core.metrics import frechet_distance
from onestep.core.sampling import sample
from onestep.core.search import learn_sampler, search_schedule
from onestep.image import commands
from onestep.image.cli import DistillArgs, TrainArgs
from onestep.image.data import load_images
from onestep.image.evaluate import evaluate, sample_features
from onestep.image.features import load_features, train_features
from onestep.image.grid import save_panels

ROOT = FilePath(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
REFERENCE_NFE = 35
# the targets, against the 35-NFE teacher's FD
BEST_RATIO, DMD2_RATIO, NAMED_RATIO, FEW_STEP_RATIO = 1.2, 1.5, 2.0, 1.0
NAMED = ("ict", "meanflow", "sim", "vsd")  # held to 2x
FEW_STEP = ("segment_cd", "tdm", "phased_dmd", "progressive")  # trained for --few-step-nfe
SEARCH_RATIO, MIN_SPEEDUP = 0.6, 25.0
FIRST_SOLVERS = ("heun", "dpmpp_2m")
FIRST = ("dmd2", "dmd", "ict", "meanflow", "sim", "vsd", "tdm", "phased_dmd")


@dataclass(frozen=True)
class Args:
    """Benchmark settings; --quick shrinks everything for a smoke run."""

    quick: bool = False
    """Small budgets everywhere (minutes), written to image_quick.*: checks that the script runs."""
    resume: bool = False
    """Keep the rows of an existing image.json whose settings match; continue unfinished runs."""
    report: bool = False
    """Only rewrite image.md and image.png from an existing image.json."""
    methods: tuple[str, ...] = FIRST + tuple(m for m in METHODS if m not in FIRST)
    """Distillation methods, in this order (the issue's named methods first)."""
    data_root: str = ""
    """Fashion-MNIST folder (IDX files); default: Debian's dataset-fashion-mnist folder."""
    n: int = 1000
    """Samples per row (and floor images)."""
    teacher_steps: int = 3000
    """Teacher training steps (batch 64)."""
    distill_steps: int = 1000
    """Training steps of every student (a fixed budget so that methods compare at equal steps)."""
    batch_size: int = 32
    """Distillation batch size."""
    solvers: tuple[str, ...] = ("euler", "heun", "ddim", "dpmpp_2m", "dpmpp_3m", "deis",
                                "unipc", "ipndm")
    nfe: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 35)
    search_nfe: tuple[int, ...] = (3, 4, 5, 6)
    """NFE of the searched (S^3-style) and learned (LSD, LSD+) schedules."""
    few_step_nfe: tuple[int, ...] = (4, 1)
    """NFE the few-step methods are trained for (one student per NFE; TDM's one-step student is
    the best one-step student measured)."""
    train_students: bool = True
    """Train the students that have no finished run; with --no-train-students only finished
    runs are scored (students trained elsewhere with the same settings, e.g. in parallel)."""
    seed: int = 0
    threads: int = 2
    progress: bool = True

    def resolved(self) -> Args:
        if not self.quick:
            return self
        return dataclasses.replace(self, n=100, teacher_steps=100, distill_steps=4,
                                   solvers=("heun", "dpmpp_2m"), nfe=(1, 4, 35),
                                   search_nfe=(4,), batch_size=8)


def settings(args: Args) -> dict:
    """What a row's numbers depend on (rows of another setting are not reused)."""
    return {"n": args.n, "teacher_steps": args.teacher_steps, "seed": args.seed,
            "data_root": args.data_root}


class Bench:
    """The shared state of one run: data, feature net, teacher, noise, rows."""

    def __init__(self, args: Args):
        self.args = args
        name = "image_quick" if args.quick else "image"
        self.json_file, self.md_file = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
        self.work = RESULTS / name
        self.runs = self.work / "runs"
        self.rows: dict[str, dict] = {}
        if (args.resume or args.report) and self.json_file.exists():
            old = json.loads(self.json_file.read_text())
            if old.get("settings") == settings(args) or args.report:
                self.rows = old.get("rows", {})
        self.t_start = time.perf_counter()

    # -- stages -------------------------------------------------------------------------------
    def setup(self) -> None:
        a = self.args
        root = a.data_root or None
        self.train = load_images("fashion-mnist", root=root, split="train")
        test = load_images("fashion-mnist", root=root, split="test")
        self.reference, floor = test.split(0.5, seed=a.seed)
        self.setup_features()
        self.floor_images = floor
        k = self.train.num_classes
        self.labels = torch.arange(a.n) % k
        self.noise = torch.randn(a.n, *self.train.shape,
                                 generator=torch.Generator().manual_seed(a.seed + 1))
        self.teacher_dir = self.work / "models" / "teacher"  # committed, like the features
        if not _finished(self.teacher_dir, a.teacher_steps):
            self._train_teacher(self.runs / "teacher")
            self._copy_model(self.runs / "teacher", "teacher")
        _, self.teacher, self.tinfo = commands.load_any(str(self.teacher_dir))

    def setup_features(self) -> None:
        """The feature net every row is scored in (trained once, then reused from models/)."""
        a = self.args
        folder = self.work / "models" / "features"  # committed: every session scores alike
        if not (folder / "features.json").exists():
            # 800 steps at batch 64: ~1.7 s a step on one loaded CPU thread (3000 at 128 was
            # measured at 3.4 s a step: three hours)
            steps = 100 if a.quick else 800
            train_features(self.train, self.runs / "features", steps=steps, batch_size=64,
                           seed=a.seed, test_fraction=0.05, progress=a.progress)
            shutil.copytree(self.runs / "features", folder, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("checkpoints", "log.jsonl"))
        self.net, self.finfo = load_features(folder)
        self.ref = sample_features(self.net, self.reference.images)

    def _train_teacher(self, run: FilePath) -> None:
        a = self.args
        if _finished(run, a.teacher_steps):
            return
        resume = (run / "run.json").exists()
        t0 = time.perf_counter()
        commands.train(TrainArgs(data="fashion-mnist", data_root=a.data_root,
                                 out=str(run), size="small",
                                 steps=a.teacher_steps, batch_size=64, lr=2e-3,
                                 ema_decay=0.999, ckpt_every=500, grid_nfe=0, resume=resume,
                                 seed=a.seed, threads=a.threads, progress=a.progress))
        self.rows["_teacher_train"] = {"seconds": time.perf_counter() - t0}

    def _copy_model(self, run: FilePath, name: str) -> None:
        """The model files of a run folder into models/<name> (committed when under 10 MB)."""
        dest = self.work / "models" / name
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("model.json", "model.safetensors", "generator.safetensors"):
            if (run / f).exists():
                shutil.copy2(run / f, dest / f)
        if (run / "teacher").is_dir():
            shutil.copytree(run / "teacher", dest / "teacher", dirs_exist_ok=True)

    def score(self, x: torch.Tensor, labels=None) -> dict:
        r = evaluate(x.clamp(-1, 1), self.reference, self.net,
                     labels_of_samples=self.labels if labels is None else labels,
                     reference_features=self.ref, seed=self.args.seed, kid_subsets=20)
        return {"fd": r["fd"], "kid": r["kid"]["mean"], "precision": r["precision"],
                "recall": r["recall"], "class_accuracy": r["class_accuracy"]}

    def teacher_sample(self, noise, labels, **kw) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([sample(self.teacher, noise[i:i + 250], cond=labels[i:i + 250], **kw)
                              for i in range(0, len(noise), 250)])

    def save(self) -> None:
        a = self.args
        out = {"settings": settings(a), "args": dataclasses.asdict(a),
               "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
               "versions": {"torch": torch.__version__, "python": platform.python_version(),
                            "platform": platform.platform()},
               "feature_net": {"label": self.finfo["fd_label"],
                               "test_accuracy": self.finfo["test_accuracy"]},
               "rows": self.rows}
        RESULTS.mkdir(parents=True, exist_ok=True)
        tmp = self.json_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(self.json_file)

    def row(self, key: str, make) -> dict:
        """The row `key`: reused when the json holds it, else made, stored and saved."""
        if key not in self.rows:
            t0 = time.perf_counter()
            self.rows[key] = make()
            self.rows[key].setdefault("seconds_to_make", time.perf_counter() - t0)
            self.save()
            r = self.rows[key]
            print(f"  {key:<34} FD {r.get('fd', float('nan')):8.3f}", file=sys.stderr)
        return self.rows[key]

    def floor_row(self) -> None:
        n = min(self.args.n, len(self.floor_images))
        self.row("floor", lambda: {"model": "real", "sampler": "(noise floor)", "nfe": 0,
                                   **self.score(self.floor_images.images[:n],
                                                self.floor_images.labels[:n])})

    def teacher_rows(self, solvers: tuple[str, ...] = ()) -> None:
        a = self.args
        for solver in [s for s in a.solvers if not solvers or s in solvers]:
            for nfe in a.nfe:
                def make(solver=solver, nfe=nfe):
                    t0 = time.perf_counter()
                    x = self.teacher_sample(self.noise, self.labels, nfe=nfe, solver=solver,
                                            schedule="karras")
                    return {"model": "teacher", "sampler": f"{solver} karras", "nfe": nfe,
                            "seconds_per_image": (time.perf_counter() - t0) / a.n,
                            **self.score(x)}
                self.row(f"teacher/{solver}/{nfe}", make)

    def search_rows(self) -> None:
        a = self.args
        k = self.train.num_classes
        calib = torch.randn(128, *self.train.shape, generator=torch.Generator().manual_seed(7))
        ccond = torch.arange(128) % k
        for nfe in a.search_nfe:
            def searched(nfe=nfe):
                s = search_schedule(self.teacher, nfe=nfe, noise=calib, cond=ccond,
                                    iterations=4 if a.quick else 40, population=16,
                                    seed=a.seed, progress=a.progress)
                return self._schedule_row("searched (S^3-style)", nfe, s)

            def learned(nfe=nfe, times=False):
                s = learn_sampler(self.teacher, nfe=nfe, noise=calib, cond=ccond,
                                  learn_times=times, iterations=10 if a.quick else 200,
                                  progress=a.progress)
                return self._schedule_row("lsd+" if times else "lsd", nfe, s)

            def searched_fd(nfe=nfe):
                # S^3 (predictor-ranked) against sample quality: FD-<net> of the calibration
                # samples to train images (not the held-out reference every row is scored on)
                s = search_schedule(self.teacher, nfe=nfe, noise=calib, cond=ccond, method="s3",
                                    metric=self._train_fd, iterations=2 if a.quick else 10,
                                    population=12, seed=a.seed, progress=a.progress)
                return self._schedule_row("s3 (FD metric)", nfe, s, "s3-fd")

            self.row(f"search/searched/{nfe}", searched)
            self.row(f"search/s3-fd/{nfe}", searched_fd)
            self.row(f"search/lsd/{nfe}", learned)
            self.row(f"search/lsd+/{nfe}", lambda nfe=nfe: learned(nfe, True))

    def _train_fd(self, x: torch.Tensor) -> float:
        """FD-<net> of samples to 2000 training images: the FD-metric search's objective."""
        if not hasattr(self, "_train_feats"):
            idx = torch.randperm(len(self.train.images),
                                 generator=torch.Generator().manual_seed(3))[:2000]
            self._train_feats = sample_features(self.net, self.train.images[idx])[0]
        return frechet_distance(sample_features(self.net, x.clamp(-1, 1))[0], self._train_feats)

    def _schedule_row(self, name: str, nfe: int, schedule, file: str = "") -> dict:
        t0 = time.perf_counter()
        x = self.teacher_sample(self.noise, self.labels, nfe=nfe, solver=None, schedule=schedule)
        sched_dir = self.work / "schedules"
        sched_dir.mkdir(parents=True, exist_ok=True)
        schedule.save(sched_dir / f"{file or name.split()[0]}-{nfe}.json")
        return {"model": "teacher", "sampler": name, "nfe": nfe,
                "seconds_per_image": (time.perf_counter() - t0) / self.args.n, **self.score(x)}

    def student_rows(self) -> None:
        a = self.args
        for method in a.methods:
            for nfe in (a.few_step_nfe if method in FEW_STEP else (0,)):
                run = self.runs / "students" / f"{method}-{nfe or 1}"
                if not a.train_students and not _finished(run, a.distill_steps):
                    continue
                self.row(f"student/{method}/{nfe or 1}",
                         lambda m=method, n=nfe: self._student(m, n))

    def _student(self, method: str, nfe: int) -> dict:
        a = self.args
        run = self.runs / "students" / f"{method}-{nfe or 1}"
        finished = _finished(run, a.distill_steps)
        t0 = time.perf_counter()
        if not finished:
            commands.distill(DistillArgs(teacher=str(self.teacher_dir), method=method,
                                         out=str(run), nfe=nfe, steps=a.distill_steps,
                                         batch_size=a.batch_size, seed=a.seed,
                                         threads=a.threads, progress=a.progress,
                                         resume=(run / "run.json").exists(), ckpt_every=250))
        train_s = time.perf_counter() - t0
        gen, info = load_student(run)
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] \
            if (run / "log.jsonl").exists() else []
        s_nfe = info["student"]["nfe"]
        with torch.no_grad():
            x = torch.cat([gen.generate(self.noise[i:i + 250], self.labels[i:i + 250], nfe=s_nfe)
                           for i in range(0, a.n, 250)])
        student_s, teacher_s = self._interleaved(gen, s_nfe)
        grid = self.work / "grids" / f"{method}-{s_nfe}.png"
        show = torch.arange(min(100, a.n))
        save_panels([(f"{method}, {s_nfe} NFE", x[show].clamp(-1, 1))], grid,
                    nrow=self.train.num_classes)
        return {"model": "student", "sampler": method, "nfe": s_nfe, "run": run.name,
                "steps": info["extra"]["steps"],
                # the trainer's clock at its last log line (counts a run trained elsewhere)
                "train_seconds": log[-1]["time"] if log and "time" in log[-1] else
                (None if finished else train_s),
                "seconds_per_image": student_s, "teacher35_seconds_per_image": teacher_s,
                "speed_up": teacher_s / student_s, "grid": str(grid.relative_to(ROOT.parent)),
                "final_logs": log[-1].get("logs") if log else None, **self.score(x)}

    def deploy_rows(self) -> None:
        """Seconds per image of the best one-step student under torch eager, torch.compile,
        onnxruntime and TorchScript (onestep.core.export.time_backends), beside the 35-NFE
        teacher's on the same batch; and the best students' weights into models/."""
        from onestep.core.export import time_backends

        best = _best_students(self.rows)
        for r in best.values():
            if "run" not in r:
                continue
            run = self.runs / "students" / r["run"]
            if _finished(run, self.args.distill_steps):
                self._copy_model(run, r["run"])
        one = best.get("one-step")
        if one is None or not (self.runs / "students" / one.get("run", "-")).exists():
            return

        def make():
            gen, info = load_student(self.runs / "students" / one["run"])
            try:
                t = time_backends(gen, sample_shape=self.train.shape,
                                  num_classes=self.train.num_classes, nfe=1, batch=64)
            except (RuntimeError, ValueError) as e:  # e.g. no C++ compiler for compile
                t = {"error": str(e).splitlines()[0]}
            _, teacher_s = self._interleaved(gen, 1)
            return {"model": "student", "sampler": one["sampler"], "nfe": 1,
                    "backends_seconds_per_image": t, "teacher35_seconds_per_image": teacher_s}

        self.row(f"deploy/{one['sampler']}", make)

    def _interleaved(self, gen, nfe: int) -> tuple[float, float]:
        """Median seconds per image of the student and of the 35-NFE teacher (Heun, Karras) on
        the same batch of 64, timed alternately."""
        z, c = self.noise[:64], self.labels[:64]
        ts, tt = [], []
        with torch.no_grad():
            for _ in range(3):
                t0 = time.perf_counter()
                gen.generate(z, c, nfe=nfe)
                ts.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                sample(self.teacher, z, nfe=REFERENCE_NFE, solver="heun", schedule="karras",
                       cond=c)
                tt.append(time.perf_counter() - t0)
        return statistics.median(ts) / 64, statistics.median(tt) / 64


def _finished(run: FilePath, steps: int) -> bool:
    """Whether `run` holds a saved model trained for `steps` steps."""
    try:
        return json.loads((run / "model.json").read_text())["extra"]["steps"] == steps
    except (OSError, ValueError, KeyError):
        return False


def _best_students(rows: dict) -> dict[str, dict]:
    """The best one-step and four-step students and DMD2's, by FD."""
    students = [r for k, r in rows.items() if k.startswith("student/")]
    out = {}
    for name, keep in (("one-step", lambda r: r["nfe"] == 1),
                       ("four-step", lambda r: r["nfe"] == 4),
                       ("dmd2", lambda r: r["sampler"] == "dmd2")):
        cands = [r for r in students if keep(r)]
        if cands:
            out[name] = min(cands, key=lambda r: r["fd"])
    return out


# -- report -----------------------------------------------------------------------------------
def _best_teacher(rows: dict, nfe: int, sampler: str | None = None) -> dict | None:
    cands = [r for k, r in rows.items() if k.startswith("teacher/") and r["nfe"] == nfe
             and (sampler is None or r["sampler"] == sampler)]
    return min(cands, key=lambda r: r["fd"]) if cands else None


def targets(rows: dict) -> list[tuple[str, str, str, bool | None]]:
    """(target, limit, measured, met) for the issue's targets that the rows allow."""
    ref = _best_teacher(rows, REFERENCE_NFE)
    out = []
    if ref is None:
        return out
    students = {k.split("/", 1)[1]: r for k, r in rows.items() if k.startswith("student/")}
    one = {k: r for k, r in students.items() if r["nfe"] == 1}

    def ratio(r):
        return r["fd"] / ref["fd"]

    if one:
        best = min(one.items(), key=lambda kv: kv[1]["fd"])
        out.append(("best one-step student FD / teacher 35-NFE", f"<= {BEST_RATIO}",
                    f"{ratio(best[1]):.2f} ({best[0]})", ratio(best[1]) <= BEST_RATIO))
    if "dmd2/1" in one:
        r = ratio(one["dmd2/1"])
        out.append(("dmd2 one-step FD ratio", f"<= {DMD2_RATIO}", f"{r:.2f}", r <= DMD2_RATIO))
    for m in NAMED:
        if f"{m}/1" in one:
            r = ratio(one[f"{m}/1"])
            out.append((f"{m} one-step FD ratio", f"<= {NAMED_RATIO}", f"{r:.2f}",
                        r <= NAMED_RATIO))
    four = {k: r for k, r in students.items() if r["nfe"] == 4}
    if four:
        best = min(four.items(), key=lambda kv: kv[1]["fd"])
        out.append(("best 4-step student FD ratio", f"<= {FEW_STEP_RATIO}",
                    f"{ratio(best[1]):.2f} ({best[0]})", ratio(best[1]) <= FEW_STEP_RATIO))
    base5 = _best_teacher(rows, 5, "dpmpp_2m karras")
    searched5 = [r for k, r in rows.items() if k.startswith("search/") and r["nfe"] == 5]
    if base5 and searched5:
        best = min(searched5, key=lambda r: r["fd"])
        r = best["fd"] / base5["fd"]
        out.append(("best searched/learned 5-NFE FD / dpm++2m 5-NFE", f"<= {SEARCH_RATIO}",
                    f"{r:.2f} ({best['sampler']})", r <= SEARCH_RATIO))
    if one:
        slow = min(r["speed_up"] for r in one.values())
        out.append(("slowest one-step student's speed-up", f">= {MIN_SPEEDUP}x", f"{slow:.1f}x",
                    slow >= MIN_SPEEDUP))
    return out


def report(data: dict, md_file: FilePath) -> str:
    rows = data["rows"]
    label = data["feature_net"]["label"]
    lines = ["# Image benchmark: class-conditional Fashion-MNIST 28x28\n",
             f"Command: `{data['command']}`; torch {data['versions']['torch']}; "
             f"{data['settings']['n']} samples per row against half of the official test set; "
             f"feature net {label} (test accuracy {data['feature_net']['test_accuracy']:.4f}); "
             f"teacher: onestep-image small UNet, EDM, {data['settings']['teacher_steps']} steps; "
             f"students: {data['args']['distill_steps']} steps each at batch "
             f"{data['args']['batch_size']}.\n"]
    if "floor" in rows:
        lines.append(f"Noise floor (real test images the teacher and feature net never saw, "
                     f"same N): {label} {rows['floor']['fd']:.3f}.\n")
    lines += ["## Targets\n", "| target | limit | measured | met |", "|---|---|---|---|"]
    for t, lim, got, met in targets(rows):
        lines.append(f"| {t} | {lim} | {got} | {'yes' if met else 'no'} |")
    ref = _best_teacher(rows, REFERENCE_NFE)
    lines += ["", "## Students\n",
              f"| method | NFE | {label} | / teacher 35 | KID | precision | recall | class acc | "
              "ms/image | speed-up | train s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted((r for k, r in rows.items() if k.startswith("student/")),
                    key=lambda r: r["fd"]):
        rel = r["fd"] / ref["fd"] if ref else float("nan")
        ts = r.get("train_seconds")
        lines.append(f"| {r['sampler']} | {r['nfe']} | {r['fd']:.3f} | {rel:.2f} | "
                     f"{r['kid']:.4f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['class_accuracy']:.3f} | {1e3 * r['seconds_per_image']:.3f} | "
                     f"{r['speed_up']:.1f}x | {'' if ts is None else f'{ts:.0f}'} |")
    deploy = [r for k, r in rows.items()
              if k.startswith("deploy/") and "error" not in r["backends_seconds_per_image"]]
    if deploy:
        backends = list(deploy[-1]["backends_seconds_per_image"])
        lines += ["", "## Deployment of one-step students\n",
                  "ms per image at batch 64 (median of 5 after 2 warm-up runs) and the speed-up "
                  "over the 35-NFE teacher (Heun, Karras) timed on the same batch in the same "
                  "run; each student was the best one-step student when it was timed (a run "
                  "times the best, the last row is the current best).\n",
                  "| student | " + " | ".join(backends) + " |",
                  "|---|" + "---|" * len(backends)]
        for r in deploy:
            t = r["backends_seconds_per_image"]
            cells = [f"{1e3 * t[b]:.3f} ({r['teacher35_seconds_per_image'] / t[b]:.1f}x)"
                     if b in t else "" for b in backends]
            lines.append(f"| {r['sampler']} | " + " | ".join(cells) + " |")
    lines += ["", "## Teacher: solvers and schedules\n",
              f"{label} per NFE (Karras schedule; searched and learned schedules their own).\n"]
    samplers = sorted({r["sampler"] for k, r in rows.items()
                       if k.startswith(("teacher/", "search/"))})
    nfes = sorted({r["nfe"] for k, r in rows.items() if k.startswith(("teacher/", "search/"))})
    lines += ["| sampler | " + " | ".join(map(str, nfes)) + " |",
              "|---|" + "---|" * len(nfes)]
    for s in samplers:
        cells = []
        for n in nfes:
            r = [r for k, r in rows.items() if k.startswith(("teacher/", "search/"))
                 and r["sampler"] == s and r["nfe"] == n]
            cells.append(f"{r[0]['fd']:.3f}" if r else "")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    md_file.write_text(text)
    return text


def plot(data: dict, png: FilePath) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines_of = {r["sampler"] for k, r in rows.items() if k.startswith(("teacher/", "search/"))}
    for s in sorted(lines_of):
        pts = sorted((r["nfe"], r["fd"]) for k, r in rows.items()
                     if k.startswith(("teacher/", "search/")) and r["sampler"] == s)
        ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=s)
    for k, r in rows.items():
        if k.startswith("student/"):
            ax.scatter([r["nfe"]], [r["fd"]], marker="*", s=60, zorder=3)
            ax.annotate(r["sampler"], (r["nfe"], r["fd"]), fontsize=6)
    if "floor" in rows:
        ax.axhline(rows["floor"]["fd"], color="k", ls=":", label="noise floor")
    ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel=data["feature_net"]["label"],
           title="Fashion-MNIST 28x28: teacher samplers (lines) and students (stars)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_dataclass(Args, argv, description=__doc__.split("\n\n")[0]).resolved()
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    torch.set_num_threads(args.threads)
    bench = Bench(args)
    if not args.report:
        bench.setup()
        bench.floor_row()
        bench.teacher_rows(FIRST_SOLVERS)  # the reference rows first: a cut-short run has them
        bench.student_rows()
        bench.deploy_rows()
        bench.search_rows()
        bench.teacher_rows()
    data = json.loads(bench.json_file.read_text())
    print(report(data, bench.md_file))
    plot(data, bench.md_file.with_suffix(".png"))
    if not args.report:
        print(f"total {time.perf_counter() - bench.t_start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
