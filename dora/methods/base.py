"""The method contract: the runner calls nothing but these hooks (design.md, "Plug-in contracts")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dora.config import BudgetConfig, MethodConfig


@dataclass(frozen=True)
class TaskInfo:
    """What a method may know about the run it is applied to."""

    name: str  # task name, e.g. "rte"
    head: str  # seq_cls | regression | qa | seq2seq
    family: str  # the backbone's family (dora.families): roberta, bert, bart, ...
    head_prefixes: tuple[str, ...]  # parameter-name prefixes of the task head (trained, not counted)
    total_steps: int  # T: optimizer steps of the whole run (per process)


class Method:
    """Base class of a parameter-efficient (or full) fine-tuning method.

    Subclasses register with ``@METHODS.register(name, config=TheirConfig)`` and override what
    they need; the defaults are those of a method with no schedule, no extra loss and no state.
    """

    uses_budget = False  # whether budget=low|high changes this method (else result.budget is null)

    def __init__(self, cfg: MethodConfig, budget: BudgetConfig):
        self.cfg = cfg
        self.budget = budget
        self.info: TaskInfo | None = None

    # -- contract ---------------------------------------------------------------------------
    def apply(self, model: nn.Module, info: TaskInfo) -> nn.Module:
        """Inject modules and set ``requires_grad``; the task head must stay trainable."""
        raise NotImplementedError

    def extra_loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        """A loss term added to the task loss (e.g. DynDoRA's DEM), logged on its own."""
        return None

    def after_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Runs after optimizer.step() and scheduler.step(), before gradients are cleared.
        ``step`` counts optimizer steps from 1. Returns scalars to log."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything beyond the trainable weights needed to resume exactly."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state to load, got {sorted(state)}")

    def budget_params(self, model: nn.Module) -> int:
        """Parameter count in the paper's convention: head excluded (spec §6)."""
        raise NotImplementedError

    def best_from_step(self, total_steps: int) -> int:
        """Evaluations at or after this optimizer step are eligible for the best-epoch protocol."""
        return 0

    def diagnostics(self, model: nn.Module) -> dict[str, float]:
        """Scalars on how far training moved the method's own weights (logged at every evaluation and
        written to result.json), e.g. DynDoRA's cosine of B_i to its initial value."""
        return {}

    # optional: rank_pattern(model) -> dict, budget_history() -> list, export(model, dir), merge(model)

    # -- helpers for subclasses ---------------------------------------------------------------
    @property
    def budget_name(self) -> str | None:
        return self.budget.name if self.uses_budget else None

    def is_head(self, param_name: str) -> bool:
        assert self.info is not None, "apply() sets self.info first"
        return is_head(param_name, self.info.head_prefixes)


def is_head(param_name: str, head_prefixes: tuple[str, ...]) -> bool:
    return any(param_name == p or param_name.startswith(p + ".") for p in head_prefixes)


def freeze_all_but(model: nn.Module, keep) -> None:
    """``requires_grad = keep(name)`` for every parameter."""
    for name, p in model.named_parameters():
        p.requires_grad_(bool(keep(name)))


def count(model: nn.Module, select) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if select(name, p))
