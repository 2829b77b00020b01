"""One-command GPU check (``make gpu-check``): what a single GPU does with this harness, in < 10 minutes.

    python scripts/gpu_check.py                 # on a GPU machine -> results/bench/<gpu>.json
    python scripts/gpu_check.py --cpu-smoke --out /tmp/smoke.json   # the same code path on tiny shapes (tests)

Four parts, each recorded in one JSON (``results/bench/<device>.json``, e.g. ``nvidia_h200.json``):
1. ``bench_fp32`` and ``bench_bf16``: scripts/bench.py (all methods interleaved in one process,
   roberta-base shapes, batch 16x128, r' = 12) in fp32 and with bf16 autocast;
2. ``real_run``: one real short training run (the pip-packaged all-MiniLM-L6-v2 on the SST-2 slice in
   data/demo, DynDoRA, ``--real-steps`` optimizer steps, evaluated on its dev set): nothing is downloaded;
3. ``concurrent``: for each N in ``--concurrency``, N such runs started together on the one GPU, each its
   own process (as a grid with PER_GPU=N runs them), with samples/s per run and summed;
4. machine facts (GPU name and memory, torch/CUDA versions, CPU count) and the wall time of each part.

``--cpu-smoke`` runs the same four parts on the CPU with tiny shapes (tiny RoBERTa, batch 2x16,
2 steps, N = 2) so that a test covers the script; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def bench_args(smoke: bool, device: str, precision: str, out: Path) -> list[str]:
    if smoke:
        shape = [
            "--model",
            "tiny_roberta",
            "--batch",
            "2",
            "--seq-len",
            "16",
            "--rank",
            "4",
            "--threads",
            "1",
        ]
        shape += ["--methods", "bitfit,lora,dora"]
        rounds = ["--steps", "2", "--warmup", "1", "--component-reps", "2"]
    else:
        shape = ["--model", "roberta_base", "--batch", "16", "--seq-len", "128", "--rank", "12"]
        rounds = ["--steps", "10", "--warmup", "3", "--component-reps", "10"]
    return ["--device", device, "--precision", precision, *shape, *rounds, "--out", str(out)]


def run_overrides(smoke: bool, steps: int, out_dir: Path) -> list[str]:
    """A real short run: DynDoRA on the SST-2 slice shipped in data/demo (offline)."""
    common = [
        "task=sst2", "method=dora", f"data_dir={REPO / 'data' / 'demo'}", "logger=none",
        "trainer.progress=false", f"trainer.max_steps={steps}", "trainer.checkpoint_every=0",
        f"output_dir={out_dir}",
    ]  # fmt: skip
    if smoke:
        return [*common, "model=tiny_roberta", "trainer.batch_size=4", "trainer.max_length=32",
                "task.splits.train=train:0:64", "task.splits.dev=dev:0:16", "trainer.cpu=true"]  # fmt: skip
    return [*common, "model=minilm", "trainer.batch_size=32", "trainer.max_length=64"]


def start_run(overrides: list[str], threads: int) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), *overrides],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def finish_run(proc: subprocess.Popen, out_dir: Path, timeout: float) -> dict:
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        return {"status": "timeout", "log_tail": log[-2000:]}
    path = out_dir / "result.json"
    if proc.returncode != 0 or not path.is_file():
        return {"status": f"exit {proc.returncode}", "log_tail": log[-2000:]}
    r = json.loads(path.read_text())
    t = r["timing"]
    return {
        "status": r["status"],
        "metrics": r["metrics"],
        "steps": t.get("steps"),
        "train_s": t.get("train_s"),
        "setup_s": t.get("setup_s"),
        "samples_per_s": t.get("samples_per_s"),
        "peak_mem_mb": t.get("peak_mem_mb"),
    }


def concurrent_runs(smoke: bool, n: int, steps: int, work: Path, timeout: float) -> dict:
    """N runs of the real task started together (their own processes, one GPU); per-run and summed
    samples/s. CPU threads are split between them."""
    threads = max(1, (os.cpu_count() or 1) // n)
    t0 = time.perf_counter()
    procs = []
    for i in range(n):
        out = work / f"concurrent{n}_{i}"
        procs.append((start_run(run_overrides(smoke, steps, out) + [f"seed={i + 1}"], threads), out))
    runs = [finish_run(p, out, timeout) for p, out in procs]
    per_run = [r.get("samples_per_s") for r in runs]
    ok = [s for s in per_run if s]
    return {
        "n": n,
        "threads_per_run": threads,
        "wall_s": time.perf_counter() - t0,
        "samples_per_s_per_run": per_run,
        "samples_per_s_total": sum(ok) if len(ok) == n else None,
        "runs": runs,
    }


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "device"


def machine(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cpu_count": os.cpu_count()}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        info |= {"gpu": p.name, "gpu_mem_gib": p.total_memory / 2**30, "gpu_count": torch.cuda.device_count()}
    return info


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cpu-smoke", action="store_true", help="tiny shapes on the CPU (tests); figures mean nothing"
    )
    p.add_argument("--real-steps", type=int, default=0, help="steps of the real run (default 300; smoke 2)")
    p.add_argument("--concurrency", default="", help="comma-separated N (default 1,2,4,8; smoke 2)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: bench,real,concurrent")
    p.add_argument("--timeout", type=float, default=300, help="seconds per run process")
    p.add_argument("--out", default=None, help="JSON path (default results/bench/<device>.json)")
    return p.parse_args(argv)  # fmt: skip


def main(argv=None) -> dict:
    a = parse_args(argv)
    import torch

    smoke = a.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; --cpu-smoke runs the same steps on tiny CPU shapes")
    device = "cpu" if smoke else "cuda"
    steps = a.real_steps or (2 if smoke else 300)
    ns = [int(n) for n in (a.concurrency or ("2" if smoke else "1,2,4,8")).split(",") if n.strip()]
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    facts = machine(device)
    name = "cpu_smoke" if smoke else slug(facts["gpu"])
    out = Path(a.out or REPO / "results" / "bench" / f"{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"device": device, "name": name, "smoke": smoke, "machine": facts, "parts_s": {}}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        if "bench" not in skip:
            from scripts import bench  # here: it imports torch and the harness

            for precision in ("fp32", "bf16"):
                t = time.perf_counter()
                r = bench.main(bench_args(smoke, device, precision, work / f"bench_{precision}.json"))
                result[f"bench_{precision}"] = r
                result["parts_s"][f"bench_{precision}"] = time.perf_counter() - t
                print(
                    f"bench {precision}: done in {result['parts_s'][f'bench_{precision}']:.0f} s", flush=True
                )
        if "real" not in skip:
            t = time.perf_counter()
            run_dir = work / "real"
            proc = start_run(run_overrides(smoke, steps, run_dir), max(1, os.cpu_count() or 1))
            result["real_run"] = finish_run(proc, run_dir, a.timeout) | {
                "overrides": run_overrides(smoke, steps, Path("RUN"))
            }
            result["parts_s"]["real_run"] = time.perf_counter() - t
            print(f"real run: {json.dumps(result['real_run'].get('metrics'))}", flush=True)
        if "concurrent" not in skip:
            t = time.perf_counter()
            result["concurrent"] = [concurrent_runs(smoke, n, steps, work, a.timeout) for n in ns]
            result["parts_s"]["concurrent"] = time.perf_counter() - t
            for c in result["concurrent"]:
                print(
                    f"{c['n']} concurrent: samples/s per run {c['samples_per_s_per_run']}, total {c['samples_per_s_total']}"
                )
    result["wall_s"] = time.perf_counter() - t_all
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"gpu_check: {result['wall_s']:.0f} s; wrote {out}")
    return result


if __name__ == "__main__":
    main()
