"""The MiniLM study's own report (README "MiniLM study"), a pure function of committed files.

python scripts/study_report.py table --runs results/study/stage3/runs --out results/study/stage3
    study.md / study.csv    per task and method: mean ± std over seeds under the protocols last, common
                            and best (the paper's), degenerate runs (at a constant predictor) counted apart;
                            the cost per task, method and device (also cost.csv)
    paired.md / paired.csv  seed-paired differences DynDoRA − LoRA, DynDoRA − AdaLoRA and DynDoRA −
                            (DynDoRA without pruning) per task and on the task average: every seed's
                            difference, mean ± std, how many seeds favour DynDoRA, paired t-test p
    tasks.md                both, one block per task, as the README quotes them
    ranks_mean.{png,pdf}    Figure-2-style map of DynDoRA's final rank per (matrix, layer), mean over
                            seeds, one panel per task
python scripts/study_report.py table --runs results/study/stage3/runs --replace results/study/twin/runs \
        --out results/study/stage3/cpu_only
                            the same, with each run that has a CPU twin replaced by it (a device check),
                            and twins.md: every such run next to its twin (scores, rank-pattern agreement)
python scripts/study_report.py lr --tuned configs/tuned --out results/study/stage2
    lr.md / lr.csv          stage 2's evidence: every rate's score per method and task, and the choice
python scripts/study_report.py wallclock runs/study/stage1 runs/study/stage3 ...
                            the wall-clock during which at least one run of those folders was training:
                            the union of every run.log's active spans (lines under 15 min apart), per
                            folder and in all (run.log is not committed: this reads a live STUDY_RUNS)

The methods are the run's ``method``, except that DynDoRA with ``method.init_ratio`` 1 (b(0) = b(T): no
pruning) is its own variant, ``dora_noprune``. The ``common`` protocol takes, for every run of a task, the
best evaluation at or after one step shared by all of that task's runs (the latest step at which any of
them fixed its allocation), as make_tables.py does per table column.

Degenerate runs and the averages: a per-task cell averages only the runs that left the trivial predictor
and counts the others apart; a per-task paired difference uses only the seeds at which neither run is
degenerate. The task average of a seed is the mean of its four headline scores, degenerate ones included
(leaving them out would compare different task mixes), and a seed enters it only when both methods have
every task at that seed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import re
import statistics
import sys
from pathlib import Path

import pandas as pd
import yaml

from dora.records import RunRecord, scan
from scripts.allocation import mean_pairwise_r, patterns
from scripts.make_tables import is_degenerate

VARIANTS = {"lora": "LoRA", "adalora": "AdaLoRA", "dora": "DynDoRA", "dora_noprune": "DynDoRA, no pruning"}
COMPARISONS = (("dora", "lora"), ("dora", "adalora"), ("dora", "dora_noprune"))
PROTOCOLS = ("last", "common", "best")
TASK_ORDER = ("cola", "mrpc", "sst2", "stsb", "rte", "qnli", "qqp", "mnli")
AVG = "avg"


def scores(runs: list[RunRecord]) -> pd.DataFrame:
    """One row per (run, protocol): task, variant, seed, metric, value, degenerate."""
    common_from: dict[str, int] = {}
    for r in runs:
        common_from[r.task] = max(common_from.get(r.task, 0), r.allocation_final_step())
    rows = []
    for r in runs:
        for protocol in PROTOCOLS:
            v = r.value(r.headline, protocol, common_from[r.task])
            if v is None:
                continue
            rows.append({"task": r.task, "variant": r.variant, "seed": r.seed, "metric": r.headline,
                         "protocol": protocol, "value": v, "degenerate": is_degenerate(r, r.headline, v),
                         "device": r.device or "unknown"})  # fmt: skip
    columns = ["task", "variant", "seed", "metric", "protocol", "value", "degenerate", "device"]
    df = pd.DataFrame(rows, columns=columns)
    duplicated = df.duplicated(["task", "variant", "seed", "protocol"])
    if duplicated.any():
        raise SystemExit(
            "error: two runs share a task, method and seed (mixed configurations in one folder?): "
            + ", ".join(
                sorted(
                    {f"{t}/{m}/seed {s}" for t, m, s in df[duplicated][["task", "variant", "seed"]].values}
                )
            )
        )
    return df


def _std(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (protocol, variant, task): n, mean, std over the non-degenerate runs, and the degenerate count;
    task ``avg``: the mean of the variant's task means where it has every task of the study."""
    rows = []
    tasks = _tasks(df)
    for (protocol, var), g in df.groupby(["protocol", "variant"], sort=False):
        means = {}
        for task in tasks:
            t = g[g.task == task]
            vals = t[~t.degenerate].value.tolist()
            mean = statistics.fmean(vals) if vals else None
            means[task] = mean
            rows.append({"protocol": protocol, "variant": var, "task": task, "n": len(vals), "mean": mean,
                         "std": _std(vals), "degenerate": int(t.degenerate.sum())})  # fmt: skip
        complete = all(m is not None for m in means.values())
        rows.append({"protocol": protocol, "variant": var, "task": AVG, "n": None,
                     "mean": statistics.fmean(means.values()) if complete else None, "std": None,
                     "degenerate": None})  # fmt: skip
    return pd.DataFrame(rows).astype({"n": "Int64", "degenerate": "Int64"})


PAIRED_COLUMNS = ["protocol", "comparison", "task", "n", "mean_diff", "std_diff", "favour_a", "favour_b",
                  "p_ttest", "degenerate_pairs", "diffs"]  # fmt: skip


def paired(df: pd.DataFrame) -> pd.DataFrame:
    """Per (protocol, comparison, task incl. ``avg``): the seed-paired differences a − b."""
    from scipy import stats as st

    rows = []
    tasks = _tasks(df)
    for protocol in PROTOCOLS:
        p = df[df.protocol == protocol]
        for a, b in COMPARISONS:
            for task in [*tasks, AVG]:
                pair = _pairs(p, a, b, task, tasks)
                if pair is None:
                    continue
                seeds, xa, xb, skipped = pair
                d = [x - y for x, y in zip(xa, xb, strict=True)]
                pvalue = float(st.ttest_rel(xa, xb).pvalue) if len(d) > 1 and _std(d) else None
                rows.append({
                    "protocol": protocol, "comparison": f"{a} - {b}", "task": task, "n": len(d),
                    "mean_diff": statistics.fmean(d) if d else None, "std_diff": _std(d),
                    "favour_a": sum(x > 0 for x in d), "favour_b": sum(x < 0 for x in d),
                    "p_ttest": pvalue, "degenerate_pairs": skipped,
                    "diffs": " ".join(f"{s}:{x:+.2f}" for s, x in zip(seeds, d, strict=True)),
                })  # fmt: skip
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)  # the columns also when no seed is paired yet


def _tasks(df: pd.DataFrame) -> list[str]:
    present = set(df.task)
    return [t for t in TASK_ORDER if t in present] + sorted(present - set(TASK_ORDER))


def _seed_values(p: pd.DataFrame, var: str, task: str, tasks: list[str]) -> dict[int, tuple[float, bool]]:
    """seed -> (value, degenerate); for ``avg`` the mean over every task (seeds lacking a task left out)."""
    g = p[p.variant == var]
    if task != AVG:
        return {int(r.seed): (r.value, bool(r.degenerate)) for r in g[g.task == task].itertuples()}
    out = {}
    for seed, s in g.groupby("seed"):
        if set(s.task) >= set(tasks):
            out[int(seed)] = (statistics.fmean(s[s.task.isin(tasks)].value), False)
    return out


def _pairs(p, a, b, task, tasks):
    """(seeds, a's values, b's values, pairs left out as degenerate) over the seeds both variants ran,
    or None when they share none."""
    va, vb = _seed_values(p, a, task, tasks), _seed_values(p, b, task, tasks)
    common = sorted(set(va) & set(vb))
    if not common:
        return None
    keep = [s for s in common if not (va[s][1] or vb[s][1])]
    return keep, [va[s][0] for s in keep], [vb[s][0] for s in keep], len(common) - len(keep)


# -- markdown ------------------------------------------------------------------------------------------
def _f(x, digits=2, signed=False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _cell(r) -> str:
    """A summary row as a table cell: ``mean ± std (n)``, ``+k`` degenerate runs left out."""
    cell = f"{_f(r['mean'])} ± {_f(r['std'])} ({r['n']})" if r["n"] else "—"
    return cell + (f" +{r['degenerate']}" if r["degenerate"] else "")


def _paired_cells(r) -> list[str]:
    """A paired row as three table cells: Δ mean ± std, favour a/b, p."""
    return [
        f"{_f(r.mean_diff, signed=True)} ± {_f(r.std_diff)}",
        f"{r.favour_a}/{r.favour_b}",
        _f(r.p_ttest, 3),
    ]


def summary_md(s: pd.DataFrame, df: pd.DataFrame) -> str:
    tasks = _tasks(df)
    metrics = {t: df[df.task == t].metric.iloc[0].split("/")[-1] for t in tasks}
    lines = [
        "# MiniLM study, stage 3: mean ± std over seeds (n); +k: runs at a constant predictor, not averaged",
        "",
        "Avg: the mean of the task means (where the method has every task).",
        "",
        "Where the runs trained: " + devices_line(df) + ".",
        "",
    ]
    for protocol in PROTOCOLS:
        ps = s[s.protocol == protocol]
        if ps.empty:
            continue
        lines += [f"## Protocol `{protocol}`", "",
                  "| method | " + " | ".join(f"{t} ({metrics[t]})" for t in tasks) + " | Avg |",
                  "|---" * (len(tasks) + 2) + "|"]  # fmt: skip
        for var in [v for v in VARIANTS if v in set(ps.variant)]:
            cells = []
            for task in [*tasks, AVG]:
                r = ps[(ps.variant == var) & (ps.task == task)].iloc[0]
                if task == AVG:
                    cells.append(_f(r["mean"]))
                    continue
                cells.append(_cell(r))
            lines.append(f"| {VARIANTS[var]} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def tasks_md(s: pd.DataFrame, pr: pd.DataFrame, df: pd.DataFrame, lrs: dict[tuple[str, str], str]) -> str:
    """One block per task, as the README quotes it: the four methods under every protocol (with each
    method's learning rate) and the three seed-paired comparisons under ``last`` and ``common``."""
    lines = ["# MiniLM study, stage 3: per task", ""]
    for task in _tasks(df):
        t = df[(df.task == task) & (df.protocol == PROTOCOLS[0])]
        counts = t.device.value_counts().sort_index()
        where = ", ".join(f"{n} on the {dev.upper()}" for dev, n in counts.items())
        lines += [f"## {task}: {len(t)} runs ({where}); dev {t.metric.iloc[0].split('/')[-1]}, mean ± std "
                  "over seeds (n), +k runs at a constant predictor", "",
                  "| method (lr) | `last` | `common` | `best` |", "|---|---|---|---|"]  # fmt: skip
        for var in [v for v in VARIANTS if v in set(t.variant)]:
            cells = []
            for protocol in PROTOCOLS:
                r = s[(s.protocol == protocol) & (s.variant == var) & (s.task == task)].iloc[0]
                cells.append(_cell(r))
            lines.append(f"| {VARIANTS[var]} ({lrs.get((task, var), '?')}) | " + " | ".join(cells) + " |")
        lines += ["", "| comparison | `last` Δ | favour | p | `common` Δ | favour | p |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for a, b in COMPARISONS:
            cells = []
            for protocol in ("last", "common"):
                q = pr[(pr.protocol == protocol) & (pr.comparison == f"{a} - {b}") & (pr.task == task)]
                if q.empty:
                    cells += ["—", "—", "—"]
                    continue
                cells += _paired_cells(q.iloc[0])
            lines.append(f"| {VARIANTS[a]} − {VARIANTS[b]} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _average_md(s, pr)
    return "\n".join(lines)


def _average_md(s: pd.DataFrame, pr: pd.DataFrame) -> list[str]:
    """The task average: each method's mean of task means, and the seed-paired differences of the
    per-seed task averages (only once some seed has every task for both methods)."""
    avg = pr[pr.task == AVG]
    if avg.empty:
        return []
    lines = ["## Average over the tasks", "", "| method | `last` | `common` | `best` |", "|---|---|---|---|"]
    for var in [v for v in VARIANTS if v in set(s.variant)]:
        means = [
            s[(s.protocol == p) & (s.variant == var) & (s.task == AVG)]["mean"].iloc[0] for p in PROTOCOLS
        ]
        lines.append(f"| {VARIANTS[var]} | " + " | ".join(_f(m) for m in means) + " |")
    lines += ["", "| comparison | seeds | `last` Δ | favour | p | `common` Δ | favour | p |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for a, b in COMPARISONS:
        q = {r.protocol: r for r in avg[avg.comparison == f"{a} - {b}"].itertuples()}
        if "last" not in q:
            continue
        cells = [str(q["last"].n)]
        for protocol in ("last", "common"):
            r = q.get(protocol)
            cells += ["—"] * 3 if r is None else _paired_cells(r)
        lines.append(f"| {VARIANTS[a]} − {VARIANTS[b]} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def learning_rates(runs: list[RunRecord]) -> dict[tuple[str, str], str]:
    """(task, variant) -> the learning rate(s) its runs trained at, e.g. ``1e-3`` (``?`` where unrecorded)."""
    seen: dict[tuple[str, str], set] = {}
    for r in runs:
        seen.setdefault((r.task, r.variant), set()).add(r.cfg("trainer.lr"))

    def fmt(lr) -> str:
        return "?" if lr is None else f"{float(lr):.0e}".replace("e-0", "e-")

    return {k: ", ".join(sorted({fmt(lr) for lr in v})) for k, v in seen.items()}


def devices_line(df: pd.DataFrame) -> str:
    """Per task, how many runs trained on each device, e.g. ``cola: 20 gpu; mrpc: 15 cpu, 5 gpu``."""
    runs = df[df.protocol == df.protocol.iloc[0]]
    parts = []
    for task in _tasks(df):
        counts = runs[runs.task == task].device.value_counts().sort_index()
        parts.append(f"{task}: " + ", ".join(f"{n} {dev}" for dev, n in counts.items()))
    return "; ".join(parts)


def cost(runs: list[RunRecord]) -> pd.DataFrame:
    """Per task, variant and device: runs, the median minutes of one run and the run-hours summed
    (result.json timing: setup + training + evaluation, summed over a resumed run's segments)."""
    rows = [{"task": r.task, "variant": r.variant, "device": r.device or "unknown",
             "s": sum(float(r.timing.get(k) or 0.0) for k in ("setup_s", "train_s", "eval_s"))}
            for r in runs]  # fmt: skip
    columns = ["task", "variant", "device", "runs", "median_min", "run_h"]
    if not rows:
        return pd.DataFrame(columns=columns)
    rank = {k: i for i, k in enumerate([*TASK_ORDER, *VARIANTS])}  # the tables' order; others after
    rows.sort(key=lambda x: (rank.get(x["task"], 99), rank.get(x["variant"], 99), x["device"]))
    g = pd.DataFrame(rows).groupby(["task", "variant", "device"], sort=False).s
    out = pd.DataFrame({"runs": g.size(), "median_min": g.median() / 60, "run_h": g.sum() / 3600})
    return out.reset_index()[columns]


def cost_md(c: pd.DataFrame) -> str:
    if c.empty:
        return ""
    lines = ["## Cost", "",
             "One run's time in minutes (median) and the run-hours summed, from result.json timing (setup, "
             "training and evaluation). A CPU run used one thread, two at a time on a 2-core machine.", "",
             "| task | method | device | runs | min per run | run-hours |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in c.itertuples():
        lines.append(f"| {r.task} | {VARIANTS.get(r.variant, r.variant)} | {r.device} | {r.runs} | "
                     f"{r.median_min:.1f} | {r.run_h:.2f} |")  # fmt: skip
    for dev, d in c.groupby("device"):
        lines.append(f"| all | all | {dev} | {d.runs.sum()} | — | {d.run_h.sum():.2f} |")
    return "\n".join(lines) + "\n"


def paired_md(pr: pd.DataFrame) -> str:
    lines = [
        "# MiniLM study, stage 3: seed-paired differences",
        "",
        "Per task, the seeds at which both runs left the trivial predictor (pairs left out: `degenerate`); the",
        "average: per seed, the mean over the tasks (degenerate scores included). Δ = mean ± std of the differences; favour: seeds with",
        "Δ > 0 / Δ < 0; p: paired t-test (two-sided). Every seed's difference is listed as seed:Δ.",
        "",
    ]
    for protocol in PROTOCOLS:
        pp = pr[pr.protocol == protocol]
        if pp.empty:
            continue
        lines += [f"## Protocol `{protocol}`", "", "| comparison | task | n | Δ | favour | p | degenerate | seed:Δ |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in pp.itertuples():
            a, b = r.comparison.split(" - ")
            lines.append(
                f"| {VARIANTS[a]} − {VARIANTS[b]} | {'Avg' if r.task == AVG else r.task} | {r.n} | "
                + " | ".join(_paired_cells(r))
                + f" | {r.degenerate_pairs} | {r.diffs} |"
            )
        lines.append("")
    return "\n".join(lines)


def rank_map(runs: list[RunRecord], out: Path) -> bool:
    """ranks_mean: DynDoRA's final rank per (matrix, layer), mean over seeds, one panel per task."""
    from scripts.figures import heatmap, mean_grid, plt, rank_grid, save

    grids: dict[str, list] = {}
    for r in runs:
        if r.variant == "dora" and (g := rank_grid(r)) is not None:
            grids.setdefault(r.task, []).append(g)
    if not grids:
        return False
    tasks = [t for t in TASK_ORDER if t in grids] + sorted(set(grids) - set(TASK_ORDER))
    vmax = max(float(g.values.max()) for gs in grids.values() for g in gs)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 2.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        image = heatmap(ax, mean_grid(grids[task]), f"{task}: mean of {len(grids[task])} seeds", vmax=vmax)
        ax.set_xlabel("layer")
    fig.colorbar(image, ax=axes[0].tolist(), label="active components")
    save(fig, out, "ranks_mean")
    return True


def replaced(runs: list[RunRecord], twins: list[RunRecord]) -> list[RunRecord]:
    """``runs`` with each run that has a twin (same task, method variant and seed) replaced by the twin,
    e.g. the CPU twin of a run that trained on the GPU; a twin with no counterpart is an error."""

    def key(r: RunRecord) -> tuple:
        return r.task, r.variant, r.seed

    by_key = {key(r): r for r in twins}
    orphans = sorted(set(by_key) - {key(r) for r in runs})
    if orphans:
        raise SystemExit(
            "error: --replace has runs with no counterpart in --runs (task/method/seed): "
            + ", ".join(f"{t}/{m}/seed {s}" for t, m, s in orphans)
        )
    return [by_key.get(key(r), r) for r in runs]


def _rank_agreement(a: RunRecord, b: RunRecord) -> str:
    """How alike two runs' final rank patterns are: equal ranks on k of n matrices, and Pearson r (the
    statistic allocation.md averages over pairs of seeds)."""
    if not (a.rank_pattern and b.rank_pattern):
        return "—"
    x = patterns([a, b])
    r = mean_pairwise_r(x) if (x.std(1) > 0).all() else None
    return f"{int((x[0] == x[1]).sum())} of {x.shape[1]}, r {_f(r)}"


def twins_md(runs: list[RunRecord], twins: list[RunRecord]) -> str:
    """Each run next to its twin (same task, method variant and seed, e.g. a GPU run and its CPU rerun):
    the headline under every protocol on both, and how alike their final rank patterns are."""

    def values(rs: list[RunRecord]) -> pd.Series:
        return scores(rs).set_index(["task", "variant", "seed", "protocol"]).value

    ours, theirs = values(runs), values(replaced(runs, twins))
    by_key = {(r.task, r.variant, r.seed): r for r in runs}
    twin_of = {(t.task, t.variant, t.seed): t for t in twins}
    lines = [
        "# Runs and their twins",
        "",
        "Each run of the table next to its twin, the same configuration and seed trained again (here: on the"
        " CPU, where the run trained on the GPU). Headline score under each protocol, run → twin; ranks: how"
        " many adapted matrices end at the same rank in both, and the Pearson r of the two final patterns.",
        "",
        "| task | method | seed | devices | " + " | ".join(f"`{p}`" for p in PROTOCOLS) + " | ranks |",
        "|---|---|---|---|" + "---|" * len(PROTOCOLS) + "---|",
    ]
    for key in sorted(twin_of, key=lambda k: (_task_key(k[0]), k[1], k[2])):
        cells = [f"{_f(ours.get((*key, p)))} → {_f(theirs.get((*key, p)))}" for p in PROTOCOLS]
        a, b = by_key[key], twin_of[key]
        lines.append(
            f"| {key[0]} | {VARIANTS.get(key[1], key[1])} | {key[2]} | {a.device or '?'} → {b.device or '?'} | "
            + " | ".join(cells)
            + f" | {_rank_agreement(a, b)} |"
        )
    return "\n".join(lines) + "\n"


def table(runs_dir: Path, out: Path, replace: Path | None = None) -> int:
    s = scan(runs_dir)
    if not s.ok:
        raise SystemExit(f"error: no finished runs below {runs_dir}")
    runs = s.ok
    twins_report = None
    if replace is not None:
        twins = scan(replace).ok
        if not twins:
            raise SystemExit(f"error: no finished runs below {replace} (--replace)")
        twins_report = twins_md(runs, twins)
        runs = replaced(runs, twins)
    df = scores(runs)
    summ, pr = summary(df), paired(df)
    out.mkdir(parents=True, exist_ok=True)
    summ.to_csv(out / "study.csv", index=False)
    pr.to_csv(out / "paired.csv", index=False)
    spent = cost(runs)
    spent.to_csv(out / "cost.csv", index=False)
    (out / "study.md").write_text(summary_md(summ, df) + "\n" + cost_md(spent))
    (out / "paired.md").write_text(paired_md(pr))
    (out / "tasks.md").write_text(tasks_md(summ, pr, df, learning_rates(runs)))
    rank_map(runs, out)
    if twins_report is not None:
        (out / "twins.md").write_text(twins_report)
    print(f"{len(runs)} runs ({len(s.failed)} failed, {len(s.incomplete)} incomplete) -> {out}")
    return 0


# -- stage 2 ------------------------------------------------------------------------------------------
def lr_rows(tuned: Path, model: str = "minilm") -> list[dict]:
    rows = []
    for path in sorted(tuned.glob(f"{model}_*.yaml")):
        t = yaml.safe_load(path.read_text())
        _, method, task = path.stem.split("_", 2)
        for g in t["grid"]:
            rows.append({"method": method, "task": task, "metric": t["metric"], "lr": g["lr"],
                         "score": g["mean"], "n": g["n"], "failed": g["failed"], "degenerate": g["degenerate"],
                         "chosen": math.isclose(g["lr"], t["lr"]), "edge_of_grid": t["edge_of_grid"]})  # fmt: skip
    return rows


def lr_md(rows: list[dict]) -> str:
    lines = [
        "# MiniLM study, stage 2: learning rates (seed 0, stage 3's schedule, last evaluation)",
        "",
        "| method | task | metric | lr → score (**chosen**) | choice at the grid's edge |",
        "|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate(("dora", "lora", "adalora"))}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["task"]), []).append(r)
    for (method, task), g in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][0], 9), _task_key(kv[0][1]))
    ):
        cells = []
        for r in sorted(g, key=lambda r: r["lr"]):
            text = f"{r['lr']:g} → " + ("failed" if r["failed"] else _f(r["score"]))
            text += " (trivial)" if r["degenerate"] else ""
            cells.append(f"**{text}**" if r["chosen"] else text)
        lines.append(f"| {VARIANTS.get(method, method)} | {task} | {g[0]['metric'].split('/')[-1]} | "
                     f"{'; '.join(cells)} | {'yes' if g[0]['edge_of_grid'] else 'no'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _task_key(task: str) -> int:
    return TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER)


def lr(tuned: Path, out: Path) -> int:
    rows = lr_rows(tuned)
    if not rows:
        raise SystemExit(f"error: no configs/tuned files for minilm in {tuned}")
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "lr.csv", index=False)
    (out / "lr.md").write_text(lr_md(rows))
    print(f"{len(rows)} rates -> {out / 'lr.md'}")
    return 0


def study_cost(root: Path) -> int:
    """cost.md / cost.csv in ``root``: per stage folder with runs/ and per device, runs and run-hours."""
    rows = []
    for runs_dir in sorted(root.glob("*/runs")):
        c = cost(scan(runs_dir).ok)
        for dev, d in c.groupby("device", sort=True):
            rows.append({"stage": runs_dir.parent.name, "device": dev, "runs": int(d.runs.sum()),
                         "run_h": float(d.run_h.sum())})  # fmt: skip
    if not rows:
        raise SystemExit(f"error: no finished runs in any {root}/<stage>/runs")
    df = pd.DataFrame(rows)
    df.to_csv(root / "cost.csv", index=False)
    lines = ["# What the MiniLM study cost", "",
             "Finished runs and their run-hours (result.json timing: setup, training and evaluation) per stage "
             "and device. A CPU run used one thread, two at a time on a 2-core machine, so CPU wall-clock is "
             "about half the CPU run-hours; runs killed before they finished are not counted.", "",
             "| stage | device | runs | run-hours |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r.stage} | {r.device} | {r.runs} | {r.run_h:.2f} |" for r in df.itertuples()]
    for dev, d in df.groupby("device"):
        lines.append(f"| all | {dev} | {d.runs.sum()} | {d.run_h.sum():.2f} |")
    (root / "cost.md").write_text("\n".join(lines) + "\n")
    print(f"{int(df.runs.sum())} runs -> {root / 'cost.md'}")
    return 0


_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[,.]\d+\]")
LOG_GAP = dt.timedelta(minutes=15)


def log_spans(path: Path, gap: dt.timedelta = LOG_GAP) -> list[tuple[dt.datetime, dt.datetime]]:
    """A run.log's active spans: its timestamped lines, split where two lines are ``gap`` or more apart (a
    run killed and resumed later logs two spans). A run logs an evaluation at least every epoch, well within
    the gap."""
    spans: list[list[dt.datetime]] = []
    for line in path.read_text(errors="replace").splitlines():
        m = _LOG_TIME.match(line)
        if not m:
            continue
        t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
        if spans and t - spans[-1][1] < gap:
            spans[-1][1] = t
        else:
            spans.append([t, t])
    return [(a, b) for a, b in spans]


def union_hours(spans: list[tuple[dt.datetime, dt.datetime]]) -> float:
    merged: list[list[dt.datetime]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return sum((b - a).total_seconds() for a, b in merged) / 3600


def wallclock(folders: list[Path]) -> int:
    if not folders:
        raise SystemExit(
            "error: no runs folder given (the study's are STUDY_RUNS/pilot, stage1, stage2, stage3, twin)"
        )
    every = []
    for folder in folders:
        logs = sorted(folder.glob("*/run.log"))
        if not logs:
            raise SystemExit(
                f"error: no <run>/run.log in {folder} (give a live runs folder, e.g. runs/study/stage3)"
            )
        spans = [s for log in logs for s in log_spans(log)]
        every += spans
        print(f"{folder}: {len(logs)} runs, {union_hours(spans):.2f} h wall-clock with a run training")
    if not every:
        raise SystemExit("error: no timestamped line in any run.log of " + ", ".join(map(str, folders)))
    print(f"all: {union_hours(every):.2f} h wall-clock, {min(a for a, _ in every):%Y-%m-%d %H:%M} .. "
          f"{max(b for _, b in every):%Y-%m-%d %H:%M}")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="stage 3: per-task table, paired differences, mean rank map")
    t.add_argument("--runs", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--replace", type=Path, help="runs that replace their counterparts in --runs (CPU twins)")
    s = sub.add_parser("lr", help="stage 2: the learning-rate evidence from the tuned files")
    s.add_argument("--tuned", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("cost", help="the whole study: runs and run-hours per stage and device")
    c.add_argument("--root", type=Path, required=True)
    w = sub.add_parser("wallclock", help="the wall-clock with at least one run training, from run.log files")
    w.add_argument("folders", type=Path, nargs="*")
    a = p.parse_args(argv)
    if a.cmd == "wallclock":
        return wallclock(a.folders)
    if a.cmd == "cost":
        return study_cost(a.root)
    return table(a.runs, a.out, a.replace) if a.cmd == "table" else lr(a.tuned, a.out)


if __name__ == "__main__":
    sys.exit(main())
