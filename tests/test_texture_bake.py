"""The torch rasteriser, depth-map visibility, UV padding and the normal-map bake, on real meshes.

The rasteriser is checked against trimesh's ray casting on the bundled scene's ground-truth mesh; the visibility
against trimesh rays too (independent of the z-buffer); the normal map on spheres (whose true normal is known).
"""

from __future__ import annotations

import numpy as np
import pytest
import rtree  # noqa: F401  (trimesh's ray casting needs it; in the test extras: missing, these tests fail)
import torch
import trimesh
from engine_helpers import SAMPLE

from engine.mesh.normal_map import bake_normal_map, decode_normal_map, nearest_normals, vertex_tangents
from engine.mesh.raster import outward_faces, rasterize_view
from engine.mesh.texture import rasterize_uv, unwrap_uv

needs_sample = pytest.mark.skipif(not (SAMPLE / "cameras_sphere.npz").is_file(), reason="bundled scene missing")


def _camera_rays(K: np.ndarray, c2w: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d_cv = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones(len(xs))], axis=1)
    dirs = (d_cv * [1.0, -1.0, -1.0]) @ c2w[:, :3].T  # OpenCV -> OpenGL camera -> world
    return np.broadcast_to(c2w[:, 3], dirs.shape).copy(), dirs


@needs_sample
def test_rasteriser_matches_trimesh_ray_casting_on_the_sample_mesh():
    import datasets

    scene = datasets.load(SAMPLE)
    mesh = trimesh.load(SAMPLE / "gt_mesh_normalized.ply", process=False)
    v = torch.from_numpy(np.asarray(mesh.vertices, np.float32))
    f = torch.from_numpy(np.asarray(mesh.faces, np.int64))
    rng = np.random.default_rng(0)
    for i in (0, scene.n_views // 2):
        frags = rasterize_view(v, f, torch.from_numpy(scene.K[i]).float(), torch.from_numpy(scene.c2w[i]).float(),
                               scene.height, scene.width)
        xs, ys = rng.integers(0, scene.width, 1500), rng.integers(0, scene.height, 1500)
        origins, dirs = _camera_rays(scene.K[i], scene.c2w[i], xs, ys)
        locs, ray_idx, tri_idx = mesh.ray.intersects_location(origins, dirs, multiple_hits=False)
        hit = np.zeros(len(xs), bool)
        hit[ray_idx] = True
        depth = np.full(len(xs), np.inf)
        depth[ray_idx] = (locs - scene.c2w[i][:, 3]) @ -scene.c2w[i][:, 2]
        z = frags.depth.numpy()[ys, xs]
        assert hit.sum() > 100, "the sample views should see the object"
        # Coverage agrees except where a ray grazes a triangle edge (float ties): allow a handful of pixels.
        assert np.mean(hit != np.isfinite(z)) < 2e-3
        both = hit & np.isfinite(z)
        np.testing.assert_allclose(z[both], depth[both], atol=1e-4)
        face = frags.face.numpy()[ys, xs]
        same_face = face[ray_idx] == tri_idx
        assert same_face.mean() > 0.98


@needs_sample
def test_back_face_culling_keeps_the_nearest_surface_whatever_the_winding():
    """The photo colouring's depth maps cull the faces turned away from the camera (half the rasteriser's work):
    on the sample's ground-truth mesh, wound either way, the culled depth map equals the full one on all but a
    few edge pixels (measured: none); culling the wrong side (winding reversed, not corrected) shows the far
    surface (measured on 99.95 % of the pixels both cover)."""
    import datasets

    scene = datasets.load_cameras(SAMPLE)
    mesh = trimesh.load(SAMPLE / "gt_mesh_normalized.ply", process=False)
    v = torch.from_numpy(np.asarray(mesh.vertices, np.float32))
    f = torch.from_numpy(np.asarray(mesh.faces, np.int64))
    for i in (0, scene.n_views // 2):
        K, c2w = torch.from_numpy(scene.K[i]).float(), torch.from_numpy(scene.c2w[i]).float()
        full = rasterize_view(v, f, K, c2w, scene.height, scene.width).depth
        assert torch.isfinite(full).sum() > 5000
        for faces in (f, f[:, [0, 2, 1]]):
            culled = rasterize_view(v, outward_faces(v, faces), K, c2w, scene.height, scene.width,
                                    cull_back=True).depth
            differ = (torch.isfinite(culled) != torch.isfinite(full)) | ((culled - full).abs() > 1e-5)
            assert differ.sum() <= 5, differ.sum()
        wrong = rasterize_view(v, outward_faces(v, f)[:, [0, 2, 1]], K, c2w, scene.height, scene.width,
                               cull_back=True).depth
        both = torch.isfinite(wrong) & torch.isfinite(full)
        assert (wrong[both] > full[both] + 1e-3).float().mean() > 0.99


def test_uv_padding_leaves_no_background_at_chart_borders():
    from engine.mesh.texture import bake_texture

    sphere = trimesh.creation.icosphere(subdivisions=3)
    vmap, faces, uvs = unwrap_uv(np.asarray(sphere.vertices), np.asarray(sphere.faces), texture_size=256)
    verts = np.asarray(sphere.vertices, np.float32)[vmap]
    # A colour that is never black, so any texel still at the background colour shows up.
    tex = bake_texture(verts, faces, uvs, lambda p, n: 0.25 + 0.5 * (p * 0.5 + 0.5), size=256)
    # Sample along every seam edge, bilinearly, slightly outside the chart (where filtering reaches).
    a, b = uvs[faces[:, 0]], uvs[faces[:, 1]]
    t = np.linspace(0, 1, 9)[:, None, None]
    pts = (a[None] * (1 - t) + b[None] * t).reshape(-1, 2)
    px = np.stack([pts[:, 0] * 256 - 0.5, (1 - pts[:, 1]) * 256 - 0.5], 1)
    for dx, dy in ((1.0, 0), (-1.0, 0), (0, 1.0), (0, -1.0)):
        c = np.clip(np.round(px + [dx, dy]).astype(int), 0, 255)
        texels = tex[c[:, 1], c[:, 0]].astype(int)
        assert texels.min() >= 0.2 * 255, "a chart border fetched background colour"


def test_normal_map_baked_from_a_sphere_points_outward():
    high = trimesh.creation.icosphere(subdivisions=5)
    low = trimesh.creation.icosphere(subdivisions=1)  # 80 faces: flat facets, so the map must bend the normals
    vmap, faces, uvs = unwrap_uv(np.asarray(low.vertices), np.asarray(low.faces), texture_size=128)
    verts = np.asarray(low.vertices, np.float32)[vmap]
    welded_normals = np.asarray(low.vertex_normals, np.float32)[vmap]
    nmap = bake_normal_map(verts, faces, uvs, nearest_normals(high.vertices, high.vertex_normals), size=128,
                           normals=welded_normals)
    tri, bary = rasterize_uv(uvs, faces, 128)
    rows, cols = np.nonzero(tri >= 0)
    corners = faces[tri[rows, cols]]
    w = bary[rows, cols]
    pts = np.einsum("pk,pkc->pc", w, verts[corners])
    n = np.einsum("pk,pkc->pc", w, welded_normals[corners])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    t_v, s_v = vertex_tangents(verts, faces, uvs, welded_normals)
    t = np.einsum("pk,pkc->pc", w, t_v[corners])
    t = t - n * (t * n).sum(1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    b = np.cross(n, t) * np.sign(np.einsum("pk,pk->p", w, s_v[corners]))[:, None]
    local = decode_normal_map(nmap, rows, cols)
    world = local[:, :1] * t + local[:, 1:2] * b + local[:, 2:3] * n
    radial = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    cos = (world * radial).sum(1)
    assert np.percentile(cos, 1) > 0.97, "decoded normals must point outward, along the radius"
    # And they really carry detail: the flat facets' own normals are further from the radius.
    e1 = verts[corners[:, 1]] - verts[corners[:, 0]]
    e2 = verts[corners[:, 2]] - verts[corners[:, 0]]
    facet = np.cross(e1, e2)
    facet /= np.linalg.norm(facet, axis=1, keepdims=True)
    assert cos.mean() > (facet * radial).sum(1).mean()
    assert (local[:, 2] > 0.5).all(), "tangent-space normals point out of the surface (blue)"


@needs_sample
def test_depth_map_visibility_agrees_with_ray_casting():
    """Visibility from the z-buffer vs an independent test: a trimesh ray from the point to the camera centre."""
    import datasets
    from engine.mesh.photo import PhotoOptions, depth_visible

    scene = datasets.load(SAMPLE)
    mesh = trimesh.load(SAMPLE / "gt_mesh_normalized.ply", process=False)
    pts, face_idx = trimesh.sample.sample_surface(mesh, 3000, seed=0)
    nrm = np.asarray(mesh.face_normals)[face_idx]
    v = torch.from_numpy(np.asarray(mesh.vertices, np.float32))
    f = torch.from_numpy(np.asarray(mesh.faces, np.int64))
    opts = PhotoOptions()
    agree, total, occluded = 0, 0, 0
    for i in (1, scene.n_views // 3):
        K, c2w = scene.K[i], scene.c2w[i]
        depth = rasterize_view(v, f, torch.from_numpy(K).float(), torch.from_numpy(c2w).float(),
                               scene.height, scene.width).depth
        to_cam = c2w[:, 3] - pts
        cos = (to_cam * nrm).sum(1) / np.linalg.norm(to_cam, axis=1)
        sel = cos > opts.min_cos  # the test only decides for points facing the camera
        p = torch.from_numpy(pts[sel].astype(np.float32))
        vis, xy, _ = depth_visible(depth, torch.from_numpy(K).float(), torch.from_numpy(c2w).float(), p,
                                   torch.from_numpy(cos[sel].astype(np.float32)), opts)
        start = pts[sel] + 1e-3 * nrm[sel]
        dirs = c2w[:, 3] - start
        hit = mesh.ray.intersects_any(start, dirs / np.linalg.norm(dirs, axis=1, keepdims=True))
        in_image = ((xy[:, 0] >= 0) & (xy[:, 0] < scene.width) & (xy[:, 1] >= 0) & (xy[:, 1] < scene.height)).numpy()
        agree += int(np.sum(vis.numpy()[in_image] == ~hit[in_image]))
        total += int(in_image.sum())
        occluded += int(hit[in_image].sum())
    assert occluded > 20, "the sample should contain self-occluded points facing the camera"
    assert agree / total > 0.97, (agree, total)


def test_fidelity_and_texture_options_reject_bad_input(tmp_path):
    from engine_helpers import run_engine

    code, _, err = run_engine("fidelity", str(tmp_path / "missing"), timeout=120)
    assert code == 2 and "config.yaml: not found" in err.strip().splitlines()[-1]
    code, _, err = run_engine("export", str(tmp_path / "missing"), "--faces", "2", timeout=120)
    assert code == 2 and "--faces must be at least 4" in err.strip().splitlines()[-1]
    code, _, err = run_engine("export", str(tmp_path / "missing"), "--texture-size", "8", timeout=120)
    assert code == 2 and "--texture-size must be between 16 and 16384" in err.strip().splitlines()[-1]
