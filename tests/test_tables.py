"""Paper tables and grids: the aggregator on a fixture folder, experiment configs, dry-run counts, figures."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dora.cli import compose_config
from dora.records import RunRecord, scan
from scripts import figures, grid, make_tables
from tests.helpers import REPO, compose, run_script

# the paper's grids (mini_* is the MiniLM mini-reproduction, tests/test_mini.py; _* are shared parts)
EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("[!_]*.yaml"))
EXPERIMENTS = [
    e for e in EXPERIMENTS if not e.startswith(("mini_", "study", "tune"))
]  # CPU studies: own tests
DORA_LAYERS = ("attention.self.query", "attention.self.key", "attention.self.value")
DORA_LAYERS += ("attention.output.dense", "intermediate.dense", "output.dense")


# -- a fixture folder of runs, shaped like result.json ------------------------------------------------
def write_run(root: Path, name: str, task: str, method: str, budget, seed: int, best: dict, last=None, **kw):
    """A result.json as the runner writes it (only the fields the aggregator reads)."""
    knobs = kw.pop("knobs", {})
    config = {"seed": seed, "budget": {"name": budget or "low", "rank": kw.pop("rank", 2)}, "method": knobs}
    result = {
        "task": task,
        "method": method,
        "model": kw.pop("model", "roberta_base"),
        "seed": seed,
        "budget": budget,
        "status": "ok",
        "config": config,
        "headline": next(iter(best)),
        "metrics": last or best,
        "best": {**best, "epoch": 3},
        "history": [{"epoch": 1, "step": 10, **best}],
        "params": {"budget": 1_327_104, "trainable": 2_000_000, "total": 126_000_000},
        **kw,
    }
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(result))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for seed, (best, last) in enumerate([(80.0, 79.0), (82.0, 80.0), (84.0, 75.0)], start=1):  # LoRA 1.33M
        acc = {"dev/accuracy": best}, {"dev/accuracy": last}
        write_run(root / "deep" / "er", f"lora{seed}", "rte", "lora", "high", seed, *acc)
    default = {"init_ratio": 1.5, "dem_coef": 0.3}  # Table 8: STS-B eta = 0.3
    for seed, v in ((1, 91.0), (2, 92.0)):
        write_run(root, f"dora-stsb{seed}", "stsb", "dora", "high", seed, {"dev/pearson": v}, knobs=default)
    write_run(
        root,
        "dora-eta0",
        "stsb",
        "dora",
        "high",
        1,
        {"dev/pearson": 50.0},
        knobs={**default, "dem_coef": 0.0},
    )
    write_run(
        root,
        "dora-eta1",
        "stsb",
        "dora",
        "high",
        1,
        {"dev/pearson": 10.0},
        knobs={**default, "dem_coef": 1.0},
    )
    write_run(
        root, "mnli", "mnli", "full", None, 1, {"dev_matched/accuracy": 87.0, "dev_mismatched/accuracy": 88.0}
    )
    write_run(root, "tiny", "rte", "lora", "high", 4, {"dev/accuracy": 0.0}, model="tiny_roberta")
    failed = root / "failed"
    failed.mkdir()
    (failed / "failure.json").write_text(
        json.dumps({"status": "failed", "error": "RuntimeError: boom", "step": 7})
    )
    (root / "killed" / "checkpoints").mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def tables(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tables")
    make_tables.build(runs, out)
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cells(out: Path) -> dict[tuple, dict]:
    rows = read_csv(out / "cells.csv")
    assert list(rows[0]) == make_tables.CELL_COLUMNS
    return {(r["table"], r["task"], r["method"], r["budget"], r["protocol"]): r for r in rows}


def test_cell_means_are_the_means_of_the_runs_headline_metrics(tables):
    c = cells(tables)
    lora = c[("table2", "rte", "lora", "high", "best")]
    assert (lora["n"], float(lora["mean"]), float(lora["std"]), float(lora["median"])) == (
        "3",
        82.0,
        2.0,
        82.0,
    )
    assert float(lora["paper"]) == 80.65
    last = c[("table2", "rte", "lora", "high", "last")]
    assert float(last["mean"]) == pytest.approx(78.0)  # result["metrics"], not "best"
    mnli = c[("table2", "mnli", "full", "", "best")]  # the paper's MNLI column: (matched + mismatched) / 2
    assert (mnli["n"], float(mnli["mean"]), mnli["std"]) == ("1", 87.5, "")


def test_dora_cells_take_only_the_papers_knob_setting_and_runs_serve_two_tables(tables):
    c = cells(tables)
    t2 = c[("table2", "stsb", "dora", "high", "best")]
    assert (t2["n"], float(t2["mean"])) == ("2", 91.5)  # the eta = 0 and eta = 1 runs are not Table 2's
    assert c[("table5", "stsb", "dora", "high", "best")]["mean"] == t2["mean"]  # "with DEM" = Table 2's
    eta0 = c[("table5", "stsb", "dora eta=0", "high", "best")]
    assert (eta0["n"], float(eta0["mean"])) == ("1", 50.0)


def test_missing_cells_stay_missing(tables):
    c = cells(tables)
    mrpc = c[("table2", "mrpc", "lora", "high", "best")]
    assert (mrpc["n"], mrpc["mean"], mrpc["paper"]) == ("0", "", "89.9")
    assert c[("table2", "avg", "lora", "high", "best")]["mean"] == ""  # Avg needs every column
    assert not (tables / "table3.md").exists()  # no SQuAD runs: no Table 3


def test_failed_incomplete_and_other_models_are_listed_never_counted(runs, tables):
    s = scan(runs)
    assert [Path(p).name for p, _ in s.failed] == ["failed"]
    assert [Path(p).name for p in s.incomplete] == ["killed"]
    report = (tables / "runs.md").read_text()
    assert "RuntimeError: boom (step 7)" in report and "killed" in report
    assert "9 completed runs, 7 in at least one table cell, 2 in none" in report  # tiny, eta = 1


def test_table2_md_shows_the_papers_value_beside_ours(tables):
    md = (tables / "table2.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| LoRA (high)"))
    assert "82.00±2.00 (3)<br>paper 80.65, Δ +1.35" in row
    assert "1.33M / 1.33M" in row
    assert "Failed runs: 1, incomplete: 1" in md
    wide = read_csv(tables / "table2.csv")
    assert wide[0]["method"] == "full" and float(wide[0]["MNLI_acc_avg_m_mm"]) == 87.5
    assert (tables / "table2.tex").read_text().count(r"\\") > 12


def test_the_command_line_on_the_fixture(runs, tmp_path):
    done = run_script("make_tables.py", "--runs", str(runs), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "9 runs ok, 1 failed, 1 incomplete" in out and "table2.md" in out


# -- experiment configs and grids ---------------------------------------------------------------------
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_declares_only_its_sweep(experiment):
    body = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "experiment" / f"{experiment}.yaml"))
    assert list(body) == ["hydra"], "settings belong in hydra.sweeper.params (they name the run folder)"
    assert "seed=range(1,6)" in grid.sweep_params(experiment)
    first = grid.job_overrides(experiment, [])[0]
    cfg = compose(*first)
    assert cfg.seed == 1 and cfg.method.name == dict(o.split("=", 1) for o in first)["method"]


@pytest.mark.parametrize(
    ("target", "count"),
    [
        ("table2", 480),
        ("table3", 120),
        ("table4", 35),
        ("table5", 30),
        ("table6", 75),
        ("fig2", 20),
        ("study1", 8),
        ("study3", 80),
    ],
)
def test_dry_run_counts(target, count, tmp_path):
    assert len(grid.plan(target, tmp_path, [])) == count


def test_dry_run_skips_finished_runs_and_tables_share_folders(tmp_path, capsys):
    table2 = {r.folder for r in grid.plan("table2", tmp_path, [])}
    assert {r.folder for r in grid.plan("table5", tmp_path, []) if r.experiment == "table5_dem"} <= table2
    done = tmp_path / "budget=high,method=dora,seed=3,task=cola"
    done.mkdir()
    (done / "result.json").write_text("{}")
    assert grid.main(["table2", "--runs", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "table2: 480 runs, 1 done, 479 to run" in out and str(done) not in out


def test_costs_are_gpu_hours_for_paper_grids_and_cpu_run_hours_for_the_cpu_grid(tmp_path, capsys):
    assert grid.main(["mini", "--runs", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # calibrated on the measured mini-table: 75 runs in 4.24 run-hours
    assert "mini: 75 runs, 0 done, 75 to run; about 4.2 CPU run-hours" in out and "GPU" not in out
    assert grid.main(["table2", "--runs", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "GPU-hours (rough: A100-class GPU" in out and "CPU" not in out
    devices = [grid.device_of(t) for t in ("study1", "study3", "mini_dora", "sweep-dem")]
    assert devices == ["cpu", "cpu", "cpu", "gpu"]


def test_parallel_grid_runs_share_the_cpu_cores():
    cores = len(os.sched_getaffinity(0))
    assert grid.job_env({}, 2, 1)["OMP_NUM_THREADS"] == str(max(1, cores // 2))
    assert grid.job_env({}, 64, 1)["OMP_NUM_THREADS"] == "1"
    assert grid.job_env({"OMP_NUM_THREADS": "3"}, 2, 1)["OMP_NUM_THREADS"] == "3"  # the caller's wins
    assert "OMP_NUM_THREADS" not in grid.job_env({}, 1, 1)  # one run at a time: trainer.threads decides


def test_command_line_overrides_replace_the_configs_sweep(tmp_path):
    runs = grid.plan(
        "sweep-dem", tmp_path, ["task=rte", "seed=1,2", "model=tiny_roberta", "hydra.launcher.n_jobs=2"]
    )
    assert len(runs) == 12  # 6 values of eta x 2 seeds; hydra.* settings are not job overrides
    assert (
        runs[0].folder.name == "budget=low,method.dem_coef=0.0,method=dora,model=tiny_roberta,seed=1,task=rte"
    )


@pytest.mark.parametrize(
    ("target", "extra"),
    [
        ("table2", []),
        ("table6", []),
        ("mini", []),
        ("sweep-dem", ["task=rte", "seed=2", "model=tiny_roberta"]),
    ],
)
def test_run_folders_are_the_names_hydra_gives_the_jobs(target, extra, tmp_path):
    """grid.py names folders without composing each run; Hydra names the launched job's folder."""
    for run in grid.plan(target, tmp_path, extra)[::17]:
        cfg = compose_config(run.overrides, return_hydra_config=True)
        assert run.folder == tmp_path / cfg.hydra.job.override_dirname


def test_grid_passes_the_sweep_on_the_command_line_so_single_knob_values_compose():
    args = grid.grid_args("sweep_dem", ["task=rte", "method.dem_coef=0.0"])
    assert args[:3] == ["experiment=sweep_dem", "method=dora", "budget=low"]
    assert args.count("method.dem_coef=0.0") == 1 and "method.dem_coef=0.0,0.1,0.3,0.5,1.0,2.0" not in args
    cfg = compose(*[a for a in args if "range(" not in a])  # what Hydra composes before sweeping
    assert (cfg.method.name, cfg.method.dem_coef, cfg.task.name) == ("dora", 0.0, "rte")


# -- figures ------------------------------------------------------------------------------------------
def test_figure2_averages_rank_patterns_over_seeds(tmp_path):
    runs = []
    for active in (2, 4):  # two seeds
        pattern = {f"roberta.encoder.layer.{i}.{m}": active for i in range(12) for m in DORA_LAYERS}
        config = {"budget": {"rank": 2}, "method": {"init_ratio": 1.5, "dem_coef": 0.5}}
        fields = {"model": "roberta_base", "task": "sst2", "method": "dora", "config": config}
        runs.append(RunRecord.from_result({**fields, "rank_pattern": pattern}, f"seed{active}"))
    assert figures.figure2(runs, "roberta_base", tmp_path)
    rows = read_csv(tmp_path / "fig2.csv")
    assert [r["matrix"] for r in rows] == ["Wq", "Wk", "Wv", "Wo", "Wf1", "Wf2"]
    assert {float(r["L12"]) for r in rows} == {3.0}
    assert (tmp_path / "fig2.png").stat().st_size > 0 and (tmp_path / "fig2.pdf").exists()


def test_sweep_plot_has_one_point_per_knob_value_with_error_bars(runs, tmp_path):
    ok = scan(runs).ok
    path = figures.sweep_plot(ok, "stsb", "method.dem_coef", tmp_path)
    points = read_csv(path.with_suffix(".csv"))
    got = {float(p["x"]): (float(p["mean"]), p["n"]) for p in points}
    assert got == {0.0: (50.0, "1"), 0.3: (91.5, "2"), 1.0: (10.0, "1")}
    assert path.exists() and path.with_suffix(".pdf").exists()


def test_dyndora_recipe_is_the_papers_table8():
    """configs/recipe/dora.yaml, composed task by task, is results/paper/table8.csv; the aggregator reads
    eta there too (make_tables.paper_eta) to tell a paper-setting DynDoRA run."""
    rows = make_tables.read_csv(make_tables.PAPER / "table8.csv")
    for row, task in zip(rows, make_tables.paper_eta(), strict=True):
        cfg = compose("method=dora", f"task={task}")
        t, m = cfg.trainer, cfg.method
        ours = (t.max_length, t.lr, t.batch_size, t.epochs, m.dem_coef, m.prune_interval)
        paper = (row["max_len"], row["lr"], row["batch_size"], row["epochs"], row["reg_coef_eta"])
        paper = (*map(float, paper), float(row["prune_interval_steps"]))
        assert ours == paper, task


def test_concurrent_grid_jobs_get_distinct_gpus(tmp_path, monkeypatch):
    from scripts import grid_job

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("DORA_RUNS_PER_GPU", "1")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with grid_job.gpu_slot(tmp_path) as first, grid_job.gpu_slot(tmp_path) as second:
        assert {first["CUDA_VISIBLE_DEVICES"], second["CUDA_VISIBLE_DEVICES"]} == {"0", "1"}
    with grid_job.gpu_slot(tmp_path) as again:  # released on exit
        assert again["CUDA_VISIBLE_DEVICES"] == "0"


def test_budget_curves_start_at_b0_and_follow_the_pruning_events(tmp_path):
    run = {"task": "rte", "method": "dora", "budget": "low", "model": "tiny_roberta"}
    run |= {
        "config": {"method": {"init_ratio": 1.5}, "budget": {"rank": 2}},
        "rank_pattern": dict.fromkeys("abcd", 2),
    }
    run["budget_history"] = [[3, 10], [10, 8]]
    run = RunRecord.from_result(run, "run")
    assert figures.budget_points(run) == [(0, 3), (3, 2.5), (10, 2.0)]  # average rank = active / 4 matrices
    assert figures.budget_curves([run], tmp_path) == ["budget_rte"]
    assert (tmp_path / "budget_rte.pdf").exists()


def test_rank_maps_draw_each_runs_final_ranks_with_the_one_heatmap(tmp_path):
    """``figures.py ranks``: one figure per run with a rank pattern (RoBERTa's rows, or BART's ten)."""
    from dora.families import FAMILIES

    roberta = {f"roberta.encoder.layer.{i}.{m}": i % 3 for i in range(2) for m in DORA_LAYERS}
    bart = {f"model.{s}.layers.0.{m}": 2 for s in ("encoder", "decoder") for m in FAMILIES["bart"].matrices}
    bart = {n: k for n, k in bart.items() if "encoder.layers.0.encoder_attn" not in n}
    runs = tmp_path / "runs"
    for name, pattern in (("enc", roberta), ("bart", bart), ("lora", None)):
        write_run(runs, name, "rte", "dora", "low", 1, {"dev/accuracy": 60.0}, rank_pattern=pattern)
    out = tmp_path / "figures"
    done = run_script("figures.py", "ranks", "--runs", str(runs), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        f"ranks_{n}.{e}" for n in ("bart", "enc") for e in ("pdf", "png")
    ]
    grid = figures.rank_grid(RunRecord.from_result({"rank_pattern": bart}, "bart"))
    assert len(grid.rows) == 10 and grid.cols == ["enc1", "dec1"]


def test_the_papers_figure2_panels_are_its_twelve_layers():
    """results/paper/fig2.csv's L1..L12 (its budget column is not a layer)."""
    paper = figures.paper_fig2()
    assert sorted(paper) == [2, 4, 8, 16]
    assert paper[2].cols == [str(i) for i in range(1, 13)] and paper[2].values.shape == (6, 12)
    assert paper[2].values[0, 0] == 3 and paper[8].values[0, 0] == 11  # Wq, layer 1
