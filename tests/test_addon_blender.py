"""The add-on inside real Blender (the bpy module): registration, camera import, mesh import, error reporting."""

from __future__ import annotations

import json

import numpy as np
import pytest
from addon_helpers import (
    DTU,
    IN_BLENDER,
    NO_DTU_REASON,
    blender_project,
    grid_mesh,
    points_in_unit_sphere,
    ring_cameras,
    write_ply_ascii,
    write_ply_binary,
)

from datasets.geometry import project_points

pytestmark = IN_BLENDER


def camera_objects(bpy, collection: str) -> list:
    coll = bpy.data.collections[collection]
    return sorted((o for o in coll.all_objects if o.type == "CAMERA"), key=lambda o: o["neus_view"])


def to_blender_world(obj, pts: np.ndarray) -> np.ndarray:
    """(P, 3) points of the cameras' frame (children of the dataset's parent) -> Blender world coordinates."""
    M = np.array([list(r) for r in obj.parent.matrix_world])
    return pts @ M[:3, :3].T + M[:3, 3]


def test_register_unregister_twice():
    import bpy

    import neus_blender_addon as addon

    bpy.ops.wm.read_factory_settings(use_empty=True)
    for _ in range(2):
        addon.register()
        assert hasattr(bpy.types.Scene, "neus")
        assert bpy.context.scene.neus.preset == "auto"
        for op in ("import_cameras", "import_dataset", "reconstruct", "cancel", "import_mesh", "check_engine",
                   "show_vertex_colors", "reset_region"):
            assert hasattr(bpy.ops.neus, op)
        assert "NEUS_PT_reconstruct" in dir(bpy.types)
        addon.unregister()
        assert not hasattr(bpy.types.Scene, "neus")
        assert "NEUS_PT_reconstruct" not in dir(bpy.types)


@pytest.mark.skipif(not DTU.is_dir(), reason=NO_DTU_REASON)
def test_dtu_cameras_project_like_the_dataset(bpy):
    from datasets.cameras import load_cameras

    cams = load_cameras(DTU)
    assert bpy.ops.neus.import_cameras(directory=str(DTU), set_render=True, set_active_camera=True) == {"FINISHED"}
    scene = bpy.context.scene
    assert (scene.render.resolution_x, scene.render.resolution_y) == (cams.width, cams.height)
    objs = camera_objects(bpy, "dtu_scan65")
    assert [o.name for o in objs] == [n.split(".")[0] for n in cams.names]
    assert scene.camera == objs[0]
    bg = objs[0].data.background_images[0]
    assert objs[0].data.show_background_images and bg.image.filepath.endswith("000000.png")
    pts = points_in_unit_sphere(60, seed=3)
    pts_blender = to_blender_world(objs[0], pts)  # the cameras' frame, turned upright by their parent
    worst = 0.0
    for i, obj in enumerate(objs):  # every camera
        uv, depth = project_points(cams.K[i], cams.c2w[i], pts)
        assert np.all(depth > 0)
        worst = max(worst, float(np.abs(blender_project(scene, obj, pts_blender) - uv).max()))
    assert worst < 2e-3, f"largest difference {worst:.2e} px"  # float32 in Blender limits this to ~1e-3


@pytest.mark.skipif(not DTU.is_dir(), reason=NO_DTU_REASON)
def test_dtu_world_frame_uses_scale_mat(bpy):
    from datasets.cameras import load_cameras

    cams = load_cameras(DTU)
    scene = bpy.context.scene
    scene.neus.frame = "world"
    assert bpy.ops.neus.import_cameras(directory=str(DTU), set_render=True) == {"FINISHED"}
    objs = camera_objects(bpy, "dtu_scan65")
    empty = objs[0].parent
    assert empty is not None and empty.type == "EMPTY"
    M = np.array([list(r) for r in empty.matrix_world])
    R = M @ np.linalg.inv(cams.scale_mat)  # what the parent adds to scale_mat: the upright rotation only
    np.testing.assert_allclose(R[:3, :3] @ R[:3, :3].T, np.eye(3), atol=1e-5)
    np.testing.assert_allclose(R[:3, 3], 0, atol=1e-3)
    S = cams.scale_mat
    pts = points_in_unit_sphere(40, seed=4)
    pts_world = pts @ S[:3, :3].T + S[:3, 3]
    for i in (0, 17, 48):
        expected_pos = S[:3, :3] @ cams.c2w[i][:, 3] + S[:3, 3]
        got = np.linalg.solve(R, np.append(np.array(objs[i].matrix_world.translation), 1.0))[:3]
        np.testing.assert_allclose(got, expected_pos, rtol=1e-5, atol=1e-3)
        uv, _ = project_points(cams.K[i], cams.c2w[i], pts)
        pts_blender = pts_world @ R[:3, :3].T + R[:3, 3]
        assert np.abs(blender_project(scene, objs[i], pts_blender) - uv).max() < 5e-3
    # Cameras in world units keep the scene inside their clipping range.
    assert objs[0].data.clip_end > 10 * np.linalg.norm(expected_pos - S[:3, 3])


@pytest.mark.parametrize(
    "W,H,fx,fy,cx,cy",
    [
        (640, 480, 500.0, 650.0, 100.0, 400.0),  # landscape, fy > fx, principal point near a corner
        (640, 480, 800.0, 500.0, 600.0, 20.0),  # landscape whose pixel aspect makes a vertical fit
        (480, 640, 700.0, 520.0, 400.0, 90.0),  # portrait, fx > fy
        (480, 640, 520.0, 700.0, 30.0, 600.0),  # portrait, fy > fx
    ],
)
def test_synthetic_cameras_pixel_aspect_and_shift(bpy, W, H, fx, fy, cx, cy):
    from neus_blender_addon import blender_cameras
    from neus_blender_addon.core import camera_math

    n = 4
    K = np.tile(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), (n, 1, 1))
    c2w = ring_cameras(n, seed=W + H)
    converted = camera_math.convert_cameras(K, c2w, W, H, [f"v{i}" for i in range(n)])
    scene = bpy.context.scene
    res = blender_cameras.create_cameras(scene, converted, [f"v{i}" for i in range(n)], "synthetic",
                                         options=blender_cameras.ImportOptions(set_render=True))
    assert max(scene.render.pixel_aspect_x, scene.render.pixel_aspect_y) == pytest.approx(
        max(fx, fy) / min(fx, fy), rel=1e-6)
    pts = points_in_unit_sphere(50, seed=5)
    for i, obj in enumerate(res.cameras):
        uv, _ = project_points(K[i], c2w[i], pts)
        err = np.abs(blender_project(scene, obj, to_blender_world(obj, pts)) - uv).max()
        assert err < 2e-3, f"camera {i}: {err:.2e} px"


def test_import_binary_ply_with_colours_and_material(bpy, tmp_path):
    verts, faces = grid_mesh(8, 6)
    colors = np.random.default_rng(0).integers(0, 256, (len(verts), 3)).astype(np.uint8)
    path = tmp_path / "mesh.ply"
    write_ply_binary(path, verts, faces, colors)
    assert bpy.ops.neus.import_mesh(filepath=str(path)) == {"FINISHED"}
    obj = bpy.data.objects["mesh"]
    me = obj.data
    assert len(me.vertices) == len(verts) and len(me.polygons) == len(faces)
    co = np.empty(len(verts) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    np.testing.assert_allclose(co.reshape(-1, 3), verts, atol=1e-7)
    attr = me.color_attributes.get("Col")
    assert attr is not None and attr.domain == "POINT" and me.color_attributes.active_color_name == "Col"
    srgb = np.empty(len(verts) * 4, np.float32)
    attr.data.foreach_get("color_srgb", srgb)
    np.testing.assert_allclose(srgb.reshape(-1, 4)[:, :3], colors / 255.0, atol=0.6 / 255)
    mat = me.materials[0]
    nodes = mat.node_tree.nodes
    attr_node = next(n for n in nodes if n.type == "VERTEX_COLOR")
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    assert attr_node.layer_name == "Col"
    assert bsdf.inputs["Base Color"].links[0].from_node == attr_node
    # Importing again replaces the object instead of adding "mesh.001".
    assert bpy.ops.neus.import_mesh(filepath=str(path)) == {"FINISHED"}
    assert "mesh.001" not in bpy.data.objects and len(bpy.data.meshes) == 1


def test_import_ascii_ply_quads_in_world_frame(bpy, tmp_path):
    verts, faces = grid_mesh(5, 4, quads=True)
    colors = np.random.default_rng(1).integers(0, 256, (len(verts), 3))
    path = tmp_path / "mesh.ply"
    write_ply_ascii(path, verts, faces, colors)
    S = np.diag([5.0, 5.0, 5.0, 1.0])
    S[:3, 3] = [10.0, -2.0, 3.0]
    (tmp_path / "normalization.json").write_text(json.dumps({"scale_mat": S.tolist(), "frame": "normalized"}))
    bpy.context.scene.neus.frame = "world"
    assert bpy.ops.neus.import_mesh(filepath=str(path)) == {"FINISHED"}
    obj = bpy.data.objects["mesh"]
    assert [p.loop_total for p in obj.data.polygons] == [4] * len(faces)
    assert obj.parent is not None and obj.parent.type == "EMPTY"
    world = np.array([list(obj.matrix_world @ v.co) for v in obj.data.vertices])
    np.testing.assert_allclose(world, verts @ S[:3, :3].T + S[:3, 3], rtol=1e-5, atol=1e-5)


def test_import_mesh_bad_file_is_reported(bpy, tmp_path):
    path = tmp_path / "broken.ply"
    path.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nend_header\n1\n")
    with pytest.raises(RuntimeError, match="broken.ply"):  # bpy.ops turns an ERROR report into RuntimeError
        bpy.ops.neus.import_mesh(filepath=str(path))
    assert "broken" not in bpy.data.objects


def test_bad_dataset_folder_is_reported(bpy, tmp_path):
    with pytest.raises(RuntimeError, match="dataset folder does not exist"):
        bpy.ops.neus.import_cameras(directory=str(tmp_path / "nope"))
    assert "nope" in bpy.context.scene.neus.last_error


@pytest.mark.skipif(not DTU.is_dir(), reason=NO_DTU_REASON)
def test_missing_engine_interpreter_is_a_clear_error(bpy, tmp_path, monkeypatch):
    missing = tmp_path / "venv" / "bin" / "python"
    monkeypatch.setenv("NEUS_ENGINE_PYTHON", str(missing))
    s = bpy.context.scene.neus
    s.data_dir = str(DTU)
    s.output_dir = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.neus.reconstruct()
    assert str(missing) in s.last_error and "NEUS_ENGINE_PYTHON" in s.last_error
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


class LayoutRecorder:
    """Stands in for a UILayout where no UI exists (background mode) and checks what the draw code references:
    every property must exist on its data, every operator must be registered."""

    def __init__(self, bpy):
        self.bpy, self.props, self.ops, self.labels = bpy, [], [], []

    def __getattr__(self, name):  # column, row, box, grid_flow, ... return nested layouts; alert/enabled are set
        return lambda *a, **k: self

    def prop(self, data, name, **kw):
        assert name in data.bl_rna.properties, f"{type(data).__name__} has no property {name}"
        self.props.append(name)

    def operator(self, idname, **kw):
        module, op = idname.split(".")
        assert hasattr(getattr(self.bpy.ops, module), op), idname
        self.ops.append(idname)

    def label(self, text="", **kw):
        self.labels.append(text)

    def progress(self, factor=0.0, type="BAR", text=""):
        assert 0.0 <= factor <= 1.0
        self.labels.append(text)


class PanelStandIn:
    """``self`` for a Panel class's ``draw`` where Blender makes no panels (background mode): the class's own
    attributes and methods (looked up as Python would, so staticmethods stay unbound), and a LayoutRecorder."""

    def __init__(self, cls, bpy):
        self.cls, self.layout = cls, LayoutRecorder(bpy)

    def __getattr__(self, name):
        for klass in self.cls.__mro__:
            if name in vars(klass):
                attr = vars(klass)[name]
                return attr.__get__(self, type(self)) if hasattr(attr, "__get__") else attr
        raise AttributeError(name)

    def draw(self, context):
        self.cls.draw(self, context)
        return self.layout


def test_panel_and_preferences_draw_what_exists(bpy):
    from types import SimpleNamespace

    from neus_blender_addon import ui
    from neus_blender_addon.preferences import NEUS_AP_preferences

    s = bpy.context.scene.neus
    s.state, s.last_error, s.step, s.total, s.progress = "failed", "something went wrong " * 8, 5, 10, 0.5
    s.log_tail = "engine line one\nerror: engine line two"
    rec = LayoutRecorder(bpy)
    for cls in ui.classes:  # the main panel and its sub-panels, each with its own layout
        panel = PanelStandIn(cls, bpy)
        panel.draw(bpy.context)
        for name in ("props", "ops", "labels"):
            getattr(rec, name).extend(getattr(panel.layout, name))
        if cls is not ui.NEUS_PT_reconstruct:
            assert cls.bl_parent_id == "NEUS_PT_reconstruct"
            if cls is not ui.NEUS_PT_log:  # settings sub-panels: labels left, values right, as Blender's own
                assert panel.layout.use_property_split is True
    assert [c.bl_label for c in ui.classes[1:5]] == ["Data", "Training", "Output", "Advanced"]
    assert {"data_dir", "preset", "device", "steps", "frame", "texture", "output_dir", "export_on_cancel",
            "engine_settings"} <= set(rec.props)
    assert {"neus.import_cameras", "neus.reconstruct", "neus.import_mesh", "neus.open_run_folder"} <= set(rec.ops)
    assert "Step: 5/10" in rec.labels and any("something went wrong" in t for t in rec.labels)
    assert "error: engine line two" in rec.labels  # the engine log's last lines
    from neus_blender_addon.true_scale import NEUS_PT_true_scale

    scale_panel = PanelStandIn(NEUS_PT_true_scale, bpy).draw(bpy.context)  # rows through SubPanel.prop_column
    assert scale_panel.props[:3] == ["camera_a", "camera_b", "distance"] and scale_panel.ops == ["neus.set_scale"]
    assert scale_panel.use_property_split is True
    rec = LayoutRecorder(bpy)
    prefs = SimpleNamespace(layout=rec, engine_python="", engine_status="python: 3.11",
                            bl_rna=NEUS_AP_preferences.bl_rna)
    NEUS_AP_preferences.draw(prefs, bpy.context)
    assert "neus.check_engine" in rec.ops and "python: 3.11" in rec.labels


def test_stale_running_flag_is_reset_on_load(bpy, tmp_path):
    s = bpy.context.scene.neus
    s.running, s.state = True, "running"  # as saved by a Blender that quit mid-run
    path = tmp_path / "stale.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.open_mainfile(filepath=str(path))
    s = bpy.context.scene.neus
    assert not s.running and s.state == "idle"


def test_status_is_copied_and_redrawn_only_when_it_changed(bpy, tmp_path):
    import sys
    from pathlib import Path

    from neus_blender_addon import job_driver
    from neus_blender_addon.core import run_state
    from neus_blender_addon.core.engine_process import EngineLocation

    scene = bpy.context.scene
    request = run_state.RunRequest(scene.name, tmp_path, tmp_path / "run_001", "scan",
                                   EngineLocation(Path(sys.executable), "test", None))
    run = run_state.new_run(request)  # not started: only its status is shown
    run.status.state, run.status.stage, run.status.step, run.status.total = "running", "training", 5, 10
    job_driver.update_ui(run)
    s = scene.neus
    assert (s.step, s.stage, s.running, s.run_dir) == (5, "training", True, str(tmp_path / "run_001"))
    s.step = 99  # stands in for "drawn already": an unchanged status is not copied (nor redrawn) again
    job_driver.update_ui(run)
    assert s.step == 99
    run.status.step = 6
    job_driver.update_ui(run)
    assert s.step == 6
    job_driver.shutdown()  # forget the cached state
