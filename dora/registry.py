"""A name -> (class, config dataclass) registry that plug-ins fill by decorating themselves.

Methods (dora/methods/*.py) and tasks (tasks/*.py) register here; each package's ``__init__``
imports every module of its folder, so a new plug-in is one file plus one YAML.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

from dora.errors import UserError, choices


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type
    config: type  # dataclass schema of the plug-in's config group


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, config: type):
        """Class decorator: ``@METHODS.register("bitfit", config=BitFitConfig)``."""

        def wrap(cls):
            if name in self._entries and self._entries[name].cls is not cls:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(name, cls, config)
            return cls

        return wrap

    def add(self, name: str, cls: type, config: type) -> None:
        self.register(name, config)(cls)

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} {name!r}; valid: {choices(self._entries)}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: Any) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries.values())


def import_submodules(package_name: str) -> None:
    """Import every module of a package so that its plug-ins register themselves."""
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
