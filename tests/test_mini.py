"""The MiniLM mini-reproduction: its grid (make mini-table), its aggregator and its committed results."""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from dora.families import ENCODER_MATRICES
from scripts import grid, mini_table
from tests.helpers import REPO, compose, run_cli, run_script

TASKS = ["rte", "mrpc", "stsb", "cola", "sst2"]
METHODS = ["dora", "adalora", "lora", "bitfit", "full"]
COMMITTED = REPO / "results" / "mini"
# the pilots' choices (results/mini/README.md)
LR = {"dora": 3e-3, "adalora": 3e-3, "lora": 3e-3, "bitfit": 3e-3, "full": 1e-4}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plan(runs: Path) -> list[grid.Run]:
    return grid.plan("mini", runs, [])


def key(overrides: list[str]) -> tuple[str, str, int]:
    kv = dict(o.split("=", 1) for o in overrides)
    return kv["task"], kv["method"], int(kv["seed"])


def test_the_grid_is_5_tasks_by_5_methods_by_3_seeds(tmp_path):
    runs = plan(tmp_path)
    assert sorted(key(r.overrides) for r in runs) == sorted(itertools.product(TASKS, METHODS, [1, 2, 3]))
    assert all(len(r.folder.name) < 200 for r in runs)  # file systems refuse names over 255 bytes


STEPS = {"rte": 120, "mrpc": 160, "stsb": 240, "cola": 500, "sst2": 400}


@pytest.mark.parametrize("method", METHODS)
def test_the_cpu_schedule_wins_over_the_recipes(method):
    """Every run trains about an epoch at batch 16 with its method's pilot lr, whatever the paper recipe
    says, and keeps the recipe's method knobs (Table 8's eta for DynDoRA)."""
    for task in ("cola", "rte"):
        exp = next(r for r in plan(Path("unused")) if key(r.overrides) == (task, method, 1))
        cfg = compose(*exp.overrides, f"experiment={exp.experiment}")
        t = cfg.trainer
        assert (t.max_steps, t.eval_every) == (STEPS[task], STEPS[task] // 2)
        assert (t.batch_size, t.lr, t.weight_decay, t.max_length) == (16, LR[method], 0.01, 128)
        assert t.group_by_length and cfg.model.name == "minilm"
    if method == "dora":
        assert cfg.method.prune_interval == 5 and cfg.method.dem_coef == 0.5  # Table 8, RTE
    if method == "adalora":
        assert cfg.method.delta_t == 5 and cfg.method.orth_reg_weight == 0.3


def test_pick_names_the_valid_keys():
    from dora.config import pick

    assert pick("rte", {"rte": 1, "cola": 2}) == 1
    with pytest.raises(ValueError, match="no value for 'qqp'; the table has rte, cola"):
        pick("qqp", {"rte": 1, "cola": 2})


def test_a_task_outside_the_schedule_is_one_error_line(tmp_path):
    out = run_cli(
        "experiment=mini_dora", "method=dora", "task=qnli", "logger=none", f"output_dir={tmp_path / 'run'}"
    )
    assert out.returncode == 2 and not (tmp_path / "run").exists()
    assert out.stderr.strip().splitlines() == [
        "error: bad value for trainer.max_steps: pick: no value for 'qnli'; the table has rte, mrpc, stsb, cola, sst2"
    ]


def test_dry_run_lists_the_runs_whose_results_are_committed():
    """`make mini-table DRY_RUN=1` plans exactly the 75 folders results/mini/runs holds, all done."""
    make = subprocess.run(["make", "-n", "mini-table", "DRY_RUN=1"], cwd=REPO, capture_output=True, text=True)
    assert "scripts/grid.py mini --runs runs/mini --jobs 2" in make.stdout and "--dry-run" in make.stdout
    out = run_script("grid.py", "mini", "--runs", str(COMMITTED / "runs"), "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "mini: 75 runs, 75 done, 0 to run" in out.stdout
    committed = {p.parent.name for p in (COMMITTED / "runs").glob("*/result.json")}
    assert committed == {r.folder.name for r in plan(COMMITTED / "runs")}


def test_committed_table_is_what_the_aggregator_writes(tmp_path):
    mini_table.build(COMMITTED / "runs", tmp_path)
    for name in ("table.md", "table.csv", "runs.csv", "heatmap.csv"):
        assert (tmp_path / name).read_text() == (COMMITTED / name).read_text(), name
    rows = read_csv(COMMITTED / "runs.csv")
    assert len(rows) == 75 and all(int(r["steps"]) == STEPS[r["task"]] for r in rows)


# -- the aggregator on runs with known values --------------------------------------------------------
LAYER = "bert.encoder.layer.{}.{}"


def fake_result(task: str, method: str, seed: int, best: float, last: float) -> dict:
    metric = {c.task: c.metric for c in mini_table.COLUMNS}[task]
    ranks = {LAYER.format(i, m): (i + seed) % 3 for i in range(6) for m in ENCODER_MATRICES}
    return {
        "task": task, "method": method, "model": "minilm", "seed": seed, "status": "ok",
        "budget": None if method == "bitfit" else "low", "config": {},
        "metrics": {metric: last}, "best": {metric: best}, "params": {"budget": 1000 * (1 + (method == "dora"))},
        "timing": {"steps": 160, "setup_s": 1.0, "train_s": 10.0, "eval_s": 2.0},
        "rank_pattern": ranks if method == "dora" else None,
    }  # fmt: skip


@pytest.fixture
def fake_runs(tmp_path) -> Path:
    """lora: 60 + seed on every task; dora: lora + 2 on three tasks and lora − 1 on two; last = best − 5."""
    for task, method, seed in itertools.product(TASKS, ["lora", "dora"], [1, 2, 3]):
        best = 60.0 + seed + ({"dora": 2.0 if task in TASKS[:3] else -1.0}.get(method, 0.0))
        folder = tmp_path / "runs" / f"{task}-{method}-{seed}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(fake_result(task, method, seed, best, best - 5)))
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "failure.json").write_text(json.dumps({"error": "boom", "step": 3}))
    return tmp_path / "runs"


def test_aggregator_means_stds_avg_ranks_and_paired_differences(fake_runs, tmp_path):
    out = tmp_path / "out"
    mini_table.build(fake_runs, out)
    cells = {(r["protocol"], r["task"], r["method"]): r for r in read_csv(out / "table.csv")}
    assert len(cells) == 2 * 5 * 2
    lora, dora = cells[("best", "rte", "lora")], cells[("best", "cola", "dora")]
    assert (float(lora["mean"]), float(lora["std"]), lora["n"]) == (62.0, 1.0, "3")
    assert float(dora["mean"]) == 61.0 and float(cells[("last", "cola", "dora")]["mean"]) == 56.0
    md = (out / "table.md").read_text()
    # Avg = mean over the 5 tasks: lora 62, dora (3 x 64 + 2 x 61) / 5 = 62.8; dora ranks first on 3 of 5
    assert "| DynDoRA | 2.0K | 64.00 ± 1.00 (3) |" in md and "| 62.80 |" in md
    assert "DynDoRA (1.4; Avg 62.80) > LoRA (1.6; Avg 62.00)" in md
    assert "rte +2.00 ± 0.00 (3/3)" in md and "cola -1.00 ± 0.00 (0/3)" in md
    assert "Higher on average on 3 of 5 tasks" in md
    assert "failed: 1" in md and "30 runs sum to 0.11 run-hours" in md
    assert "Optimizer steps per run: RTE 160, MRPC 160, STS-B 160, CoLA 160, SST-2 160." in md
    heat = read_csv(out / "heatmap.csv")
    # rank (layer + seed) % 3 averaged over seeds 1-3 is 1 everywhere
    assert len(heat) == 5 * 6 and all(float(row["L1"]) == 1.0 for row in heat)
    assert (out / "heatmap.png").stat().st_size > 0
    mini_table.build(fake_runs, tmp_path / "again")  # regenerated figures diff clean: no date in the PDF
    assert (tmp_path / "again" / "heatmap.pdf").read_bytes() == (out / "heatmap.pdf").read_bytes()


def test_collect_copies_results_and_no_runs_is_one_error_line(fake_runs, tmp_path):
    args = ["--runs", str(fake_runs), "--out", str(tmp_path / "o")]
    done = run_script("mini_table.py", *args, "--collect")
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "o" / "runs").glob("*/result.json"))) == 30
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = run_script("mini_table.py", "--runs", str(empty), *args[2:])
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: no completed minilm runs")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_ordering_breaks_rank_ties_by_avg():
    # lora and bitfit each win two tasks and tie on one: both average rank 1.5; lora has the higher Avg
    scores = {"lora": [70, 70, 50, 50, 60], "bitfit": [60, 60, 51, 51, 60]}
    c = pd.DataFrame(
        [
            {"protocol": "best", "method": m, "task": col.task, "mean": v}
            for m, vals in scores.items()
            for col, v in zip(mini_table.COLUMNS, vals, strict=True)
        ]
    )
    (line,), ranks = mini_table.ordering(c, "best")
    assert list(ranks.index) == ["lora", "bitfit"] and list(ranks) == [1.5, 1.5]
    assert line.endswith("LoRA (1.5; Avg 60.00) > BitFit (1.5; Avg 56.40)")


def test_parameter_counts_read_like_the_paper():
    assert [mini_table._count(k) for k in (25_700, 82_900, 22_565_400)] == ["25.7K", "82.9K", "22.6M"]
