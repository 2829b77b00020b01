"""SQuAD scoring, written to behave as the official v1.1 and v2.0 evaluation scripts do.

Both normalise an answer by lower-casing, dropping ASCII punctuation, dropping the articles a/an/the and
collapsing whitespace; a prediction is scored against every gold answer and keeps the best (EM and F1
separately). Token F1 is the harmonic mean of precision and recall over the bag of normalised tokens.

Where the two versions differ (kept apart on purpose, ``version`` selects):
  * v2 drops gold answers that normalise to the empty string, and a question without gold answers
    (unanswerable) is scored against ``""``: only an empty prediction earns 1.
  * v2 F1 is ``1`` when both prediction and gold normalise to nothing and ``0`` when only one does;
    v1 F1 is ``0`` whenever no token is shared (so an empty prediction scores 0 F1 even on an empty gold).
  * v2 reports ``exact``, ``f1``, ``total`` and the ``HasAns_*`` / ``NoAns_*`` breakdown; v1 reports
    ``exact_match`` and ``f1``. All scores are percentages.
A question with no prediction scores 0 in both versions (the v1 script's rule; the v2 script would stop
with a KeyError).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the official order of steps)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str, version: int = 1) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if version == 2 and (not pred or not ref):
        return float(pred == ref)
    shared = sum((Counter(pred) & Counter(ref)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(pred), shared / len(ref)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answers: list[str], version: int) -> list[str]:
    """The gold answers a prediction is compared with (v2: non-empty after normalisation, else [""])."""
    if version == 1:
        return list(answers)
    return [a for a in answers if normalize_answer(a)] or [""]


def score_one(prediction: str, answers: list[str], version: int) -> tuple[float, float]:
    """(EM, F1) of one prediction as fractions: the best over the gold answers."""
    golds = gold_answers(answers, version)
    if not golds:  # v1 question without answers: nothing can match
        return 0.0, 0.0
    return max(exact(prediction, g) for g in golds), max(f1(prediction, g, version) for g in golds)


def score(items: Iterable[tuple[str | None, list[str]]], version: int = 1) -> dict:
    """Official-format scores of (prediction, gold answer texts) pairs; ``None`` = no prediction (0)."""
    rows = []  # (has_answer, EM, F1)
    for prediction, answers in items:
        em, f = (0.0, 0.0) if prediction is None else score_one(prediction, answers, version)
        rows.append((bool(answers), em, f))
    if version == 1:
        return {"exact_match": _pct(r[1] for r in rows), "f1": _pct(r[2] for r in rows)}
    out = _block("", rows)
    for prefix, has in (("HasAns_", True), ("NoAns_", False)):
        subset = [r for r in rows if r[0] == has]
        if subset:
            out |= _block(prefix, subset)
    return out


def _pct(values: Iterable[float]) -> float:
    values = list(values)
    return 100.0 * sum(values) / len(values) if values else 0.0


def _block(prefix: str, rows: list[tuple[bool, float, float]]) -> dict:
    return {
        f"{prefix}exact": _pct(r[1] for r in rows),
        f"{prefix}f1": _pct(r[2] for r in rows),
        f"{prefix}total": len(rows),
    }


def questions(dataset: dict) -> Iterable[tuple[str, list[str]]]:
    """(question id, gold answer texts) of an official SQuAD json (``{"data": [articles]}``)."""
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                yield qa["id"], [a["text"] for a in qa["answers"]]


def score_predictions(dataset: dict, predictions: dict[str, str], version: int = 1) -> dict:
    """What the official script prints for a dataset json and a {question id: answer text} mapping."""
    return score(((predictions.get(qid), answers) for qid, answers in questions(dataset)), version)
