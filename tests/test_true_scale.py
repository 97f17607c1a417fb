"""True scale (issue 19): one known distance between two cameras, kept in the dataset's scale.json, brings the
Blender scene and the engine's normalization.json to metres; bad input is one line naming the problem. Also the
sidebar's warning for an uncertain automatic region (the add-on side of the same issue item)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from addon_helpers import HAS_BPY, NO_BPY_REASON
from engine_helpers import SAMPLE, run_engine

import datasets
from datasets.scale_file import SCALE_JSON, read_known_distance, world_centres, write_known_distance
from neus_blender_addon.core.errors import AddonError


def linked_sample(root):
    """The bundled scene's files linked into a folder of its own (scale.json goes there, not into the repo)."""
    root.mkdir()
    for entry in SAMPLE.iterdir():
        (root / entry.name).symlink_to(entry)
    return root


def test_scale_json_gives_metres_per_world_unit(tmp_path):
    root = linked_sample(tmp_path / "capture")
    cams = datasets.load_cameras(root)
    assert cams.metres_per_unit is None
    units = float(np.linalg.norm(world_centres(cams)[3] - world_centres(cams)[17]))
    known = write_known_distance(root, cams.names, "000003", "000017.png", 0.85)  # a stem or the whole name
    assert (known.camera_a, known.camera_b) == ("000003.png", "000017.png")
    assert json.loads((root / SCALE_JSON).read_text()) == {"version": 1, "camera_a": "000003.png",
                                                           "camera_b": "000017.png", "distance_m": 0.85}
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # no temporary left
    scaled = datasets.load_cameras(root, downscale=2)  # the factor does not depend on the loaded size
    assert scaled.metres_per_unit == pytest.approx(0.85 / units, rel=1e-12)
    centres = world_centres(scaled) * scaled.metres_per_unit
    assert np.linalg.norm(centres[3] - centres[17]) == pytest.approx(0.85, rel=1e-12)


@pytest.mark.parametrize(("content", "needle"), [
    ('{"camera_a": "000003.png", "camera_b": "nope.png", "distance_m": 1}', "no image named 'nope.png'"),
    ('{"camera_a": "000003.png", "camera_b": "000003", "distance_m": 1}', "two different cameras"),
    ('{"camera_a": "000003.png", "camera_b": "000004.png", "distance_m": -2}', "positive number of metres"),
    ('{"camera_a": "000003.png"', "not valid JSON"),
])
def test_a_bad_scale_json_is_named(tmp_path, content, needle):
    root = linked_sample(tmp_path / "capture")
    (root / SCALE_JSON).write_text(content)
    with pytest.raises(datasets.DatasetError, match=needle) as info:
        datasets.load_cameras(root)
    assert SCALE_JSON in str(info.value) and "\n" not in str(info.value)


def test_write_refuses_bad_input_and_writes_nothing(tmp_path):
    root = linked_sample(tmp_path / "capture")
    names = datasets.load_cameras(root).names
    for a, b, metres in (("000001.png", "IMG_9.jpg", 1.0), ("000001.png", "000002.png", 0.0),
                         ("000001.png", "000002.png", math.nan)):
        with pytest.raises(ValueError):
            write_known_distance(root, names, a, b, metres)
    assert read_known_distance(root) is None


@pytest.mark.parametrize(("value", "needle"), [
    ("000001.png,000002.png,-0.5", "positive number of metres"),
    ("000001.png,000002.png,abc", "number of metres"),
    ("000001.png,0.5", "IMG_A,IMG_B,METRES"),
    ("000001.png,IMG_404.jpg,0.5", "no image named 'IMG_404.jpg'"),
])
def test_solve_known_distance_errors_are_one_line_exit_2(tmp_path, value, needle):
    """Checked before any solving (the unknown photo once the photos are read): exit 2, one line, no DATA_DIR."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(3):
        (photos / f"{k:06d}.png").symlink_to(SAMPLE / "image" / f"{k:06d}.png")
    out = tmp_path / "solved"
    code, events, err = run_engine("solve", str(photos), "--out", str(out), "--progress", "jsonl",
                                   "--known-distance", value, timeout=300)
    assert code == 2, err[-2000:]
    assert events[-1]["event"] == "error" and needle in events[-1]["message"], events[-1]
    assert "\n" not in events[-1]["message"] and not out.exists()


# --- Blender: the cameras come in at the metric distance ---------------------------------------------------------

needs_bpy = pytest.mark.skipif(not HAS_BPY, reason=NO_BPY_REASON)


def camera_objects(bpy, dataset: str) -> list:
    coll = bpy.data.collections[dataset]
    return sorted((o for o in coll.all_objects if o.type == "CAMERA"), key=lambda o: o["neus_view"])


def distance(a, b) -> float:
    return float((a.matrix_world.translation - b.matrix_world.translation).length)


@pytest.mark.blender
@needs_bpy
@pytest.mark.parametrize("frame", ["normalized", "world"])
def test_blender_imports_the_cameras_in_metres(bpy, tmp_path, frame):
    """scale.json written beforehand: the imported cameras are the known distance apart in Blender units (metres),
    and every other pair is scaled by the same factor (the scene is only rotated and scaled, never distorted)."""
    root = linked_sample(tmp_path / "capture")
    cams = datasets.load_cameras(root)
    write_known_distance(root, cams.names, "000003.png", "000017.png", 0.85)
    bpy.context.scene.neus.frame = frame
    assert bpy.ops.neus.import_cameras(directory=str(root)) == {"FINISHED"}
    objs = camera_objects(bpy, "capture")
    assert distance(objs[3], objs[17]) == pytest.approx(0.85, rel=1e-5)
    world = world_centres(cams)
    metres = 0.85 / np.linalg.norm(world[3] - world[17])
    for i, j in ((0, 20), (5, 39)):
        assert distance(objs[i], objs[j]) == pytest.approx(metres * np.linalg.norm(world[i] - world[j]), rel=1e-5)
    # The region sphere is in metres too: its world radius times the factor.
    region = next(o for o in bpy.data.collections["capture"].all_objects if o.get("neus_region"))
    assert region.matrix_world.to_scale()[0] == pytest.approx(metres * cams.scale_mat[0, 0], rel=1e-5)


@pytest.mark.blender
@needs_bpy
def test_set_scale_operator_writes_scale_json_and_rescales_the_scene(bpy, tmp_path):
    """The True Scale panel's path: pick two imported cameras, enter the distance, Set Scale. scale.json is written
    for the next import and the engine, and the scene already shows the cameras that far apart; a camera of
    another dataset is refused with one line."""
    root = linked_sample(tmp_path / "capture")
    s = bpy.context.scene.neus
    s.data_dir = str(root)
    assert bpy.ops.neus.import_cameras(directory=str(root)) == {"FINISHED"}
    objs = camera_objects(bpy, "capture")
    clip_before = objs[0].data.clip_end
    t = bpy.context.scene.neus_scale
    t.camera_a, t.camera_b, t.distance = objs[8], objs[30], 2.5
    assert bpy.ops.neus.set_scale() == {"FINISHED"}
    assert read_known_distance(root).record() == {"version": 1, "camera_a": "000008.png",
                                                  "camera_b": "000030.png", "distance_m": 2.5}
    assert distance(objs[8], objs[30]) == pytest.approx(2.5, rel=1e-5)
    ratio = 2.5 / np.linalg.norm(world_centres(datasets.load_cameras(root))[8]
                                 - world_centres(datasets.load_cameras(root))[30])
    assert objs[0].data.clip_end == pytest.approx(clip_before * ratio * datasets.load_cameras(root).scale_mat[0, 0],
                                                  rel=1e-5)
    # A re-import reads scale.json: same metric placement.
    assert bpy.ops.neus.import_cameras(directory=str(root)) == {"FINISHED"}
    assert distance(*(camera_objects(bpy, "capture")[k] for k in (8, 30))) == pytest.approx(2.5, rel=1e-5)
    # Cameras that are not the dataset's are refused.
    other = bpy.data.objects.new("stray", bpy.data.cameras.new("stray"))
    other["neus_view"] = 1
    bpy.context.scene.collection.objects.link(other)
    t.camera_a, t.camera_b = other, camera_objects(bpy, "capture")[2]
    with pytest.raises(RuntimeError, match="not an imported camera"):
        bpy.ops.neus.set_scale()


@pytest.mark.blender
@needs_bpy
def test_a_run_with_a_true_scale_comes_in_metres_without_imported_cameras(bpy, tmp_path):
    """A result attached from a run folder whose normalization.json has metres_per_unit (and no cameras imported
    first): the mesh, in the run's normalized frame, comes in metres (one normalized unit = radius x factor)."""
    from neus_blender_addon import blender_cameras
    from neus_blender_addon.core import run_files

    run = tmp_path / "run"
    run.mkdir()
    S = np.diag([2.5, 2.5, 2.5, 1.0])
    S[:3, 3] = [0.4, -0.3, 1.1]
    (run / "normalization.json").write_text(json.dumps({"scale_mat": S.tolist(), "frame": "normalized",
                                                         "metres_per_unit": 0.04}))
    assert run_files.read_metres_per_unit(run) == 0.04
    mesh = bpy.data.meshes.new("m")
    mesh.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
    obj = bpy.data.objects.new("m", mesh)
    bpy.context.scene.collection.objects.link(obj)
    blender_cameras.attach_result(obj, bpy.context.scene, "capture", "normalized", run_files.read_normalization(run),
                                  None, run_files.read_metres_per_unit(run))
    bpy.context.view_layer.update()
    v = [obj.matrix_world @ p.co for p in mesh.vertices]
    assert (v[1] - v[0]).length == pytest.approx(2.5 * 0.04, rel=1e-5)
    (run / "normalization.json").write_text(json.dumps({"scale_mat": S.tolist(), "metres_per_unit": -1}))
    with pytest.raises(AddonError, match="metres_per_unit"):
        run_files.read_metres_per_unit(run)


@pytest.mark.blender
@needs_bpy
def test_the_sidebar_says_when_the_automatic_region_is_uncertain(bpy, tmp_path):
    """A solved capture whose sparse points crowd on one part: the import keeps the loader's reasons on the region
    object and the sidebar (Data and Scene sub-panels) shows them until the artist edits the region."""
    from datasets.sample_scene.to_colmap import write_colmap
    from neus_blender_addon import scene_tools

    root = write_colmap(tmp_path / "crowded")
    pts = root / "sparse" / "0" / "points3D.txt"
    lines = pts.read_text().splitlines()[:2000]
    xyz = np.array([[float(v) for v in ln.split()[1:4]] for ln in lines])
    keep = np.linalg.norm(xyz - xyz[xyz[:, 2].argmax()], axis=1) < 0.8
    pts.write_text("\n".join(ln for ln, k in zip(lines, keep, strict=True) if k) + "\n")
    notes = datasets.load_cameras(root).region_notes
    assert notes
    bpy.context.scene.neus.data_dir = str(root)
    assert bpy.ops.neus.import_cameras(directory=str(root)) == {"FINISHED"}
    assert scene_tools.region_notes(bpy.context) == list(notes)
    region = scene_tools.region_object(bpy.context)
    region.scale = (1.2, 1.2, 1.2)  # the artist looked and chose
    bpy.context.view_layer.update()
    assert scene_tools.region_notes(bpy.context) == []
    assert bpy.ops.neus.reset_region() == {"FINISHED"}
    assert scene_tools.region_notes(bpy.context) == list(notes)
