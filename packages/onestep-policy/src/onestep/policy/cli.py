"""The `onestep-policy` command: one frozen dataclass per verb, parsed by core's `run_cli`; each
verb runs the Python function of the same name in `onestep.policy.commands`.

Importing this module imports no torch, gymnasium or robosuite, so `onestep-policy --help`
starts at once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from onestep.core.cli import run_cli

DESCRIPTION = """One-step policies for offline RL and robot imitation: make D4RL-style splits of
gymnasium MuJoCo tasks from behaviour policies trained here, and scripted robosuite
demonstrations, as D4RL, Minari or robomimic files; read and check any of them; train a policy
(ofql, dql, fbc, bc, dm1, diffusion-policy) and evaluate it by rollouts.

`onestep-policy COMMAND --help` shows a command's flags."""


@dataclass(frozen=True)
class MakeDatasetArgs:
    """Make a D4RL-style split of a gymnasium task or scripted robot demonstrations.

    Gymnasium tasks (HalfCheetah-v5, Hopper-v5, Walker2d-v5, any Box task): random (uniform
    actions), medium (a partly trained behaviour policy), expert (the trained one),
    medium-replay (the learner's replay buffer up to the medium point), medium-expert (half
    each). The behaviour policy (TD3 or SAC, 64x64) is trained once into --policy-dir and reused.
    Robot tasks (Lift, Can): scripted robosuite demonstrations with success per episode. The
    split's mean return and the random and expert reference returns (for D4RL-style normalised
    scores) go into the file's attributes and a JSON beside it."""

    env: str = ""
    """Task: a gymnasium id (HalfCheetah-v5, Hopper-v5, Walker2d-v5, ...) or Lift or Can
    (required)."""
    quality: str = ""
    """random, medium, expert, medium-replay or medium-expert (gymnasium tasks; required there);
    scripted (robot tasks, the default)."""
    out: str = ""
    """The file to write (d4rl, robomimic), or for minari the datasets root folder (use it as
    MINARI_DATASETS_PATH) (required)."""
    format: str = ""
    """d4rl, minari or robomimic; default d4rl for gymnasium tasks, robomimic for robot tasks."""
    episodes: int = 0
    """Whole episodes to collect (robot tasks: demonstrations, default 200)."""
    transitions: int = 0
    """Transitions to collect (gymnasium tasks; default 1000000 as in D4RL; medium-replay: at
    most this many of the replay buffer)."""
    seed: int = 0
    """Seed of the collection (environment resets, action noise, scripted demos)."""
    policy_dir: str = "runs/policies"
    """Folder of trained behaviour policies: one subfolder per task, learner, steps and seed,
    trained once and reused."""
    policy_seed: int = 0
    """Seed of the behaviour policy's training."""
    agent: str = ""
    """Behaviour learner: td3 or sac; default the task's (tasks.GYM_TASKS, else td3)."""
    train_steps: int = 0
    """Environment steps of the behaviour learner; 0: the task's default (300000)."""
    medium_score: float = 40.0
    """The medium policy is the first evaluation whose normalised score reaches this (0 random,
    100 expert)."""
    action_noise: float = 0.1
    """Gaussian noise (fraction of the action half-range) on the medium and expert actions."""
    dataset_id: str = ""
    """Minari dataset id; default onestep/<task>/<quality>-v0."""
    overwrite: bool = False
    """Replace an existing file or Minari dataset."""
    threads: int = 1
    """CPU threads for torch (64x64 networks run fastest on one)."""
    progress: bool = True
    """Show progress bars."""
    dry_run: bool = False
    """Print the resolved configuration and stop."""


@dataclass(frozen=True)
class InspectArgs:
    """Read a D4RL, Minari or robomimic dataset, check it, and print its size and returns.

    The file is checked against the task it names (or --env): keys, lengths, and observation and
    action widths; a malformed file is refused with one line naming the problem."""

    data: str = ""
    """A D4RL or robomimic hdf5 file, a Minari dataset folder, or a Minari dataset id with
    --root (required)."""
    env: str = ""
    """Check against this task instead of the one the file names."""
    format: str = "auto"
    """auto, d4rl, minari or robomimic."""
    root: str = ""
    """Minari datasets root for a dataset id (default: MINARI_DATASETS_PATH)."""
    json: str = ""
    """Also write the summary to this JSON file."""


@dataclass(frozen=True)
class TrainArgs:
    """Train a policy on a dataset: offline RL (ofql, dql, fbc, bc) or imitation (dm1,
    diffusion-policy).

    The run folder gets run.json (the resolved settings), log.jsonl, checkpoints/ (atomic; --resume
    continues exactly) and the final weights. Each algorithm's paper settings are the defaults;
    --set changes any field of its config."""

    REPEATABLE = ("set",)

    algo: str = ""
    """ofql (one-step flow Q-learning), dql (diffusion Q-learning, 5 steps), fbc (flow
    behaviour cloning), bc (MLP behaviour cloning), dm1 (MeanFlow with dispersive
    regularisation, robot demonstrations) or diffusion-policy (its DDPM / DDIM baseline)
    (required)."""
    data: str = ""
    """A D4RL or robomimic hdf5 file or a Minari dataset folder (required)."""
    out: str = ""
    """Run folder to write (required)."""
    env: str = ""
    """The task (default: the one the dataset names)."""
    steps: int = 0
    """Gradient steps; 0: the algorithm's default."""
    batch_size: int = 0
    """Batch size; 0: the algorithm's default."""
    set: str = ""
    """Overrides of the algorithm's config, "key=value" pairs (e.g. --set eta=0.5 --set
    lr=1e-4); --dry-run shows the fields."""
    seed: int = 0
    resume: bool = False
    """Continue the run in --out from its newest checkpoint."""
    overwrite: bool = False
    """Delete the run in --out and start again."""
    threads: int = 1
    """CPU threads for torch (small MLPs run fastest on one)."""
    progress: bool = True
    """Show progress bars."""
    dry_run: bool = False
    """Print the resolved configuration and stop."""

    OWN_DRY_RUN = True


@dataclass(frozen=True)
class EvalArgs:
    """Evaluate a trained policy by rollouts in its task: normalised score with its 95-percent
    interval over episodes, latency per action (median and p95, batch 1) and network
    evaluations per action."""

    run: str = ""
    """Run folder written by `onestep-policy train` (required)."""
    episodes: int = 10
    """Rollout episodes."""
    seed: int = 0
    """Seed of the first episode's reset (then seed + 1, ...) and of the policy's noise."""
    sampler: str = ""
    """Imitation runs only: "" (the algorithm's default), for diffusion-policy ddpm (all 100
    training steps, ancestral) or ddim (10 steps); dm1 has one sampler (meanflow, one step)."""
    json: str = ""
    """Also write the result to this JSON file."""
    threads: int = 1
    """CPU threads for torch (latency is measured with these)."""
    progress: bool = True
    """Show a progress bar."""


COMMANDS = {
    "make-dataset": (MakeDatasetArgs, "onestep.policy.commands:make_dataset"),
    "inspect": (InspectArgs, "onestep.policy.commands:inspect"),
    "train": (TrainArgs, "onestep.policy.commands:train"),
    "eval": (EvalArgs, "onestep.policy.commands:eval"),
}


def main(argv: list[str] | None = None) -> int:
    return run_cli("onestep-policy", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
