"""DynDoRA (Dynamic Rank Distribution, Mao et al. ACL 2024) for your own model and training loop.

Not PEFT's ``use_dora`` (Weight-Decomposed LoRA, Liu et al. 2024): a different method. Importing this
module does not import Hydra. See the README, "Use DynDoRA in your own training"::

    from dora.dyndora import DynDoRAConfig, DynDoRATrainer, inject_dyndora

    dyndora = inject_dyndora(model, DynDoRAConfig(r=8, dem_coef=0.1, prune_interval=50))
    DynDoRATrainer(model=model, args=args, train_dataset=ds, dyndora=dyndora).train()
    dyndora.export_peft("adapter/")   # a standard PEFT LoRA adapter, per-module ranks
"""

from dora.methods.dyndora.api import DynDoRAConfig, DynDoRAController, inject_dyndora
from dora.methods.dyndora.hf import STATE_FILE, DynDoRACallback, DynDoRATrainer, DynDoRATrainerMixin
from dora.methods.dyndora.layer import DynDoRAConv1D, DynDoRALinear
from dora.methods.dyndora.targets import PRESETS

__all__ = [
    "PRESETS",
    "STATE_FILE",
    "DynDoRACallback",
    "DynDoRAConfig",
    "DynDoRAController",
    "DynDoRAConv1D",
    "DynDoRALinear",
    "DynDoRATrainer",
    "DynDoRATrainerMixin",
    "inject_dyndora",
]
