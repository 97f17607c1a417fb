"""Renders a benchmark scene of fine texture patterns with Blender (bpy), in the bundled scene's DTU layout.

What an exported asset finds hardest to keep: periodic stripes and checkers a few pixels wide, printed text, and a
part a few pixels thin. Same cameras, lights, dome and files as :mod:`render_sample` (40 views on three rings,
400 x 300); only the object differs::

    python -m datasets.sample_scene.render_patterns --out /work/bench_data/patterns [--samples N] [--limit N]

The object (one mesh, four materials, mostly diffuse so a texture can match it): a flat box with a fine checker
(squares ~6 px wide in the photos), a cylinder with horizontal stripes (bands ~4 px wide), an upright sign with two
lines of black text (letters ~12 px tall), and a thin tilted rod (~4 px wide). The output is a benchmark input, not
part of the repository: write it outside (e.g. ``/work/bench_data/patterns``). Fit it with ``data.holdout_every=8``
for held-out views (engine/BENCHMARKS.md).
"""

from __future__ import annotations

import sys

# isort: off
import bpy  # must come first: importing it makes bmesh and mathutils importable
import bmesh
# isort: on
import numpy as np
from mathutils import Matrix, Vector
from PIL import Image, ImageDraw, ImageFont

from datasets.sample_scene import render_sample as base

CHECKER_SQUARE = 0.035  # checker square side, object units (~6 px in the photos)
STRIPE_PERIOD = 0.05  # stripe period on the cylinder, object units (bands ~4 px wide)
ROD_RADIUS = 0.012  # the thin part (~4 px wide in the photos)
TEXT_LINES = ("NeuS 2026", "fidelity 0123")
TEXT_IMAGE = (1024, 512)  # pixels of the sign's text image

# Parts in object units (before the object is scaled to the normalized radius): (centre, size)
BOX = ((0.0, 0.0, -0.2), (1.0, 0.7, 0.3))
CYLINDER = ((-0.25, 0.05, 0.125), (0.17, 0.55))  # centre, (radius, height)
SIGN = ((0.2, -0.12, 0.09), (0.45, 0.03, 0.28))
ROD = ((0.3, 0.2, -0.05), (0.45, 0.25, 0.5))  # from, to


def _principled(name: str) -> tuple[bpy.types.Material, bpy.types.NodeTree, bpy.types.Node]:
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Roughness"].default_value = 0.8
    bsdf.inputs["Specular IOR Level"].default_value = 0.15
    return mat, mat.node_tree, bsdf


def _rgba(rgb: tuple[float, float, float]) -> tuple[float, float, float, float]:
    return (*rgb, 1.0)


def checker_material() -> bpy.types.Material:
    mat, nt, bsdf = _principled("Checker")
    coord = base._node(nt, "ShaderNodeTexCoord").outputs["Object"]
    checker = base._node(nt, "ShaderNodeTexChecker")
    checker.inputs["Scale"].default_value = 1.0 / CHECKER_SQUARE
    checker.inputs["Color1"].default_value = _rgba((0.85, 0.80, 0.62))
    checker.inputs["Color2"].default_value = _rgba((0.05, 0.10, 0.35))
    nt.links.new(coord, checker.inputs["Vector"])
    nt.links.new(checker.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def stripe_material() -> bpy.types.Material:
    """Sharp horizontal bands: fract(z / period) > 0.5 picks one of two colours."""
    mat, nt, bsdf = _principled("Stripes")
    coord = base._node(nt, "ShaderNodeTexCoord").outputs["Object"]
    xyz = base._node(nt, "ShaderNodeSeparateXYZ")
    nt.links.new(coord, xyz.inputs["Vector"])
    scaled = base._node(nt, "ShaderNodeMath", operation="MULTIPLY")
    scaled.inputs[1].default_value = 1.0 / STRIPE_PERIOD
    nt.links.new(xyz.outputs["Z"], scaled.inputs[0])
    frac = base._node(nt, "ShaderNodeMath", operation="FRACT")
    nt.links.new(scaled.outputs["Value"], frac.inputs[0])
    band = base._node(nt, "ShaderNodeMath", operation="GREATER_THAN")
    band.inputs[1].default_value = 0.5
    nt.links.new(frac.outputs["Value"], band.inputs[0])
    mix = base._node(nt, "ShaderNodeMix", data_type="RGBA", blend_type="MIX")
    ins = {s.identifier: s for s in mix.inputs}
    ins["A_Color"].default_value = _rgba((0.75, 0.06, 0.04))
    ins["B_Color"].default_value = _rgba((0.90, 0.90, 0.88))
    nt.links.new(band.outputs["Value"], mix.inputs["Factor"])
    nt.links.new({s.identifier: s for s in mix.outputs}["Result_Color"], bsdf.inputs["Base Color"])
    return mat


def text_image() -> bpy.types.Image:
    """Black text on white, drawn with Pillow's built-in font, as a packed Blender image."""
    w, h = TEXT_IMAGE
    im = Image.new("RGB", (w, h), (235, 232, 220))
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=h // 3)
    for k, line in enumerate(TEXT_LINES):
        draw.text((w // 2, h * (1 + 2 * k) // 4), line, fill=(10, 10, 10), font=font, anchor="mm")
    rgba = np.concatenate([np.asarray(im, np.float32) / 255.0, np.ones((h, w, 1), np.float32)], axis=-1)
    img = bpy.data.images.new("SignText", w, h, alpha=False)
    img.colorspace_settings.name = "sRGB"
    img.pixels.foreach_set(np.ascontiguousarray(rgba[::-1]).ravel())  # Blender's rows start at the bottom
    img.pack()
    return img


def sign_material() -> bpy.types.Material:
    """The text image across the sign's x (u) and z (v) extent; both faces show it (mirrored on the back)."""
    mat, nt, bsdf = _principled("SignText")
    coord = base._node(nt, "ShaderNodeTexCoord").outputs["Object"]
    (cx, _, cz), (sx, _, sz) = SIGN
    mapping = base._node(nt, "ShaderNodeMapping")
    mapping.inputs["Location"].default_value = (0.5 - cx / sx, 0.0, 0.5 - cz / sz)
    mapping.inputs["Scale"].default_value = (1.0 / sx, 1.0, 1.0 / sz)
    nt.links.new(coord, mapping.inputs["Vector"])
    xyz = base._node(nt, "ShaderNodeSeparateXYZ")
    nt.links.new(mapping.outputs["Vector"], xyz.inputs["Vector"])
    uv = base._node(nt, "ShaderNodeCombineXYZ")
    nt.links.new(xyz.outputs["X"], uv.inputs["X"])
    nt.links.new(xyz.outputs["Z"], uv.inputs["Y"])
    tex = base._node(nt, "ShaderNodeTexImage", extension="EXTEND", interpolation="Linear")
    tex.image = text_image()
    nt.links.new(uv.outputs["Vector"], tex.inputs["Vector"])
    nt.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def rod_material() -> bpy.types.Material:
    mat, _, bsdf = _principled("Rod")
    bsdf.inputs["Base Color"].default_value = _rgba((0.95, 0.55, 0.02))
    return mat


def _assign(bm: bmesh.types.BMesh, verts, index: int) -> None:
    for face in {f for v in verts for f in v.link_faces}:
        face.material_index = index


def _box(bm: bmesh.types.BMesh, centre, size, index: int) -> None:
    m = Matrix.Translation(centre) @ Matrix.Diagonal((*size, 1.0))
    _assign(bm, bmesh.ops.create_cube(bm, size=1.0, matrix=m)["verts"], index)


def _cylinder(bm: bmesh.types.BMesh, matrix: Matrix, radius: float, depth: float, index: int,
              segments: int = 96) -> None:
    out = bmesh.ops.create_cone(bm, cap_ends=True, cap_tris=False, segments=segments, radius1=radius,
                                radius2=radius, depth=depth, matrix=matrix)
    _assign(bm, out["verts"], index)


def add_patterns(scene: bpy.types.Scene, S: np.ndarray) -> bpy.types.Object:
    """The pattern object, one mesh (material per part), centred and scaled like :func:`render_sample.add_object`."""
    mesh = bpy.data.meshes.new("Patterns")
    bm = bmesh.new()
    _box(bm, *BOX, index=0)
    (cx, cy, cz), (radius, height) = CYLINDER
    _cylinder(bm, Matrix.Translation((cx, cy, cz)), radius, height, index=1)
    _box(bm, *SIGN, index=2)
    start, end = Vector(ROD[0]), Vector(ROD[1])
    axis = end - start
    rot = Vector((0.0, 0.0, 1.0)).rotation_difference(axis.normalized()).to_matrix().to_4x4()
    _cylinder(bm, Matrix.Translation((start + end) / 2) @ rot, ROD_RADIUS, axis.length, index=3, segments=24)
    bm.to_mesh(mesh)
    bm.free()
    for mat in (checker_material(), stripe_material(), sign_material(), rod_material()):
        mesh.materials.append(mat)
    obj = bpy.data.objects.new("Patterns", mesh)
    scene.collection.objects.link(obj)
    return base.place_object(obj, S)


DESCRIPTION = ("Fine texture patterns (checker box, striped cylinder, text sign, thin rod) inside the sample scene's "
               "emissive dome; rendered by datasets/sample_scene/render_patterns.py")
OBJECT_META = {"name": "Patterns", "parts": ["checker box", "striped cylinder", "text sign", "thin rod"],
               "checker_square": CHECKER_SQUARE, "stripe_period": STRIPE_PERIOD, "rod_radius": ROD_RADIUS,
               "text": list(TEXT_LINES), "units": "object units before scaling to the normalized radius"}


def main(argv: list[str] | None = None) -> int:
    return base.variant_main(argv, __doc__, add_patterns, DESCRIPTION, OBJECT_META)


if __name__ == "__main__":
    sys.exit(main())
