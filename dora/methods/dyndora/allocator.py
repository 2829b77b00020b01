"""DynDoRA's budget schedule, importance scores, global pruning and DEM, vectorised. The method:
docs/dyndora.md#importance-scores, docs/dyndora.md#schedule and docs/dyndora.md#dem.

Layers are grouped by shape so that scores and the DEM regulariser are a few batched ops per group
(3 groups on roberta-base) instead of one op per component. Scores, EMA and masks stay on the device
as (L, r') tensors (L = adapted matrices), and the global k-th value is one ``kthvalue`` per event. No
step forces a host sync: the active count of each event stays a device tensor until the history is read.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from dora.methods.dyndora.layer import DynDoRALinear


@dataclass(frozen=True)
class Schedule:
    """The global cubic budget schedule (docs/dyndora.md#schedule), in optimizer steps counted from 1.

    ``warmup`` = t_i = int(warmup_frac·T); pruning clock q = step − t_i; ``last`` = Q =
    int(T·(1 − warmup_frac − final_frac)). Events at 0 ≤ q ≤ Q with q % ΔT == 0 or q == Q; at an event
    k = floor(N·(r'−r)/r'·(q/Q)³) components are pruned (computed exactly in integers, so the last
    event leaves N·r components; the released code's float form can land one lower at an exact integer).
    """

    total_steps: int  # T
    warmup: int  # t_i
    last: int  # Q
    interval: int  # ΔT
    n_matrices: int  # L
    r_init: int  # r' = b(0)
    r_final: int  # r = b(T)

    @classmethod
    def build(cls, total_steps, warmup_frac, final_frac, interval, n_matrices, r_init, r_final):
        last = int(total_steps * (1 - warmup_frac - final_frac))
        # for T <= 2 (smoke runs) t_i + Q would be step 0, which never runs: start the clock at step 1
        warmup = max(int(total_steps * warmup_frac), 1 - last)
        return cls(total_steps, warmup, last, interval, n_matrices, r_init, r_final)

    @property
    def n_components(self) -> int:  # N = L·r'
        return self.n_matrices * self.r_init

    @property
    def last_step(self) -> int:
        """Optimizer step of the last pruning event: scores and DEM stop after it, the final mask holds."""
        return self.warmup + self.last

    def is_event(self, step: int) -> bool:
        q = step - self.warmup
        return 0 <= q <= self.last and (q % self.interval == 0 or q == self.last)

    def n_pruned(self, step: int) -> int:
        """k at an event: floor(N·(r'−r)/r'·(q/Q)³), with q/Q = 1 when Q = 0."""
        q, last = step - self.warmup, self.last
        if last == 0:
            q = last = 1
        return (self.n_components * (self.r_init - self.r_final) * q**3) // (self.r_init * last**3)

    def events(self) -> list[int]:
        return [s for s in range(self.warmup, self.last_step + 1) if self.is_event(s)]


class RankAllocator:
    """EMA importance scores, pruning events and the permanent final mask over a list of layers."""

    def __init__(self, layers: list[DynDoRALinear], schedule: Schedule, beta: float, eps: float = 1e-8):
        self.layers, self.schedule, self.beta, self.eps = layers, schedule, beta, eps
        by_shape = defaultdict(list)
        for i, layer in enumerate(layers):
            by_shape[tuple(layer.lora_A.shape) + tuple(layer.lora_B.shape)].append(i)
        self.groups = [(torch.tensor(idx), [layers[i] for i in idx]) for idx in by_shape.values()]
        shape = (len(layers), schedule.r_init)
        # s̃, (L, r'): fp32 like the scores (and c), whatever torch's default dtype is
        self.ema = torch.zeros(shape, dtype=torch.float32)
        self.final_keep: torch.Tensor | None = None  # (L, r') bool, set at the last event
        self.history: list[tuple[int, torch.Tensor | int]] = []  # (step, active components) per event
        self.target = schedule.n_components  # N − k of the latest event

    # -- importance (docs/dyndora.md#importance-scores) ----------------------------------------
    @torch.no_grad()
    def scores(self) -> torch.Tensor:
        """s_i = ‖ΔW_i‖_F / (‖ΔW‖_F + eps) for every component, (L, r'), in closed form:
        ‖ΔW_i‖ = |c_i|·‖A_i‖·‖B_i‖ and ‖ΔW‖² = cᵀ[(A·Aᵀ) ∘ (Bᵀ·B)]c (the scaling α/r' cancels)."""
        out = torch.empty_like(self.ema)
        for idx, layers in self.groups:
            a, b, c = self._stack(layers)  # (g, r', d_in), (g, d_out, r'), (g, r')
            part = c.abs() * a.norm(dim=-1) * b.norm(dim=-2)  # (g, r')
            gram = (a @ a.mT) * (b.mT @ b)  # (g, r', r')
            total = torch.einsum("gi,gij,gj->g", c, gram, c).clamp_min(0).sqrt()  # ‖ΔW‖_F, (g,)
            out[idx] = part / (total + self.eps)[:, None]
        return out

    @staticmethod
    def _stack(layers: list[DynDoRALinear]):
        a = torch.stack([m.lora_A for m in layers]).float()
        b = torch.stack([m.lora_B for m in layers]).float()
        c = torch.stack([m.lora_c for m in layers]).float()
        return a, b, c

    # -- DEM (docs/dyndora.md#dem) -------------------------------------------------------------
    def dem(self, norm: str = "code") -> torch.Tensor:
        """R = Σ_matrices Σ_i [Var(A_i) + Var(B_i)] (unbiased, pruned components included), divided by
        2n (code) or n (paper, Eq. 10), n = L·r'. Differentiable."""
        total = 0.0
        for _, layers in self.groups:
            a, b, _ = self._stack(layers)
            total = total + a.var(dim=-1).sum() + b.var(dim=-2).sum()
        n = self.schedule.n_components
        return total / (2 * n if norm == "code" else n)

    # -- schedule (docs/dyndora.md#schedule) ---------------------------------------------------
    @torch.no_grad()
    def step(self, step: int) -> dict:
        """After optimizer step ``step`` (1-based): EMA update, pruning event, or final mask."""
        self._follow_device()
        if step > self.schedule.last_step:
            if self.final_keep is not None:
                self._mask(self.final_keep)  # permanent: undo what the optimizer did to pruned gates
            return {"budget": self.target}
        self.ema.mul_(self.beta).add_(self.scores(), alpha=1 - self.beta)
        if self.schedule.is_event(step):
            self._prune(step)
        return {"budget": self.target, "active": self.history[-1][1]} if self.history else {}

    def _prune(self, step: int) -> None:
        sched = self.schedule
        k = sched.n_pruned(step)
        if sched.r_init == sched.r_final:  # b(0) = b(T): nothing to allocate, nothing pruned
            keep = torch.ones_like(self.ema, dtype=torch.bool)
        else:
            threshold = torch.kthvalue(self.ema.flatten(), max(k, 1)).values  # one global k-th value
            keep = self.ema > threshold
            self._mask(keep)
        if step == sched.last_step:
            self.final_keep = keep
        self.target = sched.n_components - k
        self.history.append((step, keep.sum()))

    def _mask(self, keep: torch.Tensor) -> None:
        """c_i = 0 where not kept (A, B and the optimizer state stay untouched)."""
        gates = [m.lora_c for m in self.layers]
        torch._foreach_mul_(gates, list(keep.to(gates[0].dtype).unbind(0)))

    def _follow_device(self) -> None:
        """The model may move (accelerate.prepare) after the allocator is built."""
        device = self.layers[0].lora_c.device
        if self.ema.device != device:
            self.ema = self.ema.to(device)
            self.groups = [(idx.to(device), layers) for idx, layers in self.groups]
            if self.final_keep is not None:
                self.final_keep = self.final_keep.to(device)

    # -- outputs and resume --------------------------------------------------------------------
    def active(self) -> torch.Tensor:
        """Active (non-zero gate) components per matrix, (L,)."""
        return torch.stack([(m.lora_c != 0).sum() for m in self.layers])

    def budget_history(self) -> list[list[int]]:
        return [[step, int(n)] for step, n in self.history]

    def state_dict(self) -> dict[str, torch.Tensor]:
        hist = torch.tensor(self.budget_history(), dtype=torch.int64).reshape(-1, 2)
        keep = self.final_keep if self.final_keep is not None else torch.ones_like(self.ema, dtype=torch.bool)
        return {
            "ema": self.ema.detach().cpu().clone(),
            "final_keep": keep.cpu().clone(),
            "has_final": torch.tensor(self.final_keep is not None),
            "history": hist,
            "target": torch.tensor(self.target),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = {"ema", "final_keep", "has_final", "history", "target"}
        if set(state) != expected or state["ema"].shape != self.ema.shape:
            raise ValueError(
                f"DynDoRA state mismatch: keys {sorted(state)}, ema {tuple(state['ema'].shape) if 'ema' in state else None}; "
                f"expected {sorted(expected)}, ema {tuple(self.ema.shape)}"
            )
        self._follow_device()
        device = self.ema.device
        self.ema = state["ema"].to(device=device, dtype=torch.float32).clone()
        self.final_keep = state["final_keep"].to(device).bool().clone() if bool(state["has_final"]) else None
        self.history = [(int(s), int(n)) for s, n in state["history"].tolist()]
        self.target = int(state["target"])
