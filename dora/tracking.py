"""Experiment tracking: wandb (online with credentials, offline otherwise, never a prompt) or none."""

from __future__ import annotations

import netrc
import os
import secrets
from pathlib import Path

from dora.config import LoggerConfig


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


class WandbTracker:
    def __init__(self, cfg: LoggerConfig, config: dict, out_dir: str, name: str, tags: list[str]):
        import wandb

        self._run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=name,
            tags=[*cfg.tags, *tags],
            config=config,
            dir=out_dir,
            mode=wandb_mode(cfg),
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
