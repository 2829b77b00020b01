"""One run: build (task, backbone, method) -> train -> evaluate -> write result.json.

The runner names no method and no task: it calls them only through their contracts
(dora.methods.base.Method, tasks.base.Task). Order of one optimizer step (spec §5):
forward -> loss = task + extra -> backward -> clip -> optimizer.step -> scheduler.step
-> method.after_optimizer_step (gradients still there) -> zero_grad.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from dora.errors import UserError, one_line
from dora.methods import Method, TaskInfo, build_method
from dora.models import load_backbone
from dora.results import environment, peak_memory_mb, save_tensors, write_result
from dora.tracking import make_tracker
from tasks import Task, build_task

log = logging.getLogger("dora")
datasets.disable_progress_bars()  # tokenisation bars drown the training bar
GROUPS = ("model", "task", "method", "budget", "trainer", "logger")


@dataclass
class Run:
    """Everything the training loop touches."""

    cfg: DictConfig
    out_dir: Path
    accelerator: Accelerator
    task: Task
    method: Method
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    total_steps: int
    epochs: int
    tracker: object
    data_notes: dict
    history: list[dict] = field(default_factory=list)


def validated(cfg: DictConfig) -> dict:
    """Group configs as dataclass objects; their ``__post_init__`` rejects impossible values."""
    try:
        return {g: OmegaConf.to_object(cfg[g]) for g in GROUPS}
    except (ValueError, TypeError) as e:
        raise UserError(one_line(e)) from e


def mixed_precision(choice: str, cpu: bool) -> str:
    if choice != "auto":
        return choice
    gpu = torch.cuda.is_available() and not cpu
    return "bf16" if gpu and torch.cuda.is_bf16_supported() else "no"


def build(cfg: DictConfig, out_dir: Path) -> Run:
    c = validated(cfg)
    trainer = c["trainer"]
    task = build_task(c["task"], cfg.data_dir)
    task.check_data()  # before any download or model build
    method = build_method(c["method"], c["budget"])
    accelerator = Accelerator(
        mixed_precision=mixed_precision(trainer.mixed_precision, trainer.cpu),
        gradient_accumulation_steps=trainer.grad_accum,
        cpu=trainer.cpu,
        step_scheduler_with_optimizer=False,  # the schedule is defined in optimizer steps of one process
    )
    set_seed(cfg.seed)
    backbone = load_backbone(c["model"], task.head, task.num_labels)
    data = task.load(backbone.tokenizer, trainer.max_length or c["task"].max_length)
    if len(data.train) == 0:
        raise UserError(f"task={c['task'].name}: the training split {c['task'].splits['train']!r} is empty")
    collate = task.collator(backbone.tokenizer)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = accelerator.prepare(
        DataLoader(
            data.train,
            trainer.batch_size,
            shuffle=True,
            collate_fn=collate,
            generator=generator,
            num_workers=trainer.num_workers,
        )
    )
    # T = ceil(batches per process / grad_accum) x epochs, or max_steps (spec §3)
    steps_per_epoch = math.ceil(len(train_loader) / trainer.grad_accum)
    total_steps = trainer.max_steps if trainer.max_steps > 0 else steps_per_epoch * trainer.epochs
    epochs = math.ceil(total_steps / steps_per_epoch)
    info = TaskInfo(task.cfg.name, task.head, backbone.family, backbone.head_prefixes, total_steps)
    model = method.apply(backbone.model, info)
    params = [p for p in model.parameters() if p.requires_grad]
    lr = trainer.lr if trainer.lr is not None else c["method"].lr
    optimizer = torch.optim.AdamW(
        params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=trainer.weight_decay
    )
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(trainer.warmup_ratio * total_steps), total_steps
    )
    eval_loaders = {
        name: DataLoader(ds, trainer.eval_batch_size, collate_fn=collate, num_workers=trainer.num_workers)
        for name, ds in data.evals.items()
    }
    model, optimizer, scheduler, *evals = accelerator.prepare(
        model, optimizer, scheduler, *eval_loaders.values()
    )
    eval_loaders = dict(zip(eval_loaders, evals, strict=True))
    tracker = make_tracker(
        c["logger"], OmegaConf.to_container(cfg, resolve=True), str(out_dir), out_dir.name,
        [task.cfg.name, method.cfg.name, c["model"].name], accelerator.is_main_process,
    )  # fmt: skip
    return Run(
        cfg,
        out_dir,
        accelerator,
        task,
        method,
        model,
        optimizer,
        scheduler,
        train_loader,
        eval_loaders,
        total_steps,
        epochs,
        tracker,
        data.notes,
    )


def evaluate(run: Run, epoch: int, step: int) -> dict:
    metrics: dict[str, float] = {}
    for split, loader in run.eval_loaders.items():
        metrics.update(run.task.evaluate(run.model, loader, run.accelerator, split))
    entry = {"epoch": epoch, "step": step, **metrics}
    run.history.append(entry)
    run.tracker.log(metrics, step)
    log.info("eval epoch %d step %d: %s", epoch, step, {k: round(v, 2) for k, v in metrics.items()})
    return entry


def train(run: Run) -> dict:
    """The training loop; returns timing. Evaluates after every epoch (and every eval_every steps)."""
    acc, trainer = run.accelerator, run.cfg.trainer
    bar = tqdm(
        total=run.total_steps,
        desc="train",
        disable=not (acc.is_main_process and trainer.progress),
        dynamic_ncols=True,
    )
    step, samples, eval_s, t0 = 0, 0, 0.0, time.perf_counter()
    running = torch.zeros(
        3, device=acc.device
    )  # (task loss sum, extra loss sum, micro-batches) since the last log
    run.model.train()
    for epoch in range(1, run.epochs + 1):
        for batch in run.train_loader:
            with acc.accumulate(run.model):
                loss = run.model(**batch).loss
                extra = run.method.extra_loss(acc.unwrap_model(run.model), step + 1)
                acc.backward(loss if extra is None else loss + extra)
                running[0] += loss.detach()
                running[2] += 1
                if extra is not None:
                    running[1] += extra.detach()
                samples += batch["input_ids"].shape[0]
                if not acc.sync_gradients:
                    continue
                acc.clip_grad_norm_(run.model.parameters(), trainer.max_grad_norm)
                run.optimizer.step()
                run.scheduler.step()
                step += 1
                scalars = run.method.after_optimizer_step(step, run.total_steps)
                run.optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            if step % trainer.log_every == 0 or step == run.total_steps:
                log_train(run, running, scalars, step, bar)
            if trainer.eval_every and step % trainer.eval_every == 0 and step < run.total_steps:
                eval_s += timed(evaluate, run, epoch, step)
            if step >= run.total_steps:
                break
        if not run.history or run.history[-1]["step"] != step:
            eval_s += timed(evaluate, run, epoch, step)
        if step >= run.total_steps:
            break
    bar.close()
    train_s = time.perf_counter() - t0 - eval_s
    return {
        "train_s": train_s,
        "eval_s": eval_s,
        "steps": step,
        "samples_per_s": samples * acc.num_processes / max(train_s, 1e-9),
        "peak_mem_mb": peak_memory_mb(acc.device),
    }


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def log_train(run: Run, running: torch.Tensor, scalars: dict, step: int, bar) -> None:
    """One host sync per log interval: mean losses since the last log, lr, method scalars."""
    task_loss, extra_loss = (running[:2] / running[2].clamp(min=1)).tolist()
    running.zero_()
    values = {
        "train/loss": task_loss,
        "train/extra_loss": extra_loss,
        "train/lr": run.scheduler.get_last_lr()[0],
    }
    values.update({f"method/{k}": float(v) for k, v in scalars.items()})
    run.tracker.log(values, step)
    bar.set_postfix(loss=f"{task_loss:.4f}", refresh=False)


def best_entry(history: list[dict], headline: str, from_step: int) -> dict:
    """Paper protocol: the best headline among evaluations at or after ``from_step`` (the last
    evaluation, at step T, always qualifies)."""
    eligible = [h for h in history if h["step"] >= from_step] or history[-1:]
    return max(eligible, key=lambda h: h[headline])


def save_outputs(run: Run, timing: dict) -> dict:
    """Trainable weights + method state (safetensors), resolved config, then result.json last."""
    model = run.accelerator.unwrap_model(run.model)
    c = run.cfg
    save_tensors(
        run.out_dir / "adapter" / "trainable.safetensors",
        {n: p for n, p in model.named_parameters() if p.requires_grad},
    )
    state = run.method.state_dict()
    if state:
        save_tensors(run.out_dir / "adapter" / "method_state.safetensors", state)
    (run.out_dir / "config.yaml").write_text(OmegaConf.to_yaml(c, resolve=True))
    best = best_entry(run.history, run.task.headline, run.method.best_from_step(run.total_steps))
    result = {
        "task": c.task.name,
        "method": c.method.name,
        "model": c.model.name,
        "seed": c.seed,
        "budget": run.method.budget_name,
        "status": "ok",
        "config": OmegaConf.to_container(c, resolve=True),
        "headline": run.task.headline,
        "metrics": {k: v for k, v in run.history[-1].items() if k not in ("epoch", "step")},
        "best": {k: v for k, v in best.items() if k != "step"},
        "history": run.history,
        "params": {
            "budget": int(run.method.budget_params(model)),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters()),
        },
        "timing": timing,
        "data": run.data_notes,
        "env": environment(str(run.accelerator.device)),
    }
    # optional hooks (design.md): rank allocation of dora / adalora, exports such as a PEFT adapter
    if hasattr(run.method, "rank_pattern"):
        result["rank_pattern"] = run.method.rank_pattern(model)
    if hasattr(run.method, "budget_history"):
        result["budget_history"] = run.method.budget_history()
    if hasattr(run.method, "export"):
        run.method.export(model, run.out_dir)
    run.tracker.summary(
        {"params/" + k: v for k, v in result["params"].items()}
        | {"best/" + k: v for k, v in result["best"].items()}
    )
    write_result(run.out_dir, result)
    return result


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Train and evaluate one configuration; returns the result written to ``out_dir/result.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    r = build(cfg, out_dir)
    if r.task.data_notes().get("same_source"):
        log.warning(
            "train and evaluation splits come from one original split (%s): not comparable with official dev numbers",
            r.task.data_notes()["same_source"],
        )
    try:
        timing = train(r)
        if not r.accelerator.is_main_process:
            return {}
        return save_outputs(r, timing)
    finally:
        r.tracker.finish()
