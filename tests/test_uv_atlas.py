"""The UV atlas of a real trained mesh, decimated before xatlas: few large charts, a well-used atlas, even texel
density, seams that fetch no background; and the colours of a decimated mesh come from the full one.

Figures on the bundled scene's full meshes: engine/BENCHMARKS.md (textured assets, UV atlas).
"""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from engine.config_schema import ExportConfig
from engine.export import decimate_stage
from engine.mesh.extract import mesh_vertex_normals
from engine.mesh.texture import detail_color_source, texture_mesh


def _seam_texels(uvs: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray:
    """(N, 2) texel (column, row) indices one texel either side of every chart border edge."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, count = np.unique(edges, axis=0, return_counts=True)
    border = unique[count == 1]  # in the seam-split mesh an edge used once lies on a chart's outline
    t = np.linspace(0.0, 1.0, 7)[:, None, None]
    pts = (uvs[border[:, 0]][None] * (1 - t) + uvs[border[:, 1]][None] * t).reshape(-1, 2)
    px = np.stack([pts[:, 0] * size - 0.5, (1.0 - pts[:, 1]) * size - 0.5], axis=1)
    offsets = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    return np.clip(np.round(px[None] + offsets[:, None]).astype(int), 0, size - 1).reshape(-1, 2)


@pytest.mark.slow
def test_the_decimated_trained_mesh_unwraps_into_few_large_charts(masked_preview_run):
    mesh = trimesh.load(masked_preview_run.check().folder / "mesh.ply", process=False)
    v, f = np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64)
    size = 512
    stats: dict = {}
    # The export's path: its decimation stage, then the low mesh unwrapped with the full surface as the detail.
    low = decimate_stage(v, f, ExportConfig(texture=True, texture_faces=len(f) // 4), photos=False).textured
    tv, tf, uvs, tex, _ = texture_mesh(*low, lambda p, n: 0.25 + 0.5 * (p * 0.5 + 0.5), texture_size=size,
                                       detail=(v, mesh_vertex_normals(v, f)), stats=stats)
    assert len(tf) <= len(f) // 4 + 8
    # Unwrapped as extracted, marching-cubes meshes fall apart into few-face charts (~32 faces a chart on the
    # bundled scene at resolution 128); decimated to a quarter, 165-320 (two runs; BENCHMARKS.md).
    assert len(tf) / stats["charts"] > 80, stats
    assert stats["utilization"] > 0.5, stats
    assert stats["density_spread"] < 0.15, stats
    # Texels either side of every chart border hold a chart's colour, never the (black) background.
    cols, rows = _seam_texels(uvs, tf, size).T
    assert tex[rows, cols].min() >= 0.2 * 255, "a chart border fetched background colour"


def test_colours_of_a_decimated_mesh_are_sampled_on_the_full_surface():
    full = trimesh.creation.icosphere(subdivisions=5)
    low = trimesh.creation.icosphere(subdivisions=1)  # flat facets well inside the unit sphere between corners
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(3), 2000)
    face = rng.integers(0, len(low.faces), 2000)
    pts = np.einsum("pk,pkc->pc", w, low.vertices[low.faces[face]]).astype(np.float32)
    low_normals = low.face_normals[face].astype(np.float32)
    seen: dict = {}

    def record(p: np.ndarray, n: np.ndarray) -> np.ndarray:
        seen.update(points=p, normals=n)
        return np.zeros_like(p)

    source = detail_color_source(record, np.asarray(full.vertices), np.asarray(full.vertex_normals))
    source(pts, low_normals)
    radius_before = np.linalg.norm(pts, axis=1)
    radius_after = np.linalg.norm(seen["points"], axis=1)
    assert radius_before.min() < 0.95, "the low-poly points should start off the sphere"
    assert np.abs(radius_after - 1.0).max() < 2e-3
    radial = seen["points"] / radius_after[:, None]
    assert (seen["normals"] * radial).sum(1).min() > 0.999

