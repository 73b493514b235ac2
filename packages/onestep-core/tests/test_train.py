"""Trainer, LossTask, checkpoints and DDP gradient averaging, on tiny CPU runs."""

import importlib.util
import json
import math
import multiprocessing as mp
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import onestep.core.train.checkpoint as checkpoint_mod
import onestep.core.train.trainer as trainer_mod
from onestep.core.train import (
    EMA,
    CheckpointError,
    LossTask,
    TrainConfig,
    Trainer,
    check_finite,
    load_checkpoint,
    optimizer_step,
    warmup_cosine,
)

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def float32_default():
    """Other test modules may change the default dtype; these runs are float32."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


def make_net(hidden=32, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    layers = [nn.Linear(2, hidden), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, 1))
    return nn.Sequential(*layers)


def make_data(n=256):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=g)
    return x, torch.sin(x[:, :1]) + 0.5 * x[:, 1:]


def mse(model, batch, *, generator):
    x, y = batch
    x = x + 0.01 * torch.randn(x.shape, generator=generator, device=x.device)  # uses the task RNG
    loss = ((model(x) - y) ** 2).mean()
    return loss, {"mse": loss.detach()}


def config(out_dir, **kw):
    base = dict(steps=6, batch_size=16, log_every=1, ckpt_every=0, progress=False, device="cpu")
    return TrainConfig(out_dir=out_dir, **{**base, **kw})


def all_tensors(task):
    return {f"{m}.{k}": v for m, mod in task.modules().items() for k, v in mod.state_dict().items()}


# ------------------------------------------------------------------------------- training


def test_loss_task_learns_logs_and_follows_warmup_cosine(tmp_path):
    base_lr, warmup, total, min_ratio = 1e-2, 5, 60, 0.1
    task = LossTask(
        make_net(),
        mse,
        lr=base_lr,
        warmup=warmup,
        total_steps=total,
        min_lr_ratio=min_ratio,
        ema_decay=0.9,
    )
    x, y = make_data()

    def full_mse(net):
        with torch.no_grad():
            return float(((net(x) - y) ** 2).mean())

    before = full_mse(task.model)
    records = Trainer(config(tmp_path, steps=total, batch_size=32, tensorboard=True)).fit(
        task, (x, y)
    )
    assert full_mse(task.model) < 0.2 * before
    assert full_mse(task.ema.module) < 0.2 * before

    lines = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines == records
    assert [r["step"] for r in lines] == list(range(1, total + 1))
    assert {"loss", "mse", "grad_norm"} <= set(lines[0]["logs"])
    loss = [r["logs"]["loss"] for r in lines]
    assert sum(loss[-10:]) < 0.5 * sum(loss[:10])
    assert list(tmp_path.glob("tb/events.out.tfevents.*"))

    # the LR used at step s: linear warm-up (s+1)/warmup, then cosine down to min_ratio at total
    def expected(s):
        if s < warmup:
            return base_lr * (s + 1) / warmup
        cos = 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        return base_lr * (min_ratio + (1 - min_ratio) * cos)

    lrs = [r["lr"]["model"] for r in lines]
    assert lrs == pytest.approx([expected(s) for s in range(total)], rel=1e-9)
    assert lrs[warmup - 1] == pytest.approx(base_lr)
    assert lrs[-1] < 0.11 * base_lr


def test_global_batch_must_split_evenly(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "init_distributed", lambda device: (1, 3, 1))
    with pytest.raises(ValueError, match="batch_size=8 is not divisible by the world size 3"):
        Trainer(config(tmp_path, batch_size=8))


def test_missing_tensorboard_only_warns(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.warns(UserWarning, match="tensorboard is not installed"):
        Trainer(config(tmp_path, steps=1, tensorboard=True)).fit(
            LossTask(make_net(), mse), make_data()
        )
    assert (tmp_path / "checkpoints/latest").is_file()


def test_warmup_cosine_closed_form():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, warmup=4, total=12, min_ratio=0.25)
    seen = []
    for _ in range(14):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert seen[8] == pytest.approx(2.0 * (0.25 + 0.75 * 0.5))  # half-way through the cosine
    assert seen[12:] == pytest.approx([0.5, 0.5])  # held at min_ratio after `total`


def test_resume_is_bit_identical(tmp_path, monkeypatch):
    def make_task(seed=0):
        net = make_net(dropout=0.2, seed=seed)
        return LossTask(
            net, mse, lr=1e-2, weight_decay=0.01, warmup=2, total_steps=12, ema_decay=0.9
        )

    full = make_task()
    full_logs = Trainer(config(tmp_path / "full", steps=12, ckpt_every=3)).fit(full, make_data())

    Trainer(config(tmp_path / "cut", steps=6, ckpt_every=3)).fit(make_task(), make_data())
    resumed = make_task(seed=123)  # different init: everything must come from the checkpoint
    logs = Trainer(config(tmp_path / "cut", steps=12, ckpt_every=3, resume=True)).fit(
        resumed, make_data()
    )

    a, b = all_tensors(full), all_tensors(resumed)
    assert a.keys() == b.keys() and {k.split(".")[0] for k in a} == {"model", "ema"}
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"resumed run differs in {unequal}"
    assert [r["logs"] for r in logs] == [r["logs"] for r in full_logs[6:]]
    steps = [json.loads(s)["step"] for s in (tmp_path / "cut/log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))
    step6_net = make_net(dropout=0.2, seed=7)
    step6 = load_checkpoint(tmp_path / "cut/checkpoints/step_00000006", {"model": step6_net})
    assert step6["step"] == 6 and not torch.equal(step6_net[0].weight, resumed.model[0].weight)

    # control: without restoring the RNG (dropout, noise, data order) the runs part ways
    monkeypatch.setattr(trainer_mod, "restore_rng", lambda *a, **k: None)
    shutil.rmtree(tmp_path / "cut")
    Trainer(config(tmp_path / "cut", steps=6, ckpt_every=3)).fit(make_task(), make_data())
    no_rng = make_task()
    Trainer(config(tmp_path / "cut", steps=12, ckpt_every=3, resume=True)).fit(no_rng, make_data())
    assert not torch.equal(no_rng.model[0].weight, full.model[0].weight)


# ------------------------------------------------------------------------------- checkpoints


def test_checkpoints_are_atomic_and_pruned(tmp_path, monkeypatch):
    ckpts = tmp_path / "checkpoints"
    task = LossTask(make_net(), mse)
    Trainer(config(tmp_path, steps=10, ckpt_every=2, keep_last=2)).fit(task, make_data())

    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000008", "step_00000010"]
    assert (ckpts / "latest").read_text().strip() == "step_00000010"
    step_dir = ckpts / "step_00000010"
    files = sorted(p.name for p in step_dir.iterdir())
    assert files == ["ema.safetensors", "meta.json", "model.safetensors", "state.pt"]
    meta = json.loads((step_dir / "meta.json").read_text())
    assert (meta["step"], meta["modules"], meta["kind"]) == (10, ["model", "ema"], "teacher")

    # a stale temporary from a crash is cleaned; a save that fails leaves `latest` alone
    (ckpts / ".tmp-step_00000099-crashed").mkdir()
    real_write = checkpoint_mod._write_torch

    def failing_write(path, obj):
        if obj["step"] == 14:
            raise OSError("disk full")
        real_write(path, obj)

    monkeypatch.setattr(checkpoint_mod, "_write_torch", failing_write)
    with pytest.raises(OSError, match="disk full"):
        Trainer(config(tmp_path, steps=14, ckpt_every=2, keep_last=2, resume=True)).fit(
            LossTask(make_net(), mse), make_data()
        )
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert (ckpts / "latest").read_text().strip() == "step_00000012"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000010", "step_00000012"]
    assert load_checkpoint(tmp_path, LossTask(make_net(), mse))["step"] == 12


def test_checkpoint_errors_name_file_and_problem(tmp_path):
    Trainer(config(tmp_path / "run", steps=2)).fit(LossTask(make_net(), mse), make_data())
    good = tmp_path / "run/checkpoints/step_00000002"

    def broken(name, damage):
        d = tmp_path / name / "checkpoints" / "step_00000002"
        shutil.copytree(good, d)
        (d.parent / "latest").write_text(d.name)
        damage(d)
        return d

    def truncate(name):
        def damage(d):
            data = (d / name).read_bytes()
            (d / name).write_bytes(data[: len(data) // 2])

        return damage

    cases = {
        "trunc_weights": (
            truncate("model.safetensors"),
            "model.safetensors is corrupt or truncated",
        ),
        "trunc_state": (truncate("state.pt"), "state.pt is corrupt or truncated"),
        "no_ema": (lambda d: (d / "ema.safetensors").unlink(), "ema.safetensors is missing"),
        "no_meta": (lambda d: (d / "meta.json").unlink(), "meta.json is missing"),
    }
    for name, (damage, message) in cases.items():
        d = broken(name, damage)
        with pytest.raises(CheckpointError, match=message) as err:
            load_checkpoint(d, LossTask(make_net(), mse))
        assert "step_00000002" in str(err.value)
    # the Trainer's resume path reports the same way
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        Trainer(config(tmp_path / "trunc_weights", steps=4, resume=True)).fit(
            LossTask(make_net(), mse), make_data()
        )

    with pytest.raises(CheckpointError) as err:
        load_checkpoint(good, LossTask(make_net(hidden=16), mse))
    msg = str(err.value)
    assert "step_00000002/model.safetensors does not match module 'model'" in msg
    assert "0.weight: expected (16, 2), found (32, 2)" in msg

    with pytest.raises(CheckpointError, match="kind 'teacher' does not match .* 'student'"):
        load_checkpoint(good, LossTask(make_net(), mse, kind="student"))
    with pytest.raises(CheckpointError, match=r"lists modules \['ema'\]"):
        load_checkpoint(good, LossTask(make_net(), mse, ema_decay=None))

    # a dict of modules loads just those weights, e.g. the EMA into a bare network
    net, task = make_net(seed=5), LossTask(make_net(seed=6), mse)
    load_checkpoint(good, {"ema": net})
    load_checkpoint(good, task)
    assert all(map(torch.equal, net.parameters(), task.ema.module.parameters()))


def test_tied_weights_round_trip(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.out = nn.Linear(3, 5, bias=False)
            self.out.weight = self.embed.weight

    a = Tied()
    checkpoint_mod.save_checkpoint(tmp_path, 1, {"net": a})
    b = Tied()
    load_checkpoint(tmp_path, {"net": b})
    assert torch.equal(a.embed.weight, b.embed.weight) and b.out.weight is b.embed.weight


# ------------------------------------------------------------------------------- helpers


def test_nan_loss_raises_naming_the_step(tmp_path):
    calls = []

    def loss_fn(model, batch, *, generator):
        calls.append(1)
        loss = model(batch).pow(2).mean()
        return (loss * float("nan") if len(calls) == 3 else loss), {}

    task = LossTask(make_net(), loss_fn)
    sample = lambda n, g: torch.randn(n, 2, generator=g)  # data as a callable
    with pytest.raises(FloatingPointError, match=r"NaN in training at step 2: loss=nan"):
        Trainer(config(tmp_path, steps=5)).fit(task, sample)
    assert all(torch.isfinite(p).all() for p in task.model.parameters())  # never stepped on NaN

    with pytest.raises(FloatingPointError, match="step 7: b=inf"):
        check_finite({"a": 1.0, "b": float("inf"), "c": torch.tensor(2.0)}, 7)
    assert check_finite({"a": 1.0}, 0) == {"a": 1.0}


def test_optimizer_step_clips_and_skips_nonfinite():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = torch.optim.SGD([w], lr=1.0)
    norm = optimizer_step((w * torch.tensor([3.0, 4.0])).sum(), opt, [w], clip=1.0)
    assert norm == pytest.approx(5.0)  # reported before clipping
    assert torch.allclose(w.detach(), torch.tensor([3.0 - 0.6, 4.0 - 0.8]))
    assert w.grad is None
    before = w.detach().clone()
    assert math.isnan(optimizer_step(w.sum() * float("nan"), opt, [w]))
    assert torch.equal(w.detach(), before)


def test_ema_tracks_the_average():
    net = nn.Linear(2, 2)
    ema = EMA(net, decay=0.75)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(4.0)
    ema.update(net)
    assert torch.allclose(ema.module.weight, start + 1.0)  # 0.75 * w + 0.25 * (w + 4)
    assert not ema.module.weight.requires_grad and not ema.module.training
    other = nn.Linear(2, 2)
    ema.copy_to(other)
    assert torch.equal(other.weight, ema.module.weight)


# ------------------------------------------------------------------------------- DDP


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_worker():
    spec = importlib.util.spec_from_file_location("_ddp_worker", HERE / "_ddp_worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    return worker


def _rank_main(rank, world, port, out):
    """One rank, with the environment torchrun would give it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank))
    os.environ.update(LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    _load_worker().main(out)


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_ddp_gradients_match_single_process(tmp_path):
    # the single-process reference on the full batch
    worker = _load_worker()
    _, ref, ref_records = worker.run(tmp_path / "single")

    # two forked ranks (no fresh torch import, the slow part of torchrun on a small machine)
    port, world = _free_port(), 2
    ctx = mp.get_context("fork")
    out = tmp_path / "ddp"
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, out)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]

    ranks = [torch.load(tmp_path / f"ddp/rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    for step, full in enumerate(ref.grads):
        # each rank got its contiguous half of the same global batch...
        got = torch.cat([r["batches"][step] for r in ranks])
        assert torch.equal(got, ref.batches[step])
        for r in ranks:
            # ...and after the all-reduce holds the full-batch gradient
            for name, g in full.items():
                if name.startswith("unused"):
                    assert g is None and r["grads"][step][name] is None
                else:
                    torch.testing.assert_close(r["grads"][step][name], g, atol=1e-6, rtol=0)
    # logged losses are averaged over ranks: the mean of the halves is the full-batch loss
    for rec, ref_rec in zip(ranks[0]["records"], ref_records, strict=True):
        assert rec["logs"]["loss"] == pytest.approx(ref_rec["logs"]["loss"], abs=1e-6)
    # rank 0 alone wrote the checkpoint, with both ranks' RNG states
    state = torch.load(tmp_path / "ddp/checkpoints/step_00000002/state.pt", weights_only=True)
    assert len(state["rng"]) == 2
