"""Runs read back: one typed record per result.json and the one scan every report starts from.

``scan(folder)`` classifies every run folder below ``folder`` (any depth): finished (``result.json`` with
status ok, as a ``RunRecord``), failed (``failure.json``, or a result.json that is unreadable or not ok)
and incomplete (run bookkeeping such as ``.hydra`` or ``checkpoints``, but no result). ``load_runs`` is
the same scan as a pandas DataFrame, one row per finished run. The scripts that aggregate runs
(make_tables, mini_table, figures, allocation, tune) read result.json files only through this module;
dora/results.py writes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# run-folder bookkeeping that marks a folder as a run even before it has a result
RUN_MARKERS = (".hydra", "checkpoints", "run.log", ".lock")
MNLI_AVG = "dev_m_mm/accuracy"  # the paper's MNLI column: mean of matched and mismatched accuracy
FRAME_COLUMNS = ("path", "task", "method", "model", "seed", "budget", "headline")
# config keys that may differ between the seeds of one table cell: the seed, where files live on the machine
# that ran it (the run-folder name ignores data_dir too: configs/config.yaml), and what does not touch training
IGNORED_IN_SIGNATURE = (
    "seed",
    "output_dir",
    "data_dir",
    "logger",
    "trainer.progress",
    "trainer.num_workers",
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
)


@dataclass(frozen=True, eq=False)
class RunRecord:
    """One finished run: the result.json fields reports read (README "What a run writes")."""

    path: str  # the run folder
    task: str | None = None
    method: str | None = None
    model: str | None = None
    seed: int | None = None
    budget: str | None = None  # low | high | None (methods without a budget)
    headline: str | None = None  # "<split>/<metric>" the task reports
    metrics: dict = field(default_factory=dict)  # the final evaluation
    best: dict = field(default_factory=dict)  # the best evaluation once the allocation is final
    history: list[dict] = field(default_factory=list)  # every evaluation, with its step
    config: dict = field(default_factory=dict)  # the resolved config
    params: dict | None = None  # budget (paper convention), trainable, total
    timing: dict = field(default_factory=dict)
    rank_pattern: dict | None = None  # DynDoRA / AdaLoRA: active components per adapted matrix
    budget_history: list | None = None  # [step, active components] at every allocation event
    best_from_step: int | None = None  # first step eligible for `best` (older runs: absent)
    constant_scores: dict | None = None  # metric -> every constant predictor's score
    trivial: dict | None = None  # metric -> the best constant predictor's score
    degenerate: bool | None = None  # the last headline equals a constant predictor's
    precision: dict | None = None
    diagnostics: dict | None = None
    env: dict | None = None  # git sha, package versions, device ("cpu", "cuda:0")

    @property
    def device(self) -> str | None:
        """``gpu`` or ``cpu``: where the run trained (None for runs without env)."""
        dev = (self.env or {}).get("device")
        return None if dev is None else "gpu" if str(dev).startswith("cuda") else str(dev).split(":")[0]

    @property
    def variant(self) -> str:
        """The method, except that DynDoRA at b(0) = b(T) (``method.init_ratio`` 1: nothing is ever pruned) is
        its own variant, ``dora_noprune``: the study's ablation of the allocation."""
        ratio = self.cfg("method.init_ratio")
        if self.method == "dora" and ratio is not None and abs(float(ratio) - 1.0) < 1e-9:
            return "dora_noprune"
        return self.method

    @classmethod
    def from_result(cls, result: dict, path: str | Path) -> RunRecord:
        """The record of a parsed result.json; fields it lacks (older runs) take their defaults."""
        known = {f.name for f in fields(cls)} - {"path"}
        present = {k: v for k, v in result.items() if k in known and v is not None}
        return cls(path=str(path), **present)

    @classmethod
    def read(cls, folder: str | Path) -> RunRecord:
        """The record of ``folder/result.json`` (OSError / JSONDecodeError when it cannot be read)."""
        return cls.from_result(json.loads((Path(folder) / "result.json").read_text()), folder)

    def cfg(self, key: str) -> Any:
        """A dotted key of the resolved config (``method.dem_coef``), None where absent."""
        node: Any = self.config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def value(self, metric: str, protocol: str, from_step: int = 0) -> float | None:
        """The run's number for a table cell: ``best`` (the best eligible evaluation), ``last`` (the final
        one) or ``common`` (the best evaluation at or after ``from_step``; the last when none is that late)."""
        if protocol == "common":
            history = [h for h in self.history if _metric(h, metric) is not None]
            eligible = [h for h in history if h["step"] >= from_step] or history[-1:]
            return max((_metric(h, metric) for h in eligible), default=None)
        return _metric((self.best if protocol == "best" else self.metrics) or {}, metric)

    def allocation_final_step(self) -> int:
        """The step from which the run's own allocation is final (0 for non-adaptive methods). Runs written
        before result.json carried ``best_from_step``: the last allocation event in budget_history."""
        if self.best_from_step is not None:
            return int(self.best_from_step)
        history = self.budget_history or []
        return int(history[-1][0]) if history else 0

    def signature(self) -> str:
        """The run's configuration minus what may differ between the seeds of one cell."""
        keep = {
            k: v
            for k, v in _flatten(self.config).items()
            if not any(k == i or k.startswith(i + ".") for i in IGNORED_IN_SIGNATURE)
        }
        return json.dumps(keep, sort_keys=True, default=str)


def _metric(source: dict, metric: str) -> float | None:
    if metric == MNLI_AVG:
        both = [source.get("dev_matched/accuracy"), source.get("dev_mismatched/accuracy")]
        return None if None in both else sum(both) / 2
    return source.get(metric)


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@dataclass
class Scan:
    """Every run folder below a folder: finished runs, failed ones (folder, reason) and incomplete ones."""

    ok: list[RunRecord] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)

    def frame(self):
        """The finished runs as a DataFrame, one row per run: what identifies it (FRAME_COLUMNS) to
        select and group by, and ``run``, its RunRecord, for everything else."""
        import pandas as pd

        rows = [{**{c: getattr(r, c) for c in FRAME_COLUMNS}, "run": r} for r in self.ok]
        return pd.DataFrame(rows, columns=[*FRAME_COLUMNS, "run"])


def scan(runs_dir: str | Path) -> Scan:
    """Classify every run folder below ``runs_dir`` (any depth), each once, in sorted path order."""
    runs_dir, s, seen = Path(runs_dir), Scan(), set()
    for path in sorted(runs_dir.rglob("result.json")):
        seen.add(path.parent)
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            s.failed.append((str(path.parent), f"unreadable result.json ({type(e).__name__})"))
            continue
        if result.get("status") == "ok":
            s.ok.append(RunRecord.from_result(result, path.parent))
        else:
            s.failed.append((str(path.parent), f"status {result.get('status')!r}"))
    for path in sorted(runs_dir.rglob("failure.json")):
        if path.parent not in seen:
            seen.add(path.parent)
            s.failed.append((str(path.parent), _failure_reason(path)))
    for marker in RUN_MARKERS:
        for path in sorted(runs_dir.rglob(marker)):
            if path.parent not in seen:
                seen.add(path.parent)
                s.incomplete.append(str(path.parent))
    return s


def load_runs(runs_dir: str | Path):
    """The finished runs below ``runs_dir`` as a DataFrame (``scan(runs_dir).frame()``)."""
    return scan(runs_dir).frame()


def _failure_reason(path: Path) -> str:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return "failure.json (unreadable)"
    return f"{record.get('error', 'failed')} (step {record.get('step', '?')})"
