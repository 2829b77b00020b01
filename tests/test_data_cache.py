"""The tokenised-data cache (tasks/cache.py, issue 17 item 10): a warm load gives exactly the tensors
of a cold one and of no cache at all, and the key follows the file, the tokenizer and the length."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from dora.config import TaskConfig
from dora.models import byte_level_tokenizer
from tasks import build_task, cache
from tests.helpers import REPO

DEMO = REPO / "data" / "demo"  # a real SST-2 slice shipped in the repository


def load(data_dir, max_length=32, tokenizer=None):
    task = build_task(TaskConfig(name="sst2", splits={"train": "train:0:300", "dev": "dev"}), str(data_dir))
    return task, task.load(tokenizer or byte_level_tokenizer(), max_length=max_length)


def batches(task, data, tokenizer=None):
    """Every split as the runner's collator pads it, 32 rows at a time."""
    collate = task.collator(tokenizer or byte_level_tokenizer())
    out = []
    for ds in [data.train, *data.evals.values()]:
        for i in range(0, len(ds), 32):
            out.append(collate([ds[j] for j in range(i, min(i + 32, len(ds)))]))
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


def entries(root):
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def test_warm_equals_cold_equals_uncached(tmp_path, monkeypatch):
    monkeypatch.setenv("DORA_DATA_CACHE", "off")
    task, data = load(DEMO)
    plain = batches(task, data)
    root = tmp_path / "cache"
    monkeypatch.setenv("DORA_DATA_CACHE", str(root))
    task, cold = load(DEMO)
    assert len(entries(root)) == 2  # train and dev
    cold_batches = batches(task, cold)
    task, warm = load(DEMO)
    assert len(entries(root)) == 2
    assert cold.train.features == warm.train.features and cold.train.to_dict() == warm.train.to_dict()
    assert_same(plain, cold_batches)
    assert_same(plain, batches(task, warm))


def test_key_follows_file_tokenizer_and_length(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    shutil.copytree(DEMO, data_dir)
    root = tmp_path / "cache"
    monkeypatch.setenv("DORA_DATA_CACHE", str(root))
    load(data_dir)
    assert len(entries(root)) == 2
    load(data_dir, max_length=16)  # another length: new entries
    assert len(entries(root)) == 4
    train = data_dir / "glue" / "SST-2" / "train.tsv"
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join(lines[:1] + lines[2:]))  # the file changes: new train entry, same dev entry
    _, data = load(data_dir)
    assert len(entries(root)) == 5
    assert data.train["labels"][:5] == [int(line.rsplit("\t", 1)[1]) for line in lines[2:7]]
    t1, t2 = byte_level_tokenizer(), byte_level_tokenizer()
    assert cache.tokenizer_identity(t1) == cache.tokenizer_identity(t2)
    t1(["some text"], truncation=True, max_length=4)  # truncation state of a call is not identity
    assert cache.tokenizer_identity(t1) == cache.tokenizer_identity(t2)
    t2.add_tokens(["<new>"])
    assert cache.tokenizer_identity(t1) != cache.tokenizer_identity(t2)


def test_off_and_unwritable_cache_still_load(tmp_path, monkeypatch):
    monkeypatch.setenv("DORA_DATA_CACHE", "off")
    assert cache.cache_root() is None
    load(DEMO)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DORA_DATA_CACHE", str(blocker / "cache"))
    _, data = load(DEMO)
    assert len(data.train) == 300
    monkeypatch.delenv("DORA_DATA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "dora" / "tokenised"


@pytest.mark.skipif(os.name != "posix", reason="rename semantics")
def test_a_damaged_entry_is_rebuilt(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("DORA_DATA_CACHE", str(root))
    task, first = load(DEMO)
    want = batches(task, first)
    for entry in entries(root):
        for f in (root / entry).glob("*.arrow"):  # a new file over the old name: `first` maps the old one
            (f.parent / "bad").write_bytes(b"garbage")
            os.replace(f.parent / "bad", f)
    task, again = load(DEMO)
    assert_same(want, batches(task, again))
