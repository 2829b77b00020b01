"""Fine-tuning methods, one module each, registered by name with their config schema."""

from dora.config import MethodConfig
from dora.registry import Registry, import_submodules

METHODS = Registry("method", MethodConfig)

from dora.methods.base import Method, TaskInfo  # noqa: E402

__all__ = ["METHODS", "Method", "TaskInfo", "build_method"]


def build_method(cfg, budget) -> Method:
    """The method named ``cfg.name``, constructed from its (resolved, validated) config."""
    return METHODS.get(cfg.name).cls(cfg, budget)


import_submodules(__name__)
