"""Bottleneck adapters for transformers 5: Houlsby (Houlsby et al., ICML 2019) and Pfeiffer (Pfeiffer
et al., EACL 2021). Written here because AdapterHub's ``adapters`` library pins transformers 4.x.

An adapter maps a sublayer's output h (..., d) to h + W_up act(W_down h + b_down) + b_up, with
W_down (m x d) and W_up (d x m): 2dm + m + d parameters. It runs as a forward hook on the sublayer's
output projection, i.e. on the sublayer output before dropout, the residual add and the LayerNorm
(Houlsby's position), and the same code serves RoBERTa, BERT-style (MiniLM) and BART encoder and
decoder layers without copying any transformers code:

- Houlsby: two per layer, after the attention output projection (the family's ``attention_output``:
  RoBERTa/BERT ``attention.output.dense``, BART ``self_attn.out_proj``; BART's cross-attention gets none,
  as AdapterHub's default) and after the feed-forward output projection (``ffn_output``: ``output.dense``
  / ``fc2``). Bottleneck m = 4r: 8 / 32.
- Pfeiffer: one per layer, after the feed-forward output projection. m = 8r: 16 / 64.
  (AdapterHub's Pfeiffer also re-applies the layer's LayerNorm around the adapter, which is not an
  identity at init; here it is the same near-identity module at the feed-forward output.)

Parameter counts (roberta-base, 12 layers, d = 768; docs/dyndora.md#parameter-counts):
Houlsby 12 x 2 x (2 x 768m + m + 768), Pfeiffer
12 x (2 x 768m + m + 768). Near-identity init (Houlsby §2.1): weights ~ N(0, 1e-2) truncated at two
standard deviations, biases 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dora import families
from dora.config import MethodConfig
from dora.methods import METHODS
from dora.methods.base import Method, freeze_all_but
from dora.models import adapted_linears

ACTIVATIONS = {"relu": nn.ReLU, "swish": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh}


@dataclass
class AdapterConfig(MethodConfig):
    """Shared schema. ``size``: bottleneck m; null = ``per_rank`` x budget.rank (docs/dyndora.md#budgets)."""

    name: str = "houlsby"
    lr: float = 3e-4  # Houlsby et al. grid {3e-5, 3e-4, 3e-3}; microsoft/LoRA adapter scripts: 3e-4
    size: int | None = None
    per_rank: int = 4
    activation: str = "swish"
    init_std: float = 1e-2  # std of the truncated-normal weight init (near identity)

    def __post_init__(self):
        super().__post_init__()
        if self.size is not None and self.size <= 0:
            raise ValueError(f"method.size={self.size}; must be > 0 or null")
        if self.per_rank <= 0:
            raise ValueError(f"method.per_rank={self.per_rank}; must be > 0")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"method.activation={self.activation!r}; valid: {', '.join(sorted(ACTIVATIONS))}"
            )
        if self.init_std < 0:
            raise ValueError(f"method.init_std={self.init_std}; must be >= 0")


@dataclass
class HoulsbyConfig(AdapterConfig):
    name: str = "houlsby"
    per_rank: int = 4  # m = 8 / 32 for r = 2 / 8
    activation: str = "swish"  # AdapterHub's Houlsby config


@dataclass
class PfeifferConfig(AdapterConfig):
    name: str = "pfeiffer"
    per_rank: int = 8  # m = 16 / 64 for r = 2 / 8
    activation: str = "relu"  # AdapterHub's Pfeiffer config


class Bottleneck(nn.Module):
    """h -> h + up(act(down(h))): (..., d) -> (..., m) -> (..., d)."""

    def __init__(self, d: int, m: int, activation: str, init_std: float):
        super().__init__()
        self.down = nn.Linear(d, m)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(m, d)
        for layer in (self.down, self.up):
            nn.init.trunc_normal_(layer.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


def _run_adapter(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of an output projection: its output goes through the adapter it carries."""
    return module.adapter(output)


class BottleneckAdapters(Method):
    """Adapters after the sublayer outputs named in ``positions`` (fields of ``dora.families.Family``:
    attention_output, ffn_output); backbone frozen, head trained."""

    uses_budget = True
    init_identity = "near"  # small random init: close to, not equal to, the base model at step 0
    positions: tuple[str, ...] = ()

    def size(self) -> int:
        return self.cfg.size or self.cfg.per_rank * self.budget.rank

    def sites(self, model: nn.Module, family: str) -> list[tuple[str, nn.Linear]]:
        """The adapted matrices at ``positions``, in module order (adapted_linears excludes the head)."""
        fam = families.get(family)
        wanted = {getattr(fam, p) for p in self.positions}
        return [
            (n, m) for n, m in adapted_linears(model, family) if fam.targets.search(n)["matrix"] in wanted
        ]

    def apply(self, model, info):
        self.info = info
        freeze_all_but(model, self.is_head)
        for _, linear in self.sites(model, info.family):
            w = linear.weight
            adapter = Bottleneck(linear.out_features, self.size(), self.cfg.activation, self.cfg.init_std)
            linear.add_module("adapter", adapter.to(device=w.device, dtype=w.dtype))
            linear.register_forward_hook(_run_adapter)
        return model

    def adapters(self, model: nn.Module) -> list[Bottleneck]:
        return [m for m in model.modules() if isinstance(m, Bottleneck)]

    def budget_params(self, model):
        """Every adapter weight and bias: sites x (2dm + m + d) (docs/dyndora.md#parameter-counts)."""
        return sum(p.numel() for a in self.adapters(model) for p in a.parameters())

    def closed_form_params(self, model: nn.Module, family: str) -> int:
        """The paper's count from the architecture's config alone: layers x adapters per layer x
        (2dm + m + d) (docs/dyndora.md#parameter-counts)."""
        layers, d = families.get(family).sizes(model.config)
        m = self.size()
        return layers * len(self.positions) * (2 * d * m + m + d)


@METHODS.register("houlsby", config=HoulsbyConfig)
class Houlsby(BottleneckAdapters):
    """Two adapters per layer: after attention and after the feed-forward block."""

    positions = ("attention_output", "ffn_output")


@METHODS.register("pfeiffer", config=PfeifferConfig)
class Pfeiffer(BottleneckAdapters):
    """One adapter per layer, after the feed-forward block."""

    positions = ("ffn_output",)
