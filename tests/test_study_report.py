"""The MiniLM study's report (scripts/study_report.py) on a fixture folder of stage-3-shaped runs."""

from __future__ import annotations

import csv
import math
import statistics

import pytest
import yaml

from scripts import study_report
from tests.helpers import run_script
from tests.test_tables import DORA_LAYERS, write_run

# (variant, task) -> last score per seed 1..3; MCC 0 is CoLA's constant predictor
SCORES = {
    ("lora", "cola"): (20.0, 22.0, 24.0),
    ("adalora", "cola"): (10.0, 0.0, 14.0),  # seed 2 at the trivial predictor
    ("dora", "cola"): (21.0, 25.0, 23.0),
    ("dora_noprune", "cola"): (22.0, 24.0, 20.0),
    ("lora", "stsb"): (85.0, 86.0, 84.0),
    ("adalora", "stsb"): (84.0, 84.0, 84.5),
    ("dora", "stsb"): (86.0, 85.5, 85.0),
    ("dora_noprune", "stsb"): (85.0, 85.5, 85.5),
}
METRIC = {"cola": "dev/mcc", "stsb": "dev/pearson"}


def pattern(seed: int, task: str) -> dict:
    return {
        f"roberta.encoder.layer.{i}.{m}": (i + seed + len(task)) % 3 for i in range(2) for m in DORA_LAYERS
    }


@pytest.fixture(scope="module")
def stage3(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage3")
    for (var, task), values in SCORES.items():
        method = "dora" if var.startswith("dora") else var
        knobs = (
            {"init_ratio": 1.0 if var == "dora_noprune" else 1.5, "dem_coef": 0.3} if method == "dora" else {}
        )
        for seed, v in enumerate(values, start=1):
            metric = METRIC[task]
            # an earlier, higher evaluation at step 100 (before DynDoRA's allocation is final at step 300)
            history = [{"step": 100, metric: v + 5}, {"step": 400, metric: v + 1}, {"step": 500, metric: v}]
            write_run(
                root, f"{var}-{task}-{seed}", task, method, "low", seed, {metric: v + 1}, {metric: v},
                knobs=knobs, model="minilm", history=history, best_from_step=300 if method == "dora" else 0,
                constant_scores={metric: [0.0]},
                rank_pattern=pattern(seed, task) if var == "dora" else None,
                env={"device": "cuda:0" if task == "cola" else "cpu"},
                timing={"setup_s": 0.0, "train_s": 60.0 * seed, "eval_s": 60.0},
            )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def report(stage3, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    done = run_script("study_report.py", "table", "--runs", str(stage3), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def rows(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_means_leave_degenerate_runs_apart_and_average_over_tasks(report):
    s = {(r["protocol"], r["variant"], r["task"]): r for r in rows(report / "study.csv")}
    ada = s["last", "adalora", "cola"]
    assert (int(ada["n"]), float(ada["mean"]), int(ada["degenerate"])) == (2, 12.0, 1)
    lora = s["last", "lora", "cola"]
    assert math.isclose(float(lora["mean"]), 22.0) and math.isclose(float(lora["std"]), 2.0)
    assert math.isclose(float(s["last", "dora", "avg"]["mean"]), (23.0 + 85.5) / 2)
    # common: every run of a task is scored from step 300 on (DynDoRA's final allocation), so the step-100
    # evaluation counts for no method; best: LoRA's own eligible set (from step 0) includes it
    assert math.isclose(float(s["common", "lora", "cola"]["mean"]), 23.0)
    assert math.isclose(float(s["best", "lora", "cola"]["mean"]), 23.0)  # result["best"] = v + 1
    md = (report / "study.md").read_text()
    assert "| DynDoRA, no pruning |" in md and "12.00 ± 2.83 (2) +1" in md
    assert "Where the runs trained: cola: 12 gpu; stsb: 12 cpu." in md  # result.json env.device, per task


def test_cost_sums_each_runs_time_per_task_method_and_device(report):
    c = {(r["task"], r["variant"], r["device"]): r for r in rows(report / "cost.csv")}
    assert len(c) == 8 and {d for _, _, d in c} == {"gpu", "cpu"}
    lora = c["cola", "lora", "gpu"]  # seeds 1-3: 120, 180 and 240 s (training + evaluation)
    assert int(lora["runs"]) == 3 and math.isclose(float(lora["median_min"]), 3.0)
    assert math.isclose(float(lora["run_h"]), 540 / 3600)
    md = (report / "study.md").read_text()
    assert "| cola | DynDoRA, no pruning | gpu | 3 | 3.0 | 0.15 |" in md
    assert "| all | all | gpu | 12 | — | 0.60 |" in md and "| all | all | cpu | 12 | — | 0.60 |" in md


def test_paired_differences_are_per_seed_and_drop_degenerate_pairs(report):
    p = {(r["protocol"], r["comparison"], r["task"]): r for r in rows(report / "paired.csv")}
    lora = p["last", "dora - lora", "cola"]
    assert lora["diffs"] == "1:+1.00 2:+3.00 3:-1.00"
    assert (int(lora["n"]), int(lora["favour_a"]), int(lora["favour_b"])) == (3, 2, 1)
    assert math.isclose(float(lora["mean_diff"]), 1.0) and math.isclose(float(lora["std_diff"]), 2.0)
    from scipy.stats import ttest_rel

    assert math.isclose(float(lora["p_ttest"]), ttest_rel([21, 25, 23], [20, 22, 24]).pvalue)
    ada = p["last", "dora - adalora", "cola"]
    assert ada["diffs"] == "1:+11.00 3:+9.00" and int(ada["degenerate_pairs"]) == 1
    # the average: per seed, the mean over both tasks (AdaLoRA's MCC 0 included)
    avg = p["last", "dora - adalora", "avg"]
    assert avg["diffs"] == "1:+6.50 2:+13.25 3:+4.75"
    noprune = p["last", "dora - dora_noprune", "stsb"]
    assert noprune["diffs"] == "1:+1.00 2:+0.00 3:-0.50" and (noprune["favour_a"], noprune["favour_b"]) == (
        "1",
        "1",
    )
    assert "| DynDoRA − LoRA | cola | 3 | +1.00 ± 2.00 | 2/1 |" in (report / "paired.md").read_text()


def test_mean_rank_map_is_drawn_for_dyndora(report):
    assert (report / "ranks_mean.png").is_file() and (report / "ranks_mean.pdf").is_file()


def test_two_runs_of_one_cell_and_seed_are_refused(tmp_path):
    """Two configurations mixed in one folder (e.g. two learning rates) would be averaged as one cell."""
    runs = tmp_path / "runs"
    for name, lr in (("a", 1e-3), ("b", 3e-3)):
        write_run(runs, name, "cola", "lora", "low", 1, {"dev/mcc": 1.0}, model="minilm",
                  knobs={"lr": lr}, history=[{"step": 1, "dev/mcc": 1.0}])  # fmt: skip
    done = run_script("study_report.py", "table", "--runs", str(runs), "--out", str(tmp_path / "out"))
    assert done.returncode != 0 and "cola/lora/seed 1" in done.stderr and not (tmp_path / "out").exists()


def test_a_study_with_no_paired_seed_yet_still_reports(tmp_path):
    """Early in stage 3 (DynDoRA and LoRA at different seeds) the table is written and the paired file is
    empty, with its header, instead of the report failing."""
    runs = tmp_path / "runs"
    for name, method, seed, knobs in (("a", "lora", 1, {}), ("b", "dora", 2, {"init_ratio": 1.5})):
        write_run(runs, name, "mrpc", method, "low", seed, {"dev/accuracy": 80.0}, model="minilm", knobs=knobs,
                  history=[{"step": 1, "dev/accuracy": 80.0}], env={"device": "cuda:0"})  # fmt: skip
    done = run_script("study_report.py", "table", "--runs", str(runs), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "| LoRA | 80.00 ± — (1) | 80.00 |" in (tmp_path / "out" / "study.md").read_text()
    assert rows(tmp_path / "out" / "paired.csv") == []
    assert "mrpc: 2 gpu" in (tmp_path / "out" / "study.md").read_text()


def test_lr_evidence_marks_the_choice_and_the_edge(tmp_path):
    grid = [
        {"lr": lr, "n": 1, "mean": m, "failed": f, "degenerate": d}
        for lr, m, f, d in ((1e-3, 15.7, 0, 0), (3e-3, 0.0, 0, 1), (1e-2, None, 1, 0))
    ]
    body = {"lr": 1e-3, "edge_of_grid": False, "metric": "dev/mcc", "grid": grid}
    (tmp_path / "minilm_dora_cola.yaml").write_text(yaml.safe_dump(body))
    (tmp_path / "other_lora_cola.yaml").write_text(yaml.safe_dump(body))  # another backbone: not this study
    assert study_report.main(["lr", "--tuned", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "lr.md").read_text()
    assert "| DynDoRA | cola | mcc | **0.001 → 15.70**; 0.003 → 0.00 (trivial); 0.01 → failed | no |" in md
    assert len(rows(tmp_path / "out" / "lr.csv")) == 3


def test_training_curves_never_pool_two_rates_or_pruning_with_no_pruning():
    from dora.records import RunRecord
    from scripts.figures import _group_label

    def run(ratio, lr):
        config = {"method": {"init_ratio": ratio}, "trainer": {"lr": lr}}
        return RunRecord.from_result(
            {"method": "dora", "budget": "low", "model": "minilm", "config": config}, "r"
        )

    labels = {_group_label(run(1.5, 1e-3)), _group_label(run(1.0, 1e-3)), _group_label(run(1.5, 3e-3))}
    assert labels == {
        "dora low (minilm, lr 0.001)",
        "dora no pruning low (minilm, lr 0.001)",
        "dora low (minilm, lr 0.003)",
    }


def test_allocation_table_names_dyndora_without_pruning_apart(tmp_path):
    """The study's allocation.md holds DynDoRA and its no-pruning ablation (init_ratio 1) as two rows of one
    (task, lr): each must say which it is, and the ablation's patterns count as uniform."""
    from dora.records import scan
    from scripts import allocation

    uniform = {f"roberta.encoder.layer.{i}.{m}": 2 for i in range(2) for m in DORA_LAYERS}
    for ratio in (1.5, 1.0):
        for seed in (1, 2):
            write_run(
                tmp_path, f"r{ratio}-{seed}", "cola", "dora", "low", seed, {"dev/mcc": 20.0}, {"dev/mcc": 20.0},
                knobs={"init_ratio": ratio, "dem_coef": 0.3}, model="minilm",
                rank_pattern=pattern(seed, "cola") if ratio == 1.5 else uniform,
            )  # fmt: skip
    runs = scan(tmp_path).ok
    assert sorted(r.variant for r in runs) == ["dora", "dora", "dora_noprune", "dora_noprune"]
    rows = {r["variant"]: r for r in allocation.diagnose(runs)}
    assert rows["dora_noprune"]["uniform"] == 2 and rows["dora"]["uniform"] == 0
    md = allocation.markdown(list(rows.values()))
    assert "| cola | DynDoRA | low |" in md and "| cola | DynDoRA, no pruning | low |" in md


def test_study_cost_sums_run_hours_per_stage_and_device(tmp_path):
    for stage, dev, secs in (("stage1", "cpu", (1800.0, 3600.0)), ("stage3", "cuda:0", (90.0,))):
        for seed, s in enumerate(secs, start=1):
            write_run(
                tmp_path / stage / "runs", f"r{seed}", "cola", "lora", "low", seed, {"dev/mcc": 20.0},
                model="minilm", env={"device": dev}, timing={"setup_s": 0.0, "train_s": s - 10, "eval_s": 10.0},
            )  # fmt: skip
    done = run_script("study_report.py", "cost", "--root", str(tmp_path))
    assert done.returncode == 0, done.stderr
    c = {(r["stage"], r["device"]): r for r in rows(tmp_path / "cost.csv")}
    assert set(c) == {("stage1", "cpu"), ("stage3", "gpu")}
    assert int(c["stage1", "cpu"]["runs"]) == 2 and math.isclose(float(c["stage1", "cpu"]["run_h"]), 1.5)
    md = (tmp_path / "cost.md").read_text()
    assert "| all | cpu | 2 | 1.50 |" in md and "| all | gpu | 1 | 0.03 |" in md


def test_cpu_twins_replace_their_gpu_counterparts(stage3, tmp_path):
    """--replace: the table again with each run that has a twin (same task, method, seed) swapped for it."""
    twins = tmp_path / "twins"
    write_run(twins, "lora-cola-1", "cola", "lora", "low", 1, {"dev/mcc": 30.0}, model="minilm",
              history=[{"step": 400, "dev/mcc": 31.0}, {"step": 500, "dev/mcc": 30.0}],
              constant_scores={"dev/mcc": [0.0]}, env={"device": "cpu"},
              timing={"setup_s": 0.0, "train_s": 60.0, "eval_s": 60.0})  # fmt: skip
    out = tmp_path / "out"
    done = run_script(
        "study_report.py", "table", "--runs", str(stage3), "--replace", str(twins), "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    s = {(r["protocol"], r["variant"], r["task"]): r for r in rows(out / "study.csv")}
    assert math.isclose(float(s["last", "lora", "cola"]["mean"]), (30.0 + 22.0 + 24.0) / 3)
    assert int(s["last", "lora", "cola"]["n"]) == 3  # replaced, not added
    p = {(r["protocol"], r["comparison"], r["task"]): r for r in rows(out / "paired.csv")}
    assert p["last", "dora - lora", "cola"]["diffs"] == "1:-9.00 2:+3.00 3:-1.00"
    assert "cola: 1 cpu, 11 gpu;" in (out / "study.md").read_text()


def test_twins_md_sets_each_run_next_to_its_twin(stage3, tmp_path):
    """twins.md: each twinned run's scores on both devices, and how alike their final rank patterns are."""
    twins = tmp_path / "twins"
    ranks = pattern(1, "cola")
    first = next(iter(ranks))
    ranks_twin = ranks | {first: ranks[first] + 1}  # one matrix of 12 ends one rank higher on the twin
    write_run(twins, "dora-cola-1", "cola", "dora", "low", 1, {"dev/mcc": 18.0}, {"dev/mcc": 17.0},
              knobs={"init_ratio": 1.5, "dem_coef": 0.3}, model="minilm", best_from_step=300,
              history=[{"step": 100, "dev/mcc": 30.0}, {"step": 400, "dev/mcc": 18.0}, {"step": 500, "dev/mcc": 17.0}],
              constant_scores={"dev/mcc": [0.0]}, rank_pattern=ranks_twin, env={"device": "cpu"},
              timing={"setup_s": 0.0, "train_s": 60.0, "eval_s": 60.0})  # fmt: skip
    out = tmp_path / "out"
    done = run_script(
        "study_report.py", "table", "--runs", str(stage3), "--replace", str(twins), "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    md = (out / "twins.md").read_text()
    rows_ = [line for line in md.splitlines() if line.startswith("| cola")]
    assert len(rows_) == 1  # only the twinned run, not the table's other runs
    cells = [c.strip() for c in rows_[0].strip("|").split("|")]
    # last, common (from step 300: the GPU run's 22 at step 400 against the twin's 18), best
    assert cells[:7] == [
        "cola",
        "DynDoRA",
        "1",
        "gpu → cpu",
        "21.00 → 17.00",
        "22.00 → 18.00",
        "22.00 → 18.00",
    ]
    x = [float(v) for v in ranks.values()]
    y = [float(v) for v in ranks_twin.values()]
    assert cells[7] == f"11 of 12, r {statistics.correlation(x, y):.2f}"


def test_a_twin_without_a_counterpart_is_refused(stage3, tmp_path):
    twins = tmp_path / "twins"
    write_run(twins, "lora-mrpc-1", "mrpc", "lora", "low", 1, {"dev/accuracy": 80.0}, model="minilm",
              history=[{"step": 1, "dev/accuracy": 80.0}])  # fmt: skip
    out = tmp_path / "out"
    done = run_script(
        "study_report.py", "table", "--runs", str(stage3), "--replace", str(twins), "--out", str(out)
    )
    assert done.returncode != 0 and "mrpc/lora/seed 1" in done.stderr and not out.exists()


def test_tasks_md_has_a_block_per_task_and_the_average(report):
    md = (report / "tasks.md").read_text()
    cola = md[md.index("## cola") : md.index("## stsb")]
    assert cola.startswith("## cola: 12 runs (12 on the GPU); dev mcc")
    assert "| AdaLoRA (?) | 12.00 ± 2.83 (2) +1 |" in cola  # no trainer.lr in these records
    assert "| DynDoRA − LoRA | +1.00 ± 2.00 | 2/1 |" in cola
    avg = md[md.index("## Average over the tasks") :]
    assert "| DynDoRA | 54.25 |" in avg  # (23.0 + 85.5) / 2 under last
    assert "| DynDoRA − AdaLoRA | 3 | +8.17 ± " in avg  # per-seed averages 6.50, 13.25, 4.75


def test_wallclock_is_the_union_of_run_log_spans(tmp_path, capsys):
    def log(run, *times):
        (tmp_path / "s" / run).mkdir(parents=True)
        lines = [f"[2026-11-30 {t},123][dora.runner][INFO] - eval" for t in times]
        (tmp_path / "s" / run / "run.log").write_text("\n".join(["no timestamp here", *lines]) + "\n")

    log("a", "10:00:00", "10:10:00", "10:20:00", "10:30:00")  # gaps under 15 min: one span, 10:00-10:30
    # 10:20 and 10:40 are 20 min apart: two points; then killed, resumed: 12:00-12:06
    log("b", "10:20:00", "10:40:00", "12:00:00", "12:06:00")
    assert study_report.main(["wallclock", str(tmp_path / "s")]) == 0
    # union: 10:00-10:30 (b's lone 10:20 and 10:40 spans are points) + 12:00-12:06 = 0.6 h
    assert "2 runs, 0.60 h wall-clock" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no <run>/run.log"):
        study_report.main(["wallclock", str(tmp_path / "empty")])
