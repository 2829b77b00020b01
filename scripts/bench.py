"""Training-step benchmark: every method's step time, throughput and peak memory, side by side.

    python scripts/bench.py --device cpu --model roberta_base --methods lora,dora --rank 12 --steps 12 \
        --warmup 2 --threads 1 --out results/bench/cpu.json

One step is the runner's own function (dora.step.train_step): forward -> loss + method.extra_loss ->
backward -> clip -> optimizer.step -> scheduler.step -> method.after_optimizer_step -> zero_grad, through
the Method contract only. ``--rank`` is LoRA's rank and the *initial* rank r' of DynDoRA and AdaLoRA, so the
methods are compared at equal size; the adapters get ``budget.rank = --rank``.

How it measures (so that a busy, shared machine still gives a fair comparison):
- all methods live in one process on copies of one random-init backbone (roberta-base / bart-base
  shapes built from their config: no download); their steps are interleaved (A B C, B C A, ...) so that
  load changes hit every method alike; the first ``--warmup`` rounds are excluded; the table gives
  medians of wall time, the median of the per-round ratios to LoRA (the pairing that cancels slow
  drifts) and the median process CPU time (what this process ran: on a shared CPU, with
  ``--threads 1``, nearly blind to other processes); ``loadavg_start/end`` in the JSON tell how busy
  the machine was;
- hook step numbers start at 0.2·T (T = ``--total-steps``), inside the pruning/budgeting phase of
  DynDoRA and AdaLoRA, where their per-step work (scores, EMA, DEM, masking) is largest;
- peak memory = static tensors (parameters, buffers, optimizer state) + the peak of the tensor bytes
  allocated and not yet freed during one extra step (CUDA: ``max_memory_allocated`` above the step's
  start; CPU: the torch profiler's allocator events, replayed). Allocator caches and the Python heap
  are not counted: the numbers are bytes of live tensors, in MiB;
- component costs: DynDoRA's closed-form scores against the released code's materialised
  r'×d_out×d_in form, its allocator step, DEM; AdaLoRA's update_and_allocate and orthogonal regulariser.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler (CPU memory) is quiet unless asked

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch import nn  # noqa: E402

from dora import families  # noqa: E402
from dora import step as dora_step  # noqa: E402
from dora.cli import compose_config  # noqa: E402
from dora.config import BudgetConfig  # noqa: E402
from dora.methods import METHODS, Method, TaskInfo, build_method  # noqa: E402
from dora.methods.dyndora.method import initial_rank  # noqa: E402
from dora.models import load_backbone  # noqa: E402
from dora.results import atomic_write_text, environment  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

ALL_METHODS = tuple(METHODS.names())  # every registered method: a new one is benched without an edit here
# Opt-in variants, benched only when named in --methods: name -> (method, config overrides)
VARIANTS = {"dora_fastrng": ("dora", {"dropout_rng": "fast"})}
NUM_LABELS = 2
# Published architectures' sizes, built with random init (the shapes are what costs time, not the weights).
SHAPES = {
    "roberta_base": dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1),
    "bart_base": dict(
        vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
        decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
    ),
}  # fmt: skip


# -- building --------------------------------------------------------------------------------------
@dataclass
class Backbone:
    model: nn.Module
    family: str
    head: str  # seq_cls | seq2seq
    head_prefixes: tuple[str, ...]
    vocab: int


def build_backbone(name: str) -> Backbone:
    """``name`` = a model config (configs/model): tiny_* as configured, others at their SHAPES sizes,
    both random-init through the harness's own builder (no download)."""
    cfg = OmegaConf.to_object(compose_config([f"model={name}"]).model)
    head = "seq2seq" if families.get(cfg.family).encoder_decoder else "seq_cls"
    if cfg.source != "tiny":
        if name not in SHAPES:
            raise SystemExit(f"--model {name}: valid: {', '.join(SHAPES)} or a tiny_* model config")
        cfg = dataclasses.replace(cfg, source="tiny", tiny=SHAPES[name])
    built = load_backbone(cfg, head, NUM_LABELS)
    return Backbone(built.model, cfg.family, head, built.head_prefixes, built.model.config.vocab_size)


def method_configs(name: str, rank: int):
    """(method config, budget) with LoRA rank = initial rank r' = ``rank``.

    A method with an ``init_ratio`` (r' = ceil(init_ratio·r): DynDoRA, AdaLoRA) gets the target
    r = round(rank / 1.5) (its default ratio) and init_ratio = rank / r, so that r' = rank exactly."""
    name, overrides = VARIANTS.get(name, (name, {}))
    cfg = compose_config([f"method={name}"] + [f"method.{k}={v}" for k, v in overrides.items()]).method
    budget_rank = rank
    if "init_ratio" in cfg:
        budget_rank = max(1, round(rank / 1.5))
        cfg.init_ratio = rank / budget_rank
    return OmegaConf.to_object(cfg), BudgetConfig(name="bench", rank=budget_rank)


def initial_rank_of(cfg, budget: BudgetConfig) -> int:
    """r' the method starts from: ceil(init_ratio·r) where it has a ratio, else the budget rank."""
    ratio = getattr(cfg, "init_ratio", None)
    return initial_rank(ratio, budget.rank) if ratio else budget.rank


@dataclass
class Bench:
    """One method under test: its model, optimizer and schedule, and its own step counter."""

    name: str
    method: Method
    model: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: object
    total_steps: int
    step: int  # optimizer steps done (hooks see step + 1)


def build_bench(name: str, backbone: Backbone, rank: int, total_steps: int, device: str) -> Bench:
    """As dora.runner.build: apply the method, AdamW on the trainable parameters, linear schedule."""
    from transformers import get_linear_schedule_with_warmup

    cfg, budget = method_configs(name, rank)
    method = build_method(cfg, budget)
    info = TaskInfo("bench", backbone.head, backbone.family, backbone.head_prefixes, total_steps)
    model = method.apply(copy.deepcopy(backbone.model), info).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * total_steps), total_steps)
    first = int(0.2 * total_steps)  # inside the pruning phase (0.15·T .. 0.5·T) of DynDoRA and AdaLoRA
    return Bench(name, method, model, params, optimizer, scheduler, total_steps, first)


def make_batches(bb: Backbone, n: int, batch: int, seq: int, tgt: int, device: str, seed: int = 0):
    """``n`` random full-length batches (no padding: every method sees the same tokens)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, bb.vocab, (batch, seq), generator=g)
        b = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if bb.head == "seq2seq":
            b["labels"] = torch.randint(3, bb.vocab, (batch, tgt), generator=g)
        else:
            b["labels"] = torch.randint(0, NUM_LABELS, (batch,), generator=g)
        out.append({k: v.to(device) for k, v in b.items()})
    return out


# -- the step --------------------------------------------------------------------------------------
def train_step(b: Bench, batch: dict, autocast) -> None:
    """One optimizer step: the runner's own (dora.step.train_step), gradient norm clipped at 1."""
    dora_step.train_step(b, batch, b.step + 1, 1.0, autocast=autocast)
    b.step += 1


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    """Seconds of ``fn()``, device work included."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def time_steps(benches: list[Bench], batches, rounds: int, warmup: int, autocast, device: str):
    """Interleaved rounds; round i runs the methods rotated by i. Returns {name: [wall seconds]} and
    {name: [process CPU seconds]} (timed rounds only, in round order). CPU time counts only what this
    process ran, so on a shared CPU it is far less sensitive to other processes than wall time."""
    times = {b.name: [] for b in benches}
    cpu = {b.name: [] for b in benches}
    for i in range(warmup + rounds):
        shift = i % len(benches)
        batch = batches[i % len(batches)]
        for b in benches[shift:] + benches[:shift]:
            gc.collect()  # outside the timed region: a collection must not land in one method's step
            c = time.process_time()
            t = timed(lambda b=b, batch=batch: train_step(b, batch, autocast), device)
            if i >= warmup:
                times[b.name].append(t)
                cpu[b.name].append(time.process_time() - c)
        print(f"  round {i + 1}/{warmup + rounds}" + (" (warm-up)" if i < warmup else ""), flush=True)
    return times, cpu


# -- memory ----------------------------------------------------------------------------------------
def static_bytes(b: Bench) -> int:
    """Parameters, buffers and optimizer state (unique storages), resident between steps."""
    tensors = [*b.model.parameters(), *b.model.buffers()]
    tensors += [v for s in b.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    seen = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def step_peak_bytes(b: Bench, batch, autocast, device: str) -> int:
    """Peak of the tensor bytes allocated during one step and not yet freed."""
    return peak_bytes(lambda: train_step(b, batch, autocast), device)


def peak_bytes(step, device: str) -> int:
    """Peak of the tensor bytes allocated while ``step()`` runs and not yet freed (CUDA counters, else
    the profiler's allocation events)."""
    if device.startswith("cuda"):
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        step()
        sync(device)
        return torch.cuda.max_memory_allocated() - start
    return _profiled_peak(step)


def _profiled_peak(fn) -> int:
    """CPU: replay the profiler's allocation events (ptr, ±bytes) in time order; frees of tensors
    allocated before ``fn`` started are ignored, so this is the step's own peak."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.ptr, node.extra_fields.alloc_size))
    live, now, peak = {}, 0, 0
    for _, ptr, size in sorted(events):
        if size > 0:
            live[ptr] = size
            now += size
            peak = max(peak, now)
        elif ptr in live:
            now -= live.pop(ptr)
    return peak


# -- component costs -------------------------------------------------------------------------------
def median_ms(fn, reps: int, device: str) -> float:
    return 1e3 * statistics.median(timed(fn, device) for _ in range(reps))


@torch.no_grad()
def naive_scores(layers, eps: float = 1e-8) -> torch.Tensor:
    """The released code's form: ΔW_i = c_i·B_i·A_i materialised as (r', d_out, d_in) per matrix."""
    out = []
    for m in layers:
        parts = m.lora_B.float().T[:, :, None] * m.lora_A.float()[:, None, :] * m.lora_c[:, None, None]
        out.append(parts.flatten(1).norm(dim=1) / (parts.sum(0).norm() + eps))
    return torch.stack(out)  # (L, r')


def dyndora_components(b: Bench, reps: int, device: str) -> dict:
    """Scoring (closed form vs materialised), the allocator's per-step work, DEM forward+backward."""
    alloc = b.method.allocator
    with torch.no_grad():  # random gates: c = 0 at init would make every score 0
        for m in alloc.layers:
            m.lora_c.copy_(torch.randn_like(m.lora_c))
    closed, naive = alloc.scores(), naive_scores(alloc.layers)
    sched = alloc.schedule
    steps = iter(range(sched.warmup, sched.last_step + 1))  # a stretch of the pruning phase, events included

    def dem():
        (b.method.extra_loss(b.model, b.step) or torch.zeros((), requires_grad=True)).backward()
        b.optimizer.zero_grad(set_to_none=True)

    n = min(sched.interval, sched.last_step - sched.warmup + 1)  # one whole pruning interval
    per_step = [timed(lambda: alloc.step(next(steps)), device) for _ in range(n)]
    return {
        "dora_scores_closed_form_ms": median_ms(alloc.scores, reps, device),
        "dora_scores_materialised_ms": median_ms(lambda: naive_scores(alloc.layers), max(2, reps // 5), device),
        "dora_scores_max_abs_diff": float((closed - naive).abs().max()),
        "dora_allocator_step_median_ms": 1e3 * statistics.median(per_step),
        "dora_allocator_step_mean_ms": 1e3 * statistics.fmean(per_step),  # amortised over an interval
        "dora_dem_fwd_bwd_ms": median_ms(dem, reps, device),
    }  # fmt: skip


def adalora_components(b: Bench, batch, autocast, reps: int, device: str) -> dict:
    """PEFT's update_and_allocate (needs the gradients of a backward) and the orthogonal regulariser."""
    with autocast():
        b.model(**batch).loss.backward()
    total = b.total_steps
    start = b.method.schedule(total)[0] + 1
    n = b.method.cfg.delta_t  # one whole allocation interval, masking event included
    per_step = [timed(lambda s=s: b.method.peft.base_model.update_and_allocate(s), device)
                for s in range(start, start + n)]  # fmt: skip
    b.optimizer.zero_grad(set_to_none=True)

    def orth():
        b.method.extra_loss(b.model, start).backward()
        b.optimizer.zero_grad(set_to_none=True)

    return {
        "adalora_update_and_allocate_median_ms": 1e3 * statistics.median(per_step),
        "adalora_update_and_allocate_mean_ms": 1e3 * statistics.fmean(per_step),
        "adalora_orth_reg_fwd_bwd_ms": median_ms(orth, reps, device),
    }


# -- report ----------------------------------------------------------------------------------------
def summarise(benches, times, cpu, peaks, statics, batch_size: int) -> dict:
    rows = {}
    for b in benches:
        t = times[b.name]
        rows[b.name] = {
            "median_step_s": statistics.median(t),
            "p10_step_s": _quantile(t, 0.1),
            "p90_step_s": _quantile(t, 0.9),
            "samples_per_s": batch_size / statistics.median(t),
            "median_step_cpu_s": statistics.median(cpu[b.name]),
            "step_s": t,  # every timed round, in order (pairs with the other methods' rounds)
            "peak_mem_mb": (statics[b.name] + peaks[b.name]) / 2**20,
            "static_mem_mb": statics[b.name] / 2**20,
            "step_peak_mem_mb": peaks[b.name] / 2**20,
            "trainable_params": sum(p.numel() for p in b.params),
            "budget_params": b.method.budget_params(b.model),
        }
    for ref_name in ("lora", "bitfit"):  # ratios to PEFT's LoRA and to BitFit (frozen backbone)
        if ref_name not in rows:
            continue
        ref = rows[ref_name]
        for name, row in rows.items():
            row[f"step_ratio_to_{ref_name}"] = row["median_step_s"] / ref["median_step_s"]
            paired = [a / r for a, r in zip(times[name], times[ref_name], strict=True)]
            row[f"paired_step_ratio_to_{ref_name}"] = statistics.median(paired)
            row[f"cpu_step_ratio_to_{ref_name}"] = row["median_step_cpu_s"] / ref["median_step_cpu_s"]
            row[f"peak_mem_ratio_to_{ref_name}"] = row["peak_mem_mb"] / ref["peak_mem_mb"]
    return rows


def _quantile(values, q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def table(rows: dict) -> str:
    head = (
        f"{'method':<12} {'step s':>8} {'x LoRA':>7} {'paired':>7} {'cpu s':>8} {'x LoRA':>7} {'x BitFit':>8} "
        f"{'samples/s':>10} {'peak MiB':>9} {'x LoRA':>7} {'step MiB':>9}"
    )
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        lines.append(
            f"{name:<12} {r['median_step_s']:>8.3f} {r.get('step_ratio_to_lora', math.nan):>7.3f} "
            f"{r.get('paired_step_ratio_to_lora', math.nan):>7.3f} {r['median_step_cpu_s']:>8.3f} "
            f"{r.get('cpu_step_ratio_to_lora', math.nan):>7.3f} {r.get('paired_step_ratio_to_bitfit', math.nan):>8.3f} "
            f"{r['samples_per_s']:>10.2f} {r['peak_mem_mb']:>9.1f} {r.get('peak_mem_ratio_to_lora', math.nan):>7.3f} "
            f"{r['step_peak_mem_mb']:>9.1f}"
        )  # fmt: skip
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else cpu_name()


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--model", default="roberta_base", help="roberta_base | bart_base | tiny_roberta | tiny_bart"
    )
    p.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated; default: all")
    p.add_argument("--rank", type=int, default=12, help="LoRA rank = initial rank r' of DynDoRA and AdaLoRA")
    p.add_argument(
        "--steps", type=int, default=20, help="timed interleaved rounds (one step per method each)"
    )
    p.add_argument("--warmup", type=int, default=3, help="rounds excluded from timing")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--tgt-len", type=int, default=64, help="decoder labels length (seq2seq models)")
    p.add_argument("--total-steps", type=int, default=0, help="T the methods schedule for (0: auto)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--component-reps", type=int, default=20)
    p.add_argument("--no-components", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default results/bench/<device>.json)")
    return p.parse_args(argv)  # fmt: skip


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    device = a.device
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in ALL_METHODS and m not in VARIANTS]
    if bad:
        raise SystemExit(f"--methods: unknown {bad}; valid: {', '.join(ALL_METHODS + tuple(VARIANTS))}")
    dtype = torch.bfloat16 if a.precision == "bf16" else None
    autocast = (lambda: torch.autocast(device.split(":")[0], dtype=dtype)) if dtype else nullcontext
    # T: the timed steps must stay inside 0.2·T .. 0.5·T (the pruning phase)
    total = a.total_steps or 10 * (a.warmup + a.steps + 2) + 100
    load_start = os.getloadavg()

    backbone = build_backbone(a.model)
    benches = [build_bench(m, backbone, a.rank, total, device) for m in methods]
    batches = make_batches(backbone, 4, a.batch, a.seq_len, a.tgt_len, device, a.seed)
    print(f"{a.model} on {device_name(device)}, {torch.get_num_threads()} threads, batch {a.batch}x{a.seq_len}, "
          f"rank {a.rank}, {a.precision}; load {load_start[0]:.2f}", flush=True)  # fmt: skip
    times, cpu = time_steps(benches, batches, a.steps, a.warmup, autocast, device)
    statics = {b.name: static_bytes(b) for b in benches}
    peaks = {b.name: step_peak_bytes(b, batches[0], autocast, device) for b in benches}
    components = {}
    if not a.no_components:
        for b in benches:
            if b.name == "dora":  # not the variants: one set of component costs
                components.update(dyndora_components(b, a.component_reps, device))
            if b.name == "adalora":
                components.update(adalora_components(b, batches[0], autocast, a.component_reps, device))
    rows = summarise(benches, times, cpu, peaks, statics, a.batch)

    result = {
        "command": "python " + " ".join([os.path.relpath(__file__, REPO), *(argv or sys.argv[1:])]),
        "device": device,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "model": a.model,
        "batch": a.batch,
        "seq_len": a.seq_len,
        "tgt_len": a.tgt_len if backbone.head == "seq2seq" else None,
        "rank": a.rank,
        "precision": a.precision,
        "rounds": a.steps,
        "warmup_rounds": a.warmup,
        "total_steps_T": total,
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "memory_measure": (
            "peak_mem_mb = static (parameters + buffers + optimizer state) + step_peak (live tensor bytes "
            "allocated during one step: CUDA max_memory_allocated above the step start; CPU the torch "
            "profiler's allocator events replayed); MiB"
        ),
        "methods": rows,
        "components": components,
        "env": environment(device),
    }
    out = Path(a.out or REPO / "results" / "bench" / f"{device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(table(rows))
    if components:
        print("components (ms): " + ", ".join(f"{k}={v:.3g}" for k, v in components.items()))
    print(f"load average {load_start[0]:.2f} -> {result['loadavg_end'][0]:.2f}; wrote {out}")
    return result


if __name__ == "__main__":
    main()
