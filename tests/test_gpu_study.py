"""scripts/gpu_study/driver.py: the commands it packs onto one GPU.

The first GPU session ran 15 processes at once, but every run waited for grid_job.py's single GPU slot of
its runs folder (grid.py --per-gpu defaults to 1), so runs trained one at a time per folder. The driver
must hand grid.py as many slots per GPU as it runs processes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.helpers import REPO


def driver(slots: int):
    spec = importlib.util.spec_from_file_location("gpu_driver", REPO / "scripts" / "gpu_study" / "driver.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.PY, module.RUNS, module.DATA, module.SLOTS = "python3", Path("/runs"), Path("/data"), slots
    return module


def option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_every_run_gets_its_own_gpu_slot_and_one_job():
    d = driver(15)
    for cmd in (d.stage2_cmd("mrpc", "1e-3"), d.stage3_job("dora_noprune", "stsb", 4, 0).cmd):
        assert option(cmd, "--per-gpu") == "15" and option(cmd, "--jobs") == "1"
        assert cmd.index("--per-gpu") < cmd.index("--")  # a grid.py option, not a Hydra override
    s3 = d.stage3_job("dora_noprune", "stsb", 4, 0).cmd
    assert (
        s3[1:4] == ["scripts/grid.py", "study3_dora_noprune", "--runs"]
        and option(s3, "--runs") == "/runs/stage3"
    )
    assert {"task=stsb", "seed=4", "data_dir=/data"} <= set(s3)
    s2 = d.stage2_cmd("mrpc", "1e-3")
    assert {"method=adalora", "task=mrpc", "trainer.lr=1e-3", "seed=0"} <= set(s2)


def test_stage3_leaves_out_runs_done_elsewhere_and_names_folders_as_grid_py(tmp_path):
    """go.sh unpacks the result.json of runs finished on the CPU into RUNS/stage3; the driver must not queue
    them again, which needs its folder names to be grid.py's."""
    from scripts import grid

    d = driver(15)
    d.RUNS = tmp_path
    planned = {r.folder.name for r in grid.plan("study3", tmp_path / "stage3", [])}
    names = {d.stage3_folder(p, t, s) for p in ("lora", "dora", "dora_noprune", "adalora")
             for t in ("cola", "mrpc", "sst2", "stsb") for s in range(1, 6)}  # fmt: skip
    assert names == planned
    done = tmp_path / "stage3" / d.stage3_folder("dora_noprune", "mrpc", 3)
    done.mkdir(parents=True)
    (done / "result.json").write_text("{}")
    jobs = d.stage3_jobs(["mrpc", "cola"], {"lora:cola"}, {})
    assert len(jobs) == 4 * 5 - 1 + 3 * 5
    assert "s3 dora_noprune mrpc 3" not in {j.name for j in jobs}
    assert [j.task for j in jobs] == ["mrpc"] * 19 + ["cola"] * 15  # the task order given, MRPC first
