"""The layering of docs/architecture.md, checked on the source: no import cycles (function-level imports count),
and each layer imports only from the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import crosstask_cli

PACKAGE = Path(crosstask_cli.__file__).parent

# Lowest first. A module may import its own layer and the layers before it, never a later one.
LAYERS = [
    (
        "base",
        {"errors", "options", "atomic", "locks", "outputs", "ops", "colormaps", "images", "plotting", "architectures"},
    ),
    (
        "core",
        {
            "tasks",
            "data",
            "models",
            "losses",
            "objective",
            "weighting",
            "metrics",
            "predictions",
            "energy",
            "cityscapes_scores",
        },
    ),
    ("engine", {"engine"}),
    (
        "app",
        {
            "reference_import",
            "evaluation",
            "predict",
            "visualize",
            "export",
            "compare",
            "bench",
            "bench_options",
            "demo",
            "sweep",
            "sweep_launch",
        },
    ),
    ("cli", {"cli", "__main__"}),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every crosstask_cli module imported anywhere in the file (top level or inside functions); imports for type
    checkers only (``if TYPE_CHECKING:``) do not run and do not count."""
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
        for n in ast.walk(block)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("crosstask_cli"):
            found.add(node.module)
            for alias in node.names:  # `from crosstask_cli.cli import train` imports the module cli.train
                candidate = f"{node.module}.{alias.name}"
                if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).is_file():
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("crosstask_cli"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        if name == "crosstask_cli":  # the package root only re-exports lazily (importlib on attribute access)
            continue
        edges[name] = {m for m in imports_of(path) if m in modules and m != name and m != "crosstask_cli"}
    return edges


def layer_of(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else module
    for i, (_, names) in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md")


def test_every_module_has_a_layer():
    for module in graph():
        layer_of(module)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_layers_import_only_downwards():
    bad = [
        f"{src} ({LAYERS[layer_of(src)][0]}) imports {dst} ({LAYERS[layer_of(dst)][0]})"
        for src, dsts in graph().items()
        for dst in dsts
        if layer_of(dst) > layer_of(src)
    ]
    assert not bad, "\n".join(sorted(bad))


def test_the_checks_would_catch_a_violation(tmp_path, monkeypatch):
    """The walk sees function-level imports: a planted upward import inside a function is reported."""
    planted = PACKAGE / "engine" / "_planted_for_test.py"
    planted.write_text("def f():\n    from crosstask_cli.cli.common import out\n    return out\n")
    try:
        bad = [
            d
            for d in graph()["crosstask_cli.engine._planted_for_test"]
            if layer_of(d) > layer_of("crosstask_cli.engine")
        ]
        assert bad == ["crosstask_cli.cli.common"]
    finally:
        planted.unlink()
