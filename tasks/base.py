"""The task contract: loading, tokenisation, collation, evaluation and the headline metric."""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets import Dataset
from torch import nn

from dora.config import TaskConfig
from dora.errors import UserError
from tasks.data import shared_sources


@dataclass
class TaskData:
    train: Dataset
    evals: dict[str, Dataset]  # canonical split name (dev, dev_matched, ...) -> tokenised dataset
    notes: dict = field(default_factory=dict)  # provenance, written to result.json["data"]


class Task:
    """Base class of a task. Subclasses set ``head``, ``headline`` and ``num_labels``."""

    head: str = "seq_cls"  # seq_cls | regression | qa | seq2seq: which AutoModelFor* to build
    headline: str = "dev/accuracy"  # "<split>/<metric>" used for best-epoch selection
    num_labels: int = 2

    def __init__(self, cfg: TaskConfig, data_dir: str | None):
        self.cfg = cfg
        self.data_dir = data_dir

    @property
    def eval_splits(self) -> list[str]:
        return [name for name in self.cfg.splits if name != "train"]

    def check_data(self) -> None:
        """Fail early (before any model is loaded) when local files are missing or malformed."""

    def load(self, tokenizer, max_length: int) -> TaskData:
        raise NotImplementedError

    def collator(self, tokenizer):
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader, accelerator, split: str) -> dict[str, float]:
        """Metrics of one evaluation split as ``{"<split>/<metric>": value}`` (percentages)."""
        raise NotImplementedError

    def require_rows(self, spec_str: str, n: int) -> None:
        """An empty split (a header-only file, ``"data": []``, a slice past the end) is bad input."""
        if n == 0:
            which = next((c for c, s in self.cfg.splits.items() if s == spec_str), "")
            what = "training" if which == "train" else which
            raise UserError(f"task={self.cfg.name}: the {what} split {spec_str!r} is empty")

    def trivial_scores(self, evals: dict) -> dict[str, list[float]]:
        """``{"<split>/<metric>": [score of each constant predictor]}`` on each evaluation split, so a
        run stuck at one can be flagged (result.json ``degenerate``). Empty: no trivial predictor."""
        return {}

    def data_notes(self) -> dict:
        notes = {"source": self.data_dir or "hub", "splits": dict(self.cfg.splits)}
        shared = shared_sources(self.cfg.splits)
        if shared:
            notes["same_source"] = shared
        return notes
