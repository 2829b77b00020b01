"""Glue shared by the methods that wrap Hugging Face PEFT (LoRA, AdaLoRA): wrap, don't fork.

``PeftMethod.apply`` injects PEFT layers into exactly the matrices ``dora.models.adapted_linears`` names
(the same ones DynDoRA adapts, docs/dyndora.md#adapted-matrices) and keeps the task head trainable
through PEFT's ``modules_to_save``, so ``save_pretrained`` stores the head too
(docs/dyndora.md#saved-adapters). The runner trains the *inner* transformers model
(``peft_model.base_model.model``): its parameter names match every other method's, and nothing
PEFT-specific (such as AdaLoRA's regulariser) hides inside its ``forward``.
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from dora.methods.base import Method, TaskInfo
from dora.models import adapted_linears

ADAPTER = "default"  # PEFT's adapter name; one adapter per run
EXPORT_DIR = "peft_adapter"  # <output_dir>/peft_adapter: loads with peft.PeftModel.from_pretrained


def target_names(model: nn.Module, family: str) -> list[str]:
    """Full module names of the adapted matrices: PEFT matches a full name exactly, so BART's
    ``classification_head.out_proj`` can never be caught by an ``out_proj`` suffix."""
    return [name for name, _ in adapted_linears(model, family)]


def lora_layers(model: nn.Module) -> list[tuple[str, LoraLayer]]:
    """(module name, PEFT layer) for every injected LoRA/AdaLoRA layer, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


class PeftMethod(Method):
    """A method implemented by a PEFT config. Subclasses build the config in ``peft_config``."""

    uses_budget = True
    export_dir = EXPORT_DIR

    def __init__(self, cfg, budget):
        super().__init__(cfg, budget)
        self.peft: PeftModel | None = None

    def peft_config(self, targets: list[str], head: list[str], info: TaskInfo) -> PeftConfig:
        raise NotImplementedError

    def apply(self, model: nn.Module, info: TaskInfo) -> nn.Module:
        self.info = info
        targets = target_names(model, info.family)
        config = self.peft_config(targets, list(info.head_prefixes) or None, info)
        self.peft = get_peft_model(model, config)  # freezes all but the adapter and modules_to_save
        return self.peft.base_model.model

    def export(self, model: nn.Module, out_dir: str | Path) -> Path:
        """PEFT adapter folder (adapter weights, head, config) next to result.json."""
        path = Path(out_dir) / self.export_dir
        self.peft.save_pretrained(str(path))
        return path

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold the low-rank update into the frozen weights (do it in fp32:
        docs/dyndora.md#merge-precision); returns the plain transformers model with the trained head."""
        return self.peft.merge_and_unload()
