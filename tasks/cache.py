"""A disk cache of tokenised splits, so that a grid of runs tokenises each (data, tokenizer, length)
once instead of once per run.

Entries are ``datasets`` folders written by ``Dataset.save_to_disk`` (Arrow files and JSON metadata:
nothing is ever unpickled) and read back memory-mapped by ``load_from_disk``. The key is a SHA-256 of
everything the tokenised rows depend on:

- the preprocessing code (``VERSION``, bumped when a task's tokenisation changes), the task and the split
  spec (slices included);
- the source: a local file's absolute path, size and modification time (ns), or a hub dataset's
  fingerprint (which changes with its cached files);
- the tokenizer: class, name or path, and a hash of its vocabulary and pipeline (for a fast tokenizer
  its whole ``tokenizer.json`` except the truncation/padding state, which calls change);
- the length settings (``max_length`` and any task-specific ones).

Location: ``$DORA_DATA_CACHE`` when set (``off`` disables the cache), else
``$XDG_CACHE_HOME/dora/tokenised`` (``~/.cache/dora/tokenised``). A miss builds the split, writes it to a
temporary folder and renames it into place, so concurrent runs never see half an entry; the loser of a
race keeps the winner's copy. A miss and a hit return the same thing: the dataset as read from disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from datasets import Dataset, load_from_disk

log = logging.getLogger(__name__)

VERSION = 1  # bump when any task's tokenisation changes (the cached rows would be stale)
_OFF = {"off", "0", "false", "none", "no"}


def cache_root() -> Path | None:
    """The cache folder, or None when ``DORA_DATA_CACHE=off``."""
    env = os.environ.get("DORA_DATA_CACHE")
    if env is not None:
        return None if env.strip().lower() in _OFF or not env.strip() else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dora" / "tokenised"


def file_source(path: str) -> dict:
    """Identity of a local data file: absolute path, size, modification time (ns)."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def tokenizer_identity(tokenizer) -> dict:
    """Class, name or path, and a hash of what maps text to ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # fast tokenizer: vocab, merges, normalizer, pre/post-processing
        state = json.loads(backend.to_str())
        state.pop("truncation", None)  # set by each call (truncation=True, max_length=...)
        state.pop("padding", None)
        blob = json.dumps(state, sort_keys=True)
    else:
        blob = json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
    return {
        "class": type(tokenizer).__name__,
        "name": getattr(tokenizer, "name_or_path", ""),
        "hash": hashlib.sha256((blob + specials).encode()).hexdigest(),
    }


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps({"version": VERSION, **parts}, sort_keys=True).encode()).hexdigest()[:32]


def cached(parts: dict, build: Callable[[], Dataset]) -> Dataset:
    """``build()``'s dataset through the cache (see the module docstring); ``parts`` is the key."""
    root = cache_root()
    if root is None:
        return build()
    key = cache_key(parts)
    final = root / key
    if (final / "dataset_info.json").is_file():
        try:
            return load_from_disk(str(final))
        except Exception as e:  # a damaged entry: rebuild it
            log.warning("tokenised-data cache entry %s unreadable (%s); rebuilding it", final, e)
            shutil.rmtree(final, ignore_errors=True)
    ds = build()
    if len(ds) == 0:  # nothing to save (and datasets cannot read back a folder without shards)
        return ds
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        ds.save_to_disk(str(tmp))
        (tmp / "key.json").write_text(json.dumps({"version": VERSION, **parts}, indent=1, default=str) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:  # another process stored the same entry first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        return load_from_disk(str(final))
    except OSError as e:  # an unwritable cache folder must not stop a run
        log.warning("tokenised-data cache %s not writable (%s); running without it", root, e)
        return ds
