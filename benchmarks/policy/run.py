"""Policy benchmark (issue 13): one-step flow policies against diffusion baselines, on data made
here by `onestep-policy make-dataset`.

    uv run python benchmarks/policy/run.py             # the full run (CPU hours); resumable
    uv run python benchmarks/policy/run.py --resume    # continue a killed run
    uv run python benchmarks/policy/run.py --quick     # a smoke run of every stage (minutes)
    uv run python benchmarks/policy/run.py --report    # rewrite policy.md / .png from the json

Offline RL: for each dataset of --datasets (gymnasium id and D4RL split, default HalfCheetah-v5
and Hopper-v5 medium: 1M transitions from a behaviour policy, TD3 and SAC respectively, trained
for --behavior-steps), OFQL, DQL (5
denoising steps), flow behaviour cloning (fbc) and MLP behaviour cloning (bc) are trained for
--offline-steps per seed of --seeds and rolled out for --episodes episodes: D4RL-normalised score
against the random and expert reference returns the dataset records.

Imitation: for each task of --tasks (robosuite Lift and Can, --demos scripted demonstrations in the
robomimic format), DM1 (MeanFlow with dispersive regularisation, one step) and the diffusion
policy are trained for --imitation-steps per seed and rolled out for --imitation-episodes
episodes: success rate in percent. DM1 samples with its one-step sampler; the diffusion policy with
DDPM (100 ancestral steps, the paper's default; key "diffusion-policy") and with DDIM (10 steps;
key "diffusion-policy-ddim") from the same weights.

A cell (dataset or task, algorithm) is the mean over seeds of the per-seed score (the mean over
that seed's episodes) with a 95% Student-t interval over the seed scores (n - 1 degrees of
freedom; the seed's value itself for one seed); latency (ms per policy query at batch 1: one
action for the offline algorithms, one action chunk for the imitation ones; the policy call
only) is timed after the rollouts, every algorithm of a dataset or task round-robin in blocks of
10 queries on the same dataset observations in one process (the first seed's runs), so that
load on a shared machine hits all alike while each policy runs warm within its block; train
time is the median over seeds of each seed's seconds.

Writes benchmarks/results/policy.{md,json,png} (--quick: policy_quick.*, not committed). The
json holds the command, settings, versions, the datasets' summaries, every finished unit (one
per dataset or task, algorithm and seed: its training summary and evaluations) and the
top-level "results" mapping name -> algorithm -> {score, score_ci, latency_ms_median,
latency_ms_p95, train_seconds}. It is written after every training and every evaluation, and
--resume reuses the units whose settings match (so --seeds 3 --resume adds a seed). Datasets and
run folders go to benchmarks/results/policy/runs/ (git-ignored); a dataset already there is
reused after its summary is checked against the settings, and one the json records but the
folder lacks (a fresh checkout) is made again only when a unit needs it. Seeds can run in
parallel, one process each with --resume --seeds S --no-latency; a last `--resume` (all seeds
finished) times the latency stage and writes the table.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path as FilePath

import numpy as np
import torch

from onestep.core.cli import parse_dataclass
from onestep.policy import imitation, offline
from onestep.policy.data import read_d4rl, read_robomimic
from onestep.policy.make import make_dataset, sidecar_path
from onestep.policy.tasks import QUALITIES, robot_task

ROOT = FilePath(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
OFFLINE_ALGOS = ("ofql", "dql", "fbc", "bc")
IMITATION_ALGOS = ("dm1", "diffusion-policy")
LATENCY_BLOCK = 10  # consecutive timed queries per algorithm in the latency stage
# result key -> (algorithm, sampler) of the imitation cells
IMITATION_KEYS = {"dm1": ("dm1", "meanflow"), "diffusion-policy": ("diffusion-policy", "ddpm"),
                  "diffusion-policy-ddim": ("diffusion-policy", "ddim")}
# the issue's targets
DQL_LATENCY_RATIO, DDPM_LATENCY_RATIO, DDIM_LATENCY_RATIO = 4.0, 20.0, 5.0
EVAL_SEED = 100_000  # rollouts start at EVAL_SEED + 1000 * seed: away from the data's resets


@dataclass(frozen=True)
class Args:
    """Benchmark settings; --quick shrinks everything for a smoke run."""

    quick: bool = False
    """Tiny budgets (minutes), written to policy_quick.*: checks that the script runs."""
    resume: bool = False
    """Keep the finished units of an existing policy.json whose settings match; continue
    unfinished training runs from their checkpoints."""
    report: bool = False
    """Only rewrite policy.md and policy.png from an existing policy.json."""
    datasets: tuple[str, ...] = ("HalfCheetah-v5:medium", "Hopper-v5:medium")
    """Offline-RL datasets as ENV:SPLIT (a gymnasium id and a D4RL split: random, medium,
    expert, medium-replay, medium-expert); named halfcheetah-medium etc. in the results."""
    tasks: tuple[str, ...] = ("Lift", "Can")
    """Robot imitation tasks (Lift, Can)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds (each also shifts the rollouts' reset seeds)."""
    offline_steps: int = 10_000
    """Gradient steps of ofql, dql, fbc and bc."""
    imitation_steps: int = 5000
    """Gradient steps of dm1 and diffusion-policy."""
    eta: tuple[str, ...] = ("hopper-medium=0.1",)
    """Q-loss weight of ofql and dql per dataset, NAME=ETA (DQL tunes eta per dataset); the
    others keep the configs' 1.0 (DQL's value on D4RL locomotion). On hopper-medium eta 1
    pinned OFQL's one-step actions at their bounds (the README's policy section)."""
    episodes: int = 10
    """Rollout episodes per offline policy and seed."""
    imitation_episodes: int = 20
    """Rollout episodes per imitation policy, sampler and seed."""
    transitions: int = 1_000_000
    """Transitions per offline dataset (D4RL's size)."""
    behavior_steps: int = 150_000
    """Environment steps of the TD3 / SAC behaviour policy the offline datasets come from."""
    demos: int = 200
    """Scripted demonstrations per robot task."""
    ckpt_every: int = 1000
    """Checkpoint every this many training steps (a killed run continues from the last)."""
    latency_reps: int = 100
    """Timed policy queries per algorithm in the latency stage (blocks of LATENCY_BLOCK
    queries, the first of each block left out as warm-up)."""
    latency: bool = True
    """Run the latency stage (on the first seed's runs; --no-latency for the per-seed processes
    of a parallel run, whose last plain --resume runs it)."""
    threads: int = 1
    """CPU threads for torch (training and the latency measurement)."""
    progress: bool = True
    """Show progress bars."""

    def resolved(self) -> Args:
        """With --quick, the smoke-run values of the fields left at their defaults."""
        if not self.quick:
            return self
        quick = dict(datasets=("Pendulum-v1:medium",), seeds=(0,), offline_steps=20,
                     imitation_steps=20, episodes=2, imitation_episodes=1, transitions=2000,
                     behavior_steps=2000, demos=3, ckpt_every=10, latency_reps=20, eta=())
        return dataclasses.replace(self, **{k: v for k, v in quick.items()
                                            if getattr(self, k) == getattr(Args, k)})


# -- names --------------------------------------------------------------------------------------
def parse_dataset(spec: str) -> tuple[str, str, str]:
    """(name, gymnasium id, split) of an ENV:SPLIT spec; name as D4RL spells it
    (halfcheetah-medium)."""
    env, sep, quality = spec.partition(":")
    if not sep or not env or not quality:
        raise SystemExit(f"--datasets {spec!r}: expected ENV:SPLIT, e.g. HalfCheetah-v5:medium")
    if quality not in QUALITIES:
        raise SystemExit(f"--datasets {spec!r}: unknown split {quality!r}; choose from "
                         f"{', '.join(QUALITIES)}")
    if robot_task(env) is not None:
        raise SystemExit(f"--datasets {spec!r}: {env} is a robot task; give it with --tasks")
    return f"{env.split('-')[0].lower()}-{quality}", env, quality


def check_tasks(tasks) -> None:
    for t in tasks:
        task = robot_task(t)
        if task is None or task.name != t:
            raise SystemExit(f"--tasks: unknown robot task {t!r}; choose Lift or Can")


def rel(path) -> str:
    """A path relative to the repository (no machine paths in the results)."""
    try:
        return str(FilePath(path).resolve().relative_to(ROOT.parent))
    except ValueError:
        return FilePath(path).name


def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "numpy", "gymnasium", "mujoco", "robosuite", "onestep-policy",
                "onestep-core"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


# -- statistics ---------------------------------------------------------------------------------
def t_interval(values) -> list[float]:
    """95% Student-t interval of the mean of `values` (n - 1 degrees of freedom); the value
    itself for a single value."""
    x = np.asarray(values, np.float64)
    if len(x) == 1:
        return [float(x[0]), float(x[0])]
    from scipy.stats import t

    half = float(t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return [float(x.mean() - half), float(x.mean() + half)]


def cell(evals: list[dict], trains: list[dict], lo: float | None = None,
         hi: float | None = None) -> dict:
    """The results entry of one (dataset or task, algorithm) from its per-seed evaluations."""
    scores = [e["score"] for e in evals]
    ci = t_interval(scores) if None not in scores else None
    if ci is not None and lo is not None:
        ci = [max(lo, ci[0]), min(hi, ci[1])]
    train = [t["train_seconds"] for t in trains if t.get("train_seconds") is not None]
    return {"score": float(np.mean(scores)) if None not in scores else None, "score_ci": ci,
            "latency_ms_median": statistics.median(e["latency_ms_median"] for e in evals),
            "latency_ms_p95": statistics.median(e["latency_ms_p95"] for e in evals),
            "train_seconds": statistics.median(train) if train else None,
            "seeds": [e["seed_of_training"] for e in evals], "per_seed_scores": scores}


# -- the benchmark ------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: Args):
        self.args = args
        stem = "policy_quick" if args.quick else "policy"
        self.json_file, self.md_file = RESULTS / f"{stem}.json", RESULTS / f"{stem}.md"
        self.work = RESULTS / "policy" / "runs" / ("quick" if args.quick else "")
        self.data_dir = self.work / "data"
        self.units: dict[str, dict] = {}
        self.mine: set[str] = set()  # the units this process ran (others may run other seeds)
        self.datasets: dict[str, dict] = {}
        self.seconds_before = 0.0
        if (args.resume or args.report) and self.json_file.exists():
            old = json.loads(self.json_file.read_text())
            self.units = old.get("units", {})
            self.datasets = old.get("datasets", {})
            self.seconds_before = old.get("wall_seconds", 0.0)
            self.old = old
        self.t0 = time.perf_counter()

    # -- json ---------------------------------------------------------------------------------
    def results(self) -> dict:
        a = self.args
        out: dict[str, dict] = {}
        for spec in a.datasets:
            name = parse_dataset(spec)[0]
            for algo in OFFLINE_ALGOS:
                us = [self.units.get(f"offline/{name}/{algo}/seed{s}") for s in a.seeds]
                us = [u for u in us if u and "eval" in u]
                if us:
                    out.setdefault(name, {})[algo] = cell([u["eval"] for u in us],
                                                          [u["train"] for u in us])
                    self._interleaved(out[name], name, algo)
        for task in a.tasks:
            for key, (algo, sampler) in IMITATION_KEYS.items():
                us = [self.units.get(f"imitation/{task}/{algo}/seed{s}") for s in a.seeds]
                us = [u for u in us if u and sampler in u.get("eval", {})]
                if us:
                    out.setdefault(task, {})[key] = cell([u["eval"][sampler] for u in us],
                                                         [u["train"] for u in us], 0.0, 100.0)
                    self._interleaved(out[task], task, key)
        return out

    def _interleaved(self, cells: dict, name: str, key: str) -> None:
        """Use the interleaved latency of `name`'s latency unit where it has one."""
        ms = self.units.get(f"latency/{name}/seed{self.args.seeds[0]}", {}).get("ms", {})
        if key in ms:
            cells[key].update(latency_ms_median=ms[key]["median"], latency_ms_p95=ms[key]["p95"],
                              latency="interleaved")

    def save(self) -> None:
        a = self.args
        data = {"command": " ".join([FilePath(sys.executable).name, *sys.argv]),
                "config": dataclasses.asdict(a), "versions": versions(),
                "wall_seconds": self.seconds_before + time.perf_counter() - self.t0,
                "interval": "95% Student-t interval over the seeds' scores (n - 1 dof)",
                "results": self.results(), "datasets": self.datasets, "units": self.units}
        RESULTS.mkdir(parents=True, exist_ok=True)
        # with --resume several processes may share the json (one per seed: --seeds 0, --seeds 1,
        # ...; then a plain --resume aggregates every seed): under a lock, take the other
        # processes' units from the file and write ours over them
        with open(self.json_file.with_suffix(".json.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if a.resume and self.json_file.exists():
                disk = json.loads(self.json_file.read_text())
                if disk.get("units") is not None:
                    self.units = {**disk["units"], **{k: self.units[k] for k in self.mine}}
                    self.datasets = {**disk.get("datasets", {}), **self.datasets}
                    data.update(results=self.results(), datasets=self.datasets, units=self.units)
            tmp = self.json_file.with_suffix(f".json.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1) + "\n")
            tmp.replace(self.json_file)

    # -- datasets -----------------------------------------------------------------------------
    def _expect(self, name: str, env: str, quality: str) -> dict:
        a = self.args
        if quality == "scripted":
            return {"env": env, "quality": "scripted", "episodes": a.demos, "seed": 0}
        want = {"env": env, "quality": quality, "transitions": a.transitions, "seed": 0}
        if quality != "random":
            want["train_steps"] = a.behavior_steps
        return want

    def dataset_step(self, name: str, env: str, quality: str):
        """A function returning the dataset file `name`: made now, or, when resuming with the
        file gone and its summary recorded, made only if a unit still needs it (a finished
        benchmark continued on a fresh checkout need not remake every dataset)."""
        file = self.data_dir / f"{name}.hdf5"
        if self.args.resume and not file.exists() and name in self.datasets:
            return functools.cache(lambda: self.dataset(name, env, quality))
        file = self.dataset(name, env, quality)
        return lambda: file

    def dataset(self, name: str, env: str, quality: str) -> FilePath:
        """The dataset file `name` (made unless there), its summary checked and recorded."""
        a = self.args
        file = self.data_dir / f"{name}.hdf5"
        side = sidecar_path(file, "d4rl")
        want = self._expect(name, env, quality)
        if not file.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            log(f"making {name}: {env} {quality} -> {rel(file)}")
            robot = quality == "scripted"
            make_dataset(env, "" if robot else quality, out=str(file),
                         episodes=a.demos if robot else 0,
                         transitions=0 if robot else a.transitions, seed=0,
                         policy_dir=str(self.work / "policies"), policy_seed=0,
                         train_steps=0 if robot else a.behavior_steps,
                         progress=a.progress, threads=a.threads, log=log)
        if not side.exists():
            raise SystemExit(f"{rel(file)} has no summary {side.name}; delete the file to make "
                             "it again")
        summary = json.loads(side.read_text())
        wrong = {k: (summary.get(k), v) for k, v in want.items() if summary.get(k) != v}
        if wrong:
            shown = ", ".join(f"{k} {g!r} (want {w!r})" for k, (g, w) in wrong.items())
            raise SystemExit(f"{rel(file)} was made with other settings: {shown}; delete it "
                             "or change the flags")
        self.datasets[name] = {k: v for k, v in summary.items() if k not in ("path", "sidecar")}
        self.datasets[name]["file"] = rel(file)
        return file

    # -- units --------------------------------------------------------------------------------
    def unit(self, key: str, settings: dict) -> dict:
        u = self.units.get(key)
        if u is None or u.get("settings") != settings:
            u = self.units[key] = {"settings": settings}
        self.mine.add(key)
        return u

    def eta(self, name: str, algo: str) -> float | None:
        """The Q-loss weight --eta sets for `algo` on dataset `name` (None: the config's)."""
        if algo not in ("ofql", "dql"):
            return None
        etas = dict(spec.split("=", 1) for spec in self.args.eta)
        return float(etas[name]) if name in etas else None

    def offline_run(self, name: str, algo: str, seed: int) -> FilePath:
        eta = self.eta(name, algo)
        tag = "" if eta is None else f"-eta{eta:g}"
        return self.work / name / f"{algo}-{self.args.offline_steps}{tag}-seed{seed}"

    def offline_unit(self, name: str, file, algo: str, seed: int) -> None:
        a = self.args
        key = f"offline/{name}/{algo}/seed{seed}"
        settings = {"steps": a.offline_steps, "dataset": self.datasets[name]["file"]}
        eta = self.eta(name, algo)
        if eta is not None:
            settings["eta"] = eta
        u = self.unit(key, settings)
        if u.get("eval", {}).get("episodes") == a.episodes:
            return False
        run = self.offline_run(name, algo, seed)
        if "train" not in u:
            t0 = time.perf_counter()
            cont = a.resume and (run / "run.json").exists()  # a killed run continues
            s = offline.train(algo, str(file()), str(run), steps=a.offline_steps, seed=seed,
                            resume=cont, overwrite=not cont, progress=a.progress, threads=a.threads,
                            overrides={"ckpt_every": a.ckpt_every,
                                       **({} if eta is None else {"eta": eta})})
            u["train"] = {"steps": s["steps"], "train_seconds": s["train_seconds"],
                          "wall_seconds": time.perf_counter() - t0, "run": rel(run),
                          "final_logs": s.get("final_logs")}
            self.save()
        e = offline.evaluate(str(run), episodes=a.episodes, seed=EVAL_SEED + 1000 * seed,
                             progress=a.progress)
        e["seed_of_training"] = seed
        u["eval"] = e
        self.save()
        log(f"{key}: score {fmt(e['score'])}, latency {e['latency_ms_median']:.3f} ms, "
            f"train {u['train']['train_seconds']:.0f} s")

    def imitation_unit(self, task: str, file, algo: str, seed: int) -> None:
        a = self.args
        key = f"imitation/{task}/{algo}/seed{seed}"
        u = self.unit(key, {"steps": a.imitation_steps, "dataset": self.datasets[task]["file"]})
        samplers = imitation.SAMPLERS[algo]
        evals = u.setdefault("eval", {})
        for s in [s for s, e in evals.items() if e.get("episodes") != a.imitation_episodes]:
            del evals[s]  # evaluated with another --imitation-episodes
        if all(s in evals for s in samplers):
            return False
        run = self.work / task / f"{algo}-{a.imitation_steps}-seed{seed}"
        if "train" not in u:
            t0 = time.perf_counter()
            cont = a.resume and (run / "run.json").exists()  # a killed run continues
            s = imitation.train(algo, str(file()), str(run), steps=a.imitation_steps, seed=seed,
                            resume=cont, overwrite=not cont, progress=a.progress, threads=a.threads,
                            overrides={"ckpt_every": a.ckpt_every})
            u["train"] = {"steps": s["steps"], "train_seconds": s["train_seconds"],
                          "wall_seconds": time.perf_counter() - t0, "run": rel(run),
                          "final_loss": s.get("final_loss"), "params": s.get("params")}
            self.save()
        # the cheap samplers first: DDIM-10 before DDPM-100
        for sampler in sorted(samplers, key=lambda s: s == "ddpm"):
            if sampler in evals:
                continue
            e = imitation.evaluate(str(run), episodes=a.imitation_episodes,
                                   seed=EVAL_SEED + 1000 * seed, progress=a.progress,
                                   sampler=sampler)
            e["seed_of_training"] = seed
            evals[sampler] = e
            self.save()
            log(f"{key} {sampler}: success {e['score']:.0f}%, latency "
                f"{e['latency_ms_median']:.3f} ms, train {u['train']['train_seconds']:.0f} s")

    def latency_unit(self, name: str, file, offline_set: bool) -> None:
        """Latency per policy query at batch 1, every algorithm of `name` (its seed-0 or first
        seed's run) timed round-robin on the same dataset observations in one process, so that
        load on a shared machine hits all alike (the rollouts' own latencies are kept in the
        units; this is what the table and the targets use)."""
        a = self.args
        seed = a.seeds[0]
        key = f"latency/{name}/seed{seed}"
        steps = a.offline_steps if offline_set else a.imitation_steps
        settings = {"steps": steps, "reps": a.latency_reps, "block": LATENCY_BLOCK}
        etas = {al: self.eta(name, al) for al in OFFLINE_ALGOS} if offline_set else {}
        if any(v is not None for v in etas.values()):
            settings["eta"] = {k: v for k, v in etas.items() if v is not None}
        u = self.unit(key, settings)
        if "ms" in u:
            return False
        data = (read_d4rl(file()) if offline_set else read_robomimic(file()))
        rng = np.random.default_rng(0)
        n = a.latency_reps * LATENCY_BLOCK // (LATENCY_BLOCK - 1)  # latency_reps timed each
        obs = data.observations[rng.integers(0, len(data.observations), n)]
        fns = {}
        if offline_set:
            for algo in OFFLINE_ALGOS:
                fns[algo] = offline.actor(str(self.offline_run(name, algo, seed)), seed)[0]
        else:
            for key_name, (algo, sampler) in IMITATION_KEYS.items():
                pol = imitation.load_policy(self.work / name / f"{algo}-{steps}-seed{seed}",
                                            sampler=sampler, seed=seed)
                fns[key_name] = lambda o, p=pol: p.predict_chunk(
                    np.repeat(o[None], p.cfg.n_obs_steps, 0))
        # blocks of LATENCY_BLOCK queries per algorithm, round-robin: within a block the
        # policy runs warm, as it does alone in a control loop (one query per call, algorithms
        # alternating, put the one-step policies' weights out of cache: 0.88 -> 1.87 ms for DM1
        # on Can); the first query of each block is left out
        times: dict[str, list[float]] = {k: [] for k in fns}
        for start in range(0, len(obs), LATENCY_BLOCK):
            for k, fn in fns.items():
                for j, o in enumerate(obs[start:start + LATENCY_BLOCK]):
                    t0 = time.perf_counter()
                    fn(o)
                    if j > 0:
                        times[k].append(1e3 * (time.perf_counter() - t0))
        u["ms"] = {k: {"median": float(np.median(v)), "p95": float(np.percentile(v, 95))}
                   for k, v in times.items()}
        self.save()
        log(f"{key}: " + ", ".join(f"{k} {v['median']:.3f} ms" for k, v in u["ms"].items()))

    def plan(self) -> list[tuple[str, callable]]:
        """The units in running order: every dataset first, then seed by seed each offline and
        each imitation algorithm, so that a run cut short has every cell's first seeds."""
        a = self.args
        offline_sets = [parse_dataset(s) for s in a.datasets]
        files: dict[str, callable] = {}
        todo = []
        for name, env, quality in [*offline_sets, *((t, t, "scripted") for t in a.tasks)]:
            todo.append((f"data {name}", lambda n=name, e=env, q=quality:
                         files.__setitem__(n, self.dataset_step(n, e, q))))
        for seed in a.seeds:
            for name, _, _ in offline_sets:
                for algo in OFFLINE_ALGOS:
                    todo.append((f"{name} {algo} seed {seed}", lambda n=name, al=algo, s=seed:
                                 self.offline_unit(n, files[n], al, s)))
            for task in a.tasks:
                for algo in IMITATION_ALGOS:
                    todo.append((f"{task} {algo} seed {seed}", lambda t=task, al=algo, s=seed:
                                 self.imitation_unit(t, files[t], al, s)))
        if not a.latency:
            return todo
        for name, _, _ in offline_sets:
            todo.append((f"{name} latency", lambda n=name: self.latency_unit(n, files[n], True)))
        for task in a.tasks:
            todo.append((f"{task} latency", lambda t=task: self.latency_unit(t, files[t], False)))
        return todo

    def run(self) -> None:
        from tqdm.auto import tqdm

        todo = self.plan()
        bar = tqdm(todo, desc="policy benchmark", disable=not self.args.progress,
                   dynamic_ncols=True)
        for label, work in bar:
            bar.set_postfix_str(label)
            t0 = time.perf_counter()
            kept = work() is False
            if not self.args.progress:
                log(f"{'kept' if kept else 'done'}: {label} ({time.perf_counter() - t0:.0f} s)")
        self.save()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


# -- report -------------------------------------------------------------------------------------
def targets(results: dict, config: dict) -> list[tuple[str, str, str, bool | None]]:
    """(target, limit, measured, met) for each of the issue's targets the results allow."""
    out = []
    for spec in config["datasets"]:
        name = parse_dataset(spec)[0]
        r = results.get(name, {})
        o, d = r.get("ofql"), r.get("dql")
        if not (o and d):
            continue
        if o["score"] is not None and d["score"] is not None:
            out.append((f"{name}: OFQL score >= DQL score", ">=",
                        f"{o['score']:.1f} {ci_text(o)} vs {d['score']:.1f} {ci_text(d)}",
                        o["score"] >= d["score"]))
        ratio = d["latency_ms_median"] / o["latency_ms_median"]
        out.append((f"{name}: latency DQL / OFQL", f">= {DQL_LATENCY_RATIO:g}x",
                    f"{ratio:.1f}x ({d['latency_ms_median']:.3f} / "
                    f"{o['latency_ms_median']:.3f} ms)", ratio >= DQL_LATENCY_RATIO))
        if o["train_seconds"] is not None and d["train_seconds"] is not None:
            out.append((f"{name}: OFQL train time < DQL's", "<",
                        f"{o['train_seconds']:.0f} s vs {d['train_seconds']:.0f} s",
                        o["train_seconds"] < d["train_seconds"]))
    for task in config["tasks"]:
        r = results.get(task, {})
        m = r.get("dm1")
        if not m:
            continue
        for key, label, lim in (("diffusion-policy", "DDPM-100", DDPM_LATENCY_RATIO),
                                ("diffusion-policy-ddim", "DDIM-10", DDIM_LATENCY_RATIO)):
            b = r.get(key)
            if not b:
                continue
            out.append((f"{task}: DM1 success >= diffusion policy {label}", ">=",
                        f"{m['score']:.0f}% {ci_text(m, '.0f')} vs {b['score']:.0f}% "
                        f"{ci_text(b, '.0f')}", m["score"] >= b["score"]))
            ratio = b["latency_ms_median"] / m["latency_ms_median"]
            out.append((f"{task}: latency {label} / DM1", f">= {lim:g}x",
                        f"{ratio:.1f}x ({b['latency_ms_median']:.3f} / "
                        f"{m['latency_ms_median']:.3f} ms)", ratio >= lim))
    return out


def ci_text(c: dict, spec: str = ".1f") -> str:
    ci = c.get("score_ci")
    return "" if not ci else f"[{ci[0]:{spec}}, {ci[1]:{spec}}]"


def report(data: dict, md_file: FilePath) -> str:
    cfg, results = data["config"], data["results"]
    quick = " (**--quick smoke run: the numbers mean nothing**)" if cfg["quick"] else ""
    lines = ["# Policy benchmark: one-step flow policies against diffusion baselines\n",
             f"Command: `{data['command']}`{quick}; torch {data['versions'].get('torch')}, "
             f"{cfg['threads']} CPU thread(s); seeds {', '.join(map(str, cfg['seeds']))}. "
             f"Wall time so far {data.get('wall_seconds', 0) / 3600:.1f} h.\n",
             "Each cell: the mean over seeds of the per-seed score (the mean over that seed's "
             "rollouts) with a 95% Student-t interval over the seed scores in brackets; latency "
             "per policy query at batch 1 (median and p95), every algorithm of a dataset or task "
             "timed round-robin in blocks of 10 queries (the first left out) on the same "
             "observations in one process (the first seed's runs; "
             "before that stage has run, the median over seeds of the rollouts' latencies); "
             "train time: the median over seeds of the seconds spent in "
             "training steps. The machine was shared with other jobs, so times are "
             "indicative.\n",
             "## Targets (issue 13)\n", "| target | limit | measured | met |",
             "|---|---|---|---|"]
    for t, lim, got, met in targets(results, cfg):
        lines.append(f"| {t} | {lim} | {got} | {'yes' if met else '**no**'} |")
    lines += ["", "## Offline RL (D4RL-normalised score)\n",
              f"{cfg['offline_steps']} gradient steps per run, {cfg['episodes']} rollout "
              "episodes per seed; latency per action. DQL: 5 denoising steps (its paper's); "
              "OFQL: one step. Q-loss weight eta of both: 1.0 (DQL's on D4RL locomotion)"
              + "".join(f", {spec.replace('=', ' ')}" for spec in cfg.get("eta", ()))
              + " (--eta).\n",
              "| dataset | algo | score | 95% CI | latency ms (median) | p95 | train s |",
              "|---|---|---|---|---|---|---|"]
    for spec in cfg["datasets"]:
        name = parse_dataset(spec)[0]
        for algo in OFFLINE_ALGOS:
            c = results.get(name, {}).get(algo)
            if c:
                lines.append(f"| {name} | {algo} | {fmt(c['score'])} | {ci_text(c)} | "
                             f"{c['latency_ms_median']:.3f} | {c['latency_ms_p95']:.3f} | "
                             f"{fmt(c['train_seconds'], '.0f')} |")
    lines += ["", "## Imitation (success rate, percent)\n",
              f"{cfg['imitation_steps']} gradient steps per run, {cfg['imitation_episodes']} "
              "rollout episodes per seed and sampler; latency per policy query (one action "
              "chunk). `diffusion-policy` is the diffusion policy sampled with DDPM (all 100 "
              "training steps, ancestral: the paper's default), `diffusion-policy-ddim` the same "
              "weights sampled with DDIM (10 steps); DM1 samples in one step.\n",
              "| task | algo | success % | 95% CI | latency ms (median) | p95 | train s |",
              "|---|---|---|---|---|---|---|"]
    for task in cfg["tasks"]:
        for key in IMITATION_KEYS:
            c = results.get(task, {}).get(key)
            if c:
                lines.append(f"| {task} | {key} | {c['score']:.0f} | {ci_text(c, '.0f')} | "
                             f"{c['latency_ms_median']:.3f} | {c['latency_ms_p95']:.3f} | "
                             f"{fmt(c['train_seconds'], '.0f')} |")
    lines += ["", "## Datasets\n",
              "Made by `onestep-policy make-dataset`. Normalised score = 100 x (return - random) "
              "/ (expert - random), with the reference returns measured on our own behaviour "
              "policy (10 episodes of uniform random actions; 10 of the expert actor without "
              "noise).\n",
              "| dataset | env | split | transitions | episodes | mean return | "
              "random return | expert return | normalised score / success |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, s in data["datasets"].items():
        quality = s.get("quality", "")
        extra = (f"{100 * s['success_rate']:.0f}% success" if "success_rate" in s else
                 fmt(s.get("normalized_score")))
        lines.append(f"| {name} | {s.get('env')} | {quality} | {s.get('transitions')} | "
                     f"{s.get('episodes')} | {fmt(s.get('mean_return'))} | "
                     f"{fmt(s.get('ref_random_return'))} | {fmt(s.get('ref_expert_return'))} | "
                     f"{extra} |")
    pols = {s["policy_folder"]: s for s in data["datasets"].values() if s.get("policy_folder")}
    for folder, s in pols.items():
        lines.append(f"\nBehaviour policy {folder}: {s.get('policy')} trained for "
                     f"{s.get('train_steps')} environment steps; medium = the actor at step "
                     f"{s.get('medium_step')} (the first evaluation at normalised score >= "
                     f"{s.get('medium_score_target')}), expert = step {s.get('expert_step')}; "
                     f"action noise {s.get('action_noise')}.")
    text = "\n".join(lines) + "\n"
    md_file.write_text(text)
    return text


def plot(data: dict, png: FilePath) -> None:
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, cfg = data["results"], data["config"]
    groups = [("offline", [parse_dataset(s)[0] for s in cfg["datasets"]],
               "D4RL-normalised score"), ("imitation", list(cfg["tasks"]), "success rate (%)")]
    groups = [g for g in groups if any(n in results for n in g[1])]
    if not groups:
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    markers = "osD^v<>"
    for ax, (title, names, ylabel) in zip(axes[0], groups, strict=True):
        for i, name in enumerate(n for n in names if n in results):
            for algo, c in results[name].items():
                if c["score"] is None:
                    continue
                ci = c["score_ci"] or [c["score"], c["score"]]
                ax.errorbar([c["latency_ms_median"]], [c["score"]],
                            yerr=[[c["score"] - ci[0]], [ci[1] - c["score"]]],
                            marker=markers[i % len(markers)], capsize=3, ls="none",
                            label=f"{name} {algo}")
        ax.set(xscale="log", xlabel="latency per query (ms, median)", ylabel=ylabel,
               title=title)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_dataclass(Args, argv, description=__doc__.split("\n\n")[0]).resolved()
    names = [parse_dataset(s)[0] for s in args.datasets]
    for spec in args.eta:
        name, sep, value = spec.partition("=")
        try:
            ok = bool(sep) and float(value) >= 0
        except ValueError:
            ok = False
        if not ok:
            raise SystemExit(f"--eta {spec!r}: expected NAME=ETA with ETA >= 0, e.g. "
                             "hopper-medium=0.1")
        if name not in names:
            raise SystemExit(f"--eta {spec!r}: {name!r} is not one of the datasets "
                             f"({', '.join(names)})")
    check_tasks(args.tasks)
    if not args.seeds:
        raise SystemExit("--seeds: give at least one seed")
    torch.set_num_threads(max(1, args.threads))
    bench = Bench(args)
    if args.report:
        if not bench.json_file.exists():
            raise SystemExit(f"{rel(bench.json_file)} does not exist; run the benchmark first")
        data = json.loads(bench.json_file.read_text())
    else:
        bench.run()
        data = json.loads(bench.json_file.read_text())
    print(report(data, bench.md_file))
    plot(data, bench.md_file.with_suffix(".png"))
    if not args.report:
        log(f"total {time.perf_counter() - bench.t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
