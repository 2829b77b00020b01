"""LoRA (Hu et al., ICLR 2022) through Hugging Face PEFT, on the matrices DynDoRA adapts.

Per adapted weight W0 (d_out x d_in): y = W0 x + (alpha / r) B A dropout(x), A (r x d_in) Kaiming-uniform,
B (d_out x r) zero, so the model is exactly the base model at step 0. ``budget=low|high`` -> r = 2 / 8
(r x 165,888 = 0.33M / 1.33M on roberta-base: docs/dyndora.md#budgets).
"""

from dataclasses import dataclass

from peft import LoraConfig

from dora.config import MethodConfig
from dora.methods import METHODS
from dora.methods._peft import PeftMethod, lora_layers


@dataclass
class LoraMethodConfig(MethodConfig):
    """``alpha``: LoRA's alpha, kept fixed when r changes (LoRA §4.1: "we simply set alpha to the first
    r we try and do not tune it"); 8 = LoRA paper Table 9 for roberta-base, and DynDoRA's alpha.
    ``dropout``: on the adapter's input, 0.1 as DynDoRA's for an equal comparison
    (docs/dyndora.md#parameterisation)."""

    name: str = "lora"
    lr: float = 5e-4  # LoRA paper Table 9 (roberta-base): 4e-4 or 5e-4 per task
    alpha: float = 8.0
    dropout: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.alpha <= 0:
            raise ValueError(f"method.alpha={self.alpha}; must be > 0")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"method.dropout={self.dropout}; must be in [0, 1)")


@METHODS.register("lora", config=LoraMethodConfig)
class Lora(PeftMethod):
    """LoRA with rank r = budget.rank on every adapted matrix; the head is trained (modules_to_save)."""

    def peft_config(self, targets, head, info):
        return LoraConfig(
            r=self.budget.rank,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            target_modules=targets,
            modules_to_save=head,
            bias="none",
        )

    def budget_params(self, model):
        """Sum over adapted matrices of r (d_in + d_out): the A and B entries
        (docs/dyndora.md#parameter-counts)."""
        return sum(
            layer.r[name] * (layer.in_features + layer.out_features)
            for _, layer in lora_layers(model)
            for name in layer.r
        )
