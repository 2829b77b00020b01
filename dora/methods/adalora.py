"""AdaLoRA (Zhang et al., ICLR 2023) through Hugging Face PEFT, on the matrices DynDoRA adapts.

Per adapted weight: y = W0 x + (alpha / r_init) P diag(E) Q dropout(x) with Q (r_init x d_in),
E (r_init x 1, zero at init), P (d_out x r_init). PEFT's RankAllocator scores each triplet (P_i, E_i, Q_i)
and zeroes E_i of the least important ones, cubically from the initial budget r_init x N down to the
target r x N (N = adapted matrices). Wiring PEFT leaves to the caller (docs/dyndora.md#adalora-through-peft):

- ``update_and_allocate`` runs in ``after_optimizer_step``: after optimizer.step, before zero_grad, on
  real optimizer steps only, with the 1-based step, so the final allocation at T - t_final always happens.
- ``total_step`` = T from TaskInfo (true optimizer steps); t_init / t_final are fractions of it.
- The orthogonal regulariser is ``extra_loss`` (logged by the runner as train/extra_loss); PEFT's own
  copy inside ``AdaLoraModel.forward`` is switched off (orth_reg_weight = 0) and bypassed anyway.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from peft import AdaLoraConfig

from dora.config import MethodConfig
from dora.errors import UserError
from dora.methods import METHODS
from dora.methods._peft import ADAPTER, PeftMethod, lora_layers

_SCORES = ("ipt", "exp_avg_ipt", "exp_avg_unc")  # RankAllocator's per-entry sensitivity state


@dataclass
class AdaLoraMethodConfig(MethodConfig):
    """AdaLoRA's schedule as fractions of the run. Worked example, T = 1000 optimizer steps,
    tinit = 0.15, tfinal = 0.5, delta_t = 10, budget=high (r = 8, r_init = ceil(1.5 x 8) = 12):
    steps 1..150 keep all 12 triplets per matrix (warm-up); steps 151..499 shrink the total budget
    b(t) = (12N - 8N)(1 - (t - 150)/350)^3 + 8N, masking every 10th step; step 500 (= T - t_final)
    masks to exactly 8N and fixes the pattern; steps 501..1000 train with that pattern.
    Defaults follow the AdaLoRA authors' GLUE scripts (QingruZhang/AdaLoRA NLU/scripts)."""

    name: str = "adalora"
    lr: float = 1e-3  # scripts: 5e-4 .. 2.2e-3 per task (recipes set it)
    init_ratio: float = 1.5  # r_init = ceil(init_ratio x r): 3 / 12 for r = 2 / 8 (docs/dyndora.md#budgets)
    alpha: float = 32.0  # scripts: lora_alpha 16 or 32; PEFT scales by alpha / r_init
    dropout: float = 0.1  # as DynDoRA's (docs/dyndora.md#parameterisation)
    tinit: float = 0.15  # t_init / T: warm-up without masking (scripts: 0.09 .. 0.18)
    tfinal: float = 0.5  # t_final / T: final phase with the pattern fixed (scripts: 0.44 .. 0.58)
    delta_t: int = 10  # steps between budget allocations (scripts: 1, 10 or 100)
    beta1: float = 0.85  # EMA of sensitivity
    beta2: float = 0.85  # EMA of uncertainty
    orth_reg_weight: float = 0.1  # gamma: weight of the orthogonal regulariser (scripts: 0.1 or 0.3)

    def __post_init__(self):
        super().__post_init__()
        checks = {
            "init_ratio": self.init_ratio >= 1,
            "alpha": self.alpha > 0,
            "dropout": 0 <= self.dropout < 1,
            "tinit": 0 <= self.tinit < 1,
            "tfinal": 0 <= self.tfinal < 1 and self.tinit + self.tfinal < 1,
            "delta_t": self.delta_t >= 1,
            "beta1": 0 < self.beta1 < 1,
            "beta2": 0 < self.beta2 < 1,
            "orth_reg_weight": self.orth_reg_weight >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"method.{name}={getattr(self, name)} is out of range (tinit + tfinal must be < 1)"
                )


@METHODS.register("adalora", config=AdaLoraMethodConfig)
class AdaLora(PeftMethod):
    """AdaLoRA with target rank r = budget.rank from r_init = ceil(init_ratio x r)."""

    def __init__(self, cfg, budget):
        super().__init__(cfg, budget)
        self.history: list[list[int]] = []  # [step, active triplets] per allocation event
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (Q, P) per adapted matrix
        self._last_reg: torch.Tensor | None = None

    @property
    def init_r(self) -> int:
        return math.ceil(round(self.cfg.init_ratio * self.budget.rank, 9))  # 1.1 x 10 -> 11, not 12

    def schedule(self, total_steps: int) -> tuple[int, int]:
        """(t_init, t_final) in optimizer steps. tinit + tfinal < 1 (checked by the config) keeps
        t_init < T - t_final, the non-empty budgeting phase PEFT requires, for every T. PEFT's final
        allocation at step T - t_final reads importance scores gathered at earlier steps, so at least one
        step must come before it: t_final <= T - 2 (at the recipes' fractions, <= 0.58, this binds only
        at T = 2)."""
        if total_steps < 2:
            raise UserError(
                f"method=adalora needs at least 2 optimizer steps (one to score importance, one to allocate); "
                f"this run has T={total_steps}: raise trainer.max_steps or trainer.epochs"
            )
        tfinal = min(int(self.cfg.tfinal * total_steps), total_steps - 2)
        return int(self.cfg.tinit * total_steps), tfinal

    def peft_config(self, targets, head, info):
        tinit, tfinal = self.schedule(info.total_steps)
        return AdaLoraConfig(
            init_r=self.init_r,
            target_r=self.budget.rank,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            target_modules=targets,
            modules_to_save=head,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=self.cfg.delta_t,
            beta1=self.cfg.beta1,
            beta2=self.cfg.beta2,
            orth_reg_weight=0.0,  # ours is extra_loss; PEFT must not add a second copy in forward
            total_step=info.total_steps,
        )

    def apply(self, model, info):
        inner = super().apply(model, info)
        self._pairs = [(m.lora_A[ADAPTER], m.lora_B[ADAPTER]) for _, m in lora_layers(inner)]
        return inner

    # -- training hooks ---------------------------------------------------------------------
    def extra_loss(self, model, step):
        """gamma x mean over the 2N factors of ||Q Q^T - I||_F and ||P^T P - I||_F: the value PEFT's
        AdaLoraModel.forward would add with orth_reg_weight = gamma."""
        if self.cfg.orth_reg_weight == 0:
            return None
        reg = orthogonal_regulariser(self._pairs)
        self._last_reg = reg.detach()
        return self.cfg.orth_reg_weight * reg

    def after_optimizer_step(self, step, total_steps):
        before = self._peft_cfg.rank_pattern
        self.peft.base_model.update_and_allocate(step)  # needs the gradients: before zero_grad
        pattern = self._peft_cfg.rank_pattern
        if pattern is not None and pattern is not before:  # an allocation event assigned a new pattern
            self.history.append([step, sum(self.rank_pattern(None).values())])
        scalars = {"active": self.history[-1][1] if self.history else self._init_total()}
        if self._last_reg is not None:
            scalars["orth_reg"] = self._last_reg  # a tensor: synced only when the runner logs
        return scalars

    def export(self, model, out_dir):
        with warnings.catch_warnings():
            # PEFT takes the (legitimately) empty factors of matrices pruned to rank 0 for unsharded
            # ZeRO-3 / FSDP tensors and warns; they reload fine (tests/test_methods.py)
            warnings.filterwarnings("ignore", message=".*invalid shape")
            return super().export(model, out_dir)

    def best_from_step(self, total_steps):
        """Evaluations after the final allocation (step T - t_final) compete for the best epoch."""
        return total_steps - self.schedule(total_steps)[1]

    # -- reporting ------------------------------------------------------------------------------
    @property
    def _peft_cfg(self) -> AdaLoraConfig:
        return self.peft.peft_config[ADAPTER]

    def _init_total(self) -> int:
        return self.init_r * len(self._pairs)

    def rank_pattern(self, model) -> dict[str, int]:
        """Active triplets per adapted matrix (module names of the trained model); r_init everywhere
        until the first allocation."""
        pattern = self._peft_cfg.rank_pattern
        names = [name for name, _ in lora_layers(self.peft.base_model.model)]
        if pattern is None:
            return dict.fromkeys(names, self.init_r)
        # PEFT keys: "<module>.lora_E.default" (or "<module>.lora_E" once save_pretrained renamed them)
        active = {key.split(".lora_E")[0]: int(sum(mask)) for key, mask in pattern.items()}
        return {name: active[name] for name in names}

    def budget_history(self) -> list[list[int]]:
        return [list(row) for row in self.history]

    def budget_params(self, model):
        """Sum over adapted matrices of active triplets x (d_in + d_out); E and head excluded
        (docs/dyndora.md#parameter-counts)."""
        active = self.rank_pattern(model)
        return sum(
            active[name] * (layer.in_features + layer.out_features)
            for name, layer in lora_layers(self.peft.base_model.model)
        )

    # -- resume -----------------------------------------------------------------------------------
    def state_dict(self):
        """RankAllocator EMAs, the current rank pattern and the allocation history."""
        allocator = self.peft.base_model.rankallocator
        state = {f"{kind}/{n}": t for kind in _SCORES for n, t in getattr(allocator, kind).items()}
        for key, mask in (self._peft_cfg.rank_pattern or {}).items():
            state[f"rank_pattern/{key}"] = torch.tensor(mask, dtype=torch.bool)
        state["budget_history"] = torch.tensor(self.history, dtype=torch.int64).reshape(-1, 2)
        return state

    def load_state_dict(self, state):
        allocator = self.peft.base_model.rankallocator
        for kind in _SCORES:
            setattr(allocator, kind, _section(state, kind))
        pattern = {k: v.tolist() for k, v in _section(state, "rank_pattern").items()}
        self._peft_cfg.rank_pattern = pattern or None
        self.history = state["budget_history"].tolist() if "budget_history" in state else []


def orthogonal_regulariser(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean of ||Q Q^T - I||_F and ||P^T P - I||_F over all factors (AdaLoRA Eq. 4, PEFT's form)."""
    qq = torch.stack([q @ q.T for q, _ in pairs])  # (N, r_init, r_init)
    pp = torch.stack([p.T @ p for _, p in pairs])  # (N, r_init, r_init)
    eye = torch.eye(qq.shape[-1], device=qq.device, dtype=qq.dtype)
    norms = torch.cat([torch.linalg.matrix_norm(qq - eye), torch.linalg.matrix_norm(pp - eye)])
    return norms.mean()


def _section(state: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + "/")}
