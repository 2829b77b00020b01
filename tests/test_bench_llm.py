"""scripts/bench_llm.py on a tiny Llama shape: it runs, and its JSON has the ratios the README quotes.
No timing assertions: speed is judged from results/bench/llm_*.json, never from a test."""

from __future__ import annotations

import json

from scripts import bench_llm

TINY = ["--device", "cpu", "--layers", "1", "--hidden", "32", "--intermediate", "64", "--heads", "4"]
TINY += ["--kv-heads", "2", "--vocab", "64", "--seq-len", "8", "--steps", "2", "--warmup", "1"]
TINY += ["--reps", "2", "--threads", "1", "--total-steps", "100"]


def test_bench_llm_writes_ratios_and_allocator_share(tmp_path, one_thread):
    bench_llm.main([*TINY, "--out", str(tmp_path / "llm.json")])
    result = json.loads((tmp_path / "llm.json").read_text())
    assert set(result["methods"]) == {"lora", "dora"} and result["threads"] == 1
    for row in result["methods"].values():
        assert len(row["step_s"]) == 2 and row["peak_mem_mb"] > row["static_mem_mb"] > 0
    # equal initial rank: DynDoRA trains r'·(d_in + d_out) + r' per matrix, LoRA r·(d_in + d_out)
    dims = 7 * 32 + 2 * 16 + 2 * 32 + 3 * 64  # Σ(d_in + d_out): q, k, v, o (GQA: k, v out 16), gate, up, down
    lora, dora = result["methods"]["lora"]["trainable_params"], result["methods"]["dora"]["trainable_params"]
    assert lora == 12 * dims and dora == lora + 7 * 12
    assert {"paired_step_ratio", "peak_mem_ratio", "step_peak_mem_ratio"} <= set(result["dora_over_lora"])
    assert result["dora_components"]["allocator_share_of_step"] > 0
