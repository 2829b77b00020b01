"""scripts/gpu_check.py (``make gpu-check``) on tiny CPU shapes: every part runs and is recorded.
No timing assertions: the figures of a smoke run mean nothing."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_script


@pytest.mark.slow  # about 1-3 minutes on a busy 2-core CPU: `make test-all` or `pytest -m slow`
def test_cpu_smoke_runs_every_part(tmp_path):
    out = tmp_path / "smoke.json"
    proc = run_script("gpu_check.py", "--cpu-smoke", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["smoke"] is True and r["device"] == "cpu"
    for precision in ("fp32", "bf16"):
        bench = r[f"bench_{precision}"]
        assert bench["precision"] == precision and set(bench["methods"]) == {"bitfit", "lora", "dora"}
        assert bench["methods"]["dora"]["paired_step_ratio_to_bitfit"] > 0
    assert r["real_run"]["status"] == "ok" and r["real_run"]["steps"] == 2, r["real_run"]
    assert "dev/accuracy" in r["real_run"]["metrics"]
    (conc,) = r["concurrent"]
    assert conc["n"] == 2 and all(run["status"] == "ok" for run in conc["runs"]), conc
    assert len(conc["samples_per_s_per_run"]) == 2 and conc["samples_per_s_total"] > 0
    assert set(r["parts_s"]) == {"bench_fp32", "bench_bf16", "real_run", "concurrent"}


def test_without_cuda_the_gpu_check_says_so():
    import torch

    if torch.cuda.is_available():
        return
    proc = run_script("gpu_check.py")
    assert proc.returncode != 0 and "--cpu-smoke" in proc.stderr
