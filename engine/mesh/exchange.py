"""OBJ (+ MTL + PNG) and binary glTF writers for other tools (Blender, game engines, viewers).

Both take ``(path, vertices, faces, *, colors=None, uvs=None, texture=None, yup=False)``: per-vertex colours, or a
texture with one UV per vertex (as from xatlas). Coordinates are written as given; glTF and Blender's OBJ importer
assume +Y up and rotate into Blender's +Z up on import, so ``yup=True`` stores ``(x, z, -y)`` and such an importer
recovers ``(x, y, z)``. Every file is written atomically.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_files import atomic_write, write_bytes_atomically
from .mesh_data import as_faces, as_texture, as_vertices, vertex_colors, vertex_uvs, zup_to_yup


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _checked(vertices: Any, faces: Any, uvs: Any, texture: Any, yup: bool, writer: str):
    if (uvs is None) != (texture is None):
        raise ValueError(f"{writer}: uvs and texture go together")
    v = as_vertices(vertices)
    f = as_faces(faces, len(v))
    uv = None if uvs is None else vertex_uvs(uvs, len(v))
    return (zup_to_yup(v) if yup else v), f, uv


def write_obj(path: str | os.PathLike, vertices: Any, faces: Any, *, colors: Any = None, uvs: Any = None,
              texture: Any = None, yup: bool = False, normal_map: Any = None) -> dict[str, Path]:
    """Writes a Wavefront OBJ, with ``<stem>.mtl`` and ``<stem>.png`` beside it when textured.

    Args:
        path: the ``.obj`` path.
        vertices: (V, 3) positions; faces: (F, 3) indices (shared by positions and UVs).
        colors: (V, 3) per-vertex RGB written as ``v x y z r g b`` (a common extension), or None.
        uvs: (V, 2) texture coordinates in [0, 1] (v = 0 at the image bottom) and
        texture: (H, W, 3) uint8 diffuse image (written as PNG), given together.
        yup: store ``(x, z, -y)`` (see the module docstring).
        normal_map: (H, W, 3) uint8 tangent-space normal map (``<stem>_normal.png``, ``map_Bump`` in the MTL,
            which Blender's importer wires to a Normal Map node), or None. Needs ``texture``.
    Returns:
        ``{"obj": ..., "mtl": ..., "png": ..., "normal_png": ...}`` paths of the files written.
    """
    path = Path(path)
    v, f, uv = _checked(vertices, faces, uvs, texture, yup, "write_obj")
    written: dict[str, Path] = {}
    lines = ["# written by neus-for-blender"]
    if texture is not None:
        png_path, mtl_path = path.with_suffix(".png"), path.with_suffix(".mtl")
        write_bytes_atomically(png_path, _png_bytes(as_texture(texture)))
        mtl = ("# written by neus-for-blender\nnewmtl material0\nKa 1.000 1.000 1.000\nKd 1.000 1.000 1.000\n"
               f"Ks 0.000 0.000 0.000\nillum 1\nmap_Kd {png_path.name}\n")
        if normal_map is not None:
            normal_path = path.with_name(f"{path.stem}_normal.png")
            write_bytes_atomically(normal_path, _png_bytes(as_texture(normal_map)))
            mtl += f"map_Bump -bm 1.000 {normal_path.name}\n"
            written["normal_png"] = normal_path
        with atomic_write(mtl_path, "w") as fh:
            fh.write(mtl)
        written.update(png=png_path, mtl=mtl_path)
        lines += [f"mtllib {mtl_path.name}", "usemtl material0"]
    buf = io.StringIO()
    buf.write("\n".join(lines) + "\n")
    if colors is not None:
        c = vertex_colors(colors, len(v)).astype(np.float64) / 255.0
        np.savetxt(buf, np.concatenate([v, c], axis=1), fmt="v %.7g %.7g %.7g %.6f %.6f %.6f")
    else:
        np.savetxt(buf, v, fmt="v %.7g %.7g %.7g")
    if uv is not None:
        np.savetxt(buf, uv, fmt="vt %.7f %.7f")
        np.savetxt(buf, np.repeat(f + 1, 2, axis=1), fmt="f %d/%d %d/%d %d/%d")
    else:
        np.savetxt(buf, f + 1, fmt="f %d %d %d")
    with atomic_write(path, "w") as fh:
        fh.write(buf.getvalue())
    written["obj"] = path
    return written


def write_glb(path: str | os.PathLike, vertices: Any, faces: Any, *, colors: Any = None, uvs: Any = None,
              texture: Any = None, yup: bool = False, normal_map: Any = None) -> Path:
    """Writes a binary glTF (GLB): vertex colours as COLOR_0, or a textured PBR material.

    Args:
        path: destination ``.glb``.
        vertices: (V, 3) positions; faces: (F, 3) indices.
        colors: (V, 3) uint8 or float [0, 1] per-vertex RGB, or None (ignored when textured).
        uvs: (V, 2) in [0, 1] (OBJ convention; trimesh flips them to glTF's top-left origin) and
        texture: (H, W, 3) uint8 base-colour image, given together.
        yup: store ``(x, z, -y)`` (see the module docstring).
        normal_map: (H, W, 3) uint8 tangent-space normal map of the textured material (``normalTexture``), or None.
    """
    import trimesh
    from PIL import Image

    v, f, uv = _checked(vertices, faces, uvs, texture, yup, "write_glb")
    mesh = trimesh.Trimesh(vertices=v, faces=f, process=False)
    if texture is not None:
        material = trimesh.visual.material.PBRMaterial(
            baseColorTexture=Image.fromarray(as_texture(texture)), metallicFactor=0.0, roughnessFactor=1.0,
            normalTexture=None if normal_map is None else Image.fromarray(as_texture(normal_map)))
        mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    elif colors is not None:
        c = vertex_colors(colors, len(v))
        rgba = np.concatenate([c, np.full((len(c), 1), 255, np.uint8)], axis=1)
        mesh.visual = trimesh.visual.ColorVisuals(mesh=mesh, vertex_colors=rgba)
    return write_bytes_atomically(path, mesh.export(file_type="glb"))


__all__ = ["write_glb", "write_obj"]
