"""User region (``data.region``): the unit sphere becomes the user's sphere or box (world frame), cameras stay
where they are in the world, the choice is recorded in normalization.json, and a box crops the mesh."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh
from engine_helpers import SAMPLE, TINY, run_engine

import datasets

# The bundled scene's world frame: the object sits around (0.4, -0.3, 1.1) (scene.json scale_mat).
CENTER = [0.4, -0.3, 1.1]


def world_centres(cams) -> np.ndarray:
    return cams.c2w[:, :, 3] @ cams.scale_mat[:3, :3].T + cams.scale_mat[:3, 3]


def test_sphere_region_becomes_the_unit_sphere_and_keeps_the_cameras_in_place():
    auto = datasets.load_cameras(SAMPLE)
    sphere = datasets.load_cameras(SAMPLE, region={"type": "sphere", "center": CENTER, "radius": 1.2})
    np.testing.assert_allclose(sphere.scale_mat[:3, 3], CENTER)
    np.testing.assert_allclose(np.diag(sphere.scale_mat)[:3], 1.2)
    np.testing.assert_allclose(world_centres(sphere), world_centres(auto), atol=1e-9)
    np.testing.assert_allclose(sphere.c2w[:, :, :3], auto.c2w[:, :, :3], atol=1e-12)  # axes unchanged
    assert np.linalg.norm(sphere.c2w[:, :, 3], axis=1).min() > 1.0


def test_box_region_uses_its_circumscribed_sphere():
    half = [0.6, 0.5, 0.4]
    box = datasets.load_cameras(SAMPLE, region={"type": "box", "center": CENTER, "half_size": half})
    assert box.scale_mat[0, 0] == pytest.approx(np.linalg.norm(half))


@pytest.mark.parametrize(("region", "needle"), [
    ({"type": "sphere", "center": CENTER, "radius": 50.0}, "contains 40 camera"),
    ({"type": "sphere", "center": [0, 0], "radius": 1.0}, "data.region.center"),
    ({"type": "sphere", "center": CENTER, "radius": -1}, "data.region.radius"),
    ({"type": "box", "center": CENTER, "half_size": [1, 0, 1]}, "data.region.half_size"),
    ({"type": "cube", "center": CENTER}, "data.region.type"),
])
def test_bad_regions_are_named(region, needle):
    with pytest.raises(datasets.DatasetError, match=needle):
        datasets.load_cameras(SAMPLE, region=region)


def test_fit_records_the_region_and_crops_the_mesh_to_a_box(tmp_path):
    run = tmp_path / "run"
    half = [0.5, 0.5, 0.3]
    code, events, err = run_engine("fit", str(SAMPLE), "--out", str(run), "--steps", "12", "--progress", "jsonl",
                                   *TINY, "--set", "data.region.type=box",
                                   "--set", f"data.region.center=[{','.join(map(str, CENTER))}]",
                                   "--set", f"data.region.half_size=[{','.join(map(str, half))}]")
    assert code == 0, err[-3000:]
    normalization = json.loads((run / "normalization.json").read_text())
    region = normalization["region"]
    assert region["type"] == "box" and region["half_size"] == half
    np.testing.assert_allclose(region["center"], CENTER)
    assert region["radius"] == pytest.approx(np.linalg.norm(half))
    mesh = trimesh.load(run / "mesh.ply", process=False)
    limit = np.array(half) / np.linalg.norm(half)
    assert len(mesh.faces) > 0
    assert np.all(np.abs(mesh.vertices) <= limit + 1e-6), np.abs(mesh.vertices).max(axis=0)


def test_a_bad_region_is_refused_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    code, events, err = run_engine("fit", str(SAMPLE), "--out", str(run), "--steps", "5", "--progress", "jsonl",
                                   "--set", "data.region.type=sphere", "--set", "data.region.radius=1.0")
    assert code == 2 and "data.region.center" in events[-1]["message"]
    assert not run.exists()


def test_a_textured_background_around_the_cameras_does_not_inflate_the_auto_region(tmp_path):
    """SfM on a real capture triangulates the background too (the bundled renders' dome gave 30 % of the sparse
    points, at 3x the camera distance): points beyond the cameras must not set the object's region."""
    from datasets.sample_scene.to_colmap import write_colmap

    clean = datasets.load_cameras(write_colmap(tmp_path / "clean"))
    cluttered_dir = write_colmap(tmp_path / "cluttered")
    points = cluttered_dir / "sparse" / "0" / "points3D.txt"
    lines = points.read_text().splitlines()
    rng = np.random.default_rng(0)
    centre, cam_dist = clean.scale_mat[:3, 3], float(np.linalg.norm(world_centres(clean) - clean.scale_mat[:3, 3],
                                                                   axis=1).max())
    dome = rng.normal(size=(len(lines) // 2, 3))
    dome = centre + 3 * cam_dist * dome / np.linalg.norm(dome, axis=1, keepdims=True)
    lines += [f"{100000 + k} {x} {y} {z} 128 128 128 0.5" for k, (x, y, z) in enumerate(dome)]
    points.write_text("\n".join(lines) + "\n")
    cluttered = datasets.load_cameras(cluttered_dir)
    assert cluttered.scale_mat[0, 0] == pytest.approx(clean.scale_mat[0, 0], rel=0.05)
