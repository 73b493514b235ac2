"""The `onestep-image` command: one frozen dataclass per verb, parsed by core's `run_cli`; each
verb runs the Python function of the same name in `onestep.image.commands`.

Importing this module imports no torch, so `onestep-image --help` starts at once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from onestep.core.cli import run_cli
from onestep.core.cli_args import SearchArgs

DESCRIPTION = """Image teachers and their one-step students: train a teacher on images, sample
it in a few steps, distil it with any onestep method, and measure both in a feature space.

`onestep-image COMMAND --help` shows a command's flags."""


@dataclass(frozen=True)
class DemoArgs:
    """Train a teacher on the embedded digits, distil a one-step student and compare them.

    Trains a small class-conditional UNet teacher on scikit-learn's 8x8 digits, samples it at 1,
    4 and 35 network evaluations (and with a searched schedule at 4), distils it into a one-step
    student, and prints each one's Fréchet distance in a digit classifier's features (FD-digits-
    cnn, with the noise floor of real images), seconds per image and speed-up; writes grid.png,
    summary.json, and the teacher and student as DIR/teacher and DIR/student."""

    out: str = "runs/image-demo"
    """Folder for the models, the feature net, grid.png and summary.json."""
    overwrite: bool = False
    """Delete the previous demo in --out and start again (without it, a demo into a folder that
    holds a run is refused)."""
    steps: int = 1000
    """Teacher training steps (the rest of the tiny UNet's measured digits recipe is fixed:
    batch 64, lr 5e-3, 100 warm-up steps, EMA 0.995)."""
    method: str = "dmd"
    """Distillation method for the one-step student (`onestep-image methods` lists them). DMD
    (distribution matching + ODE-pair regression) measured best of dmd, cd and progressive at
    600 steps on this teacher: FD 2.82 vs 3.77 (cd, 1 step) and 2.84 (progressive, still 16
    steps), teacher at 35 NFE 2.90."""
    distill_steps: int = 500
    """Distillation steps; 0: the method's image-scale default (minutes to hours)."""
    set: str = ""
    """Overrides of the method's config, "key=value" pairs (as in `distill --set`)."""
    search_iterations: int = 12
    """Generations of the 4-NFE schedule search (population 12)."""
    n: int = 0
    """Images per table row (class-balanced, the same noise for every row); 0: as many as the
    noise floor's set of unseen real digits (359), so that every FD is at the same N."""
    seed: int = 0
    threads: int = 2
    """CPU threads for torch."""
    progress: bool = True
    """Show progress bars."""
    dry_run: bool = False
    """Print the resolved configuration and stop."""


@dataclass(frozen=True)
class TrainArgs:
    """Train an image teacher (a class-conditional UNet or DiT, EDM or flow matching).

    Label dropout trains the null class for classifier-free guidance; the EMA weights are saved
    to --out in core's model format, with a PNG grid of samples at each checkpoint in
    --out/grids."""

    data: str = "digits"
    """Images: digits (embedded), fashion-mnist, mnist, cifar10 (with --data-root), or a path
    (IDX file, MNIST or CIFAR-10 folder, or a folder of images with --image-size)."""
    out: str = ""
    """Run folder: the teacher (model.json, model.safetensors), log.jsonl, checkpoints/, grids/
    (required)."""
    overwrite: bool = False
    """Delete what is in --out and start again (without it, a fresh run into a folder that holds
    a run is refused; --resume continues it)."""
    data_root: str = ""
    """Folder of the named data set's files (mnist, cifar10; fashion-mnist defaults to the Debian
    dataset-fashion-mnist folder)."""
    image_size: int = 0
    """Side of the square crops of a folder of images."""
    arch: str = "unet"
    """Network: unet or dit."""
    objective: str = "edm"
    """"edm" (EDM path, Karras preconditioning, x0 prediction) or "flow" (rectified flow)."""
    size: str = "tiny"
    """Network preset: tiny (8x8 on a CPU), small (28x28 on a CPU), base (for a GPU)."""
    conditional: bool = True
    """Condition on the class labels (with label dropout for guidance) when the data has them."""
    label_dropout: float = 0.1
    """Probability of training a sample with the null label (for classifier-free guidance)."""
    steps: int = 3000
    """Training steps (a --resume'd run continues up to this step)."""
    batch_size: int = 64
    lr: float = 2e-3
    """AdamW learning rate, constant after the warm-up."""
    warmup: int = 100
    """Linear learning-rate warm-up steps."""
    ema_decay: float = 0.995
    """EMA decay of the saved weights."""
    ckpt_every: int = 500
    """Steps between checkpoints and sample grids (one is always written at the end)."""
    grid_nfe: int = 35
    """Network evaluations (Heun, Karras steps) of the checkpoint grids; 0: no grids."""
    resume: bool = False
    """Continue from the newest checkpoint in --out."""
    seed: int = 0
    threads: int = 2
    """CPU threads for torch."""
    progress: bool = True
    """Show progress bars."""
    dry_run: bool = False
    """Print the resolved configuration and stop."""


@dataclass(frozen=True)
class SampleArgs:
    """Draw images from a saved image teacher or student into a .npz file or a .png grid.

    A teacher samples with a core solver (any of `onestep solvers`, or a schedule searched by
    `onestep-image search-schedule`) and optional classifier-free guidance; a student with its own
    generator."""

    model: str = ""
    """Folder of a teacher (`onestep-image train`, or a local diffusers UNet2DModel or pipeline
    folder) or student (`onestep-image distill`) (required)."""
    out: str = "samples.npz"
    """Output: .npz (images in [-1, 1], labels) or .png (a grid)."""
    n: int = 64
    """Number of images."""
    nfe: int = 0
    """Network evaluations per image; 0: the student's own, or 35 for a teacher."""
    solver: str = ""
    """Teachers only: the ODE solver (default heun)."""
    schedule: str = ""
    """Teachers only: a schedule name (karras, logsnr, uniform, ...) or a schedule JSON file
    from search-schedule (default karras)."""
    guidance: float = 1.0
    """Classifier-free guidance scale w (1: none), for teachers and for students distilled with
    `--set guidance_range=LO,HI` (one network for every w)."""
    labels: str = "balanced"
    """Class labels of a conditional model: "balanced" (0, 1, ..., one class per grid column),
    a comma-separated list repeated to --n, or "none" (the null class)."""
    batch: int = 256
    """Images per network call."""
    compile: bool = False
    """torch.compile the teacher's or student's network before sampling; it compiles on the
    first batch (on a CPU that needs a C++ compiler and can take a minute or more) and the
    reported time per image excludes it."""
    seed: int = 0
    """Seed of the noise."""
    threads: int = 2
    progress: bool = True
    dry_run: bool = False
    """Print the resolved configuration and stop."""


@dataclass(frozen=True)
class ExportArgs:
    """Export a one- or few-step student as one ONNX or TorchScript file: (noise, labels) -> images.

    The file holds the student's whole sampling loop at --nfe steps, with a free batch size, and
    describes itself (image shape, classes, NFE, method); before it is written its output is
    checked against the student's. A student that draws fresh noise at each step is exported at
    one step only. ONNX needs onestep-core's `export` extra (onnx, onnxruntime)."""

    model: str = ""
    """Folder of a student written by `onestep-image distill` (required)."""
    format: str = "onnx"
    """onnx (run it with onnxruntime) or torchscript (torch.jit.load)."""
    out: str = ""
    """The file to write, e.g. student.onnx (required)."""
    nfe: int = 0
    """Steps of the exported sampler; 0: the student's own."""
    threads: int = 2
    dry_run: bool = False
    """Print the resolved configuration and stop."""


@dataclass(frozen=True)
class DistillArgs:
    """Distill a saved image teacher into a one- or few-step student with any onestep method.

    Methods that train on data use the teacher's data set (or --data); the others draw noise and
    class labels only. The student is saved to --out in core's format."""

    REPEATABLE = ("set",)
    OWN_DRY_RUN = True

    teacher: str = ""
    """Folder of a teacher written by `onestep-image train`, or a local diffusers UNet2DModel or
    pipeline folder (DDPM/DDIM or flow-matching scheduler) (required)."""
    method: str = "progressive"
    """Distillation method; `onestep-image methods` lists them."""
    out: str = ""
    """Run folder: the student, log.jsonl, checkpoints/ (required)."""
    overwrite: bool = False
    """Delete what is in --out and start again (without it, a fresh run into a folder that holds
    a run is refused; --resume continues it)."""
    nfe: int = 0
    """Steps the student is trained to sample in, for methods with such a setting; 0: the
    method's default."""
    steps: int = 0
    """Training steps; 0: the method's image-scale default."""
    batch_size: int = 64
    set: str = ""
    """Overrides of the method's config, "key=value" pairs; `onestep-image methods --method NAME`
    lists the fields."""
    data: str = ""
    """Images for methods that train on data; default: the teacher's data set."""
    data_root: str = ""
    """Folder of the data set's files (as for train)."""
    ckpt_every: int = 500
    """Steps between checkpoints (one is always written at the end)."""
    resume: bool = False
    """Continue from the newest checkpoint in --out."""
    seed: int = 0
    threads: int = 2
    progress: bool = True
    dry_run: bool = False
    """Print the resolved configuration and stop."""


@dataclass(frozen=True)
class TrainFeaturesArgs:
    """Train the classifier whose features `eval` measures distances in (FD-<data>-cnn).

    It is trained on a split of the data set and saved with its held-out accuracy; `eval` uses
    the held-out split as its reference."""

    data: str = "digits"
    """Images with labels (as for train)."""
    out: str = ""
    """Folder for features.json and features.safetensors (required)."""
    overwrite: bool = False
    """Delete what is in --out and start again (without it, a folder that holds a run is
    refused)."""
    data_root: str = ""
    """Folder of the data set's files (as for train)."""
    image_size: int = 0
    """Side of the square crops of a folder of images."""
    steps: int = 500
    batch_size: int = 64
    seed: int = 0
    threads: int = 2
    progress: bool = True
    dry_run: bool = False
    """Print the resolved configuration and stop."""


@dataclass(frozen=True)
class EvalArgs:
    """Measure samples against real images in a trained classifier's features.

    Reports FD and KID in its features (FD-<net>), precision/recall and the entropy of the
    predicted labels (mode coverage), beside the noise floor: real training images against the
    same reference at the same N."""

    samples: str = ""
    """Samples: .npz or .npy from `onestep-image sample` (required)."""
    features: str = ""
    """Folder of a feature net from `onestep-image train-features` (required)."""
    data: str = ""
    """The real images; default: the data set the feature net was trained on."""
    data_root: str = ""
    """Folder of the data set's files (as for train)."""
    json: str = ""
    """Also write the results to this JSON file."""
    seed: int = 0
    """Seed of the noise-floor subset and KID's subsets."""
    threads: int = 2
    dry_run: bool = False
    """Print the resolved configuration and stop."""


@dataclass(frozen=True)
class MethodsArgs:
    """List the distillation methods with their image-scale steps, or one method's config."""

    method: str = ""
    """Show this method's image-scale config (the fields `distill --set` accepts)."""


COMMANDS = {
    "demo": (DemoArgs, "onestep.image.commands:demo"),
    "train": (TrainArgs, "onestep.image.commands:train"),
    "sample": (SampleArgs, "onestep.image.commands:sample"),
    "export": (ExportArgs, "onestep.image.commands:export"),
    "distill": (DistillArgs, "onestep.image.commands:distill"),
    "train-features": (TrainFeaturesArgs, "onestep.image.commands:train_features"),
    "eval": (EvalArgs, "onestep.image.commands:evaluate"),
    "search-schedule": (SearchArgs, "onestep.image.commands:search_schedule"),
    "methods": (MethodsArgs, "onestep.image.commands:methods"),
}


def main(argv: list[str] | None = None) -> int:
    return run_cli("onestep-image", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
