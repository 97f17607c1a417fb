"""Renders a benchmark scene with thin and smooth parts with Blender (bpy), in the bundled scene's DTU layout.

A second scene for "photos alone against calibrated with masks" (issue 19), unlike Suzanne: a smooth, gently
three-lobed vase whose closed top narrows into a thin upright antenna (~4-5 px wide in the photos) with a ball tip,
and a thin C-shaped handle (a torus segment, ~6 px wide) standing out from its side. Every part carries a
colourful, non-periodic procedural albedo (noise colour ramps, voronoi cell colours and voronoi spots; no checkers or
stripes), so structure from motion can solve the photos alone. Same cameras, lights, dome and files as
:mod:`render_sample` (40 views on three rings, 400 x 300); only the object differs::

    python -m datasets.sample_scene.render_thin --out /work/bench_data/thin [--samples N] [--limit N]

The object is one watertight mesh: the vase and antenna are one surface of revolution (the antenna joins the top
through a smooth fillet), and the handle is merged with an exact boolean union, so the ground-truth mesh has no
hidden interior faces (the metrics sample it uniformly by area). Three materials (vase, antenna, handle), rough and
mostly diffuse. The output is a benchmark input, not part of the repository: write it outside (e.g.
``/work/bench_data/thin``).
"""

from __future__ import annotations

import math
import sys

# isort: off
import bpy  # must come first: importing it makes bmesh importable
import bmesh
# isort: on
import numpy as np

from datasets.sample_scene import render_sample as base

# Object units (before the object is scaled to the normalized radius; ~0.9 normalized units per object unit,
# ~165 px per object unit in the photos).
BOTTOM_Z = -0.55  # lowest point of the vase
BOTTOM_ROUND = 0.08  # height of the rounded bottom edge
SHOULDER_Z, TOP_Z = 0.30, 0.42  # the side ends at the shoulder; a dome closes the top
LOBES, LOBE_DEPTH = 3, 0.035  # gentle three-lobed belly (relative radius change)
ROD_RADIUS = 0.014  # antenna (~4.6 px wide)
ROD_TOP = 0.955  # centre of the ball tip
BALL_RADIUS = 0.04
FILLET = 0.03  # smooth-max width where the antenna leaves the dome
HANDLE_CENTRE = (0.36, -0.02)  # (x, z) of the handle arc's centre, in the y = 0 plane
HANDLE_RADIUS = 0.24  # arc radius
HANDLE_TUBE = 0.02  # tube radius (~6.5 px wide)
HANDLE_ANGLES_DEG = (-130.0, 150.0)  # arc span; both ends lie inside the vase
SEGMENTS = 128  # around the axis of revolution
PROFILE_POINTS = 360  # along the profile
HANDLE_SEGMENTS = (160, 24)  # along the arc, around the tube


def _belly(z: np.ndarray) -> np.ndarray:
    """Radius of the vase's side at height z (no lobes, no rounding)."""
    return 0.13 + 0.29 * np.exp(-(((z + 0.18) / 0.26) ** 2))


def _smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth maximum (a fillet of width ~k where a and b cross)."""
    h = np.clip(k - np.abs(a - b), 0.0, None) / k
    return np.maximum(a, b) + h * h * k / 4.0


def profile() -> np.ndarray:
    """(N, 2) (radius, z) of the surface of revolution from the bottom pole to the top pole, even in arc length."""
    z = np.linspace(BOTTOM_Z, ROD_TOP + BALL_RADIUS, 40001)
    body = _belly(z)
    low = z < BOTTOM_Z + BOTTOM_ROUND  # rounded bottom: a quarter ellipse down to the pole
    body[low] *= np.sqrt(np.clip(1.0 - ((BOTTOM_Z + BOTTOM_ROUND - z[low]) / BOTTOM_ROUND) ** 2, 0.0, 1.0))
    high = z > SHOULDER_Z  # domed top
    body[high] *= np.sqrt(np.clip(1.0 - ((z[high] - SHOULDER_Z) / (TOP_Z - SHOULDER_Z)) ** 2, 0.0, 1.0))
    ball = np.sqrt(np.clip(BALL_RADIUS**2 - (z - ROD_TOP) ** 2, 0.0, None))
    rod = np.where(z < ROD_TOP, ROD_RADIUS, 0.0)
    antenna = _smax(rod, ball, 0.01)
    antenna[z > ROD_TOP] = ball[z > ROD_TOP]  # the ball's top pole stays exact
    r = np.where(z < SHOULDER_Z, body, _smax(body, antenna, FILLET))
    r[0] = r[-1] = 0.0
    pts = np.stack([r, z], axis=1)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    t = np.linspace(0.0, s[-1], PROFILE_POINTS)
    out = np.stack([np.interp(t, s, r), np.interp(t, s, z)], axis=1)
    out[0, 0] = out[-1, 0] = 0.0
    return out


def _lobe(phi: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Relative radius factor of the gentle lobes (strongest at the belly, none at the antenna)."""
    return 1.0 + LOBE_DEPTH * np.cos(LOBES * phi) * np.exp(-(((z + 0.18) / 0.3) ** 2))


def add_revolved(bm: bmesh.types.BMesh, prof: np.ndarray, material_of_z) -> None:
    """Closed surface of revolution about z (pole vertices at both ends), lobes applied."""
    phis = np.linspace(0.0, 2.0 * math.pi, SEGMENTS, endpoint=False)
    bottom = bm.verts.new((0.0, 0.0, float(prof[0, 1])))
    top = bm.verts.new((0.0, 0.0, float(prof[-1, 1])))
    rings = []
    for r, z in prof[1:-1]:
        f = _lobe(phis, np.full_like(phis, z))
        rings.append([bm.verts.new((float(r * f[k] * math.cos(p)), float(r * f[k] * math.sin(p)), float(z)))
                      for k, p in enumerate(phis)])
    n = SEGMENTS

    def face(verts) -> None:
        f = bm.faces.new(verts)
        f.material_index = material_of_z(float(np.mean([v.co.z for v in verts])))

    for k in range(n):
        face((bottom, rings[0][(k + 1) % n], rings[0][k]))
        face((top, rings[-1][k], rings[-1][(k + 1) % n]))
    for a, b in zip(rings[:-1], rings[1:], strict=True):
        for k in range(n):
            face((a[k], a[(k + 1) % n], b[(k + 1) % n], b[k]))


def add_handle(bm: bmesh.types.BMesh, material_index: int) -> None:
    """Capped tube along a circular arc in the y = 0 plane (a torus segment)."""
    (cx, cz), big = HANDLE_CENTRE, HANDLE_RADIUS
    n_arc, n_tube = HANDLE_SEGMENTS
    thetas = np.radians(np.linspace(*HANDLE_ANGLES_DEG, n_arc))
    psis = np.linspace(0.0, 2.0 * math.pi, n_tube, endpoint=False)
    rings = []
    for th in thetas:
        radial = np.array([math.cos(th), 0.0, math.sin(th)])
        centre = np.array([cx, 0.0, cz]) + big * radial
        rings.append([bm.verts.new(tuple(centre + HANDLE_TUBE * (math.cos(p) * radial + math.sin(p) *
                                                                  np.array([0.0, 1.0, 0.0]))))
                      for p in psis])
    faces = []
    for a, b in zip(rings[:-1], rings[1:], strict=True):
        for k in range(n_tube):
            faces.append(bm.faces.new((a[k], b[k], b[(k + 1) % n_tube], a[(k + 1) % n_tube])))
    faces.append(bm.faces.new(list(reversed(rings[0]))))
    faces.append(bm.faces.new(rings[-1]))
    bmesh.ops.recalc_face_normals(bm, faces=faces)
    for f in faces:
        f.material_index = material_index


def _check_handle_ends(prof: np.ndarray) -> None:
    """Both ends of the handle (tube included) must lie inside the vase, or the union leaves them open."""
    (cx, cz), big = HANDLE_CENTRE, HANDLE_RADIUS
    for deg in HANDLE_ANGLES_DEG:
        th = math.radians(deg)
        x, z = cx + big * math.cos(th), cz + big * math.sin(th)
        below = prof[:, 1] < SHOULDER_Z
        r = float(np.interp(z, prof[below, 1], prof[below, 0])) * float(_lobe(np.zeros(1), np.full(1, z))[0])
        if x + HANDLE_TUBE >= r:
            raise RuntimeError(f"handle end at {deg} deg sticks out of the vase (x {x:.3f}, radius {r:.3f})")


# ----------------------------------------------------------------------------------------------------------
# Materials: colourful, non-periodic procedural albedos (no checkers, no stripes)


def _textured(name: str, palette, scales: tuple[float, float, float], cell_mix: float, seed_offset: float,
              ) -> bpy.types.Material:
    """Noise colour ramp (``palette``) + voronoi cell colours, darkened by voronoi spots and a fine noise.

    ``scales``: (colour noise, voronoi cells, spots) texture scales in object units."""
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nt = mat.node_tree
    bsdf = nt.nodes["Principled BSDF"]
    coord = base._node(nt, "ShaderNodeTexCoord").outputs["Object"]
    shift = base._node(nt, "ShaderNodeMapping")
    shift.inputs["Location"].default_value = (seed_offset, 2.0 * seed_offset, -seed_offset)
    nt.links.new(coord, shift.inputs["Vector"])
    vec = shift.outputs["Vector"]
    noise = base._node(nt, "ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = scales[0]
    noise.inputs["Detail"].default_value = 6.0
    noise.inputs["Roughness"].default_value = 0.55
    nt.links.new(vec, noise.inputs["Vector"])
    colour = base._ramp(nt, noise.outputs["Fac"], palette)
    cells = base._node(nt, "ShaderNodeTexVoronoi")
    cells.inputs["Scale"].default_value = scales[1]
    nt.links.new(vec, cells.inputs["Vector"])
    colour = base._mix(nt, "MIX", cell_mix, colour, cells.outputs["Color"])
    spots = base._node(nt, "ShaderNodeTexVoronoi")
    spots.inputs["Scale"].default_value = scales[2]
    spots.inputs["Randomness"].default_value = 1.0
    nt.links.new(vec, spots.inputs["Vector"])
    spot_shade = base._ramp(nt, spots.outputs["Distance"], [(0.12, (0.12, 0.10, 0.10)), (0.32, (1.0, 1.0, 1.0))])
    colour = base._mix(nt, "MULTIPLY", 0.8, colour, spot_shade)
    grain = base._node(nt, "ShaderNodeTexNoise")
    grain.inputs["Scale"].default_value = 2.5 * scales[2]
    grain.inputs["Detail"].default_value = 3.0
    nt.links.new(vec, grain.inputs["Vector"])
    grain_shade = base._ramp(nt, grain.outputs["Fac"], [(0.35, (0.55, 0.55, 0.55)), (0.65, (1.0, 1.0, 1.0))])
    colour = base._mix(nt, "MULTIPLY", 1.0, colour, grain_shade)
    nt.links.new(colour, bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.75
    bsdf.inputs["Specular IOR Level"].default_value = 0.2
    return mat


RAINBOW = [(0.36, (0.70, 0.04, 0.03)), (0.43, (0.80, 0.30, 0.02)), (0.48, (0.65, 0.60, 0.05)),
           (0.53, (0.05, 0.45, 0.08)), (0.58, (0.03, 0.15, 0.70)), (0.64, (0.35, 0.04, 0.50))]
WARM = [(0.38, (0.85, 0.75, 0.10)), (0.46, (0.90, 0.35, 0.05)), (0.53, (0.95, 0.90, 0.80)),
        (0.60, (0.60, 0.05, 0.10))]
COOL = [(0.38, (0.80, 0.10, 0.55)), (0.46, (0.10, 0.70, 0.75)), (0.53, (0.55, 0.85, 0.10)),
        (0.60, (0.95, 0.95, 0.90))]


def materials() -> list[bpy.types.Material]:
    """Vase, antenna, handle."""
    return [_textured("Vase", RAINBOW, (4.0, 11.0, 18.0), 0.3, 0.0),
            _textured("Antenna", WARM, (9.0, 30.0, 40.0), 0.25, 3.7),
            _textured("Handle", COOL, (8.0, 25.0, 35.0), 0.25, 7.1)]


# ----------------------------------------------------------------------------------------------------------
# The object


def add_thin(scene: bpy.types.Scene, S: np.ndarray) -> bpy.types.Object:
    """The vase with antenna and handle, one watertight mesh, centred and scaled like
    :func:`render_sample.add_object`."""
    prof = profile()
    _check_handle_ends(prof)
    mats = materials()
    junction = TOP_Z  # faces above the dome's top belong to the antenna

    vase_mesh = bpy.data.meshes.new("ThinVase")
    bm = bmesh.new()
    add_revolved(bm, prof, lambda z: 0 if z < junction else 1)
    bm.to_mesh(vase_mesh)
    bm.free()
    handle_mesh = bpy.data.meshes.new("ThinHandle")
    bm = bmesh.new()
    add_handle(bm, material_index=2)
    bm.to_mesh(handle_mesh)
    bm.free()
    for mesh in (vase_mesh, handle_mesh):
        for mat in mats:
            mesh.materials.append(mat)
    vase = bpy.data.objects.new("Thin", vase_mesh)
    handle = bpy.data.objects.new("ThinHandle", handle_mesh)
    scene.collection.objects.link(vase)
    scene.collection.objects.link(handle)
    mod = vase.modifiers.new("Handle", "BOOLEAN")
    mod.operation = "UNION"
    mod.solver = "EXACT"
    mod.operand_type = "OBJECT"
    mod.object = handle
    mod.material_mode = "INDEX"
    deps = bpy.context.evaluated_depsgraph_get()
    baked = bpy.data.meshes.new_from_object(vase.evaluated_get(deps))  # apply the union
    vase.modifiers.clear()
    vase.data = baked
    bpy.data.objects.remove(handle)
    bpy.data.meshes.remove(handle_mesh)
    bpy.data.meshes.remove(vase_mesh)
    baked.shade_smooth()

    bm = bmesh.new()
    bm.from_mesh(baked)
    open_edges = sum(1 for e in bm.edges if not e.is_manifold)
    bm.free()
    if open_edges:
        raise RuntimeError(f"the union is not watertight: {open_edges} non-manifold edges")
    return base.place_object(vase, S)


DESCRIPTION = ("Thin and smooth parts (smooth three-lobed vase, thin upright antenna with a ball tip, thin C-shaped "
               "handle), colourful non-periodic procedural textures, inside the sample scene's emissive dome; "
               "rendered by datasets/sample_scene/render_thin.py")
OBJECT_META = {"name": "ThinVase", "parts": ["smooth vase (surface of revolution, 3 gentle lobes)",
                                             "thin upright antenna with ball tip", "thin handle (torus segment)"],
               "rod_radius": ROD_RADIUS, "ball_radius": BALL_RADIUS, "handle_tube_radius": HANDLE_TUBE,
               "handle_arc_radius": HANDLE_RADIUS, "units": "object units before scaling to the normalized radius"}


def main(argv: list[str] | None = None) -> int:
    return base.variant_main(argv, __doc__, add_thin, DESCRIPTION, OBJECT_META)


if __name__ == "__main__":
    sys.exit(main())
