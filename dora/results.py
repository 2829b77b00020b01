"""Run outputs: result.json (atomic, written last), the resolved config, trainable weights."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import save_file

PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "hydra-core", "wandb")
REPO = Path(__file__).resolve().parent.parent


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file (a full
    disk leaves the old file or none, never an empty one). Mode 0666 less the umask, as open() would
    give (mkstemp's own 0600 would hide results from the group)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_result(out_dir: str | os.PathLike, result: dict) -> Path:
    path = Path(out_dir) / "result.json"
    # strict JSON: a NaN or inf here is a bug upstream (metrics and labels are checked), never a value
    atomic_write_text(path, json.dumps(result, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return path


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors file of CPU, contiguous copies (never pickle)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def environment(device: str) -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
        "versions": versions,
        "device": device,
    }


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
