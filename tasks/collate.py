"""A collator wrapper for evaluation sets whose rows must be mapped back to examples after batching."""

from __future__ import annotations

import torch

INDEX = "eval_index"  # column of evaluation datasets: the row's position in the task's own records


class KeepIndex:
    """Pads with ``inner`` and passes the integer ``eval_index`` column through as a (batch,) LongTensor.

    Training rows have no such column, so training batches reach ``model(**batch)`` untouched; the task's
    ``predict`` leaves the index out of its forward pass and returns it with the outputs.
    """

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, features: list[dict]) -> dict:
        if INDEX not in features[0]:
            return self.inner(features)
        index = torch.tensor([f[INDEX] for f in features], dtype=torch.long)
        batch = self.inner([{k: v for k, v in f.items() if k != INDEX} for f in features])
        batch[INDEX] = index
        return batch
