"""A name -> (class, config dataclass) registry that plug-ins fill by decorating themselves.

Methods (dora/methods/*.py) and tasks (tasks/*.py) register here; each package's ``__init__``
imports every module of its folder, so a new plug-in is one file plus one YAML. Registering also puts
the plug-in's schema into Hydra's ConfigStore (fairseq's pattern), where its YAML extends it.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from dataclasses import dataclass
from typing import Any

from dora.errors import UserError, choices


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type
    config: type  # dataclass schema of the plug-in's config group


class Registry:
    """The plug-ins of one kind, which is also their Hydra config group. Each plug-in's config extends
    ``base`` (dora.config stores it as ``<kind>/_<kind>``); its own is stored as ``<kind>/_<name>``."""

    def __init__(self, kind: str, base: type):
        self.kind, self.base = kind, base
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, config: type):
        """Class decorator: ``@METHODS.register("bitfit", config=BitFitConfig)``."""

        def wrap(cls):
            if name in self._entries and self._entries[name].cls is not cls:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            if not issubclass(config, self.base):
                raise TypeError(f"{self.kind} {name!r}: {config.__name__} must extend {self.base.__name__}")
            self._entries[name] = Entry(name, cls, config)
            if config is not self.base:  # a plug-in without fields of its own uses ``_<kind>``
                store_schema(self.kind, f"_{name}", config)
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


# Every schema announced so far, by (config group, name): Hydra's ConfigStore gets them all
_SCHEMAS: dict[tuple[str, str], type] = {}


def store_schema(group: str, name: str, node: type) -> None:
    """Put a schema into Hydra's ConfigStore as ``<group>/<name>``; the group's YAMLs extend it
    (``defaults: [<name>, _self_]``). Hydra is never imported for this (``dora.dyndora`` works without
    it): while it is not loaded the schema waits for ``store_schemas_in_hydra``."""
    _SCHEMAS[group, name] = node
    config_store = sys.modules.get("hydra.core.config_store")
    if config_store is not None:
        config_store.ConfigStore.instance().store(group=group, name=name, node=node)


def store_schemas_in_hydra() -> None:
    """Store every schema announced so far in Hydra's ConfigStore, those announced before Hydra was
    imported included. Idempotent; the command line (dora.cli) calls it once, as it loads."""
    from hydra.core.config_store import ConfigStore

    for (group, name), node in _SCHEMAS.items():
        ConfigStore.instance().store(group=group, name=name, node=node)


def import_submodules(package_name: str) -> None:
    """Import every module of a package so that its plug-ins register themselves."""
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
