"""The Hydra task behind scripts/grid.py: one grid run, skipped when finished, on a GPU of its own.

    python scripts/grid_job.py -m experiment=table2_peft hydra.sweep.dir=runs/paper [hydra/launcher=joblib]

Composes the same configs as run.py, so any Hydra launcher (basic, joblib, submitit) can run it. Each job
runs ``python run.py <its overrides> output_dir=<its folder>`` in a fresh process, because a GPU can only
be chosen (CUDA_VISIBLE_DEVICES) before CUDA starts, and joblib reuses its worker processes. A failed
run is logged and the sweep goes on; the aggregator lists it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

import dora.cli  # noqa: F401  (as run.py: the config schemas and resolvers Hydra composes with)

# Self-contained on purpose: launchers (submitit) unpickle this script's functions in processes where
# scripts/ is not importable, so nothing here may come from scripts/grid.py.
REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("grid")


def visible_gpus() -> list[str]:
    """GPU ids runs may use: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists; none on CPU."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True
    )
    return out.stdout.split() if out.returncode == 0 else []


def _try_lock(path: Path):
    """An exclusively locked open file, or None when another job holds it (released on close/exit)."""
    f = open(path, "w")  # noqa: SIM115  (stays open: the open file holds the lock)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


@contextmanager
def gpu_slot(lock_dir: Path):
    """Environment for the run: CUDA_VISIBLE_DEVICES = a free (GPU, slot) held by a file lock.

    No pinning on the CPU or under SLURM (which gives each job its own GPUs)."""
    gpus, per_gpu = visible_gpus(), int(os.environ.get("DORA_RUNS_PER_GPU", "1"))
    if not gpus or "SLURM_JOB_ID" in os.environ:
        yield dict(os.environ)
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for gpu in gpus:
            for slot in range(per_gpu):
                held = _try_lock(lock_dir / f"gpu{gpu}.slot{slot}.lock")
                if held:
                    with held:
                        yield {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
                    return
        time.sleep(5)


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg) -> int:
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    if (out / "result.json").exists():
        log.info("done already, skipped: %s", out)
        return 0
    overrides = [o for o in hc.overrides.task if not o.startswith("output_dir=")]
    cmd = [sys.executable, str(REPO / "run.py"), *overrides, f"output_dir='{out}'"]
    with gpu_slot(Path(hc.sweep.dir) / ".gpu_slots") as env:
        rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
    if rc:
        log.error("run failed (exit %d): %s", rc, out)
    return rc


if __name__ == "__main__":
    main()
