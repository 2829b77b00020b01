"""Shared fixtures.

``data_dir`` is ``data/fixtures`` in this repository: small real slices of the benchmark files, so a
fresh clone runs every data test. The few tests that need the full files (official row counts) are
marked ``full_data`` and take ``full_data_dir``: the folder given by ``--data-dir`` or DORA_DATA_DIR.
Without either they are skipped with that reason; nothing is looked up at a fixed path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    """One thread for every run the tests start, module-scoped fixtures included (they run before the
    function-scoped monkeypatch below): results must not depend on the caller's OMP_NUM_THREADS. The
    subprocesses they start (run.py, scripts, grid jobs) import this checkout, as its editable install
    does, whichever checkout the interpreter has installed."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def pytest_addoption(parser):
    parser.addoption(
        "--data-dir", default=None, help="folder laid out like shared/data (glue/, squad/, xsum/)"
    )


FIXTURES = REPO / "data" / "fixtures"


def _full_data_option(config) -> str | None:
    return config.getoption("--data-dir") or os.environ.get("DORA_DATA_DIR") or None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data slices shipped in data/fixtures (the same layout as a full data folder)."""
    return FIXTURES


@pytest.fixture(scope="session")
def full_data_dir(request) -> Path:
    """The full benchmark files (``--data-dir`` or DORA_DATA_DIR); only for tests marked full_data."""
    path = Path(_full_data_option(request.config)).resolve()
    if not (path / "glue").is_dir():
        pytest.fail(f"--data-dir / DORA_DATA_DIR={path} has no glue/ folder (expected a shared/data layout)")
    return path


def pytest_collection_modifyitems(config, items):
    import torch

    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = pytest.mark.skip(reason="needs CUDA")
    if not _full_data_option(config):
        skips["full_data"] = pytest.mark.skip(
            reason="needs the full benchmark files: set DORA_DATA_DIR=PATH or --data-dir PATH "
            "(a folder laid out like shared/data; data/fixtures holds only slices)"
        )
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never touch the network: hub lookups fail fast, wandb stays offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")


@pytest.fixture(autouse=True)
def _one_thread_per_run(monkeypatch):
    """Runs started by tests (in this process or as subprocesses) take trainer.threads=null, i.e.
    OMP_NUM_THREADS: one thread, as the ``one_thread`` fixtures here, so that in-process and CLI runs of
    one configuration compute bit-identically and tiny models don't fight over a shared CPU."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core CPU: one intra-op thread is faster than two competing ones
    (about 3x here) and keeps CPU results bit-reproducible across runs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _data_cache(tmp_path_factory):
    """Tokenised splits are cached (tasks/cache.py) in a folder of this test session, never in ~/.cache."""
    old = os.environ.get("DORA_DATA_CACHE")
    os.environ["DORA_DATA_CACHE"] = str(tmp_path_factory.mktemp("tokenised"))
    yield
    if old is None:
        os.environ.pop("DORA_DATA_CACHE", None)
    else:
        os.environ["DORA_DATA_CACHE"] = old
