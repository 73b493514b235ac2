"""Few-step sampling benchmark: every onestep solver and schedule, the diffusers schedulers and
k-diffusion samplers that apply, and searched / learned schedules (onestep.core.search), on small
teachers, all from the same noise.

    uv run python benchmarks/solvers/run.py            # the full run (~1.5 CPU-hours per seed)
    uv run python benchmarks/solvers/run.py --quick    # a smoke run (solvers_quick.*)
    uv run python benchmarks/solvers/run.py --resume   # continue a killed run
    uv run python benchmarks/solvers/run.py --seeds 3 --resume   # one more seed, keeping 0-2
    uv run python benchmarks/solvers/run.py --report   # rewrite solvers.md / .png from the json

Teachers (cached in benchmarks/results/teachers/, retrained when missing or stale): a discrete VP
eps model (VP.ddpm_linear(1000), time_input="index") and a rectified-flow velocity model, on the
2-D checkerboard and on the 8-D Gaussian mixture gmm_8d (standardised). For each NFE it reports
the RMS endpoint error against the adaptive RK45 reference on held-out noise and the sliced W2 to
held-out data; then the per-step overhead of onestep's dpm++2m against diffusers'
DPMSolverMultistepScheduler with a trivial network, and whether the two agree.

Seeds: the searched (evolutionary, autodiffusion, gradient, s3) and learned (lsd, lsd+, endpoint,
endpoint+) rows at NFE <= 6 are run once per seed of --seeds (default 0, 1, 2): the seed draws
their calibration noise and is the search's own seed. The teachers are trained once, and the
held-out noise, the data and every other row (fixed solvers on fixed schedules, diffusers,
k-diffusion: deterministic, run once) use the fixed --seed, so a row's spread is the calibration
/ search seed's. Each searched / learned row reports the median over its seeds with [min, max];
the target (issue 11: at NFE 4 and 5 the best of lsd, lsd+, endpoint, endpoint+ and s3 at most
0.5x the best anchor's error on every teacher) is judged on the median.

Writes benchmarks/results/solvers.{md,json,png} (a --quick run solvers_quick.*, not committed).
The json holds the per-seed rows ("rows"), the seeded rows' medians ("medians"), the summary and
targets, and the finished units ("done": each teacher's anchors, each (teacher, seed, NFE)'s
searches, the overhead); it is written after every unit, and --resume reuses the units of a json
with the same settings, including those of seeds outside --seeds. Rows without a "seed" (the
single-seed results written before the seeds existed) count as --seed's under --report.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path as FilePath

import torch

from onestep.core import search, solvers
from onestep.core.cli import parse_dataclass
from onestep.core.data import gmm_8d, toy_sample
from onestep.core.denoiser import Denoiser
from onestep.core.io import CheckpointError, load_model, save_model
from onestep.core.losses import DSMLoss, FlowMatchingLoss
from onestep.core.metrics import sliced_wasserstein
from onestep.core.nn import MLP
from onestep.core.paths import VP, RectifiedFlow
from onestep.core.sampling import sample
from onestep.core.schedules import clip_t_max, default_t_min, uniform_logsnr
from onestep.core.toy_metrics import (
    checkerboard_in_squares,
    mixture_log_likelihood,
    mode_coverage,
    rescaled_mixture,
)

ROOT = FilePath(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
REPO = ROOT.parent
N_TRAIN = 1000  # discrete VP steps
ONESTEP_SCHEDULES = ("logsnr", "karras", "uniform", "quadratic")
SEARCH_NFE_MAX = 6


@dataclass(frozen=True)
class Args:
    """Benchmark settings; --quick shrinks everything for a smoke run."""

    quick: bool = False
    """Small budgets everywhere (a few minutes): for checking that the script runs."""
    retrain: bool = False
    """Retrain the teachers even if benchmarks/results/teachers/ holds them."""
    nfe: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20)
    """Network evaluations to compare at."""
    data: tuple[str, ...] = ("checkerboard", "gmm8d")
    """Distributions: 'gmm8d' or any onestep toy (checkerboard, moons, rings, 8gaussians, ...)."""
    n_eval: int = 1000
    """Held-out noise samples every sampler starts from."""
    n_calib: int = 1024
    """Calibration noise samples for the searches and LSD (disjoint from the held-out noise).
    LSD+ overfits 512 (flow-gmm8d, NFE 4: calibration error 0.056, held-out 0.089); at 1024 it
    reaches 0.080 held-out, and 2048 gives no more (0.080) for twice the time."""
    train_steps: int = 2000
    """Teacher training steps (Adam, batch 512, one-cycle learning rate)."""
    hidden: int = 128
    """Teacher MLP width."""
    generations: int = 30
    """Evolutionary / AutoDiffusion generations (population 16)."""
    gradient_steps: int = 80
    """Objective evaluations (L-BFGS) of the gradient search."""
    lsd_steps: int = 200
    """Adam steps of LSD / LSD+, L-BFGS evaluations of the endpoint learner (endpoint /
    endpoint+); each picks its iterate on a held-out quarter of the calibration noise."""
    threads: int = 1
    """torch threads (1 is fastest on a shared 2-core machine)."""
    seed: int = 0
    """Fixed seed of the teachers, the held-out noise and data and the stochastic samplers."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """The seeds of the searched / learned rows (their calibration noise and the search's own
    seed): each such row is the median over them, with the range."""
    resume: bool = False
    """Reuse the finished units (a teacher's anchors; a teacher, seed and NFE's searches) of the
    json when its settings match, so that a killed run continues."""
    report: bool = False
    """Only rewrite the .md and .png from the json."""
    out: str = str(RESULTS)
    """Folder for solvers.md, solvers.json, solvers.png (solvers_quick.* for --quick, so that a
    smoke run never overwrites the results) and the cached teachers."""
    progress: bool = True

    def resolved(self) -> Args:
        if not self.quick:
            return self
        return dataclasses.replace(
            self,
            nfe=(1, 2, 4, 5, 8),
            n_eval=400,
            n_calib=128,
            train_steps=400,
            generations=6,
            gradient_steps=15,
            lsd_steps=15,
        )


def bar(total, desc, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


# -- data and teachers --------------------------------------------------------------------------
def make_data(name: str, n: int, seed: int) -> torch.Tensor:
    """n points of a distribution with zero mean and unit variance per coordinate on average."""
    g = torch.Generator().manual_seed(seed)
    if name == "gmm8d":
        gmm = gmm_8d(0)
        x = gmm.sample(n, generator=g)
        mean, var = gmm.mean().float(), torch.diagonal(gmm.cov()).mean().float()
        return (x - mean) / var.sqrt()
    return toy_sample(name, n, generator=g)


def build_teacher(kind: str, dim: int, hidden: int) -> Denoiser:
    if kind == "vp":
        net = MLP(dim, hidden=hidden, depth=3, time_scale=1.0)
        return Denoiser(net, VP.ddpm_linear(N_TRAIN), prediction="eps", time_input="index")
    return Denoiser(MLP(dim, hidden=hidden, depth=3), RectifiedFlow(), prediction="velocity")


def train_teacher(kind: str, data_name: str, args: Args) -> tuple[Denoiser, float]:
    train = make_data(data_name, 50_000, args.seed + 1)
    den = build_teacher(kind, train.shape[1], args.hidden)
    loss_fn = DSMLoss(target="eps") if kind == "vp" else FlowMatchingLoss()
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.Adam(den.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, 2e-3, total_steps=args.train_steps, pct_start=0.05
    )
    t0 = time.perf_counter()
    b = bar(args.train_steps, f"train {kind}-{data_name}", args.progress)
    for _ in range(args.train_steps):
        batch = train[torch.randint(0, len(train), (512,), generator=g)]
        loss, _ = loss_fn(den, batch, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        b.update(1)
        b.set_postfix(loss=f"{loss.item():.3f}")
    b.close()
    den.eval()
    return den, time.perf_counter() - t0


def get_teacher(kind: str, data_name: str, args: Args) -> tuple[Denoiser, str]:
    suffix = "-quick" if args.quick else ""  # a smoke run keeps the full run's teachers
    folder = FilePath(args.out) / "teachers" / f"{kind}-{data_name}{suffix}"
    want = {"data": data_name, "steps": args.train_steps, "hidden": args.hidden, "seed": args.seed}
    if not args.retrain and (folder / "model.json").exists():
        try:
            den, info = load_model(folder)
            if info.get("extra", {}).get("config") == want:
                return den.requires_grad_(False), f"loaded from {repo_relative(folder)}"
        except CheckpointError as e:  # e.g. the network code changed since it was saved
            print(f"  cached teacher unusable ({e}); retraining")
    den, secs = train_teacher(kind, data_name, args)
    save_model(folder, den, extra={"config": want, "train_seconds": secs})
    return den.requires_grad_(False), f"trained in {secs:.0f} s"


# -- rows ---------------------------------------------------------------------------------------
class Counter(torch.nn.Module):
    """Counts network calls (NFE) of a Denoiser's network."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, *a):
        self.calls += 1
        return self.net(*a)


def counted(den: Denoiser) -> Denoiser:
    return Denoiser(
        Counter(den.model), den.path, prediction=den.prediction, time_input=den.time_input
    )


def row(family, sampler, config, nfe, x, ctx, secs, *, stochastic=False, calls=None, note=""):
    err = search.endpoint_error(x, ctx["ref"]) if torch.isfinite(x).all() else math.inf
    sw2 = (
        sliced_wasserstein(x.double(), ctx["data"], n_projections=128)
        if torch.isfinite(x).all()
        else math.inf
    )
    return {
        "teacher": ctx["name"],
        "family": family,
        "sampler": sampler,
        "config": config,
        "nfe": nfe,
        "nfe_counted": calls,
        "error": err,
        "sw2": sw2,
        **(exact_scores(x, ctx["data_name"]) if torch.isfinite(x).all() else {}),
        "stochastic": stochastic,
        "seconds": secs,
        "note": note,
    }


def exact_scores(x: torch.Tensor, data_name: str) -> dict:
    """The cheap exact measures of onestep.core.toy_metrics: the in-square share on the
    checkerboard; the mean log-likelihood under the true mixture and the share of samples within
    3 sigma of no mode on gmm8d (standardised as make_data does)."""
    if data_name == "checkerboard":
        return {"in_squares": checkerboard_in_squares(x)}
    if data_name == "gmm8d":
        gmm = gmm_8d(0)
        mix = rescaled_mixture(gmm, gmm.mean(), torch.diagonal(gmm.cov()).mean().sqrt())
        return {
            "loglik": mixture_log_likelihood(x, mix),
            "off_mode": mode_coverage(x, mix)["off_mode"],
        }
    return {}


def onestep_rows(ctx, args):
    den, noise = ctx["den"], ctx["noise"]
    names = [n for n in solvers.available() if n != "rk45"]
    out = []
    b = bar(len(names) * len(ONESTEP_SCHEDULES) * len(args.nfe), "onestep", args.progress)
    for name in names:
        spec = solvers.SOLVERS[name]
        for sched in ONESTEP_SCHEDULES:
            for nfe in args.nfe:
                b.update(1)
                cden = counted(den)
                gen = torch.Generator().manual_seed(args.seed + 7)
                try:
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        x = sample(cden, noise, nfe=nfe, solver=name, schedule=sched, generator=gen)
                    secs = time.perf_counter() - t0
                except ValueError as e:  # e.g. a singlestep solver's plan at this NFE
                    out.append(
                        {
                            "teacher": ctx["name"],
                            "family": "onestep",
                            "sampler": name,
                            "config": sched,
                            "nfe": nfe,
                            "error": None,
                            "sw2": None,
                            "note": f"n/a: {e}",
                        }
                    )
                    continue
                out.append(
                    row(
                        "onestep",
                        name,
                        sched,
                        nfe,
                        x,
                        ctx,
                        secs,
                        stochastic=spec.stochastic,
                        calls=cden.model.calls,
                    )
                )
    b.close()
    return out


# -- diffusers ----------------------------------------------------------------------------------
def diffusers_configs(kind: str):
    """(name, factory, stochastic) of the diffusers schedulers that apply to the teacher."""
    import diffusers as D

    if kind == "vp":
        c = dict(
            num_train_timesteps=N_TRAIN,
            beta_start=1e-4,
            beta_end=0.02,
            beta_schedule="linear",
            prediction_type="epsilon",
        )
        return [
            ("DDIM", lambda: D.DDIMScheduler(**c, clip_sample=False), False),
            (
                "DDIM trailing",
                lambda: D.DDIMScheduler(**c, clip_sample=False, timestep_spacing="trailing"),
                False,
            ),
            ("DPMSolverMultistep 2M", lambda: D.DPMSolverMultistepScheduler(**c), False),
            (
                "DPMSolverMultistep 3M",
                lambda: D.DPMSolverMultistepScheduler(**c, solver_order=3),
                False,
            ),
            (
                "DPMSolverMultistep 2M karras",
                lambda: D.DPMSolverMultistepScheduler(**c, use_karras_sigmas=True),
                False,
            ),
            (
                "DPMSolverMultistep 2M lu-lambdas",
                lambda: D.DPMSolverMultistepScheduler(**c, use_lu_lambdas=True),
                False,
            ),
            (
                "DPMSolverMultistep 2M SDE",
                lambda: D.DPMSolverMultistepScheduler(**c, algorithm_type="sde-dpmsolver++"),
                True,
            ),
            (
                "DPMSolverSinglestep 2",
                lambda: D.DPMSolverSinglestepScheduler(**c, solver_order=2),
                False,
            ),
            (
                "DPMSolverSinglestep 3",
                lambda: D.DPMSolverSinglestepScheduler(**c, solver_order=3),
                False,
            ),
            ("UniPC 2 bh2", lambda: D.UniPCMultistepScheduler(**c, solver_order=2), False),
            ("UniPC 3 bh2", lambda: D.UniPCMultistepScheduler(**c, solver_order=3), False),
            (
                "UniPC 2 bh1",
                lambda: D.UniPCMultistepScheduler(**c, solver_order=2, solver_type="bh1"),
                False,
            ),
            (
                "UniPC 2 karras",
                lambda: D.UniPCMultistepScheduler(**c, use_karras_sigmas=True),
                False,
            ),
            ("DEIS 2", lambda: D.DEISMultistepScheduler(**c, solver_order=2), False),
            ("DEIS 3", lambda: D.DEISMultistepScheduler(**c, solver_order=3), False),
            ("SASolver ODE", lambda: D.SASolverScheduler(**c, tau_func=lambda t: 0.0), False),
            ("Heun", lambda: D.HeunDiscreteScheduler(**c), False),
            ("Heun karras", lambda: D.HeunDiscreteScheduler(**c, use_karras_sigmas=True), False),
            ("KDPM2", lambda: D.KDPM2DiscreteScheduler(**c), False),
            ("Euler", lambda: D.EulerDiscreteScheduler(**c), False),
            ("Euler karras", lambda: D.EulerDiscreteScheduler(**c, use_karras_sigmas=True), False),
            ("LMS", lambda: D.LMSDiscreteScheduler(**c), False),
            ("PNDM (PLMS)", lambda: D.PNDMScheduler(**c, skip_prk_steps=True), False),
            ("EulerAncestral", lambda: D.EulerAncestralDiscreteScheduler(**c), True),
            ("KDPM2Ancestral", lambda: D.KDPM2AncestralDiscreteScheduler(**c), True),
            ("DDPM", lambda: D.DDPMScheduler(**c, clip_sample=False), True),
        ]
    f = dict(num_train_timesteps=N_TRAIN)
    flow = dict(
        num_train_timesteps=N_TRAIN,
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        flow_shift=1.0,
    )
    return [
        ("FlowMatchEuler", lambda: D.FlowMatchEulerDiscreteScheduler(**f, shift=1.0), False),
        ("FlowMatchHeun", lambda: D.FlowMatchHeunDiscreteScheduler(**f, shift=1.0), False),
        ("DPMSolverMultistep 2M flow", lambda: D.DPMSolverMultistepScheduler(**flow), False),
        (
            "DPMSolverMultistep 3M flow",
            lambda: D.DPMSolverMultistepScheduler(**flow, solver_order=3),
            False,
        ),
        (
            "DPMSolverSinglestep 2 flow",
            lambda: D.DPMSolverSinglestepScheduler(**flow, solver_order=2),
            False,
        ),
        ("UniPC 2 flow", lambda: D.UniPCMultistepScheduler(**flow, solver_order=2), False),
        ("UniPC 3 flow", lambda: D.UniPCMultistepScheduler(**flow, solver_order=3), False),
        ("DEIS 2 flow", lambda: D.DEISMultistepScheduler(**flow, solver_order=2), False),
        ("SASolver ODE flow", lambda: D.SASolverScheduler(**flow, tau_func=lambda t: 0.0), False),
    ]


def diffusers_model(den: Denoiser, kind: str):
    """The teacher as a diffusers-style network: eps on integer (or fractional) DDPM timesteps
    n = t N - 1, or the flow velocity on timesteps 1000 t."""
    if kind == "vp":
        return lambda x, ts: den.eps(x, (ts.double() + 1.0) / N_TRAIN)
    return lambda x, ts: den.velocity(x, ts.double() / N_TRAIN)


def run_diffusers(make, model, noise, steps, seed, start_scale=None):
    """The standard diffusers loop; returns (x, model calls). `start_scale(scheduler)` replaces
    init_noise_sigma as the scale of the starting noise."""
    sch = make()
    sch.set_timesteps(steps)
    takes_gen = "generator" in inspect.signature(sch.step).parameters
    gen = torch.Generator().manual_seed(seed)
    x = noise * (sch.init_noise_sigma if start_scale is None else start_scale(sch))
    calls = 0
    for ts in sch.timesteps:
        inp = sch.scale_model_input(x, ts)
        out = model(inp, ts.reshape(1).expand(x.shape[0]))
        calls += 1
        kw = {"generator": gen} if takes_gen else {}
        x = sch.step(out.to(x.dtype), ts, x, **kw).prev_sample
    return x, calls


def steps_for(make, nfe: int) -> int | None:
    """The number of inference steps whose timesteps (= model calls) number exactly nfe."""
    for n in range(1, nfe + 2):
        try:
            sch = make()
            sch.set_timesteps(n)
        except Exception:  # some schedulers reject tiny step counts
            continue
        if len(sch.timesteps) == nfe:
            return n
    return None


def diffusers_rows(ctx, args):
    try:
        configs = diffusers_configs(ctx["kind"])
    except ImportError as e:
        print(f"  diffusers rows skipped: {e}")
        return []
    model = diffusers_model(ctx["den"], ctx["kind"])
    out = []
    b = bar(len(configs) * len(args.nfe), "diffusers", args.progress)
    for name, make, stochastic in configs:
        for nfe in args.nfe:
            b.update(1)
            try:
                steps = steps_for(make, nfe)
                if steps is None:
                    raise ValueError(f"no step count gives exactly {nfe} model calls")
                t0 = time.perf_counter()
                with torch.no_grad():
                    x, calls = run_diffusers(make, model, ctx["noise"], steps, args.seed + 7)
                secs = time.perf_counter() - t0
            except Exception as e:  # report what fails, keep benchmarking
                out.append(
                    {
                        "teacher": ctx["name"],
                        "family": "diffusers",
                        "sampler": name,
                        "config": "",
                        "nfe": nfe,
                        "error": None,
                        "sw2": None,
                        "note": f"n/a: {type(e).__name__}: {e}"[:200],
                    }
                )
                continue
            out.append(
                row(
                    "diffusers",
                    name,
                    f"{steps} steps",
                    nfe,
                    x,
                    ctx,
                    secs,
                    stochastic=stochastic,
                    calls=calls,
                )
            )
    b.close()
    return out


# -- k-diffusion --------------------------------------------------------------------------------
KDIFF = {  # sampler: (NFE of n steps to sigma = 0, stochastic)
    "sample_euler": (lambda n: n, False),
    "sample_heun": (lambda n: 2 * n - 1, False),
    "sample_dpm_2": (lambda n: 2 * n - 1, False),
    "sample_lms": (lambda n: n, False),
    "sample_dpmpp_2m": (lambda n: n, False),
    "sample_euler_ancestral": (lambda n: n, True),
    "sample_dpm_2_ancestral": (lambda n: 2 * n - 1, True),
    "sample_dpmpp_2s_ancestral": (lambda n: 2 * n - 1, True),
    "sample_dpmpp_2m_sde": (lambda n: n, True),
    "sample_dpmpp_3m_sde": (lambda n: n, True),
}


def kdiffusion_rows(ctx, args):
    try:
        import k_diffusion as K
    except ImportError as e:
        print(
            f"  k-diffusion rows skipped: k_diffusion is not installed ({e}); the workspace "
            "needs it as a dev dependency (k-diffusion) for these rows"
        )
        return []
    den, path = ctx["den"], ctx["den"].path
    sig_min = path.sigma_ve(torch.tensor(default_t_min(path))).item()
    sig_max = min(80.0, path.sigma_ve(torch.tensor(clip_t_max(path, 1.0))).item())

    class VE(torch.nn.Module):  # k-diffusion's denoiser D(x, sigma) on x = x0 + sigma noise
        def forward(self, x, sigma):
            t = path.t_from_sigma_ve(sigma.double())
            a = path.alpha(t).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
            return den.x0(a * x, t)

    out = []
    for name, (cost, stochastic) in KDIFF.items():
        fn = getattr(K.sampling, name, None)
        if fn is None:
            continue
        for nfe in args.nfe:
            n = next((n for n in range(1, nfe + 1) if cost(n) == nfe), None)
            if n is None:
                continue
            sigmas = K.sampling.get_sigmas_karras(n, sig_min, sig_max, rho=7.0)
            model = Counter(VE())
            torch.manual_seed(args.seed + 7)
            t0 = time.perf_counter()
            try:
                with torch.no_grad():
                    x = fn(model, ctx["noise"] * sigmas[0], sigmas, disable=True)
            except Exception as e:  # e.g. sample_dpmpp_2m_sde fails on a single step
                print(f"  k-diffusion {name} with {n} steps failed: {type(e).__name__}: {e}")
                continue
            out.append(
                row(
                    "k-diffusion",
                    name,
                    f"karras {n} steps",
                    nfe,
                    x,
                    ctx,
                    time.perf_counter() - t0,
                    stochastic=stochastic,
                    calls=model.calls,
                )
            )
    return out


# -- searched and learned -----------------------------------------------------------------------
# the searches and learners of one (teacher, seed, NFE) unit, in the order they run; the + rows
# of each learner start from the best searched schedule on the calibration noise
SEARCHES = ("evolutionary", "autodiffusion", "gradient", "s3")
LEARNED = tuple(m + sfx for m in search.LEARNERS for sfx in ("", "+"))
# the samplers issue 11 puts side by side (LSD in the paper's form, the endpoint learner, each
# with its times-learning + variant, and S^3 with its predictor): the best of them (median over
# the seeds) is held to TARGET_RATIO times the best anchor's error at TARGET_NFE
TARGET_SAMPLERS = ("lsd", "lsd+", "endpoint", "endpoint+", "s3")
TARGET_NFE = (4, 5)
TARGET_RATIO = 0.5


def noise_draw(dim: int, seed: int, args: Args) -> torch.Tensor:
    """n_eval + n_calib standard normal rows: the first n_eval of draw 0 are the held-out noise
    every row starts from; rows n_eval: of draw s are the calibration noise of seed s (so seed
    0's is the single-seed run's, and every seed's is disjoint from the held-out noise)."""
    g = torch.Generator().manual_seed(args.seed + 100 + seed)
    return torch.randn(args.n_eval + args.n_calib, dim, generator=g)


def calibration(ctx: dict, seed: int, args: Args) -> tuple[torch.Tensor, torch.Tensor]:
    """The calibration noise of `seed` and its RK45 endpoints (computed once per run)."""
    cache = ctx.setdefault("calib", {})
    if seed not in cache:
        noise = noise_draw(ctx["den"].model.dim, seed, args)
        with torch.no_grad():
            ref = sample(ctx["den"], noise, nfe=None, solver="rk45")
        cache[seed] = (noise[args.n_eval :], ref[args.n_eval :])
    return cache[seed]


def searched_rows(ctx, args, seed: int, nfe: int):
    """The searched (SEARCHES) and learned (LEARNED) rows of one teacher at one NFE for one seed:
    the calibration noise is seed's, and so is the searches' own seed; the rows are scored on the
    fixed held-out noise. Returns (rows, {sampler: schedule dict})."""
    den = ctx["den"]
    calib, ref_c = calibration(ctx, seed, args)
    out, schedules = [], {}
    trajectories = ctx.setdefault("trajectories", {})

    def trajectory(t0):  # the teacher's RK45 trajectory of the calibration noise from t0
        if (seed, t0) not in trajectories:
            trajectories[seed, t0] = search.teacher_trajectory(den, calib, t0=t0)
        return trajectories[seed, t0]

    def add(method, sched, secs):
        cden = counted(den)
        with torch.no_grad():
            x = sample(cden, ctx["noise"], nfe=nfe, schedule=sched)
        r = row(
            "searched" if method in search.METHODS else "learned",
            method,
            sched.meta.get("solver", ""),
            nfe,
            x,
            ctx,
            secs,
            calls=cden.model.calls,
            note=f"calibration error {sched.meta.get('calibration_error', float('nan')):.4g}"
            + (
                f", held-out {sched.meta['heldout_error']:.4g}"
                if "heldout_error" in sched.meta
                else ""
            ),
        )
        out.append({**r, "seed": seed})
        schedules[method] = sched.to_dict()

    common = dict(nfe=nfe, noise=calib, reference=ref_c, seed=seed, progress=False)
    budget = {"gradient": args.gradient_steps}
    found = []
    for method in SEARCHES:
        t0 = time.perf_counter()
        sched = search.search_schedule(
            den, **common, method=method, iterations=budget.get(method, args.generations)
        )
        add(method, sched, time.perf_counter() - t0)
        found.append(sched)
    # the learned samplers, side by side: LSD (Fu et al. 2025: one scale per step, every step's
    # state matched) and the endpoint learner (every multiplier, endpoint error), from
    # DPM-Solver++(2M) on the logsnr schedule; their + variants (times too) from the best of the
    # searched schedules on the calibration noise
    default = uniform_logsnr(nfe, den.path)  # where sample()'s default starts
    base = min(found, key=lambda s: s.meta["calibration_error"])
    for learner in search.LEARNERS:
        for start in (None, base):
            t0 = time.perf_counter()
            sched = search.learn_sampler(
                den,
                nfe=nfe,
                noise=calib,
                method=learner,
                base=start,
                learn_times=start is not None,
                iterations=args.lsd_steps,
                trajectory=trajectory((default if start is None else start.times)[0].item()),
                progress=False,
            )
            add(sched.meta["method"], sched, time.perf_counter() - t0)
    return out, schedules


# -- overhead and agreement with diffusers -------------------------------------------------------
def overhead(args) -> dict:
    """Median wall time per step of a whole dpm++2m sampling loop (20 steps, batch 16 x 2) with a
    trivial eps network on the DDPM path: onestep's `sample` against diffusers'
    DPMSolverMultistepScheduler (set_timesteps + step); and onestep's on the closed-form
    VP("linear") path, whose alpha and sigma cost less than the DDPM path's interpolation."""
    try:
        import diffusers as D
    except ImportError as e:
        return {"skipped": str(e)}
    steps, repeats = 20, 200 if not args.quick else 20

    def net(x, t):
        return 0.1 * x

    den = Denoiser(net, VP.ddpm_linear(N_TRAIN), prediction="eps", time_input="index")
    smooth = Denoiser(net, VP("linear"), prediction="eps")  # closed-form alpha, sigma
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    sch = D.DPMSolverMultistepScheduler(
        num_train_timesteps=N_TRAIN, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
    )

    def ours():
        sample(den, noise, nfe=steps, solver="dpm++2m")

    def ours_smooth():
        sample(smooth, noise, nfe=steps, solver="dpm++2m")

    def theirs():
        sch.set_timesteps(steps)
        x = noise
        for t in sch.timesteps:
            x = sch.step(net(x, t), t, x).prev_sample

    # interleave single runs, so that load on a shared machine hits all three alike, and take
    # medians: of the per-step times, and of the ratios of runs made back to back
    fns = {"ours": ours, "theirs": theirs, "smooth": ours_smooth}
    ms = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ms[k].append(1e3 * (time.perf_counter() - t0) / steps)
    med = {k: statistics.median(v) for k, v in ms.items()}

    def ratio(a, b):
        return statistics.median(x / y for x, y in zip(ms[a], ms[b], strict=True))

    return {
        "onestep_ms_per_step": med["ours"],
        "diffusers_ms_per_step": med["theirs"],
        "ratio": ratio("ours", "theirs"),
        "onestep_closed_form_path_ms_per_step": med["smooth"],
        "closed_form_ratio": ratio("smooth", "theirs"),
        "steps": steps,
        "repeats": repeats,
    }


def dpmpp_2m_agreement(ctx, args) -> dict:
    """Max relative difference of onestep's dpm++2m and diffusers' DPMSolverMultistepScheduler
    on the diffusers time grid (t = (n + 1) / N, then 0), on the VP teacher and held-out noise,
    with the path built from diffusers' own (float32) betas."""
    try:
        import diffusers as D
    except ImportError as e:
        return {"skipped": str(e)}
    den, noise = ctx["den"], ctx["noise"].double()
    # diffusers keeps alphas_cumprod in float32: its cumulative product over 1000 betas is off by
    # ~1e-5 relative where alpha ~ 0.006, which x0 = (x - sigma eps) / alpha magnifies to ~1e-4.
    # Both sides get the same float64 table here, so that only the solvers are compared; the
    # difference with diffusers' own float32 table is reported too.
    betas = D.DPMSolverMultistepScheduler(
        num_train_timesteps=N_TRAIN, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
    ).betas.double()
    den64 = Denoiser(
        copy.deepcopy(den.model).double(),
        VP.from_betas(betas),
        prediction=den.prediction,
        time_input=den.time_input,
    )
    model = diffusers_model(den64, "vp")

    def make32():
        return D.DPMSolverMultistepScheduler(
            num_train_timesteps=N_TRAIN, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
        )

    def make64():
        sch = make32()
        sch.alphas_cumprod = torch.cumprod(1.0 - betas, 0)
        sch.alpha_t = sch.alphas_cumprod.sqrt()
        sch.sigma_t = (1.0 - sch.alphas_cumprod).sqrt()
        sch.lambda_t = sch.alpha_t.log() - sch.sigma_t.log()
        return sch

    def start(sch):
        return den64.path.sigma(torch.tensor((sch.timesteps[0].double().item() + 1) / N_TRAIN))

    worst = {"float64": 0.0, "float32": 0.0}
    try:
        dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        for nfe in args.nfe:
            if nfe < 2:
                continue
            with torch.no_grad():
                sch = make32()
                sch.set_timesteps(nfe)
                times = torch.cat(
                    [(sch.timesteps.double() + 1) / N_TRAIN, torch.zeros(1, dtype=torch.float64)]
                )
                ours = sample(den64, noise, nfe=nfe, solver="dpm++2m", schedule=times)
                for table, make in (("float64", make64), ("float32", make32)):
                    # the same start: onestep starts at sigma(t_0) noise (the prior at t_0),
                    # diffusers at init_noise_sigma (= 1) noise, 2e-5 apart at t_0 = 1
                    theirs, _ = run_diffusers(make, model, noise, nfe, 0, start_scale=start)
                    diff = ((ours - theirs).norm() / theirs.norm()).item()
                    worst[table] = max(worst[table], diff)
    finally:
        torch.set_default_dtype(dtype)
    return {
        "max_relative_difference": worst["float64"],
        "max_relative_difference_float32_table": worst["float32"],
        "teacher": ctx["name"],
        "dtype": "float64",
    }


# -- seeds --------------------------------------------------------------------------------------
# the families whose rows depend on the seed (the calibration noise and the search's own seed):
# one row per seed, summarised by the median with [min, max]; the others are run once
SEEDED = ("searched", "learned")
# the measures a seeded row holds as the median over its seeds, with [min, max] and per seed
MEASURES = ("error", "sw2", "in_squares", "loglik", "off_mode", "seconds", "nfe_counted")


def with_seeds(rows: list[dict], seed: int) -> list[dict]:
    """rows, each seeded row given a "seed": rows written before the seeds existed (the
    committed single-seed solvers.json) were searched with the run's single `seed`."""
    return [{**r, "seed": seed} if r["family"] in SEEDED and "seed" not in r else r for r in rows]


def merge(rows: list[dict]) -> list[dict]:
    """One row per sampler: the deterministic rows as they are, the per-seed rows of each
    (teacher, family, sampler, NFE) merged into their median (median_row), in the order of their
    first appearance."""
    order, groups = [], {}
    for r in rows:
        if r["family"] not in SEEDED:
            order.append(r)
            continue
        key = (r["teacher"], r["family"], r["sampler"], r["nfe"])
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(r)
    return [x if isinstance(x, dict) else median_row(groups[x]) for x in order]


def median_row(group: list[dict]) -> dict:
    """The median over the seeds of every measure, "range" ([min, max] of each), "per_seed"
    (the values in seed order) and "seeds"."""
    group = sorted(group, key=lambda r: r["seed"])
    first = group[0]
    out = {k: first[k] for k in ("teacher", "family", "sampler", "nfe")}
    out["config"] = " / ".join(dict.fromkeys(r.get("config", "") for r in group))
    out["seeds"] = [r["seed"] for r in group]
    spans, per_seed = {}, {}
    for k in MEASURES:
        if not any(k in r for r in group):
            continue
        vals = [r[k] for r in group if r.get(k) is not None]
        out[k] = statistics.median(vals) if vals else None
        per_seed[k] = [r.get(k) for r in group]
        if vals:
            spans[k] = [min(vals), max(vals)]
    out.update(range=spans, per_seed=per_seed, stochastic=False)
    out["note"] = "; ".join(f"seed {r['seed']}: {r['note']}" for r in group if r.get("note"))
    return out


def fmt(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def spread(r: dict, k: str, spec: str = ".4f") -> str:
    """r[k], followed by [min, max] over the seeds when the row has more than one."""
    v = fmt(r.get(k), spec)
    rg = r.get("range", {}).get(k)
    if rg is None or len(r.get("seeds", ())) < 2:
        return v
    return f"{v} [{fmt(rg[0], spec)}, {fmt(rg[1], spec)}]"


def seeds_text(seeds) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


# -- reports ------------------------------------------------------------------------------------
ANCHOR_FAMILIES = ("onestep", "diffusers", "k-diffusion")


def best(rows, teacher, nfe, families, deterministic=True, samplers=None):
    """The row of least error (the median for seeded rows, so on merged rows) among `families`
    (and `samplers` if given) of `teacher` at `nfe`."""
    cands = [
        r
        for r in rows
        if r["teacher"] == teacher
        and r["nfe"] == nfe
        and r["family"] in families
        and (samplers is None or r["sampler"] in samplers)
        and r.get("error") is not None
        and math.isfinite(r["error"])
        and not (deterministic and r.get("stochastic"))
    ]
    return min(cands, key=lambda r: r["error"]) if cands else None


def label(r):
    return f"{r['family']}:{r['sampler']} {r['config']}".strip()


def found_entry(r, anchor) -> dict:
    """A seeded row in the summary / targets: its median error, [min, max] and seeds, and its
    median's ratio to the anchor's error with the range of the per-seed ratios."""
    e = {"sampler": label(r), "error": r["error"], "seeds": r.get("seeds")}
    if len(r.get("seeds") or ()) > 1 and "error" in r.get("range", {}):
        e["error_range"] = r["range"]["error"]
    if anchor:
        e["ratio"] = r["error"] / anchor["error"]
        if "error_range" in e:
            e["ratio_range"] = [v / anchor["error"] for v in e["error_range"]]
    return e


def summary(rows, teachers, args):
    """Per teacher and NFE, on merged rows: the best anchor, the best searched / learned sampler
    by its median error over the seeds, their ratio (median / anchor), and the default sampler."""
    out = {}
    for name in teachers:
        for nfe in args.nfe:
            anchor = best(rows, name, nfe, ANCHOR_FAMILIES)
            found = best(rows, name, nfe, SEEDED)
            default = next(
                (
                    r
                    for r in rows
                    if r["teacher"] == name
                    and r["nfe"] == nfe
                    and r["family"] == "onestep"
                    and r["sampler"] == "dpmpp_2m"
                    and r["config"] == "logsnr"
                    and r.get("error") is not None
                ),
                None,
            )
            f = found and found_entry(found, anchor)
            out[f"{name}/nfe{nfe}"] = {
                "best_anchor": anchor and {"sampler": label(anchor), "error": anchor["error"]},
                "best_searched": f,
                "default_dpmpp_2m_logsnr": default and default["error"],
                "ratio": f.get("ratio") if f else None,
                "ratio_range": f.get("ratio_range") if f else None,
            }
    return out


def targets(rows, teachers, args) -> dict:
    """Issue 11's solver target, on the medians over the seeds: at each NFE of TARGET_NFE, the
    best of TARGET_SAMPLERS is at most TARGET_RATIO times the best anchor's error, on every
    teacher. Each entry has the numbers behind it and every TARGET_SAMPLERS median."""
    out = {}
    for name in teachers:
        for nfe in TARGET_NFE:
            if nfe not in args.nfe or nfe > SEARCH_NFE_MAX:
                continue
            anchor = best(rows, name, nfe, ANCHOR_FAMILIES)
            found = best(rows, name, nfe, SEEDED, samplers=TARGET_SAMPLERS)
            f = found and found_entry(found, anchor)
            each = {
                r["sampler"]: r["error"]
                for r in rows
                if r["teacher"] == name
                and r["nfe"] == nfe
                and r["sampler"] in TARGET_SAMPLERS
                and r["family"] in SEEDED
            }
            out[f"{name}/nfe{nfe}"] = {
                "best_anchor": anchor and {"sampler": label(anchor), "error": anchor["error"]},
                "best": f,
                "each": each,
                "met": bool(f and "ratio" in f and f["ratio"] <= TARGET_RATIO),
            }
    return out


def markdown(res: dict, rows: list[dict]) -> str:
    """The report of a result (main's json) from its merged rows."""
    args, summ, tg, teachers = res["args"], res["summary"], res["targets"], res["teachers"]
    all_seeds = sorted({s for r in rows for s in r.get("seeds", ())})
    lines = [
        "# Few-step solver benchmark"
        + (" (**--quick smoke run: numbers are meaningless**)" if args["quick"] else ""),
        "",
        "RMS endpoint error against the RK45 reference on held-out noise (lower is better), "
        "and sliced W2 to held-out data, per NFE. `benchmarks/solvers/run.py` writes this.",
        "",
        f"Searched and learned rows: {seeds_text(all_seeds) if all_seeds else 'none yet'} (the "
        "seed of the calibration noise and of the search); each such cell is the median over "
        "its seeds followed by [min, max] over them when there are several, and the targets "
        "are judged on the median. The teachers, the held-out noise, the data and the other "
        f"samplers (run once) use the fixed seed {args['seed']}, so the spread is the "
        f"calibration / search seed's. Total wall time {res['seconds'] / 60:.1f} min.",
        "",
        "## Searched / learned vs the best anchor sampler",
        "",
        "| teacher | NFE | best anchor | error | best searched/learned | seeds | error | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, s in summ.items():
        teacher, nfe = key.split("/nfe")
        a, f = s["best_anchor"], s["best_searched"]
        if f is None or a is None:
            continue
        lines.append(
            f"| {teacher} | {nfe} | {a['sampler']} | {a['error']:.4f} | {f['sampler']} | "
            f"{len(f.get('seeds') or ()) or '-'} | {range_text(f, 'error', '.4f')} | "
            f"{range_text(f, 'ratio', '.2f')} |"
        )
    if tg:
        lines += [
            "",
            f"## Target (on the medians over the seeds): at NFE "
            f"{' and '.join(map(str, TARGET_NFE))} the best of {', '.join(TARGET_SAMPLERS)} "
            f"at most {TARGET_RATIO}x the best anchor's error on every teacher",
            "",
            "| teacher | NFE | best anchor | error | "
            + " | ".join(TARGET_SAMPLERS)
            + " | best | ratio | |",
            "|---|---|---|---|" + "---|" * len(TARGET_SAMPLERS) + "---|---|---|",
        ]
        for key, t in tg.items():
            teacher, nfe = key.split("/nfe")
            a, f = t["best_anchor"], t["best"]
            cells = [fmt(t["each"].get(m)) for m in TARGET_SAMPLERS]
            lines.append(
                f"| {teacher} | {nfe} | {a['sampler'] if a else '-'} | "
                f"{fmt(a and a['error'])} | " + " | ".join(cells) + f" | "
                f"{f['sampler'] if f else '-'} | {range_text(f, 'ratio', '.2f') if f else '-'} | "
                f"{'met' if t['met'] else '**not met**'} |"
            )
        lines += [
            "",
            f"Target {'met' if all(t['met'] for t in tg.values()) else '**not met**'} "
            f"({sum(t['met'] for t in tg.values())} of {len(tg)} teacher / NFE pairs).",
        ]
    ov = res["overhead"]
    lines += ["", "## Overhead and agreement", ""]
    if "ratio" in ov:
        lines.append(
            f"- per-step overhead, trivial network, dpm++2m on the DDPM path: onestep "
            f"{ov['onestep_ms_per_step']:.3f} ms vs diffusers "
            f"{ov['diffusers_ms_per_step']:.3f} ms (ratio {ov['ratio']:.2f}); onestep on the "
            f"closed-form VP('linear') path {ov['onestep_closed_form_path_ms_per_step']:.3f} ms "
            f"(ratio {ov['closed_form_ratio']:.2f}); medians of {ov['repeats']} interleaved runs "
            "of 20 steps, ratios the median of back-to-back pairs"
        )
    ag = res["agreement"]
    if "max_relative_difference" in ag:
        lines.append(
            f"- onestep dpm++2m vs diffusers DPMSolverMultistepScheduler on "
            f"{ag['teacher']}, float64, same start, same float64 alphas_cumprod: max relative "
            f"difference {ag['max_relative_difference']:.2e} (with diffusers' own float32 "
            f"alphas_cumprod: {ag['max_relative_difference_float32_table']:.2e})"
        )
    for note in res.get("notes", []):
        lines.append(f"- {note}")
    for name in teachers:
        lines += [
            "",
            f"## {name}",
            "",
            "Best of each family (deterministic samplers; searched / learned by their median "
            "over the seeds, [min, max] of the error), error / sliced W2:",
            "",
            "| NFE | "
            + " | ".join(
                ["onestep", "diffusers", "k-diffusion", "searched", "learned", "dpm++2m logsnr"]
            )
            + " |",
            "|---" * 7 + "|",
        ]
        for nfe in args["nfe"]:
            cells = []
            for fam in ("onestep", "diffusers", "k-diffusion", "searched", "learned"):
                r = best(rows, name, nfe, (fam,))
                cells.append(
                    f"{spread(r, 'error')} / {fmt(r['sw2'], '.3f')} ({r['sampler']} {r['config']})"
                    if r
                    else "-"
                )
            d = summ[f"{name}/nfe{nfe}"]["default_dpmpp_2m_logsnr"]
            cells.append(fmt(d))
            lines.append(f"| {nfe} | " + " | ".join(cells) + " |")
        side = [r for r in rows if r["teacher"] == name and r["sampler"] in TARGET_SAMPLERS]
        names = [m for m in TARGET_SAMPLERS if any(r["sampler"] == m for r in side)]
        if names:
            lines += [
                "",
                "Learned samplers and S^3 side by side (median error [min, max] over the seeds / "
                "median sliced W2): `lsd`, `lsd+` are LSD as Fu et al. 2025 define it (one "
                "scale per step, every step's state matched to the teacher with equal weight, "
                "Adam); `endpoint`, `endpoint+` every Taylor multiplier on the endpoint error "
                "(L-BFGS); + learns the times, from the best searched schedule (each picks its "
                "iterate on held-out calibration noise); `s3` is USF's S^3, the evolutionary "
                "search with a learned performance predictor choosing what to evaluate.",
                "",
                "| NFE | " + " | ".join(names) + " |",
                "|---" * (len(names) + 1) + "|",
            ]
            for nfe in sorted({r["nfe"] for r in side}):
                by = {r["sampler"]: r for r in side if r["nfe"] == nfe}
                cells = [
                    f"{spread(by[m], 'error')} / {fmt(by[m]['sw2'], '.3f')}" if m in by else "-"
                    for m in names
                ]
                lines.append(f"| {nfe} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "<details><summary>every row</summary>",
            "",
            "| family | sampler | config | NFE | seeds | error | sliced W2 "
            "| in squares / log-lik |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r["teacher"] != name:
                continue
            e = "n/a" if r.get("error") is None else spread(r, "error")
            w = "n/a" if r.get("sw2") is None else fmt(r["sw2"])
            k = "in_squares" if "in_squares" in r else "loglik"
            x = spread(r, k, ".3f") if r.get(k) is not None else "-"
            st = " (stochastic)" if r.get("stochastic") else ""
            lines.append(
                f"| {r['family']} | {r['sampler']}{st} | {r['config']} | {r['nfe']} | "
                f"{len(r['seeds']) if 'seeds' in r else '-'} | {e} | {w} | {x} |"
            )
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def range_text(e: dict, k: str, spec: str) -> str:
    """A summary entry's e[k] (a median) with its e[k + '_range'] when the range is not a point."""
    rg = e.get(f"{k}_range")
    span = f" [{fmt(rg[0], spec)}, {fmt(rg[1], spec)}]" if rg and rg[0] != rg[1] else ""
    return f"{fmt(e.get(k), spec)}{span}"


def plot(rows, teachers, nfes, file):
    """Error against NFE per teacher: the best of each family (searched / learned by their
    median, with [min, max] over the seeds as error bars) and the default sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(teachers), figsize=(5 * len(teachers), 4), squeeze=False)
    for ax, name in zip(axes[0], teachers, strict=True):
        series = {
            "best onestep": ("onestep",),
            "best diffusers": ("diffusers",),
            "best k-diffusion": ("k-diffusion",),
            "searched (best median)": ("searched",),
            "learned (best median)": ("learned",),
        }
        for lab, fams in series.items():
            pts = [(n, best(rows, name, n, fams)) for n in nfes]
            pts = [(n, r) for n, r in pts if r]
            if not pts:
                continue
            xs, ys = [n for n, _ in pts], [r["error"] for _, r in pts]
            spans = [r.get("range", {}).get("error", [r["error"]] * 2) for _, r in pts]
            if any(s[0] != s[1] for s in spans):
                err = [
                    [y - s[0] for y, s in zip(ys, spans, strict=True)],
                    [s[1] - y for y, s in zip(ys, spans, strict=True)],
                ]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=lab)
            else:
                ax.plot(xs, ys, marker="o", label=lab)
        pts = [
            (r["nfe"], r["error"])
            for r in rows
            if r["teacher"] == name
            and r["family"] == "onestep"
            and r["sampler"] == "dpmpp_2m"
            and r["config"] == "logsnr"
            and r.get("error") is not None
        ]
        if pts:
            ax.plot(*zip(*sorted(pts), strict=True), "k--", label="dpm++2m logsnr (default)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel("RMS error to RK45")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


# -- main ---------------------------------------------------------------------------------------
def parse(argv) -> Args:
    args = parse_dataclass(Args, argv, __doc__).resolved()
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds needs one or more distinct seeds, not {list(args.seeds)}")
    return args


def setting_key(args: Args) -> dict:
    """What a reused unit must share with this run (the seeds and the targets are not part of
    it: each (teacher, seed, NFE) and each teacher's anchors are reused or run on their own)."""
    keys = (
        "quick",
        "nfe",
        "n_eval",
        "n_calib",
        "train_steps",
        "hidden",
        "generations",
        "gradient_steps",
        "lsd_steps",
        "seed",
    )
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(args, k)) for k in keys)
    }


def repo_relative(path) -> str:
    """`path` relative to the repository root (results never hold a machine path); a folder
    outside the repository by its name alone."""
    p = FilePath(path).resolve()
    try:
        return p.relative_to(REPO.resolve()).as_posix()
    except ValueError:
        return p.name


def finish(res: dict, rows: list[dict]) -> tuple[dict, list[dict]]:
    """res with its summary and targets computed from the per-seed `rows`; and the merged rows."""
    saved = Args(
        **{
            k: tuple(v) if isinstance(v, list) else v
            for k, v in res["args"].items()
            if k in {f.name for f in dataclasses.fields(Args)}
        }
    )
    merged = merge(rows)
    res = {
        **res,
        "summary": summary(merged, res["teachers"], saved),
        "targets": targets(merged, res["teachers"], saved),
    }
    return res, merged


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    out = FilePath(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "solvers_quick" if args.quick else "solvers"
    json_file = out / f"{stem}.json"
    if args.report:
        return report(json_file)
    old = {}
    if args.resume and json_file.exists():
        old = json.loads(json_file.read_text())
        if old.get("setting") != setting_key(args) or args.retrain:
            print(
                f"  --resume: {json_file.name} was written with other settings (or --retrain);"
                " starting afresh"
            )
            old = {}
    done_old = set(old.get("done", []))
    old_rows, old_schedules = old.get("rows", []), old.get("schedules", {})
    start = time.perf_counter()
    pairs = [(kind, d) for d in args.data for kind in ("vp", "flow")]
    teachers = [f"{kind}-{d}" for kind, d in pairs]
    agreement_teacher = next((t for t in teachers if t.startswith("vp-")), None)
    search_nfe = [n for n in args.nfe if n <= SEARCH_NFE_MAX]
    rows, schedules, done, teacher_info = [], {}, [], dict(old.get("teacher_info", {}))
    state = {"overhead": {}, "agreement": {}}
    ctxs = {}

    def context(kind, data_name) -> dict:
        """The teacher, the held-out noise and its RK45 endpoints, the held-out data."""
        name = f"{kind}-{data_name}"
        if name in ctxs:
            return ctxs[name]
        print(f"[{time.perf_counter() - start:6.0f} s] {name}", flush=True)
        den, how = get_teacher(kind, data_name, args)
        teacher_info[name] = how
        print(f"  teacher {how}")
        noise = noise_draw(den.model.dim, 0, args)
        t0 = time.perf_counter()
        stats = {}
        with torch.no_grad():
            ref = sample(den, noise, nfe=None, solver="rk45", stats=stats)
        print(f"  rk45 reference: {stats['nfe']} NFE, {time.perf_counter() - t0:.0f} s")
        ctxs[name] = {
            "name": name,
            "kind": kind,
            "den": den,
            "noise": noise[: args.n_eval],
            "ref": ref[: args.n_eval],
            "calib": {0: (noise[args.n_eval :], ref[args.n_eval :])},  # seed 0's, same draw
            "data": make_data(data_name, 4000, args.seed + 2).double(),
            "data_name": data_name,
        }
        return ctxs[name]

    def write():
        notes = []
        if not any(r["family"] == "k-diffusion" for r in rows) and any(
            u.endswith("/anchors") for u in done
        ):
            notes.append("k-diffusion rows skipped: k_diffusion is not installed")
        res = {
            "args": {**dataclasses.asdict(args), "out": repo_relative(args.out)},
            "setting": setting_key(args),
            # wall time, summed over the runs a --resume continued
            "seconds": old.get("seconds", 0.0) + time.perf_counter() - start,
            "teachers": teachers,
            "teacher_info": teacher_info,
            "overhead": state["overhead"],
            "agreement": state["agreement"],
            "notes": notes,
            # the finished units: "<teacher>/anchors", "<teacher>/seed<s>/nfe<n>", "overhead"
            "done": done,
        }
        res, merged = finish(res, rows)
        res["medians"] = [r for r in merged if "seeds" in r]  # the seeded rows' medians
        res["rows"] = rows  # the per-seed rows (the deterministic ones once): what --resume reuses
        res["schedules"] = schedules
        json_file.write_text(json.dumps(res, indent=1, default=float))
        (out / f"{stem}.md").write_text(markdown(res, merged))
        return res, merged

    # 1. every teacher's deterministic rows (the anchors), once
    for kind, data_name in pairs:
        name = f"{kind}-{data_name}"
        unit = f"{name}/anchors"
        if unit in done_old:
            rows += [r for r in old_rows if r["teacher"] == name and r["family"] not in SEEDED]
            if name == agreement_teacher:
                state["agreement"] = old.get("agreement", {})
            print(f"  {name} anchors: reused", flush=True)
        else:
            ctx = context(kind, data_name)
            rows.append(row("prior", "noise", "", 0, ctx["noise"], ctx, 0.0))
            for part in (onestep_rows, diffusers_rows, kdiffusion_rows):
                t0 = time.perf_counter()
                rows += part(ctx, args)
                print(f"  {part.__name__}: {time.perf_counter() - t0:.0f} s", flush=True)
            if name == agreement_teacher:
                state["agreement"] = dpmpp_2m_agreement(ctx, args)
        done.append(unit)
        write()

    # 2. the searched and learned rows, one unit per (seed, teacher, NFE), seed-major, so that a
    # cut-short run has every teacher and NFE with as many seeds as it got; finished units of
    # seeds outside --seeds are kept
    other = sorted(
        {int(u.split("/seed")[1].split("/")[0]) for u in done_old if "/seed" in u} - set(args.seeds)
    )
    units = [(s, k, d, n) for s in list(args.seeds) + other for k, d in pairs for n in search_nfe]
    b = bar(len(units), "search units", args.progress)
    for seed, kind, data_name, nfe in units:
        name = f"{kind}-{data_name}"
        unit = f"{name}/seed{seed}/nfe{nfe}"
        b.update(1)
        if unit in done_old:
            rows += [
                r
                for r in old_rows
                if r["teacher"] == name
                and r["family"] in SEEDED
                and r.get("seed") == seed
                and r["nfe"] == nfe
            ]
            schedules.update(
                {
                    k: v
                    for k, v in old_schedules.items()
                    if k.startswith(f"{name}/seed{seed}/") and k.endswith(f"/nfe{nfe}")
                }
            )
            if seed in args.seeds:
                print(f"  {unit}: reused", flush=True)
        elif seed not in args.seeds:
            continue
        else:
            t0 = time.perf_counter()
            new, sch = searched_rows(context(kind, data_name), args, seed, nfe)
            rows += new
            schedules.update({f"{name}/seed{seed}/{m}/nfe{nfe}": v for m, v in sch.items()})
            best_new = min(new, key=lambda r: r["error"])
            print(
                f"  {unit}: {time.perf_counter() - t0:.0f} s, best {best_new['sampler']} "
                f"{best_new['error']:.4f}  [{time.perf_counter() - start:.0f} s]",
                flush=True,
            )
        done.append(unit)
        write()
    b.close()

    # 3. the overhead against diffusers
    if "overhead" in done_old:
        state["overhead"] = old.get("overhead", {})
    else:
        state["overhead"] = overhead(args)
    done.append("overhead")
    res, merged = write()
    plot(merged, teachers, args.nfe, out / f"{stem}.png")
    console(res)
    print(
        f"wrote {stem}.md, {stem}.json, {stem}.png in {repo_relative(out)} in "
        f"{time.perf_counter() - start:.0f} s"
    )
    return 0


def console(res: dict) -> None:
    """The summary table, the targets, overhead and agreement, on the console."""
    print(
        f"\n{'teacher':<20}{'NFE':>4}  {'best anchor':<44}{'error':>9}  "
        f"{'best searched/learned (median)':<32}{'error':>9}{'ratio':>7}  range"
    )
    for key, s in res["summary"].items():
        teacher, nfe = key.split("/nfe")
        a, f = s["best_anchor"], s["best_searched"]
        rg = s.get("ratio_range")
        print(
            f"{teacher:<20}{nfe:>4}  {(a or {}).get('sampler', '-'):<44}"
            f"{(a or {}).get('error', math.nan):>9.4f}  {(f or {}).get('sampler', '-'):<32}"
            f"{(f or {}).get('error', math.nan):>9.4f}"
            f"{s['ratio'] if s['ratio'] is not None else math.nan:>7.2f}"
            + (f"  [{rg[0]:.2f}, {rg[1]:.2f}]" if rg else "")
        )
    for key, t in res["targets"].items():
        f = t["best"]
        print(
            f"target {key}: best of {'/'.join(TARGET_SAMPLERS)} "
            f"{f['sampler'] if f else '-'} ratio {fmt(f and f.get('ratio'), '.2f')} "
            f"(<= {TARGET_RATIO}): {'met' if t['met'] else 'NOT met'}"
        )
    ov, ag = res["overhead"], res["agreement"]
    if "ratio" in ov:
        print(
            f"\noverhead per step (trivial network, dpm++2m): onestep "
            f"{ov['onestep_ms_per_step']:.3f} ms, diffusers {ov['diffusers_ms_per_step']:.3f} "
            f"ms, ratio {ov['ratio']:.2f}; onestep on a closed-form VP path "
            f"{ov['onestep_closed_form_path_ms_per_step']:.3f} ms, ratio "
            f"{ov['closed_form_ratio']:.2f}"
        )
    if "max_relative_difference" in ag:
        print(
            f"dpm++2m vs diffusers (float64): max relative difference "
            f"{ag['max_relative_difference']:.2e}"
        )
    for note in res.get("notes", []):
        print(note)


def report(json_file: FilePath) -> int:
    """The .md and .png of json_file (same stem) from its per-seed rows. Rows written before the
    seeds existed (no "seed" key) count as the single seed's (its args.seed)."""
    res = json.loads(json_file.read_text())
    args = res["args"]
    res.setdefault("teachers", [f"{k}-{d}" for d in args["data"] for k in ("vp", "flow")])
    rows = with_seeds(res["rows"], args["seed"])
    res, merged = finish(res, rows)
    json_file.with_suffix(".md").write_text(markdown(res, merged))
    plot(merged, res["teachers"], args["nfe"], json_file.with_suffix(".png"))
    console(res)
    print(f"wrote {json_file.stem}.md, {json_file.stem}.png from {json_file.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
