"""SQuAD records and their token windows.

A question and its context become one or more windows ``<s> question </s></s> context-piece </s>`` of at
most ``max_length`` tokens; consecutive windows of one context overlap by ``stride`` tokens (HF's
``doc_stride``), so every answer lies whole inside at least one window unless it is longer than the overlap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from dora.errors import UserError


@dataclass
class Examples:
    """Flattened SQuAD questions in file order; ``answers[i]`` empty = unanswerable (v2)."""

    ids: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)
    answers: list[list[str]] = field(default_factory=list)  # gold texts
    starts: list[list[int]] = field(default_factory=list)  # character offsets of the gold texts

    def __len__(self) -> int:
        return len(self.ids)

    def slice(self, lo: int, hi: int) -> Examples:
        return Examples(*(getattr(self, k)[lo:hi] for k in self.__dataclass_fields__))


def read_json(path: str) -> Examples:
    """The questions of an official SQuAD json file (v1.1 or v2.0 layout)."""
    try:
        with open(path, encoding="utf-8") as f:
            articles = json.load(f)["data"]
        ex = Examples()
        for article in articles:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    ex.ids.append(qa["id"])
                    ex.questions.append(qa["question"])
                    ex.contexts.append(paragraph["context"])
                    ex.answers.append([a["text"] for a in qa["answers"]])
                    ex.starts.append([int(a["answer_start"]) for a in qa["answers"]])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(
            f"malformed SQuAD file {path}: {type(e).__name__} {e}; expected the official layout "
            "{data: [{paragraphs: [{context, qas: [{id, question, answers: [{text, answer_start}]}]}]}]}"
        ) from None
    check_starts(path, ex)
    return ex


def check_starts(path: str, ex: Examples) -> None:
    """Every gold answer must lie inside its context: a start outside it would train on a wrong span.
    Refused with the count and the first offender."""
    bad = [
        (qid, start, len(context))
        for qid, context, texts, starts in zip(ex.ids, ex.contexts, ex.answers, ex.starts, strict=True)
        for text, start in zip(texts, starts, strict=True)
        if not 0 <= start <= len(context) - len(text)
    ]
    if bad:
        qid, start, n = bad[0]
        total = sum(len(s) for s in ex.starts)
        raise UserError(
            f"malformed SQuAD file {path}: {len(bad)} of {total} answers have an answer_start outside their "
            f"context (first: question {qid!r}, answer_start {start}, context of {n} characters); "
            "valid: 0 <= answer_start <= len(context) - len(text)"
        )


def from_hub(ds) -> Examples:
    """Examples of a hub SQuAD split (columns id, question, context, answers{text, answer_start})."""
    answers = ds["answers"]
    return Examples(
        list(ds["id"]),
        list(ds["question"]),
        list(ds["context"]),
        [list(a["text"]) for a in answers],
        [[int(s) for s in a["answer_start"]] for a in answers],
    )


@dataclass
class Windows:
    """Token windows of a set of examples."""

    input_ids: list[list[int]]
    example: list[int]  # window -> example row
    offsets: list[np.ndarray]  # (tokens, 2) character span of each token in the context; -1 outside it
    start_positions: list[int]  # token index of the first answer's start in the window; 0 (<s>) = none
    end_positions: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def cut_questions(tokenizer, questions: list[str], max_tokens: int) -> list[str]:
    """Questions without leading blanks, cut to ``max_tokens`` tokens (BERT's max_query_length) so the
    window always has room for context."""
    questions = [q.lstrip() for q in questions]
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    return [
        q if len(offs) <= max_tokens else q[: offs[max_tokens - 1][1]]
        for q, offs in zip(questions, enc["offset_mapping"], strict=True)
    ]


def make_windows(tokenizer, ex: Examples, max_length: int, stride: int, max_question: int) -> Windows:
    enc = tokenizer(
        cut_questions(tokenizer, ex.questions, max_question),
        ex.contexts,
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    out = Windows(enc["input_ids"], list(enc["overflow_to_sample_mapping"]), [], [], [])
    for i, row in enumerate(out.example):
        offsets = np.array(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
        in_context = np.array([s == 1 for s in enc.sequence_ids(i)])
        offsets[~in_context] = -1
        out.offsets.append(offsets)
        start, end = answer_tokens(offsets, ex.answers[row], ex.starts[row])
        out.start_positions.append(start)
        out.end_positions.append(end)
    return out


def answer_tokens(offsets: np.ndarray, answers: list[str], starts: list[int]) -> tuple[int, int]:
    """Token span of the first gold answer when it lies whole in the window, else (0, 0): the <s> token
    stands for "no answer here" (v2 unanswerable questions, and windows that miss the answer)."""
    if not answers:
        return 0, 0
    s_char, e_char = starts[0], starts[0] + len(answers[0])  # [s_char, e_char) in the context
    ctx = np.flatnonzero(offsets[:, 0] >= 0)
    if len(ctx) == 0 or offsets[ctx[0], 0] > s_char or offsets[ctx[-1], 1] < e_char:
        return 0, 0
    first = ctx[0] + int(np.sum(offsets[ctx, 0] <= s_char)) - 1  # last token starting at or before s_char
    last = ctx[-1] - int(np.sum(offsets[ctx, 1] >= e_char)) + 1  # first token ending at or after e_char
    return int(first), int(last)
