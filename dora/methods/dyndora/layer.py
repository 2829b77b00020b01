"""DynDoRA's adapted linear layer: r' gated rank-1 components (docs/dyndora.md#parameterisation)."""

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

    def __init__(
        self, base: nn.Linear, r_init: int, alpha: float, dropout: float, dropout_rng: str = "torch"
    ):
        super().__init__()
        self.base_layer = base
        self.r_init = r_init
        self.scaling = alpha / r_init  # α/r'
        kw = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.empty(r_init, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r_init, **kw))
        self.lora_c = nn.Parameter(torch.zeros(r_init, dtype=torch.float32, device=base.weight.device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dropout_rng = dropout_rng  # torch: nn.Dropout's random numbers | fast: see _keep_mask
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
        b = self.lora_B * (self.lora_c * self.scaling).to(self.lora_B.dtype)  # (d_out, r')
        # Gates and α/r' are folded into B, a (d_out, r') op, instead of two elementwise passes over
        # the (..., r') and (..., d_out) activations; the gate product is cast to B's dtype so a bf16
        # model stays bf16 (c is fp32).
        base = self.base_layer
        if _fused_ok(x, base, self.lora_A, b):
            p = self.dropout.p if self.training and isinstance(self.dropout, nn.Dropout) else 0.0
            keep = _keep_noise(x, p, self.dropout_rng) if p > 0 else None
            scale = torch.ones((), dtype=x.dtype).div_(1 - p).item()  # F.dropout's noise value, fl(1/(1−p))
            return _AdaptedLinearCPU.apply(x, x, base.weight, base.bias, self.lora_A, b, keep, scale)
        d_in, d_out = self.in_features, self.out_features  # Conv1D (GPT-2) stores nx, nf
        # The frozen base on 2-D rows: a fresh tensor (not a view), so the adapter adds into it in place.
        y = base(x.reshape(-1, d_in))  # (N, d_out)
        h = F.linear(self.dropout(x), self.lora_A).reshape(-1, self.r_init)  # (N, r')
        # y += h·bᵀ as one GEMM accumulating into y (beta = 1): no copy of y, no separate add.
        return y.addmm_(h.to(y.dtype), b.T.to(y.dtype)).view(*x.shape[:-1], d_out)

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


def inject(
    model: nn.Module,
    targets: list[tuple[str, nn.Module]],
    r_init: int,
    alpha: float,
    dropout: float,
    dropout_rng: str = "torch",
):
    """Replace each (name, linear or Conv1D) of ``targets`` by a DynDoRA layer; returns them in order."""
    layers = []
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        kind = DynDoRAConv1D if isinstance(linear, Conv1D) else DynDoRALinear
        layer = kind(linear, r_init, alpha, dropout, dropout_rng)
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


# -- the CPU training path: one autograd node per adapted linear ----------------------------------------
# What the composed ops cost on a CPU (torch.profiler, roberta-base shapes, README "Performance"):
# F.dropout draws a float noise tensor, divides it by 1−p and keeps it for the backward (4 bytes per
# element, three passes); the addmm copies the base output before accumulating into it; the backward
# allocates a new tensor for every elementwise step. _AdaptedLinearCPU computes the same GEMMs in the
# same order and layouts as autograd does for the composed ops (mm_mat1/mm_mat2_backward), keeps a
# bool mask (1 byte) and the dropped input, and works in place in the backward.


def _fused_ok(x: torch.Tensor, base: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> bool:
    """CPU, fp32, no autocast, frozen base (no weight or bias gradient): the fused node applies."""
    tensors = (x, base.weight, a, b) + (() if base.bias is None else (base.bias,))
    return (
        type(base) is nn.Linear  # the fused node computes x·Wᵀ: not GPT-2's Conv1D (x·W)
        and x.device.type == "cpu"
        and torch.is_grad_enabled()
        and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
        and not base.weight.requires_grad
        and not (base.bias is not None and base.bias.requires_grad)
        and not torch.is_autocast_enabled("cpu")
        and x.dim() >= 2
    )


def _keep_noise(x: torch.Tensor, p: float, rng: str) -> torch.Tensor:
    """A fresh float tensor like x holding 1 where x is kept and 0 where it is dropped.

    ``torch`` (default): ``empty_like(x).bernoulli_(1−p)``, the very draw F.dropout makes on the CPU
    before dividing by 1−p, so the masks and every later random number are nn.Dropout's, bit for bit.
    It is torch's serial mt19937, two 32-bit draws per element (~6-9 ns per element on this CPU).
    ``fast`` (opt-in, ``method.dropout_rng=fast``): one 64-bit seed drawn from torch's generator (so
    seeding, resume and several processes behave as before) feeds NumPy's PCG64; keep = u32 <
    (1−p)·2³² (~1.5 ns per element). Same distribution, other masks: not bit-identical to ``torch``."""
    if rng == "fast":
        import numpy as np

        seed = int(torch.empty((), dtype=torch.int64).random_())
        n = x.numel()
        u = np.random.PCG64(seed).random_raw((n + 1) // 2).view(np.uint32)[:n]
        threshold = np.uint32(min(round((1 - p) * 2**32), 2**32 - 1))
        return torch.from_numpy(u < threshold).view(x.shape).to(x.dtype)
    return torch.empty_like(x).bernoulli_(1 - p)


class _AdaptedLinearCPU(torch.autograd.Function):
    """``y = x·W0ᵀ + b0 + (x·noise)·Aᵀ·bᵀ`` with W0, b0 frozen, b = (α/r')·B·diag(c), noise = keep·s.

    Bit-identical to the composed ops (nn.Linear, F.dropout, F.linear, addmm): the same GEMMs in the
    same layouts as autograd's mm_mat1/mm_mat2_backward, and the elementwise products rounded alike:
    x·keep·s = x·noise exactly (x·1·s = x·s; x·0·s = x·0, sign included), likewise for the gradient.
    ``x`` comes in twice: the backward returns the adapter's and the base's input gradients separately,
    so autograd adds them into x's gradient in the composed order (adapter first)."""

    @staticmethod
    def forward(ctx, x, x_base, weight, bias, a, b, keep, scale):
        d_in = x.shape[-1]
        x2 = x.reshape(-1, d_in)
        y = F.linear(x2, weight, bias)  # (N, d_out): addmm(bias, x, Wᵀ), as nn.Linear
        if keep is None:
            xd, mask = x2, None
        else:  # keep (float 0/1) becomes x·keep·s in place; a bool copy of it is kept for the backward
            mask = keep.view(-1, d_in).to(torch.bool)
            xd = keep.view(-1, d_in).mul_(x2).mul_(scale)
        h = xd.mm(a.t())  # (N, r')
        y.addmm_(h, b.t())  # y += h·bᵀ in place (beta = 1)
        ctx.save_for_backward(xd, mask, h, a, b, weight)
        ctx.scale, ctx.x_shape = scale, x.shape
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        xd, mask, h, a, b, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])  # (N, d_out)
        need_x, need_xb, _, _, need_a, need_b = ctx.needs_input_grad[:6]
        dx = dxb = da = db = None
        if need_x or need_a:
            dh = g.mm(b)  # (N, r'); mm_mat1_backward of addmm(y, h, bᵀ)
            if need_a:
                da = dh.t().mm(xd)  # (r', d_in); mm_mat2_backward of xd·Aᵀ (Aᵀ column-major)
            if need_x:  # returned as plain tensors (not views) so that autograd may add into them
                dx = torch.empty(ctx.x_shape, dtype=g.dtype)
                torch.mm(dh, a, out=dx.view(-1, a.shape[1]))
                if mask is not None:  # the dropout's backward: ·keep·s, in place
                    dx.view(mask.shape).mul_(mask).mul_(ctx.scale)
        if need_b:
            db = g.t().mm(h)  # (d_out, r'); mm_mat2_backward of h·bᵀ (bᵀ column-major)
        if need_xb:  # the frozen base: input gradient only
            dxb = torch.empty(ctx.x_shape, dtype=g.dtype)
            torch.mm(g, weight, out=dxb.view(-1, weight.shape[1]))
        return dx, dxb, None, None, da, db, None, None
