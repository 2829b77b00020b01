"""wandb: offline without credentials, online with them, an explicit mode wins; never a prompt."""

from __future__ import annotations

import pytest

from dora.config import LoggerConfig
from dora.tracking import NullTracker, make_tracker, wandb_mode
from tests.helpers import run_inprocess


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))


def test_mode_without_credentials_is_offline(no_credentials):
    assert wandb_mode(LoggerConfig(kind="wandb")) == "offline"


def test_mode_with_a_key_or_netrc_is_online(no_credentials, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(LoggerConfig(kind="wandb")) == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "y" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode(LoggerConfig(kind="wandb")) == "online"


def test_explicit_mode_and_env_win(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode(LoggerConfig(kind="wandb")) == "offline"
    assert wandb_mode(LoggerConfig(kind="wandb", mode="online")) == "online"


def test_logger_none_and_non_main_processes_log_nothing():
    assert isinstance(make_tracker(LoggerConfig(kind="none"), {}, ".", "x", [], True), NullTracker)
    assert isinstance(make_tracker(LoggerConfig(kind="wandb"), {}, ".", "x", [], False), NullTracker)


def test_an_offline_wandb_run_records_metrics_and_config(tmp_path, data_dir, no_credentials):
    run_inprocess(tmp_path, "task=rte", "method=bitfit", "model=tiny_roberta", f"data_dir={data_dir}", "trainer.max_steps=3",
                  "task.splits.train=train:0:48", "task.splits.dev=dev:0:16", "logger=wandb")  # fmt: skip
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (log,) = runs[0].glob("*.wandb")  # protobuf records: strings of keys appear verbatim
    data = log.read_bytes()
    for key in (b"dev/accuracy", b"train/loss", b"params/budget", b"max_steps"):
        assert key in data, key
