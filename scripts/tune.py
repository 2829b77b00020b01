"""Choose a learning rate for one (model, method, task) on seeds the tables do not report.

    python scripts/tune.py --model minilm --method dora --task stsb --lrs 1e-3,3e-3,1e-2 [--seeds 0]
        [--runs runs/tune] [--jobs N] [--protocol last|best] [--experiment tune] [--dry-run] [-- OVERRIDES...]

Runs the grid through scripts/grid.py (experiment ``tune``: finished runs are skipped, an interrupted
grid resumes), then takes every rate's mean dev headline over the seeds, picks the best, says when it
sits at an edge of the grid (the optimum may lie outside: extend the grid), and writes
``configs/tuned/<model>_<method>_<task>.yaml``: ``lr`` plus the evidence. A later run or experiment
file uses it with ``'trainer.lr=${tuned:}'``.
A failed run (e.g. diverged at a high rate) counts as a failed rate, never as a score.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from dora.config import tuned_dir
from dora.records import RunRecord
from scripts import grid

REPO = Path(__file__).resolve().parent.parent


def overrides(a: argparse.Namespace, extra: list[str]) -> list[str]:
    return [
        f"model={a.model}", f"method={a.method}", f"task={a.task}",
        f"trainer.lr={a.lrs}", f"seed={a.seeds}", *extra,
    ]  # fmt: skip


def collect(runs: list[grid.Run], protocol: str) -> tuple[dict[float, dict], str | None]:
    """Per learning rate: the seeds' scores, failed runs and runs stuck at the trivial predictor."""
    per_lr: dict[float, dict] = {}
    headline = None
    for run in runs:
        lr = float(dict(o.split("=", 1) for o in run.overrides)["trainer.lr"])
        entry = per_lr.setdefault(lr, {"scores": [], "seeds": [], "failed": 0, "missing": 0, "degenerate": 0})
        path = run.folder / "result.json"
        if not path.is_file():
            entry["failed" if (run.folder / "failure.json").is_file() else "missing"] += 1
            continue
        r = RunRecord.read(run.folder)
        headline = r.headline
        entry["scores"].append(r.value(headline, protocol))
        entry["seeds"].append(r.seed)
        entry["degenerate"] += bool(r.degenerate)
    return dict(sorted(per_lr.items())), headline


def summarise(per_lr: dict[float, dict]) -> list[dict]:
    rows = []
    for lr, e in per_lr.items():
        s = e["scores"]
        rows.append({
            "lr": lr, "n": len(s), "mean": statistics.fmean(s) if s else None,
            "std": statistics.stdev(s) if len(s) > 1 else None, "scores": s, "seeds": e["seeds"],
            "failed": e["failed"], "missing": e["missing"], "degenerate": e["degenerate"],
        })  # fmt: skip
    return rows


def choose(rows: list[dict]) -> tuple[dict, bool]:
    """The rate with the best mean (complete rates only), and whether it is the grid's lowest or highest."""
    scored = [r for r in rows if r["mean"] is not None and not r["failed"]]
    if not scored:
        raise SystemExit("error: no learning rate has a complete set of finished runs; nothing to choose")
    best = max(scored, key=lambda r: r["mean"])
    lrs = [r["lr"] for r in rows]
    return best, len(lrs) > 1 and best["lr"] in (min(lrs), max(lrs))


def git_sha() -> str | None:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() or None


def write(path: Path, a, rows: list[dict], best: dict, edge: bool, headline: str) -> str:
    """The tuned file: the evidence as comments, then ``lr`` and the same evidence as data; returns the
    comments."""
    fmt = lambda x: "—" if x is None else f"{x:.2f}"  # noqa: E731
    lines = [
        f"# make tune: model={a.model} method={a.method} task={a.task}, seeds {a.seeds}, protocol {a.protocol},",
        f"# metric {headline} (mean over seeds). Used by 'trainer.lr=${{tuned:}}'.",
        *[
            f"#   lr {r['lr']:g}: {fmt(r['mean'])} ± {fmt(r['std'])} (n {r['n']}"
            + (f", {r['failed']} failed" if r["failed"] else "")
            + (f", {r['degenerate']} at the trivial predictor" if r["degenerate"] else "")
            + ")" + ("  <- chosen" if r is best else "")
            for r in rows
        ],
        "# WARNING: the best rate is at an edge of the grid; the optimum may lie outside it." if edge else "",
    ]  # fmt: skip
    body = {
        "lr": best["lr"],
        "edge_of_grid": edge,
        "metric": headline,
        "protocol": a.protocol,
        "seeds": a.seeds,
        "grid": rows,
        "overrides": a.extra,
        "git_sha": git_sha(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    comments = "\n".join(x for x in lines if x)
    path.write_text(comments + "\n" + yaml.safe_dump(body, sort_keys=False))
    return comments


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("model", "method", "task"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--lrs", required=True, help="comma-separated learning rates, e.g. 1e-3,3e-3,1e-2")
    p.add_argument("--seeds", default="0", help="comma-separated seeds the tables do not report (default 0)")
    p.add_argument("--runs", type=Path, default=Path("runs/tune"))
    p.add_argument("--protocol", choices=("last", "best"), default="last")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--launcher", default="auto")
    p.add_argument("--out", type=Path, default=None, help="tuned folder (default configs/tuned)")
    p.add_argument("--experiment", default="tune", help="experiment file holding the schedule (default tune)")
    p.add_argument("--dry-run", action="store_true")
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    a = p.parse_args(argv[:cut])
    a.extra = argv[cut + 1 :]
    lrs = [x for x in a.lrs.split(",") if x]
    if len(lrs) < 2 or any(not _positive(x) for x in lrs):
        p.error(f"--lrs {a.lrs!r}: give at least two positive numbers, e.g. 1e-3,3e-3,1e-2")
    ov = overrides(a, a.extra)
    runs = grid.plan(a.experiment, a.runs, ov)
    grid.report(a.experiment, runs)
    if a.dry_run:
        return 0
    if not all(r.done for r in runs):
        grid.launch(a.experiment, a.runs, ov, a.launcher, a.jobs, per_gpu=1)
        runs = grid.plan(a.experiment, a.runs, ov)
    per_lr, headline = collect(runs, a.protocol)
    rows = summarise(per_lr)
    best, edge = choose(rows)
    out = (a.out or tuned_dir()) / f"{a.model}_{a.method}_{a.task}.yaml"
    print(write(out, a, rows, best, edge, headline))
    print(f"chose lr {best['lr']:g} -> {out}")
    return 0


def _positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
