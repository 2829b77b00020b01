"""DynDoRA vs PEFT LoRA on a decoder-LLM shape: step time, peak memory, and the allocator's share.

    python scripts/bench_llm.py --threads 1 --out results/bench/llm_cpu.json      # make bench-llm

The model is a stack of Llama-style decoder blocks with TinyLlama-1.1B's block shape (hidden 2048, MLP
5632, 32 query / 4 key-value heads), ``--layers`` of them (2 by default), random init (no download).
The vocabulary is cut to ``--vocab`` 2048 so that, as in the full 22-layer model, the blocks and not the
embedding/LM head dominate the step. Both methods adapt the 7 matrices of every block (q, k, v, o, gate,
up, down) at equal initial rank: LoRA r = ``--rank``, DynDoRA r' = ``--rank`` (r = r'/1.5); both use
dropout 0.1 on the adapter input.

One step, as the harness's runner: forward (causal-LM loss) → loss + η·DEM (DynDoRA) → backward → clip →
AdamW step → LR schedule step → ``after_optimizer_step`` (DynDoRA) → zero_grad. The two models are
timed in interleaved rounds (A B, B A, ...) in one process, so that the load of a shared machine hits
both alike; ratios are medians of the per-round ratios. Hook steps start at 0.2·T (T =
``--total-steps``), in DynDoRA's pruning phase, where its per-step work is largest. Peak memory =
parameters + buffers + optimizer state, plus the peak of the tensor bytes one step allocates (CUDA:
max_memory_allocated; CPU: the profiler's allocation events, as scripts/bench.py).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler (CPU memory) is quiet unless asked

import torch  # noqa: E402
from torch import nn  # noqa: E402

from dora.dyndora import DynDoRAConfig, inject_dyndora  # noqa: E402
from dora.results import atomic_write_text, environment  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Candidate:
    """One model under test, with its optimizer, schedule and step counter (hooks see step + 1)."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    step: int
    dyndora: object = None  # the DynDoRA controller, or None for LoRA
    hook_s: list[float] = field(default_factory=list)  # after_optimizer_step seconds, per timed step

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def build_base(a) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=a.hidden, intermediate_size=a.intermediate, num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads, num_hidden_layers=a.layers, vocab_size=a.vocab,
        max_position_embeddings=a.seq_len, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def candidates(base: nn.Module, a) -> list[Candidate]:
    from peft import LoraConfig, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    r = max(1, round(a.rank / 1.5))
    lora = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=a.rank, lora_alpha=8, lora_dropout=0.1, target_modules=TARGETS)
    )
    model = copy.deepcopy(base)
    dyndora = inject_dyndora(
        model,
        DynDoRAConfig(r=r, init_ratio=a.rank / r, prune_interval=10, target_modules=TARGETS),
        a.total_steps,
    )
    assert dyndora.r_init == a.rank, (dyndora.r_init, a.rank)
    out = []
    for name, m, d in (("lora", lora, None), ("dora", model, dyndora)):
        m.to(a.device).train()
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
        sched = get_linear_schedule_with_warmup(opt, int(0.06 * a.total_steps), a.total_steps)
        out.append(Candidate(name, m, opt, sched, int(0.2 * a.total_steps), d))
    return out


def train_step(c: Candidate, batch: dict, device: str) -> None:
    step = c.step + 1
    loss = c.model(**batch).loss
    extra = c.dyndora.extra_loss(step) if c.dyndora else None
    (loss if extra is None else loss + extra).backward()
    torch.nn.utils.clip_grad_norm_(c.params, 1.0)
    c.optimizer.step()
    c.scheduler.step()
    if c.dyndora:
        sync(device)
        t = time.perf_counter()
        c.dyndora.after_optimizer_step(step)
        sync(device)
        c.hook_s.append(time.perf_counter() - t)
    c.optimizer.zero_grad(set_to_none=True)
    c.step = step


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``, device work included."""
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t, time.process_time() - c


def run_rounds(cands: list[Candidate], batches, a) -> dict:
    wall = {c.name: [] for c in cands}
    cpu = {c.name: [] for c in cands}
    for i in range(a.warmup + a.steps):
        order, batch = cands[i % 2 :] + cands[: i % 2], batches[i % len(batches)]
        for c in order:
            gc.collect()
            hooks = len(c.hook_s)
            w, p = timed(lambda c=c, batch=batch: train_step(c, batch, a.device), a.device)
            if i < a.warmup:
                del c.hook_s[hooks:]  # warm-up steps do not count
            else:
                wall[c.name].append(w)
                cpu[c.name].append(p)
        print(f"  round {i + 1}/{a.warmup + a.steps}" + (" (warm-up)" if i < a.warmup else ""), flush=True)
    return {"wall": wall, "cpu": cpu}


def static_bytes(c: Candidate) -> int:
    tensors = [*c.model.parameters(), *c.model.buffers()]
    tensors += [v for s in c.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def step_peak_bytes(c: Candidate, batch, device: str) -> int:
    from scripts.bench import peak_bytes  # here: bench imports the whole harness, needed only for this

    return peak_bytes(lambda: train_step(c, batch, device), device)


def dem_ms(c: Candidate, reps: int, device: str) -> float:
    """η·DEM forward + backward alone (it is inside the timed step; this isolates it)."""

    def once():
        c.dyndora.extra_loss(c.step).backward()
        c.optimizer.zero_grad(set_to_none=True)

    return 1e3 * statistics.median(timed(once, device)[0] for _ in range(reps))


def allocator_interval_ms(c: Candidate, device: str) -> float:
    """Mean after_optimizer_step over one whole pruning interval (its event included), in ms."""
    alloc = c.dyndora.allocator
    sched = alloc.schedule
    start = sched.warmup + sched.interval  # an interval inside the pruning phase, from one event to the next
    return 1e3 * statistics.fmean(
        timed(lambda s=s: alloc.step(s), device)[0] for s in range(start, start + sched.interval)
    )


def summarise(cands, times, statics, peaks, a) -> dict:
    rows = {}
    for c in cands:
        w = times["wall"][c.name]
        rows[c.name] = {
            "median_step_s": statistics.median(w),
            "median_step_cpu_s": statistics.median(times["cpu"][c.name]),
            "step_s": w,
            "tokens_per_s": a.batch * a.seq_len / statistics.median(w),
            "peak_mem_mb": (statics[c.name] + peaks[c.name]) / 2**20,
            "static_mem_mb": statics[c.name] / 2**20,
            "step_peak_mem_mb": peaks[c.name] / 2**20,
            "trainable_params": sum(p.numel() for p in c.params),
        }
    lora, dora = rows["lora"], rows["dora"]
    paired = [x / y for x, y in zip(times["wall"]["dora"], times["wall"]["lora"], strict=True)]
    ratios = {
        "paired_step_ratio": statistics.median(paired),
        "step_ratio": dora["median_step_s"] / lora["median_step_s"],
        "cpu_step_ratio": dora["median_step_cpu_s"] / lora["median_step_cpu_s"],
        "peak_mem_ratio": dora["peak_mem_mb"] / lora["peak_mem_mb"],
        "step_peak_mem_ratio": dora["step_peak_mem_mb"] / lora["step_peak_mem_mb"],
    }
    return {"methods": rows, "dora_over_lora": ratios}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rank", type=int, default=12, help="LoRA r = DynDoRA's initial r'")
    p.add_argument("--steps", type=int, default=12, help="timed rounds")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--total-steps", type=int, default=1000, help="T of the schedules")
    p.add_argument("--reps", type=int, default=5, help="repetitions of the DEM measurement")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON path (default results/bench/llm_<device>.json)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    load_start = os.getloadavg()
    base = build_base(a)
    cands = candidates(base, a)
    del base
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": (ids := torch.randint(0, a.vocab, (a.batch, a.seq_len), generator=g)).to(a.device),
                "labels": ids.to(a.device)} for _ in range(2)]  # fmt: skip
    print(
        f"{a.layers} Llama-style blocks, hidden {a.hidden}; batch {a.batch} x {a.seq_len} tokens; r' = {a.rank}"
    )
    times = run_rounds(cands, batches, a)
    dora = cands[1]
    hook = statistics.median(dora.hook_s)
    components = {
        "allocator_step_median_ms": 1e3 * hook,
        "allocator_interval_mean_ms": allocator_interval_ms(dora, a.device),
        "dem_fwd_bwd_ms": dem_ms(dora, a.reps, a.device),
    }
    statics = {c.name: static_bytes(c) for c in cands}
    peaks = {c.name: step_peak_bytes(c, batches[0], a.device) for c in cands}
    result = summarise(cands, times, statics, peaks, a)
    step_ms = 1e3 * result["methods"]["dora"]["median_step_s"]
    components["allocator_share_of_step"] = components["allocator_step_median_ms"] / step_ms
    components["allocator_interval_share_of_step"] = components["allocator_interval_mean_ms"] / step_ms
    components["dem_share_of_step"] = components["dem_fwd_bwd_ms"] / step_ms
    result = {
        "shape": {k: getattr(a, k) for k in ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab")},
        "batch": a.batch, "seq_len": a.seq_len, "rank": a.rank, "rounds": a.steps, "warmup": a.warmup,
        "total_steps": a.total_steps, "device": a.device, "threads": torch.get_num_threads(),
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        **result, "dora_components": components, "env": environment(a.device),
    }  # fmt: skip
    out = Path(a.out or REPO / "results" / "bench" / f"llm_{a.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    r, c = result["dora_over_lora"], components
    print(
        f"DynDoRA / LoRA: step {r['paired_step_ratio']:.3f} (paired median; cpu {r['cpu_step_ratio']:.3f}), "
        f"peak memory {r['peak_mem_ratio']:.3f} (step's own allocations {r['step_peak_mem_ratio']:.3f}); "
        f"allocator {c['allocator_step_median_ms']:.2f} ms = {100 * c['allocator_share_of_step']:.2f}% of a step "
        f"(interval mean {100 * c['allocator_interval_share_of_step']:.2f}%), DEM fwd+bwd "
        f"{100 * c['dem_share_of_step']:.2f}%; {torch.get_num_threads()} threads, load {load_start[0]:.2f} -> "
        f"{result['loadavg_end'][0]:.2f}; wrote {out}"
    )
    return result


if __name__ == "__main__":
    main()
