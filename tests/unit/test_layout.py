"""The package boundary: the server imports nothing of the eager client, and the code both sides
share imports neither side. Checked on the imports themselves, in fresh interpreters."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT_ONLY = ("varstore.client", "varstore.aio", "varstore.train", "varstore.transport",
               "varstore.initializers", "varstore.request", "varstore.scopes", "varstore.v1",
               "varstore.cli", "varstore.optimizers", "varstore.tensorflow")


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return [m for m in json.loads(out.stdout) if m.startswith("varstore")]


@pytest.mark.parametrize("statement", ["import varstore.server.app", "import varstore.server",
                                       "import varstore.common.codec", "import varstore"])
def test_server_and_common_load_no_eager_client(statement: str) -> None:
    loaded = _loaded_after(statement)
    assert not [m for m in loaded if m.startswith(CLIENT_ONLY)], loaded


def test_the_client_loads_no_tensorflow() -> None:
    code = ("import sys, varstore, varstore.client, varstore.train, varstore.v1\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.startswith("varstore")}


@pytest.mark.parametrize("folder, forbidden", [
    ("server", CLIENT_ONLY),
    ("common", (*CLIENT_ONLY, "varstore.server")),
])
def test_no_module_imports_across_the_boundary(folder: str, forbidden: tuple[str, ...]) -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p)
                                                  if n.startswith(forbidden))
                 for p in (ROOT / folder).rglob("*.py") if "_pb2" not in p.name}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_folders_mirror_import_paths() -> None:
    import varstore.common
    import varstore.server
    import varstore.v1

    assert Path(varstore.v1.__file__).parent == ROOT / "client" / "varstore" / "v1"
    assert Path(varstore.common.__file__).parent == ROOT / "common" / "varstore" / "common"
    assert Path(varstore.server.__file__).parent == ROOT / "server" / "varstore" / "server"



def _module_name(path: Path) -> str:
    """``client/varstore/v1/graph.py`` -> ``varstore.v1.graph`` (each top folder is a root)."""
    parts = path.relative_to(ROOT).with_suffix("").parts[1:]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` (its modules in order, the first repeated last), or []."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return []


def test_no_import_cycles() -> None:
    """Every import counts, inside functions and under TYPE_CHECKING too: a cycle there is
    one in the design. A module importing its own package, or a package its own modules, is
    no edge (Python loads the package first either way)."""
    modules = {_module_name(p): p for folder in ("client", "common", "server")
               for p in (ROOT / folder).rglob("*.py") if "_pb2" not in p.name}

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {module: {target for name in _imports(path) if (target := resolve(name))
                      and not (target + ".").startswith(module + ".")
                      and not module.startswith(target + ".")}
             for module, path in modules.items()}
    assert _import_cycle(graph) == []


def test_no_module_is_over_500_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for folder in ("client", "common", "server") for p in (ROOT / folder).rglob("*.py")
             if "_pb2" not in p.name}
    assert {k: n for k, n in sizes.items() if n > 500} == {}
