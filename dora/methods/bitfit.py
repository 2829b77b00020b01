"""BitFit (Ben Zaken et al., 2022): train every bias term, LayerNorm biases included, and the head."""

from dataclasses import dataclass

from dora.config import MethodConfig
from dora.methods import METHODS
from dora.methods.base import Method, count, freeze_all_but


@dataclass
class BitFitConfig(MethodConfig):
    name: str = "bitfit"
    lr: float = 1e-3  # BitFit paper's search range {1e-4, 4e-4, 7e-4, 1e-3}


def is_bias(name: str) -> bool:
    return name.endswith(".bias") or name == "bias"


@METHODS.register("bitfit", config=BitFitConfig)
class BitFit(Method):
    trains_backbone = True  # tunes pretrained weights itself (tests/test_methods.py)

    def apply(self, model, info):
        self.info = info
        freeze_all_but(model, lambda name: is_bias(name) or self.is_head(name))
        return model

    def budget_params(self, model):
        """Bias parameters outside the task head (paper: ~0.10M on roberta-base)."""
        return count(model, lambda name, p: is_bias(name) and not self.is_head(name))
