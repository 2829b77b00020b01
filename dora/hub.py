"""Hugging Face Hub reachability: fail in seconds, not after a minute of retries, when offline."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse


def offline_env() -> bool:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set: libraries read only their local caches."""
    return any(
        os.environ.get(v, "0").lower() not in ("0", "", "false", "no")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


@functools.cache
def reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint (HF_ENDPOINT) opens within ``timeout`` seconds."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def cached_model(repo_id: str) -> bool:
    """Whether the model's config is in the local hub cache (usable with local_files_only)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # malformed ids and the like: not cached
        return False
