"""Discrete (masked) diffusion benchmark: the few-step ancestral sampler against LSD / LSD+
(Fu et al. 2025) on the 1797 real 8x8 scikit-learn digits as 64 tokens with values 0..16.

    uv run python benchmarks/discrete/run.py            # the full run (about 25 min, 1 thread)
    uv run python benchmarks/discrete/run.py --quick    # a smoke run (discrete_quick.*)
    uv run python benchmarks/discrete/run.py --resume   # reuse the finished rows of discrete.json
    uv run python benchmarks/discrete/run.py --report   # rewrite discrete.md / .png from the json

Teacher: `onestep.core.discrete.MaskedMLP` on `MaskedDiffusion(17, 64)` (linear schedule),
trained with the continuous-time NELBO on 1400 digits (a fixed permutation; the other 397 are
held out and never trained on). It is trained once and cached in
benchmarks/results/discrete/teacher-<key>/ (not committed: over 2 MB), retrained when missing
or when its settings change.

Rows:
- teacher: the uniform-time ancestral sampler at NFE 2, 3, 4, 6, 8, 16, 64. At NFE 64 it is the
  same sampler as the reference, so its distance to the reference is the noise floor (two
  independent teacher sample sets of the same size).
- at NFE 2, 4, 8: `uniform` (the plain few-step sampler, the teacher row again), `lsd` (per-step
  logit coefficients, Eq. 5-6), `lsd+` (coefficients and step sizes, Eq. 7) and `times` (step sizes
  only), each from `learn_discrete_sampler` with held-out selection against its own teacher set.
- data: 397 training digits against the 397 held-out digits (the floor of the distance to data).

Metric: `token_frechet` (Frechet distance between Gaussians fitted to the 64 pixel values, the
metric of discrete.py's tests) of n_eval samples to (a) a fixed set of n_eval many-step teacher
samples (the reference) and (b) the 397 held-out digits. Every row is drawn with 3 seeds (the
learned samplers are also trained with that seed); the tables give the median and the range.
Writes benchmarks/results/discrete.{md,json,png} (a --quick run discrete_quick.*, not
committed); the json after every row, so that a killed run keeps what it finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path as FilePath

import torch

from onestep.core.cli import parse_dataclass
from onestep.core.discrete import (  # _unmask_step: the sampler's own step, for the diagnosis
    MaskedDiffusion,
    MaskedMLP,
    _unmask_step,
    learn_discrete_sampler,
    load_digit_tokens,
    position_tv,
    sample_masked,
    teacher_states,
    token_frechet,
    uniform_times,
)

ROOT = FilePath(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
VOCAB, LENGTH = 17, 64
N_TRAIN = 1400
# method name -> (learn_coefficients, learn_times)
LEARNED = {"lsd": (True, False), "lsd+": (True, True), "times": (False, True)}
# fixed 4-step samplers for the diagnosis: (name, times, constant logit coefficient)
DIAGNOSIS = (
    ("uniform", (1.0, 0.75, 0.5, 0.25, 0.0), 1.0),
    ("uniform, Phi 0.8", (1.0, 0.75, 0.5, 0.25, 0.0), 0.8),
    ("uniform, Phi 0.9", (1.0, 0.75, 0.5, 0.25, 0.0), 0.9),
    ("uniform, Phi 1.1", (1.0, 0.75, 0.5, 0.25, 0.0), 1.1),
    ("late", (1.0, 0.95, 0.85, 0.6, 0.0), 1.0),
    ("later", (1.0, 0.97, 0.9, 0.75, 0.0), 1.0),
    ("degenerate", (1.0, 0.99, 0.98, 0.97, 0.0), 1.0),
    ("early", (1.0, 0.6, 0.35, 0.15, 0.0), 1.0),
)


@dataclass(frozen=True)
class Args:
    """Benchmark settings; --quick shrinks everything for a smoke run."""

    quick: bool = False
    """Small budgets everywhere (a few minutes): for checking that the script runs."""
    resume: bool = False
    """Reuse the rows of an existing discrete.json whose settings match."""
    report: bool = False
    """Only rewrite discrete.md and discrete.png from an existing discrete.json."""
    retrain: bool = False
    """Retrain the teacher even if the cache holds it."""
    teacher_steps: int = 3000
    """Teacher training steps (Adam, cosine-decayed learning rate)."""
    teacher_batch: int = 128
    teacher_lr: float = 2e-3
    hidden: int = 256
    """Teacher MaskedMLP width."""
    depth: int = 3
    """Teacher MaskedMLP residual blocks."""
    teacher_nfe: tuple[int, ...] = (2, 3, 4, 6, 8, 16, 64)
    """NFE of the plain (uniform-time) sampler rows; the largest is also the reference's."""
    learned_nfe: tuple[int, ...] = (2, 4, 8)
    """NFE of the learned samplers (each must divide lsd_teacher_steps)."""
    methods: tuple[str, ...] = ("lsd", "lsd+", "times")
    """Learned samplers: lsd (coefficients), lsd+ (coefficients and times), times (times only)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Sampling seeds (and the learners' seeds) per row."""
    n_eval: int = 1000
    """Samples per row and in the teacher reference set."""
    lsd_teacher_steps: int = 64
    """The learners' many-step teacher (uniform steps, a multiple of every learned NFE)."""
    lsd_iterations: int = 150
    lsd_batch: int = 64
    lsd_lr: float = 0.05
    lsd_n_train: int = 512
    """Teacher trajectories the learners are distilled on."""
    lsd_n_heldout: int = 512
    """Samples of the learners' held-out selection (against their own teacher set)."""
    lsd_eval_every: int = 10
    threads: int = 1
    """torch threads (1 is fastest on a shared 2-core machine)."""
    out: str = str(RESULTS)
    """Folder for discrete.md/.json/.png and the cached teacher (discrete/teacher-<key>/)."""
    progress: bool = True

    def resolved(self) -> Args:
        if not self.quick:
            return self
        return dataclasses.replace(
            self,
            teacher_steps=min(self.teacher_steps, 300),
            hidden=min(self.hidden, 128),
            depth=min(self.depth, 2),
            teacher_nfe=tuple(n for n in self.teacher_nfe if n in (2, 4, 16, 64)),
            learned_nfe=tuple(n for n in self.learned_nfe if n in (2, 4)),
            seeds=self.seeds[:2],
            n_eval=min(self.n_eval, 300),
            lsd_iterations=min(self.lsd_iterations, 10),
            lsd_n_train=min(self.lsd_n_train, 128),
            lsd_n_heldout=min(self.lsd_n_heldout, 200),
            lsd_eval_every=min(self.lsd_eval_every, 5),
        )


# -- data and teacher ---------------------------------------------------------------------------
def split_data() -> tuple[torch.Tensor, torch.Tensor]:
    """(1400 training digits, 397 held-out digits) from a fixed permutation (tests' split)."""
    data = load_digit_tokens()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    return data[perm[:N_TRAIN]], data[perm[N_TRAIN:]]


def teacher_key(args: Args) -> dict:
    return {
        "net": "MaskedMLP",
        "hidden": args.hidden,
        "depth": args.depth,
        "steps": args.teacher_steps,
        "batch": args.teacher_batch,
        "lr": args.teacher_lr,
        "schedule": "linear",
        "split": f"perm seed 0, first {N_TRAIN}",
    }


def get_teacher(train: torch.Tensor, args: Args) -> tuple[MaskedMLP, MaskedDiffusion, dict]:
    """The cached teacher, or a freshly trained one (then cached)."""
    key = teacher_key(args)
    tag = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    folder = FilePath(args.out) / "discrete" / f"teacher-{tag}"
    diffusion = MaskedDiffusion(VOCAB, LENGTH)
    net = MaskedMLP(VOCAB, LENGTH, hidden=args.hidden, depth=args.depth)
    info_file, weights = folder / "teacher.json", folder / "teacher.pt"
    if not args.retrain and info_file.exists() and weights.exists():
        info = json.loads(info_file.read_text())
        if info.get("key") == key:
            net.load_state_dict(torch.load(weights, weights_only=True))
            net.eval()
            return net, diffusion, {**info, "how": f"loaded from {folder.relative_to(ROOT)}"}
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=args.teacher_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.teacher_steps)
    start, logs = time.perf_counter(), []
    for step in range(args.teacher_steps):
        idx = torch.randint(0, len(train), (args.teacher_batch,), generator=g)
        loss, log = diffusion.loss(net, train[idx], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        logs.append(log["loss"])
        if args.progress and (step + 1) % max(1, args.teacher_steps // 10) == 0:
            print(f"  teacher step {step + 1}: NELBO {sum(logs[-100:]) / len(logs[-100:]):.4f}"
                  f" [{time.perf_counter() - start:.0f} s]", flush=True)
    net.eval()
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), weights)
    tail = logs[-200:]
    info = {"key": key, "train_s": seconds, "final_nelbo": sum(tail) / len(tail),
            "params": sum(p.numel() for p in net.parameters())}
    info_file.write_text(json.dumps(info, indent=1))
    return net, diffusion, {**info, "how": f"trained in {seconds:.0f} s"}


# -- rows ---------------------------------------------------------------------------------------
def eval_seed(seed: int) -> int:
    return 1000 + seed


def quality(x: torch.Tensor, reference: torch.Tensor, held: torch.Tensor) -> dict:
    return {"fd_teacher": token_frechet(x, reference), "fd_data": token_frechet(x, held),
            "tv_data": position_tv(x, held, VOCAB)}


def summary(per_seed: list[dict]) -> dict:
    """median / min / max over seeds of every metric."""
    out = {}
    for k in ("fd_teacher", "fd_data", "tv_data"):
        vals = [q[k] for q in per_seed]
        out[k] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return out


def teacher_row(net, diffusion, nfe, ctx, args) -> dict:
    per_seed, samples = [], None
    start = time.perf_counter()
    for s in args.seeds:
        g = torch.Generator().manual_seed(eval_seed(s))
        x = sample_masked(net, diffusion, args.n_eval, nfe=nfe, generator=g)
        per_seed.append({"seed": s, **quality(x, ctx["reference"], ctx["held"])})
        samples = x[:16].tolist() if samples is None else samples
    return {"method": "teacher", "nfe": nfe, "seeds": per_seed, **summary(per_seed),
            "times": uniform_times(nfe).tolist(), "samples": samples,
            "sample_s": time.perf_counter() - start}


def learned_row(method, net, diffusion, nfe, ctx, args) -> dict:
    coefs, learn_times = LEARNED[method]
    per_seed, samples = [], None
    for s in args.seeds:
        start = time.perf_counter()
        sampler = learn_discrete_sampler(
            net, diffusion, nfe=nfe, learn_times=learn_times, learn_coefficients=coefs,
            teacher_steps=args.lsd_teacher_steps, iterations=args.lsd_iterations,
            batch=args.lsd_batch, lr=args.lsd_lr, eval_every=args.lsd_eval_every,
            seed=100 * s + 10, teacher=ctx["lsd_teacher"][s])
        train_s = time.perf_counter() - start
        g = torch.Generator().manual_seed(eval_seed(s))
        x = sampler.sample(net, diffusion, args.n_eval, generator=g)
        meta = sampler.meta
        per_seed.append({
            "seed": s, **quality(x, ctx["reference"], ctx["held"]), "train_s": train_s,
            "times": sampler.times.tolist(), "coefficients": sampler.coefficients.tolist(),
            "best_iteration": meta["best_iteration"],
            "selection_metric": meta["heldout_metric"],
            "selection_metric_initial": meta["heldout_metric_initial"],
            "history": [{k: v for k, v in h.items() if k in ("iteration", "heldout",
                                                               "distill_loss")}
                        for h in meta["history"]],
        })
        samples = x[:16].tolist() if samples is None else samples
    return {"method": method, "nfe": nfe, "seeds": per_seed, **summary(per_seed),
            "samples": samples}


@torch.no_grad()
def lsd_objective(net, diffusion, times, phi, states, seed) -> tuple[float, list[float]]:
    """The distillation loss `learn_discrete_sampler` minimises, for a fixed sampler: the mean
    over the teacher trajectories of sum_k d_k, d_k = KL(teacher's p(x_0 | x*_{t_k}) || the
    student's softmax(Phi_k logits) at its own state) over positions masked in both (Eq. 6), the
    student run from the all-masked state with the sampler's own steps. -> (total, per step)."""
    steps, n = states.shape[0], states.shape[1]
    grid = uniform_times(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, LENGTH), diffusion.mask_id, dtype=torch.long)
    total, per = torch.zeros(n), []
    for k in range(len(times) - 1):
        j = min(int(round((1.0 - times[k].item()) * steps)), steps - 1)
        log_p = torch.log_softmax(net(states[j], grid[j].float()), -1)
        logits = net(x, times[k].float())
        log_q = torch.log_softmax(phi[k] * logits, -1)
        both = ((x == diffusion.mask_id) & (states[j] == diffusion.mask_id)).float()
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        d = (kl * both).sum(1) / both.sum(1).clamp(min=1.0)
        total += d
        per.append(float(d.mean()))
        x = _unmask_step(diffusion, x, phi[k] * logits, times[k], times[k + 1], g)
    return float(total.mean()), per


def diagnosis_rows(net, diffusion, ctx, args) -> list[dict]:
    """Fixed 4-step samplers: their LSD objective (on seed 0's distillation trajectories) next to
    their FD to the teacher, to show what the learners' objective rewards."""
    states = ctx["lsd_teacher"][args.seeds[0]][0]
    out = []
    for name, times, c in DIAGNOSIS:
        t = torch.tensor(times, dtype=torch.float64)
        phi = torch.full((len(times) - 1,), c)
        total, per = lsd_objective(net, diffusion, t, phi, states, seed=1)
        fds = []
        for s in args.seeds:
            g = torch.Generator().manual_seed(eval_seed(s))
            x = sample_masked(net, diffusion, args.n_eval, times=t, coefficients=phi, generator=g)
            fds.append(token_frechet(x, ctx["reference"]))
        out.append({"name": name, "times": list(times), "phi": c, "objective": total,
                    "objective_per_step": per,
                    "fd_teacher": {"median": statistics.median(fds), "min": min(fds),
                                   "max": max(fds)}})
    return out


# -- reports ------------------------------------------------------------------------------------
def rng(stat: dict, spec: str = ".1f") -> str:
    return (f"{format(stat['median'], spec)} [{format(stat['min'], spec)}, "
            f"{format(stat['max'], spec)}]")


def find(rows, method, nfe):
    return next((r for r in rows if r["method"] == method and r["nfe"] == nfe), None)


def headline(res: dict) -> str:
    rows = res["rows"]
    nfe = 4 if find(rows, "teacher", 4) else min(r["nfe"] for r in rows if r["method"] != "data")
    base = find(rows, "teacher", nfe)
    parts = [f"uniform {base['fd_teacher']['median']:.1f}"]
    for m in res["args"]["methods"]:
        r = find(rows, m, nfe)
        if r:
            parts.append(f"{m} {r['fd_teacher']['median']:.1f}")
    floor = res["floor"]["fd_teacher"]["median"]
    better = [m for m in res["args"]["methods"] if find(rows, m, nfe)
              and find(rows, m, nfe)["fd_teacher"]["max"] < base["fd_teacher"]["min"]]
    verdict = (f"{', '.join(better)} beat{'s' if len(better) == 1 else ''} the uniform sampler "
               f"on every seed" if better else
               "no learned sampler beats the uniform sampler on every seed")
    return (f"At {nfe} NFE, median FD to the 64-step teacher: {', '.join(parts)} (floor "
            f"{floor:.1f}); {verdict}.")


def markdown(res: dict) -> str:
    a, rows = res["args"], res["rows"]
    env, t = res["environment"], res["teacher"]
    lines = [
        "# Discrete (masked) diffusion: few-step samplers and LSD",
        "",
        "Written by `benchmarks/discrete/run.py`. Command: `" + res["command"] + "`.",
        "",
        f"Data: the 1797 scikit-learn 8x8 digits as {LENGTH} tokens in 0..{VOCAB - 1}; the "
        f"teacher trains on {N_TRAIN}, the other {res['n_held']} are held out. Teacher: "
        f"MaskedMLP hidden {a['hidden']} depth {a['depth']} ({t['params']} parameters), "
        f"linear schedule, {a['teacher_steps']} steps at batch {a['teacher_batch']} "
        f"(final NELBO {t['final_nelbo']:.3f} nats/token, {t['how']}).",
        "",
        f"Metric: Frechet distance between Gaussians fitted to the 64 pixel values "
        f"(`token_frechet`) of {a['n_eval']} samples to (a) {a['n_eval']} samples of the "
        f"{res['reference_nfe']}-step teacher (fixed seed) and (b) the {res['n_held']} held-out "
        f"digits; TV = mean per-pixel total variation to held-out data. Median [min, max] over "
        f"seeds {', '.join(map(str, a['seeds']))}. Learned samplers: "
        f"`learn_discrete_sampler`, {a['lsd_iterations']} iterations at batch {a['lsd_batch']}, "
        f"lr {a['lsd_lr']}, distilled from the {a['lsd_teacher_steps']}-step teacher on "
        f"{a['lsd_n_train']} trajectories, the iterate chosen by FD of {a['lsd_n_heldout']} "
        f"samples to its own {a['lsd_n_heldout']} teacher samples every {a['lsd_eval_every']} "
        f"iterations (iteration 0 = the uniform sampler is a candidate).",
        "",
        f"Torch {env['torch']}, Python {env['python']}, scikit-learn {env['sklearn']}, "
        f"{env['threads']} thread(s); total wall time {res['seconds'] / 60:.1f} min.",
        "",
        "**" + headline(res) + "**",
        "",
        "## Noise floors",
        "",
        "| pair | FD to teacher | FD to data |",
        "|---|---|---|",
        f"| two {res['reference_nfe']}-step teacher sets ({a['n_eval']} each) | "
        f"{rng(res['floor']['fd_teacher'])} | - |",
        f"| {res['n_held']} training digits vs held-out digits | "
        f"{rng(res['data_floor']['fd_teacher'])} | {rng(res['data_floor']['fd_data'])} |",
        "",
        "## Teacher (uniform-time ancestral sampler)",
        "",
        "| NFE | FD to teacher | FD to data | TV to data |",
        "|---|---|---|---|",
    ]
    for r in sorted((r for r in rows if r["method"] == "teacher"), key=lambda r: r["nfe"]):
        lines.append(f"| {r['nfe']} | {rng(r['fd_teacher'])} | {rng(r['fd_data'])} | "
                     f"{rng(r['tv_data'], '.3f')} |")
    lines += [
        "",
        "## Learned samplers",
        "",
        "`uniform` is the teacher row at that NFE. best it = the selected iteration per seed "
        "(0 = the uniform sampler kept). Times and coefficients of seed "
        f"{a['seeds'][0]}.",
        "",
        "| NFE | sampler | FD to teacher | FD to data | best it | train s | times | coefficients |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for nfe in a["learned_nfe"]:
        base = find(rows, "teacher", nfe)
        if base:
            times = ", ".join(f"{v:.2f}" for v in base["times"])
            lines.append(f"| {nfe} | uniform | {rng(base['fd_teacher'])} | "
                         f"{rng(base['fd_data'])} | - | - | {times} | 1 |")
        for m in a["methods"]:
            r = find(rows, m, nfe)
            if not r:
                continue
            s0 = r["seeds"][0]
            its = ", ".join(str(s["best_iteration"]) for s in r["seeds"])
            secs = statistics.median(s["train_s"] for s in r["seeds"])
            times = ", ".join(f"{v:.2f}" for v in s0["times"])
            coefs = ", ".join(f"{v:.2f}" for v in s0["coefficients"])
            lines.append(f"| {nfe} | {m} | {rng(r['fd_teacher'])} | {rng(r['fd_data'])} | "
                         f"{its} | {secs:.0f} | {times} | {coefs} |")
    if res.get("diagnosis"):
        lines += [
            "",
            "## What the learners' objective rewards (fixed 4-step samplers)",
            "",
            "LSD objective = the distillation loss of `learn_discrete_sampler` (sum over steps of "
            "the KL between the teacher's and the student's p(x_0 | x_t) at their own states, "
            "positions masked in both) for that fixed sampler, on seed "
            f"{a['seeds'][0]}'s {a['lsd_n_train']} distillation trajectories; lower is what the "
            "learners move towards. FD to teacher as above.",
            "",
            "| sampler | times | Phi | LSD objective | FD to teacher |",
            "|---|---|---|---|---|",
        ]
        for r in res["diagnosis"]:
            lines.append(f"| {r['name']} | {', '.join(f'{v:g}' for v in r['times'])} | "
                         f"{r['phi']:g} | {r['objective']:.2f} | {rng(r['fd_teacher'])} |")
    lines += [
        "",
        "`discrete.png`: the first 16 samples of each row's first seed, one row of digits per "
        "sampler (held-out digits on top).",
        "",
    ]
    return "\n".join(lines)


def plot(res: dict, file: FilePath) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("held-out data", res["held_samples"])]
    rows = res["rows"]
    for r in sorted((r for r in rows if r["method"] == "teacher"), key=lambda r: r["nfe"]):
        panels.append((f"teacher {r['nfe']} NFE  FD {r['fd_teacher']['median']:.0f}",
                       r["samples"]))
    for nfe in res["args"]["learned_nfe"]:
        for m in res["args"]["methods"]:
            r = find(rows, m, nfe)
            if r:
                panels.append((f"{m} {nfe} NFE  FD {r['fd_teacher']['median']:.0f}",
                               r["samples"]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 0.75 * len(panels)), squeeze=False)
    for ax, (title, samples) in zip(axes[:, 0], panels, strict=True):
        x = torch.tensor(samples, dtype=torch.float32)[:16].reshape(-1, 8, 8)
        strip = torch.cat(list(x), dim=1)  # (8, 8 n)
        ax.imshow(strip.numpy(), cmap="gray_r", vmin=0, vmax=16, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


# -- main ---------------------------------------------------------------------------------------
def parse(argv) -> Args:
    args = parse_dataclass(Args, argv, __doc__).resolved()
    unknown = [m for m in args.methods if m not in LEARNED]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {sorted(LEARNED)}")
    bad = [n for n in args.learned_nfe if n < 1 or args.lsd_teacher_steps % n
           or n >= args.lsd_teacher_steps]
    if bad:
        raise SystemExit(f"learned NFE {bad} must divide lsd_teacher_steps="
                         f"{args.lsd_teacher_steps} and be smaller")
    if not args.seeds:
        raise SystemExit("give at least one seed")
    return args


def setting_key(args: Args) -> dict:
    """What a reused row must share with this run."""
    skip = {"resume", "report", "retrain", "progress", "out", "threads", "teacher_nfe",
            "learned_nfe", "methods"}
    # through json, as it is stored (tuples become lists)
    return json.loads(json.dumps({k: v for k, v in dataclasses.asdict(args).items()
                                  if k not in skip}))


def environment() -> dict:
    import sklearn

    return {"torch": torch.__version__, "python": platform.python_version(),
            "sklearn": sklearn.__version__, "threads": torch.get_num_threads(),
            "platform": platform.machine()}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    torch.set_num_threads(args.threads)
    out = FilePath(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_file = out / ("discrete_quick.json" if args.quick else "discrete.json")
    if args.report:
        return report(json_file)
    old = {}
    if args.resume and json_file.exists():
        old = json.loads(json_file.read_text())
        if old.get("setting") != setting_key(args):
            print(f"  --resume: {json_file.name} was written with other settings; starting afresh")
            old = {}
    start = time.perf_counter()
    train, held = split_data()
    net, diffusion, info = get_teacher(train, args)
    print(f"teacher {info['how']} (final NELBO {info['final_nelbo']:.4f})", flush=True)
    for p in net.parameters():
        p.requires_grad_(False)

    ref_nfe = max(args.teacher_nfe)
    reference = sample_masked(net, diffusion, args.n_eval, nfe=ref_nfe,
                              generator=torch.Generator().manual_seed(7777))
    ctx = {"reference": reference, "held": held}
    # data floor: as many training digits as held out, against the held-out digits
    data_floor = []
    for s in args.seeds:
        g = torch.Generator().manual_seed(eval_seed(s))
        sub = train[torch.randperm(len(train), generator=g)[: len(held)]]
        data_floor.append(quality(sub, reference, held))
    res = {
        "command": "uv run python benchmarks/discrete/run.py " + " ".join(argv),
        "args": dataclasses.asdict(args),
        "setting": setting_key(args),
        "environment": environment(),
        "teacher": {k: v for k, v in info.items()},
        "n_held": len(held),
        "reference_nfe": ref_nfe,
        "data_floor": summary(data_floor),
        "held_samples": held[:16].tolist(),
        "rows": [],
    }
    old_rows = old.get("rows", [])

    def write():
        res["seconds"] = old.get("seconds", 0.0) + time.perf_counter() - start
        floor_row = find(res["rows"], "teacher", ref_nfe)
        if floor_row:
            res["floor"] = {"fd_teacher": floor_row["fd_teacher"]}
        json_file.write_text(json.dumps(res, indent=1, default=float))

    def add(row):
        res["rows"].append(row)
        print(f"  {row['method']:<8} {row['nfe']:>3} NFE: FD to teacher "
              f"{rng(row['fd_teacher'])}  to data {rng(row['fd_data'])}  "
              f"[{time.perf_counter() - start:.0f} s]", flush=True)
        write()

    for nfe in sorted(set(args.teacher_nfe) | set(args.learned_nfe)):
        reuse = find(old_rows, "teacher", nfe)
        if reuse:
            res["rows"].append(reuse)
            continue
        add(teacher_row(net, diffusion, nfe, ctx, args))
    # the learners' teacher: trajectories and their own held-out reference, one set per seed
    ctx["lsd_teacher"] = {}
    for s in args.seeds:
        g = torch.Generator().manual_seed(100 * s + 10)
        grid = uniform_times(args.lsd_teacher_steps)
        states, _ = teacher_states(net, diffusion, args.lsd_n_train,
                                   steps=args.lsd_teacher_steps, record=grid[:-1], generator=g)
        ref = sample_masked(net, diffusion, args.lsd_n_heldout, nfe=args.lsd_teacher_steps,
                            generator=torch.Generator().manual_seed(100 * s + 11))
        ctx["lsd_teacher"][s] = (states, ref)
    for nfe in args.learned_nfe:
        for m in args.methods:
            reuse = find(old_rows, m, nfe)
            if reuse:
                res["rows"].append(reuse)
                print(f"  {m} {nfe} NFE: reused", flush=True)
                continue
            add(learned_row(m, net, diffusion, nfe, ctx, args))
    res["diagnosis"] = diagnosis_rows(net, diffusion, ctx, args) if 4 in args.learned_nfe else []
    write()
    return report(json_file)


def report(json_file: FilePath) -> int:
    res = json.loads(json_file.read_text())
    md, png = json_file.with_suffix(".md"), json_file.with_suffix(".png")
    md.write_text(markdown(res))
    plot(res, png)
    print(md.read_text())
    print(f"wrote {md}, {json_file.name}, {png.name} ({res['seconds']:.0f} s run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
