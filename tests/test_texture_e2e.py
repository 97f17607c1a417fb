"""Photo texturing end to end on the bundled scene: a trained run with held-out views, textured with the field's
colours and with the photos, judged by the asset-fidelity command (rendered in the engine's rasteriser).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from engine_helpers import SAMPLE, run_engine

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SAMPLE / "cameras_sphere.npz").is_file(), reason="bundled sample scene missing")]


@pytest.fixture(scope="module")
def held_out_run(masked_preview_run, tmp_path_factory):
    """A private copy (exports write into it) of the shared masked preview run with every 8th view held out."""
    return masked_preview_run.check().copy_to(tmp_path_factory.mktemp("texture") / "run")


def test_photo_texture_beats_the_field_texture_and_is_within_2_db_of_the_neural_render(held_out_run):
    """On the held-out views, at a quarter of the photos' size (the neural render of 5 views costs ~12 s of CPU
    there, ~40 s at half size): the photo texture beats the field's colours, and it is at most 2 dB below the neural
    render on the same masked pixels (issue 20)."""
    import subprocess
    import sys

    from engine_helpers import REPO, engine_env

    def fidelity(*args: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "engine", "fidelity", str(held_out_run), "--json", *args],
                             cwd=REPO, env=engine_env(), capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout)

    def judge(color: str, neural: bool) -> dict:
        code, events, err = run_engine("export", str(held_out_run), "--color", color, "--texture-size", "512",
                                       "--resolution", "128", "--progress", "jsonl", timeout=900)
        assert code == 0, err[-3000:]
        result = fidelity("--downscale", "4", *(() if neural else ("--no-neural",)))
        print(color, {k: result.get(k) for k in ("psnr", "psnr_covered", "psnr_interior", "coverage", "neural_psnr")})
        # The export's own figure (fidelity.json, `done`'s `fidelity`: full size, no neural render) is the
        # command's on the files it wrote.
        own = json.loads((held_out_run / "fidelity.json").read_text())
        assert events[-1]["event"] == "done" and events[-1]["fidelity"] == own
        assert own["views"] == result["views"] and own["held_out"] and own["masked"]
        if not neural:
            full = fidelity("--no-neural")
            assert own["psnr"] == pytest.approx(full["psnr"], abs=0.01), (own, full)
            assert own["coverage"] == pytest.approx(full["coverage"], abs=1e-3), (own, full)
            assert own["psnr_interior"] == pytest.approx(full["psnr_interior"], abs=0.01), (own, full)
        return result

    field = judge("field", neural=False)
    photos = judge("photos", neural=True)
    assert field["held_out"] and photos["held_out"]
    assert field["views"] == photos["views"] and len(photos["views"]) >= 3
    assert photos["psnr"] > field["psnr"], (photos, field)
    assert photos["psnr_covered"] > field["psnr_covered"] + 1.0, (photos, field)
    # A photo's pixels on the mask's edge blend in what lies behind the object, which no asset shows: measured +3.8 dB
    # and, on a training that covers 98 % of the held-out masks (two CPU threads: another path), +0.75 dB.
    assert photos["psnr_interior"] > photos["psnr"] + 0.5, photos
    # Same geometry either way; a 500-step run meshed at 128 covers ~85 % of the masks (2048 texels: BENCHMARKS).
    assert photos["coverage"] == pytest.approx(field["coverage"], abs=0.01) and photos["coverage"] > 0.75
    # The exported asset against the neural render, same pixels: measured 13.14 dB against 14.13 dB.
    assert photos["psnr"] > photos["neural_psnr"] - 2.0, photos


def test_depth_map_visibility_agrees_with_sdf_marching(held_out_run):
    """The z-buffer's verdict on trained-mesh points vs sphere tracing the trained SDF towards each camera."""
    import trimesh
    from sdf_reference import segment_occluded

    import datasets
    from engine.mesh.photo import PhotoOptions, depth_visible
    from engine.mesh.raster import rasterize_view
    from engine.run_dir import RunDir

    cfg, model = RunDir(held_out_run).load_model("cpu")
    scene = datasets.load(SAMPLE)
    mesh = trimesh.load(held_out_run / "mesh.ply", process=False)
    pts, face_idx = trimesh.sample.sample_surface(mesh, 1500, seed=1)
    nrm = np.asarray(mesh.face_normals)[face_idx]
    v = torch.from_numpy(np.asarray(mesh.vertices, np.float32))
    f = torch.from_numpy(np.asarray(mesh.faces, np.int64))
    opts = PhotoOptions()
    agree = total = 0
    for i in (2, scene.n_views // 2):
        K, c2w = torch.from_numpy(scene.K[i]).float(), torch.from_numpy(scene.c2w[i]).float()
        depth = rasterize_view(v, f, K, c2w, scene.height, scene.width).depth
        to_cam = scene.c2w[i][:, 3] - pts
        cos = (to_cam * nrm).sum(1) / np.linalg.norm(to_cam, axis=1)
        sel = np.nonzero(cos > opts.min_cos)[0]
        p = torch.from_numpy(pts[sel].astype(np.float32))
        vis, _, _ = depth_visible(depth, K, c2w, p, torch.from_numpy(cos[sel].astype(np.float32)), opts)
        start = torch.from_numpy((pts[sel] + 1e-2 * nrm[sel]).astype(np.float32))
        end = c2w[:, 3].expand_as(start).contiguous()
        occluded = segment_occluded(lambda x: model.geometry.sdf(x), start, end, float(model.radius))
        agree += int((vis == ~occluded).sum())
        total += len(sel)
    assert total > 500
    assert agree / total > 0.95, (agree, total)


def test_held_out_views_colour_nothing_and_the_levelled_fallback_matches_unseen_photos(held_out_run):
    """The views `engine fidelity` judges on never colour the asset; the field's colour, mapped onto the photos'
    on half the surface the photos see, is closer to the photos on the other half than the raw field."""
    import datasets
    from engine.export import texturing_views
    from engine.jobs.fidelity import fidelity_views
    from engine.mesh.photo import PhotoOptions, blend_views, fit_fallback_levels, prepare_views
    from engine.run_dir import RunDir

    cfg, model = RunDir(held_out_run).load_model("cpu")
    scene = datasets.load(SAMPLE)
    train = texturing_views(scene, int(cfg.data.holdout_every))
    judged, held_out = fidelity_views(scene.n_views, int(cfg.data.holdout_every))
    assert held_out and len(judged) >= 3 and not set(judged) & {int(i) for i in train}
    assert len(train) + len(judged) == scene.n_views

    import trimesh

    mesh = trimesh.load(held_out_run / "mesh.ply", process=False)
    pts, face_idx = trimesh.sample.sample_surface(mesh, 20000, seed=2)
    pts = torch.from_numpy(np.asarray(pts, np.float32))
    nrm = torch.from_numpy(np.asarray(mesh.face_normals, np.float32)[face_idx])
    opts = PhotoOptions()
    views = prepare_views(mesh.vertices, mesh.faces, scene.K[train], scene.c2w[train], scene.images[train],
                          scene.masks[train], opts)
    half = torch.arange(len(pts)) % 2 == 0
    levelled = fit_fallback_levels(views, pts[half], nrm[half], model.albedo, opts)
    with torch.no_grad():
        blend, wsum = blend_views(views, pts[~half], nrm[~half], opts)
        seen = wsum > 0
        assert int(seen.sum()) > 5000
        raw_err = ((model.albedo(pts[~half][seen], nrm[~half][seen]) - blend[seen]) ** 2).mean()
        levelled_err = ((levelled(pts[~half][seen], nrm[~half][seen]) - blend[seen]) ** 2).mean()
    assert float(levelled_err) < float(raw_err), (float(levelled_err), float(raw_err))


def test_colouring_views_are_training_views_spread_over_the_capture():
    """``export.color_views`` on the bundled cameras (35 training views on three rings, every 8th held out): 10 kept
    are training views only, and no training view is further than 31 degrees from a kept one (measured 30.4; 10
    random training views: 45.7-61.6 over 20 draws); a cap above the count keeps them all."""
    import datasets
    from engine.export import texturing_views

    cams = datasets.load_cameras(SAMPLE)
    train = texturing_views(cams, 8)
    kept = texturing_views(cams, 8, 10)
    assert len(train) == 35 and len(kept) == 10 and set(kept.tolist()) <= set(train.tolist())
    assert np.array_equal(texturing_views(cams, 8, 64), train)
    d = cams.c2w[:, :3, 3] / np.linalg.norm(cams.c2w[:, :3, 3], axis=1, keepdims=True)
    assert np.degrees(np.arccos(np.clip((d[train] @ d[kept].T).max(1), -1, 1))).max() < 31.0
