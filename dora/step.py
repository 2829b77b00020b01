"""The training step: one function that the runner, scripts/bench.py and the method tests all call.

Order, per micro-batch: forward -> loss = task loss + ``method.extra_loss`` -> backward; on the last
micro-batch of an accumulation: clip -> optimizer.step -> scheduler.step -> ``method.after_optimizer_step``
-> zero_grad. The method hook comes after both steps and before the gradients are cleared: AdaLoRA's
``update_and_allocate`` reads this step's gradients, and DynDoRA scores and prunes the updated weights, as
the released code does after its scheduler step (docs/dyndora.md#step-order).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from dora.methods import Method


class Trainee(Protocol):
    """What a step touches; dora.runner.Run and bench.py's Bench carry these fields."""

    model: nn.Module
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    total_steps: int  # T, passed to the method hook


class PlainTorch:
    """The four Accelerator members a step uses, for a loop without Accelerate: one process, no
    gradient accumulation, no wrapped model (scripts and tests)."""

    sync_gradients = True  # every micro-batch ends an optimizer step

    @staticmethod
    def backward(loss: torch.Tensor) -> None:
        loss.backward()

    @staticmethod
    def clip_grad_norm_(params, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    @staticmethod
    def unwrap_model(model: nn.Module) -> nn.Module:
        return model


PLAIN = PlainTorch()


@dataclass
class StepOutcome:
    """What one micro-batch gave; the step fields are set only when the optimizer stepped."""

    loss: torch.Tensor  # the task loss of this micro-batch
    extra: torch.Tensor | None  # the method's extra loss (DEM, orthogonal regulariser), if any
    stepped: bool = False  # this micro-batch ended an optimizer step
    grad_norm: torch.Tensor | None = None  # total gradient norm before clipping
    lr: float = 0.0  # the learning rate the optimizer step used
    scalars: dict = field(default_factory=dict)  # the method hook's scalars to log


def train_step(
    t: Trainee, batch: dict, step: int, max_grad_norm: float, backend=PLAIN, autocast=nullcontext
) -> StepOutcome:
    """Forward and backward of one micro-batch; when ``backend.sync_gradients`` (always with
    ``PLAIN``; the last micro-batch of an accumulation with an Accelerator inside ``accumulate``), the
    optimizer step and the method's schedule too. ``step`` is the optimizer step this micro-batch belongs
    to, from 1; ``backend`` is an ``accelerate.Accelerator`` or ``PLAIN``; ``autocast`` wraps the
    forward (bench.py's bf16; the runner's prepared model autocasts itself)."""
    with autocast():
        loss = t.model(**batch).loss
    extra = t.method.extra_loss(backend.unwrap_model(t.model), step)
    backend.backward(loss if extra is None else loss + extra)
    if not backend.sync_gradients:
        return StepOutcome(loss, extra)
    grad_norm = backend.clip_grad_norm_(t.model.parameters(), max_grad_norm)
    lr = t.scheduler.get_last_lr()[0]  # read before scheduler.step: the rate this step uses
    t.optimizer.step()
    t.scheduler.step()
    scalars = t.method.after_optimizer_step(step, t.total_steps)
    t.optimizer.zero_grad(set_to_none=True)
    return StepOutcome(loss, extra, True, grad_norm, lr, scalars)
