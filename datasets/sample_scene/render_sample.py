"""Renders the bundled sample scene with Blender (bpy) into the DTU / NeuS-IDR layout.

Run with the project's venv python (it has ``bpy`` 4.5)::

    python -m datasets.sample_scene.render_sample [--out DIR] [--samples N] [--limit N]

The scene is built from factory settings with no external assets: a subdivided, smooth-shaded Suzanne with
a colourful procedural material, a sun plus a uniform world light, and a large emissive, procedurally
textured dome that only the camera sees. 40 cameras on three rings look at the object with an off-centre
principal point.

Frames: the *normalized* frame has the object centred at the origin with bounding radius ``OBJECT_RADIUS``;
``scale_mat`` (uniform scale ``SCALE_RADIUS`` plus ``SCALE_TRANSLATION``) maps it to the Blender *world*
frame, in which everything is placed. ``world_mat_i`` maps world points to pixels (OpenCV convention,
integer coordinates at pixel centres), so ``P_i = world_mat_i @ scale_mat_i`` maps normalized points to
pixels, as in NeuS.

Output (``--out``, default ``datasets/sample_scene/data``; built in a temporary sibling folder, then
swapped in): ``image/000000.png..`` (8-bit RGB), ``mask/000.png..`` (8-bit grey, 0/255),
``cameras_sphere.npz``, ``gt_mesh_normalized.ply``, ``gt_mesh_world.ply`` (binary PLY) and ``scene.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# isort: off
import bpy  # must come first: importing it makes bmesh, mathutils and bpy_extras importable
import bmesh
# isort: on
import numpy as np
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Matrix, Vector
from PIL import Image

from datasets import rays
from datasets.geometry import blender_view_intrinsics

DATA_DIR = Path(__file__).resolve().parent / "data"

SEED = 7
WIDTH, HEIGHT = 400, 300
LENS_MM = 48.0
SENSOR_WIDTH_MM = 36.0
SENSOR_FIT = "AUTO"
# Off-centre principal point; Blender's shift is in units of the fitted sensor dimension (here the width).
SHIFT_X, SHIFT_Y = 0.04, -0.025
SCALE_RADIUS = 2.5  # world units per normalized unit
SCALE_TRANSLATION = (0.4, -0.3, 1.1)  # world position of the normalized origin
OBJECT_RADIUS = 0.7  # bounding radius of the object in normalized units
DOME_RADIUS = 10.0  # background dome radius in normalized units
# (elevation in degrees, number of views, distance to the object centre in normalized units)
RINGS = ((10.0, 15, 3.0), (35.0, 14, 2.9), (60.0, 11, 2.8))
AZIMUTH_JITTER_DEG = 4.0
SAMPLES = 48
MASK_SAMPLES = 16
PROJECTION_TOL_PX = 0.01


# ----------------------------------------------------------------------------------------------------------
# Camera maths (numpy)


def scale_matrix() -> np.ndarray:
    """(4, 4) scale_mat mapping normalized points to world points."""
    S = np.eye(4)
    S[:3, :3] *= SCALE_RADIUS
    S[:3, 3] = SCALE_TRANSLATION
    return S


def intrinsics_from_blender(cam: bpy.types.Camera, render: bpy.types.RenderSettings) -> np.ndarray:
    """(3, 3) OpenCV intrinsics (pixel centres at integers) of a perspective Blender camera
    (``datasets.geometry.blender_view_intrinsics``, checked against Blender itself by ``self_check_intrinsics``)."""
    if cam.type != "PERSP":
        raise ValueError(f"camera {cam.name!r}: only perspective cameras are supported, got {cam.type}")
    scale = render.resolution_percentage / 100.0
    return blender_view_intrinsics(int(render.resolution_x * scale), int(render.resolution_y * scale),
                                   render.pixel_aspect_x, render.pixel_aspect_y, cam.lens, cam.sensor_width,
                                   cam.sensor_height, cam.sensor_fit, cam.shift_x, cam.shift_y)


def world_to_opencv(matrix_world: Matrix) -> np.ndarray:
    """(3, 4) [R|t] mapping world points into the OpenCV camera (x right, y down, z forward)."""
    c2w = np.array(matrix_world, dtype=np.float64)
    # Nearest rotation (drops any object scale and float32 rounding), so K, R decompose cleanly from P.
    U, _, Vt = np.linalg.svd(c2w[:3, :3])
    R_gl = U @ Vt
    R = np.diag([1.0, -1.0, -1.0]) @ R_gl.T
    t = -R @ c2w[:3, 3]
    return np.concatenate([R, t[:, None]], axis=1)


def project(P: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Projects (N, 3) points with a (3, 4) or (4, 4) projection matrix; returns (N, 2) pixels."""
    h = points @ P[:3, :3].T + P[:3, 3]
    return h[:, :2] / h[:, 2:3]


def blender_pixels(scene: bpy.types.Scene, cam_obj: bpy.types.Object, points: np.ndarray) -> np.ndarray:
    """(N, 2) pixel coordinates (centres at integers) of world points, by Blender's own view frame."""
    scale = scene.render.resolution_percentage / 100.0
    W = int(scene.render.resolution_x * scale)
    H = int(scene.render.resolution_y * scale)
    out = np.empty((len(points), 2))
    for i, p in enumerate(points):
        ndc = world_to_camera_view(scene, cam_obj, _vec(p))
        # The view frame spans [0, W] x [0, H] with y up; pixel centres are at half-integers there.
        out[i] = (ndc.x * W - 0.5, (1.0 - ndc.y) * H - 0.5)
    return out


def _vec(p: np.ndarray) -> Vector:
    return Vector((float(p[0]), float(p[1]), float(p[2])))


def look_at(location: np.ndarray, target: np.ndarray) -> Matrix:
    """Blender camera matrix_world at ``location`` looking at ``target`` with world +z up (Blender's camera axes
    are the c2w convention of ``datasets.rays.look_at``)."""
    return Matrix(np.vstack([rays.look_at(location, target, (0.0, 0.0, 1.0)), [0.0, 0.0, 0.0, 1.0]]).tolist())


def camera_centres(rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """(V, 3) camera centres in the normalized frame, ring by ring, plus a per-view description."""
    centres, info = [], []
    for ring, (elev_deg, n, dist) in enumerate(RINGS):
        offset = ring * 360.0 / n / len(RINGS)  # interleave the rings' azimuths
        for k in range(n):
            az = offset + 360.0 * k / n + rng.uniform(-AZIMUTH_JITTER_DEG, AZIMUTH_JITTER_DEG)
            a, e = math.radians(az), math.radians(elev_deg)
            direction = np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
            centres.append(dist * direction)
            info.append({"ring": ring, "azimuth_deg": round(az, 6), "elevation_deg": elev_deg,
                         "distance": dist})
    return np.array(centres), info


# ----------------------------------------------------------------------------------------------------------
# Scene construction


def reset_scene(samples: int) -> bpy.types.Scene:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    r = scene.render
    r.engine = "CYCLES"
    r.resolution_x, r.resolution_y, r.resolution_percentage = WIDTH, HEIGHT, 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    r.film_transparent = False
    r.image_settings.file_format = "PNG"
    r.image_settings.color_depth = "8"
    r.image_settings.compression = 0
    cy = scene.cycles
    cy.device = "CPU"
    cy.seed = SEED
    cy.use_animated_seed = False
    cy.samples = samples
    cy.use_adaptive_sampling = False
    cy.use_denoising = True
    cy.denoiser = "OPENIMAGEDENOISE"
    cy.max_bounces, cy.diffuse_bounces, cy.glossy_bounces = 4, 3, 2
    cy.transmission_bounces = cy.volume_bounces = cy.transparent_max_bounces = 0
    cy.caustics_reflective = cy.caustics_refractive = False
    scene.view_settings.view_transform = "Standard"  # faithful sRGB colours, no filmic tone curve
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    return scene


def _node(nt: bpy.types.NodeTree, kind: str, **props) -> bpy.types.Node:
    node = nt.nodes.new(kind)
    for key, value in props.items():
        setattr(node, key, value)
    return node


def _mix(nt: bpy.types.NodeTree, blend: str, factor: float, a, b) -> bpy.types.NodeSocket:
    """Colour mix node; ``a``/``b`` are sockets. Returns its colour output."""
    mix = _node(nt, "ShaderNodeMix", data_type="RGBA", blend_type=blend)
    mix.inputs["Factor"].default_value = factor
    ins = {s.identifier: s for s in mix.inputs}
    nt.links.new(a, ins["A_Color"])
    nt.links.new(b, ins["B_Color"])
    return {s.identifier: s for s in mix.outputs}["Result_Color"]


def _ramp(nt: bpy.types.NodeTree, fac, colours: list[tuple[float, tuple[float, float, float]]]):
    ramp = _node(nt, "ShaderNodeValToRGB")
    elems = ramp.color_ramp.elements
    while len(elems) < len(colours):
        elems.new(0.5)
    for elem, (pos, rgb) in zip(elems, colours, strict=True):
        elem.position = pos
        elem.color = (*rgb, 1.0)
    nt.links.new(fac, ramp.inputs["Fac"])
    return ramp.outputs["Color"]


def object_material() -> bpy.types.Material:
    """Diffuse-ish material with a colourful, detailed procedural albedo (noise + voronoi + checker)."""
    mat = bpy.data.materials.new("SuzanneMaterial")
    mat.use_nodes = True
    nt = mat.node_tree
    bsdf = nt.nodes["Principled BSDF"]
    coord = _node(nt, "ShaderNodeTexCoord").outputs["Object"]
    noise = _node(nt, "ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = 3.0
    noise.inputs["Detail"].default_value = 6.0
    noise.inputs["Roughness"].default_value = 0.5
    nt.links.new(coord, noise.inputs["Vector"])
    rainbow = _ramp(nt, noise.outputs["Fac"], [
        (0.36, (0.70, 0.04, 0.03)), (0.43, (0.80, 0.30, 0.02)), (0.48, (0.65, 0.60, 0.05)),
        (0.53, (0.05, 0.45, 0.08)), (0.58, (0.03, 0.15, 0.70)), (0.64, (0.35, 0.04, 0.50)),
    ])
    voronoi = _node(nt, "ShaderNodeTexVoronoi")
    voronoi.inputs["Scale"].default_value = 9.0
    nt.links.new(coord, voronoi.inputs["Vector"])
    checker = _node(nt, "ShaderNodeTexChecker")
    checker.inputs["Scale"].default_value = 7.0
    checker.inputs["Color1"].default_value = (1.0, 1.0, 1.0, 1.0)
    checker.inputs["Color2"].default_value = (0.7, 0.7, 0.7, 1.0)
    nt.links.new(coord, checker.inputs["Vector"])
    base = _mix(nt, "MIX", 0.3, rainbow, voronoi.outputs["Color"])
    base = _mix(nt, "MULTIPLY", 1.0, base, checker.outputs["Color"])
    nt.links.new(base, bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.75
    bsdf.inputs["Specular IOR Level"].default_value = 0.2
    return mat


def dome_material() -> bpy.types.Material:
    """Emissive, softly textured background (low frequency so the PNGs stay small)."""
    mat = bpy.data.materials.new("DomeMaterial")
    mat.use_nodes = True
    nt = mat.node_tree
    nt.nodes.remove(nt.nodes["Principled BSDF"])
    coord = _node(nt, "ShaderNodeTexCoord").outputs["Generated"]
    noise = _node(nt, "ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = 4.0
    noise.inputs["Detail"].default_value = 2.0
    nt.links.new(coord, noise.inputs["Vector"])
    tint = _ramp(nt, noise.outputs["Fac"], [
        (0.35, (0.10, 0.30, 0.35)), (0.48, (0.55, 0.50, 0.35)), (0.60, (0.55, 0.25, 0.35)),
        (0.70, (0.20, 0.22, 0.45)),
    ])
    checker = _node(nt, "ShaderNodeTexChecker")
    checker.inputs["Scale"].default_value = 14.0
    checker.inputs["Color1"].default_value = (1.0, 1.0, 1.0, 1.0)
    checker.inputs["Color2"].default_value = (0.72, 0.72, 0.72, 1.0)
    nt.links.new(coord, checker.inputs["Vector"])
    colour = _mix(nt, "MULTIPLY", 1.0, tint, checker.outputs["Color"])
    emission = _node(nt, "ShaderNodeEmission")
    emission.inputs["Strength"].default_value = 0.85
    nt.links.new(colour, emission.inputs["Color"])
    nt.links.new(emission.outputs["Emission"], nt.nodes["Material Output"].inputs["Surface"])
    return mat


def add_object(scene: bpy.types.Scene, S: np.ndarray) -> bpy.types.Object:
    """Suzanne, subdivision level 2 baked into the mesh, smooth, scaled and placed in world units."""
    mesh = bpy.data.meshes.new("Suzanne")
    bm = bmesh.new()
    bmesh.ops.create_monkey(bm)
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new("Suzanne", mesh)
    scene.collection.objects.link(obj)
    mod = obj.modifiers.new("Subdivision", "SUBSURF")
    mod.levels = mod.render_levels = 2
    deps = bpy.context.evaluated_depsgraph_get()
    baked = bpy.data.meshes.new_from_object(obj.evaluated_get(deps))  # apply the modifier
    obj.modifiers.clear()
    obj.data = baked
    bpy.data.meshes.remove(mesh)
    baked.shade_smooth()
    baked.materials.append(object_material())
    return place_object(obj, S)


def place_object(obj: bpy.types.Object, S: np.ndarray) -> bpy.types.Object:
    """Centres the object's bounding box at the normalized origin and scales it to OBJECT_RADIUS (normalized
    units), in world units through the scale matrix ``S``."""
    v = mesh_vertices(obj.data)
    centre = 0.5 * (v.min(0) + v.max(0))
    s = OBJECT_RADIUS * SCALE_RADIUS / float(np.linalg.norm(v - centre, axis=1).max())
    obj.scale = (s, s, s)
    obj.location = tuple(S[:3, 3] - s * centre)
    return obj


def add_dome(scene: bpy.types.Scene, S: np.ndarray) -> bpy.types.Object:
    mesh = bpy.data.meshes.new("Dome")
    bm = bmesh.new()
    bmesh.ops.create_uvsphere(bm, u_segments=96, v_segments=48, radius=DOME_RADIUS * SCALE_RADIUS)
    bm.to_mesh(mesh)
    bm.free()
    mesh.shade_smooth()
    mesh.materials.append(dome_material())
    dome = bpy.data.objects.new("Dome", mesh)
    dome.location = tuple(S[:3, 3])
    # Camera-only: the dome must neither block the sun and world light nor light the object itself.
    for attr in ("visible_diffuse", "visible_glossy", "visible_transmission", "visible_volume_scatter",
                 "visible_shadow"):
        setattr(dome, attr, False)
    scene.collection.objects.link(dome)
    return dome


def add_lights(scene: bpy.types.Scene) -> dict:
    sun_data = bpy.data.lights.new("Sun", "SUN")
    sun_data.energy = 3.5
    sun_data.angle = math.radians(8.0)
    sun = bpy.data.objects.new("Sun", sun_data)
    sun.rotation_euler = (math.radians(40.0), 0.0, math.radians(35.0))
    scene.collection.objects.link(sun)
    world = bpy.data.worlds.new("World")
    world.use_nodes = True
    bg = world.node_tree.nodes["Background"]
    bg.inputs["Color"].default_value = (0.62, 0.66, 0.75, 1.0)
    bg.inputs["Strength"].default_value = 0.6
    scene.world = world
    return {"sun_energy": sun_data.energy, "sun_angle_deg": 8.0, "sun_rotation_euler_deg": [40.0, 0.0, 35.0],
            "world_color": [0.62, 0.66, 0.75], "world_strength": 0.6}


def add_camera(scene: bpy.types.Scene) -> bpy.types.Object:
    cam = bpy.data.cameras.new("Camera")
    cam.type = "PERSP"
    cam.lens_unit = "MILLIMETERS"
    cam.lens = LENS_MM
    cam.sensor_width = SENSOR_WIDTH_MM
    cam.sensor_fit = SENSOR_FIT
    cam.shift_x, cam.shift_y = SHIFT_X, SHIFT_Y
    cam.clip_start = 0.05
    cam.clip_end = 4.0 * DOME_RADIUS * SCALE_RADIUS
    obj = bpy.data.objects.new("Camera", cam)
    scene.collection.objects.link(obj)
    scene.camera = obj
    return obj


# ----------------------------------------------------------------------------------------------------------
# Mesh and file helpers


def mesh_vertices(mesh: bpy.types.Mesh) -> np.ndarray:
    """(N, 3) vertex positions in object space."""
    co = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
    mesh.vertices.foreach_get("co", co)
    return co.reshape(-1, 3)


def mesh_triangles(mesh: bpy.types.Mesh) -> np.ndarray:
    """(T, 3) vertex indices of the mesh's triangulation."""
    mesh.calc_loop_triangles()
    tri = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int64)
    mesh.loop_triangles.foreach_get("vertices", tri)
    return tri.reshape(-1, 3)


def write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Binary little-endian PLY with float32 vertices and int32 triangle lists."""
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment sample scene ground truth (render_sample.py)\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    face_rec = np.empty(len(faces), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    face_rec["n"] = 3
    face_rec["idx"] = faces
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(np.ascontiguousarray(vertices, dtype="<f4").tobytes())
        f.write(face_rec.tobytes())


def render_still(scene: bpy.types.Scene, path: Path) -> np.ndarray:
    """Renders the active camera to ``path``; returns the (H, W, C) uint8 pixels."""
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    with Image.open(path) as im:
        return np.asarray(im).copy()


def self_check_intrinsics(scene: bpy.types.Scene) -> float:
    """Checks ``intrinsics_from_blender`` against Blender's view frame on varied camera settings.

    Returns the largest disagreement in pixels; the scene's render settings are restored afterwards.
    """
    r = scene.render
    saved = (r.resolution_x, r.resolution_y, r.pixel_aspect_x, r.pixel_aspect_y)
    cam_data = bpy.data.cameras.new("CheckCamera")
    cam_obj = bpy.data.objects.new("CheckCamera", cam_data)
    scene.collection.objects.link(cam_obj)
    rng = np.random.default_rng(0)
    worst = 0.0
    configs = [  # (W, H, aspx, aspy, fit, lens, sensor_w, sensor_h, shift_x, shift_y)
        (400, 300, 1.0, 1.0, "AUTO", 38.0, 36.0, 24.0, 0.04, -0.025),
        (300, 400, 1.0, 1.0, "AUTO", 50.0, 36.0, 24.0, -0.03, 0.05),
        (400, 300, 1.0, 1.0, "VERTICAL", 35.0, 36.0, 20.0, 0.02, 0.03),
        (320, 240, 1.0, 1.0, "HORIZONTAL", 30.0, 32.0, 24.0, -0.05, 0.01),
        (400, 300, 2.0, 1.0, "AUTO", 40.0, 36.0, 24.0, 0.03, 0.04),
        (300, 400, 1.0, 1.5, "VERTICAL", 45.0, 36.0, 30.0, 0.01, -0.02),
    ]
    try:
        for W, H, ax, ay, fit, lens, sw, sh, sx, sy in configs:
            r.resolution_x, r.resolution_y, r.pixel_aspect_x, r.pixel_aspect_y = W, H, ax, ay
            cam_data.lens, cam_data.sensor_width, cam_data.sensor_height = lens, sw, sh
            cam_data.sensor_fit, cam_data.shift_x, cam_data.shift_y = fit, sx, sy
            cam_obj.matrix_world = look_at(np.array([3.0, -2.0, 1.5]), np.array([0.2, 0.1, 0.3]))
            bpy.context.view_layer.update()
            P = intrinsics_from_blender(cam_data, r) @ world_to_opencv(cam_obj.matrix_world)
            pts = rng.uniform(-0.8, 0.8, size=(50, 3)) + np.array([0.2, 0.1, 0.3])
            worst = max(worst, float(np.abs(project(P, pts) - blender_pixels(scene, cam_obj, pts)).max()))
    finally:
        r.resolution_x, r.resolution_y, r.pixel_aspect_x, r.pixel_aspect_y = saved
        bpy.data.objects.remove(cam_obj)
        bpy.data.cameras.remove(cam_data)
    return worst


# ----------------------------------------------------------------------------------------------------------
# Main


SUZANNE_DESCRIPTION = ("Textured Suzanne (subdivision level 2, smooth) inside an emissive textured dome; rendered by "
                       "datasets/sample_scene/render_sample.py")


def build_and_render(out_dir: Path, samples: int, limit: int | None,
                     make_object: Callable[[bpy.types.Scene, np.ndarray], bpy.types.Object] = add_object,
                     description: str = SUZANNE_DESCRIPTION, object_meta: dict | None = None) -> dict:
    """Builds the scene (``make_object`` places the object, as :func:`add_object`), renders every view and masks
    and writes the data set. ``object_meta``: the ``scene.json`` "object" entry's descriptive fields."""
    t0 = time.time()
    S = scale_matrix()
    scene = reset_scene(samples)
    k_err = self_check_intrinsics(scene)
    if k_err > PROJECTION_TOL_PX:
        raise RuntimeError(f"intrinsics derivation disagrees with Blender's view frame by {k_err:.4g} px")
    obj = make_object(scene, S)
    dome = add_dome(scene, S)
    lights = add_lights(scene)
    cam_obj = add_camera(scene)
    bpy.context.view_layer.update()

    M = np.array(obj.matrix_world, dtype=np.float64)
    verts_local = mesh_vertices(obj.data)
    faces = mesh_triangles(obj.data)
    verts_world = verts_local @ M[:3, :3].T + M[:3, 3]
    verts_norm = (verts_world - S[:3, 3]) / SCALE_RADIUS
    bound_radius = float(np.linalg.norm(verts_norm, axis=1).max())

    rng = np.random.default_rng(SEED)
    centres_norm, view_info = camera_centres(rng)
    if limit is not None:
        centres_norm, view_info = centres_norm[:limit], view_info[:limit]
    n_views = len(centres_norm)
    K = intrinsics_from_blender(cam_obj.data, scene.render)
    check_pts = verts_world[:: max(1, len(verts_world) // 400)]  # a spread subset keeps the check fast

    cams: dict[str, np.ndarray] = {}
    cam_mat = np.array([[2.0 / WIDTH, 0, -1, 0], [0, 2.0 / HEIGHT, -1, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    max_err = 0.0
    matrices = []
    for i, c in enumerate(centres_norm):
        cam_obj.matrix_world = look_at(S[:3, :3] @ c + S[:3, 3], S[:3, 3].copy())
        bpy.context.view_layer.update()
        matrices.append(cam_obj.matrix_world.copy())
        world_mat = np.eye(4)
        world_mat[:3, :] = K @ world_to_opencv(cam_obj.matrix_world)
        err = float(np.abs(project(world_mat, check_pts) - blender_pixels(scene, cam_obj, check_pts)).max())
        if err > PROJECTION_TOL_PX:
            raise RuntimeError(f"view {i}: P disagrees with world_to_camera_view by {err:.4g} px")
        max_err = max(max_err, err)
        uv = project(world_mat, verts_world)
        if (uv < 0).any() or (uv[:, 0] > WIDTH - 1).any() or (uv[:, 1] > HEIGHT - 1).any():
            raise RuntimeError(f"view {i}: the object leaves the image; adjust lens or distances")
        for key, mat in (("world_mat", world_mat), ("scale_mat", S), ("camera_mat", cam_mat)):
            cams[f"{key}_{i}"] = mat
            cams[f"{key}_inv_{i}"] = np.linalg.inv(mat)
    print(f"[sample_scene] projection check: max |P - world_to_camera_view| = {max_err:.2e} px "
          f"(intrinsics self-check {k_err:.2e} px)", flush=True)

    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    scratch = Path(tempfile.mkdtemp(prefix="sample_scene_render_"))
    try:
        (tmp_dir / "image").mkdir()
        (tmp_dir / "mask").mkdir()
        # Pass 1: colour, with the textured dome.
        scene.render.image_settings.color_mode = "RGB"
        t_col = time.time()
        for i, mw in enumerate(matrices):
            cam_obj.matrix_world = mw
            rgb = render_still(scene, scratch / "rgb.png")
            Image.fromarray(rgb[..., :3]).save(tmp_dir / "image" / f"{i:06d}.png", optimize=True)
            print(f"[sample_scene] colour {i + 1}/{n_views} ({time.time() - t_col:.0f} s)", flush=True)
        # Pass 2: mask, object only over a transparent film; alpha converges with few samples.
        dome.hide_render = True
        scene.render.film_transparent = True
        scene.render.image_settings.color_mode = "RGBA"
        scene.cycles.samples = MASK_SAMPLES
        scene.cycles.use_denoising = False
        scene.cycles.max_bounces = 0
        coverage = []
        for i, mw in enumerate(matrices):
            cam_obj.matrix_world = mw
            rgba = render_still(scene, scratch / "mask.png")
            mask = np.where(rgba[..., 3] >= 128, 255, 0).astype(np.uint8)
            if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
                raise RuntimeError(f"view {i}: the mask touches the image border")
            coverage.append(float((mask > 0).mean()))
            Image.fromarray(mask, mode="L").save(tmp_dir / "mask" / f"{i:03d}.png", optimize=True)
        print(f"[sample_scene] masks done; coverage {min(coverage):.3f}..{max(coverage):.3f}", flush=True)

        np.savez(tmp_dir / "cameras_sphere.npz", **cams)
        write_ply(tmp_dir / "gt_mesh_world.ply", verts_world, faces)
        write_ply(tmp_dir / "gt_mesh_normalized.ply", verts_norm, faces)
        meta = {
            "description": description,
            "blender_version": bpy.app.version_string,
            "seed": SEED,
            "n_views": n_views,
            "image_size": [WIDTH, HEIGHT],
            "scale_mat": S.tolist(),
            "object": {
                **(object_meta or {"name": "Suzanne", "subdivision_levels": 2}),
                "bounding_radius_normalized": bound_radius,
                "n_vertices": len(verts_world), "n_triangles": len(faces),
                "matrix_world": M.tolist(),
            },
            "background_dome_radius_normalized": DOME_RADIUS,
            "lights": lights,
            "camera": {
                "lens_mm": LENS_MM, "sensor_width_mm": SENSOR_WIDTH_MM, "sensor_fit": SENSOR_FIT,
                "shift_x": SHIFT_X, "shift_y": SHIFT_Y, "pixel_aspect": [1.0, 1.0],
                "clip_start": cam_obj.data.clip_start, "clip_end": cam_obj.data.clip_end,
                "K": K.tolist(),
                "rings": [{"elevation_deg": e, "n_views": n, "distance_normalized": d} for e, n, d in RINGS],
                "azimuth_jitter_deg": AZIMUTH_JITTER_DEG,
                "views": view_info,
                "projection_check_max_err_px": max_err,
            },
            "render": {
                "engine": "CYCLES", "device": "CPU", "samples": samples, "denoiser": "OPENIMAGEDENOISE",
                "max_bounces": 4, "view_transform": "Standard", "mask_samples": MASK_SAMPLES,
                "mask_alpha_threshold": 0.5, "mask_coverage": [min(coverage), max(coverage)],
            },
            "conventions": "P_i = world_mat_i @ scale_mat_i maps normalized points to OpenCV pixels "
                           "(integer coordinates at pixel centres); scale_mat maps normalized to world.",
        }
        (tmp_dir / "scene.json").write_text(json.dumps(meta, indent=2) + "\n")
        # Swap the finished folder in, so a failed run never leaves a half-written data set behind.
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
        tmp_dir.chmod(0o755)  # mkdtemp makes it private
        os.replace(tmp_dir, out_dir)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    print(f"[sample_scene] wrote {n_views} views to {out_dir} in {time.time() - t0:.0f} s", flush=True)
    return meta


def variant_main(argv: list[str] | None, doc: str, make_object: Callable, description: str, object_meta: dict) -> int:
    """The command line of a benchmark scene built on this one (same cameras, lights and dome; its own object):
    ``--out`` (required: benchmark inputs live outside the repository), ``--samples``, ``--limit``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (outside the repository)")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="Cycles samples per pixel (colour pass)")
    parser.add_argument("--limit", type=int, default=None, help="render only the first N views (previews)")
    args = parser.parse_args(argv)
    build_and_render(args.out, args.samples, args.limit, make_object=make_object, description=description,
                     object_meta=object_meta)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR, help=f"output folder (default {DATA_DIR})")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="Cycles samples per pixel (colour pass)")
    parser.add_argument("--limit", type=int, default=None, help="render only the first N views (previews)")
    args = parser.parse_args(argv)
    build_and_render(args.out, args.samples, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
