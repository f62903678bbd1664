"""Data flows one way: collection -> record sink -> export -> analysis.

Collection (``otel_vllm_ascend/``, without its ``exporters`` and ``analysis`` subpackages, which
live in ``exporters/`` and ``analysis/`` in the source tree) never imports either, not even
inside a function; its modules import each other without a cycle. The wiring reaches the export
side through the ``otel_vllm_ascend.export`` entry points (``tracing_setup.export_part``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLLECTION = ROOT / "otel_vllm_ascend"
PACKAGE = "otel_vllm_ascend"
OTHER_ROOMS = (f"{PACKAGE}.exporters", f"{PACKAGE}.analysis")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set) -> set:
    """Every ``otel_vllm_ascend`` module ``path`` imports, at any depth of its code."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # "from package import submodule" depends on the submodule, not the package
                found.add(sub if sub in modules or sub.startswith(OTHER_ROOMS) else base)
    return {module for module in found if module.split(".")[0] == PACKAGE}


def _graph() -> dict:
    paths = sorted(COLLECTION.rglob("*.py"))
    modules = {_module_name(path) for path in paths}
    return {_module_name(path): _imports(path, modules) for path in paths}


def test_collection_never_imports_export_or_analysis():
    arrows = [(module, target) for module, targets in _graph().items() for target in targets
              if target.startswith(OTHER_ROOMS)]
    assert arrows == []


def test_collection_modules_import_each_other_without_a_cycle():
    graph = _graph()
    edges = {module: {t for t in targets if t in graph and t != module}
             for module, targets in graph.items()}
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(
                path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for target in sorted(edges[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(edges):
        visit(module)


def test_the_checker_sees_a_lazy_import():
    # The graph counts imports inside functions too (they were how the old cycles hid).
    assert f"{PACKAGE}.recorder" in _graph()[f"{PACKAGE}.tracing_setup"]
