"""The MiniLM mini-reproduction's table and heatmap, a pure function of a folder of runs.

    python scripts/mini_table.py --runs runs/mini --out results/mini [--collect]

Counts every completed run of ``model=minilm`` below RUNS on the five GLUE tasks (RTE, MRPC, STS-B, CoLA,
SST-2) and writes to OUT:
    table.md        mean ± std over seeds per method and task, Avg, both protocols (``best``: the
                    paper's best evaluation after pruning ends; ``last``: the final one); the methods'
                    average rank, DynDoRA's seed-paired differences to LoRA, AdaLoRA and BitFit, per-task spread,
                    and the cost of the runs
    table.csv       the same cells, tidy: protocol, task, method, metric, n, mean, std, min, max
    runs.csv        one row per run: task, method, seed, both protocols' values, params, seconds
    heatmap.{png,pdf,csv}   Figure-2-style: final rank per (matrix, layer), mean over seeds, per task,
                    for DynDoRA (and AdaLoRA when present)
``--collect`` first copies each run's result.json into OUT/runs/<run folder>/, then reads from there, so
OUT holds the results behind its table (the run folders' weights and checkpoints stay in RUNS).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dora.records import RunRecord, Scan, scan
from scripts.figures import heatmap, mean_grid, plt, rank_grid, save
from scripts.make_tables import GLUE

MODEL = "minilm"
COLUMNS = [c for c in GLUE if c.task in ("rte", "mrpc", "stsb", "cola", "sst2")]
METHODS = {"full": "Full FT", "bitfit": "BitFit", "lora": "LoRA", "adalora": "AdaLoRA", "dora": "DynDoRA"}
PROTOCOLS = ("best", "last")


def collect(runs: Path, out: Path) -> int:
    """Copy every run's result.json below ``runs`` to ``out/<same relative folder>/``; returns the count."""
    n = 0
    for path in sorted(runs.rglob("result.json")):
        dest = out / path.parent.relative_to(runs)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / "result.json")
        n += 1
    return n


def run_rows(s: Scan) -> pd.DataFrame:
    """One row per MiniLM run on the five tasks (of the scan's DataFrame): values under both protocols,
    params and seconds."""
    metric = {c.task: c.metric for c in COLUMNS}
    runs = s.frame()
    mine = runs[(runs.model == MODEL) & runs.task.isin(list(metric)) & runs.method.isin(list(METHODS))]
    df = pd.DataFrame([run_row(r, metric[r.task]) for r in mine.run])
    if not df.empty:
        df["run_s"] = df[["setup_s", "train_s", "eval_s"]].sum(axis=1, min_count=2)
    return df


def run_row(r: RunRecord, metric: str) -> dict:
    t = r.timing
    return {
        "task": r.task,
        "method": r.method,
        "seed": r.seed,
        "metric": metric,
        **{p: r.value(metric, p) for p in PROTOCOLS},
        "params": (r.params or {}).get("budget"),
        "steps": t.get("steps"),
        "setup_s": t.get("setup_s"),
        "train_s": t.get("train_s"),
        "eval_s": t.get("eval_s"),
        "run": r.path,
    }


def cells(df: pd.DataFrame) -> pd.DataFrame:
    """Tidy cells: protocol, task, method, metric, n, mean, std, min, max."""
    long = df.melt(id_vars=["task", "method", "metric", "seed"], value_vars=list(PROTOCOLS),
                   var_name="protocol", value_name="value").dropna(subset=["value"])  # fmt: skip
    g = long.groupby(["protocol", "task", "method", "metric"])["value"]
    out = g.agg(n="count", mean="mean", std="std", min="min", max="max").reset_index()
    return out.sort_values(["protocol", "task", "method"], key=_order).reset_index(drop=True)


def _order(s: pd.Series) -> pd.Series:
    ranks = {m: i for i, m in enumerate(METHODS)} | {c.task: i for i, c in enumerate(COLUMNS)}
    return s.map(lambda v: ranks.get(v, v) if s.name in ("method", "task") else v)


def wide(c: pd.DataFrame, protocol: str, stat: str = "mean") -> pd.DataFrame:
    """methods x tasks (the table's column order) of one statistic; Avg = mean over complete rows."""
    sub = c[c.protocol == protocol].pivot(index="method", columns="task", values=stat)
    sub = sub.reindex(index=[m for m in METHODS if m in sub.index], columns=[col.task for col in COLUMNS])
    if stat == "mean":
        sub["avg"] = sub.mean(axis=1, skipna=False)
    return sub


def paired(df: pd.DataFrame, a: str, b: str, protocol: str) -> pd.DataFrame:
    """Per task: mean and std over seeds of (a − b), the runs paired by seed (same data order)."""
    p = df.pivot_table(index=["task", "seed"], columns="method", values=protocol)
    if a not in p or b not in p:
        return pd.DataFrame()
    d = (p[a] - p[b]).dropna().groupby("task").agg(["mean", "std", "count"])
    d["wins"] = (p[a] - p[b]).dropna().gt(0).groupby("task").sum()
    return d.reindex([c.task for c in COLUMNS]).dropna(how="all")


# -- table.md -----------------------------------------------------------------------------------------
def _fmt(x, digits: int = 2) -> str:
    return "" if pd.isna(x) else f"{x:.{digits}f}"


def _pm(mean, std, n=None, signed: bool = False) -> str:
    """ "mean ± std (n)"; one seed has no std, so no "±"."""
    text = f"{mean:+.2f}" if signed else _fmt(mean)
    text += "" if pd.isna(std) else f" ± {_fmt(std)}"
    return text if n is None else f"{text} ({int(n)})"


def md_table(c: pd.DataFrame, df: pd.DataFrame, protocol: str) -> list[str]:
    mean, std, n = wide(c, protocol), wide(c, protocol, "std"), wide(c, protocol, "n")
    params = df.groupby("method")["params"].mean()
    head = [col.title + f" ({col.metric.split('/')[1]})" for col in COLUMNS]
    lines = ["| Method | Params | " + " | ".join(head) + " | Avg |", "|---|---:|" + "---:|" * (len(head) + 1)]
    for m in mean.index:
        texts = [
            "—" if pd.isna(mean.at[m, t]) else _pm(mean.at[m, t], std.at[m, t], n.at[m, t])
            for t in mean.columns[:-1]
        ]
        k = params.get(m)
        lines.append(
            f"| {METHODS[m]} | {_count(k)} | " + " | ".join(texts) + f" | {_fmt(mean.at[m, 'avg']) or '—'} |"
        )
    return lines


def _count(k: float) -> str:
    """A parameter count as the paper writes it: 82.9K, 22.6M."""
    if pd.isna(k):
        return ""
    return f"{k / 1e6:.1f}M" if k >= 1e6 else f"{k / 1e3:.1f}K"


def ordering(c: pd.DataFrame, protocol: str) -> tuple[list[str], pd.Series]:
    """Methods by average rank over the tasks (1 = best per task; ties share the mean rank), then by Avg."""
    mean = wide(c, protocol).drop(columns="avg")
    avg = mean.mean(axis=1, skipna=False)
    order = pd.DataFrame({"rank": mean.rank(axis=0, ascending=False).mean(axis=1), "avg": avg})
    ranks = order.sort_values(["rank", "avg"], ascending=[True, False])["rank"]  # ties: higher Avg first
    text = " > ".join(f"{METHODS[m]} ({r:.1f}; Avg {_fmt(avg[m])})" for m, r in ranks.items())
    return [f"Average rank over the {mean.shape[1]} tasks (1 = best; Avg score): {text}"], ranks


def spread(c: pd.DataFrame, protocol: str) -> list[str]:
    mean, std = wide(c, protocol).drop(columns="avg"), wide(c, protocol, "std")
    lines = ["| Task | best method | best − worst method mean | mean seed std | min–max over all runs |",
             "|---|---|---:|---:|---:|"]  # fmt: skip
    sub = c[c.protocol == protocol]
    for col in COLUMNS:
        if col.task not in mean or mean[col.task].isna().all():
            continue
        m = mean[col.task]
        runs = sub[sub.task == col.task]
        lines.append(
            f"| {col.title} | {METHODS[m.idxmax()]} | {_fmt(m.max() - m.min())} | {_fmt(std[col.task].mean())} "
            f"| {_fmt(runs['min'].min())}–{_fmt(runs['max'].max())} |"
        )
    return lines


def paired_lines(df: pd.DataFrame, protocol: str) -> list[str]:
    lines = []
    for other in ("lora", "adalora", "bitfit"):
        d = paired(df, "dora", other, protocol)
        if d.empty:
            continue
        parts = [
            f"{t} {_pm(d.at[t, 'mean'], d.at[t, 'std'], signed=True)} ({int(d.at[t, 'wins'])}/{int(d.at[t, 'count'])})"
            for t in d.index
        ]
        above = int((d["mean"] > 0).sum())
        lines.append(
            f"- DynDoRA − {METHODS[other]}, paired by seed (mean ± std; seeds where DynDoRA is higher): "
            f"{'; '.join(parts)}. Higher on average on {above} of {len(d)} tasks."
        )
    return lines


def steps_text(df: pd.DataFrame) -> str:
    steps = df.groupby("task")["steps"].agg(
        lambda v: "/".join(str(int(x)) for x in sorted(v.dropna().unique()))
    )
    return ", ".join(f"{c.title} {steps[c.task]}" for c in COLUMNS if c.task in steps and steps[c.task])


def cost_lines(df: pd.DataFrame) -> list[str]:
    if df["run_s"].isna().all():
        return []
    per = df.pivot_table(index="method", columns="task", values="run_s", aggfunc="mean")
    per = per.reindex(index=[m for m in METHODS if m in per.index], columns=[c.task for c in COLUMNS])
    lines = ["| Method | " + " | ".join(c.title for c in COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for m in per.index:
        lines.append(f"| {METHODS[m]} | " + " | ".join(_fmt(per.at[m, t], 0) for t in per.columns) + " |")
    total = df["run_s"].sum()
    lines += [
        "",
        f"Seconds per run (process: data and model setup, training, evaluation), mean over seeds; "
        f"{len(df)} runs sum to {total / 3600:.2f} run-hours (make mini-table runs two at a time, one "
        f"thread each). Optimizer steps per run: {steps_text(df)}.",
    ]
    return lines


def write_md(c: pd.DataFrame, df: pd.DataFrame, s, path: Path) -> None:
    lines = [
        "# Mini-reproduction: all-MiniLM-L6-v2 on five GLUE tasks, low budget (r = 2)",
        "",
        "Written by `scripts/mini_table.py` from the result.json files in `runs/`; see the README section "
        '"Mini-reproduction on MiniLM" for the schedule and what this does and does not show. '
        "Cells: mean ± std over seeds (n). Dev sets, metrics in percent.",
        "",
    ]
    for protocol in PROTOCOLS:
        what = {"best": "best evaluation, for DynDoRA and AdaLoRA once the budget is final (the paper's protocol)",
                "last": "final evaluation"}[protocol]  # fmt: skip
        order, _ = ordering(c, protocol)
        lines += [f"## Protocol `{protocol}`: {what}", "", *md_table(c, df, protocol), "", *order, ""]
        lines += ["Per-task spread:", "", *spread(c, protocol), "", *paired_lines(df, protocol), ""]
    lines += ["## Cost on this machine", "", *cost_lines(df), ""]
    lines += [
        f"Runs counted: {len(df)}; failed: {len(s.failed)}; incomplete: {len(s.incomplete)} (not counted)."
    ]
    lines += [f"- failed: `{p}`: {why}" for p, why in s.failed]
    path.write_text("\n".join(lines) + "\n")


# -- heatmap ------------------------------------------------------------------------------------------
def rank_figure(runs: list[RunRecord], out: Path) -> bool:
    """Final rank per (matrix, layer), mean over seeds: one panel per task, one row per method."""
    grids: dict[tuple[str, str], list] = {}
    for r in runs:
        if r.model == MODEL and r.method in ("dora", "adalora") and r.budget == "low":
            grid = rank_grid(r)
            if grid is not None:
                grids.setdefault((r.method, r.task), []).append(grid)
    if not grids:
        return False
    methods = [m for m in ("dora", "adalora") if any(k[0] == m for k in grids)]
    tasks = [c for c in COLUMNS if any(k[1] == c.task for k in grids)]
    fig, axes = plt.subplots(len(methods), len(tasks), figsize=(2.8 * len(tasks), 2.8 * len(methods)),
                             squeeze=False, layout="constrained")  # fmt: skip
    vmax = max(
        float(np.max(g.values)) for found in grids.values() for g in found
    )  # one colour scale for all panels
    rows, image = [], None
    for i, m in enumerate(methods):
        for j, col in enumerate(tasks):
            found = grids.get((m, col.task))
            if not found:
                axes[i, j].set_axis_off()
                continue
            mean = mean_grid(found)
            image = heatmap(axes[i, j], mean, f"{METHODS[m]}, {col.title} ({len(found)} seeds)", vmax)
            rows += [
                {"method": m, "task": col.task, "matrix": name, **{f"L{k + 1}": v for k, v in enumerate(row)}}
                for name, row in zip(mean.rows, mean.values, strict=True)
            ]
    fig.suptitle("all-MiniLM-L6-v2, b(T) = 2: final rank per matrix and layer (mean over seeds)", fontsize=10)
    fig.supxlabel("layer")
    fig.colorbar(image, ax=axes, shrink=0.8, label="rank")
    save(fig, out, "heatmap")
    pd.DataFrame(rows).to_csv(out / "heatmap.csv", index=False)
    return True


def build(runs: Path, out: Path) -> pd.DataFrame:
    s = scan(runs)
    df = run_rows(s)
    if df.empty:
        raise SystemExit(
            f"error: no completed {MODEL} runs on {', '.join(c.task for c in COLUMNS)} below {runs}"
        )
    out.mkdir(parents=True, exist_ok=True)
    c = cells(df)
    c.to_csv(out / "table.csv", index=False)
    df.drop(columns="run").assign(run=[Path(p).name for p in df["run"]]).to_csv(out / "runs.csv", index=False)
    write_md(c, df, s, out / "table.md")
    rank_figure(s.ok, out)
    return df


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, required=True, help="folder of run folders (any depth)")
    p.add_argument("--out", type=Path, required=True, help="where table.md/.csv, runs.csv, heatmap go")
    p.add_argument("--collect", action="store_true", help="copy result.json files into OUT/runs first")
    a = p.parse_args(argv)
    if not a.runs.is_dir():
        print(f"error: --runs {a.runs} is not a folder", file=sys.stderr)
        return 2
    source = a.runs
    if a.collect:
        source = a.out / "runs"
        if source.resolve() != a.runs.resolve():
            print(f"copied {collect(a.runs, source)} result.json files into {source}")
    try:
        df = build(source, a.out)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    print(f"{len(df)} runs -> {a.out}/table.md, table.csv, runs.csv, heatmap.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
