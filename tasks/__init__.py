"""Benchmark tasks, registered by name: GLUE (one table-driven class); later SQuAD and XSum."""

from dora.config import TaskConfig
from dora.registry import Registry, import_submodules

TASKS = Registry("task", TaskConfig)

from tasks.base import Task, TaskData, evaluate_split  # noqa: E402

__all__ = ["TASKS", "Task", "TaskData", "build_task", "evaluate_split"]


def build_task(cfg, data_dir) -> Task:
    """The task named ``cfg.name`` reading from ``data_dir`` (a folder like shared/data) or the hub."""
    return TASKS.get(cfg.name).cls(cfg, data_dir)


import_submodules(__name__)
