"""The floors run one way: workbench (library) <- kernels <- probes (analysis) <- studies <- app (every interface).

An AST walk over every module of the five floors, counting every import:
top-level, inside functions and classes, relative imports (resolved against the module's package), and
``importlib.import_module`` / ``__import__`` calls with a literal name. It cannot be bypassed by moving an
import into a function. The checker itself is tested on a synthetic tree, so a broken walk cannot pass
silently.

Inside a floor, imports must not go round in a circle either (:func:`import_cycles`). An import that runs when the
module loads (top level, class bodies, ``if`` / ``try`` blocks) may never close a cycle: the second module would see
the first half-initialised. A function-local import runs only when the function is called, after both modules have
loaded, so a cycle through one is safe; it is still allowed only where :data:`LOCAL_CYCLE_EDGES` says why.

Each name is imported from its one home (:func:`borrowed_imports`): ``from m import x`` where ``m`` is a plain module
that itself only imports ``x`` points at a back door (a re-export), not at ``x``. A package's ``__init__`` may
gather its submodules' names (that is its job); a plain module is never a second address.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: floor of each top-level folder; an import may only reach its own floor or a lower one.
FLOORS = {"workbench": 0, "kernels": 1, "probes": 2, "studies": 3, "app": 4}
#: import names that differ from their folder: ``kernels/`` installs as ``workbench_kernels`` (pyproject.toml).
IMPORT_NAMES = {"workbench_kernels": "kernels"}
#: Function-local imports that may close a cycle, as (importer prefix, imported prefix): why.
LOCAL_CYCLE_EDGES = {
    ("app.views.", "app.render"): "a view draws through app.render* from inside its render(ctx), so importing the views "
                                  "(view-models, tested without streamlit) never imports streamlit (app/views/__init__.py)",
}
#: ``from m import x`` with ``m`` a plain module that only imports ``x``, still allowed, and why.
BORROWED_OK = {
    ("probes/dictionaries/__init__.py", "probes.dictionaries.store"): "pending: probes/dictionaries stays untouched while "
                                                                      "the dictionaries study runs from this tree",
}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Absolute names a node imports (empty for nodes that import nothing)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level == 0:
            return [node.module or ""]
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        return [".".join([*base, *([node.module] if node.module else [])])]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if name in ("import_module", "__import__"):
            return [node.args[0].value]
    return []


def upward_imports(root: Path) -> list[str]:
    """``"path:line imports name (floor a -> floor b)"`` for every import of a higher floor under ``root``."""
    found = []
    for top, floor in FLOORS.items():
        for path in sorted((root / top).rglob("*.py")):
            module = _module_name(path, root)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                for name in _imported(node, module, path.name == "__init__.py"):
                    target = IMPORT_NAMES.get(name.split(".")[0], name.split(".")[0])
                    if FLOORS.get(target, -1) > floor:
                        found.append(f"{path.relative_to(root)}:{node.lineno} imports {name} ({top} -> {target})")
    return found


def _modules(root: Path) -> dict[str, Path]:
    """Every module of the floors by its folder-based name (``kernels.paths``, not ``workbench_kernels.paths``)."""
    return {_module_name(p, root): p for top in FLOORS for p in sorted((root / top).rglob("*.py"))}


def _at_load(tree: ast.Module):
    """The nodes that run when the module loads: everything outside function bodies (class bodies included)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield node
            stack.extend(ast.iter_child_nodes(node))


def _edges(node: ast.AST, module: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` a node imports (``from a import b`` imports ``a.b`` when that is a module)."""
    found = set()
    for name in _imported(node, module, is_package):
        first, _, rest = name.partition(".")
        name = ".".join(filter(None, (IMPORT_NAMES.get(first, first), rest)))
        subs = [f"{name}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
        found |= {m for m in subs if m in modules} or ({name} if name in modules else set())
    # importing a.b.c runs the packages a and a.b first (the importer's own packages are already loading)
    found |= {p for m in found for p in _packages(m) if p in modules and not module.startswith(p + ".")}
    return found - {module}


def _packages(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_cycles(root: Path) -> list[str]:
    """``"a -> b -> a"`` for every cycle of imports between the floors' modules: imports that run at load, plus
    function-local ones not listed in :data:`LOCAL_CYCLE_EDGES` (one cycle per strongly connected component)."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package, at_load = path.name == "__init__.py", set(map(id, _at_load(tree)))
        graph[module] = set()
        for node in ast.walk(tree):
            for target in _edges(node, module, is_package, modules):
                if id(node) in at_load or not any(module.startswith(a) and target.startswith(b) for a, b in LOCAL_CYCLE_EDGES):
                    graph[module].add(target)
    cycles, done = [], set()
    for start in sorted(graph):  # a path from start back to itself, through modules not already reported
        stack, seen = [(start, [start])], {start}
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node] - done):
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                    done |= set(path)
                    stack = []
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    return cycles


def _names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(names a module defines, names it only imports) at its top level."""
    defined, imported = set(), set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imported |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        else:
            defined |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return defined, imported - defined


def borrowed_imports(root: Path, importers: tuple[str, ...] = (*FLOORS, "tests")) -> list[str]:
    """``"path:line: from m import x (x's home: y)"`` for every import of a name from a plain module (not a package
    ``__init__``) of the floors that only imports it."""
    modules, found = _modules(root), []
    borrowed = {m: _names(ast.parse(p.read_text(encoding="utf-8")))[1] for m, p in modules.items() if p.name != "__init__.py"}
    for path in (p for top in importers for p in sorted((root / top).rglob("*.py"))):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            first, _, rest = node.module.partition(".")
            source = ".".join(filter(None, (IMPORT_NAMES.get(first, first), rest)))
            where = (str(path.relative_to(root)), source)
            for a in node.names:
                if a.name in borrowed.get(source, ()) and f"{source}.{a.name}" not in modules and where not in BORROWED_OK:
                    found.append(f"{where[0]}:{node.lineno}: from {node.module} import {a.name}")
    return found


def test_no_module_imports_a_floor_above_it():
    assert upward_imports(ROOT) == []


def test_streamlit_only_in_app():
    leaks = [str(p.relative_to(ROOT)) for top in ("workbench", "probes", "studies", "kernels") for p in (ROOT / top).rglob("*.py")
             if any(n.split(".")[0] == "streamlit" for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                    for n in _imported(node, _module_name(p, ROOT), p.name == "__init__.py"))]
    assert leaks == []


def _edits_sys_path(node: ast.AST) -> bool:
    f = node.func if isinstance(node, ast.Call) else None
    return (isinstance(f, ast.Attribute) and f.attr in ("insert", "append", "extend") and isinstance(f.value, ast.Attribute)
            and f.value.attr == "path" and isinstance(f.value.value, ast.Name) and f.value.value.id == "sys")


def test_no_sys_path_edits():
    """The package is installed (``pip install -e .`` or the wheel), so nothing patches ``sys.path``."""
    edits = [f"{p.relative_to(ROOT)}:{n.lineno}" for top in (*FLOORS, "tests") for p in (ROOT / top).rglob("*.py")
             for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))) if _edits_sys_path(n)]
    assert edits == []
    assert _edits_sys_path(ast.parse("sys.path.insert(0, 'x')").body[0].value)


@pytest.mark.parametrize(("where", "code", "expected"), [
    ("workbench/deep/mod.py", "import app.cli\n", "workbench -> app"),
    ("workbench/mod.py", "def f():\n    from probes import patching\n", "workbench -> probes"),
    ("probes/mod.py", "class C:\n    def m(self):\n        import studies.common as c\n", "probes -> studies"),
    ("studies/x/mod.py", "import importlib\nm = importlib.import_module('app.views.runs')\n", "studies -> app"),
    ("probes/mod.py", "__import__('studies')\n", "probes -> studies"),
    ("workbench/mod.py", "from workbench_kernels.logit_lens import lens_topk\n", "workbench -> kernels"),
    ("kernels/mod.py", "import probes.metrics\n", "kernels -> probes"),
])
def test_the_checker_catches_upward_imports_anywhere(tmp_path, where, code, expected):
    for top in FLOORS:
        (tmp_path / top).mkdir()
    path = tmp_path / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code)
    (tmp_path / "app" / "ok.py").write_text("import workbench, probes, studies\nfrom .views import x\n")  # downward: allowed
    (tmp_path / "probes" / "ok.py").write_text("from workbench_kernels.paths import choose\n")
    found = upward_imports(tmp_path)
    assert len(found) == 1 and expected in found[0] and found[0].startswith(where)


def test_relative_imports_resolve_to_their_floor(tmp_path):
    for top in FLOORS:
        (tmp_path / top).mkdir()
    (tmp_path / "probes" / "a.py").write_text("from . import b\nfrom .b import c\n")  # probes.b: same floor
    assert upward_imports(tmp_path) == []
    assert _imported(ast.parse("from ..app import x").body[0], "studies.sub.mod", False) == ["studies.app"]


def test_no_import_cycles():
    assert import_cycles(ROOT) == []


@pytest.mark.parametrize(("files", "expected"), [
    ({"workbench/a.py": "import workbench.b\n", "workbench/b.py": "from workbench import a\n"},
     "workbench.a -> workbench.b -> workbench.a"),
    ({"probes/x.py": "from .y import f\n", "probes/y.py": "from . import z\n", "probes/z.py": "class C:\n    from probes.x import g\n"},
     "probes.x -> probes.y -> probes.z -> probes.x"),  # relative imports and a class body run at load
    ({"workbench/a.py": "def f():\n    import workbench.b\n", "workbench/b.py": "import workbench.a\n"},
     "workbench.a -> workbench.b -> workbench.a"),  # function-local, but not a documented edge
    ({"app/views/v.py": "def render(ctx):\n    from app import render\n", "app/render.py": "from app.views import v\n"}, None),
    ({"workbench/a.py": "def f():\n    from workbench.pkg.m import g\n", "workbench/pkg/m.py": "from workbench.pkg.n import h\n",
      "workbench/pkg/__init__.py": "from workbench.pkg.m import g\nfrom workbench.a import f\n", "workbench/pkg/n.py": ""},
     "workbench.a -> workbench.pkg -> workbench.a"),  # importing workbench.pkg.m runs workbench/pkg/__init__.py first
    ({"kernels/k.py": "import workbench.a\n", "workbench/a.py": "def f():\n    from workbench_kernels import k\n"},
     "kernels.k -> workbench.a -> kernels.k"),  # the kernels' import name maps to their folder
])
def test_the_checker_catches_import_cycles(tmp_path, files, expected):
    for top in FLOORS:
        (tmp_path / top).mkdir()
    for where, code in {**files, "workbench/ok.py": "import workbench.a\n" if "workbench/a.py" in files else ""}.items():
        (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / where).write_text(code)
    assert import_cycles(tmp_path) == ([expected] if expected else [])


def test_every_name_is_imported_from_its_home():
    assert borrowed_imports(ROOT) == []


def test_the_checker_catches_a_borrowed_name(tmp_path):
    for top in FLOORS:
        (tmp_path / top).mkdir()
    (tmp_path / "workbench" / "home.py").write_text("def f():\n    pass\n")
    (tmp_path / "workbench" / "door.py").write_text("from workbench.home import f\n")
    (tmp_path / "workbench" / "pkg").mkdir()
    (tmp_path / "workbench" / "pkg" / "__init__.py").write_text("from workbench.home import f\n")  # a package may gather
    (tmp_path / "probes" / "user.py").write_text("from workbench.door import f\nfrom workbench.home import f\nfrom workbench.pkg import f\n")
    assert borrowed_imports(tmp_path) == ["probes/user.py:1: from workbench.door import f"]
