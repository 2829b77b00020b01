"""From start/end logits of token windows to answer texts.

Standard protocol (default, one answer per question, as HF ``run_qa``): over all windows of a question,
candidate spans pair one of the ``n_best`` highest start logits with one of the ``n_best`` highest end
logits; a span must lie in the context, end at or after its start and be at most ``max_answer_length``
tokens long; its score is start + end logit. The answer is the best span's context text. v2 answers ""
when the null score (start + end logit of <s>, the lowest over the question's windows) exceeds the best
span's score by more than ``null_threshold``.

Paper protocol (``protocol=window``, docs/dyndora.md#squad-protocol): every window is a scored item
of its own, with its question's gold answers; v1 drops windows that do not hold the answer, v2 keeps all
and answers "" in a window when that window's null score minus its best span score exceeds the threshold.
Optimistic and not comparable with the official numbers; kept to reproduce the paper's tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Span:
    score: float  # start + end logit
    start: int  # character offsets of the text in the context, [start, end)
    end: int


def best_span(start: np.ndarray, end: np.ndarray, offsets: np.ndarray, n_best: int, max_len: int):
    """Best valid span of one window (logits (tokens,), offsets (tokens, 2), -1 = not context) or None."""
    s_idx = np.argsort(-start, kind="stable")[:n_best]  # (k,) token indices, best first
    e_idx = np.argsort(-end, kind="stable")[:n_best]
    in_ctx = offsets[:, 0] >= 0
    length = e_idx[None, :] - s_idx[:, None] + 1  # (k, k) span lengths in tokens
    valid = in_ctx[s_idx][:, None] & in_ctx[e_idx][None, :] & (length >= 1) & (length <= max_len)
    if not valid.any():
        return None
    scores = start[s_idx][:, None] + end[e_idx][None, :]
    i, j = np.unravel_index(np.argmax(np.where(valid, scores, -np.inf)), scores.shape)
    return Span(float(scores[i, j]), int(offsets[s_idx[i], 0]), int(offsets[e_idx[j], 1]))


def null_score(start: np.ndarray, end: np.ndarray) -> float:
    return float(start[0] + end[0])  # the <s> token stands for "no answer"


def answer(context: str, span: Span | None, null: float, version: int, threshold: float) -> str:
    if span is None:
        return ""
    if version == 2 and null - span.score > threshold:
        return ""
    return context[span.start : span.end]


def per_question(windows, logits, contexts, version: int, cfg) -> list[str]:
    """One answer per example. ``logits[w]`` = (start, end) arrays of window w; ``windows.example[w]``
    its example row; windows without logits (not evaluated) are ignored."""
    best: dict[int, Span | None] = {}
    null: dict[int, float] = {}
    for w, (start, end) in logits.items():
        row = windows.example[w]
        span = best_span(start, end, windows.offsets[w], cfg.n_best, cfg.max_answer_length)
        if span is not None and (best.get(row) is None or span.score > best[row].score):
            best[row] = span
        else:
            best.setdefault(row, None)
        null[row] = min(null.get(row, np.inf), null_score(start, end))
    return [
        answer(contexts[row], best.get(row), null.get(row, np.inf), version, cfg.null_threshold)
        for row in range(len(contexts))
    ]


def per_window(windows, logits, contexts, version: int, cfg) -> dict[int, str]:
    """One answer per evaluated window (paper protocol): {window index: text}."""
    out = {}
    for w, (start, end) in logits.items():
        span = best_span(start, end, windows.offsets[w], cfg.n_best, cfg.max_answer_length)
        out[w] = answer(
            contexts[windows.example[w]], span, null_score(start, end), version, cfg.null_threshold
        )
    return out


def window_kept(windows, w: int, answers: list[str], version: int) -> bool:
    """Paper protocol: v1 scores only windows holding the answer; v2 scores every window."""
    return version == 2 or windows.start_positions[w] != 0 or not answers
