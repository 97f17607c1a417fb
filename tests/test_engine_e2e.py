"""End to end on the CPU: train on the bundled scene, then judge the surface and held-out views.

Smoke bounds (not the goal; see engine/BENCHMARKS.md): Chamfer-L1 within 5 % of the object's bounding radius and
held-out PSNR >= 20 dB.

A COLMAP capture without masks, trained and taken back to its world frame by normalization.json, is covered by
``tests/test_solve.py::test_fit_on_photos_alone_solves_then_gives_a_mesh_in_place`` (the solve writes a COLMAP
model); its automatic region with clutter in the sparse points by ``tests/test_region.py`` (no training needed).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh
from paths import SAMPLE, needs_sample

from engine.mesh.evaluate import evaluate_mesh

pytestmark = [pytest.mark.slow,
              needs_sample]


def test_preview_reconstructs_the_sample_scene(masked_preview_run):
    run = masked_preview_run.check().folder
    validation = masked_preview_run.last("validation")
    assert validation, "no held-out validation was reported"
    assert validation["psnr"] >= 20.0, validation
    assert validation["mask_iou"] > 0.9, validation

    gt_radius = json.loads((SAMPLE / "scene.json").read_text())["object"]["bounding_radius_normalized"]
    metrics = evaluate_mesh(run / "mesh.ply", SAMPLE / "gt_mesh_normalized.ply", threshold=0.02,
                            n_samples=50_000)["normalized"]
    assert metrics["chamfer_l1"] < 0.05 * gt_radius, metrics
    mesh = trimesh.load(run / "mesh.ply", process=False)
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3]
    assert colors.std() > 10, "vertex colours are flat"


def test_preview_without_masks_keeps_the_object_in_the_foreground(no_mask_preview_run):
    """Masks ignored: the learned background must not swallow the object (it did before configs/no_mask.yaml:
    IoU 0.1-0.4 and Chamfer 17 % of the radius, engine/BENCHMARKS.md). The masks only judge the result."""
    run = no_mask_preview_run.check().folder
    validation = no_mask_preview_run.last("validation")
    # Measured with the shipped no-mask defaults: IoU 0.90 and 0.91 alone, 0.83-0.87 on a shared CPU (CPU training
    # is not bit-reproducible), 0.89 in a test run (2026-12-03, 5626d9a); Chamfer 1.06 % and 1.18 % of the radius
    # (BENCHMARKS.md), 1.27 % at export resolution 128 in that test run. The failure this guards against (the
    # background swallowing the object) gave IoU 0.1-0.4 and 17 %.
    assert validation and validation["mask_iou"] > 0.8, validation
    from engine.run_dir import RunDir

    cfg, model = RunDir(run).load_model("cpu")  # as export and render see it: the last step's sharpness floor holds
    assert float(model.inv_s().detach()) >= cfg.model.min_inv_s.end - 1e-3
    gt_radius = json.loads((SAMPLE / "scene.json").read_text())["object"]["bounding_radius_normalized"]
    metrics = evaluate_mesh(run / "mesh.ply", SAMPLE / "gt_mesh_normalized.ply", threshold=0.02,
                            n_samples=50_000)["normalized"]
    assert metrics["chamfer_l1"] < 0.02 * gt_radius, metrics
