"""Classification and regression metrics (scikit-learn / scipy), returned as percentages."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def _pct(x: float) -> float:
    return float(100.0 * x)


METRICS = {
    "accuracy": lambda p, y: _pct(accuracy_score(y, p)),
    "f1": lambda p, y: _pct(f1_score(y, p, average="binary", pos_label=1, zero_division=0)),
    "mcc": lambda p, y: _pct(matthews_corrcoef(y, p)),
    "pearson": lambda p, y: _pct(pearsonr(p, y)[0]) if np.std(p) > 0 else 0.0,
    "spearman": lambda p, y: _pct(spearmanr(p, y)[0]) if np.std(p) > 0 else 0.0,
}


def compute(names, predictions, references) -> dict[str, float]:
    """``{name: value}`` for each metric name; predictions are class ids or regression scores.

    A constant regression prediction has no correlation: reported as 0 rather than NaN.
    """
    p, y = np.asarray(predictions), np.asarray(references)
    return {name: METRICS[name](p, y) for name in names}
