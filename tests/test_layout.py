"""The package's layout: stages import only the stages below them (no import cycle), every module
states its public names, and modules stay short enough to read."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_svae"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set:
    """pyro_svae modules imported anywhere in ``path`` (top level or inside functions)."""
    module = _name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("pyro_svae"):
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if any(_name(p) == candidate for p in MODULES) else base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pyro_svae")}
    return found - {module}


def test_no_import_cycles():
    graph = {_name(p): {m for m in _imports(p) if not _name(p).startswith(m + ".")} for p in MODULES}
    graph = {k: {m for m in v if m in graph} for k, v in graph.items()}
    # packages import their own modules to re-export them: that is not a stage going up
    state, cycle = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                cycle.append(path + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycle, f"import cycles: {cycle[:3]}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_states_its_public_names_and_stays_short(path):
    tree = ast.parse(path.read_text())
    if path.name != "__init__.py" and path.name != "__main__.py":
        assert any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets)
                   for n in tree.body), f"{path.name} has no __all__"
    assert len(path.read_text().splitlines()) <= 300, f"{path.name} is over 300 lines"
