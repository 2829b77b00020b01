"""The task contract (loading, tokenisation, collation, predict + score, the headline metric) and the
evaluation driver that runs a task's predict and score over one split."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
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
        # canonical split -> the spec this task reads: task.splits, unless check_data resolves them to
        # others (an offline fallback, tasks/sources.py); the config itself is never rewritten
        self.splits: dict[str, str] = dict(cfg.splits)

    @property
    def eval_splits(self) -> list[str]:
        return [name for name in self.splits if name != "train"]

    def check_data(self) -> None:
        """Fail early (before any model is loaded) when local files are missing or malformed."""

    def load(self, tokenizer, max_length: int) -> TaskData:
        raise NotImplementedError

    def collator(self, tokenizer):
        raise NotImplementedError

    # -- evaluation: evaluate_split (below) runs these over one split ---------------------------
    def predict(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """The model's outputs for one evaluation batch, each a tensor whose first dimension is the
        batch; called in eval mode without gradients."""
        raise NotImplementedError

    def padding(self) -> dict[str, float]:
        """Outputs of ``predict`` whose second dimension can differ between processes (token positions,
        generated tokens): name -> the value that pads them to one length before gathering."""
        return {}

    def score(self, split: str, outputs: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """``{metric: value}`` (percentages) of one split from ``predict``'s outputs, one dict per batch,
        gathered from every process in dataset order and on the CPU."""
        raise NotImplementedError

    def require_rows(self, spec_str: str, n: int) -> None:
        """An empty split (a header-only file, ``"data": []``, a slice past the end) is bad input."""
        if n == 0:
            which = next((c for c, s in self.splits.items() if s == spec_str), "")
            what = "training" if which == "train" else which
            raise UserError(f"task={self.cfg.name}: the {what} split {spec_str!r} is empty")

    def trivial_scores(self, evals: dict) -> dict[str, list[float]]:
        """``{"<split>/<metric>": [score of each constant predictor]}`` on each evaluation split, so a
        run stuck at one can be flagged (result.json ``degenerate``). Empty: no trivial predictor."""
        return {}

    def data_notes(self) -> dict:
        notes = {"source": self.data_dir or "hub", "splits": dict(self.splits)}
        shared = shared_sources(self.splits)
        if shared:
            notes["same_source"] = shared
        return notes


# -- the evaluation driver -------------------------------------------------------------------------
def evaluate_split(task: Task, model: nn.Module, loader, accelerator, split: str) -> dict[str, float]:
    """Metrics of one evaluation split as ``{"<split>/<metric>": value}``: ``task.predict`` on every
    batch in eval mode, the outputs gathered across processes, then ``task.score``."""
    with eval_mode(model):
        outputs = [gathered(accelerator, task.predict(model, batch), task.padding()) for batch in loader]
    return {f"{split}/{name}": value for name, value in task.score(split, outputs).items()}


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; the model's own mode comes back on the way out, also when
    the block raises (a run that stops in an evaluation must not be left in eval mode)."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)


def gathered(accelerator, outputs: dict[str, torch.Tensor], padding: dict[str, float]) -> dict:
    """One batch's outputs from every process, on the CPU. Ragged outputs are padded along dim 1 first;
    ``gather_for_metrics`` drops the rows that repeat examples to fill the last batch."""
    outputs = {
        k: accelerator.pad_across_processes(v, dim=1, pad_index=padding[k]) if k in padding else v
        for k, v in outputs.items()
    }
    return {k: v.cpu() for k, v in accelerator.gather_for_metrics(outputs).items()}
