"""Checkpoints for exact resume: safetensors for tensors, JSON for everything else (never pickle).

A checkpoint is one folder ``<output_dir>/checkpoints/step-<NNNNNN>/``::

    trainable.safetensors        trainable weights (names of the unwrapped model)
    method_state.safetensors     Method.state_dict() (DynDoRA EMA scores and masks, AdaLoRA allocator)
    optimizer.safetensors        optimizer state tensors, keyed "<param index>.<name>"
    optimizer.json               the rest of the optimizer state_dict (param groups), with an index
    scheduler.json               the LR scheduler state_dict
    rng-rank<R>.json             RNG states of process R (python, numpy, torch CPU and CUDA)
    state.json                   progress, history, loss sums, resolved config
    index.json                   size and sha256 of every file above; written last

It is written into ``.tmp-step-<NNNNNN>`` and renamed into place, so a folder named ``step-*`` is always
complete: a run killed while writing leaves only a temporary folder, which the next save removes.
A checkpoint damaged afterwards (truncated, emptied, a flipped byte, a missing file) fails its index on
resume: it is set aside as ``.damaged-step-<NNNNNN>`` and the run resumes from the newest one that
verifies. Only folders this harness wrote (a ``step-*`` folder with an index, ``.tmp-*``, ``.damaged-*``)
are ever deleted: a ``checkpoints/`` folder that held other files keeps them.
Data order needs no state beyond (epoch, batches consumed): ``EpochShuffle`` is a pure function of the
seed and the epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import Sampler

from dora.errors import UserError
from dora.results import atomic_write_text, save_tensors
from dora.rundir import refuse_other_config

FORMAT = 1  # bump when the layout changes; older checkpoints are then refused, not misread
PREFIX = "step-"
INDEX = "index.json"  # sizes and checksums of the checkpoint's files; its presence marks it complete
DAMAGED = ".damaged-"  # a checkpoint that failed verification, kept aside for inspection
log = logging.getLogger(__name__)


class EpochShuffle(Sampler[int]):
    """A fresh permutation of ``n`` items per epoch, drawn from (seed, epoch) alone.

    Resuming mid-epoch needs only the epoch and the number of batches already consumed, and every
    process of a multi-process run draws the same order (Accelerate then deals out whole batches).

    With ``lengths`` (one per item) the order is length-grouped, as transformers' ``group_by_length``:
    the permutation is cut into megabatches of 50 batches, each sorted by length and cut into batches,
    and the full batches are shuffled (the short last batch stays last, so batches stay aligned). A batch
    then holds items of similar length: far less padding, the same items per epoch.
    """

    MEGABATCH = 50  # batches per length-sorted chunk

    def __init__(self, n: int, seed: int, lengths=None, batch_size: int = 1):
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} items")
        self.n, self.seed, self.epoch = n, seed, 1
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size = batch_size

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])  # independent stream per (seed, epoch)
        order = rng.permutation(self.n)
        if self.lengths is not None:
            order = self._grouped(order, rng)
        return iter(order.tolist())

    def _grouped(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        bs, mega = self.batch_size, self.MEGABATCH * self.batch_size
        chunks = [order[i : i + mega] for i in range(0, self.n, mega)]
        # longest first within a chunk; a stable sort keeps ties in their random order
        order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        batches = [order[i : i + bs] for i in range(0, self.n, bs)]
        last = [batches.pop()] if len(batches[-1]) < bs else []
        picks = rng.permutation(len(batches))
        return np.concatenate([batches[i] for i in picks] + last)

    def __len__(self) -> int:
        return self.n


# -- JSON with tuples (optimizer betas) and non-finite floats kept exact ---------------------------
def _encode(value):
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if torch.is_tensor(value):
        raise TypeError("tensors belong in safetensors, not JSON")
    return value


def _decode(value):
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_decode(v) for v in value["__tuple__"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def write_json(path: Path, value) -> None:
    atomic_write_text(path, json.dumps(_encode(value)) + "\n")  # floats round-trip exactly (repr)


def read_json(path: Path):
    return _decode(json.loads(path.read_text()))


# -- optimizer and scheduler -------------------------------------------------------------------------
def save_optimizer(optimizer, folder: Path) -> None:
    """Tensors of ``optimizer.state_dict()["state"]`` to safetensors, the rest to JSON."""
    sd = optimizer.state_dict()
    tensors, state = {}, {}
    for idx, entry in sd["state"].items():
        state[str(idx)] = {}
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value
                state[str(idx)][name] = {"__tensor__": f"{idx}.{name}"}
            else:
                state[str(idx)][name] = value
    save_tensors(folder / "optimizer.safetensors", tensors)
    write_json(folder / "optimizer.json", {"state": state, "param_groups": sd["param_groups"]})


def load_optimizer(optimizer, folder: Path) -> None:
    index = read_json(folder / "optimizer.json")
    tensors = load_file(str(folder / "optimizer.safetensors"))
    state = {
        int(idx): {
            name: tensors[v["__tensor__"]] if isinstance(v, dict) and "__tensor__" in v else v
            for name, v in entry.items()
        }
        for idx, entry in index["state"].items()
    }
    optimizer.load_state_dict({"state": state, "param_groups": index["param_groups"]})


# -- RNG ---------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """Every generator a training step may draw from (dropout: torch; python/numpy for completeness)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# -- checkpoint folders ------------------------------------------------------------------------------
def step_of(folder: Path) -> int:
    return int(folder.name.rsplit(PREFIX, 1)[1])


def complete(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first: a ``step-*`` folder with its index, or with
    the state.json that marked completion before indexes existed (legacy)."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob(PREFIX + "*") if p.name[len(PREFIX) :].isdigit()]
    return sorted((p for p in found if (p / INDEX).is_file() or _legacy(p)), key=step_of)


def _legacy(folder: Path) -> bool:
    """A checkpoint written before index.json existed: state.json of this harness's format, no index."""
    if (folder / INDEX).exists() or not (folder / "state.json").is_file():
        return False
    try:
        return read_json(folder / "state.json").get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def latest(root: Path) -> Path | None:
    found = complete(root)
    return found[-1] if found else None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_index(folder: Path) -> None:
    """index.json: the size and sha256 of every file in ``folder`` (fsynced first)."""
    files = {}
    for f in sorted(folder.iterdir()):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
        files[f.name] = {"bytes": f.stat().st_size, "sha256": sha256(f)}
    write_json(folder / INDEX, {"format": FORMAT, "files": files})


def verify(folder: Path, process_index: int = 0) -> str | None:
    """None if every file of the checkpoint matches its index, else what is wrong (one phrase). A legacy
    checkpoint (no index) passes when its files are all there and not empty."""
    if _legacy(folder):
        needed = ("trainable.safetensors", "method_state.safetensors", "optimizer.safetensors",
                  "optimizer.json", "scheduler.json", f"rng-rank{process_index}.json")  # fmt: skip
        empty = [n for n in needed if not (folder / n).is_file() or (folder / n).stat().st_size == 0]
        return f"{empty[0]} missing or empty" if empty else None
    try:
        files = read_json(folder / INDEX)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{INDEX} unreadable ({type(e).__name__})"
    for name in ("state.json", "trainable.safetensors", f"rng-rank{process_index}.json"):
        if name not in files:
            return f"{name} missing from its index"
    for name, meta in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} missing"
        if path.stat().st_size != meta["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, its index says {meta['bytes']}"
        if sha256(path) != meta["sha256"]:
            return f"{name} fails its checksum"
    return None


def newest_valid(root: Path, process_index: int = 0) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that verifies, and the newer ones that did not (with the reason)."""
    damaged = []
    for folder in reversed(complete(root)):
        problem = verify(folder, process_index)
        if problem is None:
            return folder, damaged
        damaged.append((folder, problem))
    return None, damaged


TRASH = ".trash-"  # a checkpoint being deleted: renamed first, so a kill mid-delete leaves no half folder


def discard(folder: Path) -> None:
    """Delete a checkpoint folder of this harness: rename it to ``.trash-*`` (atomic), then remove it.
    A kill during the removal leaves a ``.trash-*`` folder, which is ours and removed later, never a
    ``step-*`` folder that has lost its index and no longer looks like ours."""
    trash = folder if folder.name.startswith(TRASH) else folder.with_name(TRASH + folder.name)
    if trash != folder:
        if trash.exists():
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def set_aside(folder: Path) -> Path:
    """Rename a damaged checkpoint out of the way (kept for inspection; removed when the run completes)."""
    target = folder.with_name(DAMAGED + folder.name)
    if target.exists():
        discard(target)
    os.replace(folder, target)
    return target


def ours(entry: Path) -> bool:
    """A folder under checkpoints/ that this harness wrote: never anything else is deleted."""
    name = entry.name
    if not entry.is_dir() or entry.is_symlink():
        return False
    if name.startswith((".tmp-" + PREFIX, DAMAGED + PREFIX, TRASH)):
        return True
    is_step = name.startswith(PREFIX) and name[len(PREFIX) :].isdigit()
    return is_step and ((entry / INDEX).is_file() or _legacy(entry))


def clean(root: Path) -> None:
    """Remove this harness's checkpoints from ``root``, then ``root`` itself if that leaves it empty."""
    if not root.is_dir() or root.is_symlink():
        return
    for entry in root.iterdir():
        if ours(entry):
            discard(entry)
    with contextlib.suppress(OSError):
        root.rmdir()  # only when empty: other files in it are not the run's to delete


def temp_folder(root: Path, step: int) -> Path:
    """A clean temporary folder for the checkpoint of ``step`` (what a killed save left is removed)."""
    tmp = root / f".tmp-{PREFIX}{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, keep: int) -> Path:
    """Index the files, rename the folder into place, drop all but the newest ``keep`` checkpoints."""
    write_index(tmp)  # last: a folder with an index is complete
    final = tmp.with_name(tmp.name[len(".tmp-") :])
    if final.exists():
        if not ours(final):
            raise UserError(f"{final} exists and was not written by this harness; move it away")
        discard(final)  # only ever a stale copy of the same step
    os.replace(tmp, final)
    for old in complete(final.parent)[:-keep]:
        discard(old)
    return final


# -- save and restore a run ------------------------------------------------------------------------
# ``run`` is dora.runner.Run: accelerator, model, method, optimizer, scheduler, config.
def save(run, state: dict, root: Path, keep: int) -> Path:
    """Write one checkpoint of every process's state; returns its folder. All processes call this."""
    acc = run.accelerator
    tmp = root / f".tmp-{PREFIX}{state['progress']['step']:06d}"
    acc.wait_for_everyone()
    if acc.is_main_process:
        temp_folder(root, state["progress"]["step"])
    acc.wait_for_everyone()
    write_json(tmp / f"rng-rank{acc.process_index}.json", rng_state())  # each process draws its own
    final = tmp.with_name(tmp.name[len(".tmp-") :])
    if acc.is_main_process:  # weights, optimizer and method state are identical on every process
        model = acc.unwrap_model(run.model)
        save_tensors(
            tmp / "trainable.safetensors", {n: p for n, p in model.named_parameters() if p.requires_grad}
        )
        save_tensors(tmp / "method_state.safetensors", run.method.state_dict())
        save_optimizer(run.optimizer, tmp)
        write_json(tmp / "scheduler.json", run.scheduler.state_dict())
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_json(tmp / "state.json", {"format": FORMAT, **state})
        publish(tmp, keep)  # writes the index last: marks the folder complete
    acc.wait_for_everyone()
    return final


def restore(run, folder: Path) -> dict:
    """Load a checkpoint into ``run`` (this process's RNG included); returns its state.json."""
    state = read_json(folder / "state.json")
    acc = run.accelerator
    if state.get("format") != FORMAT:
        raise UserError(f"checkpoint {folder} has format {state.get('format')}, this harness reads {FORMAT}")
    refuse_other_config(run.out_dir, f"checkpoint {folder.name}", state["config"], run.config)
    if state["processes"] != acc.num_processes:
        raise UserError(
            f"checkpoint {folder} was written by {state['processes']} processes; resume it with as many "
            f"(this run has {acc.num_processes})"
        )
    load_trainable(acc.unwrap_model(run.model), folder / "trainable.safetensors")
    method_state = load_file(str(folder / "method_state.safetensors"), device=str(acc.device))
    run.method.load_state_dict(method_state)
    load_optimizer(run.optimizer, folder)
    run.scheduler.load_state_dict(read_json(folder / "scheduler.json"))
    set_rng_state(read_json(folder / f"rng-rank{acc.process_index}.json"))
    return state


@torch.no_grad()
def load_trainable(model: torch.nn.Module, path: Path) -> None:
    saved = load_file(str(path))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != set(params):
        odd = sorted(set(saved) ^ set(params))[:3]
        raise UserError(f"checkpoint {path.parent} does not match this model (e.g. {odd})")
    for name, p in params.items():
        p.copy_(saved[name])
