"""The run folder: one writer at a time, completed runs skipped, failed runs leave a record.

States of ``<output_dir>`` as a grid sees them:
  * ``result.json``   complete (status "ok"); re-running the same command skips it;
  * ``failure.json``  failed (status "failed", error, step); re-running retries, resuming from the
    newest checkpoint;
  * ``checkpoints/`` without either: killed or still running; re-running resumes.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from dora.errors import UserError, one_line
from dora.results import atomic_write_text

# Keys that change neither the computation nor the result, so a resume may differ in them.
NEUTRAL = (
    "output_dir",
    "logger",
    "trainer.progress",
    "trainer.log_every",
    "trainer.num_workers",
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
)


def check_output_dir(path: str | os.PathLike) -> None:
    """Refuse, without creating anything, an output_dir that cannot be created or written."""
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"output_dir={path} is not writable: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output_dir={path} is not writable: no write permission on {existing}")


def ensure_writable(out_dir: Path) -> None:
    """Create ``out_dir`` or say in one line why it cannot be a run folder."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(
            f"output_dir={out_dir} is not writable ({type(e).__name__}: {e.strerror or e})"
        ) from e


@contextmanager
def exclusive(out_dir: Path, enabled: bool = True):
    """Hold an exclusive lock on the run folder: a second process on the same folder (a clashing sweep
    job, a duplicate submission) is refused instead of interleaving writes. The kernel drops the lock
    when the process dies, so a SIGKILLed run never blocks its own resume."""
    if not enabled:
        yield
        return
    path = out_dir / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UserError(
                f"output_dir={out_dir} is in use by {holder}; choose another output_dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out if out else {prefix: tree}


def config_diff(old: dict, new: dict) -> list[str]:
    """Keys (dotted) whose values differ, ignoring the result-neutral ones."""
    a, b = flatten(old), flatten(new)

    def neutral(key: str) -> bool:
        return any(key == n + "." or key.startswith(n + ".") for n in NEUTRAL)

    return sorted(k.rstrip(".") for k in set(a) | set(b) if not neutral(k) and a.get(k) != b.get(k))


def refuse_other_config(out_dir: Path, what: str, old: dict, new: dict) -> None:
    diff = config_diff(old, new)
    if diff:
        shown = ", ".join(diff[:5]) + (", ..." if len(diff) > 5 else "")
        raise UserError(
            f"output_dir={out_dir} holds {what} of a different configuration (differs in: {shown}); "
            "use another output_dir or delete that one"
        )


def completed(out_dir: Path, config: dict) -> dict | None:
    """The result of a finished run of this very configuration in ``out_dir``, else None."""
    path = out_dir / "result.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    refuse_other_config(out_dir, "a completed run", result.get("config", {}), config)
    return result


def write_failure(out_dir: Path, error: BaseException, step: int, checkpoint: Path | None, run: dict) -> Path:
    """``failure.json``: what the aggregator lists as a failed run (and never counts)."""
    record = {
        "status": "failed",
        "error": f"{type(error).__name__}: {one_line(error)}",
        "step": step,
        "last_checkpoint": str(checkpoint) if checkpoint else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "traceback": traceback.format_exception(error)[-6:],
        **run,
    }
    path = out_dir / "failure.json"
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path
