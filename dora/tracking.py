"""Experiment tracking: wandb (online with credentials, offline otherwise, never a prompt) or none."""

from __future__ import annotations

import logging
import netrc
import os
import secrets
import socket
from pathlib import Path
from urllib.parse import urlparse

from dora.config import LoggerConfig

log = logging.getLogger(__name__)


class NullTracker:
    def log(self, values: dict, step: int) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def finish(self) -> None:
        pass


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(cfg: LoggerConfig) -> str:
    """An explicit logger.mode wins, then WANDB_MODE, then online iff credentials exist."""
    if cfg.mode != "auto":
        return cfg.mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if has_wandb_credentials() else "offline"


ID_FILE = "wandb_run_id"  # in the run folder: a resumed run continues the same wandb run


def wandb_run_id(out_dir: str) -> str:
    """The run folder's wandb id: made on the first start, read back on every resume."""
    path = Path(out_dir) / ID_FILE
    if path.exists():
        return path.read_text().strip()
    run_id = secrets.token_hex(6)  # 12 lowercase hex characters: a valid wandb run id
    path.write_text(run_id + "\n")
    return run_id


def wandb_host() -> tuple[str, int]:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    return url.hostname or "api.wandb.ai", url.port or (443 if url.scheme == "https" else 80)


def wandb_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the wandb server opens within ``timeout`` seconds (wandb itself
    retries for minutes before it gives up)."""
    try:
        socket.create_connection(wandb_host(), timeout=timeout).close()
    except OSError:
        return False
    return True


class WandbTracker:
    def __init__(self, cfg: LoggerConfig, config: dict, out_dir: str, name: str, tags: list[str]):
        import wandb

        mode = wandb_mode(cfg)
        if mode == "online" and not wandb_reachable():
            host, port = wandb_host()
            log.warning(
                "wandb: %s:%d is unreachable; logging offline to %s/wandb (send it later with `wandb sync`)",
                host, port, out_dir,
            )  # fmt: skip
            mode = "offline"
        self._run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=name,
            tags=[*cfg.tags, *tags],
            config=config,
            dir=out_dir,
            mode=mode,
            id=wandb_run_id(out_dir),
            resume="allow",  # one wandb run per run folder, across resumes
            settings=wandb.Settings(silent=True, console="off"),
        )

    def log(self, values: dict, step: int) -> None:
        self._run.log(values, step=step)

    def summary(self, values: dict) -> None:
        self._run.summary.update(values)

    def finish(self) -> None:
        self._run.finish()


def make_tracker(
    cfg: LoggerConfig, config: dict, out_dir: str, name: str, tags: list[str], main_process: bool
):
    if cfg.kind == "wandb" and main_process:
        return WandbTracker(cfg, config, out_dir, name, tags)
    return NullTracker()
