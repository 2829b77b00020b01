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

from dora.config import RunConfig
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


VIRTUAL = ("/proc", "/sys")  # kernel filesystems: never a run folder


def check_output_dir(path: str | os.PathLike) -> None:
    """Refuse, without creating anything, an output_dir that cannot be created or written."""
    full = Path(os.path.abspath(path or "."))
    for virtual in VIRTUAL:
        if full == Path(virtual) or Path(virtual) in full.parents:
            raise UserError(
                f"output_dir={path} is under {virtual}, a kernel filesystem; choose a folder on disk"
            )
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


class Claim:
    """This process's exclusive lock on a run folder, and whether this process created the folder."""

    def __init__(self, out_dir: Path, handle, created: bool):
        self.out_dir, self.handle, self.created = out_dir, handle, created

    def release(self) -> None:
        unlock(self.out_dir, self.handle)


def unlock(out_dir: Path, handle) -> None:
    """Release the folder's lock; a finished run (result.json) also loses its ``.lock`` file. Locks are
    never waited for, and whoever takes one decides only after it holds it, so a process that opened the
    file just before it goes finds the result and writes nothing."""
    if (out_dir / "result.json").is_file():
        (out_dir / ".lock").unlink(missing_ok=True)
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


_CLAIMS: dict[str, Claim] = {}  # claims taken ahead of the run (``claim``), by absolute folder


def _key(out_dir) -> str:
    return os.path.abspath(out_dir)


def _lock(out_dir: Path):
    """The folder's ``.lock``, locked; or one line naming the holder. Reads nothing else, writes nothing
    until the lock is ours: a refused process leaves the folder exactly as it found it."""
    path = out_dir / ".lock"
    f = open(path, "a+")  # noqa: SIM115  (stays open: the open file holds the lock)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UserError(f"output_dir={out_dir} is in use by {holder}; choose another output_dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    return f


def claim(out_dir: str | os.PathLike) -> Claim:
    """Create ``out_dir`` if needed and lock it, before anything else is written there (Hydra's .hydra/
    and run.log included). Held until ``release`` (or the process ends); ``exclusive`` then reuses it."""
    out_dir = Path(out_dir or ".")
    created = not out_dir.exists()
    ensure_writable(out_dir)
    c = Claim(out_dir, _lock(out_dir), created)
    _CLAIMS[_key(out_dir)] = c
    return c


def claimed(out_dir) -> Claim | None:
    return _CLAIMS.get(_key(out_dir))


def release(out_dir) -> None:
    c = _CLAIMS.pop(_key(out_dir), None)
    if c is not None:
        c.release()


@contextmanager
def exclusive(out_dir: Path, enabled: bool = True):
    """Hold an exclusive lock on the run folder: a second process on the same folder (a clashing sweep
    job, a duplicate submission) is refused instead of interleaving writes. The kernel drops the lock
    when the process dies, so a SIGKILLed run never blocks its own resume. A folder ``claim``ed ahead of
    the run (run.py does so before Hydra writes) is already locked by this process."""
    if not enabled or claimed(out_dir) is not None:
        yield
        return
    f = _lock(out_dir)
    try:
        yield
    finally:
        unlock(out_dir, f)


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


def completed(out_dir: Path, cfg: RunConfig) -> dict | None:
    """The result of a finished run of this very configuration in ``out_dir``, else None."""
    path = out_dir / "result.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(
            f"output_dir={out_dir} holds an unreadable result.json ({type(e).__name__}: {one_line(e)}); "
            "this harness never writes one half-way: move it away to run again"
        ) from None
    if not isinstance(result, dict):
        raise UserError(f"output_dir={out_dir} holds a result.json that is not a run's result; move it away")
    refuse_other_config(out_dir, "a completed run", result.get("config", {}), cfg.as_dict())
    return result


def write_failure(out_dir: Path, error: BaseException, step: int, checkpoint: Path | None, run: dict) -> Path:
    """``failure.json``: what the aggregator lists as a failed run (and never counts). Ctrl-C (or a
    SIGINT from a scheduler) is recorded as ``interrupted``, without a traceback."""
    interrupted = isinstance(error, KeyboardInterrupt)
    record = {
        "status": "interrupted" if interrupted else "failed",
        "error": "KeyboardInterrupt: interrupted"
        if interrupted
        else f"{type(error).__name__}: {one_line(error)}",
        "step": step,
        "last_checkpoint": str(checkpoint) if checkpoint else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "traceback": [] if interrupted else traceback.format_exception(error)[-6:],
        **run,
    }
    path = out_dir / "failure.json"
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path
