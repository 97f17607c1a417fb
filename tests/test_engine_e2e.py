"""End to end on the CPU: train on the bundled scene, then judge the surface and held-out views.

Smoke bounds (not the goal; see engine/BENCHMARKS.md): Chamfer-L1 within 5 % of the object's bounding radius and
held-out PSNR >= 20 dB.

Training without masks is judged on the photos alone, solved, trained and taken back to the scene's frame by
normalization.json: ``tests/test_solve.py::test_fit_on_photos_alone_solves_then_gives_a_mesh_in_place`` (one
no-mask training for both questions); the automatic region with clutter in the sparse points by
``tests/test_region.py`` (no training needed).
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
