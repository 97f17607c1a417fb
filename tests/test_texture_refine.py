"""The texel fit (engine/mesh/texture_refine.py) on a real fit of the bundled scene: the fitted texture reproduces the
training photos better than the photo blend it starts from, and the held-out views do not get worse."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import SAMPLE

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SAMPLE / "cameras_sphere.npz").is_file(), reason="bundled sample scene missing")]


def test_fitted_texture_beats_the_blend_on_training_views_and_keeps_held_out_views(masked_preview_run):
    import trimesh

    import datasets
    from engine.commands import fidelity_views
    from engine.export import texturing_views
    from engine.mesh.extract import decimate
    from engine.mesh.fidelity import asset_fidelity
    from engine.mesh.photo import photo_source
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
    tv, tf, uvs, blend = texture_mesh(verts, faces, blend_source, texture_size=512)

    stats: dict = {}
    fitted = refine_texture(tv, tf, uvs, blend, scene.K[train], scene.c2w[train], images, masks,
                            RefineOptions(steps=25, time_budget_s=60.0), stats=stats)
    assert fitted.shape == blend.shape and fitted.dtype == np.uint8
    assert stats["steps"] == 25 and stats["pixels"] > 100_000, stats
    # Training views (the photos it was fitted to): measured MSE 0.0072 -> 0.0043 at 500 steps of training.
    assert stats["mse_after"] < 0.8 * stats["mse_before"], stats
    before = asset_fidelity(tv, tf, uvs, blend, scene, judged)
    after = asset_fidelity(tv, tf, uvs, fitted, scene, judged)
    # Held out: same geometry, so the same coverage; the texture alone must not lose (measured +0.3 dB).
    assert after["coverage"] == before["coverage"]
    assert after["psnr_covered"] > before["psnr_covered"], (before, after)
