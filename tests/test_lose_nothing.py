"""Issue 16: a run never loses data that is not its own, never shares its folder with a second writer,
survives a damaged checkpoint, and answers bad input with one line (exit 2) instead of a traceback.

The slow, randomised counterpart (real SIGKILLs, a full disk, racing starts) is tests/test_faults.py
(``make test-faults``)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from dora import checkpoint, rundir, runner
from tests.helpers import cli_inprocess, compose, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["task=rte", "debug=tiny", "task.splits.train=train:0:32", "task.splits.dev=dev:0:16",
        "trainer.batch_size=8"]  # fmt: skip
# 64 examples / batch 8: 8 steps, a checkpoint every 2 steps, the newest 2 kept
RESUMABLE = ["task=rte", "debug=tiny", "method=lora", "task.splits.train=train:0:64", "task.splits.dev=dev:0:16",
             "trainer.batch_size=8", "trainer.max_steps=8", "trainer.checkpoint_every=2"]  # fmt: skip


def one_error_line(code: int, err: str, expected: str, exit_code: int = 2) -> str:
    lines = err.strip().splitlines()
    assert code == exit_code, err[-3000:]
    assert sum(line.startswith("error:") for line in lines) == 1, err[-3000:]
    assert lines[-1].startswith("error: ") and expected in lines[-1], err[-3000:]
    assert "Traceback" not in err
    return lines[-1]


def snapshot(folder) -> dict:
    """Every file under ``folder`` with its bytes and mode: what "touches nothing" compares."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# -- 1. a run deletes only what it wrote ----------------------------------------------------------
def test_empty_output_dir_keeps_the_current_folders_checkpoints(tmp_path, capsys, data_dir, monkeypatch):
    """``output_dir=`` runs in the current folder; its own checkpoints go, a file already in
    checkpoints/ stays (before: the whole checkpoints/ folder was deleted)."""
    work = tmp_path / "work"
    (work / "checkpoints").mkdir(parents=True)
    (work / "checkpoints" / "keepme.txt").write_text("mine")
    monkeypatch.chdir(work)
    args = [
        *BASE,
        "method=bitfit",
        f"data_dir={data_dir}",
        "trainer.max_steps=2",
        "trainer.checkpoint_every=1",
    ]
    code, err = cli_inprocess(capsys, *args, "output_dir=")
    assert code == 0, err[-2000:]
    assert (work / "result.json").is_file()
    assert (work / "checkpoints" / "keepme.txt").read_text() == "mine"
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["keepme.txt"]


def test_a_foreign_folder_named_like_a_checkpoint_is_left_alone(tmp_path, data_dir):
    out = tmp_path / "run"
    (out / "checkpoints" / "step-000099").mkdir(parents=True)
    (out / "checkpoints" / "step-000099" / "notes.txt").write_text("not the harness's")
    cfg = compose(*BASE, "method=bitfit", f"data_dir={data_dir}", f"output_dir={out}",
                  "trainer.max_steps=3", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=1")  # fmt: skip
    runner.run(cfg, out)
    assert (out / "result.json").is_file()
    assert (out / "checkpoints" / "step-000099" / "notes.txt").read_text() == "not the harness's"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000099"]


# -- 2. the lock first; a refused process touches nothing -----------------------------------------
def test_a_process_refused_by_the_lock_touches_nothing(tmp_path, data_dir):
    """The real CLI (Hydra writes .hydra/ and run.log before the task runs): a second start on a
    folder in use changes no byte there (before: .hydra/config.yaml rewritten, run.log appended)."""
    out = tmp_path / "live"
    (out / ".hydra").mkdir(parents=True)
    (out / ".hydra" / "config.yaml").write_text("the live run's config\n")
    (out / "run.log").write_text("the live run's log\n")
    with rundir.exclusive(out):
        before = snapshot(out)
        done = run_cli(*BASE, "method=bitfit", f"data_dir={data_dir}", f"output_dir={out}", timeout=120)
        assert snapshot(out) == before
    one_error_line(done.returncode, done.stderr, f"output_dir={out} is in use by pid {os.getpid()}")


def test_a_refused_start_never_removes_the_folder_of_the_run_that_won(
    tmp_path, capsys, data_dir, monkeypatch
):
    """Two starts race on a new folder: the other process creates it and takes the lock just before
    this one. Before: this one had decided "fresh" first, was refused, and deleted the winner's
    folder, lock included (a third start then trained beside the first)."""
    out = tmp_path / "raced"
    real = rundir.ensure_writable
    winner = {}

    def other_process_wins(path):
        real(path)
        if not winner:
            winner["lock"] = rundir.exclusive(out)
            winner["lock"].__enter__()
            (out / ".hydra").mkdir(exist_ok=True)
            (out / ".hydra" / "config.yaml").write_text("winner\n")
            (out / "run.log").write_text("winner is training\n")

    monkeypatch.setattr(rundir, "ensure_writable", other_process_wins)
    try:
        code, err = cli_inprocess(capsys, *BASE, "method=bitfit", f"data_dir={data_dir}", f"output_dir={out}")
        one_error_line(code, err, "is in use by pid")
        assert (out / ".lock").exists() and (out / "run.log").read_text() == "winner is training\n"
        assert (out / ".hydra" / "config.yaml").read_text() == "winner\n"
    finally:
        if winner:
            winner["lock"].__exit__(None, None, None)


# -- 3. damaged checkpoints --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, data_dir):
    """An uninterrupted reference run, and a run stopped after step 7 (checkpoints at 4 and 6 kept)."""
    tmp = tmp_path_factory.mktemp("interrupted")
    ref, cut = tmp / "ref", tmp / "cut"
    runner.run(compose(*RESUMABLE, f"data_dir={data_dir}", f"output_dir={ref}"), ref)
    cfg = compose(*RESUMABLE, f"data_dir={data_dir}", f"output_dir={cut}")
    real = runner.after_optimizer_step

    def stop_at_7(run, bar):
        if run.progress.step == 7:
            raise KeyboardInterrupt
        real(run, bar)

    runner.after_optimizer_step = stop_at_7
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run(cfg, cut)
    finally:
        runner.after_optimizer_step = real
    assert [checkpoint.step_of(p) for p in checkpoint.complete(cut / "checkpoints")] == [4, 6]
    return ref, cut


def flip_a_tensor_byte(folder):
    data = bytearray((folder / "trainable.safetensors").read_bytes())
    data[-3] ^= 0x01  # tensor data sit at the end: the header stays valid, one weight changes
    (folder / "trainable.safetensors").write_bytes(bytes(data))


def truncate_state(folder):
    text = (folder / "state.json").read_text()
    (folder / "state.json").write_text(text[: len(text) // 2])


@pytest.mark.parametrize(
    "damage", [flip_a_tensor_byte, truncate_state], ids=["flipped byte", "truncated state"]
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    tmp_path, data_dir, interrupted, damage, caplog
):
    ref, cut = interrupted
    out = tmp_path / "cut"
    shutil.copytree(cut, out)
    damage(out / "checkpoints" / "step-000006")
    cfg = compose(*RESUMABLE, f"data_dir={data_dir}", f"output_dir={out}")
    with caplog.at_level("WARNING"):
        runner.run(cfg, out)
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (ref, out))
    assert ra["history"] == rb["history"] and ra["metrics"] == rb["metrics"]
    lines = [r.getMessage() for r in caplog.records if "damaged checkpoint" in r.getMessage()]
    assert len(lines) == 1 and "step-000006" in lines[0] and "resuming from step-000004" in lines[0]
    assert not (out / "checkpoints").exists()  # completed: its own checkpoints, damaged ones too, are gone


def test_a_checkpoint_written_before_indexes_existed_still_resumes(tmp_path, data_dir, interrupted, caplog):
    """Folders from the previous layout (state.json last, no index.json) resume and are cleaned up."""
    ref, cut = interrupted
    out = tmp_path / "cut"
    shutil.copytree(cut, out)
    for folder in (out / "checkpoints").glob("step-*"):
        (folder / "index.json").unlink()
    with caplog.at_level("INFO"):
        runner.run(compose(*RESUMABLE, f"data_dir={data_dir}", f"output_dir={out}"), out)
    assert "resuming from" in caplog.text and "step-000006" in caplog.text
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (ref, out))
    assert ra["history"] == rb["history"] and not (out / "checkpoints").exists()


def test_checkpoints_left_by_a_kill_right_after_result_json_are_removed_on_the_next_start(
    tmp_path, data_dir, interrupted
):
    ref, cut = interrupted
    out = tmp_path / "done"
    shutil.copytree(ref, out)
    shutil.copytree(cut / "checkpoints", out / "checkpoints")  # as a SIGKILL after result.json leaves it
    (out / "checkpoints" / "someone-elses.txt").write_text("stays")
    (out / "checkpoints" / ".trash-step-000002").mkdir()  # a rotation killed mid-delete
    (out / "checkpoints" / ".trash-step-000002" / "optimizer.json").write_text("{}")
    cfg = compose(*RESUMABLE, f"data_dir={data_dir}", f"output_dir={out}")
    assert runner.run(cfg, out) == json.loads((ref / "result.json").read_text())
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["someone-elses.txt"]


# -- 4. non-finite labels and metrics -------------------------------------------------------------
@pytest.fixture
def glue_copy(tmp_path, data_dir):
    """A data folder whose glue/<Task>/ files can be edited."""

    def make(task_folder: str):
        dst = tmp_path / "data" / "glue" / task_folder
        shutil.copytree(data_dir / "glue" / task_folder, dst)
        return tmp_path / "data", dst

    return make


def test_a_nan_label_is_refused_at_load(tmp_path, capsys, glue_copy):
    data, folder = glue_copy("STS-B")
    lines = (folder / "dev.tsv").read_text().splitlines()
    lines[3] = "\t".join(lines[3].split("\t")[:-1] + ["nan"])
    (folder / "dev.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "OUT"
    args = [*BASE, "task=stsb", "method=bitfit", f"data_dir={data}", f"output_dir={out}", "trainer.max_steps=1",
            "task.splits.dev=dev:0:16"]  # fmt: skip
    code, err = cli_inprocess(capsys, *args)
    one_error_line(
        code,
        err,
        f"malformed GLUE file {folder / 'dev.tsv'}: line 4 has label 'nan'; expected a finite number",
    )
    assert not out.exists()


def test_a_non_finite_metric_never_reaches_result_json(tmp_path, capsys, data_dir, monkeypatch):
    from tasks import metrics

    monkeypatch.setitem(metrics.METRICS, "pearson", lambda p, y: float("nan"))
    out = tmp_path / "OUT"
    args = [
        *BASE,
        "task=stsb",
        "method=bitfit",
        f"data_dir={data_dir}",
        f"output_dir={out}",
        "trainer.max_steps=1",
    ]
    code, err = cli_inprocess(capsys, *args)
    one_error_line(code, err, "evaluation at optimizer step 1 gave non-finite")
    assert not (out / "result.json").exists()
    failure = json.loads((out / "failure.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert failure["status"] == "failed"


# -- 5. bad input: one line, exit 2 ---------------------------------------------------------------
CASES = {
    "seed -1": (["method=bitfit", "seed=-1"], "seed=-1 is out of range; valid: an integer from 0 to 4294967295"),
    "seed 2^32": (["method=bitfit", "seed=4294967296"], "seed=4294967296 is out of range"),
    "seed abc": (["method=bitfit", "seed=abc"], "seed='abc' is out of range"),
    "num_workers -1": (["method=bitfit", "trainer.num_workers=-1"], "trainer.num_workers=-1 is out of range"),
    "lr inf": (["method=bitfit", "trainer.lr=inf"], "trainer.lr=inf is out of range"),
    "max_length 100000": (["method=bitfit", "trainer.max_length=100000"],
                          "trainer.max_length=100000 is out of range for this model; valid: 16..518"),
    "max_length 5": (["method=bitfit", "trainer.max_length=5"], "trainer.max_length=5 is out of range for this model"),
    "max_length 3": (["method=bitfit", "trainer.max_length=3"], "trainer.max_length=3 is out of range for this model"),
    "init_ratio 100": (["method=dora", "method.init_ratio=100"],
                       "method.init_ratio=100.0 gives r'=200 components per matrix, more than the smallest adapted matrix allows (32)"),
    "one-step dora": (["method=dora", "trainer.max_steps=1"], "method=dora needs at least 2 optimizer steps"),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_values(tmp_path, capsys, data_dir, case):
    args, expected = CASES[case]
    out = tmp_path / "OUT"
    code, err = cli_inprocess(capsys, *BASE, f"data_dir={data_dir}", f"output_dir={out}", *args)
    one_error_line(code, err, expected)
    assert not out.exists()


def on_line(n: int, data: bytes, edit) -> bytes:
    lines = data.split(b"\n")
    lines[n - 1] = edit(lines[n - 1])
    return b"\n".join(lines)


def edit_tsv(folder, name, edit):
    path = folder / name
    path.write_bytes(edit(path.read_bytes()))
    return path


@pytest.mark.parametrize(
    ("split", "edit", "expected"),
    [
        (
            "train",
            lambda b: on_line(3, b, lambda line: b"\xff" + line),
            "line 3 is not valid UTF-8 (byte 0xff",
        ),
        ("train", lambda b: b.replace(b"\t1\n", b"\t2\n", 1), "has label '2'; expected 0 or 1"),
        ("train", lambda b: b.replace(b"\t0\n", b"\t-1\n", 1), "has label '-1'; expected 0 or 1"),
        ("dev", lambda b: b.split(b"\n")[0] + b"\n", "the dev split 'dev' is empty"),
    ],
    ids=["non-utf8 byte", "label 2", "label -1", "header-only dev"],
)
def test_bad_sst2_files(tmp_path, capsys, glue_copy, split, edit, expected):
    data, folder = glue_copy("SST-2")
    (folder / "train.tsv").write_bytes(b"".join((folder / "train.tsv").read_bytes().splitlines(True)[:40]))
    path = edit_tsv(folder, f"{split}.tsv", edit)
    out = tmp_path / "OUT"
    args = [*BASE, "task=sst2", "method=bitfit", f"data_dir={data}", f"output_dir={out}", "task.splits.train=train",
            "task.splits.dev=dev"]  # fmt: skip
    code, err = cli_inprocess(capsys, *args)
    line = one_error_line(code, err, expected)
    assert "is empty" in expected or str(path) in line
    assert not out.exists()


def squad_file(tmp_path, body) -> str:
    (tmp_path / "data" / "squad").mkdir(parents=True)
    (tmp_path / "data" / "squad" / "dev-v1.1.json").write_text(json.dumps(body))
    return str(tmp_path / "data")


SQUAD = ["task=squad_v1", "model=tiny_roberta", "method=bitfit", "logger=none", "trainer.max_steps=1"]


def test_squad_without_questions(tmp_path, capsys):
    data = squad_file(tmp_path, {"data": []})
    out = tmp_path / "OUT"
    code, err = cli_inprocess(capsys, *SQUAD, f"data_dir={data}", f"output_dir={out}")
    one_error_line(code, err, "is empty")
    assert not out.exists()


def test_squad_answers_outside_their_context_are_refused_and_counted(tmp_path, capsys):
    qas = [
        {"id": f"q{i}", "question": "who?", "answers": [{"text": "Ann", "answer_start": s}]}
        for i, s in enumerate([0, 500, -1])
    ]
    data = squad_file(
        tmp_path, {"data": [{"title": "t", "paragraphs": [{"context": "Ann met Bob.", "qas": qas}]}]}
    )
    out = tmp_path / "OUT"
    code, err = cli_inprocess(capsys, *SQUAD, f"data_dir={data}", f"output_dir={out}")
    one_error_line(
        code,
        err,
        "2 of 3 answers have an answer_start outside their context (first: question 'q1', answer_start 500",
    )


def test_xsum_null_fields_are_refused(tmp_path):
    from dora.errors import UserError
    from tasks.xsum import read_jsonl

    path = tmp_path / "x.jsonl"
    path.write_text('{"document": "a text", "summary": "ok"}\n{"document": null, "summary": "b"}\n')
    with pytest.raises(UserError, match=r"x.jsonl: line 2 \(TypeError document is null, not a string\)"):
        read_jsonl(str(path))


def test_a_truncated_result_json_is_one_line(tmp_path, capsys, data_dir):
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "result.json").write_text('{"task": "rte", "met')
    code, err = cli_inprocess(capsys, *BASE, "method=bitfit", f"data_dir={data_dir}", f"output_dir={out}")
    one_error_line(code, err, f"output_dir={out} holds an unreadable result.json (JSONDecodeError")
    assert (out / "result.json").read_text() == '{"task": "rte", "met'


@pytest.mark.parametrize("root", ["/proc", "/sys"])
def test_output_dir_on_a_kernel_filesystem(capsys, data_dir, root):
    code, err = cli_inprocess(
        capsys, *BASE, "method=bitfit", f"data_dir={data_dir}", f"output_dir={root}/x/run"
    )
    one_error_line(code, err, f"output_dir={root}/x/run is under {root}, a kernel filesystem")


def test_a_full_disk_gives_one_line_and_a_failure_record(tmp_path, capsys, data_dir, monkeypatch):
    """ENOSPC while the final outputs are written: no traceback, no empty config.yaml, failure.json."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "OUT" / "adapter"))

    monkeypatch.setattr(runner, "save_tensors", full)
    out = tmp_path / "OUT"
    code, err = cli_inprocess(capsys, *BASE, "method=bitfit", f"data_dir={data_dir}", f"output_dir={out}",
                              "trainer.max_steps=1")  # fmt: skip
    one_error_line(code, err, "No space left on device; free space and re-run the same command")
    assert not (out / "result.json").exists() and not (out / "config.yaml").exists()
    assert json.loads((out / "failure.json").read_text())["error"].startswith("OSError")


# -- 6. wandb without a network -----------------------------------------------------------------------
def test_wandb_with_a_key_and_no_network_falls_back_to_offline(tmp_path, monkeypatch, caplog):
    import time

    import wandb

    from dora.config import LoggerConfig
    from dora.tracking import make_tracker

    key = "k" * 40
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    inits = []
    monkeypatch.setattr(wandb, "init", lambda **kw: inits.append(kw))
    t = time.monotonic()
    with caplog.at_level("WARNING"):
        make_tracker(LoggerConfig(kind="wandb"), {}, str(tmp_path), "x", [], True)
    assert time.monotonic() - t < 10
    assert inits[0]["mode"] == "offline"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "127.0.0.1:9 is unreachable; logging offline" in warnings[0]
    assert key not in caplog.text


# -- 7. a sweep with a bad value later in the grid ------------------------------------------------
def test_a_sweep_is_checked_whole_before_its_first_job(capsys, data_dir):
    from dora.cli import preflight

    with pytest.raises(SystemExit) as stop:
        preflight(["-m", *BASE, "method=bitfit", f"data_dir={data_dir}", "trainer.max_steps=2,-5,3"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "error: sweep combination trainer.max_steps=-5: nothing was run: trainer.max_steps=-5 is out of range"
    )


# -- 9. Ctrl-C, file modes ----------------------------------------------------------------------------
def test_ctrl_c_is_recorded_as_interrupted_in_one_line(tmp_path, capsys, data_dir, monkeypatch):
    real = runner.after_optimizer_step

    def ctrl_c(run, bar):
        if run.progress.step == 2:
            raise KeyboardInterrupt
        real(run, bar)

    monkeypatch.setattr(runner, "after_optimizer_step", ctrl_c)
    out = tmp_path / "OUT"
    code, err = cli_inprocess(capsys, *BASE, "method=bitfit", f"data_dir={data_dir}", f"output_dir={out}",
                              "trainer.max_steps=4", "trainer.checkpoint_every=1")  # fmt: skip
    one_error_line(
        code, err, f"interrupted; re-run the same command with output_dir={out} to resume", exit_code=130
    )
    failure = json.loads((out / "failure.json").read_text())
    assert failure["status"] == "interrupted" and failure["step"] == 2 and failure["traceback"] == []


def test_result_json_is_readable_by_the_group(tmp_path, data_dir):
    out = tmp_path / "run"
    runner.run(
        compose(*BASE, "method=bitfit", f"data_dir={data_dir}", f"output_dir={out}", "trainer.max_steps=1"),
        out,
    )
    umask = os.umask(0)
    os.umask(umask)
    for name in ("result.json", "config.yaml"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name


def test_the_lock_is_released_after_an_in_process_run(tmp_path, capsys, data_dir):
    """cli_inprocess claims the folder ahead of the run; the claim ends with the run."""
    out = tmp_path / "OUT"
    code, _ = cli_inprocess(
        capsys, *BASE, "method=bitfit", f"data_dir={data_dir}", f"output_dir={out}", "trainer.max_steps=1"
    )
    assert code == 0 and rundir.claimed(out) is None
    with rundir.exclusive(out):  # raises UserError if the run's lock were still held
        pass


def test_a_finished_run_folder_keeps_no_lock_file(tmp_path):
    """A completed run removes its .lock (issue 17: stale .lock files in finished folders); the same
    command again still skips it."""
    args = ["task=sst2", "method=bitfit", "debug=tiny",
            f"data_dir={Path(__file__).resolve().parent.parent / 'data' / 'fixtures'}", "task.splits.train=train:0:16", "task.splits.dev=dev:0:16",
            "trainer.max_steps=2", "trainer.batch_size=8", f"output_dir={tmp_path / 'run'}"]  # fmt: skip
    assert run_cli(*args).returncode == 0
    assert (tmp_path / "run" / "result.json").is_file() and not (tmp_path / "run" / ".lock").exists()
    again = run_cli(*args)
    assert again.returncode == 0 and not (tmp_path / "run" / ".lock").exists()
