"""The method contract: the runner calls nothing but these hooks (design.md, "Plug-in contracts")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    # facts the test matrix (tests/test_methods.py) checks against
    trains_backbone = False  # tunes pretrained weights itself (full, BitFit): no frozen-backbone check
    init_identity: str | None = "exact"  # output at init vs the base model: exact | near | None (no check)

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
        """Parameter count in the paper's convention: head excluded (docs/dyndora.md#parameter-counts)."""
        raise NotImplementedError

    def best_from_step(self, total_steps: int) -> int:
        """Evaluations at or after this optimizer step are eligible for the best-epoch protocol."""
        return 0

    def diagnostics(self, model: nn.Module) -> dict[str, float]:
        """Scalars on how far training moved the method's own weights (logged at every evaluation and
        written to result.json), e.g. DynDoRA's cosine of B_i to its initial value."""
        return {}

    # -- optional: None (or nothing written) where the method has nothing to give ------------
    def rank_pattern(self, model: nn.Module) -> dict[str, int] | None:
        """Active components per adapted matrix (adaptive-rank methods), for result.json."""
        return None

    def budget_history(self) -> list[list[int]] | None:
        """``[step, active components]`` at every allocation event, for result.json."""
        return None

    def export(self, model: nn.Module, out_dir: str | Path) -> Path | None:
        """Write a reusable artefact into the run folder (e.g. a PEFT adapter); returns its path."""
        return None

    def merge(self, model: nn.Module) -> nn.Module | None:
        """The model with the method's weights folded into the base weights (same outputs)."""
        return None

    def closed_form_params(self, model: nn.Module, family: str) -> int | None:
        """``budget_params`` from the architecture alone, where it has its own closed form (the test
        matrix's default for budgeted methods: r x sum of d_in + d_out over the adapted matrices)."""
        return None

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
