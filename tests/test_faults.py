"""Fault injection (``make test-faults``; marker ``faults``, not in the default run: about 10 minutes).

Every case ends either with the result of an uninterrupted run (same metrics, history, rank pattern and
weights, bit for bit on the CPU) or with one clear ``error:`` line, and no file that is not the run's
own is touched (a neighbour folder, a note in the run folder, a foreign file in its checkpoints/).

* kills: SIGKILL at random points (random times, and the N-th call of a checkpoint or final-output
  writer, N drawn at random), then the same command again until it succeeds;
* damage: the newest checkpoint(s) truncated, emptied, a byte flipped, a file removed, the index garbled;
* a full disk: the run on a small tmpfs (mounted when this process may; skipped otherwise), then the
  same command once space is back;
* races: two starts on one folder at random offsets.

The tally (cases tried, identical results, clear lines) is printed at the end of the session.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dora import checkpoint, runner
from tests.helpers import REPO, compose, run_cli
from tests.test_resume import assert_same_run

pytestmark = pytest.mark.faults

ARGS = ["task=rte", "debug=tiny", "method=dora", "task.splits.train=train:0:64", "task.splits.dev=dev:0:16",
        "trainer.batch_size=8", "trainer.max_steps=12", "trainer.checkpoint_every=1", "method.prune_interval=2"]  # fmt: skip
ENV = os.environ | {"OMP_NUM_THREADS": "1"}
TALLY: dict[str, dict[str, int]] = {}  # kind -> cases, identical results, clear lines, kills that fired
rng = random.Random(16)

# (function, call number range, when): checkpoint writers (3 tensor files and 5 JSON files per
# checkpoint, one checkpoint per step), and the final outputs
KILL_POINTS = [
    ("dora.checkpoint.save_tensors", (1, 33), "torn"),
    ("dora.checkpoint.save_tensors", (1, 33), "torn"),
    ("dora.checkpoint.save_tensors", (1, 33), "after"),
    ("dora.checkpoint.write_json", (1, 55), "after"),
    ("dora.checkpoint.write_json", (1, 55), "before"),
    ("dora.checkpoint.write_index", (1, 11), "before"),
    ("dora.checkpoint.publish", (1, 11), "after"),
    ("dora.runner.save_tensors", (1, 2), "torn"),  # adapter/*.safetensors
    ("dora.runner.atomic_write_text", (1, 1), "before"),  # config.yaml
    ("dora.runner.write_result", (1, 1), "after"),  # right after result.json
    ("dora.checkpoint.clean", (1, 1), "before"),  # between result.json and the clean-up
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """The uninterrupted run, in this process with one thread (the subprocesses use one too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference") / "run"
    runner.run(compose(*ARGS, f"data_dir={data_dir}", f"output_dir={out}"), out)
    torch.set_num_threads(threads)
    return out


@pytest.fixture
def site(tmp_path):
    """A run folder with a user's files in it and a neighbour folder beside it."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "notes.txt").write_text("the user's notes")
    (out / "checkpoints" / "keepme.txt").write_text("the user's file")
    (tmp_path / "neighbour").mkdir()
    (tmp_path / "neighbour" / "data.txt").write_text("not the run's")
    return out


def foreign(out: Path) -> dict:
    files = [out / "notes.txt", out / "checkpoints" / "keepme.txt", out.parent / "neighbour" / "data.txt"]
    return {str(p): p.read_bytes() if p.exists() else None for p in files}


def launch(out: Path, data_dir, fault: str | None = None) -> subprocess.Popen:
    env = ENV | {"DORA_FAULT": fault} if fault else {k: v for k, v in ENV.items() if k != "DORA_FAULT"}
    return subprocess.Popen(
        [sys.executable, "tests/fault_child.py", *ARGS, f"data_dir={data_dir}", f"output_dir={out}"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(out: Path, data_dir, tries: int = 3) -> None:
    """The same command again (no fault) until it succeeds."""
    for _ in range(tries):
        proc = launch(out, data_dir)
        _, err = proc.communicate(timeout=600)
        if proc.returncode == 0:
            return
        assert_clear(proc.returncode, err)
    pytest.fail(f"no success after {tries} re-runs")


def assert_clear(code: int, err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def assert_outcome(out: Path, reference: Path, before: dict) -> None:
    assert_same_run(reference, out)
    assert foreign(out) == before
    left = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert left == ["keepme.txt"], left  # the run's own checkpoints, temporary and set-aside ones are gone
    assert not (out / "failure.json").exists()
    assert all(p.stat().st_size > 0 for p in (out / "config.yaml", out / "result.json"))


def tally(kind: str, identical: bool, clear: bool = False, fired: bool = False) -> None:
    row = TALLY.setdefault(kind, {"cases": 0, "identical": 0, "clear_line": 0, "killed": 0})
    row["cases"] += 1
    row["identical"] += identical
    row["clear_line"] += clear
    row["killed"] += fired


# -- kills ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("point", range(len(KILL_POINTS)))
def test_sigkill_at_a_writer_then_rerun(site, reference, data_dir, point):
    target, (lo, hi), when = KILL_POINTS[point]
    fault = f"{target}:{rng.randint(lo, hi)}:{when}"
    before = foreign(site)
    proc = launch(site, data_dir, fault)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode in (-signal.SIGKILL, 0), (fault, err[-2000:])
    finish(site, data_dir)
    assert_outcome(site, reference, before)
    tally("kill at a writer", identical=True, fired=proc.returncode == -signal.SIGKILL)


@pytest.mark.parametrize("attempt", range(3))
def test_sigkill_at_a_random_time_then_rerun(site, reference, data_dir, attempt):
    before = foreign(site)
    fired = False
    for _ in range(2):  # killed twice at random times, then finished
        proc = launch(site, data_dir)
        time.sleep(rng.uniform(4.0, 20.0))  # start-up takes ~5-10 s here, training ~5 s
        proc.send_signal(signal.SIGKILL)
        fired |= proc.wait() == -signal.SIGKILL
    finish(site, data_dir)
    assert_outcome(site, reference, before)
    tally("kill at a random time", identical=True, fired=fired)


# -- damaged checkpoints -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stopped(tmp_path_factory, data_dir):
    """A run stopped (in this process) after step 9: checkpoints 8 and 9 kept."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("stopped") / "run"
    real = runner.after_optimizer_step

    def stop(run, bar):
        if run.progress.step == 10:
            raise KeyboardInterrupt
        real(run, bar)

    runner.after_optimizer_step = stop
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run(compose(*ARGS, f"data_dir={data_dir}", f"output_dir={out}"), out)
    finally:
        runner.after_optimizer_step = real
        torch.set_num_threads(threads)
    assert [checkpoint.step_of(p) for p in checkpoint.complete(out / "checkpoints")] == [8, 9]
    return out


def _cut(name):
    def damage(folder):
        path = folder / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return damage


def _empty(name):
    return lambda folder: (folder / name).write_bytes(b"")


def _remove(name):
    return lambda folder: (folder / name).unlink()


def _flip(folder):
    data = bytearray((folder / "optimizer.safetensors").read_bytes())
    data[len(data) - 5] ^= 0x40
    (folder / "optimizer.safetensors").write_bytes(bytes(data))


def _garble_index(folder):
    (folder / "index.json").write_text('{"format": 1, "files": {')


DAMAGE = {
    "truncated trainable.safetensors": _cut("trainable.safetensors"),
    "truncated state.json": _cut("state.json"),
    "emptied optimizer.safetensors": _empty("optimizer.safetensors"),
    "missing rng-rank0.json": _remove("rng-rank0.json"),
    "flipped byte in optimizer tensors": _flip,
    "garbled index.json": _garble_index,
}


@pytest.mark.parametrize("kind", [*DAMAGE, "both newest damaged"])
def test_damaged_newest_checkpoint(tmp_path, stopped, reference, data_dir, kind, caplog):
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    newest = sorted((out / "checkpoints").glob("step-*"))
    for folder in newest if kind == "both newest damaged" else newest[-1:]:
        DAMAGE.get(kind, _flip)(folder)
    torch.set_num_threads(1)
    with caplog.at_level("WARNING"):
        runner.run(compose(*ARGS, f"data_dir={data_dir}", f"output_dir={out}"), out)
    assert_same_run(reference, out)
    said = [r.getMessage() for r in caplog.records if "damaged checkpoint" in r.getMessage()]
    expected = "starting from step 0" if kind == "both newest damaged" else "resuming from step-000008"
    assert len(said) == 1 and expected in said[0], said
    assert not (out / "checkpoints").exists()
    tally("damaged checkpoint", identical=True)


# -- a full disk ---------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a given size at tmp_path/disk (needs the right to mount), grown with ``grow()``."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = []

    def mount(size: str) -> Path:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=64m", str(where)], check=True)

    yield mount, grow
    for m in mounted:
        subprocess.run(["umount", str(m)], check=False)


@pytest.mark.parametrize("size", ["48k", "160k", "400k", "900k"])
def test_a_full_disk_then_space_again(small_disk, reference, data_dir, size):
    """A run on a too-small disk ends in one line (or, if it fits, succeeds); once there is space the
    same command ends with the uninterrupted result. No empty config.yaml is ever left."""
    mount, grow = small_disk
    out = mount(size) / "run"
    proc = launch(out, data_dir)
    _, err = proc.communicate(timeout=600)
    clear = proc.returncode != 0
    if clear:
        line = assert_clear(proc.returncode, err)
        assert "No space left on device" in line, line
    if (out / "config.yaml").exists():
        assert (out / "config.yaml").stat().st_size > 0
    grow()
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints" / "keepme.txt").write_text("the user's file")
    (out / "notes.txt").write_text("the user's notes")
    (out.parent / "neighbour").mkdir(exist_ok=True)
    (out.parent / "neighbour" / "data.txt").write_text("not the run's")
    before = foreign(out)
    finish(out, data_dir)
    assert_outcome(out, reference, before)
    tally("full disk", identical=True, clear=clear)


# -- races ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attempt", range(3))
def test_two_starts_on_one_folder(site, reference, data_dir, attempt):
    before = foreign(site)
    first = launch(site, data_dir)
    time.sleep(rng.uniform(0.0, 1.5))
    second = launch(site, data_dir)
    errs = [p.communicate(timeout=600)[1] for p in (first, second)]
    refused = [err for p, err in zip((first, second), errs, strict=True) if p.returncode != 0]
    assert len(refused) <= 1, refused
    for err in refused:
        assert "is in use by pid" in assert_clear(2, err)
    assert_outcome(site, reference, before)
    tally("race", identical=True, clear=bool(refused))


def test_a_folder_holding_another_configuration_is_refused_before_hydra_writes(tmp_path, data_dir):
    """A finished run's folder and a start with another configuration: one line, and not a byte of
    the finished run changes (Hydra would otherwise rewrite its .hydra/ files and append to run.log)."""
    out = tmp_path / "done"
    base = ["debug=tiny", "method=bitfit", "task.splits.train=train:0:32", "task.splits.dev=dev:0:16",
            f"data_dir={data_dir}", f"output_dir={out}"]  # fmt: skip
    first = run_cli(*base, "trainer.max_steps=1")
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    again = run_cli(*base, "trainer.max_steps=2")
    assert "holds a completed run of a different configuration" in assert_clear(
        again.returncode, again.stderr
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before
    tally("other configuration", identical=False, clear=True)


def test_a_refused_sweep_job_does_not_stop_the_sweep(tmp_path, data_dir):
    """``-m`` with a job that fails only when it runs (its dev file is missing): the other job still
    runs, and the sweep ends with one line naming the refused one."""
    sweep = tmp_path / "sweep"
    done = run_cli("-m", "task=rte", "debug=tiny", "method=bitfit",
                   "task.splits.train=train:0:32", "trainer.max_steps=1", f"data_dir={data_dir}",
                   "task.splits.dev=nosuch,dev:0:16", f"hydra.sweep.dir={sweep}")  # fmt: skip
    line = assert_clear(done.returncode, "\n".join(
        line for line in done.stderr.splitlines() if "the sweep goes on" not in line))  # fmt: skip
    assert line.startswith("error: 1 sweep job(s) refused: ") and "missing dev file" in line
    assert len(list(sweep.rglob("result.json"))) == 1
    tally("sweep", identical=False, clear=True)


def test_zz_tally():
    """Last in the file: this session's counts (printed; also written to $DORA_FAULTS_REPORT)."""
    total = {k: sum(row[k] for row in TALLY.values()) for k in ("cases", "identical", "clear_line", "killed")}
    print(f"\nfault injection: {json.dumps(TALLY)}\ntotal: {json.dumps(total)}")
    if os.environ.get("DORA_FAULTS_REPORT"):
        Path(os.environ["DORA_FAULTS_REPORT"]).write_text(json.dumps({"kinds": TALLY, "total": total}) + "\n")
