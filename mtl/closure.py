"""The import closure of mtl code, computed from the source with :mod:`ast`.

Used for two promises: ``dvc.yaml`` lists exactly the modules each stage runs
(``tests/test_dvc_deps.py``), and a resumable training state is keyed on the code that trains
(:func:`source_digest`). Both module-level and function-level imports count (an import inside a
function runs when the function does); imports under ``if TYPE_CHECKING:`` do not run and do
not count. Only modules of the ``mtl`` package are followed.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["PACKAGE_ROOT", "function_closure", "module_closure", "module_path", "source_digest"]

#: the folder holding the ``mtl`` package
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def module_path(name: str, root: Path = PACKAGE_ROOT) -> Path | None:
    """``mtl.a.b`` -> ``<root>/mtl/a/b.py`` or ``.../b/__init__.py`` (None: not an mtl module)."""
    if name != "mtl" and not name.startswith("mtl."):
        return None
    base = root.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _walk(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Every node below ``nodes``, leaving out ``if TYPE_CHECKING:`` bodies."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _imported(nodes: Iterable[ast.AST], package: str, root: Path) -> set[str]:
    """Module names (mtl only) imported by ``nodes``; ``package`` resolves relative imports."""
    names: set[str] = set()
    for node in _walk(nodes):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            names.add(mod)
            # ``from pkg import submodule`` imports the submodule too
            names.update(f"{mod}.{a.name}" for a in node.names
                         if module_path(f"{mod}.{a.name}", root) is not None)
    return {n for n in names if module_path(n, root) is not None}


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def module_closure(names: Iterable[str], root: Path = PACKAGE_ROOT) -> set[Path]:
    """Source files of ``names`` and of every mtl module they import, transitively (a module's
    parent packages' ``__init__.py`` run first, so they count too)."""
    seen: set[str] = set()
    todo = [p for n in names for p in _with_parents(n)]
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_path(name, root)
        if path is None:
            continue
        files.add(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for dep in _imported(tree.body, package, root):
            todo.extend(_with_parents(dep))
    return files


def function_closure(module: str, function: str, root: Path = PACKAGE_ROOT) -> set[Path]:
    """What calling ``module.function`` runs: the module's top-level imports, the imports inside
    ``function`` and inside the module's own functions it calls (by name), transitively."""
    path = module_path(module, root)
    if path is None:
        raise ValueError(f"expected an mtl module, found {module!r}")
    tree = ast.parse(path.read_text(), filename=str(path))
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    if function not in functions:
        raise ValueError(f"{path}: expected a top-level function {function!r}, found "
                         f"{sorted(functions)}")
    top = [n for n in tree.body if not isinstance(n, ast.FunctionDef | ast.ClassDef)]
    package = module.rpartition(".")[0] if path.name != "__init__.py" else module
    names = _imported(top, package, root) | {module}
    todo, done = [function], set()
    while todo:
        fn = functions[todo.pop()]
        if fn.name in done:
            continue
        done.add(fn.name)
        names |= _imported(fn.body, package, root)
        todo += [n.id for n in _walk(fn.body) if isinstance(n, ast.Name) and n.id in functions]
    # the module's own file is in; follow everything else from the module-level view
    files = module_closure(names - {module}, root)
    files.update(module_path(p, root) for p in _with_parents(module))  # type: ignore[misc]
    return files


def source_digest(files: Iterable[Path], root: Path = PACKAGE_ROOT) -> str:
    """SHA-256 over the relative path and content of each file (order-independent)."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()
