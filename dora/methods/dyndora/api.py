"""DynDoRA for any Hugging Face model and any training loop: a config, ``inject_dyndora`` and the
controller it returns. The harness's ``method=dora`` plug-in (method.py) is a thin wrapper around this
controller, so the harness, the HF Trainer callback (hf.py) and a plain PyTorch loop run one implementation.

A plain loop, per optimizer step (docs/dyndora.md#step-order)::

    loss = model(**batch).loss
    extra = dyndora.extra_loss(step)            # η·DEM while it is on, else None (step counts from 1)
    (loss if extra is None else loss + extra).backward()
    clip; optimizer.step(); scheduler.step()
    dyndora.after_optimizer_step(step)          # EMA scores, pruning events, final mask
    optimizer.zero_grad()
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dora.methods.base import freeze_all_but, is_head
from dora.methods.dyndora.allocator import RankAllocator, Schedule
from dora.methods.dyndora.export import export_peft, peft_task_type
from dora.methods.dyndora.layer import inject, unwrap
from dora.methods.dyndora.targets import find_targets

# Task heads trained by default when ``modules_to_save`` is None (the first-level modules of that name).
HEAD_NAMES = ("classifier", "classification_head", "qa_outputs", "score")


def check_knobs(cfg, prefix: str) -> None:
    """Reject impossible DynDoRA settings; ``prefix`` names the field in messages (``method.``)."""
    checks = {
        "init_ratio": cfg.init_ratio >= 1,
        "dem_coef": cfg.dem_coef >= 0,
        "prune_interval": cfg.prune_interval > 0,
        "warmup_frac": 0 <= cfg.warmup_frac < 1,
        "final_frac": 0 <= cfg.final_frac < 1,
        "ema_beta": 0 <= cfg.ema_beta < 1,
        "alpha": cfg.alpha > 0,
        "dropout": 0 <= cfg.dropout < 1,
        "eps": cfg.eps >= 0,
    }
    for key, ok in checks.items():
        if not ok:
            raise ValueError(f"{prefix}{key}={getattr(cfg, key)} is out of range")
    if cfg.warmup_frac + cfg.final_frac >= 1:
        raise ValueError(
            f"{prefix}warmup_frac + {prefix}final_frac = {cfg.warmup_frac + cfg.final_frac}; must be < 1 "
            "(no steps left for pruning)"
        )
    if cfg.dem_norm not in ("code", "paper"):
        raise ValueError(f"{prefix}dem_norm={cfg.dem_norm!r}; valid: code, paper")
    if cfg.dropout_rng not in ("torch", "fast"):
        raise ValueError(f"{prefix}dropout_rng={cfg.dropout_rng!r}; valid: torch, fast")


def initial_rank(init_ratio: float, r: int) -> int:
    """r' = ceil(ratio·r), robust to float noise (1.1·10 is 11.000000000000002, r' must be 11)."""
    return math.ceil(round(init_ratio * r, 9))


@dataclass
class DynDoRAConfig:
    """DynDoRA (Dynamic Rank Distribution, Mao et al. 2024) for any model; paper symbols in comments.

    Each adapted matrix starts with r' = b(0) = ceil(init_ratio·r) gated rank-1 components; a global
    cubic schedule over the T optimizer steps prunes N·(r'−r) of the N = L·r' components (L matrices),
    so that exactly N·r remain: an average rank r, distributed where the importance scores put it.

    Example: a Llama-style model with 16 layers, 7 targets each (L = 112), r = 8, init_ratio 1.5 → r' = 12,
    N = 1,344; T = 1,000 steps: warm-up to step 150 (t_i = 0.15·T), events every ΔT = 100 steps from
    step 150 to 500 (q = Q = 0.35·T), then 896 = 112·8 components stay active to the end; η·DEM is added
    to the loss for steps ≤ 500.

    ``target_modules``: None = the preset of ``model.config.model_type`` (or ``preset``); a list of module
    names or name suffixes (``["q_proj", "v_proj"]``); or a regex matching whole module names.
    ``modules_to_save``: modules trained in full (the task head); None = whichever of classifier,
    classification_head, qa_outputs, score the model has; [] = none.
    """

    r: int = 8  # b(T): final average number of components (rank) per adapted matrix
    init_ratio: float = 1.5  # b(0)/b(T): r' = ceil(init_ratio·r) components per matrix at the start
    dem_coef: float = 0.1  # η, weight of the DEM regulariser (0 = no DEM)
    prune_interval: int = 100  # ΔT, optimizer steps between pruning events
    warmup_frac: float = 0.15  # t_i/T: no pruning before
    final_frac: float = 0.5  # t_f/T: fixed allocation at the end
    ema_beta: float = 0.9  # β of the importance-score EMA
    alpha: float = 8.0  # α: the update is scaled by α/r'
    dropout: float = 0.1  # dropout on the adapter's input
    dropout_rng: str = "torch"  # torch: nn.Dropout's masks bit for bit | fast: NumPy PCG64 (CPU, opt-in)
    dem_norm: str = "code"  # code: R/(2n) (released code) | paper: R/n (Eq. 10)
    eps: float = 1e-8  # added to ‖ΔW‖_F in the score
    target_modules: str | list[str] | None = None
    preset: str | None = None  # llama | gpt2 | bert | bart | t5 (targets.PRESETS); None = from model_type
    modules_to_save: list[str] | None = None

    def __post_init__(self):
        if self.r <= 0:
            raise ValueError(f"DynDoRAConfig.r={self.r}; must be > 0")
        check_knobs(self, "DynDoRAConfig.")

    @property
    def r_init(self) -> int:
        return initial_rank(self.init_ratio, self.r)


def default_heads(model: nn.Module) -> tuple[str, ...]:
    return tuple(name for name in HEAD_NAMES if isinstance(getattr(model, name, None), nn.Module))


def inject_dyndora(
    model: nn.Module, config: DynDoRAConfig, total_steps: int | None = None
) -> DynDoRAController:
    """Wrap the target layers of ``model`` (in place) with DynDoRA layers, freeze everything but the
    adapters (A, B, gates c) and ``modules_to_save``; returns the controller. ``total_steps`` = T, the
    number of optimizer steps of the run; leave it None when the HF Trainer callback will set it."""
    heads = default_heads(model) if config.modules_to_save is None else tuple(config.modules_to_save)
    targets = find_targets(model, config.target_modules, config.preset, exclude=heads)
    return DynDoRAController(model, config, targets, heads, total_steps)


class DynDoRAController:
    """The injected layers, their allocator (scores, schedule, pruning) and the DEM loss of one model.

    ``extra_loss(step)`` and ``after_optimizer_step(step)`` are the two calls a training loop makes;
    ``state_dict``/``save_state`` hold all the allocator's state (EMA scores, final mask, pruning
    history), which together with the model's trainable weights resumes a run exactly."""

    def __init__(self, model, config: DynDoRAConfig, targets, heads: tuple[str, ...], total_steps=None):
        self.model, self.config, self.heads = model, config, tuple(heads)
        self.names = [name for name, _ in targets]
        self.r_init = config.r_init
        self.layers = inject(model, targets, self.r_init, config.alpha, config.dropout, config.dropout_rng)
        freeze_all_but(model, lambda name: ".lora_" in name or is_head(name, self.heads))  # A, B, c, head
        self.allocator: RankAllocator | None = None
        if total_steps is not None:
            self.start(total_steps)

    def start(self, total_steps: int) -> None:
        """Build the schedule for T = ``total_steps`` optimizer steps (once; a different T is an error)."""
        if self.allocator is not None:
            if total_steps != self.schedule.total_steps:
                raise ValueError(
                    f"DynDoRA was built for T={self.schedule.total_steps} steps, not {total_steps}"
                )
            return
        if total_steps <= 0:
            raise ValueError(f"DynDoRA needs the number of optimizer steps T > 0, got {total_steps}")
        c = self.config
        sched = Schedule.build(
            total_steps, c.warmup_frac, c.final_frac, c.prune_interval, len(self.layers), self.r_init, c.r
        )
        self.allocator = RankAllocator(self.layers, sched, c.ema_beta, c.eps)

    def _started(self) -> RankAllocator:
        if self.allocator is None:
            raise RuntimeError("DynDoRA's schedule is not built: call start(total_steps) first")
        return self.allocator

    @property
    def schedule(self) -> Schedule:
        return self._started().schedule

    # -- the two calls of a training loop ------------------------------------------------------
    def extra_loss(self, step: int) -> torch.Tensor | None:
        """η·R for the loss of optimizer step ``step`` (from 1) while the scores are updated (steps ≤ t_i + Q
        ≈ 0.5·T, as the released code); None after it or when η = 0."""
        allocator = self._started()
        if self.config.dem_coef == 0 or step > allocator.schedule.last_step:
            return None
        return self.config.dem_coef * allocator.dem(self.config.dem_norm)

    def after_optimizer_step(self, step: int) -> dict:
        """After optimizer step ``step`` (from 1), before gradients are cleared: EMA scores, pruning
        event, or the permanent final mask. Returns scalars to log (budget, active components)."""
        return self._started().step(step)

    # -- state (safetensors, never pickle) -----------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.allocator.state_dict() if self.allocator is not None else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._started().load_state_dict(state)

    def save_state(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path))

    def load_state(self, path: str | Path) -> None:
        self.load_state_dict(load_file(str(path)))

    # -- reporting -----------------------------------------------------------------------------
    def active(self) -> torch.Tensor:
        """Active (non-zero gate) components per adapted matrix, (L,)."""
        return torch.stack([(m.lora_c != 0).sum() for m in self.layers])

    def rank_pattern(self) -> dict[str, int]:
        return dict(zip(self.names, self.active().tolist(), strict=True))

    def budget_history(self) -> list[list[int]]:
        """[step, active components] at every pruning event."""
        return self.allocator.budget_history() if self.allocator is not None else []

    def budget_params(self) -> int:
        """Σ active components × (d_in + d_out); head and gates excluded (the paper's count)."""
        active = self.active().tolist()
        return sum(k * (m.in_features + m.out_features) for k, m in zip(active, self.layers, strict=True))

    # -- outputs -------------------------------------------------------------------------------
    def export_peft(self, out_dir: str | Path, task_type: str | None = "auto"):
        """Write a standard PEFT LoRA adapter (per-module ranks, pruned components dropped, gates folded
        into B, the head as modules_to_save) that ``PeftModel.from_pretrained(base, out_dir)`` loads.
        ``task_type``: a PEFT TaskType name, None, or auto (from the model class)."""
        if task_type == "auto":
            task_type = peft_task_type(self.model)
        layers = dict(zip(self.names, self.layers, strict=True))
        c = self.config
        return export_peft(self.model, layers, Path(out_dir), c.alpha, c.dropout, self.heads, task_type)

    def merge(self) -> nn.Module:
        """Fold ΔW = (α/r')·B·diag(c)·A into W0 (in fp32) and put the plain linear/Conv1D layers back."""
        return unwrap(self.model, self.names, merge=True)
