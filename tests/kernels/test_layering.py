"""kernels/ has no import cycle, and no variant reaches for an attention path (they get one in `call`)."""

from __future__ import annotations

import ast
from pathlib import Path

KERNELS = Path(__file__).resolve().parents[2] / "kernels"
PATHS = {"kernels.reference", "kernels.dispatch", "kernels.flex", "kernels.maps", "kernels.triton"}


def imports() -> dict[str, set[str]]:
    """module -> the kernels modules it imports anywhere in its text (lazy imports included)."""
    files = {}
    for f in KERNELS.rglob("*.py"):
        parts = f.relative_to(KERNELS.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {}
    for name, f in files.items():
        found = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def test_no_import_cycle():
    graph, state = imports(), {}

    def visit(node, path):
        state[node] = "open"
        for nxt in graph[node]:
            assert state.get(nxt) != "open", "import cycle: " + " → ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [])


def test_variants_never_import_an_attention_path():
    for name, deps in imports().items():
        if name.startswith("kernels.variants"):
            assert not {d for d in deps if any(d == p or d.startswith(p + ".") for p in PATHS)}, name
