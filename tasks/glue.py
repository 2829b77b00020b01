"""GLUE: the eight tasks as one table-driven class, from the hub (``nyu-mll/glue``) or from
``<data_dir>/glue/<Task>/<split>.tsv`` in the original GLUE tsv format.

tsv traps handled: fields are read with no quote processing (csv.QUOTE_NONE), CoLA has no header,
MRPC starts with a UTF-8 BOM, RTE/QNLI/MNLI labels are strings.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from transformers import DataCollatorWithPadding

from dora import hub
from dora.config import TaskConfig
from dora.errors import UserError
from tasks import TASKS, cache, metrics
from tasks.base import Task, TaskData
from tasks.data import parse_split

HUB_ID = "nyu-mll/glue"
HUB_SPLITS = {
    "dev": "validation",
    "dev_matched": "validation_matched",
    "dev_mismatched": "validation_mismatched",
}


@dataclass(frozen=True)
class GlueSpec:
    folder: str  # <data_dir>/glue/<folder>/
    hub_text: tuple[str, ...]  # text columns on the hub
    local_text: tuple[str | int, ...]  # text columns in the tsv: header names, or indices when headerless
    local_label: str | int
    metrics: tuple[str, ...]  # first = headline (docs/dyndora.md#metrics)
    labels: tuple[str, ...] = ()  # string labels in hub id order; empty: labels are numbers in the file
    regression: bool = False
    header: bool = True


GLUE = {
    "cola": GlueSpec("CoLA", ("sentence",), (3,), 1, ("mcc", "accuracy"), header=False),
    "sst2": GlueSpec("SST-2", ("sentence",), ("sentence",), "label", ("accuracy",)),
    "mrpc": GlueSpec(
        "MRPC", ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality", ("accuracy", "f1")
    ),
    "stsb": GlueSpec(
        "STS-B",
        ("sentence1", "sentence2"),
        ("sentence1", "sentence2"),
        "score",
        ("pearson", "spearman"),
        regression=True,
    ),
    "qqp": GlueSpec(
        "QQP", ("question1", "question2"), ("question1", "question2"), "is_duplicate", ("accuracy", "f1")
    ),
    "mnli": GlueSpec(
        "MNLI",
        ("premise", "hypothesis"),
        ("sentence1", "sentence2"),
        "gold_label",
        ("accuracy",),
        labels=("entailment", "neutral", "contradiction"),
    ),
    "qnli": GlueSpec(
        "QNLI",
        ("question", "sentence"),
        ("question", "sentence"),
        "label",
        ("accuracy",),
        labels=("entailment", "not_entailment"),
    ),
    "rte": GlueSpec(
        "RTE",
        ("sentence1", "sentence2"),
        ("sentence1", "sentence2"),
        "label",
        ("accuracy",),
        labels=("entailment", "not_entailment"),
    ),
}


def read_tsv(path: str, spec: GlueSpec) -> dict[str, list]:
    """Columns ``text_a``, (``text_b``), ``labels`` of one GLUE tsv file."""
    rows = [
        r
        for r in csv.reader(io.StringIO(read_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
        if r
    ]
    first_data_line = 1
    if spec.header:
        if not rows:
            raise UserError(f"malformed GLUE file {path}: it is empty")
        header, rows, first_data_line = rows[0], rows[1:], 2
        missing = [c for c in (*spec.local_text, spec.local_label) if c not in header]
        if missing:
            raise UserError(f"malformed GLUE file {path}: header lacks columns {missing}; found {header}")
        cols = [header.index(c) for c in (*spec.local_text, spec.local_label)]
    else:
        cols = [*spec.local_text, spec.local_label]
    out: dict[str, list] = {"text_a": [], "text_b": [], "labels": []}
    for i, row in enumerate(rows, start=first_data_line):
        if len(row) <= max(cols):
            raise UserError(
                f"malformed GLUE file {path}: line {i} has {len(row)} fields, expected at least {max(cols) + 1}"
            )
        out["text_a"].append(row[cols[0]])
        if len(spec.local_text) == 2:
            out["text_b"].append(row[cols[1]])
        out["labels"].append(_label(row[cols[-1]], spec, path, i))
    if len(spec.local_text) == 1:
        del out["text_b"]
    return out


def read_text(path: str) -> str:
    """The file as text (utf-8; a BOM, as MRPC's, dropped), or one line naming the first bad byte."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"malformed GLUE file {path}: line {line} is not valid UTF-8 (byte {data[e.start]:#04x} at offset "
            f"{e.start}); GLUE files are UTF-8 text"
        ) from None


def _label(value: str, spec: GlueSpec, path: str, line: int):
    """The label as the model takes it: a finite number (regression) or a class id in range."""
    if spec.regression:
        valid = "a finite number"
    else:
        valid = ", ".join(spec.labels) or " or ".join(str(i) for i in range(2))
    try:
        if spec.regression:
            label = float(value)
            if math.isfinite(label):
                return label
        elif spec.labels:
            return spec.labels.index(value)
        elif int(value) in (0, 1):  # numeric GLUE labels are binary (CoLA, SST-2, MRPC, QQP)
            return int(value)
    except ValueError:
        pass
    raise UserError(f"malformed GLUE file {path}: line {line} has label {value!r}; expected {valid}")


class Glue(Task):
    """One GLUE task; which one is ``GLUE[cfg.name]``."""

    def __init__(self, cfg: TaskConfig, data_dir: str | None):
        super().__init__(cfg, data_dir)
        self.spec = GLUE[cfg.name]
        self.head = "regression" if self.spec.regression else "seq_cls"
        self.num_labels = 1 if self.spec.regression else max(2, len(self.spec.labels))
        self.headline = f"{self.eval_splits[0]}/{self.spec.metrics[0]}"

    # -- data ---------------------------------------------------------------------------------
    def local_path(self, split_name: str) -> str:
        return os.path.join(self.data_dir, "glue", self.spec.folder, f"{split_name}.tsv")

    def check_data(self) -> None:
        if self.data_dir is None:
            return
        for canonical, spec in self.splits.items():
            path = self.local_path(parse_split(spec).name)
            if not os.path.isfile(path):
                folder = os.path.dirname(path)
                have = (
                    sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".tsv"))
                    if os.path.isdir(folder)
                    else []
                )
                hint = (
                    f"files there: {', '.join(have)} (choose with task.splits.{canonical}=NAME)"
                    if have
                    else "no GLUE files there"
                )
                raise UserError(f"task={self.cfg.name}: missing {canonical} file {path}; {hint}")

    def raw_split(self, spec_str: str) -> Dataset:
        spec = parse_split(spec_str)
        if self.data_dir is not None:
            columns = read_tsv(self.local_path(spec.name), self.spec)
            lo, hi = spec.bounds(len(columns["labels"]))
            return Dataset.from_dict({k: v[lo:hi] for k, v in columns.items()})
        return self._hub_split(spec)

    def _hub_split(self, spec) -> Dataset:
        from datasets import load_dataset

        hub_id = self.cfg.hub_id or HUB_ID
        split = HUB_SPLITS.get(spec.name, spec.name) + spec.slice_suffix()
        offline_hint = (
            "offline: pass data_dir=PATH (a folder laid out like shared/data: glue/<Task>/<split>.tsv)"
        )
        if not hub.offline_env() and not hub.reachable():
            raise UserError(
                f"cannot load {hub_id}/{self.cfg.name}: the Hugging Face Hub is unreachable; {offline_hint}"
            )
        try:
            ds = load_dataset(hub_id, self.cfg.name, split=split)
        except Exception as e:  # network, offline mode, unknown split: all end the run the same way
            raise UserError(
                f"cannot load {hub_id}/{self.cfg.name} split {split!r} from the Hugging Face Hub "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {offline_hint}"
            ) from e
        names = ["text_a", "text_b"][: len(self.spec.hub_text)]
        ds = ds.rename_columns(dict(zip(self.spec.hub_text, names, strict=True)) | {"label": "labels"})
        return ds.select_columns([*names, "labels"])

    def load(self, tokenizer, max_length: int) -> TaskData:
        def encode(batch):
            texts = (batch["text_a"], batch["text_b"]) if "text_b" in batch else (batch["text_a"],)
            return tokenizer(*texts, truncation=True, max_length=max_length)

        def tokenise(raw: Dataset) -> Dataset:
            return raw.map(
                encode, batched=True, remove_columns=[c for c in raw.column_names if c != "labels"]
            )

        def prepare(spec_str: str) -> Dataset:
            # through the tokenised-data cache (tasks/cache.py), keyed by source, tokenizer and length
            key = {"task": self.cfg.name, "split": spec_str, "max_length": max_length}
            key["tokenizer"] = cache.tokenizer_identity(tokenizer)
            if self.data_dir is not None:
                path = self.local_path(parse_split(spec_str).name)
                ds = cache.cached(
                    key | {"source": cache.file_source(path)}, lambda: tokenise(self.raw_split(spec_str))
                )
            else:
                raw = self.raw_split(spec_str)  # hub: its fingerprint follows the cached files
                ds = cache.cached(key | {"source": {"hub": raw._fingerprint}}, lambda: tokenise(raw))
            self.require_rows(spec_str, len(ds))
            return ds

        # evaluated shortest first: GLUE metrics do not depend on the order, and batches pad least
        evals = {name: by_length(prepare(self.splits[name])) for name in self.eval_splits}
        return TaskData(prepare(self.splits["train"]), evals, self.data_notes())

    def collator(self, tokenizer):
        return DataCollatorWithPadding(tokenizer)

    # -- evaluation ---------------------------------------------------------------------------
    def predict(self, model, batch: dict) -> dict[str, torch.Tensor]:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        preds = logits.squeeze(-1).float() if self.spec.regression else logits.argmax(-1)  # (batch,)
        return {"preds": preds, "labels": batch["labels"]}

    def score(self, split: str, outputs: list[dict]) -> dict[str, float]:
        preds, refs = (torch.cat([out[k] for out in outputs]).numpy() for k in ("preds", "labels"))
        return metrics.compute(self.spec.metrics, preds, refs)

    def trivial_scores(self, evals: dict) -> dict[str, list[float]]:
        """Each metric's value for every constant prediction (each class; for regression a constant,
        whose correlations are 0): majority- and minority-class accuracy, MCC 0, F1 of all-positive."""
        out = {}
        for split, ds in evals.items():
            y = np.asarray(ds["labels"])
            classes = [0.0] if self.spec.regression else range(self.num_labels)
            constants = [np.full(len(y), k) for k in classes]
            for name in self.spec.metrics:
                out[f"{split}/{name}"] = [metrics.compute([name], c, y)[name] for c in constants]
        return out


def by_length(ds: Dataset) -> Dataset:
    return ds.select(np.argsort([len(ids) for ids in ds["input_ids"]], kind="stable"))


for _name in GLUE:
    TASKS.add(_name, Glue, TaskConfig)
