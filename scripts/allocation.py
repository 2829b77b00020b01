"""Is an adaptive method's final rank allocation a signal or noise? Diagnostics for DynDoRA and AdaLoRA.

Reproducibility: runs that differ only in the seed (same model, task, method, budget and configuration)
should agree on which matrices get more rank if the allocation reflects the task. For every pair of seeds
the final rank patterns (result.json ``rank_pattern``: active components per adapted matrix) are
correlated over the matrices (Pearson); the mean over pairs is compared with its permutation null, the
same statistic after shuffling each run's pattern across matrices (10,000 draws, fixed seed):
p = (1 + #draws ≥ observed) / (1 + draws). A mean near 0 with a large p says the allocation is noise.

Movement (DynDoRA): how far training moved the factors, from result.json ``diagnostics``: the median
cosine of B_i and A_i to their initial values (B starts Kaiming-uniform, not at zero, so a B that stays
at cosine ≈ 1 was never trained beyond its gate) and Σ lr, the summed learning rate of the run.
"""

from __future__ import annotations

import statistics
from itertools import combinations
from pathlib import Path

import numpy as np

from dora.records import RunRecord

ADAPTIVE = ("dora", "adalora")
DRAWS = 10_000
COLUMNS = [
    "model",
    "task",
    "method",
    "variant",
    "budget",
    "lr",
    "seeds",
    "uniform",
    "mean_r",
    "p",
    "b_cos_init",
    "a_cos_init",
    "lr_sum",
]


LABELS = {"dora": "DynDoRA", "dora_noprune": "DynDoRA, no pruning", "adalora": "AdaLoRA"}


def group_key(run: RunRecord) -> tuple:
    return (run.model, run.task, run.method, run.budget, run.signature())


def patterns(runs: list[RunRecord]) -> np.ndarray:
    """(seeds, matrices) final active components, matrices in one sorted order."""
    names = sorted(runs[0].rank_pattern)
    return np.array([[r.rank_pattern[n] for n in names] for r in runs], dtype=float)


def mean_pairwise_r(x: np.ndarray) -> float:
    """Mean Pearson correlation over all pairs of rows (rows must not be constant)."""
    z = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    return float(np.mean([z[i] @ z[j] / x.shape[1] for i, j in combinations(range(len(x)), 2)]))


def permutation_p(x: np.ndarray, observed: float, draws: int = DRAWS, seed: int = 0) -> float:
    """Share of independent shuffles (each row across its columns) with a mean pairwise r ≥ observed."""
    rng = np.random.default_rng(seed)
    z = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)  # shuffling keeps each row's mean and std
    order = np.argsort(rng.random((draws, *x.shape)), axis=-1)  # (draws, seeds, matrices)
    zp = np.take_along_axis(np.broadcast_to(z, order.shape), order, axis=-1)
    corr = np.einsum("dsm,dtm->dst", zp, zp) / x.shape[1]  # (draws, seeds, seeds)
    i, j = np.triu_indices(len(x), 1)
    null = corr[:, i, j].mean(-1)
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + draws))


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def diagnose(runs: list[RunRecord]) -> list[dict]:
    """One row per group of adaptive-method runs with a rank pattern (≥ 2 seeds for the correlation)."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        if r.method in ADAPTIVE and r.rank_pattern:
            groups.setdefault(group_key(r), []).append(r)
    rows = []
    for (model, task, method, budget, _), members in sorted(groups.items(), key=lambda kv: kv[0][:4]):
        members = sorted(members, key=lambda r: r.seed)
        x = patterns(members)
        varied = x[x.std(1) > 0]  # a uniform pattern (every matrix the same rank) has no correlation
        lr = members[0].cfg("trainer.lr")
        row = {"model": model, "task": task, "method": method, "variant": members[0].variant,
               "budget": budget or "", "lr": lr,
               "seeds": len(members), "uniform": int(len(x) - len(varied)), "mean_r": None, "p": None}  # fmt: skip
        if len(varied) >= 2:
            row["mean_r"] = mean_pairwise_r(varied)
            row["p"] = permutation_p(varied, row["mean_r"])
        diag = [r.diagnostics or {} for r in members]
        for key in ("b_cos_init", "a_cos_init", "lr_sum"):
            row[key] = _median([d.get(key) for d in diag])
        rows.append(row)
    return rows


def fmt(x, digits=2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def markdown(rows: list[dict]) -> str:
    lines = [
        "# Allocation diagnostics (scripts/allocation.py)",
        "",
        "Final rank patterns across seeds: mean pairwise Pearson r over the adapted matrices and its "
        f"permutation p ({DRAWS:,} shuffles); uniform = seeds whose pattern gives every matrix the same rank. "
        "DynDoRA's factor movement: median cosine of B_i / A_i to their initial values, Σ lr of the run.",
        "",
        "| model | task | method | budget | lr | seeds | uniform | mean r | p | cos(B, B0) | cos(A, A0) | Σ lr |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['task']} | {LABELS[r['variant']]} | "
            f"{r['budget']} | {r['lr'] if r['lr'] is not None else '—'} | {r['seeds']} | {r['uniform']} | {fmt(r['mean_r'])} | {fmt(r['p'], 3)} | "
            f"{fmt(r['b_cos_init'], 3)} | {fmt(r['a_cos_init'], 3)} | {fmt(r['lr_sum'])} |"
        )
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], runs: list[RunRecord], out: Path) -> bool:
    """allocation.{png,pdf}: reproducibility per task and method (left), B movement against Σ lr (right)."""
    from scripts.figures import plt, save  # here: figures imports make_tables, which imports this module

    scored = [r for r in rows if r["mean_r"] is not None]
    moved = [r for r in runs if r.method == "dora" and (r.diagnostics or {}).get("b_cos_init")]
    if not scored and not moved:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    cats = sorted({(r["task"], r["lr"] or 0) for r in scored})  # a task, at each learning rate that ran
    several = {t for t, _ in cats if sum(c[0] == t for c in cats) > 1}
    for k, (method, name, color) in enumerate(
        (("adalora", "AdaLoRA", "tab:blue"), ("dora", "DynDoRA", "tab:red"))
    ):
        mine = {(r["task"], r["lr"] or 0): r for r in scored if r["variant"] == method}
        for i, cat in enumerate(cats):
            if cat in mine:
                y = mine[cat]["mean_r"]
                left.bar(
                    i + (k - 0.5) * 0.38, y, width=0.38, color=color, label=name if cat == min(mine) else None
                )
                left.text(i + (k - 0.5) * 0.38, y, f"p={mine[cat]['p']:.2g}", ha="center",
                          va="bottom" if y >= 0 else "top", fontsize=6)  # fmt: skip
    labels = [f"{t}\nlr {lr:g}" if t in several else t for t, lr in cats]
    left.axhline(0, color="k", lw=0.8)
    left.set_xticks(range(len(cats)), labels, fontsize=8)
    left.set_ylabel("mean pairwise r of final ranks")
    left.set_title("Is the allocation reproducible across seeds?", fontsize=9)
    left.legend(fontsize=7)
    for task in sorted({r.task for r in moved}):
        pts = [(r.diagnostics["lr_sum"], r.diagnostics["b_cos_init"]) for r in moved if r.task == task]
        right.scatter(*zip(*pts, strict=True), label=task, s=18)
    if not moved:
        right.text(
            0.5, 0.5, "no DynDoRA run recorded its diagnostics", ha="center", transform=right.transAxes
        )
    right.axhline(0.95, color="grey", ls="--", lw=0.8)
    right.set_xlabel("Σ lr of the run")
    right.set_ylabel("median cos(B_i, B_i at init)")
    right.set_title("Did DynDoRA's B factors move?", fontsize=9)
    if moved:
        right.legend(fontsize=7)
    fig.tight_layout()
    save(fig, out, "allocation")
    return True


def write(runs: list[RunRecord], out_dir: Path) -> list[dict]:
    """allocation.md, allocation.csv (and the figure) in ``out_dir``; returns the rows."""
    import csv

    rows = diagnose(runs)
    if not rows:
        return rows
    (out_dir / "allocation.md").write_text(markdown(rows))
    with open(out_dir / "allocation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    figure(rows, runs, out_dir)
    return rows
