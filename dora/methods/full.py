"""Full fine-tuning: every parameter trains."""

from dataclasses import dataclass

from dora.config import MethodConfig
from dora.methods import METHODS
from dora.methods.base import Method, count, freeze_all_but


@dataclass
class FullConfig(MethodConfig):
    name: str = "full"
    lr: float = 2e-5  # RoBERTa (Liu et al. 2019) GLUE search range {1e-5, 2e-5, 3e-5}


@METHODS.register("full", config=FullConfig)
class Full(Method):
    trains_backbone = True  # tunes pretrained weights itself (tests/test_methods.py)

    def apply(self, model, info):
        self.info = info
        freeze_all_but(model, lambda name: True)
        return model

    def budget_params(self, model):
        return count(model, lambda name, p: not self.is_head(name))
