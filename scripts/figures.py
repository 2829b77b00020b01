"""Figures from a folder of runs (PNG and PDF), a pure function of the folder like make_tables.py.

python scripts/figures.py --runs RUNS_DIR --out OUT_DIR [--model roberta_base]
    fig2.{png,pdf}           Figure 2: DynDoRA's final rank per (matrix, layer) on SST-2, mean over
                             seeds, one panel per b(T), the paper's panel below ours; fig2.csv
    budget_<task>.{png,pdf}  average rank b(t) against step, DynDoRA and AdaLoRA (budget_history)
    curves_<task>.{png,pdf}  headline dev metric against step per method/budget (history), ±std
python scripts/figures.py sweep --runs RUNS_DIR --out OUT_DIR --task rte --knob method.dem_coef
    sweep_<knob>_<task>.{png,pdf,csv}  headline metric against the knob, error bars = std over seeds
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tables import PAPER, cfg_get, paper_eta, scan  # noqa: E402

from dora import families  # noqa: E402
from dora.families import ENCODER_MATRICES  # noqa: E402

# Figure 2's rows, as the paper labels the six matrices of an encoder layer (dora.families)
MATRICES = list(ENCODER_MATRICES.values())
KNOB_LABELS = {"method.init_ratio": "b(0) / b(T)", "method.dem_coef": "η (DEM coefficient)"}


def save(fig, out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # no creation date in the PDF: the same runs give the same bytes, so regenerated figures diff clean
    fig.savefig(out / f"{stem}.png", dpi=150, bbox_inches="tight")
    fig.savefig(out / f"{stem}.pdf", dpi=150, bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)


# -- Figure 2 -----------------------------------------------------------------------------------------
def rank_grid(rank_pattern: dict) -> np.ndarray | None:
    """(6 matrices, layers) active components of an encoder run, or None for other names (BART's)."""
    try:
        grid = families.rank_grid(rank_pattern)
    except ValueError:
        return None
    return grid.values if grid.rows == MATRICES else None


def fig2_runs(runs: list[dict], model: str) -> dict[int, list[np.ndarray]]:
    """b(T) -> rank grids of DynDoRA runs on SST-2 at the paper's settings (ratio 1.5, Table 8 eta)."""
    eta, out = paper_eta()["sst2"], {}
    for r in runs:
        if (r.get("model"), r.get("task"), r.get("method")) != (model, "sst2", "dora"):
            continue
        if not (_close(cfg_get(r, "method.init_ratio"), 1.5) and _close(cfg_get(r, "method.dem_coef"), eta)):
            continue
        grid = rank_grid(r.get("rank_pattern") or {})
        if grid is not None:
            out.setdefault(int(cfg_get(r, "budget.rank")), []).append(grid)
    return out


def _close(a, b) -> bool:
    return a is not None and math.isclose(float(a), float(b))


def paper_fig2() -> dict[int, np.ndarray]:
    df = pd.read_csv(PAPER / "fig2.csv")
    return {int(b): g.set_index("matrix").loc[MATRICES].to_numpy(float) for b, g in df.groupby("budget")}


def _heatmap(ax, grid: np.ndarray, title: str, vmax: float | None = None):
    """One rank map, each cell labelled; vmax shares one colour scale (0..vmax) across panels."""
    image = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=None if vmax is None else 0, vmax=vmax)
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.1f}".rstrip("0").rstrip("."), ha="center", va="center", fontsize=6, color="w")
    ax.set_yticks(range(len(MATRICES)), MATRICES)
    ax.set_xticks(range(grid.shape[1]), [str(i + 1) for i in range(grid.shape[1])], fontsize=7)
    ax.set_title(title, fontsize=9)
    return image


def figure2(runs: list[dict], model: str, out: Path) -> bool:
    ours = fig2_runs(runs, model)
    if not ours:
        return False
    paper, budgets = paper_fig2(), sorted(ours)
    fig, axes = plt.subplots(2, len(budgets), figsize=(4 * len(budgets), 5), squeeze=False)
    rows = []
    for k, b in enumerate(budgets):
        mean = np.mean(ours[b], axis=0)  # (6, layers), mean over seeds
        _heatmap(axes[0, k], mean, f"ours, b(T)={b} (mean of {len(ours[b])} seeds, {model})")
        axes[1, k].set_axis_off() if b not in paper else _heatmap(axes[1, k], paper[b], f"paper, b(T)={b}")
        rows += [
            {"budget": b, "matrix": m, **{f"L{i + 1}": v for i, v in enumerate(row)}}
            for m, row in zip(MATRICES, mean, strict=True)
        ]
    fig.supxlabel("layer")
    save(fig, out, "fig2")
    pd.DataFrame(rows).to_csv(out / "fig2.csv", index=False)
    return True


# -- budget and training curves -----------------------------------------------------------------------
def _group_label(r: dict) -> str:
    return f"{r['method']} {r.get('budget') or ''} ({r['model']})".replace("  ", " ")


def budget_curves(runs: list[dict], out: Path) -> list[str]:
    """Average rank b(t) = active components / adapted matrices, from b(0) at step 0 through every
    pruning event (budget_history), mean over seeds."""
    rows = [
        {"task": r["task"], "group": _group_label(r), "step": step, "avg_rank": avg}
        for r in runs
        if r.get("budget_history") and r.get("rank_pattern")
        for step, avg in _budget_points(r)
    ]
    return _plot_by_task(pd.DataFrame(rows), "avg_rank", "average rank b(t)", "budget", out, steps=True)


def _budget_points(r: dict) -> list[tuple[int, float]]:
    ratio, rank = cfg_get(r, "method.init_ratio"), cfg_get(r, "budget.rank")
    start = [(0, math.ceil(round(ratio * rank, 9)))] if ratio and rank else []  # b(0) = ceil(ratio x r)
    return start + [(step, active / len(r["rank_pattern"])) for step, active in r["budget_history"]]


def training_curves(runs: list[dict], out: Path) -> list[str]:
    rows = [
        {
            "task": r["task"],
            "group": _group_label(r),
            "step": h["step"],
            "value": h[r["headline"]],
            "metric": r["headline"],
        }
        for r in runs
        for h in r.get("history", [])
        if r.get("headline") in h
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
def sweep_points(runs: list[dict], task: str, knob: str, protocol: str = "best") -> pd.DataFrame:
    """Per (model, knob value): mean, std, n of the headline metric over DynDoRA runs on ``task``."""
    rows = [
        {"model": r["model"], "x": float(cfg_get(r, knob)), "value": r[protocol_key(protocol)][r["headline"]]}
        for r in runs
        if r.get("task") == task and r.get("method") == "dora" and cfg_get(r, knob) is not None
    ]
    if not rows:
        return pd.DataFrame(columns=["model", "x", "mean", "std", "n"])
    df = pd.DataFrame(rows).groupby(["model", "x"])["value"].agg(["mean", "std", "count"]).reset_index()
    return df.rename(columns={"count": "n"})


def protocol_key(protocol: str) -> str:
    return "best" if protocol == "best" else "metrics"


def sweep_plot(runs: list[dict], task: str, knob: str, out: Path, protocol: str = "best") -> Path | None:
    points = sweep_points(runs, task, knob, protocol)
    if points.empty:
        return None
    headline = next(r["headline"] for r in runs if r.get("task") == task)
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
    p.add_argument("what", nargs="?", default="all", choices=("all", "sweep"))
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
    written = (["fig2"] if figure2(runs, a.model, a.out) else []) + budget_curves(runs, a.out)
    written += training_curves(runs, a.out)
    print(f"{len(runs)} runs; wrote {', '.join(written) or 'nothing (no runs)'} (png, pdf) in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
