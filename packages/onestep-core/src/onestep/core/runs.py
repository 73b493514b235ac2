"""Run folders and command-line errors, shared by every onestep command line (core and domains).

A run folder holds what one training run writes: the model (`model.json` + weights), `run.json`,
`log.jsonl` and `checkpoints/`. The rule for a command that writes one (`check_run_folder`):
- a fresh run into a folder that holds a run is refused; `--resume` continues it and
  `--overwrite` deletes it first (only once every other argument has been checked);
- `--resume` with no checkpoint to continue from is refused, not restarted;
- a folder that holds files but no run is never deleted.

`run_command` runs a command function and turns user errors (ValueError, any OSError, a run that
turned non-finite) into one line on stderr and exit code 2.

Nothing here imports torch, so command lines start fast.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from pathlib import Path

__all__ = ["RUN_FILES", "RunFolderError", "check_run_folder", "checkpoint_steps",
           "clear_run_folder", "describe_os_error", "holds_run", "run_command"]

RUN_FILES = ("model.json", "run.json", "log.jsonl", "checkpoints")
"""Entries whose presence makes a folder a run folder."""

_STEP_DIR = re.compile(r"^step_(\d+)$")


class RunFolderError(ValueError):
    """An output folder cannot be used as asked (it holds a run, or no run to resume)."""


def holds_run(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds (part of) a run: a model, run.json, log.jsonl or checkpoints/."""
    folder = Path(folder)
    return folder.is_dir() and any((folder / name).exists() for name in RUN_FILES)


def checkpoint_steps(folder: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints (step directories with meta.json) in `folder`."""
    root = Path(folder) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir()
                  if (m := _STEP_DIR.match(p.name)) and (p / "meta.json").is_file())


def check_run_folder(out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
                     flag: str = "--out", can_resume: bool = True) -> Path:
    """Check that a run may be written to `out` as asked; returns it as a Path.

    `can_resume`: whether the command has --resume (the message offers it only then).
    Call it before any work; call `clear_run_folder` (on --overwrite) once everything else has
    been checked, so that a mistyped argument never costs the old run.
    """
    out = Path(out)
    if resume and overwrite:
        raise RunFolderError("--resume continues the run in --out and --overwrite deletes it: "
                             "pass one of them")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{flag} {out} is a file; expected a folder")
    if resume:
        if not checkpoint_steps(out):
            where = "does not exist" if not out.exists() else "holds no checkpoint"
            raise RunFolderError(f"--resume: {out} {where}, so there is no run to continue; "
                                 "start a fresh run without --resume")
        return out
    if out.is_dir() and any(out.iterdir()):
        if not holds_run(out):
            raise RunFolderError(f"{flag} {out} holds files but no onestep run; choose an empty "
                                 "or new folder")
        if not overwrite:
            steps = checkpoint_steps(out)
            what = f"a run (checkpoint at step {steps[-1]})" if steps else "a run"
            resume_hint = "continue it with --resume, " if can_resume else ""
            raise RunFolderError(f"{flag} {out} already holds {what}; {resume_hint}delete it "
                                 f"and start again with --overwrite, or choose another {flag}")
    return out


def clear_run_folder(out: str | os.PathLike, *, overwrite: bool) -> None:
    """On --overwrite, delete the run in `out` (checked by `check_run_folder`)."""
    out = Path(out)
    if overwrite and holds_run(out):
        shutil.rmtree(out)
        print(f"--overwrite: deleted the previous run in {out}", file=sys.stderr)


# -- errors ---------------------------------------------------------------------------------------
def describe_os_error(e: OSError) -> str:
    """One line naming the path and the problem of a filesystem error."""
    path = e.filename if e.filename is not None else ""
    if e.filename2 is not None:
        path = f"{path} -> {e.filename2}"
    problem = {
        errno.EEXIST: "exists and is not a folder, so nothing can be written inside it",
        errno.ENOTDIR: "a part of this path is a file, not a folder",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.ENOSPC: "no space left on the device",
        errno.ENOENT: "no such file or folder",
        errno.EISDIR: "is a folder; expected a file",
    }.get(e.errno, e.strerror or str(e))
    if isinstance(e, FileExistsError) and path:
        problem = "exists and is not a folder, so nothing can be written inside it"
    return f"{path}: {problem}" if path else problem


def run_command(prog: str, fn, args) -> int:
    """Run `fn(args)`; a user error prints "PROG: error: ..." (one line) and returns 2."""
    try:
        fn(args)
    except FloatingPointError as e:  # outside a training run (inside, the CLI says more)
        return _fail(prog, f"non-finite values: {e}")
    except BrokenPipeError:  # the reader went away (`onestep methods | head`): stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except OSError as e:
        if isinstance(e, FileNotFoundError) and e.filename is None:
            return _fail(prog, str(e))  # our own FileNotFoundError("... : no such file")
        return _fail(prog, describe_os_error(e))
    except ValueError as e:
        return _fail(prog, str(e))
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    return 0


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2
