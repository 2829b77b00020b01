"""Helpers for tests: compose configs and run the harness in-process or as the CLI does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dora.cli import compose_config
from dora.config import RunConfig

REPO = Path(__file__).resolve().parent.parent


def compose(*overrides: str) -> RunConfig:
    """The run's typed configuration, composed and converted as ``python run.py OVERRIDES`` does."""
    return RunConfig.from_hydra(compose_config(list(overrides)))


def run_inprocess(tmp_path: Path, *overrides: str) -> dict:
    """Compose and train in this process (fast: no interpreter start-up); returns result.json."""
    from dora.runner import run

    out = tmp_path / "run"
    cfg = compose("logger=none", "trainer.progress=false", f"output_dir={out}", *overrides)
    run(cfg, out)
    return json.loads((out / "result.json").read_text())


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def run_script(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python scripts/<script> ARGS`` from the repository root, as a user runs it (tests/conftest.py
    points PYTHONPATH at this checkout)."""
    cmd = [sys.executable, f"scripts/{script}", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def cli_inprocess(capsys, *args: str) -> tuple[int, str]:
    """What ``python run.py ARGS`` does (preflight, compose, run), in this process: (exit code, stderr)."""
    from dora.cli import preflight, run_job

    try:
        preflight(list(args))
        cfg = compose_config(list(args))
        run_job(cfg, cfg.output_dir)
    except SystemExit as e:
        return int(e.code), capsys.readouterr().err
    return 0, capsys.readouterr().err
