"""Pack the study's remaining runs onto one GPU: N harness processes at once, highest priority first.

Stage-2 grids given with --grid run first; when a grid is complete, scripts/tune.py chooses its rate
(one extension past an edge, as on the CPU), and that method's stage-3 runs for the task join the queue
at the top. Stage-3 runs are named exactly as `scripts/grid.py study3` names them. After every finished
job the run folders' small files (result.json, config.yaml, logs) are re-packed into $OUT/runs.tgz, so a
call cut off at its limit still returns what finished. Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

NEXT_DOWN = {"1e-3": "3e-4", "3e-4": "1e-4"}
NEXT_UP = {"1e-2": "3e-2", "3e-3": "1e-2"}
COMMON = ["logger=none", "trainer.progress=false"]


def log(msg: str, **kw) -> None:
    line = json.dumps({"t": round(time.time() - T0, 1), "msg": msg, **kw})
    print(line, flush=True)
    with open(OUT / "driver.jsonl", "a") as f:
        f.write(line + "\n")


def snapshot() -> None:
    tmp = OUT / "runs.tgz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for p in sorted(RUNS.rglob("*")):
            if (
                p.is_file()
                and p.name in {"result.json", "config.yaml", "run.log", "grid_job.log"}
                and "checkpoints" not in p.parts
            ):
                tar.add(p, arcname=str(p.relative_to(RUNS.parent)))
        for p in sorted(TUNED.glob("*.yaml")):
            tar.add(p, arcname=f"tuned/{p.name}")
    tmp.replace(OUT / "runs.tgz")


class Job:
    def __init__(self, name: str, cmd: list[str], prio: float, task: str, on_done=None):
        self.name, self.cmd, self.prio, self.task, self.on_done = name, cmd, prio, task, on_done
        self.proc = self.start = None


def grid_cmd(target: str, folder: str, *overrides: str) -> list[str]:
    """scripts/grid.py for one run: one job, and as many GPU slots as the driver runs processes (with
    grid.py's default of 1, grid_job.py's slot lock makes every run of a folder wait for the last)."""
    return [PY, "scripts/grid.py", target, "--runs", str(RUNS / folder), "--jobs", "1", "--per-gpu", str(SLOTS),
            "--", *overrides, f"data_dir={DATA}", *COMMON]  # fmt: skip


def stage2_cmd(task: str, lr: str) -> list[str]:
    return grid_cmd(
        "study2", "stage2", "model=minilm", "method=adalora", f"task={task}", f"trainer.lr={lr}", "seed=0"
    )


def stage3_job(part: str, task: str, seed: int, prio: float) -> Job:
    cmd = grid_cmd(f"study3_{part}", "stage3", f"task={task}", f"seed={seed}")
    return Job(f"s3 {part} {task} {seed}", cmd, prio, task)


def stage3_folder(part: str, task: str, seed: int) -> str:
    """The run folder `scripts/grid.py study3_<part>` names (a test checks)."""
    method = "method.init_ratio=1.0,method=dora" if part == "dora_noprune" else f"method={part}"
    return f"budget=low,{method},model=minilm,seed={seed},task={task}"


def stage3_jobs(tasks: list[str], skip: set[str], grids: dict) -> list[Job]:
    """Stage 3's runs in task order, less the part:task pairs in ``skip``, AdaLoRA where its rate is still
    being tuned here (``grids``) and every run that already has a result.json in RUNS/stage3 (go.sh puts
    the runs finished elsewhere there)."""
    jobs = []
    for i, t in enumerate(tasks):
        for part in ("lora", "dora", "dora_noprune", "adalora"):
            if part == "adalora" and t in grids or f"{part}:{t}" in skip:
                continue
            for seed in range(1, 6):
                if not (RUNS / "stage3" / stage3_folder(part, t, seed) / "result.json").exists():
                    jobs.append(stage3_job(part, t, seed, i))
    return jobs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--slots", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True, help="wall-clock budget of this driver")
    p.add_argument("--grid", action="append", default=[], help="task:lr,lr,lr (AdaLoRA stage 2 on this GPU)")
    p.add_argument("--stage3-tasks", default="mrpc,stsb,sst2,cola", help="task order of stage 3")
    p.add_argument("--skip", action="append", default=[], help="part:task pairs not to run here")
    p.add_argument("--extra", action="append", default=[], help="an override added to every run (tests)")
    a = p.parse_args()
    global SLOTS
    SLOTS = a.slots
    COMMON.extend(a.extra)
    deadline = T0 + a.seconds
    queue: list[Job] = []
    grids = {t: lrs.split(",") for t, lrs in (g.split(":") for g in a.grid)}
    tasks = a.stage3_tasks.split(",")
    skip = set(a.skip)

    def tuned(task: str) -> None:
        """A stage-2 grid finished: choose (maybe extend once), then queue AdaLoRA's stage 3 for the task."""
        lrs = grids[task]
        r = subprocess.run(
            [
                PY,
                "scripts/tune.py",
                "--model",
                "minilm",
                "--method",
                "adalora",
                "--task",
                task,
                "--lrs",
                ",".join(lrs),
                "--seeds",
                "0",
                "--experiment",
                "study2",
                "--runs",
                str(RUNS / "stage2"),
                "--jobs",
                "1",
                "--",
                f"data_dir={DATA}",
                *COMMON,
            ],
            cwd=CODE,
            capture_output=True,
            text=True,
        )
        log("tune", task=task, rc=r.returncode, out=r.stdout[-800:], err=r.stderr[-800:])
        if r.returncode:
            return
        text = (TUNED / f"minilm_adalora_{task}.yaml").read_text()
        lr = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("lr:"))
        ordered = sorted(lrs, key=float)
        chosen = min(ordered, key=lambda x: abs(float(x) - float(lr)))
        ext = (
            NEXT_DOWN.get(chosen)
            if chosen == ordered[0]
            else NEXT_UP.get(chosen)
            if chosen == ordered[-1]
            else None
        )
        if ext and ext not in lrs and len(lrs) == 3:
            grids[task] = lrs + [ext]
            log("extend", task=task, lr=ext)
            queue.append(
                Job(f"s2 adalora {task} {ext}", stage2_cmd(task, ext), -1, task, lambda: tuned(task))
            )
            return
        for seed in range(1, 6):
            queue.append(stage3_job("adalora", task, seed, -0.5))

    pending = {t: len(lrs) for t, lrs in grids.items()}

    def grid_done(task: str):
        def done():
            pending[task] -= 1
            if pending[task] == 0:
                tuned(task)

        return done

    for t, lrs in grids.items():
        for lr in lrs:
            queue.append(Job(f"s2 adalora {t} {lr}", stage2_cmd(t, lr), -1, t, grid_done(t)))
    queue += stage3_jobs(tasks, skip, grids)
    log("plan", jobs=[j.name for j in queue], slots=a.slots, seconds=a.seconds)

    running: list[Job] = []
    walls: dict[str, list[float]] = {}
    while queue or running:
        now = time.time()
        if now > deadline - 20:
            for j in running:
                os.killpg(j.proc.pid, signal.SIGTERM)
                log("killed at the deadline", job=j.name, ran=round(now - j.start))
            break
        for j in list(running):
            rc = j.proc.poll()
            if rc is None:
                continue
            running.remove(j)
            wall = time.time() - j.start
            walls.setdefault(j.task, []).append(wall)
            log("done", job=j.name, rc=rc, wall=round(wall, 1))
            if rc == 0 and j.on_done:
                j.on_done()
            snapshot()
        queue.sort(key=lambda j: j.prio)
        while queue and len(running) < a.slots:
            j = queue[0]
            typical = statistics.median_low(walls.get(j.task, [0]))
            if time.time() + 0.9 * typical > deadline - 20:  # would not finish: leave it for the CPU
                break
            queue.pop(0)
            j.proc = subprocess.Popen(
                j.cmd, cwd=CODE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
            j.start = time.time()
            running.append(j)
            log("start", job=j.name)
        if queue and not running:
            break  # nothing running and nothing that fits in the time left
        time.sleep(1)
    snapshot()
    log("end", left=[j.name for j in queue])


if __name__ == "__main__":
    T0 = time.time()
    OUT = Path(os.environ["OUT"])
    STAGE = Path("/root/stage")
    CODE, DATA, RUNS = STAGE / "code", STAGE / "data", Path("/root/runs/study")
    TUNED = Path(os.environ["DORA_TUNED_DIR"])
    PY = sys.executable
    SLOTS = 1
    RUNS.mkdir(parents=True, exist_ok=True)
    main()
