"""The package's import structure: no circles between modules, no module reading another's
private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import replayable

ROOT = Path(replayable.__file__).parent


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    return {
        ".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in sorted(ROOT.rglob("*.py"))
    }


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not those inside functions or classes,
    nor under ``if TYPE_CHECKING``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                walk(node.body)
                for handler in node.handlers:
                    walk(handler.body)
                walk(node.orelse)
                walk(node.finalbody)

    walk(tree.body)
    return found


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` reads from."""
    if not node.level:
        return node.module or ""
    pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    return ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The package module ``name`` lives in (``a.b.c`` -> ``a.b`` when ``a.b.c`` is no module)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in _module_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = _base(module, path, node)
                subs = [f"{base}.{a.name}" for a in node.names]
                # `from pkg import mod` reads the submodule; `from pkg import name`, the package
                targets = [s for s in subs if s in modules]
                if len(targets) < len(subs):
                    targets.append(base)
            for target in targets:
                owner = _owner(target, modules)
                if owner is not None and owner != module:
                    graph[module].add(owner)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_names(
    module: str, path: Path, tree: ast.Module, modules: dict[str, Path]
) -> dict[str, str]:
    """Local name -> the package module it is bound to (``import replayable.x as y``,
    ``from replayable import x``), anywhere in the file."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.partition(".")[0] == "replayable":
                    local = alias.asname or alias.name.partition(".")[0]
                    bound[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, path, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    return bound


def private_imports(modules: dict[str, Path]) -> list[str]:
    """Every read of another module's private name: ``from X import _name``, ``X._name`` through
    an imported module (``_chain._verify``, ``rp_mcp._State``), and ``getattr(X, "_name")``.
    A private module by name is fine (``from replayable import _engine``); what two modules
    share is a public name of it. No exception for modules of one private package."""
    out = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bound = _module_names(module, path, tree, modules)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = _base(module, path, node)
                if base.partition(".")[0] != "replayable" or base == module:
                    continue
                for alias in node.names:
                    if _private(alias.name) and f"{base}.{alias.name}" not in modules:
                        out.append(f"{module}:{node.lineno}: {alias.name} from {base}")
            elif isinstance(node, ast.Attribute):
                chain: list[str] = []
                root: ast.expr = node
                while isinstance(root, ast.Attribute):
                    chain.insert(0, root.attr)
                    root = root.value
                if not isinstance(root, ast.Name) or root.id not in bound:
                    continue
                owner = bound[root.id]
                for attr in chain:
                    if f"{owner}.{attr}" in modules:
                        owner = f"{owner}.{attr}"
                        continue
                    if _private(attr) and owner != module and node.attr == attr:
                        out.append(f"{module}:{node.lineno}: {attr} of {owner}")
                    break
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
                and len(node.args) >= 2
                and isinstance(node.args[0], ast.Name)
                and node.args[0].id in bound
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and _private(node.args[1].value)
            ):
                owner = bound[node.args[0].id]
                if owner != module:
                    out.append(f"{module}:{node.lineno}: {node.args[1].value} of {owner}")
    return out


class TestImportGraph:
    def test_no_module_imports_itself_back(self) -> None:
        """No circle of module-level imports in the package (the model, the chain and trace
        files, the boundary and the engine, the replayer and what-ifs each import one way)."""
        assert cycles(import_graph(MODULES)) == []

    def test_the_walk_finds_a_circle(self, tmp_path: Path) -> None:
        """The check can fail: two modules importing each other are a circle, and an import
        under TYPE_CHECKING or inside a function is not."""
        pkg = tmp_path / "replayable"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        (pkg / "a.py").write_text("from replayable import b\n")
        (pkg / "b.py").write_text("from replayable.a import x\n")
        (pkg / "c.py").write_text(
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from replayable import d\n"
        )
        (pkg / "d.py").write_text("def f():\n    from replayable import c\n")
        mods = {
            ".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
            for p in pkg.rglob("*.py")
        }
        assert cycles(import_graph(mods)) == [["replayable.a", "replayable.b"]]

    def test_the_graph_sees_the_package(self) -> None:
        """The walk reads real edges (a graph with none would pass the circle test)."""
        graph = import_graph(MODULES)
        assert "replayable._engine" in graph["replayable._replayer"]
        assert "replayable._replayer" in graph["replayable._fork"]
        assert "replayable._model" in graph["replayable._chain"]


class TestPrivateNames:
    def test_no_module_reads_another_modules_private_names(self) -> None:
        """What two modules share is a public name of a private module, never ``_name``."""
        assert private_imports(MODULES) == []

    @pytest.mark.parametrize(
        ("module", "source", "flagged"),
        [
            ("replayable.cli._probe", "from replayable.boundary import _register\n", True),
            ("replayable._drift._probe", "from replayable._drift._compare import _answer\n", True),
            ("replayable.cli._probe", "from replayable import _chain\n_chain._verify()\n", True),
            ("replayable.cli._probe", "import replayable.boundary\nreplayable.boundary._x\n", True),
            ("replayable.cli._probe", "import replayable as rp\nrp.boundary._register\n", True),
            (
                "replayable.cli._probe",
                "from replayable.integrations import mcp as m\nm._State(1)\n",
                True,
            ),
            (
                "replayable.cli._probe",
                "from replayable import boundary\ngetattr(boundary, '_r')\n",
                True,
            ),
            ("replayable.cli._probe", "from replayable._engine import Engine\n", False),
            ("replayable.cli._probe", "from replayable import _engine\n_engine.Engine\n", False),
            (
                "replayable.cli._probe",
                "from replayable import boundary\nboundary.__name__\n",
                False,
            ),
            ("replayable.cli._probe", "import os\nos._exit\n", False),
        ],
    )
    def test_the_rule(self, tmp_path: Path, module: str, source: str, flagged: bool) -> None:
        """A private name of another module is flagged, imported or read through the module
        (inside one private package too); a private module by name is not, nor a dunder."""
        probe = tmp_path / "probe.py"
        probe.write_text(source)
        found = private_imports({**MODULES, module: probe})
        assert bool(found) is flagged, found
