"""The paper's tables from a folder of runs: python scripts/make_tables.py --runs RUNS_DIR --out OUT_DIR

A pure function of the folder. Every ``result.json`` below RUNS_DIR (any depth) with status "ok" is a
run; it lands in a table cell when its model, task, method, budget and DynDoRA knobs match that cell
(so one run can serve two tables: Table 5 "with DEM" is Table 2's DynDoRA 1.33M). Folders with
``failure.json``, or with run bookkeeping (``.hydra``, ``checkpoints``, ...) but no result, are listed
as failed / incomplete and never counted. A cell with no runs stays empty.

Writes, for every paper table with at least one run: ``tableN.md``, ``tableN.csv``, ``tableN.tex``
(ours as mean±std (n), the paper's number beside it, the difference; Avg as the paper computes it),
one tidy ``cells.csv`` (both protocols) and ``runs.md`` (what was used, failed, incomplete, mixed).
Protocols: ``best``, the paper's (result["best"]: the best evaluation once the run's own allocation is
final, so each method has its own eligible set); ``last``, the final evaluation (result["metrics"]);
``common``, the best evaluation at or after one step shared by every run of a table column (the latest
step at which any of them fixed its allocation), so that no method gets more chances than another.

Runs whose headline equals a constant predictor's (MCC 0, majority- or minority-class accuracy) are
degenerate: counted beside each cell ("+k trivial"), never averaged in. Runs of one cell must share their
configuration beyond the seed (data, schedule, knobs); the largest such group fills the cell and the
others are listed in runs.md as excluded. ``allocation.md`` / ``allocation.csv`` report, for the adaptive
methods, how reproducible the final rank pattern is across seeds (allocation.py).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dora.records import MNLI_AVG, RunRecord, Scan, scan
from scripts import allocation

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "results" / "paper"
PAPER_NAMES = {"full": "Full FT", "bitfit": "BitFit", "houlsby": "H-Adapter", "pfeiffer": "P-Adapter"}
PAPER_NAMES |= {"lora": "LoRA", "adalora": "AdaLoRA", "dora": "DoRA"}  # as results/paper/*.csv print them
# our row titles: the paper calls its method "DoRA"; we say DynDoRA (not PEFT's weight-decomposed DoRA)
ROW_NAMES = PAPER_NAMES | {"dora": "DynDoRA"}
MODEL_TITLES = {"roberta_base": "RoBERTa-base", "roberta_large": "RoBERTa-large", "bart_base": "BART-base"}
MODEL_TITLES |= {"bart_large": "BART-large", "minilm": "all-MiniLM-L6-v2 (MiniLM)"}
PROTOCOLS = ("best", "last", "common")
# accuracy of each constant prediction on the official GLUE dev sets (checked against shared/data by a
# test): how runs written before result.json carried "constant_scores" are recognised as degenerate
OFFICIAL_DEV_CONSTANTS = {
    "rte": (52.7075812274, 47.2924187726),
    "mrpc": (68.3823529412, 31.6176470588),
    "sst2": (50.9174311927, 49.0825688073),
    "cola": (69.1275167785, 30.8724832215),
}
ETA = "eta"  # knob value placeholder: paper Table 8's eta for the run's task
CELL_COLUMNS = [
    "table",
    "task",
    "method",
    "budget",
    "metric",
    "protocol",
    "n",
    "mean",
    "std",
    "median",
    "degenerate",
    "paper",
]


# -- table specifications -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    task: str
    metric: str  # "<split>/<metric>" in result.json, or MNLI_AVG
    paper_col: str  # column of results/paper/tableN.csv, and of our tableN.csv
    title: str  # header in tableN.md / .tex


@dataclass(frozen=True)
class Row:
    label: str  # "method" in cells.csv: the method, plus the varied knob for ablation rows
    method: str
    budget: str | None  # result["budget"]: low | high | None (full, bitfit)
    knobs: tuple = ()  # ((config key, value or ETA), ...) the run's config must carry
    title: str = ""  # row name as the paper prints it


@dataclass
class Table:
    name: str
    caption: str  # "{model}" is replaced by the backbone the cells hold
    model: str  # the paper's backbone; --model replaces it
    columns: list[Column]
    rows: list[Row]
    paper_key: str  # first column of the paper CSV (row names, in our row order)
    avg: bool = False  # Avg column = mean of the task columns (Table 2)


DORA_DEFAULT = (("method.init_ratio", 1.5), ("method.dem_coef", ETA))  # Table 8 knobs, b(0)/b(T) = 1.5


def _rows(methods: list[str], budgets=("high", "low")) -> list[Row]:
    """Budgeted rows in the paper's order: every method at 1.33M, then every method at 0.33M."""
    return [
        Row(m, m, b, DORA_DEFAULT if m == "dora" else (), f"{ROW_NAMES[m]} ({b})")
        for b in budgets
        for m in methods
    ]


def _unbudgeted(*methods: str) -> list[Row]:
    return [Row(m, m, None, (), ROW_NAMES[m]) for m in methods]


GLUE = [
    Column("rte", "dev/accuracy", "RTE_acc", "RTE"),
    Column("mrpc", "dev/accuracy", "MRPC_acc", "MRPC"),
    Column("stsb", "dev/pearson", "STSB_pearson", "STS-B"),
    Column("cola", "dev/mcc", "CoLA_mcc", "CoLA"),
    Column("sst2", "dev/accuracy", "SST2_acc", "SST-2"),
    Column("qnli", "dev/accuracy", "QNLI_acc", "QNLI"),
    Column("qqp", "dev/accuracy", "QQP_acc", "QQP"),
    Column("mnli", MNLI_AVG, "MNLI_acc_avg_m_mm", "MNLI (m+mm)/2"),
]
ALL_PEFT = ["houlsby", "pfeiffer", "lora", "adalora", "dora"]
TABLES = [
    Table("table2", "{model} on GLUE (dev)", "roberta_base", GLUE,
          _unbudgeted("full", "bitfit") + _rows(ALL_PEFT), "method", avg=True),
    Table("table3", "{model} on SQuAD (dev, EM / F1)", "roberta_base",
          [Column(t, f"dev/{m}", f"{t}_{c}", f"{name} {c.upper()}")
           for t, name in (("squad_v1", "SQuAD v1.1"), ("squad_v2", "SQuAD v2.0"))
           for m, c in (("exact_match", "em"), ("f1", "f1"))],
          _unbudgeted("full", "bitfit") + _rows(ALL_PEFT), "method"),
    Table("table4", "{model} on XSum (dev, ROUGE-1/2/L)", "bart_base",
          [Column("xsum", f"dev/{m}", m, f"XSum R-{m[5:]}") for m in ("rouge1", "rouge2", "rougeL")],
          _unbudgeted("full") + _rows(["lora", "adalora", "dora"]), "method"),
    Table("table5", "Effect of DEM (DynDoRA 1.33M, {model})", "roberta_base",
          [GLUE[2], GLUE[3], GLUE[4]],
          [Row("dora", "dora", "high", DORA_DEFAULT, "with DEM"),
           Row("dora eta=0", "dora", "high", (("method.init_ratio", 1.5), ("method.dem_coef", 0.0)),
               "without DEM (eta = 0)")], "setting"),
    Table("table6", "Initial budget b(0) at b(T) = 2 (DynDoRA, {model})", "roberta_base",
          [GLUE[1], GLUE[2], GLUE[4]],
          [Row(f"dora b0={b0}", "dora", "low", (("method.init_ratio", b0 / 2), ("method.dem_coef", ETA)),
               f"b(0) = {b0}") for b0 in (2, 3, 4, 6, 8)], "initial_budget"),
]  # fmt: skip


# -- reading the paper's numbers ----------------------------------------------------------------------
def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def paper_eta() -> dict[str, float]:
    """Table 8's DEM coefficient per task (the recipes' default)."""
    names = {"RTE": "rte", "MRPC": "mrpc", "STS-B": "stsb", "CoLA": "cola", "SST-2": "sst2"}
    names |= {"QNLI": "qnli", "QQP": "qqp", "MNLI": "mnli"}
    names |= {"SQuAD_v1": "squad_v1", "SQuAD_v2": "squad_v2", "XSum": "xsum"}
    return {names[r["corpus"]]: float(r["reg_coef_eta"]) for r in read_csv(PAPER / "table8.csv")}


def paper_rows(table: Table) -> list[dict]:
    """The paper CSV's rows, aligned with ``table.rows`` (checked by method name where there is one)."""
    rows = read_csv(PAPER / f"{table.name}.csv")
    assert len(rows) == len(table.rows), f"{table.name}: {len(rows)} paper rows vs {len(table.rows)}"
    for ours, theirs in zip(table.rows, rows, strict=True):
        if table.paper_key == "method":
            assert theirs["method"] == PAPER_NAMES[ours.method], (table.name, ours, theirs)
    return rows


# -- reading runs (dora.records: scan, RunRecord) ------------------------------------------------------
def matches(run: RunRecord, row: Row, task: str, model: str, eta: dict) -> bool:
    if (run.model, run.task, run.method) != (model, task, row.method):
        return False
    if run.budget != row.budget:
        return False
    for key, want in row.knobs:
        want, have = (eta.get(task) if want == ETA else want), run.cfg(key)
        if want is None or have is None or not math.isclose(float(have), float(want)):
            return False
    return True


def is_degenerate(run: RunRecord, metric: str, v: float) -> bool:
    """The value equals a constant predictor's: result.json's constant_scores (or its best, trivial);
    for older runs, 0 for correlations and the official dev sets' class shares for accuracy."""
    name = metric.split("/")[-1]
    constants = (run.constant_scores or {}).get(metric)
    if constants is None and metric in (run.trivial or {}):
        constants = [run.trivial[metric]]
    if constants is None:
        if name in ("mcc", "pearson", "spearman"):
            constants = [0.0]
        elif name == "accuracy" and run.cfg("task.splits.dev") in ("dev", None):
            constants = OFFICIAL_DEV_CONSTANTS.get(run.task, ())
        else:
            constants = ()
    return any(abs(v - c) < 1e-6 for c in constants)


# -- aggregation --------------------------------------------------------------------------------------
def stats(values: list[float], degenerate: int = 0) -> dict:
    """Over the runs that left the trivial predictor; ``degenerate`` counts those that did not."""
    n = len(values)
    return {
        "n": n,
        "mean": statistics.fmean(values) if n else None,
        "std": statistics.stdev(values) if n > 1 else None,  # one seed: no spread to report
        "median": statistics.median(values) if n else None,
        "degenerate": degenerate,
    }


@dataclass
class Cell:
    table: str
    row: Row
    column: Column | None  # None: the Avg column
    protocol: str
    stats: dict
    paper: float | None
    runs: list[RunRecord]
    excluded: list[RunRecord] = field(default_factory=list)  # same cell, another configuration


def one_configuration(runs: list[RunRecord]) -> tuple[list[RunRecord], list[RunRecord]]:
    """(the largest group of runs sharing one configuration beyond the seed, the others): runs of another
    data set, schedule or knob never share a cell."""
    groups: dict[str, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(r.signature(), []).append(r)
    if len(groups) < 2:
        return runs, []
    keep = max(sorted(groups), key=lambda k: len(groups[k]))
    return groups[keep], [r for k, g in groups.items() if k != keep for r in g]


def cell_runs(table: Table, runs: list[RunRecord], model: str, eta: dict) -> dict:
    """(row index, column index) -> (runs used, runs excluded)."""
    out = {}
    for i, row in enumerate(table.rows):
        for j, col in enumerate(table.columns):
            out[i, j] = one_configuration([r for r in runs if matches(r, row, col.task, model, eta)])
    return out


def table_cells(table: Table, runs: list[RunRecord], model: str, protocol: str, eta: dict) -> list[Cell]:
    cells, chosen = [], cell_runs(table, runs, model, eta)
    # common protocol: one eligibility step per column, the latest at which any of its runs fixed its allocation
    common_from = {
        j: max(
            (r.allocation_final_step() for i in range(len(table.rows)) for r in chosen[i, j][0]), default=0
        )
        for j in range(len(table.columns))
    }
    for i, (row, paper) in enumerate(zip(table.rows, paper_rows(table), strict=True)):
        row_cells = []
        for j, col in enumerate(table.columns):
            used, excluded = chosen[i, j]
            pairs = [(r, v) for r in used if (v := r.value(col.metric, protocol, common_from[j])) is not None]
            vals = [v for r, v in pairs if not is_degenerate(r, col.metric, v)]
            cell = Cell(table.name, row, col, protocol, stats(vals, len(pairs) - len(vals)),
                        _num(paper[col.paper_col]), used, excluded)  # fmt: skip
            row_cells.append(cell)
        if table.avg:
            row_cells.append(_avg_cell(table, row, protocol, row_cells, _num(paper["Avg"])))
        cells += row_cells
    return cells


def _avg_cell(table: Table, row: Row, protocol: str, cells: list[Cell], paper: float | None) -> Cell:
    """The paper's Avg: the mean of the row's task columns (present only when every column is)."""
    means = [c.stats["mean"] for c in cells]
    s = {"n": min(c.stats["n"] for c in cells), "mean": None, "std": None, "median": None}
    s["degenerate"] = sum(c.stats["degenerate"] for c in cells)
    if None not in means:
        s["mean"] = statistics.fmean(means)
    return Cell(table.name, row, None, protocol, s, paper, [])


def _num(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def tidy(cells: list[Cell]) -> list[dict]:
    """cells.csv rows (CELL_COLUMNS)."""
    return [
        {
            "table": c.table,
            "task": c.column.task if c.column else "avg",
            "method": c.row.label,
            "budget": c.row.budget or "",
            "metric": c.column.metric if c.column else "avg",
            "protocol": c.protocol,
            **c.stats,
            "paper": c.paper,
        }
        for c in cells
    ]


# -- layout: md, csv, tex -----------------------------------------------------------------------------
def fmt(x: float | None, digits: int = 2, signed: bool = False) -> str:
    if x is None:
        return ""
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def diff(c: Cell) -> float | None:
    return None if c.stats["mean"] is None or c.paper is None else c.stats["mean"] - c.paper


def ours(c: Cell) -> str:
    trivial = f" +{c.stats['degenerate']} trivial" if c.stats["degenerate"] and c.column else ""
    if c.stats["mean"] is None:
        return "—" + trivial
    if c.column is None:  # Avg: a mean of means
        return fmt(c.stats["mean"])
    spread = f"±{fmt(c.stats['std'])}" if c.stats["std"] is not None else ""
    return f"{fmt(c.stats['mean'])}{spread} ({c.stats['n']}){trivial}"


def header(table: Table, csv_names: bool = False) -> list[str]:
    names = [c.paper_col if csv_names else c.title for c in table.columns]
    return names + (["Avg"] if table.avg else [])


def by_row(table: Table, cells: list[Cell]) -> list[tuple[Row, list[Cell]]]:
    width = len(table.columns) + table.avg
    return [(row, cells[i * width : (i + 1) * width]) for i, row in enumerate(table.rows)]


def params_m(cells: list[Cell]) -> str:
    """Our trainable budget (paper convention, result["params"]["budget"]) in millions."""
    counts = [r.params["budget"] for c in cells for r in c.runs if r.params]
    if not counts:
        return ""
    mean = statistics.fmean(counts)
    return f"{mean / 1e6:.2f}M" if mean >= 5e3 else f"{mean:.0f}"  # tiny test models: a plain count


PROTOCOL_NOTES = {
    "best": "the paper's: best evaluation once each run's own allocation is final",
    "last": "the final evaluation",
    "common": "best evaluation at or after one step shared by the column's runs (the latest final allocation)",
}


def caption(table: Table, model: str) -> str:
    return table.caption.format(model=MODEL_TITLES.get(model, model))


def write_md(
    table: Table, cells: list[Cell], protocol: str, path: Path, footer: str = "", model: str = ""
) -> None:
    lines = [
        f"# {table.name}: {caption(table, model or table.model)}",
        "",
        f"Ours: mean±std (n seeds) over runs that left the trivial predictor (+k trivial: runs at a constant "
        f"predictor's score, not averaged in); protocol `{protocol}` ({PROTOCOL_NOTES[protocol]}); below it "
        "the paper's number (RoBERTa-base / BART-base, its Table 8 schedules) and ours − paper.",
        "",
        "| Method | Params (ours / paper) | " + " | ".join(header(table)) + " |",
        "|---|---|" + "---|" * len(header(table)),
    ]
    papers = paper_rows(table)
    for (row, row_cells), paper in zip(by_row(table, cells), papers, strict=True):
        pp = paper.get("params", "")
        texts = [
            f"{ours(c)}<br>paper {fmt(c.paper)}, Δ {fmt(diff(c), signed=True) or '—'}" for c in row_cells
        ]
        lines.append(
            f"| {row.title} | {params_m(row_cells) or '—'} / {pp or '—'} | " + " | ".join(texts) + " |"
        )
    path.write_text("\n".join([*lines, "", footer]) + "\n")


def write_wide_csv(table: Table, cells: list[Cell], path: Path) -> None:
    names = header(table, csv_names=True)
    fields = ["method", "budget", "row", "params_ours", "params_paper"]
    fields += [f"{n}{s}" for n in names for s in ("", "_std", "_n", "_paper", "_diff")]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for (row, row_cells), paper in zip(by_row(table, cells), paper_rows(table), strict=True):
            out = {"method": row.label, "budget": row.budget or "", "row": row.title}
            out |= {"params_ours": params_m(row_cells), "params_paper": paper.get("params", "")}
            for n, c in zip(names, row_cells, strict=True):
                out |= {n: c.stats["mean"], f"{n}_std": c.stats["std"], f"{n}_n": c.stats["n"]}
                out |= {f"{n}_paper": c.paper, f"{n}_diff": diff(c)}
            w.writerow(out)


def write_tex(table: Table, cells: list[Cell], protocol: str, path: Path, model: str = "") -> None:
    """booktabs tabular; each cell: ours mean$\\pm$std (n) over the paper's number and the difference."""
    names = [n.replace("_", r"\_") for n in header(table)]
    lines = [
        f"% {table.name}: {caption(table, model or table.model)}; protocol {protocol}. Needs \\usepackage{{booktabs}}.",
        r"\begin{tabular}{l" + "c" * len(names) + "}",
        r"\toprule",
        "Method & " + " & ".join(names) + r" \\",
        r"\midrule",
    ]
    for row, row_cells in by_row(table, cells):
        texts = [_tex_cell(c) for c in row_cells]
        lines.append(row.title.replace("_", r"\_") + " & " + " & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    path.write_text("\n".join(lines) + "\n")


def _tex_cell(c: Cell) -> str:
    top = ours(c).replace("±", r"$\pm$").replace("—", "--")
    bottom = f"{fmt(c.paper) or '--'} ({fmt(diff(c), signed=True) or '--'})"
    return rf"\shortstack{{{top}\\ \scriptsize {bottom}}}"


# -- the report and the command line ------------------------------------------------------------------
def warnings(cells: list[Cell]) -> list[str]:
    """Cells whose runs repeat a seed (counted), or that left out runs of another configuration."""
    out = []
    for c in cells:
        seeds = [r.seed for r in c.runs]
        where = f"{c.table} {c.row.label} {c.row.budget or ''} {c.column.task}"
        if len(set(seeds)) < len(seeds):
            out.append(f"{where}: repeated seeds {sorted(seeds)}")
        for r in c.excluded:
            out.append(
                f"{where}: excluded `{r.path}` (another configuration beyond the seed than the cell's "
                f"{len(c.runs)} runs: data, schedule or knobs)"
            )
    return out


def write_report(s: Scan, used: set[str], notes: list[str], path: Path) -> None:
    unused = [r for r in s.ok if r.path not in used]
    lines = [
        "# Runs behind these tables",
        "",
        f"- {len(s.ok)} completed runs, {len(used)} in at least one table cell, {len(unused)} in none "
        "(another model, task, method or knob setting)",
        f"- {len(s.failed)} failed, {len(s.incomplete)} incomplete (listed below, never counted)",
        "",
        "## Failed",
        *[f"- `{p}`: {why}" for p, why in s.failed],
        "",
        "## Incomplete (running, killed, or never started)",
        *[f"- `{p}`" for p in s.incomplete],
        "",
        "## Warnings",
        *[f"- {n}" for n in notes],
    ]
    path.write_text("\n".join(lines) + "\n")


def precision_note(runs: list[RunRecord]) -> str:
    """Which arithmetic the table's runs used (result.json ``precision``; older runs did not record it)."""
    counts: dict[str, int] = {}
    for r in {r.path: r for r in runs}.values():
        kind = (r.precision or {}).get("compute", "not recorded")
        counts[kind] = counts.get(kind, 0) + 1
    return "Arithmetic: " + ", ".join(f"{k} ({n} runs)" for k, n in sorted(counts.items())) + "."


def table_model(table: Table, runs: list[RunRecord], model: str | None) -> str:
    """The backbone a table counts: the one asked for, else the paper's when any of its runs exist, else
    the backbone with the most runs of the table's tasks and methods (said on stdout and in the title)."""
    if model:
        return model
    if any(r.model == table.model for r in runs):
        return table.model
    tasks, methods = {c.task for c in table.columns}, {r.method for r in table.rows}
    counts: dict[str, int] = {}
    for r in runs:
        if r.task in tasks and r.method in methods:
            counts[r.model] = counts.get(r.model, 0) + 1
    return max(sorted(counts), key=counts.get) if counts else table.model


def build(runs_dir: Path, out_dir: Path, model: str | None = None, protocol: str = "best") -> Scan:
    """Write every table with data, cells.csv, runs.md and the allocation diagnostics to ``out_dir``."""
    s, eta = scan(runs_dir), paper_eta()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, used, notes = [], set(), []
    for table in TABLES:
        backbone = table_model(table, s.ok, model)
        every = {p: table_cells(table, s.ok, backbone, p, eta) for p in PROTOCOLS}
        cells = every[protocol]
        if not any(c.stats["n"] + c.stats["degenerate"] for c in cells if c.column):
            continue
        if backbone != table.model:
            print(f"{table.name}: counting {backbone} runs (the paper's table is {table.model})")
        footer = (
            f"Failed runs: {len(s.failed)}, incomplete: {len(s.incomplete)} (not counted; see runs.md).\n\n"
        )
        footer += precision_note([r for c in cells for r in c.runs])
        write_md(table, cells, protocol, out_dir / f"{table.name}.md", footer, backbone)
        write_wide_csv(table, cells, out_dir / f"{table.name}.csv")
        write_tex(table, cells, protocol, out_dir / f"{table.name}.tex", backbone)
        rows += [row for p in PROTOCOLS for row in tidy(every[p])]
        used |= {r.path for c in cells for r in c.runs}
        notes += warnings([c for c in cells if c.column])
    with open(out_dir / "cells.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CELL_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    write_report(s, used, notes, out_dir / "runs.md")
    for row in allocation.write(s.ok, out_dir):
        print(
            f"allocation {row['model']} {row['task']} {row['method']}: {row['seeds']} seeds, mean pairwise r "
            f"{allocation.fmt(row['mean_r'])} (permutation p {allocation.fmt(row['p'], 3)}), "
            f"cos(B, B0) {allocation.fmt(row['b_cos_init'], 3)}"
        )
    return s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, required=True, help="folder of run folders (any depth)")
    p.add_argument("--out", type=Path, required=True, help="where the tables go")
    p.add_argument(
        "--model",
        default=None,
        help="count runs of this model (default: each table's paper backbone, else the one with most runs)",
    )
    p.add_argument("--protocol", choices=PROTOCOLS, default="best", help="protocol of tableN.*")
    a = p.parse_args(argv)
    if not a.runs.is_dir():
        print(f"error: --runs {a.runs} is not a folder", file=sys.stderr)
        return 2
    s = build(a.runs, a.out, a.model, a.protocol)
    written = sorted(x.name for x in a.out.glob("table*.md"))
    print(
        f"{len(s.ok)} runs ok, {len(s.failed)} failed, {len(s.incomplete)} incomplete; "
        f"wrote {', '.join(written) or 'no table (no matching runs)'} + cells.csv, runs.md in {a.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
