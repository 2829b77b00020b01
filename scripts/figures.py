"""Figures from a folder of runs (PNG and PDF), a pure function of the folder like make_tables.py.

python scripts/figures.py --runs RUNS_DIR --out OUT_DIR [--model roberta_base]
    fig2.{png,pdf}           Figure 2: DynDoRA's final rank per (matrix, layer) on SST-2, mean over
                             seeds, one panel per b(T), the paper's panel below ours; fig2.csv
    budget_<task>.{png,pdf}  average rank b(t) against step, DynDoRA and AdaLoRA (budget_history)
    curves_<task>.{png,pdf}  headline dev metric against step per method/budget (history), ±std
python scripts/figures.py sweep --runs RUNS_DIR --out OUT_DIR --task rte --knob method.dem_coef
    sweep_<knob>_<task>.{png,pdf,csv}  headline metric against the knob, error bars = std over seeds
python scripts/figures.py ranks --runs RUNS_DIR --out OUT_DIR
    ranks_<run folder>.{png,pdf}  each DynDoRA / AdaLoRA run's final rank per (matrix, layer)

Every rank map, here and in mini_table.py, is drawn by ``heatmap`` from a ``dora.families.rank_grid``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dora import families
from dora.families import ENCODER_MATRICES, RankGrid
from dora.records import RunRecord, scan
from scripts.make_tables import PAPER, paper_eta

plt.switch_backend("agg")  # files only; no display on clusters
# Figure 2's rows, as the paper labels the six matrices of an encoder layer (dora.families)
MATRICES = list(ENCODER_MATRICES.values())
KNOB_LABELS = {"method.init_ratio": "b(0) / b(T)", "method.dem_coef": "η (DEM coefficient)"}


def save(fig, out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # no creation date in the PDF: the same runs give the same bytes, so regenerated figures diff clean
    fig.savefig(out / f"{stem}.png", dpi=150, bbox_inches="tight")
    fig.savefig(out / f"{stem}.pdf", dpi=150, bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)


# -- rank maps ---------------------------------------------------------------------------------------
def heatmap(ax, grid: RankGrid, title: str, vmax: float | None = None):
    """One rank map (rows: matrices, columns: layers), each cell labelled; vmax shares one colour scale
    (0..vmax) across panels. Returns the image (for a colour bar)."""
    image = ax.imshow(grid.values, cmap="viridis", aspect="auto", vmin=None if vmax is None else 0, vmax=vmax)
    for (i, j), v in np.ndenumerate(grid.values):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.1f}".rstrip("0").rstrip("."), ha="center", va="center", fontsize=6, color="w")
    ax.set_yticks(range(len(grid.rows)), grid.rows)
    ax.set_xticks(range(len(grid.cols)), grid.cols, fontsize=7)
    ax.set_title(title, fontsize=9)
    return image


def rank_grid(run: RunRecord) -> RankGrid | None:
    """The run's final rank grid, or None without a rank pattern of a known family."""
    try:
        return families.rank_grid(run.rank_pattern or {})
    except ValueError:
        return None


def mean_grid(grids: list[RankGrid]) -> RankGrid:
    """The element-wise mean over seeds of grids of one shape."""
    return grids[0]._replace(values=sum(g.values for g in grids) / len(grids))


def rank_maps(runs: list[RunRecord], out: Path) -> list[str]:
    """ranks_<run folder>: one figure per run with a rank pattern, colour scale 0..its largest rank."""
    written = []
    for r in runs:
        grid = rank_grid(r)
        if grid is None:
            continue
        fig, ax = plt.subplots(
            figsize=(max(4.0, 0.5 * len(grid.cols) + 2), max(2.5, 0.35 * len(grid.rows) + 1.2))
        )
        title = f"{r.method} on {r.task} ({r.model}, seed {r.seed}): mean rank {np.nanmean(grid.values):.2f}"
        fig.colorbar(heatmap(ax, grid, title, vmax=np.nanmax(grid.values)), ax=ax, label="active components")
        ax.set_xlabel("layer")
        stem = f"ranks_{Path(r.path).name}"
        save(fig, out, stem)
        written.append(stem)
    return written


# -- Figure 2 -----------------------------------------------------------------------------------------
def fig2_runs(runs: list[RunRecord], model: str) -> dict[int, list[RankGrid]]:
    """b(T) -> rank grids of DynDoRA runs on SST-2 at the paper's settings (ratio 1.5, Table 8 eta), of
    encoder families only (the paper's six rows)."""
    eta, out = paper_eta()["sst2"], {}
    for r in runs:
        if (r.model, r.task, r.method) != (model, "sst2", "dora"):
            continue
        if not (_close(r.cfg("method.init_ratio"), 1.5) and _close(r.cfg("method.dem_coef"), eta)):
            continue
        grid = rank_grid(r)
        if grid is not None and grid.rows == MATRICES:
            out.setdefault(int(r.cfg("budget.rank")), []).append(grid)
    return out


def _close(a, b) -> bool:
    return a is not None and math.isclose(float(a), float(b))


def paper_fig2() -> dict[int, RankGrid]:
    df = pd.read_csv(PAPER / "fig2.csv")
    grids = {}
    for b, g in df.groupby("budget"):
        layers = g.drop(columns="budget").set_index("matrix").loc[MATRICES]  # columns L1, L2, ...
        grids[int(b)] = RankGrid(MATRICES, [c[1:] for c in layers.columns], layers.to_numpy(float))
    return grids


def figure2(runs: list[RunRecord], model: str, out: Path) -> bool:
    ours = fig2_runs(runs, model)
    if not ours:
        return False
    paper, budgets = paper_fig2(), sorted(ours)
    fig, axes = plt.subplots(2, len(budgets), figsize=(4 * len(budgets), 5), squeeze=False)
    rows = []
    for k, b in enumerate(budgets):
        mean = mean_grid(ours[b])  # (6, layers), mean over seeds
        heatmap(axes[0, k], mean, f"ours, b(T)={b} (mean of {len(ours[b])} seeds, {model})")
        axes[1, k].set_axis_off() if b not in paper else heatmap(axes[1, k], paper[b], f"paper, b(T)={b}")
        rows += [
            {"budget": b, "matrix": m, **{f"L{i + 1}": v for i, v in enumerate(row)}}
            for m, row in zip(mean.rows, mean.values, strict=True)
        ]
    fig.supxlabel("layer")
    save(fig, out, "fig2")
    pd.DataFrame(rows).to_csv(out / "fig2.csv", index=False)
    return True


# -- budget and training curves -----------------------------------------------------------------------
def _group_label(r: RunRecord) -> str:
    """One curve per configuration: method (DynDoRA with b(0) = b(T) is "dora no pruning"), budget,
    backbone and learning rate, so that runs at two rates or with and without pruning are never pooled."""
    name = r.method + (
        " no pruning" if r.method == "dora" and _close(r.cfg("method.init_ratio"), 1.0) else ""
    )
    lr = r.cfg("trainer.lr")
    return f"{name} {r.budget or ''} ({r.model}{f', lr {lr:g}' if lr else ''})".replace("  ", " ")


def budget_curves(runs: list[RunRecord], out: Path) -> list[str]:
    """Average rank b(t) = active components / adapted matrices, from b(0) at step 0 through every
    pruning event (budget_history), mean over seeds."""
    rows = [
        {"task": r.task, "group": _group_label(r), "step": step, "avg_rank": avg}
        for r in runs
        if r.budget_history and r.rank_pattern
        for step, avg in budget_points(r)
    ]
    return _plot_by_task(pd.DataFrame(rows), "avg_rank", "average rank b(t)", "budget", out, steps=True)


def budget_points(r: RunRecord) -> list[tuple[int, float]]:
    """(step, average rank): b(0) at step 0, then active components / matrices at every event."""
    ratio, rank = r.cfg("method.init_ratio"), r.cfg("budget.rank")
    start = [(0, math.ceil(round(ratio * rank, 9)))] if ratio and rank else []  # b(0) = ceil(ratio x r)
    return start + [(step, active / len(r.rank_pattern)) for step, active in r.budget_history]


def training_curves(runs: list[RunRecord], out: Path) -> list[str]:
    rows = [
        {
            "task": r.task,
            "group": _group_label(r),
            "step": h["step"],
            "value": h[r.headline],
            "metric": r.headline,
        }
        for r in runs
        for h in r.history
        if r.headline in h
    ]
    return _plot_by_task(pd.DataFrame(rows), "value", None, "curves", out)


def _plot_by_task(
    df: pd.DataFrame, y: str, ylabel: str | None, prefix: str, out: Path, steps=False
) -> list[str]:
    written = []
    for task, tdf in df.groupby("task") if len(df) else []:
        fig, ax = plt.subplots(figsize=(6, 4))
        for group, g in tdf.groupby("group"):
            s = g.groupby("step")[y].agg(["mean", "std"]).reset_index()
            ax.plot(
                s["step"], s["mean"], label=group, drawstyle="steps-post" if steps else "default", marker="."
            )
            ax.fill_between(
                s["step"], s["mean"] - s["std"].fillna(0), s["mean"] + s["std"].fillna(0), alpha=0.2
            )
        ax.set(xlabel="optimizer step", ylabel=ylabel or tdf["metric"].iloc[0], title=task)
        ax.legend(fontsize=7)
        save(fig, out, f"{prefix}_{task}")
        written.append(f"{prefix}_{task}")
    return written


# -- sweeps -------------------------------------------------------------------------------------------
def sweep_points(runs: list[RunRecord], task: str, knob: str, protocol: str = "best") -> pd.DataFrame:
    """Per (model, knob value): mean, std, n of the headline metric over DynDoRA runs on ``task``."""
    rows = [
        {"model": r.model, "x": float(r.cfg(knob)), "value": r.value(r.headline, protocol)}
        for r in runs
        if r.task == task and r.method == "dora" and r.cfg(knob) is not None
    ]
    if not rows:
        return pd.DataFrame(columns=["model", "x", "mean", "std", "n"])
    df = pd.DataFrame(rows).groupby(["model", "x"])["value"].agg(["mean", "std", "count"]).reset_index()
    return df.rename(columns={"count": "n"})


def sweep_plot(runs: list[RunRecord], task: str, knob: str, out: Path, protocol: str = "best") -> Path | None:
    points = sweep_points(runs, task, knob, protocol)
    if points.empty:
        return None
    headline = next(r.headline for r in runs if r.task == task)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for model, g in points.groupby("model"):
        ax.errorbar(g["x"], g["mean"], yerr=g["std"].fillna(0), marker="o", capsize=3, label=model)
        for x, m, n in zip(g["x"], g["mean"], g["n"], strict=True):
            ax.annotate(f"n={n}", (x, m), textcoords="offset points", xytext=(0, 6), fontsize=6, ha="center")
    ax.set(xlabel=KNOB_LABELS.get(knob, knob), ylabel=f"{headline} ({protocol})", title=f"DynDoRA on {task}")
    ax.legend(fontsize=7)
    stem = f"sweep_{knob.split('.')[-1]}_{task}"
    save(fig, out, stem)
    points.to_csv(out / f"{stem}.csv", index=False)
    return out / f"{stem}.png"


# -- command line -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="all", choices=("all", "sweep", "ranks"))
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="roberta_base", help="backbone of the Figure 2 runs")
    p.add_argument("--task", help="sweep: the task")
    p.add_argument("--knob", default="method.dem_coef", help="sweep: config key on the x axis")
    p.add_argument("--protocol", choices=("best", "last"), default="best")
    a = p.parse_args(argv)
    runs = scan(a.runs).ok
    if a.what == "sweep":
        path = sweep_plot(runs, a.task, a.knob, a.out, a.protocol)
        print(f"wrote {path}" if path else f"no DynDoRA runs on {a.task} with {a.knob} in {a.runs}")
        return 0 if path else 1
    if a.what == "ranks":
        written = rank_maps(runs, a.out)
        print(f"{len(runs)} runs; wrote {len(written)} rank maps (png, pdf) in {a.out}" if written else
              f"no run with a rank pattern in {a.runs}")  # fmt: skip
        return 0 if written else 1
    written = (["fig2"] if figure2(runs, a.model, a.out) else []) + budget_curves(runs, a.out)
    written += training_curves(runs, a.out)
    print(f"{len(runs)} runs; wrote {', '.join(written) or 'nothing (no runs)'} (png, pdf) in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
