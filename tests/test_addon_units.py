"""bpy-free add-on modules: camera math, protocol, PLY reader, run files, dataset naming."""

from __future__ import annotations

import json

import numpy as np
import pytest
from addon_helpers import DTU, NO_DTU_REASON, grid_mesh, ring_cameras, write_ply_ascii, write_ply_binary

from datasets.geometry import project_points
from neus_blender_addon.core import camera_math as cm
from neus_blender_addon.core import camera_source, protocol, run_files
from neus_blender_addon.core.errors import AddonError
from neus_blender_addon.core.ply_io import PlyError, read_ply

# -- camera math -------------------------------------------------------------------------------------------
CASES = [  # (W, H, fx, fy, cx, cy): square pixels, fx != fy both ways, strongly off-centre, portrait/landscape
    (800, 600, 1000.0, 1000.0, 399.5, 299.5),
    (640, 480, 500.0, 650.0, 100.0, 400.0),
    (640, 480, 800.0, 500.0, 600.0, 20.0),  # pixel aspect makes the landscape frame "taller": vertical fit
    (480, 640, 700.0, 520.0, 400.0, 90.0),
    (480, 640, 520.0, 700.0, 30.0, 600.0),
]


@pytest.mark.parametrize("W,H,fx,fy,cx,cy", CASES)
def test_intrinsics_round_trip_through_blender_model(W, H, fx, fy, cx, cy):
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    render = cm.render_settings(K[None], W, H)
    assert min(render.pixel_aspect_x, render.pixel_aspect_y) == 1.0  # Blender clamps both to >= 1
    assert render.pixel_aspect_x / render.pixel_aspect_y == pytest.approx(fy / fx)
    lens = cm.intrinsics_to_blender(K, render)
    K_b = cm.blender_to_intrinsics(lens, render)
    np.testing.assert_allclose(K_b, K, rtol=1e-12, atol=1e-9)
    assert cm.max_reprojection_error(K, K_b, W, H) < 1e-9
    # The same camera expressed with sensor_fit AUTO (Blender's default) must agree too.
    auto = cm.BlenderLens(lens.lens * (lens.sensor_width / (lens.sensor_width if lens.sensor_fit == "HORIZONTAL"
                                                              else lens.sensor_height)),
                          lens.sensor_width, lens.sensor_height, "AUTO", lens.shift_x, lens.shift_y)
    np.testing.assert_allclose(cm.blender_to_intrinsics(auto, render), K, rtol=1e-12, atol=1e-9)


def test_centred_principal_point_means_zero_shift():
    K = np.array([[900.0, 0, 319.5], [0, 900.0, 239.5], [0, 0, 1]])
    lens = cm.intrinsics_to_blender(K, cm.render_settings(K[None], 640, 480))
    assert lens.shift_x == pytest.approx(0.0, abs=1e-12) and lens.shift_y == pytest.approx(0.0, abs=1e-12)
    assert lens.sensor_fit == "HORIZONTAL" and lens.lens == pytest.approx(900.0 * 36.0 / 640)


def test_shift_is_in_units_of_the_larger_side():
    # Principal point one full image width to the left of the centre -> shift_x = +1 in landscape.
    K = np.array([[500.0, 0, 319.5 - 640], [0, 500.0, 239.5], [0, 0, 1]])
    lens = cm.intrinsics_to_blender(K, cm.render_settings(K[None], 640, 480))
    assert lens.shift_x == pytest.approx(1.0)
    # Portrait: the unit is the height. Principal point 640 px above the centre -> shift_y = -1.
    K = np.array([[500.0, 0, 239.5], [0, 500.0, 319.5 - 640], [0, 0, 1]])
    lens = cm.intrinsics_to_blender(K, cm.render_settings(K[None], 480, 640))
    assert lens.sensor_fit == "VERTICAL" and lens.shift_y == pytest.approx(-1.0)


def test_mixed_aspect_set_reports_its_residual():
    # Two cameras whose fy/fx differ: one pixel aspect cannot fit both exactly; the residual is reported.
    K = np.array([[[1000.0, 0, 320], [0, 1000.0, 240], [0, 0, 1]], [[1000.0, 0, 320], [0, 1002.0, 240], [0, 0, 1]]])
    sc = cm.convert_cameras(K, ring_cameras(2), 640, 480, ["a", "b"])
    errs = [c.max_error_px for c in sc.cameras]
    # Each camera is 0.1% off the shared aspect: ~0.2 px at the image edge, split between x and y.
    assert all(0.05 < e < 0.5 for e in errs), errs


def test_c2w_opengl_is_used_as_is_and_opencv_is_flipped():
    c2w = ring_cameras(1)[0]
    M = cm.c2w_to_matrix_world(c2w)
    np.testing.assert_allclose(M[:3], c2w, atol=1e-12)
    cv = c2w.copy()
    cv[:, 1:3] *= -1
    np.testing.assert_allclose(cm.opencv_c2w_to_blender(cv)[:3], c2w, atol=1e-12)
    with pytest.raises(AddonError, match="reflection"):
        cm.c2w_to_matrix_world(np.concatenate([np.diag([1.0, 1.0, -1.0]), np.zeros((3, 1))], axis=1))


def test_scale_mat_checks():
    S = np.diag([2.0, 2.0, 2.0, 1.0])
    S[:3, 3] = [1, 2, 3]
    assert cm.frame_scale(S) == pytest.approx(2.0)
    cm.check_scale_mat(S)
    shear = S.copy()
    shear[0, 1] = 0.5
    with pytest.raises(AddonError, match="shear"):
        cm.check_scale_mat(shear)
    bad = S.copy()
    bad[3, 0] = 1
    with pytest.raises(AddonError, match="bottom row"):
        cm.check_scale_mat(bad)


@pytest.mark.skipif(not DTU.is_dir(), reason=NO_DTU_REASON)
def test_dtu_conversion_model_error_is_tiny():
    from datasets.cameras import load_cameras

    cams = load_cameras(DTU)
    sc = cm.convert_camera_set(cams)
    assert len(sc.cameras) == 49
    assert (sc.render.resolution_x, sc.render.resolution_y) == (1600, 1200)
    assert max(c.max_error_px for c in sc.cameras) < 1e-3  # skew + per-camera aspect jitter of DTU
    # The model (K from the Blender parameters) reprojects the dataset like the dataset's own K.
    pts = np.random.default_rng(1).uniform(-0.5, 0.5, (100, 3))
    for i in (0, 24, 48):
        K_b = cm.blender_to_intrinsics(sc.cameras[i].lens, sc.render)
        uv, _ = project_points(cams.K[i], cams.c2w[i], pts)
        uv_b, _ = project_points(K_b, sc.cameras[i].matrix_world[:3], pts)
        assert np.abs(uv - uv_b).max() < 1e-3


# -- protocol ----------------------------------------------------------------------------------------------
def test_parse_line_events_logs_and_errors():
    assert protocol.parse_line("   \n") is None
    ev = protocol.parse_line('{"event": "progress", "time": 1.0, "step": 5, "total": 10, "loss": 0.5}\n')
    assert ev["event"] == "progress" and ev["step"] == 5
    assert protocol.parse_line("Warning: something\n")["event"] == "log"
    assert protocol.parse_line("[1, 2]")["event"] == "log"
    assert protocol.parse_line('{"event": "future_thing", "x": 1}')["event"] == "future_thing"  # unknown: kept
    with pytest.raises(protocol.ProtocolError, match="lacks field"):
        protocol.parse_line('{"event": "progress", "step": 1}')
    with pytest.raises(protocol.ProtocolError, match="version 2"):
        protocol.parse_line('{"event": "start", "version": 2}')


def test_run_status_follows_a_run():
    st = protocol.RunStatus()
    for line in [
        {"event": "start", "version": 1, "device": "cpu", "device_name": "CPU", "total_steps": 200, "start_step": 0},
        {"event": "stage", "stage": "training"},
        {"event": "progress", "step": 50, "total": 200, "loss": 0.0123, "psnr": 21.5, "eta_s": 125.0},
    ]:
        st.apply(line)
    assert st.fraction == pytest.approx(0.25)
    text = st.status_text()
    assert "Training 50/200 (25%)" in text and "loss 0.0123" in text and "PSNR 21.50 dB" in text
    assert "ETA 2m 05s" in text
    st.apply({"event": "error", "kind": "device", "message": "CUDA out of memory"})
    assert st.last_error == "device error: CUDA out of memory"
    st.apply({"event": "done", "mesh": "/r/mesh.ply", "files": {"mesh.ply": "/r/mesh.ply"}})
    st.apply({"event": "exit", "returncode": 0, "state": "done"})
    assert st.state == "done" and st.step == 200 and st.mesh_path == "/r/mesh.ply"


def test_a_long_phases_counts_leave_the_training_step_alone():
    """Export on cancel reports ``extracting`` 0..100 percent: the panel shows that count, the run keeps the step
    it was cancelled at (what Resume continues from)."""
    st = protocol.RunStatus()
    st.apply({"event": "start", "version": 1, "total_steps": 20, "start_step": 0})
    st.apply({"event": "progress", "step": 7, "total": 20, "loss": 0.1, "psnr": None, "eta_s": 3.0})
    st.apply({"event": "stage", "stage": "extracting"})
    st.apply({"event": "progress", "stage": "extracting", "step": 40, "total": 100, "unit": "percent",
              "loss": None, "psnr": None, "eta_s": 2.0, "elapsed_s": 1.0})
    assert (st.step, st.total) == (7, 20) and st.counts() == (40, 100, "percent")
    assert st.fraction == pytest.approx(0.4) and st.status_text().startswith("Extracting 40/100 percent (40%)")
    st.apply({"event": "cancelled", "step": 7, "checkpoint": "/r/last.ckpt", "mesh": "/r/mesh.ply"})
    assert st.counts() == (7, 20, "") and st.mesh_path == "/r/mesh.ply"


@pytest.mark.parametrize("seconds,text", [(None, "--"), (-1, "--"), (float("nan"), "--"), (0, "0s"), (42.4, "42s"),
                                          (65, "1m 05s"), (3600 + 2 * 60 + 59, "1h 02m")])
def test_format_eta(seconds, text):
    assert protocol.format_eta(seconds) == text


def test_progress_fraction_bounds():
    assert protocol.progress_fraction(5, 0) == 0.0
    assert protocol.progress_fraction(None, 10) == 0.0
    assert protocol.progress_fraction(15, 10) == 1.0


# -- PLY ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("big_endian", [False, True])
def test_read_binary_ply_with_colours_normals_and_extra_element(tmp_path, big_endian):
    verts, faces = grid_mesh()
    colors = (np.arange(len(verts) * 3).reshape(-1, 3) * 7 % 256).astype(np.uint8)
    p = tmp_path / "m.ply"
    write_ply_binary(p, verts, faces, colors, big_endian=big_endian)
    m = read_ply(p)
    np.testing.assert_array_equal(m.vertices, verts)
    np.testing.assert_array_equal(m.triangles, np.array(faces))
    np.testing.assert_allclose(m.colors[:, :3], colors / 255.0, atol=1e-7)
    np.testing.assert_array_equal(m.colors[:, 3], 1.0)
    assert m.normals is not None and m.normals.shape == verts.shape


def test_read_binary_ply_mixed_polygons_and_float_colours(tmp_path):
    verts, quads = grid_mesh(quads=True)
    faces = quads[:3] + [[0, 1, 7], [1, 2, 8]] + quads[3:]  # quads and triangles interleaved
    colors = np.random.default_rng(0).uniform(0, 1, (len(verts), 3)).astype(np.float32)
    p = tmp_path / "m.ply"
    write_ply_binary(p, verts, faces, colors, float_colors=True, extra=False)
    m = read_ply(p)
    assert m.face_sizes.tolist() == [len(f) for f in faces]
    np.testing.assert_array_equal(m.face_indices, np.concatenate(faces))
    np.testing.assert_array_equal(m.loop_starts, np.concatenate([[0], np.cumsum([len(f) for f in faces])[:-1]]))
    np.testing.assert_allclose(m.colors[:, :3], colors)


def test_read_ascii_ply_rgba(tmp_path):
    verts, faces = grid_mesh(4, 3, quads=True)
    colors = np.random.default_rng(1).integers(0, 256, (len(verts), 4))
    p = tmp_path / "a.ply"
    write_ply_ascii(p, verts, faces, colors, alpha=True)
    m = read_ply(p)
    np.testing.assert_allclose(m.vertices, verts, rtol=1e-6)
    assert m.face_sizes.tolist() == [4] * len(faces)
    np.testing.assert_allclose(m.colors, colors / 255.0, atol=1e-7)


def test_read_ply_point_cloud_without_colours(tmp_path):
    verts, _ = grid_mesh()
    p = tmp_path / "pc.ply"
    write_ply_ascii(p, verts, [])
    m = read_ply(p)
    assert len(m.vertices) == len(verts) and len(m.face_sizes) == 0 and m.colors is None


def test_read_ply_errors_name_the_file(tmp_path):
    verts, faces = grid_mesh()
    good = tmp_path / "good.ply"
    write_ply_binary(good, verts, faces, extra=False)
    data = good.read_bytes()
    cases = {
        "truncated.ply": (data[:-7], "ends inside element"),
        "notply.ply": (b"hello world\n", "not a PLY file"),
        "badfmt.ply": (data.replace(b"binary_little_endian", b"binary_middle_endian"), "unknown PLY format"),
        "badindex.ply": (None, "out of range"),
    }
    bad_faces = [list(f) for f in faces]
    bad_faces[2][1] = len(verts) + 5
    write_ply_binary(tmp_path / "badindex.ply", verts, bad_faces, extra=False)
    for name, (content, msg) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(PlyError, match=msg) as exc:
            read_ply(path)
        assert str(path) in str(exc.value)
    with pytest.raises(PlyError, match="cannot read"):
        read_ply(tmp_path / "missing.ply")


# -- run files, naming ---------------------------------------------------------------------------------------
def test_read_normalization(tmp_path):
    S = np.diag([3.0, 3.0, 3.0, 1.0])
    S[:3, 3] = [0.5, -1, 2]
    (tmp_path / "normalization.json").write_text(json.dumps({"scale_mat": S.tolist(), "frame": "normalized"}))
    np.testing.assert_array_equal(run_files.read_normalization(tmp_path), S)
    (tmp_path / "bad.json").write_text(json.dumps({"scale_mat": [[1, 2], [3, 4]]}))
    with pytest.raises(AddonError, match="4x4"):
        run_files.read_normalization(tmp_path / "bad.json")
    with pytest.raises(AddonError, match="nope.json: file not found"):
        run_files.read_normalization(tmp_path / "nope.json")


def test_mesh_format_and_textured_lookup():
    assert run_files.mesh_format("a/B.PLY") == "ply" and run_files.mesh_format("x.glb") == "gltf"
    with pytest.raises(AddonError, match="unsupported"):
        run_files.mesh_format("x.stl")
    assert run_files.textured_mesh_from({"mesh.ply": "/r/mesh.ply", "mesh.obj": "/r/mesh.obj",
                                         "mesh.glb": "/r/mesh.glb"}) == "/r/mesh.obj"
    assert run_files.textured_mesh_from({"glb": "/r/mesh_textured.glb"}) == "/r/mesh_textured.glb"
    assert run_files.textured_mesh_from({"mesh.ply": "/r/mesh.ply"}) is None


def test_dataset_and_view_names(tmp_path):
    (tmp_path / "scan9" / "data").mkdir(parents=True)
    assert camera_source.dataset_name(tmp_path / "scan9" / "data") == "scan9"
    assert camera_source.dataset_name(tmp_path / "scan9") == "scan9"
    assert camera_source.view_names(["000000.png", "000001.png"]) == ["000000", "000001"]
    assert camera_source.view_names(["train/r_0.png", "test/r_0.png"]) == ["train_r_0.png", "test_r_0.png"]


# -- scene layout: upright parent, view selection, region, dataset files ------------------------------------
@pytest.mark.parametrize("up", [(0, 0, 1), (0, 0, -1), (-0.31, -0.55, -0.78), (1, 0, 0), (0.2, 0.9, 1e-9)])
def test_upright_rotation_puts_up_on_z(up):
    u = np.asarray(up, float) / np.linalg.norm(up)
    R = cm.upright_rotation(u)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(R @ u, [0, 0, 1], atol=1e-12)
    # The smallest such rotation: the axis is perpendicular to both (what is already level stays level).
    side = np.cross(u, [0, 0, 1])
    if np.linalg.norm(side) > 1e-6:
        np.testing.assert_allclose(R @ side, side, atol=1e-12)


def test_parent_matrix_and_result_matrix():
    S = np.diag([3.0, 3.0, 3.0, 1.0])
    S[:3, 3] = [1, 2, 3]
    up = np.array([0.0, -1.0, 0.0])
    M = cm.parent_matrix(S, "world", up)
    np.testing.assert_allclose(M[:3, :3] @ up / 3.0, [0, 0, 1], atol=1e-12)  # world up of the cameras -> +Z
    np.testing.assert_allclose(np.linalg.inv(M[:3, :3] / 3.0), (M[:3, :3] / 3.0).T, atol=1e-12)
    np.testing.assert_allclose(cm.parent_matrix(S, "normalized", up)[:3, 3], 0, atol=1e-12)
    # A run that re-normalized (own region) lands where the cameras' frame says its world points are.
    S_run = np.diag([1.5, 1.5, 1.5, 1.0])
    S_run[:3, 3] = [0, 1, 2]
    x_run = np.array([0.2, -0.4, 0.1, 1.0])
    np.testing.assert_allclose(S @ cm.result_matrix(S, S_run) @ x_run, S_run @ x_run, atol=1e-12)


def test_select_views():
    assert cm.select_views(10) == list(range(10))
    assert cm.select_views(10, every=3) == [0, 3, 6, 9]
    assert cm.select_views(10, subset="2-4, 8-, 3") == [2, 3, 4, 8, 9]
    assert cm.select_views(10, every=2, subset="1-6") == [1, 3, 5]
    for bad, msg in (("x", "not an index"), ("5-20", "outside the views 0-9"), ("4-2", "outside")):
        with pytest.raises(AddonError, match=msg):
            cm.select_views(10, subset=bad)
    with pytest.raises(AddonError, match="k >= 1"):
        cm.select_views(10, every=0)


def test_image_plane_corners_project_to_the_image_corners():
    K = np.array([[500.0, 0, 300.0], [0, 520.0, 190.0], [0, 0, 1]])
    corners = cm.image_plane_corners(K, 640, 400, 2.0)
    assert np.allclose(corners[:, 2], -2.0)
    c2w = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)
    uv, depth = project_points(K, c2w, corners)
    np.testing.assert_allclose(uv, [[-0.5, -0.5], [639.5, -0.5], [639.5, 399.5], [-0.5, 399.5]], atol=1e-9)


def test_region_in_world_frame():
    from neus_blender_addon.core import region

    S = np.diag([2.0, 2.0, 2.0, 1.0])
    S[:3, 3] = [10, 0, -5]
    assert region.is_automatic("SPHERE", np.eye(4)) and not region.is_automatic("CUBE", np.eye(4))
    assert not region.is_automatic("SPHERE", np.eye(4), display_size=0.8)
    local = np.diag([0.5, 0.25, 0.5, 1.0])
    local[:3, 3] = [0.1, 0.2, 0.3]
    sphere = region.region_in_world("SPHERE", local, S)
    assert sphere.center == pytest.approx((10.2, 0.4, -4.4)) and sphere.radius == pytest.approx(1.0)  # encloses
    box = region.region_in_world("CUBE", local, S, display_size=2.0)
    assert box.half_size == pytest.approx((2.0, 1.0, 2.0))
    # A box turned 45 degrees about z: the world-axis box around it.
    c = np.cos(np.pi / 4)
    turned = np.array([[c, -c, 0, 0], [c, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    assert region.region_in_world("CUBE", turned, np.eye(4)).half_size == pytest.approx((2 * c, 2 * c, 1.0))
    assert sphere.settings() == ["data.region.type=sphere", "data.region.center=[10.2,0.4,-4.4]",
                                 "data.region.radius=1"]
    assert box.settings()[2] == "data.region.half_size=[2,1,2]"
    with pytest.raises(AddonError, match="Sphere or Cube"):
        region.region_in_world("ARROWS", local, S)
    with pytest.raises(AddonError, match="scaled to nothing"):
        region.region_in_world("SPHERE", np.diag([1.0, 0.0, 1.0, 1.0]), S)


def test_dataset_path_resolution(tmp_path):
    (tmp_path / "scan").mkdir()
    assert camera_source.dataset_from_path(tmp_path / "scan").data_format == "auto"
    d = camera_source.dataset_from_path(tmp_path / "scan" / "sparse" / "0" / "cameras.bin")
    assert (d.root, d.data_format) == (tmp_path / "scan", "colmap")
    assert camera_source.dataset_from_path(tmp_path / "scan" / "sparse" / "images.txt").root == tmp_path / "scan"
    d = camera_source.dataset_from_path(tmp_path / "scan" / "cameras_large.npz")
    assert (d.data_format, d.cameras_file) == ("dtu", tmp_path / "scan" / "cameras_large.npz")
    assert camera_source.dataset_from_path(tmp_path / "scan" / "transforms.json").cameras_file is None
    with pytest.raises(AddonError, match="not a NeuS dataset file"):
        camera_source.dataset_from_path(tmp_path / "scan" / "notes.txt")


def test_addon_choice_lists_match_the_engine():
    """The add-on cannot import the engine, so each side lists the presets, formats and frames once; they agree."""
    from datasets.cameras import FORMATS as LOADER_FORMATS
    from engine.config_schema import DATA_FORMATS, EXPORT_FRAMES, PRESETS
    from engine.device import select_device
    from engine.errors import DeviceError
    from neus_blender_addon.core import choices

    assert choices.PRESETS == ("auto", *PRESETS)
    assert choices.FORMATS == DATA_FORMATS == ("auto", *LOADER_FORMATS)
    # The engine's "metres" frame is no choice in the add-on: it shows either frame in metres once the dataset has
    # a true scale (scale.json).
    assert choices.FRAMES == tuple(f for f in EXPORT_FRAMES if f != "metres")
    for device in choices.DEVICES:  # each a name the engine knows (missing hardware is another error)
        try:
            select_device(device)
        except DeviceError as exc:
            assert "unknown device" not in str(exc), exc
