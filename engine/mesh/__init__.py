"""Mesh extraction, colouring, texturing, export and evaluation (functional API, numpy / torch in and out).

- :mod:`.extract`: coarse-to-fine marching cubes of an SDF, normals, clean-up, decimation.
- :mod:`.color`: per-vertex colours from the radiance field or from the training photos.
- :mod:`.texture`: xatlas UV unwrap and diffuse-texture baking.
- :mod:`.ply`, :mod:`.exchange`: PLY, and OBJ / GLB writers (atomic, see ``engine.atomic_files``).
- :mod:`.read`: meshes from files (trimesh); :mod:`.mesh_data`: the record read and the shared array checks.
- :mod:`.frames`: normalized <-> world frame, writing ``normalization.json``.
- :mod:`.evaluate`: Chamfer-L1 and F-score.
"""

from .color import (
    field_color_source,
    vertex_colors_from_field,
)
from .evaluate import chamfer_and_fscore, evaluate_mesh, sample_surface
from .exchange import write_glb, write_obj
from .extract import (
    MeshDependencyError,
    MeshExtractionError,
    clean_mesh,
    decimate,
    evaluate_sdf_grid,
    extract_mesh,
    marching_cubes,
    mesh_vertex_normals,
    outside_visual_hull,
)
from .frames import transform_mesh, transform_vertices, write_normalization_json
from .mesh_data import MeshData, MeshFileError, colors_to_uint8
from .ply import write_ply
from .read import read_mesh
from .texture import bake_texture, dilate_texture, rasterize_uv, texture_mesh, unwrap_uv

__all__ = [
    "MeshData",
    "MeshDependencyError",
    "MeshExtractionError",
    "MeshFileError",
    "bake_texture",
    "chamfer_and_fscore",
    "clean_mesh",
    "colors_to_uint8",
    "decimate",
    "dilate_texture",
    "evaluate_mesh",
    "evaluate_sdf_grid",
    "extract_mesh",
    "field_color_source",
    "marching_cubes",
    "mesh_vertex_normals",
    "outside_visual_hull",
    "rasterize_uv",
    "read_mesh",
    "sample_surface",
    "texture_mesh",
    "transform_mesh",
    "transform_vertices",
    "unwrap_uv",
    "vertex_colors_from_field",
    "write_glb",
    "write_normalization_json",
    "write_obj",
    "write_ply",
]
