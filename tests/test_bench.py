"""scripts/bench.py on tiny shapes: it runs, and its JSON has what the README table is built from.
No timing assertions: speed is judged from results/bench/*.json, never from a test."""

from __future__ import annotations

import json

from dora.methods import METHODS
from scripts import bench
from tests.helpers import run_script

TINY = ["--device", "cpu", "--steps", "2", "--warmup", "1", "--batch", "2", "--seq-len", "16"]
TINY += ["--threads", "1", "--component-reps", "2"]
ROW_KEYS = {"median_step_s", "samples_per_s", "peak_mem_mb", "static_mem_mb", "step_peak_mem_mb",
            "step_ratio_to_lora", "paired_step_ratio_to_lora", "peak_mem_ratio_to_lora", "trainable_params"}  # fmt: skip


def check_rows(result: dict, methods: list[str]) -> None:
    rows = result["methods"]
    assert list(rows) == methods
    for name, row in rows.items():
        assert set(row) >= ROW_KEYS, name
        assert row["median_step_s"] > 0 and row["samples_per_s"] > 0, name
        assert row["peak_mem_mb"] >= row["static_mem_mb"] > 0 and row["step_peak_mem_mb"] > 0, name
    assert rows["lora"]["step_ratio_to_lora"] == 1.0 and rows["lora"]["peak_mem_ratio_to_lora"] == 1.0


def test_cli_lora_dora_writes_json_and_table(tmp_path):
    """The issue's command, on a tiny BART (seq2seq head): JSON per method, ratio in the table."""
    out = tmp_path / "bench.json"
    args = [*TINY, "--model", "tiny_bart", "--methods", "lora,dora", "--rank", "3", "--out", str(out)]
    proc = run_script("bench.py", *args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    check_rows(result, ["lora", "dora"])
    assert result["rank"] == 3 and result["model"] == "tiny_bart" and result["tgt_len"] == 64
    assert len(result["loadavg_start"]) == 3 and result["threads"] == 1
    comps = result["components"]
    assert comps["dora_scores_max_abs_diff"] < 1e-4  # closed form = the materialised form
    assert {"dora_scores_closed_form_ms", "dora_scores_materialised_ms", "dora_dem_fwd_bwd_ms"} <= set(comps)
    assert "x LoRA" in proc.stdout and "dora" in proc.stdout


def test_every_method_in_process(tmp_path):
    """Every registered method through the Method contract; r' = --rank for DynDoRA and AdaLoRA."""
    out = tmp_path / "all.json"
    result = bench.main([*TINY, "--model", "tiny_roberta", "--rank", "4", "--out", str(out)])
    check_rows(result, METHODS.names())  # the registry: a new method is benched without an edit
    assert json.loads(out.read_text())["methods"].keys() == result["methods"].keys()
    assert "adalora_update_and_allocate_mean_ms" in result["components"]


def test_rank_mapping_gives_equal_initial_rank():
    """--rank = LoRA's r = the initial rank r' of DynDoRA and AdaLoRA (equal size at the start)."""
    for rank in (1, 2, 3, 4, 8, 12, 24):
        for name in ("dora", "adalora"):
            cfg, budget = bench.method_configs(name, rank)
            assert bench.initial_rank_of(cfg, budget) == rank, (name, rank)
        assert bench.method_configs("lora", rank)[1].rank == rank
