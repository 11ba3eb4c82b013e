"""The package's layers import only downward (docs/architecture.md, whose table this file holds equal to LAYERS):
a module of one layer never imports a module of a layer above it, and no package imports another that imports it
back."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vlmlab"
# Lowest first. A package may import its own modules and any lower layer's (not those of its own layer).
LAYERS = [
    {"errors", "terminal", "dependency_corners", "presets"},
    {"tracking"},
    {"models"},
    {"data"},
    {"eval"},
    {"interop"},
    {"training", "inference"},
    {"config"},
    {"preflight"},
    {"cli"},
    {"testing"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def package_of(module: str) -> str | None:
    """`vlmlab.data.formats` -> `data`; a top-level module (`vlmlab.config`) is its own package."""
    parts = module.split(".")
    return parts[1] if parts[0] == "vlmlab" and len(parts) > 1 else None


def imports() -> dict[str, set[tuple[str, str]]]:
    """Package -> {(importing file, imported vlmlab package)}, counting imports inside functions too."""
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        own = relative.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                target = package_of(name)
                if target is not None and target != own:
                    found[own].add((str(relative), target))
    return found


def test_every_package_has_a_layer() -> None:
    packages = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    packages -= {"__init__", "__pycache__", "conf"}
    assert packages == set(LEVEL), "add the new package to LAYERS (and to docs/architecture.md's table)"


def test_the_architecture_page_shows_these_layers() -> None:
    page = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ((?:`\w+`(?:, )?)+) \|", page, flags=re.MULTILINE)
    documented = {int(level): set(re.findall(r"`(\w+)`", names)) for level, names in rows}
    assert documented == dict(enumerate(LAYERS)), documented


def test_imports_only_go_down() -> None:
    upward = [
        f"{file} imports vlmlab.{target} ({own}: layer {LEVEL[own]}, {target}: layer {LEVEL[target]})"
        for own, edges in imports().items()
        for file, target in sorted(edges)
        if LEVEL[target] >= LEVEL[own]
    ]
    assert not upward, "\n".join(upward)


def test_no_package_cycles() -> None:
    graph = {own: {target for _, target in edges} for own, edges in imports().items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    cycles = sorted(p for p in graph if reaches(p, p, set()))
    assert not cycles, f"packages on an import cycle: {cycles}"


def module_imports() -> dict[str, set[str]]:
    """Module -> the vlmlab modules it imports (`from vlmlab.data import schema` counts as vlmlab.data.schema),
    those under `if TYPE_CHECKING:` included: a type-only import still ties the two modules together."""
    modules = {".".join(("vlmlab", *p.relative_to(PACKAGE).with_suffix("").parts)): p for p in PACKAGE.rglob("*.py")}
    modules = {name.removesuffix(".__init__"): path for name, path in modules.items()}
    found: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                found[name].update(targets or ([node.module] if node.module in modules else []))
            elif isinstance(node, ast.Import):
                found[name].update(a.name for a in node.names if a.name in modules)
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = module_imports()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    cycles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not cycles, f"modules on an import cycle: {cycles}"
    assert "vlmlab.data.conversation_dataset" in graph["vlmlab.data.feature_cache"]  # the graph sees imports
