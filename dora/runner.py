"""One run: build (task, backbone, method) -> train -> evaluate -> write result.json.

The runner names no method and no task: it calls them only through their contracts
(dora.methods.base.Method, tasks.base.Task). One optimizer step is dora.step.train_step (its order is
documented there); evaluation is tasks.base.evaluate_split, one split at a time.

Reliability (dora/checkpoint.py, dora/rundir.py): a checkpoint every ``trainer.checkpoint_every``
optimizer steps and at every epoch end; re-running with the same ``output_dir`` resumes from the newest
one, bit-identically on the CPU; a completed run is skipped; a run that raises leaves ``failure.json``;
a non-finite loss stops the run at the step it happened, keeping the last good checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import get_linear_schedule_with_warmup

from dora import checkpoint, rundir
from dora.checkpoint import EpochShuffle
from dora.config import RunConfig
from dora.errors import UserError
from dora.methods import Method, TaskInfo, build_method
from dora.models import load_backbone
from dora.results import atomic_write_text, environment, peak_memory_mb, save_tensors, write_result
from dora.step import train_step
from dora.tracking import make_tracker
from tasks import Task, build_task, evaluate_split

log = logging.getLogger(__name__)
datasets.disable_progress_bars()  # tokenisation bars drown the training bar


class Diverged(UserError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 1  # current epoch, from 1
    batches: int = 0  # batches of this epoch already consumed by this process
    samples: int = 0  # training examples seen by this process
    wall_s: float = 0.0  # training + evaluation wall time of earlier segments (before a resume)
    lr_sum: float = 0.0  # Σ of the learning rate over optimizer steps done (how far Adam can move a weight)
    eval_s: float = 0.0
    started: bool = False  # training began: a failure from here on leaves failure.json


class LossMeter:
    """Device-side sums (task loss, extra loss, micro-batches) since the last log, and the first optimizer
    step whose loss or gradient norm was not finite. Nothing here syncs with the host; ``bad_step`` does,
    and runs only at logs, evaluations and checkpoints."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(3, device=device)
        self.first_bad = torch.zeros((), dtype=torch.int64, device=device)

    def add(self, loss: torch.Tensor, extra: torch.Tensor | None) -> None:
        self.sums[0] += loss.detach()
        self.sums[2] += 1
        if extra is not None:
            self.sums[1] += extra.detach()

    def flag(self, step: int, grad_norm: torch.Tensor | None) -> None:
        # NaN/inf in any micro-batch loss stays in the sums until the next log, which checks first
        ok = torch.isfinite(self.sums).all()
        if grad_norm is not None:
            ok = ok & torch.isfinite(grad_norm)
        fresh = (self.first_bad == 0) & ~ok
        self.first_bad = torch.where(fresh, torch.full_like(self.first_bad, step), self.first_bad)

    def bad_step(self) -> int:
        return int(self.first_bad)


@dataclass
class Run:
    """Everything the training loop touches."""

    cfg: RunConfig
    out_dir: Path
    accelerator: Accelerator
    task: Task
    method: Method
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_loader: DataLoader
    sampler: EpochShuffle
    eval_loaders: dict[str, DataLoader]
    total_steps: int
    epochs: int
    tracker: object
    data_notes: dict
    meter: LossMeter
    trivial: dict  # "<split>/<metric>" -> [score of each constant predictor on that split]
    progress: Progress = field(default_factory=Progress)
    history: list[dict] = field(default_factory=list)
    scalars: dict = field(default_factory=dict)  # the method's latest after_optimizer_step scalars
    last_checkpoint: Path | None = None
    segment_t0: float = 0.0  # perf_counter at the start of this process's training

    @property
    def config(self) -> dict:
        return self.cfg.as_dict()

    def wall_s(self) -> float:
        return self.progress.wall_s + time.perf_counter() - self.segment_t0


def mixed_precision(choice: str, cpu: bool) -> str:
    """``no`` (the default) is fp32, the released code's arithmetic; bf16/fp16 autocast are opt-in speed
    settings; ``auto`` = bf16 on a GPU that supports it, else fp32."""
    if choice != "auto":
        return choice
    gpu = torch.cuda.is_available() and not cpu
    return "bf16" if gpu and torch.cuda.is_bf16_supported() else "no"


def fp32_matmuls() -> None:
    """fp32 means fp32: no TF32 tensor-core matmuls (off by default in the torch the paper used)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def precision(accelerator: Accelerator) -> dict:
    """What arithmetic the run used, for result.json and the tables."""
    mp = accelerator.mixed_precision
    return {"mixed_precision": mp, "compute": "fp32" if mp == "no" else mp, "tf32": False}


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op CPU threads (``trainer.threads``) and return the number. Auto (null):
    OMP_NUM_THREADS when set, else min(usable cores, 4). Small models gain little past 4 threads, and on
    a shared CPU threads that wait for busy cores cost far more than they give (issue 17: 8.3 s/step
    with 2 threads against 2.0 s/step with 1 on a loaded 2-core machine)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else min(cores, 4)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if threads > 1 and load > cores:  # advice only: the thread count stays what the config says
        log.warning(
            "load average %.1f on %d cores: %d threads will wait for each other; trainer.threads=1 is "
            "likely faster on this busy machine",
            load, cores, threads,
        )  # fmt: skip
    torch.set_num_threads(threads)
    return threads


def make_accelerator(trainer) -> Accelerator:
    # without CUDA, say cpu=True: only then does Accelerate join a torchrun launch as MULTI_CPU (gloo)
    cpu = trainer.cpu or not torch.cuda.is_available()
    accelerator = Accelerator(
        mixed_precision=mixed_precision(trainer.mixed_precision, cpu),
        gradient_accumulation_steps=trainer.grad_accum,
        cpu=cpu,
        step_scheduler_with_optimizer=False,  # the schedule is defined in optimizer steps of one process
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:  # N independent copies would clobber one run folder
        raise RuntimeError(f"launched {launched} processes but Accelerate joined {accelerator.num_processes}")
    return accelerator


def build(cfg: RunConfig, out_dir: Path) -> Run:
    trainer = cfg.trainer
    set_threads(trainer.threads)  # before tokenisation and the model build
    task = build_task(cfg.task, cfg.data_dir)
    task.check_data()  # before any download or model build
    method = build_method(cfg.method, cfg.budget)
    accelerator = make_accelerator(trainer)
    fp32_matmuls()
    set_seed(cfg.seed)
    backbone = load_backbone(cfg.model, task.head, task.num_labels)
    max_length = trainer.max_length or cfg.task.max_length
    check_max_length(max_length, backbone, "trainer.max_length" if trainer.max_length else "task.max_length")
    data = task.load(backbone.tokenizer, max_length)
    for name, split in {"train": data.train, **data.evals}.items():
        if len(split) == 0:
            what = "training" if name == "train" else f"{name}"
            raise UserError(f"task={task.cfg.name}: the {what} split {task.splits[name]!r} is empty")
    trivial = task.trivial_scores(data.evals)
    collate = task.collator(backbone.tokenizer)
    lengths = [len(ids) for ids in data.train["input_ids"]] if trainer.group_by_length else None
    sampler = EpochShuffle(len(data.train), cfg.seed, lengths, trainer.batch_size)

    def loader(dataset, batch_size, **kw) -> DataLoader:
        # own generator: creating an iterator then draws worker seeds from it, not from the global RNG
        # that dropout uses, so resuming mid-epoch replays the same dropout masks
        return DataLoader(dataset, batch_size, collate_fn=collate, num_workers=trainer.num_workers,
                          generator=torch.Generator().manual_seed(cfg.seed), **kw)  # fmt: skip

    train_loader = accelerator.prepare(loader(data.train, trainer.batch_size, sampler=sampler))
    # T = ceil(batches per process / grad_accum) x epochs, or max_steps (docs/dyndora.md#step-count)
    steps_per_epoch = math.ceil(len(train_loader) / trainer.grad_accum)
    total_steps = trainer.max_steps if trainer.max_steps > 0 else steps_per_epoch * trainer.epochs
    epochs = math.ceil(total_steps / steps_per_epoch)
    info = TaskInfo(task.cfg.name, task.head, backbone.family, backbone.head_prefixes, total_steps)
    model = method.apply(backbone.model, info)
    params = [p for p in model.parameters() if p.requires_grad]
    lr = trainer.lr if trainer.lr is not None else cfg.method.lr
    optimizer = torch.optim.AdamW(
        params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=trainer.weight_decay
    )
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(trainer.warmup_ratio * total_steps), total_steps
    )
    eval_loaders = {name: loader(ds, trainer.eval_batch_size) for name, ds in data.evals.items()}
    model, optimizer, scheduler, *evals = accelerator.prepare(
        model, optimizer, scheduler, *eval_loaders.values()
    )
    eval_loaders = dict(zip(eval_loaders, evals, strict=True))
    tracker = make_tracker(
        cfg.logger, cfg.as_dict(), str(out_dir), out_dir.name,
        [task.cfg.name, method.cfg.name, cfg.model.name], accelerator.is_main_process,
    )  # fmt: skip
    return Run(
        cfg, out_dir, accelerator, task, method, model, optimizer, scheduler, train_loader, sampler,
        eval_loaders, total_steps, epochs, tracker, data.notes, LossMeter(accelerator.device), trivial,
    )  # fmt: skip


MIN_LENGTH = 16  # tokens; below, truncating sentence pairs costs seconds and GBs per thousand examples (at 8, ~40x the time of 128; at 16, ~7x)


def check_max_length(max_length: int, backbone, key: str) -> None:
    """The sequence length must fit the model's position table and the tokenizer's limit."""
    limits = [getattr(backbone.model.config, "max_position_embeddings", None)]
    if backbone.model.config.model_type in ("roberta", "xlm-roberta", "camembert"):
        limits[0] = limits[0] and limits[0] - 2  # positions start after the padding index (offset 2)
    limits.append(getattr(backbone.tokenizer, "model_max_length", None))
    top = min((x for x in limits if isinstance(x, int) and 0 < x < 10**9), default=None)
    if max_length < MIN_LENGTH or (top is not None and max_length > top):
        valid = f"{MIN_LENGTH}..{top}" if top else f">= {MIN_LENGTH}"
        raise UserError(f"{key}={max_length} is out of range for this model; valid: {valid}")


# -- training --------------------------------------------------------------------------------------
def train(run: Run) -> dict:
    """The training loop, from wherever ``run.progress`` stands; returns timing. Evaluates after every
    epoch (and every eval_every steps); checkpoints every checkpoint_every steps and at epoch ends."""
    p = run.progress
    p.started, run.segment_t0 = True, time.perf_counter()
    bar = tqdm(total=run.total_steps, initial=p.step, desc="train", dynamic_ncols=True,
               disable=not (run.accelerator.is_main_process and run.cfg.trainer.progress))  # fmt: skip
    run.model.train()
    for epoch in range(p.epoch, run.epochs + 1):
        p.epoch = epoch
        for batch in epoch_batches(run):
            p.batches += 1
            if micro_step(run, batch):
                after_optimizer_step(run, bar)
            if p.step >= run.total_steps:
                break
        end_epoch(run)
        if p.step >= run.total_steps:
            break
    bar.close()
    train_s = run.wall_s() - p.eval_s
    return {
        "train_s": train_s,
        "eval_s": p.eval_s,
        "steps": p.step,
        "samples_per_s": p.samples * run.accelerator.num_processes / max(train_s, 1e-9),
        "peak_mem_mb": peak_memory_mb(run.accelerator.device),
        "threads": torch.get_num_threads(),
    }


def epoch_batches(run: Run):
    """This epoch's batches in (seed, epoch) order, minus those a resumed run already consumed."""
    run.sampler.epoch = run.progress.epoch
    if run.progress.batches:
        return run.accelerator.skip_first_batches(run.train_loader, run.progress.batches)
    return run.train_loader


def micro_step(run: Run, batch: dict) -> bool:
    """One micro-batch through the training step (dora/step.py), then the runner's bookkeeping: loss
    sums, samples, the non-finite check, Σ lr, the step count. Returns whether an optimizer step happened."""
    acc, p = run.accelerator, run.progress
    with acc.accumulate(run.model):
        out = train_step(run, batch, p.step + 1, run.cfg.trainer.max_grad_norm, acc)
    run.meter.add(out.loss, out.extra)
    p.samples += batch["input_ids"].shape[0]
    if not out.stepped:
        return False
    run.meter.flag(p.step + 1, out.grad_norm)
    p.lr_sum += out.lr
    p.step += 1
    run.scalars = out.scalars
    return True


def after_optimizer_step(run: Run, bar) -> None:
    """Log, evaluate, checkpoint, as due. A checkpoint on the epoch's last batch is left to end_epoch."""
    p, trainer, last = run.progress, run.cfg.trainer, run.total_steps
    bar.update(1)
    if p.step % trainer.log_every == 0 or p.step == last:
        log_train(run, bar)
    if trainer.eval_every and p.step % trainer.eval_every == 0 and p.step < last:
        evaluate(run)
    epoch_end = run.accelerator.gradient_state.end_of_dataloader
    if (
        trainer.checkpoint_every
        and p.step % trainer.checkpoint_every == 0
        and p.step < last
        and not epoch_end
    ):
        save_checkpoint(run)


def end_epoch(run: Run) -> None:
    """Evaluate (unless this step was just evaluated), then checkpoint at the start of the next epoch."""
    p = run.progress
    if not run.history or run.history[-1]["step"] != p.step:
        evaluate(run)
    p.epoch, p.batches = p.epoch + 1, 0
    save_checkpoint(run)


def evaluate(run: Run) -> dict:
    check_finite(run)
    t = time.perf_counter()
    metrics: dict[str, float] = {}
    for split, loader in run.eval_loaders.items():
        metrics.update(evaluate_split(run.task, run.model, loader, run.accelerator, split))
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise Diverged(
            f"evaluation at optimizer step {run.progress.step} gave non-finite {bad} (NaN/inf predictions); "
            f"last good checkpoint: {run.last_checkpoint or 'none'}"
        )
    entry = {"epoch": run.progress.epoch, "step": run.progress.step, **metrics}
    diag = diagnostics(run)
    if diag:
        entry["diagnostics"] = diag
    run.history.append(entry)
    run.tracker.log(metrics | {f"diag/{k}": v for k, v in diag.items()}, run.progress.step)
    log.info(
        "eval epoch %d step %d: %s",
        entry["epoch"],
        entry["step"],
        {k: round(v, 2) for k, v in metrics.items()},
    )
    run.progress.eval_s += time.perf_counter() - t
    return entry


def diagnostics(run: Run) -> dict[str, float]:
    """How far training has moved the method's weights (its ``diagnostics`` hook) and Σ lr so far."""
    model = run.accelerator.unwrap_model(run.model)
    return {"lr_sum": run.progress.lr_sum} | run.method.diagnostics(model)


def log_train(run: Run, bar) -> None:
    """One host sync per log interval: mean losses since the last log, lr, method scalars."""
    check_finite(run)
    sums = run.meter.sums
    task_loss, extra_loss = (sums[:2] / sums[2].clamp(min=1)).tolist()
    sums.zero_()
    values = {
        "train/loss": task_loss,
        "train/extra_loss": extra_loss,
        "train/lr": run.scheduler.get_last_lr()[0],
    }
    values.update({f"method/{k}": float(v) for k, v in run.scalars.items()})
    run.tracker.log(values, run.progress.step)
    bar.set_postfix(loss=f"{task_loss:.4f}", refresh=False)


def check_finite(run: Run) -> None:
    """Stop at the first non-finite loss or gradient norm, before it can reach a checkpoint."""
    bad = run.meter.bad_step()
    if bad:
        kept = run.last_checkpoint or "none (no checkpoint was written before it)"
        raise Diverged(
            f"the loss or gradient norm became NaN/inf at optimizer step {bad}; run stopped at step "
            f"{run.progress.step}; last good checkpoint: {kept} (try a lower trainer.lr)"
        )


# -- checkpoints -----------------------------------------------------------------------------------
def save_checkpoint(run: Run) -> None:
    check_finite(run)
    state = {
        "progress": asdict(run.progress) | {"wall_s": run.wall_s()},
        "history": run.history,
        "loss_sums": run.meter.sums.tolist(),  # float32 values: exact through JSON
        "processes": run.accelerator.num_processes,
        "config": run.config,
    }
    root, keep = run.out_dir / "checkpoints", run.cfg.trainer.keep_checkpoints
    run.last_checkpoint = checkpoint.save(run, state, root, keep)


def restore(run: Run) -> None:
    """Continue from the newest checkpoint in the run folder that verifies against its index, if any;
    newer damaged ones are set aside, with one line saying so."""
    acc = run.accelerator
    folder, damaged = checkpoint.newest_valid(run.out_dir / "checkpoints", acc.process_index)
    acc.wait_for_everyone()  # every process has verified before any checkpoint moves
    if damaged and acc.is_main_process:
        what = "; ".join(f"{bad.name}: {problem}" for bad, problem in damaged)
        for bad, _ in damaged:
            checkpoint.set_aside(bad)
        instead = (
            f"resuming from {folder.name}" if folder else "no valid checkpoint left, starting from step 0"
        )
        log.warning("damaged checkpoint set aside as %s* (%s); %s", checkpoint.DAMAGED, what, instead)
    if folder is None:
        return
    state = checkpoint.restore(run, folder)
    run.progress = Progress(**state["progress"])
    run.history = state["history"]
    run.meter.sums.copy_(torch.tensor(state["loss_sums"]))
    run.last_checkpoint = folder
    log.info("resuming from %s (optimizer step %d of %d)", folder, run.progress.step, run.total_steps)


# -- outputs ---------------------------------------------------------------------------------------
NOT_METRICS = ("epoch", "step", "diagnostics")


def degenerate(metrics: dict, headline: str, trivial: dict) -> bool | None:
    """The headline equals a constant predictor's (MCC 0, majority- or minority-class accuracy): the
    model has not left the trivial solution. None when the task has none (SQuAD, XSum)."""
    if headline not in trivial:
        return None
    return any(abs(metrics[headline] - t) < 1e-6 for t in trivial[headline])


def best_entry(history: list[dict], headline: str, from_step: int) -> dict:
    """Paper protocol: the best headline among evaluations at or after ``from_step`` (the last
    evaluation, at step T, always qualifies)."""
    eligible = [h for h in history if h["step"] >= from_step] or history[-1:]
    return max(eligible, key=lambda h: h[headline])


def trainable_state(run: Run) -> dict[str, torch.Tensor]:
    model = run.accelerator.unwrap_model(run.model)
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def ranks_agree(run: Run) -> dict:
    """Every process must end with the same weights and method state (rank pattern, masks): compare
    digests across processes and refuse to report a run whose ranks diverged."""
    acc = run.accelerator
    if acc.num_processes == 1:
        return {"processes": 1}
    digests = gather_object([digest(trainable_state(run) | run.method.state_dict())])
    if len(set(digests)) != 1:
        raise RuntimeError(f"processes ended with different weights or method state: {digests}")
    return {"processes": acc.num_processes, "ranks_agree": True, "digest": digests[0]}


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(
            tensors[name].detach().to("cpu").reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
        )
    return h.hexdigest()[:16]


def save_outputs(run: Run, timing: dict, distributed: dict) -> dict:
    """Trainable weights + method state (safetensors), resolved config, then result.json last."""
    model = run.accelerator.unwrap_model(run.model)
    c = run.cfg
    save_tensors(run.out_dir / "adapter" / "trainable.safetensors", trainable_state(run))
    state = run.method.state_dict()
    if state:
        save_tensors(run.out_dir / "adapter" / "method_state.safetensors", state)
    atomic_write_text(run.out_dir / "config.yaml", OmegaConf.to_yaml(run.config))
    best_from = run.method.best_from_step(run.total_steps)
    best = best_entry(run.history, run.task.headline, best_from)
    metrics = {k: v for k, v in run.history[-1].items() if k not in NOT_METRICS}
    result = {
        "task": c.task.name,
        "method": c.method.name,
        "model": c.model.name,
        "seed": c.seed,
        "budget": run.method.budget_name,
        "status": "ok",
        "config": run.config,
        "headline": run.task.headline,
        "metrics": metrics,
        "best": {k: v for k, v in best.items() if k not in ("step", "diagnostics")},
        "best_from_step": best_from,  # the paper's protocol: evaluations from this step on are eligible
        "trivial": {k: max(v) for k, v in run.trivial.items()},  # the best constant predictor's score
        "constant_scores": run.trivial,  # every constant predictor's: a run at one of them is degenerate
        "degenerate": degenerate(metrics, run.task.headline, run.trivial),
        "precision": precision(run.accelerator),
        "diagnostics": diagnostics(run),
        "history": run.history,
        "params": {
            "budget": int(run.method.budget_params(model)),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters()),
        },
        "timing": timing,
        "data": run.data_notes,
        "distributed": distributed,
        "env": environment(str(run.accelerator.device)),
    }
    # optional hooks: rank allocation of adaptive methods, exports such as a PEFT adapter
    pattern, budget_history = run.method.rank_pattern(model), run.method.budget_history()
    if pattern is not None:
        result["rank_pattern"] = pattern
    if budget_history is not None:
        result["budget_history"] = budget_history
    run.method.export(model, run.out_dir)
    run.tracker.summary(
        {"params/" + k: v for k, v in result["params"].items()}
        | {"best/" + k: v for k, v in result["best"].items()}
    )
    write_result(run.out_dir, result)
    tidy_completed(run.out_dir)
    return result


def tidy_completed(out_dir: Path) -> None:
    """A complete run's checkpoints have served (adapter/ holds the final weights) and a failure is
    history. Only the checkpoints this harness wrote go: other files under checkpoints/ stay."""
    checkpoint.clean(out_dir / "checkpoints")
    (out_dir / "failure.json").unlink(missing_ok=True)


# -- one run ---------------------------------------------------------------------------------------
def is_main_process() -> bool:
    """Rank 0, read from the launcher's environment (torchrun / accelerate launch set RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


def run(cfg: RunConfig, out_dir: str | Path) -> dict:
    """Train and evaluate one configuration; returns the result written to ``out_dir/result.json``.

    Skips a run whose result.json already exists (same configuration), resumes from the newest
    checkpoint, and leaves failure.json when training raises."""
    out_dir = Path(out_dir)
    rundir.ensure_writable(out_dir)
    with rundir.exclusive(out_dir, enabled=is_main_process()):
        done = rundir.completed(out_dir, cfg)
        if done is not None:
            log.warning("%s/result.json exists: this run is complete, skipping it", out_dir)
            if is_main_process():
                tidy_completed(out_dir)  # a run killed right after writing result.json left them
            return done
        t0 = time.perf_counter()
        r = build(cfg, out_dir)
        setup_s = time.perf_counter() - t0  # this process: data, tokenisation, model load, method
        if r.task.data_notes().get("same_source"):
            log.warning(
                "train and evaluation splits come from one original split (%s): not comparable with official dev numbers",
                r.task.data_notes()["same_source"],
            )
        with failure_record(r), logging_redirect_tqdm():  # log lines go above the bar, not onto it
            restore(r)
            timing = train(r) | {"setup_s": setup_s}
            distributed = ranks_agree(r)
            if not r.accelerator.is_main_process:
                return {}
            return save_outputs(r, timing, distributed)


@contextmanager
def failure_record(run: Run):
    """On any error once training has started (or any non-input error before), write failure.json."""
    try:
        yield
    except BaseException as e:
        refused = isinstance(e, UserError) and not isinstance(e, Diverged) and not run.progress.started
        if run.accelerator.is_main_process and not refused:
            what = {k: getattr(run.cfg, k).name for k in ("task", "method", "model")} | {"seed": run.cfg.seed}
            rundir.write_failure(
                run.out_dir, e, run.progress.step, run.last_checkpoint, what | {"config": run.config}
            )
        raise
    finally:
        run.tracker.finish()
