"""The add-on's scene side in real Blender: upright parent, sub-collections, import options, File > Import and
drag-and-drop, sparse points, image planes, viewport shading left alone, the editable region."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from addon_helpers import DTU, IN_BLENDER, NO_DTU_REASON, SAMPLE_SCENE, blender_project

pytestmark = IN_BLENDER
needs_dtu = pytest.mark.skipif(not DTU.is_dir(), reason=NO_DTU_REASON)


def cameras_of(bpy, dataset: str) -> list:
    coll = bpy.data.collections[dataset]
    return sorted((o for o in coll.all_objects if o.type == "CAMERA"), key=lambda o: o["neus_view"])


def mean_up(objs) -> np.ndarray:
    """Unit mean of the cameras' up axes (local +Y) in Blender's world."""
    ups = np.array([np.array(o.matrix_world.to_3x3())[:, 1] for o in objs])
    m = ups.mean(axis=0)
    return m / np.linalg.norm(m)


def world_matrix(obj) -> np.ndarray:
    return np.array([list(r) for r in obj.matrix_world])


@needs_dtu
@pytest.mark.parametrize("frame", ["normalized", "world"])
def test_dtu_cameras_are_upright_under_one_parent(bpy, frame):
    from datasets.cameras import load_cameras

    cams = load_cameras(DTU)
    assert cams.up[2] < -0.5  # the dataset's own frame has the cameras upside down
    bpy.context.scene.neus.frame = frame
    assert bpy.ops.neus.import_cameras(directory=str(DTU)) == {"FINISHED"}
    objs = cameras_of(bpy, "dtu_scan65")
    assert len(objs) == cams.n_views
    np.testing.assert_allclose(mean_up(objs), [0.0, 0.0, 1.0], atol=1e-5)  # the mean up is +Z (measured: 1.2e-7)
    assert min(np.array(o.matrix_world.to_3x3())[2, 1] for o in objs) > 0  # every camera upright
    parent = objs[0].parent
    assert all(o.parent == parent for o in objs) and parent.type == "EMPTY"
    # Cameras keep the engine's frame relative to the parent: the local matrix is the dataset's c2w.
    for i in (0, 21, 48):
        local = np.array([list(r) for r in objs[i].matrix_basis])
        np.testing.assert_allclose(local[:3, 3], cams.c2w[i][:, 3], atol=1e-5)
    # The parent is a similarity (rotation x the frame's scale), so relative poses are unchanged.
    M = world_matrix(parent)
    scale = np.cbrt(np.linalg.det(M[:3, :3]))
    expected_scale = np.cbrt(np.linalg.det(cams.scale_mat[:3, :3])) if frame == "world" else 1.0
    assert scale == pytest.approx(expected_scale, rel=1e-5)
    np.testing.assert_allclose(M[:3, :3] @ M[:3, :3].T / scale**2, np.eye(3), atol=1e-5)
    # Sub-collections: cameras in "<dataset> cameras" under the dataset's collection.
    coll = bpy.data.collections["dtu_scan65"]
    assert {c.name for c in coll.children} == {"dtu_scan65 cameras"}
    assert all(o.users_collection[0].name == "dtu_scan65 cameras" for o in objs)


@needs_dtu
def test_default_import_leaves_render_settings_and_scene_camera(bpy):
    scene = bpy.context.scene
    before = (scene.render.resolution_x, scene.render.resolution_y, scene.render.pixel_aspect_x, scene.camera)
    assert bpy.ops.neus.import_cameras(directory=str(DTU)) == {"FINISHED"}
    assert (scene.render.resolution_x, scene.render.resolution_y, scene.render.pixel_aspect_x,
            scene.camera) == before
    objs = cameras_of(bpy, "dtu_scan65")
    assert objs[0].data.show_background_images and objs[0].data.background_images[0].alpha == pytest.approx(0.6)
    # Asked for, both are set.
    assert bpy.ops.neus.import_cameras(directory=str(DTU), set_render=True, set_active_camera=True,
                                       backgrounds=False, display_size=0.05) == {"FINISHED"}
    objs = cameras_of(bpy, "dtu_scan65")
    assert (scene.render.resolution_x, scene.render.resolution_y) == (1600, 1200) and scene.camera == objs[0]
    assert not objs[0].data.background_images and objs[0].data.display_size == pytest.approx(0.05)
    assert len(objs) == 49  # re-import replaced the cameras


@needs_dtu
def test_every_second_view_and_subsets(bpy):
    from datasets.cameras import load_cameras

    n = load_cameras(DTU).n_views
    assert bpy.ops.neus.import_cameras(directory=str(DTU), every=2) == {"FINISHED"}
    objs = cameras_of(bpy, "dtu_scan65")
    assert [o["neus_view"] for o in objs] == list(range(0, n, 2))
    assert len(objs) == (n + 1) // 2  # half of the views (the odd count rounds up)
    assert bpy.ops.neus.import_cameras(directory=str(DTU), subset="3-5, 40") == {"FINISHED"}
    assert [o["neus_view"] for o in cameras_of(bpy, "dtu_scan65")] == [3, 4, 5, 40]
    with pytest.raises(RuntimeError, match="outside the views 0-48"):
        bpy.ops.neus.import_cameras(directory=str(DTU), subset="47-60")


@needs_dtu
def test_image_planes_fill_each_camera_view(bpy):
    assert bpy.ops.neus.import_cameras(directory=str(DTU), subset="0, 30", image_planes=True,
                                       set_render=True) == {"FINISHED"}
    scene = bpy.context.scene
    W, H = scene.render.resolution_x, scene.render.resolution_y
    for cam in cameras_of(bpy, "dtu_scan65"):
        (plane,) = [c for c in cam.children if c.get("neus_image_plane")]
        corners = np.array([list(plane.matrix_world @ v.co) for v in plane.data.vertices])
        px = blender_project(scene, cam, corners)
        np.testing.assert_allclose(px, [[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]],
                                   atol=1e-2)
        tex = next(n for n in plane.active_material.node_tree.nodes if n.type == "TEX_IMAGE")
        assert tex.image.filepath == cam["neus_image"]


@pytest.fixture
def colmap_scene(tmp_path):
    from datasets.sample_scene.to_colmap import write_colmap

    return write_colmap(tmp_path / "colmap_scene", n_points=400)


def read_points_text(path) -> tuple[np.ndarray, np.ndarray]:
    rows = np.array([[float(v) for v in ln.split()[1:7]] for ln in path.read_text().splitlines()
                     if ln.strip() and not ln.startswith("#")])
    return rows[:, :3], rows[:, 3:6]


def test_colmap_point_cloud_through_file_import(bpy, colmap_scene):
    """File > Import of a COLMAP model file: the sparse points arrive in the cameras' frame with their colours."""
    from datasets.cameras import load_cameras

    s = bpy.context.scene.neus
    s.frame = "world"
    pts_file = colmap_scene / "sparse" / "0" / "points3D.txt"
    assert bpy.ops.neus.import_dataset(filepath=str(pts_file)) == {"FINISHED"}
    assert s.data_dir == str(colmap_scene) and s.data_format == "colmap"  # Reconstruct follows the import
    xyz, rgb = read_points_text(pts_file)
    cloud = bpy.data.objects["colmap_scene sparse points"]
    assert len(cloud.data.vertices) == len(xyz)
    col = np.empty(len(xyz) * 4, np.float32)
    cloud.data.color_attributes["Col"].data.foreach_get("color_srgb", col)
    np.testing.assert_allclose(col.reshape(-1, 4)[:, :3], rgb / 255.0, atol=1 / 255)
    # Shown as points in Object Mode (Blender draws no loose vertices), colours carried over.
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = cloud.evaluated_get(depsgraph)
    geometry = evaluated.evaluated_geometry()  # kept alive while its point cloud is read
    shown = geometry.pointcloud
    assert shown is not None and len(shown.points) == len(xyz) and "Col" in shown.attributes
    # In the world frame the scene is only rotated: camera-to-point distances are COLMAP's.
    cams = load_cameras(colmap_scene)
    S = cams.scale_mat
    centres_world = cams.c2w[:, :, 3] @ S[:3, :3].T + S[:3, 3]
    objs = cameras_of(bpy, "colmap_scene")
    blender_centres = np.array([list(o.matrix_world.translation) for o in objs])
    blender_pts = np.array([list(cloud.matrix_world @ v.co) for v in cloud.data.vertices])
    for k in (0, 13, 39):
        expected = np.linalg.norm(xyz - centres_world[k], axis=1)
        got = np.linalg.norm(blender_pts - blender_centres[k], axis=1)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mean_up(objs), [0.0, 0.0, 1.0], atol=1e-5)  # COLMAP (solved photos): upright too
    # No point cloud when not asked for.
    assert bpy.ops.neus.import_dataset(filepath=str(pts_file), point_cloud=False) == {"FINISHED"}
    assert "colmap_scene sparse points" not in bpy.data.objects


def write_transforms(root, source=SAMPLE_SCENE) -> None:
    """The bundled scene as a NeRF-synthetic transforms.json (pixel intrinsics, world-frame c2w)."""
    from datasets.cameras import load_cameras

    cams = load_cameras(source)
    S = cams.scale_mat
    (root / "images").mkdir(parents=True)
    frames = []
    for k, path in enumerate(cams.image_paths):
        os.symlink(path, root / "images" / path.name)
        m = np.eye(4)
        m[:3, :3] = cams.c2w[k][:, :3]
        m[:3, 3] = S[:3, :3] @ cams.c2w[k][:, 3] + S[:3, 3]
        frames.append({"file_path": f"images/{path.name}", "transform_matrix": m.tolist()})
    K = cams.K[0]
    meta = {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2] + 0.5, "cy": K[1, 2] + 0.5, "w": cams.width,
            "h": cams.height, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))


def test_file_handler_and_menu_import_transforms_json(bpy, tmp_path):
    from neus_blender_addon.import_dataset import MENU_TEXT, NEUS_FH_dataset

    fh = bpy.types.FileHandler.bl_rna_get_subclass_py("NEUS_FH_dataset")
    assert fh is NEUS_FH_dataset and fh.bl_import_operator == "neus.import_dataset"
    assert {".json", ".npz", ".bin", ".txt"} <= set(fh.bl_file_extensions.split(";"))
    assert "NeuS" in MENU_TEXT and any(getattr(f, "__name__", "") == "menu_import"
                                       for f in bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize())
    root = tmp_path / "nerf"
    write_transforms(root)
    # What a drop does after the popup: the operator with the dropped file's path.
    assert bpy.ops.neus.import_dataset(filepath=str(root / "transforms.json"), every=4) == {"FINISHED"}
    objs = cameras_of(bpy, "nerf")
    assert [o["neus_view"] for o in objs] == list(range(0, 40, 4))
    assert mean_up(objs)[2] > 0.9
    with pytest.raises(RuntimeError, match="not a NeuS dataset file"):
        bpy.ops.neus.import_dataset(filepath=str(root / "images" / "000000.png"))


def test_mesh_import_leaves_viewport_shading_alone(bpy, tmp_path):
    from addon_helpers import grid_mesh, write_ply_binary

    verts, faces = grid_mesh(6, 5)
    path = tmp_path / "mesh.ply"
    write_ply_binary(path, verts, faces, np.full((len(verts), 3), 200, np.uint8))
    views = [sp for scr in bpy.data.screens for a in scr.areas if a.type == "VIEW_3D" for sp in a.spaces
             if sp.type == "VIEW_3D"]
    assert views
    before = [sp.shading.color_type for sp in views]
    assert "VERTEX" not in before
    assert bpy.ops.neus.import_mesh(filepath=str(path)) == {"FINISHED"}
    assert [sp.shading.color_type for sp in views] == before
    assert bpy.ops.neus.show_vertex_colors() == {"FINISHED"}  # on request only
    assert any(sp.shading.color_type == "VERTEX" for sp in views)


@needs_dtu
def test_region_object_gives_the_engine_a_world_frame_region(bpy):
    from mathutils import Matrix, Vector

    from datasets.cameras import load_cameras
    from neus_blender_addon import blender_cameras

    scene = bpy.context.scene
    scene.neus.frame = "world"
    assert bpy.ops.neus.import_cameras(directory=str(DTU)) == {"FINISHED"}
    region = next(o for o in bpy.data.objects if o.get("neus_region"))
    assert region.empty_display_type == "SPHERE"
    assert blender_cameras.user_region(scene, "dtu_scan65") is None  # untouched: the engine chooses
    S = load_cameras(DTU).scale_mat
    # The artist moves and shrinks it in the viewport (world space: the scene is upright there).
    region.matrix_world = Matrix.Translation(Vector((5.0, -3.0, 12.0))) @ region.matrix_world @ Matrix.Scale(0.5, 4)
    bpy.context.view_layer.update()
    got = blender_cameras.user_region(scene, "dtu_scan65")
    parent = region.parent
    # Back into the dataset's world frame through the parent's upright rotation (a pure rotation of the world).
    R = world_matrix(parent) @ np.linalg.inv(S)
    centre_world = np.linalg.solve(R, np.append(np.array(region.matrix_world.translation), 1.0))[:3]
    assert got.type == "sphere"
    np.testing.assert_allclose(got.center, centre_world, rtol=1e-5, atol=1e-3)
    assert got.radius == pytest.approx(0.5 * S[0, 0], rel=1e-5)
    settings = got.settings()
    assert settings[0] == "data.region.type=sphere" and settings[2].startswith("data.region.radius=")
    # A cube empty is a box; Reset Region brings back the automatic one.
    region.empty_display_type = "CUBE"
    box = blender_cameras.user_region(scene, "dtu_scan65")
    assert box.type == "box" and box.half_size == pytest.approx((0.5 * S[0, 0],) * 3, rel=1e-4)
    scene.neus.data_dir = str(DTU)
    assert bpy.ops.neus.reset_region() == {"FINISHED"}
    assert blender_cameras.user_region(scene, "dtu_scan65") is None
    # Re-importing the cameras keeps an edited region.
    region.scale = (2.0, 2.0, 2.0)
    assert bpy.ops.neus.import_cameras(directory=str(DTU)) == {"FINISHED"}
    assert tuple(next(o for o in bpy.data.objects if o.get("neus_region")).scale) == (2.0, 2.0, 2.0)


def test_scene_panel_draws_what_exists(bpy):
    from test_addon_blender import PanelStandIn

    from neus_blender_addon.scene_tools import NEUS_PT_scene

    layout = PanelStandIn(NEUS_PT_scene, bpy).draw(bpy.context)
    assert "neus.show_vertex_colors" in layout.ops
    assert layout.use_property_split is True and layout.enabled is True  # a sub-panel like the others
