"""DynDoRA in the Hugging Face ``Trainer``: a callback for the allocator and its checkpoint state, and a
Trainer mixin that adds η·DEM to the training loss.

Where each piece hooks in (transformers 5.x ``Trainer._inner_training_loop``, per optimizer step):
forward/backward per micro-batch → clip → ``on_pre_optimizer_step`` → ``optimizer.step()`` →
``on_optimizer_step`` → ``lr_scheduler.step()`` → ``model.zero_grad()`` → ``global_step += 1`` →
``on_step_end`` → log/evaluate/save (``on_save``). The allocator runs in ``on_optimizer_step``: after
the real optimizer step and before the gradients are cleared, with ``step = global_step + 1`` (the
harness's runner calls it after the scheduler step instead; the allocator reads only weights, so the two
orders give the same result). It fires once per optimizer step, whatever the gradient accumulation.

Why a mixin for the loss: a callback cannot change the loss, and ``compute_loss_func`` replaces the
model's own loss (the Trainer pops the labels for it), so it would not compose with the task loss users
already have. ``compute_loss`` of a mixin placed first in the bases
(``class MyTrainer(DynDoRATrainerMixin, SFTTrainer)``) wraps whatever loss the Trainer below computes.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from dora.methods.dyndora.api import DynDoRAController

STATE_FILE = "dyndora_state.safetensors"  # in each checkpoint-<step>/ folder


class DynDoRACallback(TrainerCallback):
    """Drives a DynDoRA controller from the Trainer: T = ``state.max_steps`` at the start of training,
    the allocator after every optimizer step, and its state saved into / loaded from each checkpoint."""

    def __init__(self, controller: DynDoRAController):
        self.controller = controller
        self.scalars: dict = {}
        # set by DynDoRATrainerMixin.train; without it: output_dir/checkpoint-<step>
        self.resume_from: str | None = None
        self.loss_hooked = False  # DynDoRATrainerMixin adds η·DEM to the loss

    def on_train_begin(self, args, state, control, **kwargs):
        self.controller.start(state.max_steps)
        if self.controller.config.dem_coef > 0 and not self.loss_hooked:
            warnings.warn(
                "DynDoRA: η·DEM is not added to the loss; use DynDoRATrainer or DynDoRATrainerMixin "
                "(or set dem_coef=0)",
                stacklevel=2,
            )
        if state.global_step > 0:  # resuming: the Trainer has restored weights, optimizer and its state
            folder = self.resume_from or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            path = Path(folder) / STATE_FILE
            if not path.is_file():
                raise FileNotFoundError(
                    f"resuming at step {state.global_step} but {path} is missing: the DynDoRA state (EMA "
                    "scores, final mask) is saved by DynDoRACallback.on_save"
                )
            self.controller.load_state(path)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.scalars = self.controller.after_optimizer_step(state.global_step + 1)

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.controller.save_state(folder / STATE_FILE)


class DynDoRATrainerMixin:
    """Put first in the bases of a ``Trainer`` (sub)class: registers a ``DynDoRACallback`` and adds η·DEM
    to the training loss while DEM is on. ``Trainer(..., dyndora=controller)``."""

    def __init__(self, *args, dyndora: DynDoRAController, **kwargs):
        super().__init__(*args, **kwargs)
        self.dyndora = dyndora
        self.dyndora_callback = DynDoRACallback(dyndora)
        self.dyndora_callback.loss_hooked = True
        self.add_callback(self.dyndora_callback)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        path = resume_from_checkpoint
        if isinstance(path, bool):
            path = get_last_checkpoint(self.args.output_dir) if path else None
        self.dyndora_callback.resume_from = None if path is None else str(path)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if not model.training:  # evaluation calls compute_loss too: the task loss only
            return out
        extra = self.dyndora.extra_loss(self.state.global_step + 1)
        if extra is None:
            return out
        extra = extra / self._micro_batches_per_step(num_items_in_batch)
        if return_outputs:
            return out[0] + extra, out[1]
        return out + extra

    def _micro_batches_per_step(self, num_items_in_batch) -> int:
        """How many times this step's η·DEM is added before one optimizer step, after the Trainer's own
        scaling: it divides a per-micro-batch mean loss by the accumulation steps itself (then 1 here),
        but not a loss already normalised over the whole accumulated batch (then divide here)."""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
                self.compute_loss_func is not None
            )
        return self.current_gradient_accumulation_steps if scaled else 1

    def log(self, logs: dict, *args, **kwargs):
        if "loss" in logs and self.dyndora_callback.scalars:  # training logs: the allocator's budget
            logs.update({f"dyndora/{k}": int(v) for k, v in self.dyndora_callback.scalars.items()})
        return super().log(logs, *args, **kwargs)


class DynDoRATrainer(DynDoRATrainerMixin, Trainer):
    """``transformers.Trainer`` with DynDoRA: ``DynDoRATrainer(model=..., args=..., dyndora=controller)``."""
