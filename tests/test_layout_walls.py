"""The four walls of the layout (README): checked on the import statements of every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The add-on's bpy-free modules live in this subpackage; every one runs under plain pytest without bpy.
ADDON_CORE = "neus_blender_addon.core"
BLENDER_MODULES = {"bpy", "bmesh", "mathutils", "bpy_extras"}
# The scripts that render the bundled scene and its benchmark variants run inside Blender; the datasets package never
# imports them.
DATASETS_BLENDER_SCRIPTS = {"datasets/sample_scene/render_sample.py", "datasets/sample_scene/render_patterns.py",
                            "datasets/sample_scene/render_thin.py"}


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every absolute import in a module (function-level imports included)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package, forbidden", [
    ("datasets", {"engine", "bpy", "bmesh", "mathutils", "neus_blender_addon"}),
    ("engine", {"bpy", "bmesh", "mathutils", "neus_blender_addon"}),
    ("neus_blender_addon", {"torch", "engine", "lightning", "omegaconf"}),
])
def test_package_walls(package, forbidden):
    offenders = {}
    for path in modules(package):
        rel = path.relative_to(REPO).as_posix()
        if rel in DATASETS_BLENDER_SCRIPTS:
            continue
        bad = imported_roots(path) & forbidden
        if bad:
            offenders[rel] = sorted(bad)
    assert not offenders, offenders


def test_camera_parsing_is_numpy_only():
    """What the add-on zip vendors must run in a plain Blender: numpy and the standard library only."""
    import sys

    allowed = {"numpy", "datasets", "__future__"} | set(sys.stdlib_module_names)
    for rel in ("cameras.py", "camera_set.py", "scale_file.py", "auto_region.py", "geometry.py", "errors.py",
                "normalization.py", "imageinfo.py", "formats"):
        for path in ([REPO / "datasets" / rel] if rel.endswith(".py") else modules(f"datasets/{rel}")):
            assert imported_roots(path) <= allowed, (path, imported_roots(path) - allowed)


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def package_module_imports(path: Path, package: str) -> set[str]:
    """Dotted ``package.*`` modules one module of ``package`` imports, relative imports resolved (function-level
    imports included; a name imported from a package counts as its submodule when one exists)."""
    name = module_name(path)
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if module != package and not module.startswith(package + "."):
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                as_path = REPO / sub.replace(".", "/")
                found.add(sub if as_path.with_suffix(".py").is_file() or (as_path / "__init__.py").is_file()
                          else module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == package)
    return found


def import_graph(package: str) -> dict[str, set[str]]:
    graph = {}
    for path in modules(package):
        if path.relative_to(REPO).as_posix() in DATASETS_BLENDER_SCRIPTS:
            continue
        name = module_name(path)
        graph[name] = package_module_imports(path, package) - {name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return trail + [nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    return [c for c in map(cycle_from, sorted(graph)) if c]


def test_datasets_has_no_import_cycle():
    """No datasets module imports one that imports it back, even inside a function (where a cycle hides): the format
    readers build ``CameraSet`` from ``datasets.camera_set``; only the registry ``datasets.cameras`` imports them."""
    graph = import_graph("datasets")
    assert "datasets.cameras" not in set().union(*(graph[m] for m in graph if m.startswith("datasets.formats")))
    assert not import_cycles(graph), import_cycles(graph)


def test_engine_has_no_import_cycle():
    """No engine module imports one that imports it back, even inside a function: the run folder's files are read
    by ``engine.run_dir``, so exporting does not import the training code that imports the export."""
    graph = import_graph("engine")
    assert "engine.export" in graph["engine.train"] and "engine.run_dir" in graph["engine.export"]  # resolved
    assert not import_cycles(graph), import_cycles(graph)


def test_addon_core_reaches_no_bpy():
    """No module of ``neus_blender_addon.core`` imports bpy, directly or through the add-on modules it imports
    (relative imports followed transitively, function-level ones included)."""
    graph = import_graph("neus_blender_addon")
    paths = {module_name(path): path for path in modules("neus_blender_addon")}
    blender_side = {name for name in graph if imported_roots(paths[name]) & BLENDER_MODULES
                    or name == "neus_blender_addon"}  # the package __init__ registers the bpy classes
    core = sorted(name for name in graph if name.startswith(ADDON_CORE + ".") or name == ADDON_CORE)
    assert len(core) >= 10  # camera math, engine process, protocol, PLY reader, run files, run state, ...
    for start in core:
        seen, stack = {start}, [(start, [start])]
        while stack:
            name, trail = stack.pop()
            assert name not in blender_side, f"{' -> '.join(trail)} imports bpy"
            for nxt in graph.get(name, ()) - seen:
                seen.add(nxt)
                stack.append((nxt, trail + [nxt]))
