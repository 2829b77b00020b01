"""Shared fixtures. Real benchmark files come from shared/data, found via ``--data-dir`` or the
DORA_DATA_DIR environment variable (default: ../shared/data next to the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption(
        "--data-dir", default=None, help="folder laid out like shared/data (glue/, squad/, xsum/)"
    )


@pytest.fixture(scope="session")
def data_dir(request) -> Path:
    value = (
        request.config.getoption("--data-dir")
        or os.environ.get("DORA_DATA_DIR")
        or REPO.parent / "shared" / "data"
    )
    path = Path(value).resolve()
    if not (path / "glue").is_dir():
        pytest.skip(f"no benchmark data at {path} (set DORA_DATA_DIR or --data-dir)")
    return path


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never touch the network: hub lookups fail fast, wandb stays offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")


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
