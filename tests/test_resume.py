"""Checkpoints and exact resume: a run interrupted anywhere and re-run with the same output_dir ends with
the same result.json and the same weights as an uninterrupted run, bit for bit on the CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dora import checkpoint, runner
from dora.errors import UserError
from dora.methods import METHODS, Method
from tests.helpers import REPO, compose

# 64 examples / batch 8 = 8 batches per epoch: epochs end at steps 8 and 16 of T = 20
TINY = ["task=rte", "debug=tiny", "task.splits.train=train:0:64", "task.splits.dev=dev:0:32",
        "trainer.batch_size=8", "trainer.max_steps=20", "trainer.checkpoint_every=3", "trainer.eval_every=5"]  # fmt: skip
# prune every 2nd step so that the interruptions below fall between pruning events (T=20: dora prunes at
# 3, 5, 7, 9, 10; adalora masks at 4, 6, 8 and fixes the pattern at 10)
SCHEDULE = {"dora": ["method.prune_interval=2"], "adalora": ["method.delta_t=2"]}
COMPARED = ("metrics", "best", "history", "params", "rank_pattern", "budget_history")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, in this process and in the subprocesses (OMP_NUM_THREADS=1): bit-identical
    results need the same thread count on both sides (CPU reductions split by thread), and on a shared
    machine one thread is much faster than two competing ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Killed(RuntimeError):
    """Stands in for a crash: raised after an optimizer step, before its logs and checkpoint."""


def run_dir(
    tmp: Path, name: str, method: str, data_dir: Path, *extra: str, kill_at=(), monkeypatch=None
) -> Path:
    """Run in-process into tmp/name, raising Killed after each step in ``kill_at`` and re-running."""
    out = tmp / name
    overrides = [*TINY, *SCHEDULE.get(method, []), *extra]
    cfg = compose(f"method={method}", f"data_dir={data_dir}", f"output_dir={out}", *overrides)
    pending = set(kill_at)
    real = runner.after_optimizer_step

    def faulty(run, bar):
        if run.progress.step in pending:
            pending.discard(run.progress.step)
            raise Killed(f"injected at step {run.progress.step}")
        real(run, bar)

    if monkeypatch is not None:
        monkeypatch.setattr(runner, "after_optimizer_step", faulty)
    while True:
        try:
            runner.run(cfg, out)
            return out
        except Killed:
            assert not (out / "result.json").exists()
            assert json.loads((out / "failure.json").read_text())["status"] == "failed"


def assert_same_run(a: Path, b: Path) -> None:
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    for key in COMPARED:
        assert ra.get(key) == rb.get(key), key
    for name in ("trainable.safetensors", "method_state.safetensors"):
        if (a / "adapter" / name).exists() or (b / "adapter" / name).exists():
            ta, tb = load_file(a / "adapter" / name), load_file(b / "adapter" / name)
            assert ta.keys() == tb.keys()
            assert all(torch.equal(ta[k], tb[k]) for k in ta), name


def _methods():
    """Every registered method; those with schedule state (DynDoRA, AdaLoRA) in the default run, the
    stateless ones (same checkpoint path, weights and optimizer only) marked slow."""
    stateful = {n for n in METHODS.names() if METHODS.get(n).cls.state_dict is not Method.state_dict}
    return [pytest.param(n, marks=() if n in stateful else pytest.mark.slow) for n in METHODS.names()]


@pytest.mark.parametrize("method", _methods())
def test_interrupted_twice_then_resumed_equals_uninterrupted(tmp_path, data_dir, monkeypatch, method):
    """Kill at step 7 (resume from the mid-epoch checkpoint at 6, mid-pruning) and at step 9 (resume
    from the epoch-end checkpoint at 8): the result and the weights equal an uninterrupted run's."""
    ref = run_dir(tmp_path, "ref", method, data_dir)
    resumed = run_dir(tmp_path, "resumed", method, data_dir, kill_at=(7, 9), monkeypatch=monkeypatch)
    assert_same_run(ref, resumed)
    assert not (resumed / "failure.json").exists() and not (resumed / "checkpoints").exists()


def test_length_grouped_batches_resume_exactly(tmp_path, data_dir, monkeypatch):
    """trainer.group_by_length: the grouped order is a function of (seed, epoch), so a run killed
    mid-epoch resumes to the same result; and the order really differs from plain shuffling."""
    grouped = ("trainer.group_by_length=true",)
    ref = run_dir(tmp_path, "ref", "dora", data_dir, *grouped)
    resumed = run_dir(tmp_path, "resumed", "dora", data_dir, *grouped, kill_at=(7,), monkeypatch=monkeypatch)
    assert_same_run(ref, resumed)
    plain = run_dir(tmp_path, "plain", "dora", data_dir)
    a, b = (load_file(d / "adapter" / "trainable.safetensors") for d in (plain, ref))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # another batch order, other weights


def test_failure_record_and_kept_checkpoints(tmp_path, data_dir, monkeypatch):
    out = tmp_path / "run"
    cfg = compose(
        "method=lora", f"data_dir={data_dir}", f"output_dir={out}", *TINY, "trainer.keep_checkpoints=2"
    )
    real = runner.after_optimizer_step

    def faulty(run, bar):
        if run.progress.step == 14:
            raise Killed("injected at step 14")
        real(run, bar)

    monkeypatch.setattr(runner, "after_optimizer_step", faulty)
    with pytest.raises(Killed):
        runner.run(cfg, out)
    failure = json.loads((out / "failure.json").read_text())
    assert failure["status"] == "failed" and failure["step"] == 14
    assert failure["error"] == "Killed: injected at step 14" and failure["method"] == "lora"
    # checkpoints at 3, 6, 8 (epoch end), 9, 12: the newest two stay, written completely
    kept = checkpoint.complete(out / "checkpoints")
    assert [checkpoint.step_of(p) for p in kept] == [9, 12]
    assert failure["last_checkpoint"] == str(kept[-1])
    names = {p.name for p in kept[-1].iterdir()}
    assert names == {"trainable.safetensors", "method_state.safetensors", "optimizer.safetensors",
                     "optimizer.json", "scheduler.json", "state.json", "rng-rank0.json", "index.json"}  # fmt: skip
    state = json.loads((kept[-1] / "state.json").read_text())
    assert (
        state["progress"]["step"] == 12
        and state["progress"]["epoch"] == 2
        and state["progress"]["batches"] == 4
    )
    assert [h["step"] for h in state["history"]] == [5, 8, 10]


def test_a_completed_run_is_skipped(tmp_path, data_dir, caplog):
    out = tmp_path / "run"
    cfg = compose("method=bitfit", f"data_dir={data_dir}", f"output_dir={out}", *TINY, "trainer.max_steps=4")
    first = runner.run(cfg, out)
    stamp = (out / "result.json").stat().st_mtime_ns
    with caplog.at_level("WARNING", logger="dora"):
        again = runner.run(cfg, out)
    assert again == first and (out / "result.json").stat().st_mtime_ns == stamp
    assert "this run is complete, skipping it" in caplog.text
    other = compose(
        "method=bitfit", f"data_dir={data_dir}", f"output_dir={out}", *TINY, "trainer.max_steps=5"
    )
    with pytest.raises(
        UserError,
        match=r"holds a completed run of a different configuration \(differs in: trainer.max_steps\)",
    ):
        runner.run(other, out)


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path, data_dir, monkeypatch):
    out = tmp_path / "run"
    cfg = compose("method=bitfit", f"data_dir={data_dir}", f"output_dir={out}", *TINY)
    monkeypatch.setattr(runner, "train", lambda run: (runner.save_checkpoint(run), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        runner.run(cfg, out)
    monkeypatch.undo()
    other = compose("method=bitfit", f"data_dir={data_dir}", f"output_dir={out}", *TINY, "trainer.lr=0.1")
    with pytest.raises(
        UserError,
        match=r"holds checkpoint step-000000 of a different configuration \(differs in: trainer.lr\)",
    ):
        runner.run(other, out)


def test_a_run_folder_in_use_is_refused(tmp_path, data_dir):
    out = tmp_path / "run"
    cfg = compose("method=bitfit", f"data_dir={data_dir}", f"output_dir={out}", *TINY)
    from dora import rundir

    out.mkdir()
    with rundir.exclusive(out), pytest.raises(UserError, match=r"is in use by pid \d+"):
        runner.run(cfg, out)


def test_optimizer_and_rng_round_trip_exactly(tmp_path):
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999))
    sum(p.sum() ** 2 for p in params).backward()
    opt.step()
    checkpoint.save_optimizer(opt, tmp_path)
    twin = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=5.0)
    checkpoint.load_optimizer(twin, tmp_path)
    a, b = opt.state_dict(), twin.state_dict()
    assert a["param_groups"] == b["param_groups"] and b["param_groups"][0]["betas"] == (0.9, 0.999)
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])
    state = checkpoint.rng_state()
    checkpoint.write_json(tmp_path / "rng.json", state)
    expected = torch.rand(5)
    torch.rand(7)
    checkpoint.set_rng_state(checkpoint.read_json(tmp_path / "rng.json"))
    assert torch.equal(torch.rand(5), expected)


def test_sigkill_after_a_checkpoint_then_rerun_equals_uninterrupted(tmp_path, data_dir):
    """The issue's scenario with a real SIGKILL: ``python run.py ... output_dir=OUT`` killed once its
    first checkpoint exists, then the identical command again."""
    longer = ["trainer.max_steps=40", "trainer.checkpoint_every=2"]
    args = [
        sys.executable,
        "run.py",
        "method=dora",
        f"data_dir={data_dir}",
        *TINY,
        *SCHEDULE["dora"],
        *longer,
    ]
    ref = run_dir(tmp_path, "ref", "dora", data_dir, *longer)  # in-process, the same configuration
    out = tmp_path / "killed"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*args, f"output_dir={out}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while (
        not checkpoint.complete(out / "checkpoints") and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "result.json").exists(), "the run finished before it could be killed"
    killed_at = checkpoint.step_of(checkpoint.latest(out / "checkpoints"))
    done = subprocess.run(
        [*args, f"output_dir={out}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from {out / 'checkpoints'}/step-{killed_at:06d}" in (out / "run.log").read_text()
    assert_same_run(ref, out)


def test_resume_mid_epoch_with_gradient_accumulation(tmp_path, data_dir, monkeypatch):
    """grad_accum=2: 4 optimizer steps per epoch; killed at 7, resumed from step 6 (4 micro-batches
    into epoch 2), the accumulation restarts on the same boundary."""
    extra = ("trainer.grad_accum=2", "trainer.max_steps=10")
    ref = run_dir(tmp_path, "ref", "dora", data_dir, *extra)
    resumed = run_dir(tmp_path, "resumed", "dora", data_dir, *extra, kill_at=(7,), monkeypatch=monkeypatch)
    assert_same_run(ref, resumed)
