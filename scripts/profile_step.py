"""Where a training step's time goes: torch.profiler's per-op self time, grouped by input shapes.

    OMP_NUM_THREADS=1 python scripts/profile_step.py --methods bitfit,dora --threads 1 [--rows 40]

Same build and step as scripts/bench.py (roberta-base shape, batch 16x128, r' = 12 by default); one
warm-up step, then one profiled step per method. Self times are wall-clock per op, so on a busy machine
compare methods within one run, not across runs. The README's "Where a DynDoRA step went" comes from this.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext

import torch
from torch.profiler import ProfilerActivity, profile

from scripts import bench


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="bitfit,dora")
    p.add_argument("--model", default="roberta_base")
    p.add_argument("--rank", type=int, default=12)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", type=int, default=40)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    backbone = bench.build_backbone(a.model)
    benches = [bench.build_bench(m, backbone, a.rank, 170, "cpu") for m in a.methods.split(",")]
    batches = bench.make_batches(backbone, 2, a.batch, a.seq_len, 64, "cpu")
    for b in benches:
        bench.train_step(b, batches[0], nullcontext)  # warm-up
    for b in benches:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            bench.train_step(b, batches[1], nullcontext)
        events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events) / 1e3
        print(f"\n{b.name}: {total:.0f} ms self time in one step ({torch.get_num_threads()} threads)")
        for e in events[: a.rows]:
            share = e.self_cpu_time_total / 1e3 / total
            print(
                f"{e.self_cpu_time_total / 1e3:9.1f} ms {share:6.1%} {e.count:5d}x  {e.key:30s} {str(e.input_shapes)[:90]}"
            )


if __name__ == "__main__":
    main()
