"""Builds the installable Blender extension zip of the add-on.

    python build_addon.py [--out dist/] [--legacy]

Writes ``<out>/neus_reconstruct-<version>.zip`` in the Blender 4.2+ extension layout: ``blender_manifest.toml``
and ``__init__.py`` at the zip root, the add-on modules beside them, and the numpy-only camera loaders of the
project's ``datasets`` package vendored as ``_vendor/datasets/`` (Blender bundles numpy but neither Pillow nor
torch). The vendored modules are ``ENTRY_MODULES`` and their transitive ``datasets.*`` imports; each must import
only the standard library, numpy and its own package, and its absolute ``datasets.`` imports are rewritten to
relative ones.

``--legacy`` writes ``neus_reconstruct-<version>-legacy.zip`` with everything inside a ``neus_reconstruct/`` folder,
the layout the pre-4.2 add-on installer (Blender 3.6-4.1, which reads ``bl_info``) expects; 4.2+ accepts it too.
"""

from __future__ import annotations

import argparse
import ast
import io
import os
import re
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent
ADDON_DIR = REPO / "neus_blender_addon"
DATASETS_DIR = REPO / "datasets"
VENDOR_PREFIX = "_vendor/datasets"
# The datasets modules the add-on imports (camera_source.datasets_module); what they import is vendored too.
ENTRY_MODULES = ("cameras", "normalization_file", "photo_sources", "scale_file")
# Only useful with the bpy module in the project's venv, not inside Blender.
ADDON_EXCLUDE = {"headless.py"}
ALLOWED_THIRD_PARTY = {"numpy"}
ZIP_DATE = (2024, 1, 1, 0, 0, 0)  # fixed timestamps: identical sources give identical zips


class BuildError(RuntimeError):
    """The add-on cannot be packaged; the message names the file and the problem."""


def read_manifest(path: Path = ADDON_DIR / "blender_manifest.toml") -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise BuildError(f"{path}: {e}") from e


def addon_files() -> list[tuple[Path, str]]:
    """(source, name in zip) of the add-on's own files: sources and the manifest, no caches."""
    out = []
    for p in sorted(ADDON_DIR.rglob("*")):
        rel = p.relative_to(ADDON_DIR)
        if not p.is_file() or "__pycache__" in rel.parts or p.suffix in (".pyc", ".pyo"):
            continue
        if rel.parts[0] in ("_vendor", "tests") or rel.name in ADDON_EXCLUDE or rel.name.startswith("."):
            continue
        if p.suffix not in (".py", ".toml", ".md", ".txt"):
            continue
        out.append((p, rel.as_posix()))
    return out


def _module_file(dotted: str) -> Path | None:
    """``datasets.formats.dtu`` -> its file (a module or a package's __init__.py) under the repo."""
    parts = dotted.split(".")[1:]
    base = DATASETS_DIR.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _package_of(path: Path) -> list[str]:
    """Package path of a vendored file relative to ``datasets`` (e.g. ['formats'] for formats/dtu.py)."""
    rel = path.relative_to(DATASETS_DIR)
    return list(rel.parts[:-1])


def _imports(path: Path) -> list[tuple[ast.AST, str | None, list[str], int]]:
    """(node, module, names, level) of every import statement, nested ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((node, alias.name, [], 0))
        elif isinstance(node, ast.ImportFrom):
            out.append((node, node.module, [a.name for a in node.names], node.level))
    return out


def vendored_modules() -> list[Path]:
    """Files of ``datasets`` that ``ENTRY_MODULES`` need (transitively), package __init__ files included.

    Raises:
        BuildError: a needed module imports something Blender's Python lacks (or torch / the engine / bpy).
    """
    todo = [DATASETS_DIR / f"{name}.py" for name in ENTRY_MODULES]
    for entry in todo:
        if not entry.is_file():
            raise BuildError(f"{entry}: missing (the add-on vendors it)")
    stdlib = set(sys.stdlib_module_names)
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        pkg = _package_of(path)
        for _node, module, names, level in _imports(path):
            if level:  # relative: resolve against this file's package
                base = ["datasets", *pkg][: len(pkg) + 1 - (level - 1)]
                dotted = ".".join(base + ([module] if module else []))
            else:
                dotted = module or ""
            top = dotted.split(".")[0]
            if top == "datasets":
                candidates = [dotted] + [f"{dotted}.{n}" for n in names]
                found = False
                for cand in candidates:
                    f = _module_file(cand)
                    if f is not None:
                        todo.append(f)
                        found = True
                        # parent packages need their __init__ too
                        parts = cand.split(".")
                        for k in range(2, len(parts)):
                            init = _module_file(".".join(parts[:k]))
                            if init is not None and init.name == "__init__.py":
                                todo.append(init)
                if not found:
                    raise BuildError(f"{path}: imports {dotted}, which is not a module of {DATASETS_DIR}")
            elif top not in stdlib and top not in ALLOWED_THIRD_PARTY:
                raise BuildError(
                    f"{path}: imports '{dotted}', which Blender's Python does not have; the camera loaders that "
                    "the add-on vendors may use only the standard library and numpy"
                )
    return sorted(seen)


_FROM_RE = re.compile(r"^(\s*)from\s+datasets((?:\.\w+)*)\s+import\b")


def relativize(path: Path, source: str) -> str:
    """Rewrites ``from datasets.x import y`` to a relative import valid inside the vendored package.

    Raises:
        BuildError: ``import datasets...`` statements (no relative equivalent keeps the name binding).
    """
    depth = len(_package_of(path))
    lines = source.splitlines(keepends=True)
    for node, module, _names, level in _imports(path):
        if level or not module or module.split(".")[0] != "datasets":
            continue
        if isinstance(node, ast.Import):
            raise BuildError(f"{path}:{node.lineno}: 'import {module}' cannot be vendored; use 'from datasets... "
                             "import name' (or a relative import)")
        i = node.lineno - 1
        m = _FROM_RE.match(lines[i])
        if m is None:
            raise BuildError(f"{path}:{node.lineno}: cannot rewrite this import for vendoring")
        rest = m.group(2).lstrip(".")
        lines[i] = f"{m.group(1)}from {'.' * (depth + 1)}{rest} import" + lines[i][m.end():]
    return "".join(lines)


VENDOR_INIT = '''"""Vendored copy of the project's numpy-only modules the add-on uses (camera loaders and the rest).

Generated by build_addon.py; do not edit here. Source of truth: the ``datasets`` package of the repository.
"""
'''


def build(out_dir: Path, legacy: bool = False) -> Path:
    """Writes the zip (atomically) and returns its path."""
    manifest = read_manifest()
    for key in ("id", "version"):
        if key not in manifest:
            raise BuildError(f"{ADDON_DIR / 'blender_manifest.toml'}: no '{key}'")
    entries: list[tuple[str, bytes]] = []
    for src, name in addon_files():
        entries.append((name, src.read_bytes()))
    entries.append(("_vendor/__init__.py", b'"""Third-party and project code bundled with the add-on."""\n'))
    entries.append((f"{VENDOR_PREFIX}/__init__.py", VENDOR_INIT.encode()))
    for src in vendored_modules():
        rel = src.relative_to(DATASETS_DIR).as_posix()
        if rel == "__init__.py":
            continue  # replaced by VENDOR_INIT: the real one may pull in image loading for the engine
        text = relativize(src, src.read_text(encoding="utf-8"))
        entries.append((f"{VENDOR_PREFIX}/{rel}", text.encode("utf-8")))
    check_entries(entries)

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{manifest['id']}-{manifest['version']}{'-legacy' if legacy else ''}.zip"
    prefix = f"{manifest['id']}/" if legacy else ""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(entries):
            info = zipfile.ZipInfo(prefix + name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    fd, tmp = tempfile.mkstemp(prefix=".neus_tmp_", suffix=".zip", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def check_entries(entries: list[tuple[str, bytes]]) -> None:
    """Last line of defence: the layout Blender expects, and nothing that must not ship."""
    names = {n for n, _ in entries}
    for required in ("blender_manifest.toml", "__init__.py"):
        if required not in names:
            raise BuildError(f"the zip would lack {required} at its root")
    for name, data in entries:
        if "__pycache__" in name or name.endswith(".pyc") or name.startswith("tests/"):
            raise BuildError(f"{name}: must not be packaged")
        if name.endswith(".py"):
            for node in ast.walk(ast.parse(data.decode("utf-8"), filename=name)):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                for mod in mods:
                    if mod.split(".")[0] in ("torch", "engine"):
                        raise BuildError(f"{name}: imports {mod}; the add-on must not contain engine/torch code")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "dist", help="output folder (default: dist/)")
    ap.add_argument("--legacy", action="store_true", help="files inside a top folder, for Blender < 4.2")
    args = ap.parse_args(argv)
    try:
        path = build(args.out, legacy=args.legacy)
    except BuildError as e:
        print(f"build_addon: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
