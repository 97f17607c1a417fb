"""The texel fit and the silhouette fit (engine/mesh/texture_refine.py, engine/mesh/silhouette.py) on a real fit of
the bundled scene: the fitted texture reproduces the training photos better than the photo blend it starts from
without losing held-out views; the mesh moved to the offset at which it best matches the training photos inside
their masks gains on held-out views, and its outline moved vertex by vertex onto the training masks' edges gains
again."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import SAMPLE

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SAMPLE / "cameras_sphere.npz").is_file(), reason="bundled sample scene missing")]


def test_texel_fit_and_silhouette_fit_on_a_real_run(masked_preview_run):
    import trimesh

    import datasets
    from engine.export import texturing_views
    from engine.mesh.extract import decimate, mesh_vertex_normals
    from engine.mesh.fidelity import asset_fidelity, fidelity_views
    from engine.mesh.photo import photo_source
    from engine.mesh.silhouette import AssetJudge, best_refinement, silhouette_offset
    from engine.mesh.texture import texture_mesh
    from engine.mesh.texture_refine import RefineOptions, refine_texture

    run = masked_preview_run.check().folder
    scene = datasets.load(SAMPLE)
    train = texturing_views(scene, 8)
    judged, held_out = fidelity_views(scene.n_views, 8)
    assert held_out and not set(judged) & {int(i) for i in train}
    mesh = trimesh.load(run / "mesh.ply", process=False)
    verts, faces = decimate(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64), 8000)
    masks = [scene.masks[i] for i in train]
    images = [scene.images[i] for i in train]
    blend_source = photo_source(verts, faces, scene.K[train], scene.c2w[train], images, masks)
    tv, tf, uvs, blend, _ = texture_mesh(verts, faces, blend_source, texture_size=512)

    stats: dict = {}
    fitted = refine_texture(tv, tf, uvs, blend, scene.K[train], scene.c2w[train], images, masks,
                            RefineOptions(steps=20, time_budget_s=120.0), stats=stats)
    assert fitted.shape == blend.shape and fitted.dtype == np.uint8
    assert stats["steps"] >= 5 and stats["pixels"] > 300_000, stats
    # Training views, the photos it was fitted to: measured MSE 0.01103 -> 0.01069 (21 steps) on a copy of this run.
    assert stats["mse_after"] < 0.99 * stats["mse_before"], stats
    before = asset_fidelity(tv, tf, uvs, blend, scene, judged)
    after = asset_fidelity(tv, tf, uvs, fitted, scene, judged)
    # Held out, same geometry: the texture alone must not lose (measured 19.44 -> 19.50 dB on covered pixels).
    assert after["coverage"] == before["coverage"]
    assert after["psnr_covered"] > before["psnr_covered"] - 0.02, (before, after)

    # Silhouettes: seam copies of a vertex move together (welded normals), by the offset at which the asset best
    # reproduces the training photos inside their masks (masked PSNR, as judged on held-out views).
    uniq, inverse = np.unique(tv, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    normals = mesh_vertex_normals(uniq, inverse[tf])[inverse]
    offset, scores = silhouette_offset(tv, tf, normals, uvs, fitted, scene.K[train], scene.c2w[train], images, masks)
    assert scores[offset] > scores[0.0] and len(scores) >= 3, scores
    moved = asset_fidelity(tv + offset * normals, tf, uvs, fitted, scene, judged)
    # This 500-step mesh is too small (held-out mask coverage 0.83): measured +0.8 dB at a one-pixel offset.
    assert offset > 0 and moved["coverage"] > after["coverage"] + 0.01, (offset, scores, moved, after)
    assert moved["psnr"] > after["psnr"] + 0.5, (offset, scores, moved, after)

    # Then each outline vertex onto the training masks' edges (the welded mesh: seam copies move together), with
    # the cap the training views score best, as the export does.
    welded_normals = mesh_vertex_normals(uniq, inverse[tf])
    judge = AssetJudge(tf, uvs, fitted, scene.K[train], scene.c2w[train], images, masks)
    refine: dict = {}
    refined = best_refinement(uniq + offset * welded_normals, inverse[tf], welded_normals, inverse, judge,
                              scene.K[train], scene.c2w[train], masks, stats=refine)[inverse]
    sharper = asset_fidelity(refined, tf, uvs, fitted, scene, judged)
    print("held-out masked PSNR: offset", moved, "refined", sharper, refine)
    assert refine["cap_px"] is not None and refine["psnr"][refine["cap_px"]] > refine["psnr"][0.0], refine
    assert refine["views"] == min(32, len(train)) and refine["missed"][-1] < 0.6 * refine["missed"][0], refine
    # The held-out mask pixels the asset misses, measured on two trainings of this run (one and two CPU threads take
    # different paths): 0.076 -> 0.038 and 0.017 -> 0.005 (15.41 -> 17.42 and 19.23 -> 21.24 dB, cap 1.5 px both).
    assert 1 - sharper["coverage"] < 0.6 * (1 - moved["coverage"]), (moved, sharper)
    assert sharper["psnr"] > moved["psnr"] + 1.5, (moved, sharper)
