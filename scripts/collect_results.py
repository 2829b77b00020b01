"""Copy every finished run's result.json from a runs folder into a results folder (one sub-folder per run):
python scripts/collect_results.py RUNS_DIR OUT_DIR. Only result.json travels (no weights, no checkpoints),
so a study's committed results are small and its tables can be rebuilt from them alone."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def collect(runs: Path, out: Path) -> int:
    n = 0
    for path in sorted(runs.glob("*/result.json")):
        target = out / path.parent.name / "result.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        n += 1
    return n


if __name__ == "__main__":
    if len(sys.argv) != 3 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python scripts/collect_results.py RUNS_DIR OUT_DIR (RUNS_DIR must exist)")
    print(f"collected {collect(Path(sys.argv[1]), Path(sys.argv[2]))} result.json into {sys.argv[2]}")
