"""Sweeps: the launcher configs compose, a local joblib sweep runs, re-runs skip finished runs, and two
sweeps into one results root never share a run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dora.cli import compose_config
from tests.helpers import REPO

TINY = ["task=rte", "method=bitfit", "debug=tiny", "task.splits.train=train:0:32", "task.splits.dev=dev:0:16",
        "trainer.max_steps=2"]  # fmt: skip


def hydra_config(*overrides: str):
    return compose_config(list(overrides), return_hydra_config=True).hydra


def test_slurm_launcher_config_composes():
    launcher = hydra_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu").launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.max_num_timeout) == ("gpu", 1, 3)


def test_local_launcher_config_composes():
    launcher = hydra_config("hydra/launcher=local", "hydra.launcher.n_jobs=3").launcher
    assert launcher._target_.endswith("JoblibLauncher") and launcher.n_jobs == 3


def test_checkpoint_settings_do_not_rename_run_folders():
    excluded = hydra_config().job.config.override_dirname.exclude_keys
    assert {"trainer.checkpoint_every", "trainer.keep_checkpoints", "output_dir"} <= set(excluded)


def sweep(cwd: Path, *args: str) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "run.py"), "-m", *TINY, *args]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def results(root: Path) -> dict[Path, dict]:
    return {p.parent: json.loads(p.read_text()) for p in root.rglob("result.json")}


@pytest.mark.slow
def test_local_joblib_sweep_of_two_runs_then_rerun_skips_them(tmp_path, data_dir):
    args = ["hydra/launcher=local", "hydra.launcher.n_jobs=2", "seed=1,2", f"data_dir={data_dir}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    proc = sweep(tmp_path, *args)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    done = results(tmp_path / "sweep")
    assert sorted(r["seed"] for r in done.values()) == [1, 2] and len(done) == 2
    stamps = {d: (d / "result.json").stat().st_mtime_ns for d in done}
    proc = sweep(tmp_path, *args)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0 and out.count("this run is complete, skipping it") == 2, out[-3000:]
    assert stamps == {d: (d / "result.json").stat().st_mtime_ns for d in done}


@pytest.mark.slow
def test_two_concurrent_sweeps_into_one_root_stay_separate(tmp_path, data_dir):
    """The same grid launched twice at once from one folder: two sweep folders, four runs, no clash."""
    procs = [sweep(tmp_path, "seed=1,2", f"data_dir={data_dir}") for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-2000:] for o in outs]
    sweeps = sorted((tmp_path / "multirun").iterdir())
    assert len(sweeps) == 2
    for folder in sweeps:
        assert sorted(r["seed"] for r in results(folder).values()) == [1, 2]
