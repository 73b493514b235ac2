"""`onestep-image demo`: the image pipeline end to end on the embedded digits, in a few CPU
minutes: a feature net for FD, a class-conditional teacher, its samples at 1, 4 and 35 NFE (the
best of three solvers at each, and a searched schedule at 4), a one-step student, one table, one
picture, one summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time

import torch

from .cli import DemoArgs, DistillArgs, TrainArgs

SOLVERS = ("euler", "heun", "dpm++2m")
"""The teacher rows show the best of these at each NFE (Heun at NFE 1 is Euler)."""
TEACHER_NFE = (1, 4, 35)


def _timed(fn, repeats: int = 3) -> tuple[torch.Tensor, float]:
    """(output, median seconds) of `fn()` over `repeats` runs."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def run_demo(args: DemoArgs) -> dict:
    from onestep.core.runs import check_run_folder, clear_run_folder
    from onestep.core.sampling import sample
    from onestep.core.search import search_schedule

    from . import commands, features
    from .data import load_digits
    from .evaluate import evaluate, noise_floor, sample_features
    from .features import load_features
    from .grid import save_panels
    from .models import TINY_RECIPE

    if (args.steps < 1 or args.distill_steps < 0 or args.n < 0 or 0 < args.n < 20
            or args.search_iterations < 1):
        raise ValueError("need --steps >= 1, --distill-steps >= 0, --search-iterations >= 1 "
                         "and --n 0 or >= 20")
    from onestep.core.distill import get_method

    get_method(args.method)  # an unknown name fails before anything trains
    out = check_run_folder(args.out, overwrite=args.overwrite, can_resume=False)
    clear_run_folder(out, overwrite=args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(dataclasses.asdict(args), indent=1))  # marks the run
    t_start = time.perf_counter()
    common = {"seed": args.seed, "threads": args.threads, "progress": args.progress}

    # 1. the feature net FD is measured in. It trains on 60% of the digits; the other 40% are
    # split into the reference (what every row is measured against) and the floor set (real
    # digits the net never saw, scored like a sample set: what a perfect generator would get).
    # The floor must be unseen: the net's own training digits sit further from the reference in
    # its features than any sample does.
    features.train_features(load_digits(), out / "features", test_fraction=0.4, seed=args.seed,
                            progress=args.progress)
    net, finfo = load_features(out / "features")
    print(f"feature net {finfo['fd_label']}: test accuracy {finfo['test_accuracy']:.4f} on "
          "unseen digits", file=sys.stderr)
    _, held_out = load_digits().split(finfo["split"]["test_fraction"], seed=finfo["split"]["seed"])
    test_part, floor_part = held_out.split(0.5, seed=args.seed)
    n_eval = args.n or len(floor_part)
    ref = sample_features(net, test_part.images)

    # 2. the teacher
    t0 = time.perf_counter()
    recipe = {k_: v for k_, v in TINY_RECIPE.items() if k_ != "steps"}
    commands.train(TrainArgs(data="digits", out=str(out / "teacher"), steps=args.steps,
                             grid_nfe=0, ckpt_every=args.steps, **recipe, **common))
    teacher_s = time.perf_counter() - t0
    kind, den, tinfo = commands.load_any(str(out / "teacher"))
    k = tinfo["extra"]["num_classes"]
    labels = torch.arange(n_eval) % k
    noise = torch.randn(n_eval, *tinfo["extra"]["image_shape"],
                        generator=torch.Generator().manual_seed(args.seed + 1))

    def score(x, seconds):
        # clipped to [-1, 1] as an image writer would; a sampler that diverges (Euler in t on
        # the EDM path at 2-4 steps) scores what its clipped images look like
        r = evaluate(x.clamp(-1, 1), test_part, net, labels_of_samples=labels,
                     reference_features=ref, seed=args.seed, kid_subsets=20)
        return {"fd": r["fd"], "kid": r["kid"]["mean"], "precision": r["precision"],
                "recall": r["recall"], "class_accuracy": r["class_accuracy"],
                "seconds_per_image": seconds / n_eval}

    rows, best = [], {}
    with torch.no_grad():
        for nfe in TEACHER_NFE:
            for solver in SOLVERS if nfe > 1 else ("euler",):
                x, secs = _timed(lambda n=nfe, s=solver: sample(
                    den, noise, nfe=n, solver=s, schedule="karras", cond=labels),
                    repeats=3 if nfe < 35 else 1)
                row = {"model": "teacher", "sampler": f"{solver} karras", "nfe": nfe,
                       **score(x, secs)}
                if nfe not in best or row["fd"] < best[nfe]["fd"]:
                    best[nfe] = row
                    if nfe == 35:
                        teacher_images = x
        rows += [best[n] for n in TEACHER_NFE]
    calib = torch.randn(128, *noise.shape[1:], generator=torch.Generator().manual_seed(7))
    schedule = search_schedule(den, nfe=4, noise=calib, cond=torch.arange(128) % k,
                               iterations=args.search_iterations, population=12, seed=args.seed,
                               progress=args.progress)
    with torch.no_grad():
        x, secs = _timed(lambda: sample(den, noise, nfe=4, solver=None, schedule=schedule,
                                        cond=labels))
    rows.append({"model": "teacher", "sampler": "searched (S^3-style)", "nfe": 4,
                 **score(x, secs)})

    # 3. the student
    t0 = time.perf_counter()
    commands.distill(DistillArgs(teacher=str(out / "teacher"), method=args.method,
                                 out=str(out / "student"), steps=args.distill_steps, set=args.set,
                                 **common))
    student_s = time.perf_counter() - t0
    kind, gen, sinfo = commands.load_any(str(out / "student"))
    student_nfe = sinfo["student"]["nfe"]
    with torch.no_grad():
        student_images, secs = _timed(lambda: gen.generate(noise, labels, nfe=student_nfe))
    rows.append({"model": "student", "sampler": f"{args.method}", "nfe": student_nfe,
                 **score(student_images, secs)})
    floor = noise_floor(floor_part, test_part, net, min(n_eval, len(floor_part)), seed=args.seed,
                        kid_subsets=20)

    # 4. report
    t35 = best[35]["seconds_per_image"]
    for r in rows:
        r["speed_up"] = t35 / r["seconds_per_image"]
    label = finfo["fd_label"]
    print(f"\nteacher: {tinfo['extra']['arch']} {tinfo['extra']['size']}, "
          f"{tinfo['extra']['objective']}, {args.steps} steps in {teacher_s:.0f} s; student: "
          f"{args.method} in {student_s:.0f} s; {n_eval} images per row against "
          f"{len(test_part)} held-out digits")
    print(f"{'model':<9}{'sampler':<22}{'NFE':>4}{label:>16}{'class acc':>10}{'ms/image':>10}"
          f"{'speed-up':>10}")
    print(f"{'real':<9}{'(noise floor)':<22}{'-':>4}{floor['fd']:>16.3f}"
          f"{floor['class_accuracy'] or float('nan'):>10.3f}{'-':>10}{'-':>10}")
    for r in rows:
        print(f"{r['model']:<9}{r['sampler']:<22}{r['nfe']:>4}{r['fd']:>16.3f}"
              f"{r['class_accuracy']:>10.3f}{1e3 * r['seconds_per_image']:>10.3f}"
              f"{r['speed_up']:>9.1f}x")
    student = rows[-1]
    ratio = student["fd"] / best[35]["fd"]
    print(f"student FD / teacher 35-NFE FD: {ratio:.2f}; speed-up {student['speed_up']:.1f}x; "
          f"total {time.perf_counter() - t_start:.0f} s")
    # ten images of each class, one class per column, as the samples' labels are laid out
    rows_shown = min(10, n_eval // k)
    per_class = [torch.nonzero(test_part.labels == c).flatten()[:rows_shown] for c in range(k)]
    real = torch.stack([test_part.images[idx] for idx in per_class], 1).flatten(0, 1)
    show = torch.arange(rows_shown * k)
    save_panels([("real (held out)", real),
                 (f"teacher, {best[35]['sampler']}, 35 NFE", teacher_images[show]),
                 (f"{args.method} student, {student_nfe} NFE", student_images[show])],
                out / "grid.png", nrow=k)
    summary = {
        "teacher_fd": {str(n): best[n]["fd"] for n in TEACHER_NFE},
        "teacher_searched_fd": {"4": rows[3]["fd"]},
        "student_fd": student["fd"],
        "teacher_seconds_per_image": t35,
        "student_seconds_per_image": student["seconds_per_image"],
        "speed_up": student["speed_up"], "student_over_teacher_fd": ratio,
        "floor_fd": floor["fd"], "feature_net": label,
        "feature_net_test_accuracy": finfo["test_accuracy"],
        "rows": rows, "teacher_train_seconds": teacher_s, "student_train_seconds": student_s,
        "total_seconds": time.perf_counter() - t_start, "args": dataclasses.asdict(args),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out / 'grid.png'}, {out / 'summary.json'}; models in {out / 'teacher'} and "
          f"{out / 'student'} (`onestep-image sample --model {out / 'student'} --out x.png`)")
    return summary


__all__ = ["run_demo"]
