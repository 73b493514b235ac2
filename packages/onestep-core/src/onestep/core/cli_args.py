"""The arguments of every `onestep` command: one frozen dataclass per command, turned into flags by
`onestep.core.cli` (a field `batch_size` is the flag `--batch-size`; the string under a field is
its help; the first paragraph of a class docstring is the command's one-line summary).

Torch-free on purpose: `onestep --help` and `onestep methods` import only this module, the
parser in cli.py and `method_registry`.

Class attributes that are not fields: `REPEATABLE` names str fields whose flag may be given several
times (joined by spaces); `OWN_DRY_RUN` says the command prints its own --dry-run.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DemoArgs", "TrainArgs", "DistillArgs", "SampleArgs", "EvalArgs", "SearchArgs", "MethodsArgs",
    "SolversArgs",
]


@dataclass(frozen=True)
class DemoArgs:
    """Train a teacher on built-in 2-D data, sample it in a few steps, distil a one-step student
    and report their quality and speed.

    Trains a small teacher on a built-in 2-D distribution, samples it with a chosen solver at a
    few step counts, distils it into a one-step student, and prints each one's distance to
    held-out data and time per sample."""

    data: str = "checkerboard"
    """Built-in distribution: checkerboard, moons, rings, 8gaussians, swissroll."""
    objective: str = "flow"
    """"flow" (rectified-flow velocity, flow matching) or "edm" (EDM path, preconditioned x0)."""
    steps: int = 4000
    """Teacher training steps (2000 at batch 256 leave the checkerboard's squares blurred: SW2
    0.096 at 16 NFE against 0.065)."""
    batch_size: int = 512
    lr: float = 2e-3
    hidden: int = 128
    solver: str = ""
    """Sampler (`onestep solvers` lists them); default: the default sampler of the path at each
    NFE (onestep.core.sampling.default_sampler)."""
    schedule: str = ""
    """Time schedule of the sampler (`onestep solvers` lists them); default: logsnr with
    --solver, else the default sampler's."""
    nfe: tuple[int, ...] = (2, 4, 8, 16)
    """Network evaluations to sample with."""
    method: str = "instaflow"
    """Distillation method for the one-step student (`onestep methods` lists them); "none"
    skips the student."""
    distill_steps: int = 0
    """Distillation steps; 0: the method's toy-scale default."""
    distill_batch_size: int = 256
    """Distillation batch size (the toy-scale configs are sized for 256)."""
    n_samples: int = 4000
    out: str = "runs/demo"
    """Folder for the model, the log and the sample plot."""
    overwrite: bool = False
    """Delete the previous demo in --out and start again (without it, a demo into a folder that
    holds a run is refused)."""
    seed: int = 0
    threads: int = 1
    """CPU threads for torch; networks this small run fastest on one."""
    progress: bool = True
    dry_run: bool = False
    """Print the resolved configuration and stop."""


@dataclass(frozen=True)
class TrainArgs:
    """Train a teacher on vectors from a .npy or .csv file.

    A flow-matching or EDM denoiser (a residual MLP) trained on data of shape (N, D) and saved to
    --out for `onestep distill` and `onestep sample`."""

    data: str = ""
    """.npy or .csv file of shape (N, D): N samples of D numbers (required)."""
    out: str = ""
    """Run folder: the model (model.json, model.safetensors), log.jsonl, checkpoints/ (required)."""
    overwrite: bool = False
    """Delete what is in --out and start again (without it, a fresh run into a folder that holds
    a run is refused; --resume continues it)."""
    objective: str = "flow"
    """"flow" (rectified-flow velocity, flow matching) or "edm" (EDM path, preconditioned x0,
    EDM loss)."""
    steps: int = 4000
    """Training steps (a --resume'd run continues up to this step)."""
    batch_size: int = 256
    lr: float = 2e-3
    """AdamW learning rate, constant after the warm-up (so a run resumed to more steps equals
    one run for that many steps)."""
    warmup: int = 100
    """Linear learning-rate warm-up steps."""
    hidden: int = 128
    """Width of the residual MLP (3 blocks)."""
    ema_decay: float = 0.995
    """EMA decay of the saved weights (0: save the raw weights)."""
    normalize: bool = True
    """Standardise each column (mean 0, std 1) for training; `sample` undoes it."""
    ckpt_every: int = 500
    """Steps between checkpoints (one is always written at the end)."""
    resume: bool = False
    """Continue from the newest checkpoint in --out."""
    seed: int = 0
    threads: int = 1
    """CPU threads for torch; networks this small run fastest on one."""
    progress: bool = True
    """Show progress bars."""
    dry_run: bool = False
    """Print the resolved configuration and stop."""


@dataclass(frozen=True)
class DistillArgs:
    """Distill a saved teacher into a one- or few-step student.

    The teacher is one saved by `onestep train`, the method one of `onestep methods`; the student
    is saved to --out for `onestep sample`."""

    REPEATABLE = ("set",)  # not fields: --set may be given several times
    OWN_DRY_RUN = True  # --dry-run prints the resolved method config too

    teacher: str = ""
    """Folder of a teacher written by `onestep train` (required)."""
    method: str = "instaflow"
    """Distillation method; `onestep methods` lists them."""
    out: str = ""
    """Run folder: the student (model.json and weights), log.jsonl, checkpoints/ (required)."""
    overwrite: bool = False
    """Delete what is in --out and start again (without it, a fresh run into a folder that holds
    a run is refused; --resume continues it)."""
    nfe: int = 0
    """Steps the student is trained to sample in, for methods with such a setting
    (progressive, segment_cd, tdm, dmd2, phased_dmd); 0: the method's default."""
    steps: int = 0
    """Training steps; 0: the method's toy-scale default (`onestep methods` shows it)."""
    batch_size: int = 256
    set: str = ""
    """Overrides of the method's config, "key=value" pairs separated by spaces or ';', e.g.
    --set "lr=1e-3 betas=0.9,0.99"; `onestep methods --method NAME` lists the fields."""
    data: str = ""
    """The teacher's training data (.npy/.csv); required by methods that train on data
    (`onestep methods` marks them), else optional (data-free methods draw only noise)."""
    ckpt_every: int = 500
    """Steps between checkpoints (one is always written at the end)."""
    resume: bool = False
    """Continue from the newest checkpoint in --out."""
    seed: int = 0
    """Seeds the student's initialisation, the training noise and the method's own seeds."""
    threads: int = 1
    progress: bool = True
    dry_run: bool = False
    """Print the resolved configuration and stop."""


@dataclass(frozen=True)
class SampleArgs:
    """Draw samples from a saved teacher or student into a .npy or .csv file.

    A teacher samples with an ODE solver, a student with its own generator; the samples are
    written in data units."""

    model: str = ""
    """Folder of a teacher (`onestep train`) or student (`onestep distill`) (required)."""
    n: int = 1000
    """Number of samples."""
    nfe: int = 0
    """Network evaluations per sample; 0: the student's own (1 for one-step students) or 32 for
    a teacher."""
    solver: str = ""
    """Teachers only: the ODE solver (`onestep solvers` lists them); default: the default
    sampler of the path and NFE (onestep.core.sampling.default_sampler)."""
    schedule: str = ""
    """Teachers only: the time schedule of the solver; default: logsnr with --solver, else the
    default sampler's."""
    out: str = "samples.npy"
    """Output file, .npy or .csv."""
    batch: int = 10000
    """Samples per network call."""
    seed: int = 0
    """Seed of the noise."""
    threads: int = 1
    progress: bool = True
    dry_run: bool = False
    """Print the resolved configuration and stop."""


@dataclass(frozen=True)
class EvalArgs:
    """Compare samples to data by sliced Wasserstein-2, MMD^2 and energy distance.

    MMD^2 uses an RBF mixture with the median bandwidth. Lower is better; all three are 0 for
    identical distributions."""

    samples: str = ""
    """Samples (.npy/.csv, e.g. from `onestep sample`) (required)."""
    data: str = ""
    """Reference data (.npy/.csv) of the same dimension (required)."""
    max_points: int = 2000
    """Random points of each set for MMD and energy distance (quadratic cost); sliced W2 uses up
    to 10x as many."""
    projections: int = 256
    """Random directions of sliced W2."""
    seed: int = 0
    """Seed of the subsets and the directions."""
    json: str = ""
    """Also write the metrics to this JSON file."""
    threads: int = 1
    dry_run: bool = False
    """Print the resolved configuration and stop."""


@dataclass(frozen=True)
class SearchArgs:
    """Search (and optionally learn) a few-step sampler for a saved model.

    The sampler (times, per-step order, prediction and corrector) spends exactly --nfe network
    evaluations and is chosen by its endpoint error to the adaptive RK45 reference on
    calibration noise; --learn then fits its coefficients (LSD, or --lsd-method endpoint).
    Writes a schedule JSON that `onestep.core.sample(..., schedule=FILE)` runs."""

    model: str = ""
    """Folder of a model written by `onestep train` or onestep.core.io.save_model (model.json and
    model.safetensors) (required)."""
    nfe: int = 5
    """Network evaluations the sampler spends."""
    method: str = "evolutionary"
    """evolutionary (USF search space), s3 (the same space, with S^3's learned performance
    predictor), gradient (times by backprop), autodiffusion (times for --solver), or none (no
    search: with --learn, LSD from DPM-Solver++(2M))."""
    solver: str = "dpm++2m"
    """The fixed solver of --method autodiffusion."""
    n_calib: int = 512
    """Calibration noise samples the search and LSD fit."""
    n_eval: int = 1000
    """Held-out noise samples to report the error on (0: skip the report)."""
    iterations: int = 0
    """Generations (evolutionary, autodiffusion) or L-BFGS evaluations (gradient); 0: the
    default."""
    learn: bool = False
    """Then learn the solver's per-step coefficients (learnable sampler distillation, LSD)."""
    learn_times: bool = False
    """With --learn, learn the times as well (LSD+)."""
    lsd_method: str = "lsd"
    """With --learn: lsd (Fu et al. 2025: one scale of the model output per step, every step's
    state matched to the teacher's, Adam) or endpoint (every Taylor multiplier, L-BFGS on the
    endpoint error plus 0.05 x the intermediate ones). Both pick the iterate by its error on a
    held-out quarter of the calibration noise."""
    lsd_iterations: int = 200
    """Adam steps (lsd) or L-BFGS evaluations (endpoint) of --learn."""
    shape: tuple[int, ...] = ()
    """Shape of one sample; () infers it from an MLP's dim or a DiT's input_shape."""
    out: str = "schedule.json"
    """Where to write the schedule JSON."""
    seed: int = 0
    """Seed of the calibration and held-out noise and of the search."""
    threads: int = 0
    """CPU threads for torch; 0: torch's default (one per core)."""
    progress: bool = True
    """Show progress bars."""
    dry_run: bool = False
    """Print the resolved configuration and stop."""


@dataclass(frozen=True)
class MethodsArgs:
    """List the 17 distillation methods, or show one method's config.

    The list gives each method's toy-scale default steps, whether it needs --data, and what it
    is; --method NAME prints that method's resolved toy-scale config as JSON."""

    method: str = ""
    """Show this method's config (the fields `onestep distill --set` accepts)."""
    set: str = ""
    """With --method: overrides to resolve, as in `onestep distill --set`."""


@dataclass(frozen=True)
class SolversArgs:
    """List the sampler names, their aliases and the time schedules.

    The names are what --solver and --schedule of `onestep demo`, `onestep sample` and
    `onestep search-schedule` accept (a schedule may also be a JSON file written by
    `onestep search-schedule`)."""
