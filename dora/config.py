"""Typed schemas (dataclasses) of the Hydra config groups; values live in configs/*.yaml.

Each group YAML starts from its schema (``defaults: [_model, _self_]``), so a typo in a field name or a
value of the wrong type fails at composition. The schemas below go into Hydra's ConfigStore as this module
loads (``store_schema``); methods and tasks register their own (a subclass of MethodConfig / TaskConfig)
next to their code, through dora.registry. This module imports no plug-in.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING, OmegaConf

from dora.errors import UserError, one_line
from dora.families import FAMILIES
from dora.registry import store_schema

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
GROUPS = ("model", "task", "method", "budget", "trainer", "logger", "recipe", "experiment", "debug")
RUN_GROUPS = ("task", "model", "method", "budget", "trainer", "logger")  # a key of their own in the config


@dataclass
class ModelConfig:
    """A backbone. ``source``: hub (``path`` = hub id or local dir), package (the pip-installed
    all-MiniLM-L6-v2) or tiny (random init from ``tiny`` sizes, tokenizer built locally)."""

    name: str = MISSING
    family: str = (
        MISSING  # a dora.families entry (roberta, bert, bart, ...): decides which matrices are adapted
    )
    source: str = "hub"
    path: str | None = None
    tiny: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.source not in ("hub", "package", "tiny"):
            raise ValueError(f"model.source={self.source!r}; valid: hub, package, tiny")
        if self.family not in FAMILIES:
            raise ValueError(f"model.family={self.family!r}; valid: {', '.join(sorted(FAMILIES))}")


@dataclass
class TaskConfig:
    """A benchmark task. ``splits`` maps each canonical split (train, dev, dev_matched, ...) to its
    source: a file/hub split name with an optional slice, e.g. ``train``, ``dev``,
    ``train_sample[:90%]`` or ``train[:2000]``."""

    name: str = MISSING
    max_length: int = 128  # tokens (paper Table 8)
    splits: dict[str, str] = field(default_factory=dict)
    hub_id: str | None = None

    def __post_init__(self):
        if self.max_length <= 0:
            raise ValueError(f"task.max_length={self.max_length}; must be > 0")
        if "train" not in self.splits or len(self.splits) < 2:
            raise ValueError(
                f"task.splits={dict(self.splits)}; needs 'train' and at least one evaluation split"
            )


@dataclass
class MethodConfig:
    """Base of every method's schema. ``lr`` is the method's default learning rate, used when
    ``trainer.lr`` is null and no recipe sets it."""

    name: str = MISSING
    lr: float = 1e-3

    def __post_init__(self):
        if not 0 < self.lr < math.inf:
            raise ValueError(f"method.lr={self.lr}; must be > 0 and finite")


@dataclass
class BudgetConfig:
    """The paper's parameter budgets, as the average rank r they correspond to on roberta-base
    (docs/dyndora.md#budgets): low = 0.33M (r = 2), high = 1.33M (r = 8). Each method maps r to its
    own size."""

    name: str = MISSING
    rank: int = MISSING

    def __post_init__(self):
        if self.rank <= 0:
            raise ValueError(f"budget.rank={self.rank}; must be > 0")


@dataclass
class TrainerConfig:
    """Optimisation (docs/dyndora.md#recipe): AdamW, linear schedule with warm-up, gradient clipping."""

    epochs: int = 3
    max_steps: int = -1  # > 0: stop after this many optimizer steps (T = max_steps)
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float | None = None  # null: the method's default (method.lr) or the recipe's
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    max_length: int | None = None  # null: the task's
    # batches of similar length (shuffled, length-sorted megabatches, as transformers' group_by_length):
    # less padding, so faster; off = plain random batches, as the paper's code
    group_by_length: bool = False
    eval_every: int = 0  # 0: evaluate after every epoch; N > 0: also every N optimizer steps
    log_every: int = 10  # optimizer steps between loss logs (one host sync each)
    # no = fp32 (the released code's arithmetic, TF32 off) | bf16 | fp16 (opt-in autocast, faster on a GPU)
    # | auto (bf16 on a GPU that supports it, else fp32); result.json records what ran ("precision")
    mixed_precision: str = "no"
    cpu: bool = False  # force the CPU even when a GPU is present
    num_workers: int = 0
    # torch's CPU threads (intra-op) for this run; null: OMP_NUM_THREADS when set (grids and joblib set
    # it per job), else min(cores, 4). Numbers on the CPU depend on it (reductions split by thread).
    threads: int | None = None
    progress: bool = True
    # checkpoints (dora/checkpoint.py): every N optimizer steps (0: epoch ends only) and at every epoch
    # end; the newest ``keep_checkpoints`` stay. Re-running with the same output_dir resumes exactly.
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2

    def __post_init__(self):
        checks = {
            "epochs": self.epochs > 0,
            "batch_size": self.batch_size > 0,
            "eval_batch_size": self.eval_batch_size > 0,
            "grad_accum": self.grad_accum > 0,
            "weight_decay": 0 <= self.weight_decay < math.inf,
            "warmup_ratio": 0 <= self.warmup_ratio < 1,
            "max_grad_norm": self.max_grad_norm > 0,
            "eval_every": self.eval_every >= 0,
            "log_every": self.log_every > 0,
            "lr": self.lr is None or 0 < self.lr < math.inf,
            "max_length": self.max_length is None or self.max_length > 0,
            "max_steps": self.max_steps == -1 or self.max_steps > 0,
            "threads": self.threads is None or self.threads > 0,
            "checkpoint_every": self.checkpoint_every >= 0,
            "keep_checkpoints": self.keep_checkpoints >= 1,
            "num_workers": self.num_workers >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"trainer.{name}={getattr(self, name)} is out of range")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"trainer.mixed_precision={self.mixed_precision!r}; valid: auto, bf16, fp16, no")


@dataclass
class LoggerConfig:
    """Experiment tracking. kind=wandb logs online when credentials exist, offline otherwise."""

    kind: str = "none"  # wandb | none
    project: str = "dyndora"
    entity: str | None = None
    mode: str = "auto"  # auto | online | offline
    tags: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.kind not in ("wandb", "none"):
            raise ValueError(f"logger.kind={self.kind!r}; valid: none, wandb")
        if self.mode not in ("auto", "online", "offline"):
            raise ValueError(f"logger.mode={self.mode!r}; valid: auto, offline, online")


@dataclass(frozen=True)
class RunConfig:
    """One run's whole configuration, converted once from the composed Hydra config (``from_hydra``):
    each group as its dataclass, checked by its ``__post_init__``, and the top-level values. The runner,
    its checkpoints and the run folder read this, never the Hydra config."""

    task: TaskConfig
    model: ModelConfig
    method: MethodConfig
    budget: BudgetConfig
    trainer: TrainerConfig
    logger: LoggerConfig
    seed: int
    data_dir: str | None
    output_dir: str | None
    # the same configuration resolved into plain dicts and lists, keys in composition order (every key,
    # ``+key=...`` additions included): what result.json, checkpoints and failure.json record
    resolved: dict = field(repr=False)

    @classmethod
    def from_hydra(cls, cfg) -> RunConfig:
        """The composed config (an OmegaConf DictConfig) converted, or a UserError of one line for an
        impossible value. Light enough for the CLI's preflight."""
        resolved = OmegaConf.to_container(cfg, resolve=True)  # a bad ${pick:...} or ${oc.env:...} fails here
        seed = cfg.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise UserError(f"seed={seed!r} is out of range; valid: an integer from 0 to {2**32 - 1}")
        try:
            groups = {g: OmegaConf.to_object(cfg[g]) for g in RUN_GROUPS}
        except (ValueError, TypeError) as e:
            raise UserError(one_line(e)) from e
        return cls(**groups, seed=seed, data_dir=cfg.data_dir, output_dir=cfg.output_dir, resolved=resolved)

    def as_dict(self) -> dict:
        """``resolved``, copied: result.json's ``config``, and what a run folder's earlier run is compared with."""
        return copy.deepcopy(self.resolved)


TUNED_DIR = CONFIG_DIR / "tuned"


def tuned_dir() -> Path:
    return Path(os.environ.get("DORA_TUNED_DIR") or TUNED_DIR)


def tuned(*, _root_) -> float:
    """``trainer.lr=${tuned:}``: the learning rate ``make tune`` chose for this run's backbone, method and
    task (configs/tuned/<model>_<method>_<task>.yaml)."""
    model, method, task = _root_.model.name, _root_.method.name, _root_.task.name
    path = tuned_dir() / f"{model}_{method}_{task}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in tuned_dir().glob("*.yaml"))
        raise ValueError(
            f"tuned: no tuned learning rate for model={model} method={method} task={task} ({path} is missing; "
            f"run make tune MODEL={model} METHOD={method} TASK={task}); tuned files: {', '.join(have) or 'none'}"
        )
    return float(OmegaConf.load(path).lr)


_NO_DEFAULT = object()


def pick(key, table, default=_NO_DEFAULT):
    """``${pick:${task.name},{rte: 120, cola: 500}}``: the table's value for the key (a per-task setting).
    A third argument is the value for keys the table lacks: ``${pick:${task.name},{rte: 80},3}``."""
    if key in table:
        return table[key]
    if default is not _NO_DEFAULT:
        return default
    raise ValueError(f"pick: no value for {key!r}; the table has {', '.join(map(str, table))}")


# each group's base schema, ``<group>/_<group>`` in Hydra's ConfigStore (plug-ins add ``_<name>``)
BASE_SCHEMAS = {
    "model": ModelConfig,
    "budget": BudgetConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
    "task": TaskConfig,
    "method": MethodConfig,
}
for _group, _schema in BASE_SCHEMAS.items():
    store_schema(_group, f"_{_group}", _schema)


def register_resolvers() -> None:
    """``${pick:...}`` and ``${tuned:}`` for the YAMLs; the command line registers them (dora.cli)."""
    OmegaConf.register_new_resolver("pick", pick, replace=True)
    OmegaConf.register_new_resolver("tuned", tuned, replace=True)
