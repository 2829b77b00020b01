"""DynDoRA's output: a standard PEFT LoRA adapter (``peft_lora/``). Rank heatmaps are drawn by
scripts/figures.py from result.json's rank_pattern."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from dora.methods.dyndora.layer import DynDoRAConv1D, DynDoRALinear, unwrap


def lora_weights(layer: DynDoRALinear) -> tuple[torch.Tensor, torch.Tensor]:
    """The active components as LoRA factors: A (k, d_in) and B·diag(c) (d_out, k); pruned dropped."""
    keep = layer.lora_c.detach() != 0
    a = layer.lora_A.detach()[keep]
    b = (layer.lora_B.detach().float() * layer.lora_c.detach())[:, keep].to(layer.lora_B.dtype)
    return a, b


# The PEFT task type of a model class, by the suffix of its name (None: a bare model, PeftModel itself);
# the harness's head kinds map to these classes (dora.models.HEADS), so this is its one PEFT task table.
_TASK_SUFFIXES = (
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
)


def peft_task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    return next((task for suffix, task in _TASK_SUFFIXES if name.endswith(suffix)), None)


def export_peft(model: nn.Module, layers: dict[str, DynDoRALinear], out: Path, alpha: float, dropout: float,
                modules_to_save, task_type: str | None):  # fmt: skip
    """Write ``out`` as a LoRA adapter that plain ``PeftModel.from_pretrained(base, out)`` loads.

    Per module: rank k = active components, ``alpha_pattern`` = α·k/r' so PEFT's scaling α_m/k equals
    DynDoRA's α/r'; gates are folded into B; ``modules_to_save`` (the task head) are saved whole. GPT-2's
    Conv1D targets are exported with ``fan_in_fan_out`` (PEFT's flag for a transposed weight)."""
    from peft import LoraConfig, get_peft_model

    factors = {name: lora_weights(layer) for name, layer in layers.items()}
    ranks = {name: a.shape[0] for name, (a, _) in factors.items() if a.shape[0] > 0}
    if not ranks:
        raise ValueError("every DynDoRA component is pruned: nothing to export")
    r_init = next(iter(layers.values())).r_init
    conv1d = [isinstance(layers[name], DynDoRAConv1D) for name in ranks]
    if any(conv1d) and not all(conv1d):
        raise ValueError("cannot export Conv1D and nn.Linear targets in one PEFT adapter (fan_in_fan_out)")
    config = LoraConfig(
        r=max(ranks.values()),
        lora_alpha=alpha,
        target_modules=sorted(ranks),
        rank_pattern=ranks,
        alpha_pattern={name: alpha * k / r_init for name, k in ranks.items()},
        lora_dropout=dropout,
        bias="none",
        modules_to_save=list(modules_to_save) or None,
        task_type=task_type,
        fan_in_fan_out=all(conv1d),
    )
    base = unwrap(copy.deepcopy(model).cpu(), list(layers), merge=False)  # trained head, frozen W0
    peft_model = get_peft_model(base, config)
    inner = peft_model.base_model.model
    with torch.no_grad():
        for name in ranks:
            a, b = factors[name]
            target = inner.get_submodule(name)
            target.lora_A["default"].weight.copy_(a)
            target.lora_B["default"].weight.copy_(b)
    peft_model.save_pretrained(str(out))
    return config
