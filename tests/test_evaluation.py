"""The evaluation driver (tasks.base.evaluate_split): tasks give predict + score, the driver owns the
model's mode, gradients and gathering."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from tasks.base import Task, evaluate_split


class Probe(Task):
    """predict records what it saw; score sums every gathered output."""

    def __init__(self, fail_at: int | None = None):
        self.seen, self.fail_at = [], fail_at

    def predict(self, model, batch):
        if len(self.seen) == self.fail_at:
            raise RuntimeError("predict failed")
        self.seen.append((model.training, torch.is_grad_enabled()))
        return {"y": model(batch["x"]), "index": batch["i"]}

    def score(self, split, outputs):
        assert all(out["y"].device.type == "cpu" for out in outputs)
        return {
            "sum": float(sum(out["y"].sum() for out in outputs)),
            "rows": float(sum(len(o["index"]) for o in outputs)),
        }


def batches(n: int = 3):
    return [{"x": torch.ones(2, 1) * k, "i": torch.arange(2) + 2 * k} for k in range(n)]


@pytest.mark.parametrize("training", [True, False])
def test_predict_runs_in_eval_mode_without_gradients_and_the_mode_comes_back(training):
    model, task = nn.Linear(1, 1, bias=False), Probe()
    nn.init.constant_(model.weight, 2.0)
    model.train(training)
    metrics = evaluate_split(task, model, batches(), Accelerator(cpu=True), "dev")
    assert metrics == {"dev/sum": 2.0 * 2 * (0 + 1 + 2), "dev/rows": 6.0}
    assert task.seen == [(False, False)] * 3
    assert model.training is training


def test_a_failing_evaluation_leaves_the_model_in_training_mode():
    model = nn.Linear(1, 1).train()
    with pytest.raises(RuntimeError, match="predict failed"):
        evaluate_split(Probe(fail_at=1), model, batches(), Accelerator(cpu=True), "dev")
    assert model.training and torch.is_grad_enabled()
