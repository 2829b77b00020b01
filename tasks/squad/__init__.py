"""SQuAD v1.1 / v2.0 extractive question answering (``task=squad_v1`` / ``task=squad_v2``).

Data: the hub (``rajpurkar/squad``, ``rajpurkar/squad_v2``) or ``<data_dir>/squad/<split>.json`` in the
official layout. Split names are the official file stems (``train-v1.1``, ``dev-v1.1``, ...); on the hub
they map to ``train`` / ``validation``. Slices select questions in file order. Offline folders without a
training file fall back to ``task.local_fallback`` (see tasks/sources.py).

Evaluation: windows -> logits -> answers (postprocess.py) -> official scores (scoring.py), reported as
``<split>/exact_match`` and ``<split>/f1`` for both versions, plus v2's ``HasAns_*`` / ``NoAns_*``.
``python -m tasks.squad DATA.json PREDICTIONS.json [--version 2]`` scores a prediction file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset
from transformers import DataCollatorWithPadding

from dora.config import TaskConfig
from dora.errors import UserError
from tasks import TASKS
from tasks.base import TaskData
from tasks.collate import INDEX, KeepIndex
from tasks.data import parse_split
from tasks.sources import LocalFileTask, hub_split
from tasks.squad import postprocess, scoring
from tasks.squad.features import Examples, Windows, from_hub, make_windows, read_json

HUB_SPLITS = {
    "train-v1.1": "train",
    "dev-v1.1": "validation",
    "train-v2.0": "train",
    "dev-v2.0": "validation",
}
PROTOCOLS = ("question", "window")


@dataclass
class SquadConfig(TaskConfig):
    """SQuAD settings; the defaults are the standard recipe (HF run_qa / BERT run_squad)."""

    version: int = 1  # 1: SQuAD v1.1, 2: v2.0 (unanswerable questions)
    max_length: int = 384  # tokens per window (paper Table 8)
    doc_stride: int = 128  # tokens shared by consecutive windows of one context
    max_question_length: int = 64  # longer questions are cut (tokens)
    n_best: int = 20  # candidate start and end positions per window
    max_answer_length: int = 30  # tokens
    null_threshold: float = 0.0  # v2: answer "" when null score - best span score > this
    protocol: str = "question"  # question (standard) | window (the paper's: docs/dyndora.md#squad-protocol)
    local_fallback: dict[str, str] = field(
        default_factory=dict
    )  # splits used when data_dir has no train file

    def __post_init__(self):
        super().__post_init__()
        if self.version not in (1, 2):
            raise ValueError(f"task.version={self.version}; valid: 1, 2")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"task.protocol={self.protocol!r}; valid: {', '.join(PROTOCOLS)}")
        for name in ("doc_stride", "max_question_length", "n_best", "max_answer_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"task.{name}={getattr(self, name)}; must be > 0")


@dataclass
class EvalSet:
    """What evaluation needs besides the logits: the examples and their windows."""

    examples: Examples
    windows: Windows
    kept: list[int]  # windows fed to the model, in dataset order


class Squad(LocalFileTask):
    head = "qa"
    num_labels = 2
    local_folder, local_ext = "squad", ".json"

    def __init__(self, cfg: SquadConfig, data_dir: str | None):
        super().__init__(cfg, data_dir)
        self.headline = f"{self.eval_splits[0]}/f1"
        self.evalsets: dict[str, EvalSet] = {}
        self.predictions: dict[str, dict] = {}  # eval split -> {question id (or window index): answer text}

    # -- data ---------------------------------------------------------------------------------
    def data_notes(self) -> dict:
        return super().data_notes() | {"protocol": self.cfg.protocol}

    def examples(self, spec_str: str) -> Examples:
        spec = parse_split(spec_str)
        if self.data_dir is not None:
            ex = read_json(self.local_files().path(spec.name))
            ex = ex.slice(*spec.bounds(len(ex)))
            self.require_rows(spec_str, len(ex))
            return ex
        return from_hub(self._hub_split(HUB_SPLITS.get(spec.name, spec.name) + spec.slice_suffix()))

    def _hub_split(self, split: str):
        hub_id = self.cfg.hub_id or ("rajpurkar/squad_v2" if self.cfg.version == 2 else "rajpurkar/squad")
        return hub_split(hub_id, split, "squad/<split>.json")

    def windows(self, tokenizer, ex: Examples, max_length: int) -> Windows:
        c = self.cfg
        if c.doc_stride + c.max_question_length + 4 > max_length:  # <s> q </s></s> ctx </s>: 4 specials
            raise UserError(
                f"task={c.name}: max_length={max_length} leaves no room for doc_stride={c.doc_stride} "
                f"and max_question_length={c.max_question_length}; need max_length >= doc_stride + max_question_length + 4"
            )
        return make_windows(tokenizer, ex, max_length, c.doc_stride, c.max_question_length)

    def load(self, tokenizer, max_length: int) -> TaskData:
        self.check_data()
        train = self.windows(tokenizer, self.examples(self.splits["train"]), max_length)
        train_ds = Dataset.from_dict(
            {
                "input_ids": train.input_ids,
                "attention_mask": [[1] * len(ids) for ids in train.input_ids],
                "start_positions": train.start_positions,
                "end_positions": train.end_positions,
            }
        )
        evals = {name: self._eval_dataset(name, tokenizer, max_length) for name in self.eval_splits}
        return TaskData(train_ds, evals, self.data_notes())

    def _eval_dataset(self, split: str, tokenizer, max_length: int) -> Dataset:
        ex = self.examples(self.splits[split])
        win = self.windows(tokenizer, ex, max_length)
        kept = list(range(len(win)))
        if self.cfg.protocol == "window":
            kept = [
                w
                for w in kept
                if postprocess.window_kept(win, w, ex.answers[win.example[w]], self.cfg.version)
            ]
        self.evalsets[split] = EvalSet(ex, win, kept)
        ids = [win.input_ids[w] for w in kept]
        return Dataset.from_dict(
            {"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids], INDEX: kept}
        )

    def collator(self, tokenizer):
        return KeepIndex(DataCollatorWithPadding(tokenizer))

    # -- evaluation ---------------------------------------------------------------------------
    def predict(self, model, batch: dict) -> dict[str, torch.Tensor]:
        out = model(**{k: v for k, v in batch.items() if k != INDEX})
        return {"start": out.start_logits, "end": out.end_logits, "index": batch[INDEX]}  # (batch, tokens)

    def padding(self) -> dict[str, float]:
        return {"start": -1e4, "end": -1e4}  # a padded position never wins a span

    def score(self, split: str, outputs: list[dict]) -> dict[str, float]:
        """Answers from window logits, then official scores under the harness's metric names."""
        evalset, version = self.evalsets[split], self.cfg.version
        ex, win, logits = evalset.examples, evalset.windows, self.window_logits(split, outputs)
        if self.cfg.protocol == "window":
            texts = postprocess.per_window(win, logits, ex.contexts, version, self.cfg)
            items = [(texts.get(w), ex.answers[win.example[w]]) for w in evalset.kept]
            self.predictions[split] = texts
        else:
            texts = postprocess.per_question(win, logits, ex.contexts, version, self.cfg)
            items = list(zip(texts, ex.answers, strict=True))
            self.predictions[split] = dict(zip(ex.ids, texts, strict=True))
        return harness_names(scoring.score(items, version))

    def window_logits(self, split: str, outputs: list[dict]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Window index -> (start, end) logits over that window's own tokens (the padding dropped)."""
        offsets, logits = self.evalsets[split].windows.offsets, {}
        for out in outputs:
            starts, ends = out["start"].float().numpy(), out["end"].float().numpy()
            for s, e, w in zip(starts, ends, out["index"].tolist(), strict=True):
                n = len(offsets[w])  # (tokens,) logits
                logits[w] = (s[:n], e[:n])
        return logits


def harness_names(official: dict) -> dict[str, float]:
    """Official keys -> result.json metric names: ``exact``/``exact_match`` -> exact_match; v2 keeps its
    ``HasAns_exact`` ... breakdown; question counts (``*total``) are not metrics."""
    out = {"exact_match": official.get("exact_match", official.get("exact")), "f1": official["f1"]}
    out |= {k: v for k, v in official.items() if k.startswith(("HasAns_", "NoAns_")) and "total" not in k}
    return {k: float(v) for k, v in out.items()}


TASKS.add("squad_v1", Squad, SquadConfig)
TASKS.add("squad_v2", Squad, SquadConfig)
