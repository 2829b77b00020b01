"""The adapted linear layer of DynDoRA (spec §1): r' rank-1 components, each with its own gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D


class DynDoRALinear(nn.Module):
    """``y = W0·x + b0 + (α/r')·B·diag(c)·A·dropout(x)`` around a frozen ``nn.Linear``.

    Component i is the triplet (row ``A_i``, column ``B_i``, gate ``c_i``):
    ``lora_A`` (r', d_in), ``lora_B`` (d_out, r'), ``lora_c`` (r',) kept in fp32.
    A and B are Kaiming-uniform (B is *not* zero, unlike LoRA) and c = 0, so ΔW = 0 at step 0 and at
    first only c gets a gradient. The divisor r' is the initial number of components and never changes
    when components are pruned (pruning zeroes gates; shapes stay at r' during training).
    """

    def __init__(self, base: nn.Linear, r_init: int, alpha: float, dropout: float):
        super().__init__()
        self.base_layer = base
        self.r_init = r_init
        self.scaling = alpha / r_init  # α/r'
        kw = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.empty(r_init, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r_init, **kw))
        self.lora_c = nn.Parameter(torch.zeros(r_init, dtype=torch.float32, device=base.weight.device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_A)  # a=0: bound sqrt(6 / d_in), as nn.Linear(d_in, r') in the code
        nn.init.kaiming_uniform_(self.lora_B)  # bound sqrt(6 / r'), as nn.Linear(r', d_out)

    # The wrapped layer still looks like a linear to code that inspects it.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)  # (..., d_out)
        h = F.linear(self.dropout(x), self.lora_A)  # (..., r')
        # Gates and α/r' are folded into B, a (d_out, r') op, instead of two elementwise passes over
        # the (..., r') and (..., d_out) activations; the gate product is cast to B's dtype so a bf16
        # model stays bf16 (c is fp32).
        b = self.lora_B * (self.lora_c * self.scaling).to(self.lora_B.dtype)  # (d_out, r')
        # y + h·bᵀ as one GEMM accumulating into y (beta = 1): no separate add over (..., d_out).
        out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]).to(y.dtype), b.T.to(y.dtype))
        return out.view(y.shape)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r')·B·diag(c)·A in fp32, shape (d_out, d_in)."""
        return self.scaling * (self.lora_B.float() * self.lora_c) @ self.lora_A.float()

    def base_delta(self) -> torch.Tensor:
        """ΔW laid out like the wrapped layer's weight (what merging adds to it), fp32."""
        return self.delta_weight()

    def extra_repr(self) -> str:
        return f"r'={self.r_init}, scaling={self.scaling:g}"


class DynDoRAConv1D(DynDoRALinear):
    """DynDoRA around GPT-2's ``Conv1D``: a linear whose weight is stored transposed, (d_in, d_out).

    Only the shapes differ: A is (r', d_in) and B (d_out, r') as for ``nn.Linear``, the forward is the
    same (the base layer computes x·W + b itself), and merging adds ΔWᵀ to the stored weight."""

    @property
    def in_features(self) -> int:
        return self.base_layer.nx

    @property
    def out_features(self) -> int:
        return self.base_layer.nf

    def base_delta(self) -> torch.Tensor:
        return self.delta_weight().T  # (d_in, d_out), Conv1D's layout


def inject(model: nn.Module, targets: list[tuple[str, nn.Module]], r_init: int, alpha: float, dropout: float):
    """Replace each (name, linear or Conv1D) of ``targets`` by a DynDoRA layer; returns them in order."""
    layers = []
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        kind = DynDoRAConv1D if isinstance(linear, Conv1D) else DynDoRALinear
        layer = kind(linear, r_init, alpha, dropout)
        setattr(model.get_submodule(parent_name), attr, layer)
        layers.append(layer)
    return layers


def unwrap(model: nn.Module, names: list[str], merge: bool) -> nn.Module:
    """Put the original linears back (optionally with ΔW folded into W0, computed in fp32)."""
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = getattr(parent, attr)
        if not isinstance(layer, DynDoRALinear):
            raise ValueError(f"{name} is not a DynDoRA layer (merged already?)")
        base = layer.base_layer
        if merge:
            with torch.no_grad():
                base.weight.copy_((base.weight.float() + layer.base_delta()).to(base.weight.dtype))
        setattr(parent, attr, base)
    return model
