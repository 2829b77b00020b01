"""make tune (scripts/tune.py): a learning-rate grid on unreported seeds, the choice written to a file that
a later run reads through ${tuned:}."""

from __future__ import annotations

import json
import subprocess
from argparse import Namespace
from pathlib import Path

import pytest
import yaml

from scripts import grid, tune
from tests.helpers import compose

REPO = Path(__file__).resolve().parent.parent

TINY = [
    "data_dir=" + str(REPO / "data" / "demo"), "task.splits.train=train:0:32", "task.splits.dev=dev:0:32",
    "trainer.max_steps=2", "trainer.batch_size=8",
]  # fmt: skip


def test_tune_runs_the_grid_chooses_and_a_later_run_uses_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DORA_TUNED_DIR", str(tmp_path / "tuned"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    argv = ["--model", "tiny_roberta", "--method", "bitfit", "--task", "sst2", "--lrs", "1e-4,3e-2",
            "--seeds", "0", "--runs", str(tmp_path / "runs"), "--", "logger=none", "trainer.progress=false",
            *TINY]  # fmt: skip
    assert tune.main(argv) == 0
    out = capsys.readouterr().out
    path = tmp_path / "tuned" / "tiny_roberta_bitfit_sst2.yaml"
    chosen = yaml.safe_load(path.read_text())
    rows = {r["lr"]: r for r in chosen["grid"]}
    assert sorted(rows) == [1e-4, 3e-2] and all(r["n"] == 1 and r["seeds"] == [0] for r in rows.values())
    best = max(rows.values(), key=lambda r: r["mean"])
    assert chosen["lr"] == best["lr"] and f"chose lr {best['lr']:g}" in out
    assert chosen["edge_of_grid"] and "edge of the grid" in path.read_text()  # two rates: both are edges
    # the choice changes what the next run uses, where it is asked for
    asked = compose("task=sst2", "method=bitfit", "model=tiny_roberta", "trainer.lr=${tuned:}")
    assert asked.trainer.lr == chosen["lr"]
    # a second call reuses the finished runs (nothing retrained)
    assert tune.main(argv) == 0
    assert "2 runs, 2 done, 0 to run" in capsys.readouterr().out


def fake_run(root: Path, lr: float, seed: int, score: float | None, degenerate=False) -> grid.Run:
    folder = root / f"lr={lr},seed={seed}"
    folder.mkdir(parents=True)
    if score is None:
        (folder / "failure.json").write_text("{}")
    else:
        result = {"headline": "dev/pearson", "seed": seed, "metrics": {"dev/pearson": score},
                  "best": {"dev/pearson": score + 1}, "degenerate": degenerate}  # fmt: skip
        (folder / "result.json").write_text(json.dumps(result))
    return grid.Run("tune", [f"trainer.lr={lr}", f"seed={seed}"], folder, score is not None, 0.0)


def test_choice_is_the_best_mean_failed_rates_never_win_and_edges_are_flagged(tmp_path):
    runs = [
        fake_run(tmp_path, 1e-3, 0, 60.0), fake_run(tmp_path, 1e-3, 1, 62.0),
        fake_run(tmp_path, 3e-3, 0, 70.0), fake_run(tmp_path, 3e-3, 1, 66.0),
        fake_run(tmp_path, 1e-2, 0, 90.0), fake_run(tmp_path, 1e-2, 1, None),  # diverged on seed 1
    ]  # fmt: skip
    per_lr, headline = tune.collect(runs, "last")
    rows = tune.summarise(per_lr)
    best, edge = tune.choose(rows)
    assert headline == "dev/pearson" and best["lr"] == 3e-3 and best["mean"] == 68.0 and not edge
    assert [r["failed"] for r in rows] == [0, 0, 1]
    assert tune.choose(tune.summarise(tune.collect(runs[:4], "best")[0]))[0]["mean"] == 69.0
    best, edge = tune.choose(rows[:2])
    assert best["lr"] == 3e-3 and edge
    args = Namespace(model="minilm", method="dora", task="stsb", seeds="0,1", protocol="last", extra=[])
    text = tune.write(tmp_path / "t.yaml", args, rows, *tune.choose(rows), headline)
    assert "lr 0.003: 68.00 ± 2.83 (n 2)  <- chosen" in text and "1 failed" in text
    assert yaml.safe_load((tmp_path / "t.yaml").read_text())["lr"] == 3e-3


def test_tuned_lookup_without_a_file_is_one_clear_error(tmp_path, monkeypatch, capsys):
    from dora.cli import preflight

    monkeypatch.setenv("DORA_TUNED_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        preflight(["task=rte", "method=dora", "model=minilm", "trainer.lr=${tuned:}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "no tuned learning rate for model=minilm method=dora task=rte" in err and "make tune" in err


@pytest.mark.parametrize("lrs", ["1e-3", "1e-3,-1", "a,b"])
def test_tune_refuses_a_bad_grid(lrs, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        tune.main(
            ["--model", "m", "--method", "dora", "--task", "rte", "--lrs", lrs, "--runs", str(tmp_path)]
        )
    assert e.value.code == 2 and "--lrs" in capsys.readouterr().err


def test_study3_runs_use_each_methods_tuned_rate(tmp_path, monkeypatch):
    """Stage 3 of the MiniLM study reads stage 2's choice per method and task; DynDoRA without pruning
    (init_ratio 1) shares DynDoRA's."""
    monkeypatch.setenv("DORA_TUNED_DIR", str(tmp_path))
    for method, lr in (("lora", 1e-3), ("dora", 1e-2)):
        (tmp_path / f"minilm_{method}_cola.yaml").write_text(f"lr: {lr}\n")
    jobs = {
        e: grid.job_overrides(e, ["task=cola", "seed=1"])[0] for e in ("study3_lora", "study3_dora_noprune")
    }
    lora, noprune = (compose(*jobs[e]) for e in ("study3_lora", "study3_dora_noprune"))
    assert lora.trainer.lr == 1e-3 and lora.trainer.max_steps == 2000 and lora.method.name == "lora"
    assert (
        noprune.trainer.lr == 1e-2
        and noprune.method.init_ratio == 1.0
        and noprune.method.prune_interval == 10
    )


def test_study2_runs_have_stage3s_schedule_and_short_folder_names(tmp_path):
    """make study2 tunes at stage 3's schedule from the study2 experiment file: the command line carries only
    model, method, task, the rate grid (and DynDoRA's Delta T), so every run folder's name fits the 255-byte
    limit of a file name (with the schedule on the command line DynDoRA's names reached 256 bytes)."""
    extra = [
        "model=minilm",
        "method=dora",
        "task=cola",
        "trainer.lr=3e-4,1e-3,3e-3",
        "method.prune_interval=10",
    ]
    runs = grid.plan("study2", tmp_path, extra)
    assert len(runs) == 3 and all(len(r.folder.name.encode()) <= 255 for r in runs)
    cfg = compose(*grid.job_overrides("study2", extra)[1])
    assert (cfg.seed, cfg.trainer.lr, cfg.trainer.max_steps, cfg.trainer.eval_every) == (0, 1e-3, 2000, 250)
    assert cfg.method.prune_interval == 10 and cfg.trainer.weight_decay == 0.01


def test_make_study2_runs_one_grid_per_method_and_task_with_its_rates():
    """`make -j2 study2` runs the 12 (method, task) grids as separate targets (two runs at a time until the
    last grid ends); a task may extend its method's grid where the best rate sat at an edge."""

    def dry(*targets: str) -> str:
        done = subprocess.run(["make", "-n", *targets], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert dry("study2").count("scripts/tune.py") == 12
    assert "--jobs 1" in dry("study2-lora-sst2") and "lrs=3e-4,1e-3,3e-3;" in dry("study2-lora-sst2")
    assert "lrs=1e-3,3e-3,1e-2;" in dry("study2-adalora-stsb")
    assert "lrs=3e-4,1e-3,3e-3;" in dry("study2-dora-cola")
    assert "lrs=3e-4,1e-3,3e-3,1e-2;" in dry("study2-dora-mrpc")  # extended upward
    assert "lrs=1e-4,3e-4,1e-3,3e-3,1e-2;" in dry("study2-lora-cola")  # extended downward
    assert "lrs=1e-4,3e-4,1e-3,3e-3;" in dry("study2-lora-stsb")  # extended downward
    assert "lrs=3e-4,1e-3,3e-3,1e-2;" in dry("study2-adalora-sst2")  # extended downward


def test_make_study3_parts_are_task_major_and_name_the_folders_grid_py_study3_names(tmp_path):
    """`make -j2 study3` runs 80 one-run parts, every run of CoLA first, then SST-2, STS-B and MRPC (seed by
    seed within a task); together they are exactly the 80 run folders of `scripts/grid.py study3`, so either
    command resumes the other's runs."""
    import re

    done = subprocess.run(["make", "-n", "study3"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    parts = re.findall(r"grid\.py (study3_\w+) .*?task=(\w+) seed=(\d)", done.stdout.replace("\\\n", " "))
    assert len(parts) == 80
    order = ["cola", "sst2", "stsb", "mrpc"]
    assert [order.index(t) for _, t, _ in parts] == sorted(order.index(t) for _, t, _ in parts)
    assert [s for _, t, s in parts if t == "cola"] == sorted(s for _, t, s in parts if t == "cola")
    folders = [r.folder for e, t, s in parts for r in grid.plan(e, tmp_path, [f"task={t}", f"seed={s}"])]
    assert sorted(folders) == sorted(r.folder for r in grid.plan("study3", tmp_path, []))
    assert len(set(folders)) == 80
