"""build_addon.py: the extension zip's layout, manifest, vendored camera loaders, and installation into Blender."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from addon_helpers import DTU, HAS_BPY, NO_BPY_REASON, NO_DTU_REASON, REPO

import build_addon


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run([sys.executable, str(REPO / "build_addon.py"), "--out", str(out)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    path = Path(res.stdout.strip())
    assert path.parent == out and path.is_file()
    return path


def test_zip_layout(built_zip):
    with zipfile.ZipFile(built_zip) as zf:
        names = zf.namelist()
        sources = {n: zf.read(n).decode("utf-8") for n in names if n.endswith(".py")}
    assert "blender_manifest.toml" in names and "__init__.py" in names  # at the zip root, side by side
    for module in ("core/__init__.py", "core/camera_math.py", "core/camera_source.py", "core/engine_process.py",
                   "core/protocol.py", "core/ply_io.py", "operators.py", "ui.py"):
        assert module in names
    for module in ("__init__.py", "cameras.py", "geometry.py", "formats/dtu.py", "formats/colmap.py",
                   "normalization_file.py", "photo_sources.py"):
        assert f"_vendor/datasets/{module}" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.startswith("tests/")]
    assert "headless.py" not in names
    for name, src in sources.items():
        for node in ast.walk(ast.parse(src)):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for mod in mods:
                top = mod.split(".")[0]
                assert top not in ("torch", "engine", "PIL", "datasets"), f"{name} imports {mod}"
    # Identical sources give an identical zip (fixed timestamps, sorted entries).
    again = build_addon.build(built_zip.parent / "again")
    assert again.read_bytes() == built_zip.read_bytes()
    # The legacy zip holds the same files inside one folder, as Blender < 4.2 expects.
    legacy = build_addon.build(built_zip.parent / "legacy", legacy=True)
    with zipfile.ZipFile(legacy) as zf:
        assert sorted(zf.namelist()) == sorted(f"neus_reconstruct/{n}" for n in names)


def test_manifest_fields(built_zip):
    with zipfile.ZipFile(built_zip) as zf:
        m = tomllib.loads(zf.read("blender_manifest.toml").decode("utf-8"))
    assert m["schema_version"] == "1.0.0"
    assert m["id"] == "neus_reconstruct" and m["id"].isidentifier()
    assert m["type"] == "add-on" and m["blender_version_min"] == "4.2.0"
    assert m["license"] == ["SPDX:GPL-3.0-or-later"]
    assert m["name"] and m["maintainer"]
    assert built_zip.name == f"{m['id']}-{m['version']}.zip"
    assert all(x.isdigit() for x in m["version"].split("."))
    # Terse strings: at most 64 characters, ending in a letter or digit (no trailing period).
    terse = [m["tagline"], *m["permissions"].values()]
    for text in terse:
        assert 0 < len(text) <= 64 and text[-1].isalnum(), text
    assert set(m["permissions"]) <= {"files", "network", "clipboard", "camera", "microphone"}


def _blender_ext_script() -> Path | None:
    spec = importlib.util.find_spec("bpy")  # locates the package without importing Blender
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        hits = sorted(Path(loc).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if hits:
            return hits[-1]
    return None


def test_blender_validator_accepts_the_zip(built_zip):
    script = _blender_ext_script()
    if script is None:
        pytest.skip("Blender's extension tool (bl_pkg/cli/blender_ext.py) not found: " + NO_BPY_REASON)
    res = subprocess.run([sys.executable, str(script), "validate", str(built_zip)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Success" in res.stdout


BLOCKER = textwrap.dedent(
    """
    import sys
    class Block:
        # Blender has none of these; the top-level datasets must not be used either.
        blocked = {"PIL", "torch", "engine", "datasets", "bpy"}
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.blocked:
                raise ImportError(f"blocked: {name}")
            return None
    sys.meta_path.insert(0, Block())
    """
)


@pytest.mark.skipif(not DTU.is_dir(), reason=NO_DTU_REASON)
def test_vendored_camera_loader_works_without_repo_pil_or_bpy(built_zip, tmp_path):
    from datasets.sample_scene.to_colmap import write_colmap

    colmap = write_colmap(tmp_path / "colmap", n_points=50)
    root = tmp_path / "addons"
    with zipfile.ZipFile(built_zip) as zf:
        zf.extractall(root / "neus_reconstruct")
    script = BLOCKER + textwrap.dedent(
        f"""
        import json
        sys.path[:] = [p for p in sys.path if p not in ("", {str(REPO)!r})] + [{str(root)!r}]
        from neus_reconstruct.core import camera_source, camera_math
        mod = camera_source.cameras_module()
        cams = camera_source.load_camera_set({str(DTU)!r})
        conv = camera_math.convert_camera_set(cams)
        xyz, rgb = camera_source.load_sparse_points({str(colmap)!r})  # the point cloud option, vendored too
        print(json.dumps({{"module": mod.__name__, "K": cams.K.tolist(), "n": len(conv.cameras),
                           "points": xyz.tolist(), "rgb": rgb.tolist(),
                           "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("PIL", "datasets"))}}))
        """
    )
    res = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["module"] == "neus_reconstruct._vendor.datasets.cameras" and out["n"] == 49
    assert out["loaded"] == []
    from datasets.cameras import load_cameras

    np.testing.assert_array_equal(np.array(out["K"]), load_cameras(DTU).K)
    rows = [ln.split() for ln in (colmap / "sparse" / "0" / "points3D.txt").read_text().splitlines() if ln.strip()]
    np.testing.assert_array_equal(np.array(out["points"]), np.array([[float(v) for v in r[1:4]] for r in rows]))
    np.testing.assert_array_equal(np.array(out["rgb"]), np.array([[int(v) for v in r[4:7]] for r in rows]))


@pytest.mark.blender
@pytest.mark.skipif(not HAS_BPY, reason=NO_BPY_REASON)
@pytest.mark.skipif(not DTU.is_dir(), reason=NO_DTU_REASON)
def test_zip_installs_as_extension(built_zip, tmp_path):
    # A fresh Blender process whose user folders live in tmp_path (the real user config is never touched).
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:] = [p for p in sys.path if p not in ("", {str(REPO)!r})]
        import bpy
        bpy.ops.wm.read_factory_settings(use_empty=True)
        res = bpy.ops.extensions.package_install_files(filepath={str(built_zip)!r}, repo="user_default",
                                                       enable_on_install=True)
        assert res == {{"FINISHED"}}, res
        name = "bl_ext.user_default.neus_reconstruct"
        assert name in bpy.context.preferences.addons.keys()
        assert bpy.context.preferences.addons[name].preferences.engine_python == ""
        mod = sys.modules[name + ".core.camera_source"].cameras_module()
        assert mod.__name__ == name + "._vendor.datasets.cameras", mod.__name__
        assert bpy.ops.neus.import_cameras(directory={str(DTU)!r}) == {{"FINISHED"}}
        assert len([o for o in bpy.data.objects if o.type == "CAMERA"]) == 49
        assert "datasets" not in sys.modules and "PIL" not in sys.modules
        print("INSTALLED-OK")
        """
    )
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "blender_user")}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)
    assert res.returncode == 0 and "INSTALLED-OK" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]
    assert (tmp_path / "blender_user" / "extensions" / "user_default" / "neus_reconstruct" / "__init__.py").is_file()


def test_build_refuses_modules_blender_lacks(tmp_path, monkeypatch):
    # A datasets tree whose camera loader imports Pillow must not be vendored.
    fake = tmp_path / "datasets"
    fake.mkdir()
    (fake / "cameras.py").write_text("import numpy as np\nfrom datasets.helpers import f\n")
    (fake / "helpers.py").write_text("def f():\n    from PIL import Image\n    return Image\n")
    monkeypatch.setattr(build_addon, "DATASETS_DIR", fake)
    monkeypatch.setattr(build_addon, "ENTRY_MODULES", ("cameras",))
    with pytest.raises(build_addon.BuildError, match=r"helpers\.py: imports 'PIL'"):
        build_addon.vendored_modules()
    (fake / "helpers.py").write_text("import json\n\ndef f():\n    return json\n")
    assert [p.name for p in build_addon.vendored_modules()] == ["cameras.py", "helpers.py"]
    assert build_addon.relativize(fake / "cameras.py", (fake / "cameras.py").read_text()).endswith(
        "from .helpers import f\n")


def test_every_datasets_module_the_addon_imports_is_vendored():
    """The add-on reaches ``datasets`` only through camera_source (``cameras_module`` / ``datasets_module("x")``);
    each module named there must be in the zip, or the installed add-on fails where the checkout works."""
    named = {"cameras"}
    for path in (REPO / "neus_blender_addon").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None))
                    == "datasets_module" and node.args and isinstance(node.args[0], ast.Constant)):
                named.add(node.args[0].value)
    assert named > {"cameras"}  # the scan found the add-on's uses (normalization_file at least)
    vendored = {p.relative_to(build_addon.DATASETS_DIR).with_suffix("").as_posix().replace("/", ".")
                for p in build_addon.vendored_modules()}
    assert named <= vendored, named - vendored
