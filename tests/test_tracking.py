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


class FakeRun:
    """Records what the harness hands to wandb (the real service is exercised by the slow test)."""

    def __init__(self, **kwargs):
        self.init, self.logged, self.summary, self.finished = kwargs, [], {}, False

    def log(self, values, step):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


def test_a_wandb_run_gets_config_metrics_losses_and_counts(tmp_path, data_dir, no_credentials, monkeypatch):
    import wandb

    runs = []
    monkeypatch.setattr(wandb, "init", lambda **kw: runs.append(FakeRun(**kw)) or runs[-1])
    run_inprocess(tmp_path, "task=rte", "method=bitfit", "model=tiny_roberta", f"data_dir={data_dir}", "trainer.max_steps=3",
                  "trainer.log_every=1", "task.splits.train=train:0:48", "task.splits.dev=dev:0:16", "logger=wandb")  # fmt: skip
    (run,) = runs
    assert run.init["mode"] == "offline" and run.init["project"] == "dyndora"
    assert run.init["config"]["trainer"]["max_steps"] == 3 and "rte" in run.init["tags"]
    keys = set().union(*(values for _, values in run.logged))
    assert {"train/loss", "train/extra_loss", "train/lr", "dev/accuracy"} <= keys
    assert [step for step, values in run.logged if "train/loss" in values] == [1, 2, 3]
    assert run.summary["params/budget"] > 0 and "best/dev/accuracy" in run.summary
    assert run.finished


def test_a_resumed_run_continues_its_wandb_run(tmp_path, no_credentials, monkeypatch):
    import wandb

    runs = []
    monkeypatch.setattr(wandb, "init", lambda **kw: runs.append(FakeRun(**kw)) or runs[-1])
    first, other = tmp_path / "a", tmp_path / "b"
    first.mkdir(), other.mkdir()
    for folder in (first, first, other):  # start, resume, another run
        make_tracker(LoggerConfig(kind="wandb"), {}, str(folder), folder.name, [], True)
    ids = [run.init["id"] for run in runs]
    assert ids[0] == ids[1] != ids[2] and all(run.init["resume"] == "allow" for run in runs)
    assert (first / "wandb_run_id").read_text().strip() == ids[0]


@pytest.mark.slow
def test_a_real_offline_wandb_run_writes_its_records(tmp_path, data_dir, no_credentials):
    run_inprocess(tmp_path, "task=rte", "method=bitfit", "model=tiny_roberta", f"data_dir={data_dir}", "trainer.max_steps=3",
                  "task.splits.train=train:0:48", "task.splits.dev=dev:0:16", "logger=wandb")  # fmt: skip
    (log,) = (tmp_path / "run" / "wandb").glob(
        "offline-run-*/*.wandb"
    )  # protobuf: key strings appear verbatim
    data = log.read_bytes()
    for key in (b"dev/accuracy", b"train/loss", b"params/budget", b"max_steps"):
        assert key in data, key
