"""XSum abstractive summarisation (``task=xsum``, BART, paper Table 4).

Data: the hub (``EdinburghNLP/xsum``: train / validation / test) or ``<data_dir>/xsum/<split>.jsonl``
with one ``{"document", "summary", "id"}`` object per line (the hub's field names). Documents are cut to
``max_length`` (768) tokens and summaries to ``target_length`` (64). Offline folders without a training
file fall back to ``task.local_fallback`` (see tasks/sources.py).

Evaluation: beam search (``num_beams`` 3, at most ``max_new_tokens`` 64), then ROUGE F-measures through
rouge-score with the stemmer off, averaged over documents, in percent. Sentences of prediction and
reference go on separate lines first, as the ROUGE-L of summarisation papers is the summary-level LCS
(rouge-score's ``rougeLsum``, which splits on newlines); it is reported as ``rougeL``.
``predict_limit`` summarises only the first N documents of each evaluation split (generation dominates
evaluation time on a CPU); the result's ``data.predict_limit`` records it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import torch
from accelerate.utils import extract_model_from_parallel
from datasets import Dataset
from rouge_score import rouge_scorer
from transformers import DataCollatorForSeq2Seq

from dora.config import TaskConfig
from dora.errors import UserError
from tasks import TASKS
from tasks.base import TaskData
from tasks.collate import INDEX, KeepIndex
from tasks.data import parse_split
from tasks.sources import LocalFileTask, hub_split

HUB_ID = "EdinburghNLP/xsum"
ROUGE_TYPES = {"rouge1": "rouge1", "rouge2": "rouge2", "rougeL": "rougeLsum"}  # metric name -> rouge-score's
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


@dataclass
class XsumConfig(TaskConfig):
    """XSum settings (paper: input 768, target 64 tokens; 3 beams)."""

    max_length: int = 768  # document tokens
    target_length: int = 64  # summary tokens (training labels)
    num_beams: int = 3
    max_new_tokens: int = 64
    predict_limit: int | None = None  # summarise at most this many documents per evaluation split
    local_fallback: dict[str, str] = field(
        default_factory=dict
    )  # splits used when data_dir has no train file

    def __post_init__(self):
        super().__post_init__()
        for name in ("target_length", "num_beams", "max_new_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"task.{name}={getattr(self, name)}; must be > 0")
        if self.predict_limit is not None and self.predict_limit <= 0:
            raise ValueError(f"task.predict_limit={self.predict_limit}; must be > 0 or null (all)")


def split_sentences(text: str) -> str:
    """One sentence per line (a rule-based splitter: sentence-final punctuation, blank, capital/digit)."""
    return "\n".join(s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip())


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE F-measures in percent: {"rouge1", "rouge2", "rougeL"} (rougeL = summary-level LCS)."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES.values()), use_stemmer=False)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(split_sentences(ref), split_sentences(pred))  # (target, prediction)
        for name, kind in ROUGE_TYPES.items():
            totals[name] += scores[kind].fmeasure
    n = max(len(predictions), 1)
    return {name: 100.0 * total / n for name, total in totals.items()}


def read_jsonl(path: str) -> dict[str, list[str]]:
    """Columns ``document``, ``summary`` of an XSum jsonl file (both strings on every line)."""
    out: dict[str, list[str]] = {"document": [], "summary": []}
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                row = json.loads(line)
                for key in ("document", "summary"):
                    if not isinstance(row[key], str):
                        raise TypeError(f"{key} is {json.dumps(row[key])[:20]}, not a string")
                    out[key].append(row[key])
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise UserError(
                    f"malformed XSum file {path}: line {line_no} ({type(e).__name__} {e}); "
                    'expected one {"document": "...", "summary": "..."} object (UTF-8 strings) per line'
                ) from None
    return out


class Xsum(LocalFileTask):
    head = "seq2seq"
    num_labels = 0
    local_folder, local_ext = "xsum", ".jsonl"

    def __init__(self, cfg: XsumConfig, data_dir: str | None):
        super().__init__(cfg, data_dir)
        self.headline = f"{self.eval_splits[0]}/rougeL"
        self.references: dict[str, list[str]] = {}  # eval split -> gold summaries (untruncated)
        self.predictions: dict[str, list[str]] = {}  # eval split -> summaries of the last evaluation
        self.tokenizer = None

    # -- data ---------------------------------------------------------------------------------
    def data_notes(self) -> dict:
        notes = super().data_notes()
        if self.cfg.predict_limit:
            notes["predict_limit"] = self.cfg.predict_limit
        return notes

    def raw_split(self, spec_str: str) -> dict[str, list[str]]:
        spec = parse_split(spec_str)
        if self.data_dir is not None:
            cols = read_jsonl(self.local_files().path(spec.name))
            lo, hi = spec.bounds(len(cols["document"]))
            self.require_rows(spec_str, hi - lo)
            return {k: v[lo:hi] for k, v in cols.items()}
        ds = self._hub_split(spec.name + spec.slice_suffix())
        return {"document": list(ds["document"]), "summary": list(ds["summary"])}

    def _hub_split(self, split: str):
        return hub_split(self.cfg.hub_id or HUB_ID, split, "xsum/<split>.jsonl")

    def load(self, tokenizer, max_length: int) -> TaskData:
        self.check_data()
        self.tokenizer = tokenizer
        raw = self.raw_split(self.splits["train"])
        enc = tokenizer(raw["document"], truncation=True, max_length=max_length)
        labels = tokenizer(text_target=raw["summary"], truncation=True, max_length=self.cfg.target_length)
        train = Dataset.from_dict(
            {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "labels": labels["input_ids"],
            }
        )
        evals = {name: self._eval_dataset(name, tokenizer, max_length) for name in self.eval_splits}
        return TaskData(train, evals, self.data_notes())

    def _eval_dataset(self, split: str, tokenizer, max_length: int) -> Dataset:
        raw = self.raw_split(self.splits[split])
        n = min(len(raw["document"]), self.cfg.predict_limit or len(raw["document"]))
        self.references[split] = raw["summary"][:n]
        enc = tokenizer(raw["document"][:n], truncation=True, max_length=max_length)
        return Dataset.from_dict(
            {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], INDEX: list(range(n))}
        )

    def collator(self, tokenizer):
        return KeepIndex(DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100))

    # -- evaluation ---------------------------------------------------------------------------
    def predict(self, model, batch: dict) -> dict[str, torch.Tensor]:
        # generate() lives on the bare model, not on the DDP wrapper
        generator = extract_model_from_parallel(model)
        summary = generator.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            num_beams=self.cfg.num_beams,
            max_new_tokens=self.cfg.max_new_tokens,
        )  # (batch, generated tokens)
        return {"summary": summary, "index": batch[INDEX]}

    def padding(self) -> dict[str, float]:
        return {"summary": self.tokenizer.pad_token_id}

    def score(self, split: str, outputs: list[dict]) -> dict[str, float]:
        texts: dict[int, str] = {}
        for out in outputs:
            decoded = self.tokenizer.batch_decode(out["summary"], skip_special_tokens=True)
            texts.update(zip(out["index"].tolist(), decoded, strict=True))
        refs = self.references[split]
        self.predictions[split] = [texts[i].strip() for i in range(len(refs))]
        return rouge(self.predictions[split], refs)


TASKS.add("xsum", Xsum, XsumConfig)
