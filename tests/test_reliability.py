"""Bad input and failed runs: exit code 2, one ``error:`` line, never a result.json.

Complements tests/test_configs.py (unknown task/method/model/budget, unknown field, bad value type) and
tests/test_runner.py (missing data file, missing split file, bad trainer values, bad split spec,
unreachable hub) with the method schedules, the run folder, malformed data and a diverging loss.
"""

from __future__ import annotations

import json
import shutil

import pytest

from dora import rundir
from tests.helpers import cli_inprocess

BASE = ["task=rte", "debug=tiny", "trainer.max_steps=3", "task.splits.train=train:0:32", "task.splits.dev=dev:0:16",
        "trainer.batch_size=8"]  # fmt: skip

CASES = {
    # method schedules: target rank r above the initial r' = ceil(init_ratio * r) (equal is allowed:
    # Table 6 has b(0) = b(T)), no room for pruning, negative DEM coefficient, empty pruning interval
    "dora target rank above initial": (["method=dora", "method.init_ratio=0.5"], "method.init_ratio=0.5 is out of range"),
    "adalora target rank above initial": (["method=adalora", "method.init_ratio=0.5"], "method.init_ratio=0.5 is out of range"),
    "dora warm-up + final >= 1": (["method=dora", "method.warmup_frac=0.6", "method.final_frac=0.4"],
                                  "method.warmup_frac + method.final_frac = 1.0; must be < 1"),
    "adalora tinit + tfinal >= 1": (["method=adalora", "method.tinit=0.5", "method.tfinal=0.5"],
                                    "(tinit + tfinal must be < 1)"),
    "negative eta": (["method=dora", "method.dem_coef=-0.1"], "method.dem_coef=-0.1 is out of range"),
    "prune interval 0": (["method=dora", "method.prune_interval=0"], "method.prune_interval=0 is out of range"),
    "prune interval negative": (["method=dora", "method.prune_interval=-5"], "method.prune_interval=-5 is out of range"),
    "checkpoint_every negative": (["method=bitfit", "trainer.checkpoint_every=-1"], "trainer.checkpoint_every=-1 is out of range"),
    "keep_checkpoints 0": (["method=bitfit", "trainer.keep_checkpoints=0"], "trainer.keep_checkpoints=0 is out of range"),
    "empty training split": (["method=bitfit", "task.splits.train=train:0:0"], "the training split 'train:0:0' is empty"),
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def assert_refused(code: int, err: str, expected: str, out) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err[-2000:]
    assert lines[-1].startswith("error: ") and expected in lines[-1], err[-2000:]
    assert sum(line.startswith("error:") for line in lines) == 1
    assert not (out / "result.json").exists()


@pytest.mark.parametrize("case", CASES)
def test_bad_settings(tmp_path, capsys, data_dir, case):
    args, expected = CASES[case]
    out = tmp_path / "OUT"
    code, err = cli_inprocess(capsys, *BASE, f"data_dir={data_dir}", f"output_dir={out}", *args)
    assert_refused(code, err, expected, out)
    assert not out.exists()  # a refused run leaves nothing behind


def test_unwritable_output_dir(tmp_path, capsys, data_dir):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "run"
    code, err = cli_inprocess(capsys, *BASE, "method=bitfit", f"data_dir={data_dir}", f"output_dir={out}")
    assert_refused(code, err, f"output_dir={out} is not writable: {tmp_path / 'a_file'} is a file", tmp_path)


@pytest.fixture
def broken_glue(tmp_path, data_dir):
    """A data folder whose RTE train.tsv is broken; dev.tsv is the real one."""
    rte = tmp_path / "data" / "glue" / "RTE"
    rte.mkdir(parents=True)
    shutil.copy(data_dir / "glue" / "RTE" / "dev.tsv", rte / "dev.tsv")
    return tmp_path / "data", rte / "train.tsv"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly one field\n", "line 3 has 2 fields, expected at least 4"),
        ("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n", "line 2 has label 'maybe'; expected entailment, not_entailment"),
        ("index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n", "header lacks columns ['sentence1', 'sentence2']"),
    ],
    ids=["too few fields", "unknown label", "wrong header"],
)  # fmt: skip
def test_malformed_tsv(tmp_path, capsys, broken_glue, body, expected):
    data, train = broken_glue
    train.write_text(body)
    out = tmp_path / "OUT"
    code, err = cli_inprocess(capsys, *BASE, "method=bitfit", f"data_dir={data}", f"output_dir={out}")
    assert_refused(code, err, f"malformed GLUE file {train}: {expected}", out)


@pytest.mark.parametrize(
    ("body", "expected"),
    [("{not json", "JSONDecodeError"), ('{"data": [{"title": "x"}]}', "KeyError 'paragraphs'")],
)
def test_malformed_json(tmp_path, capsys, body, expected):
    (tmp_path / "data" / "squad").mkdir(parents=True)
    (tmp_path / "data" / "squad" / "dev-v1.1.json").write_text(body)
    out = tmp_path / "OUT"
    args = [
        "task=squad_v1",
        "model=tiny_roberta",
        "method=bitfit",
        "logger=none",
        f"data_dir={tmp_path / 'data'}",
    ]
    code, err = cli_inprocess(capsys, *args, f"output_dir={out}")
    assert_refused(code, err, "malformed SQuAD file", out)
    assert expected in err


def test_split_that_does_not_exist(tmp_path, capsys, data_dir):
    out = tmp_path / "OUT"
    args = ["task=squad_v1", "model=tiny_roberta", "method=bitfit", "logger=none", f"data_dir={data_dir}"]
    code, err = cli_inprocess(
        capsys, *args, "task.splits.train=dev-v1.1", "task.splits.dev=nosuch", f"output_dir={out}"
    )
    assert_refused(code, err, "task=squad_v1: missing dev file", out)
    assert "nosuch.json; files there: dev-v1.1, dev-v2.0.sample-2articles" in err


def test_diverging_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys, data_dir):
    out = tmp_path / "OUT"
    args = ["method=full", "trainer.lr=1e30", "trainer.warmup_ratio=0", "trainer.checkpoint_every=1"]
    code, err = cli_inprocess(capsys, *BASE, f"data_dir={data_dir}", f"output_dir={out}", *args)
    kept = out / "checkpoints" / "step-000001"
    assert_refused(
        code, err, f"NaN/inf at optimizer step 2; run stopped at step 2; last good checkpoint: {kept}", out
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001"]
    failure = json.loads((out / "failure.json").read_text())
    assert failure["status"] == "failed" and failure["step"] == 2 and failure["last_checkpoint"] == str(kept)
    assert failure["error"].startswith(
        "Diverged: the loss or gradient norm became NaN/inf at optimizer step 2"
    )


def test_a_folder_in_use_is_refused_and_left_alone(tmp_path, capsys, data_dir):
    out = tmp_path / "OUT"
    out.mkdir()
    with rundir.exclusive(out):
        code, err = cli_inprocess(capsys, *BASE, "method=bitfit", f"data_dir={data_dir}", f"output_dir={out}")
    assert_refused(code, err, f"output_dir={out} is in use by pid", out)
    assert (out / ".lock").exists()


def test_a_finished_folder_of_another_configuration_is_refused(tmp_path, capsys, data_dir):
    out = tmp_path / "OUT"
    code, _ = cli_inprocess(capsys, *BASE, "method=bitfit", f"data_dir={data_dir}", f"output_dir={out}")
    assert code == 0
    result = (out / "result.json").read_text()
    code, err = cli_inprocess(
        capsys, *BASE, "method=bitfit", f"data_dir={data_dir}", f"output_dir={out}", "seed=2"
    )
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].endswith("holds a completed run of a different configuration (differs in: seed); use another output_dir or delete that one")  # fmt: skip
    assert (out / "result.json").read_text() == result


def test_multi_process_launch_needs_an_explicit_output_dir(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, err = cli_inprocess(capsys, "task=rte", "method=bitfit", "model=tiny_roberta", "logger=none")
    assert code == 2 and err.strip() == (
        "error: a multi-process run needs output_dir=PATH (the default folder name holds a per-process timestamp)"
    )
