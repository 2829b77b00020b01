"""Copy every finished run's result.json from a runs folder into a results folder (one sub-folder per run):
python scripts/collect_results.py [--missing-only] RUNS_DIR OUT_DIR. Only result.json travels (no weights, no
checkpoints), so a study's committed results are small and its tables can be rebuilt from them alone.

The other way round (``--missing-only`` COMMITTED_RESULTS RUNS_DIR) a fresh checkout seeds its runs folder
with the committed results, so a resumed grid skips the runs that finished in an earlier session; a
result.json already there is never overwritten."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def collect(runs: Path, out: Path, missing_only: bool = False) -> int:
    n = 0
    for path in sorted(runs.glob("*/result.json")):
        target = out / path.parent.name / "result.json"
        if missing_only and target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        n += 1
    return n


if __name__ == "__main__":
    args = sys.argv[1:]
    missing_only = "--missing-only" in args
    args = [a for a in args if a != "--missing-only"]
    if len(args) != 2 or not Path(args[0]).is_dir():
        sys.exit(
            "usage: python scripts/collect_results.py [--missing-only] RUNS_DIR OUT_DIR (RUNS_DIR must exist)"
        )
    print(f"collected {collect(Path(args[0]), Path(args[1]), missing_only)} result.json into {args[1]}")
