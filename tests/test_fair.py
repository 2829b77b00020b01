"""Fair-comparison tooling in make_tables: the `common` protocol, degenerate runs, one configuration per
cell, tables titled by what ran, and the allocation diagnostics (scripts/allocation.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from dora.records import RunRecord, scan
from scripts import allocation, make_tables

REPO = Path(__file__).resolve().parent.parent

LAYER = "bert.encoder.layer.{}.{}"
MATS = ("attention.self.query", "attention.self.key", "attention.self.value", "output.dense")


def result(method, seed, history, task="stsb", model="minilm", budget="low", **kw) -> dict:
    headline = "dev/pearson" if task == "stsb" else "dev/accuracy"
    hist = [{"epoch": i + 1, "step": s, headline: v} for i, (s, v) in enumerate(history)]
    best = max((h for h in hist if h["step"] >= kw.get("best_from_step", 0)), key=lambda h: h[headline])
    out = {"task": task, "method": method, "model": model, "seed": seed, "budget": budget, "status": "ok",
           "config": {"seed": seed, "method": {"name": method}, "trainer": {"lr": kw.pop("lr", 1e-3)},
                      "task": {"splits": {"train": "train", "dev": "dev"}}},
           "headline": headline, "metrics": {headline: hist[-1][headline]},
           "best": {k: v for k, v in best.items() if k != "step"}, "history": hist,
           "params": {"budget": 1000}, **kw}  # fmt: skip
    if method == "dora":
        out["config"]["method"] |= {"init_ratio": 1.5, "dem_coef": 0.3}
    return out


def write(root: Path, results: list[dict]) -> Path:
    for i, r in enumerate(results):
        folder = root / f"run{i}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(r))
    return root


def cell(out: Path, protocol: str, task: str, method: str, budget: str = "low") -> dict:
    with open(out / "cells.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["table"] == "table2"]
    budget = "" if method in ("full", "bitfit") else budget
    key = (protocol, task, method, budget)
    return next(r for r in rows if (r["protocol"], r["task"], r["method"], r["budget"]) == key)


def test_common_protocol_gives_every_method_the_same_eligible_evaluations(tmp_path):
    """LoRA may use its step-50 evaluation under `best` (no allocation), DynDoRA only from step 100; under
    `common` both take the best from step 100, the latest final allocation of the column."""
    runs = [result("lora", s, [(50, 90.0), (100, 80.0), (150, 81.0)], best_from_step=0) for s in (1, 2)]
    runs += [result("dora", s, [(50, 95.0), (100, 82.0), (150, 83.0)], best_from_step=100) for s in (1, 2)]
    out = tmp_path / "out"
    make_tables.build(write(tmp_path / "runs", runs), out)
    assert float(cell(out, "best", "stsb", "lora")["mean"]) == 90.0
    assert float(cell(out, "best", "stsb", "dora")["mean"]) == 83.0
    assert float(cell(out, "common", "stsb", "lora")["mean"]) == 81.0
    assert float(cell(out, "common", "stsb", "dora")["mean"]) == 83.0
    assert float(cell(out, "last", "stsb", "lora")["mean"]) == 81.0


def test_common_protocol_reads_old_runs_final_step_from_budget_history():
    old = result("adalora", 1, [(60, 50.0), (120, 55.0)], task="rte")
    old["budget_history"] = [[55, 80], [65, 72]]
    old = RunRecord.from_result(old, "old")
    assert old.allocation_final_step() == 65
    assert old.value("dev/accuracy", "common", 65) == 55.0
    assert old.value("dev/accuracy", "common", 500) == 55.0  # none that late: the last


def test_degenerate_runs_are_counted_apart_never_averaged_in(tmp_path):
    runs = [result("lora", 1, [(10, 0.0)], task="cola"), result("lora", 2, [(10, 20.0)], task="cola")]
    for r in runs:  # CoLA's headline
        r["headline"] = "dev/mcc"
        r["metrics"] = {"dev/mcc": r["history"][-1].pop("dev/accuracy")}
        r["history"][-1]["dev/mcc"] = r["metrics"]["dev/mcc"]
        r["best"] = dict(r["metrics"])
    runs += [
        result("lora", s, [(10, v)], task="rte")
        for s, v in ((1, 52.7075812274), (2, 60.0), (3, 47.2924187726))
    ]
    out = tmp_path / "out"
    make_tables.build(write(tmp_path / "runs", runs), out)
    cola, rte = cell(out, "last", "cola", "lora"), cell(out, "last", "rte", "lora")
    assert (cola["n"], cola["degenerate"], float(cola["mean"])) == ("1", "1", 20.0)
    assert (rte["n"], rte["degenerate"], float(rte["mean"])) == (
        "1",
        "2",
        60.0,
    )  # majority and minority class
    assert "60.00 (1) +2 trivial" in (out / "table2.md").read_text()


def test_result_json_constant_scores_decide_over_the_official_table():
    r = result("lora", 1, [(10, 52.7075812274)], task="rte")
    assert make_tables.is_degenerate(RunRecord.from_result(r, "r"), "dev/accuracy", 52.7075812274)
    r["config"]["task"]["splits"]["dev"] = "train:0:100"  # not the official dev set: no table to use
    assert not make_tables.is_degenerate(RunRecord.from_result(r, "r"), "dev/accuracy", 52.7075812274)
    r["constant_scores"] = {"dev/accuracy": [55.0, 45.0]}
    assert make_tables.is_degenerate(RunRecord.from_result(r, "r"), "dev/accuracy", 45.0)


@pytest.mark.full_data  # the official dev sets' label shares: the full files, not data/fixtures
def test_official_dev_constants_match_the_data(full_data_dir):
    from tasks.glue import GLUE, read_tsv

    for task, constants in make_tables.OFFICIAL_DEV_CONSTANTS.items():
        labels = read_tsv(str(full_data_dir / "glue" / GLUE[task].folder / "dev.tsv"), GLUE[task])["labels"]
        shares = sorted((100 * labels.count(k) / len(labels) for k in set(labels)), reverse=True)
        assert shares == pytest.approx(sorted(constants, reverse=True), abs=1e-8), task


def test_runs_of_another_configuration_never_share_a_cell_and_tables_say_what_ran(tmp_path, capsys):
    runs = [result("full", s, [(10, 80.0)], task="sst2", budget=None) for s in (1, 2, 3)]
    demo = result(
        "full", 1, [(10, 82.0)], task="sst2", budget=None, lr=5e-5
    )  # e.g. the demo's 4,000-sentence run
    out = tmp_path / "out"
    make_tables.build(write(tmp_path / "runs", [*runs, demo]), out)
    c = cell(out, "best", "sst2", "full")
    assert (c["n"], float(c["mean"])) == ("3", 80.0)
    assert "Arithmetic: not recorded (3 runs)." in (out / "table2.md").read_text()
    assert "excluded" in (out / "runs.md").read_text() and "run3" in (out / "runs.md").read_text()
    md = (out / "table2.md").read_text()
    assert md.startswith("# table2: all-MiniLM-L6-v2 (MiniLM) on GLUE (dev)") and "RoBERTa-base on" not in md
    assert "counting minilm runs" in capsys.readouterr().out


def test_runs_that_differ_only_in_where_they_ran_share_a_cell(tmp_path):
    """A GPU machine's data_dir, output_dir and checkpoint cadence are not the experiment: one cell, one
    allocation group (the MiniLM study's MRPC mixes GPU and CPU runs)."""
    runs = [
        result("dora", s, [(10, 80.0 + s)], rank_pattern={"a": 1 + s % 2, "b": 2 - s % 2}) for s in (1, 2, 3)
    ]
    for r, where in zip(runs, ("/work/shared/data", "/root/stage/data", "/work/shared/data"), strict=True):
        r["config"] |= {
            "data_dir": where,
            "output_dir": f"{where}/run",
            "trainer": {"lr": 1e-3, "checkpoint_every": 7},
        }
    runs[1]["config"]["trainer"]["checkpoint_every"] = 200
    out = tmp_path / "out"
    make_tables.build(write(tmp_path / "runs", runs), out)
    assert (cell(out, "last", "stsb", "dora")["n"], float(cell(out, "last", "stsb", "dora")["mean"])) == (
        "3",
        82.0,
    )
    rows = allocation.diagnose(scan(tmp_path / "runs").ok)
    assert [r["seeds"] for r in rows] == [3]
    runs[2]["config"]["trainer"]["lr"] = 3e-3  # a knob that changes training still splits the cell
    make_tables.build(write(tmp_path / "runs2", runs), out)
    assert cell(out, "last", "stsb", "dora")["n"] == "2"


def test_dyndora_is_named_dyndora_in_tables(tmp_path):
    out = tmp_path / "out"
    make_tables.build(write(tmp_path / "runs", [result("dora", 1, [(10, 80.0)], best_from_step=0)]), out)
    md = (out / "table2.md").read_text()
    assert "| DynDoRA (low) |" in md and "| DoRA" not in md
    assert "Arithmetic: not recorded (1 runs)." in md


def patterned(method, seed, ranks: dict, diag=None) -> RunRecord:
    r = result(method, seed, [(10, 80.0)])
    r["rank_pattern"] = ranks
    if diag:
        r["diagnostics"] = diag
    return RunRecord.from_result(r, f"{method}{seed}")


def test_allocation_reproducible_patterns_score_high_with_small_p():
    names = [LAYER.format(i, m) for i in range(6) for m in MATS]
    rng = np.random.default_rng(0)
    base = rng.integers(0, 4, len(names))
    same = [
        patterned(
            "adalora", s, dict(zip(names, (base + (rng.random(len(names)) < 0.1)).tolist(), strict=True))
        )
        for s in (1, 2, 3)
    ]
    noise = [patterned("dora", s, dict(zip(names, rng.integers(0, 4, len(names)).tolist(), strict=True)),
                       {"b_cos_init": 0.99, "a_cos_init": 0.9, "lr_sum": 0.5}) for s in (1, 2, 3)]  # fmt: skip
    rows = {r["method"]: r for r in allocation.diagnose(same + noise)}
    assert rows["adalora"]["mean_r"] > 0.8 and rows["adalora"]["p"] < 0.001
    assert abs(rows["dora"]["mean_r"]) < 0.3 and rows["dora"]["p"] > 0.05
    assert rows["dora"]["b_cos_init"] == 0.99 and rows["adalora"]["b_cos_init"] is None


def test_allocation_uniform_patterns_have_no_correlation():
    names = [LAYER.format(i, m) for i in range(6) for m in MATS]
    runs = [patterned("dora", s, dict.fromkeys(names, 2)) for s in (1, 2)]
    (row,) = allocation.diagnose(runs)
    assert row["uniform"] == 2 and row["mean_r"] is None and row["p"] is None


def test_committed_mini_results_dyndora_allocation_is_noise_adalora_reproducible():
    """The review of results/mini: DynDoRA's patterns ≈ uncorrelated across seeds, AdaLoRA's reproducible."""
    s = scan(REPO / "results" / "mini" / "runs")
    rows = allocation.diagnose(s.ok)
    dora = [r for r in rows if r["method"] == "dora"]
    ada = [r for r in rows if r["method"] == "adalora"]
    assert len(dora) == len(ada) == 5
    assert all(-0.2 < r["mean_r"] < 0.1 and r["p"] > 0.3 for r in dora)
    assert all(0.3 < r["mean_r"] < 0.45 and r["p"] < 0.01 for r in ada)


def test_committed_study_stage1_report_is_rebuilt_from_its_result_files(tmp_path):
    """results/study/stage1 is a pure function of its runs/*/result.json (make study-report)."""
    stage1 = REPO / "results" / "study" / "stage1"
    make_tables.build(stage1 / "runs", tmp_path, protocol="common")
    for name in ("allocation.csv", "cells.csv", "table2.md"):
        assert (tmp_path / name).read_text() == (stage1 / name).read_text(), name
    rows = {(r["task"], r["lr"]): r for r in allocation.diagnose(scan(stage1 / "runs").ok)}
    assert float(rows["cola", 0.01]["b_cos_init"]) < 0.8 and rows["stsb", 0.003]["p"] < 0.05


def test_committed_results_seed_a_runs_folder_without_overwriting(tmp_path):
    """make study*: the committed result.json files seed a fresh runs folder (the grid then skips those runs);
    a run's own result.json there is never overwritten."""
    from scripts.collect_results import collect

    committed, runs = tmp_path / "results", tmp_path / "runs"
    for name, text in (("a", "committed a"), ("b", "committed b")):
        (committed / name).mkdir(parents=True)
        (committed / name / "result.json").write_text(text)
    (runs / "b").mkdir(parents=True)
    (runs / "b" / "result.json").write_text("the run's own")
    assert collect(committed, runs, missing_only=True) == 1
    assert (runs / "a" / "result.json").read_text() == "committed a"
    assert (runs / "b" / "result.json").read_text() == "the run's own"
    assert collect(committed, runs) == 2 and (runs / "b" / "result.json").read_text() == "committed b"
