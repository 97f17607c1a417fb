"""Mesh extraction, colouring, texturing, export and evaluation (functional API, numpy / torch in and out).

- :mod:`.extract`: coarse-to-fine marching cubes of an SDF, normals, clean-up, decimation.
- :mod:`.color`: per-vertex colours from the radiance field or from the training photos.
- :mod:`.texture`: xatlas UV unwrap and diffuse-texture baking.
- :mod:`.io`: atomic PLY / OBJ / GLB writers, a reader, frame transforms, ``atomic_write``.
- :mod:`.evaluate`: Chamfer-L1 and F-score.
"""

from .color import (
    field_color_source,
    photo_color_source,
    segment_occluded,
    vertex_colors_from_field,
    vertex_colors_from_photos,
)
from .evaluate import chamfer_and_fscore, evaluate_mesh, sample_surface
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
    sdf_normals,
)
from .io import (
    MeshData,
    MeshFileError,
    atomic_path,
    atomic_write,
    colors_to_uint8,
    read_mesh,
    read_normalization_json,
    transform_mesh,
    transform_vertices,
    write_glb,
    write_normalization_json,
    write_obj,
    write_ply,
)
from .texture import bake_texture, dilate_texture, rasterize_uv, texture_mesh, unwrap_uv

__all__ = [
    "MeshData",
    "MeshDependencyError",
    "MeshExtractionError",
    "MeshFileError",
    "atomic_path",
    "atomic_write",
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
    "photo_color_source",
    "rasterize_uv",
    "read_mesh",
    "read_normalization_json",
    "sample_surface",
    "sdf_normals",
    "segment_occluded",
    "texture_mesh",
    "transform_mesh",
    "transform_vertices",
    "unwrap_uv",
    "vertex_colors_from_field",
    "vertex_colors_from_photos",
    "write_glb",
    "write_normalization_json",
    "write_obj",
    "write_ply",
]
