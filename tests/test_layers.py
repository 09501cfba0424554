"""The floors run one way: workbench (library) <- kernels <- probes (analysis) <- studies <- app (every interface).

An AST walk over every module of the five floors, counting every import:
top-level, inside functions and classes, relative imports (resolved against the module's package), and
``importlib.import_module`` / ``__import__`` calls with a literal name. It cannot be bypassed by moving an
import into a function. The checker itself is tested on a synthetic tree, so a broken walk cannot pass
silently.
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
