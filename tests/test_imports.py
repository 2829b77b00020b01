"""The import graph of the ``dora`` and ``tasks`` packages has no cycle, and plug-in schemas reach Hydra's
ConfigStore whatever the order of imports.

Read from the source (ast), so nothing is imported: every ``import`` statement counts, at module level and
inside functions alike (a deferred import still ties two modules together). Only explicit imports are
edges: importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` too, but a package importing its own
modules is how packages work, not a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore

from dora.registry import Registry
from tests.helpers import REPO

PACKAGES = ("dora", "tasks")


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of PACKAGES (a package is its ``__init__``)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that the module ``name`` (its source at ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from a import b``: the module a.b when there is one, else a (b is a name in it)
            targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {t for t in targets if t in known and t != name}


def import_graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imported(name, path, known) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as [a, b, ..., a], or [] when the graph has none (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_the_graph_sees_deferred_and_relative_imports(tmp_path):
    (tmp_path / "dora" / "sub").mkdir(parents=True)
    (tmp_path / "tasks").mkdir()
    files = {
        "dora/__init__.py": "",
        "dora/a.py": "def f():\n    from dora.sub import b\n",  # deferred, names a module
        "dora/sub/__init__.py": "from .b import thing\n",  # relative
        "dora/sub/b.py": "import tasks\nthing = 1\n",
        "tasks/__init__.py": "from dora.a import f\n",  # from a module, a name
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph == {
        "dora": set(),
        "dora.a": {"dora.sub.b"},
        "dora.sub": {"dora.sub.b"},
        "dora.sub.b": {"tasks"},
        "tasks": {"dora.a"},
    }
    assert find_cycle(graph) == ["dora.a", "dora.sub.b", "tasks", "dora.a"]


def test_the_dora_and_tasks_packages_import_without_a_cycle():
    graph = import_graph(REPO)
    assert {"dora.config", "dora.runner", "tasks.glue", "dora.methods.dyndora.method"} <= set(graph)
    assert "dora.config" in graph["dora.runner"]  # the graph is not empty by mistake
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


# -- schemas into Hydra's ConfigStore ---------------------------------------------------------------
@dataclass
class ProbeBase:
    name: str = "?"


@dataclass
class ProbeConfig(ProbeBase):
    size: int = 3


def test_registering_stores_the_schema_in_hydra():
    """Hydra is loaded here (dora.cli is): a plug-in's schema is in the ConfigStore as it registers."""
    probes = Registry("a1_probe", ProbeBase)

    @probes.register("big", config=ProbeConfig)
    class Big:
        pass

    probes.add("plain", object, ProbeBase)  # no fields of its own: the group's base schema serves
    stored = ConfigStore.instance().list("a1_probe")
    assert stored == ["_big.yaml"] and ConfigStore.instance().load("a1_probe/_big.yaml").node.size == 3
    with pytest.raises(TypeError, match="a1_probe 'odd': ProbeBase must extend ProbeConfig"):
        Registry("a1_probe", ProbeConfig).add("odd", object, ProbeBase)


def test_plugins_registered_before_hydra_was_imported_still_compose():
    """dora.dyndora registers every method without importing Hydra; the command line, loaded later,
    stores those schemas too, so a method's own fields compose."""
    code = (
        "import sys; import dora.dyndora; assert 'hydra' not in sys.modules\n"
        "from dora.cli import compose_config\n"
        "print(compose_config(['method=dora', 'task=squad_v1']).method.dem_coef)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split()[-1] == "0.1", done.stderr[-2000:]
