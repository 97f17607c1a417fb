"""Checks the committed sample scene (datasets/sample_scene/data) is complete and self-consistent.

The cameras are checked against the rendered masks (ground-truth vertices must land on foreground pixels and
span the same bounding box), and one view is re-rendered with real Blender to check the data is reproducible.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import trimesh
from PIL import Image, ImageDraw
from scipy import ndimage

from datasets.geometry import project_points
from datasets.sample_scene import SAMPLE_SCENE_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
N_VIEWS, W, H = 40, 400, 300


@pytest.fixture(scope="module")
def scene() -> dict:
    return json.loads((SAMPLE_SCENE_DIR / "scene.json").read_text())


@pytest.fixture(scope="module")
def cams() -> dict[str, np.ndarray]:
    with np.load(SAMPLE_SCENE_DIR / "cameras_sphere.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def masks() -> list[np.ndarray]:
    out = []
    for i in range(N_VIEWS):
        with Image.open(SAMPLE_SCENE_DIR / "mask" / f"{i:03d}.png") as im:
            out.append(np.asarray(im))
    return out


@pytest.fixture(scope="module")
def gt_norm() -> trimesh.Trimesh:
    return trimesh.load(SAMPLE_SCENE_DIR / "gt_mesh_normalized.ply", process=False)


def projection(cams: dict[str, np.ndarray], i: int) -> np.ndarray:
    """(3, 4) P mapping normalized points to pixels, as NeuS builds it."""
    return (cams[f"world_mat_{i}"] @ cams[f"scale_mat_{i}"])[:3, :4]


def project(P: np.ndarray, pts: np.ndarray) -> np.ndarray:
    h = pts @ P[:, :3].T + P[:, 3]
    return h[:, :2] / h[:, 2:3]


def decompose(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Splits a (3, 4) projection into K (3, 3) and an OpenGL camera-to-world (3, 4)."""
    K, R = scipy.linalg.rq(P[:, :3])
    signs = np.diag(np.sign(np.diag(K)))  # make K's diagonal positive
    K, R = K @ signs, signs @ R
    if np.linalg.det(R) < 0:  # P is only defined up to sign
        R, P = -R, -P
    centre = -np.linalg.solve(P[:, :3], P[:, 3])
    c2w = np.concatenate([R.T @ np.diag([1.0, -1.0, -1.0]), centre[:, None]], axis=1)
    return K / K[2, 2], c2w


def test_files_complete_and_well_formed(scene: dict, masks: list[np.ndarray]) -> None:
    images = sorted(p.name for p in (SAMPLE_SCENE_DIR / "image").iterdir())
    assert images == [f"{i:06d}.png" for i in range(N_VIEWS)]
    assert sorted(p.name for p in (SAMPLE_SCENE_DIR / "mask").iterdir()) == [f"{i:03d}.png" for i in range(N_VIEWS)]
    for i in range(N_VIEWS):
        with Image.open(SAMPLE_SCENE_DIR / "image" / f"{i:06d}.png") as im:
            assert im.mode == "RGB" and im.size == (W, H)
            rgb = np.asarray(im)
        fg = masks[i] > 0
        assert masks[i].shape == (H, W) and masks[i].dtype == np.uint8
        assert set(np.unique(masks[i])) == {0, 255}
        assert 0.05 < fg.mean() < 0.5
        # Real textured content in both the object and the background (not flat, not black/white).
        for region in (fg, ~fg):
            pix = rgb[region].astype(np.float64)
            assert 40 < pix.mean() < 215 and pix.std(axis=0).min() > 10
    assert scene["n_views"] == N_VIEWS and scene["image_size"] == [W, H]
    for key in ("scale_mat", "object", "camera", "render", "seed", "blender_version"):
        assert key in scene
    size = sum(p.stat().st_size for p in SAMPLE_SCENE_DIR.rglob("*") if p.is_file())
    assert size < 8.5e6, f"sample scene data is {size / 1e6:.1f} MB"


def test_cameras_npz(cams: dict[str, np.ndarray], scene: dict) -> None:
    for i in range(N_VIEWS):
        for key in ("world_mat", "scale_mat", "world_mat_inv", "scale_mat_inv", "camera_mat"):
            assert cams[f"{key}_{i}"].shape == (4, 4)
        np.testing.assert_allclose(cams[f"world_mat_{i}"][3], [0, 0, 0, 1])
        np.testing.assert_allclose(cams[f"scale_mat_{i}"], scene["scale_mat"])
        np.testing.assert_allclose(cams[f"world_mat_inv_{i}"] @ cams[f"world_mat_{i}"], np.eye(4), atol=1e-9)
    S = np.asarray(scene["scale_mat"])
    # A non-trivial normalization: uniform scale != 1 and a translation.
    assert np.allclose(S[:3, :3], S[0, 0] * np.eye(3)) and abs(S[0, 0] - 1) > 0.5
    assert np.linalg.norm(S[:3, 3]) > 0.3


def test_gt_meshes(gt_norm: trimesh.Trimesh, scene: dict) -> None:
    world = trimesh.load(SAMPLE_SCENE_DIR / "gt_mesh_world.ply", process=False)
    assert len(gt_norm.faces) > 1000 and np.array_equal(gt_norm.faces, world.faces)
    S = np.asarray(scene["scale_mat"])
    np.testing.assert_allclose(gt_norm.vertices @ S[:3, :3].T + S[:3, 3], world.vertices, atol=1e-4)
    radius = np.linalg.norm(gt_norm.vertices, axis=1).max()
    assert 0.6 <= radius <= 0.75
    assert radius == pytest.approx(scene["object"]["bounding_radius_normalized"], abs=1e-5)


def test_gt_vertices_project_into_masks(cams: dict, masks: list[np.ndarray], gt_norm: trimesh.Trimesh) -> None:
    verts = np.asarray(gt_norm.vertices)
    for i in range(N_VIEWS):
        uv = project(projection(cams, i), verts)
        px = np.rint(uv).astype(int)
        assert (px >= 0).all() and (px[:, 0] < W).all() and (px[:, 1] < H).all(), f"view {i}"
        inside = masks[i][px[:, 1], px[:, 0]] > 0
        # Misses are silhouette vertices rounded onto a boundary pixel less than half covered.
        assert inside.mean() >= 0.95, f"view {i}: only {inside.mean():.3f} of vertices land on the mask"
        near = ndimage.binary_dilation(masks[i] > 0, np.ones((3, 3), bool))[px[:, 1], px[:, 0]]
        assert near.all(), f"view {i}: vertices more than a pixel off the mask"
        # The silhouette's extent matches the projected mesh: catches sub-pixel-level camera offsets.
        rows, cols = np.nonzero(masks[i])
        mask_box = np.array([cols.min(), rows.min(), cols.max(), rows.max()])
        mesh_box = np.concatenate([uv.min(0), uv.max(0)])
        assert np.abs(mask_box - mesh_box).max() < 1.5, f"view {i}: {mask_box} vs {mesh_box}"


def test_masks_match_rendered_silhouettes(cams: dict, masks: list[np.ndarray], gt_norm: trimesh.Trimesh) -> None:
    """Rasterizes the GT mesh with P and compares it with the rendered mask at sub-pixel precision.

    A half-pixel error in the pixel convention (u = ndc_x * W - 0.5) shifts the silhouette centroid by 0.5 px.
    """
    ss = 4  # supersampling
    faces = np.asarray(gt_norm.faces)
    ys, xs = np.mgrid[:H, :W]
    for i in range(0, N_VIEWS, 5):
        uv = project(projection(cams, i), np.asarray(gt_norm.vertices))
        # Supersampled pixel-centre coordinates; Pillow floors polygon vertices, so +0.5 makes it round.
        q = (uv + 0.5) * ss - 0.5 + 0.5
        canvas = Image.new("L", (W * ss, H * ss), 0)
        draw = ImageDraw.Draw(canvas)
        for tri in q[faces]:
            draw.polygon([tuple(p) for p in tri], fill=255)
        cov = np.asarray(canvas, dtype=np.float64).reshape(H, ss, W, ss).mean(axis=(1, 3)) / 255.0
        m = masks[i] > 0
        centroid_mesh = np.array([(cov * xs).sum(), (cov * ys).sum()]) / cov.sum()
        centroid_mask = np.array([xs[m].mean(), ys[m].mean()])
        assert np.abs(centroid_mesh - centroid_mask).max() < 0.15, f"view {i}: {centroid_mesh} vs {centroid_mask}"
        r = cov >= 0.5
        assert (r & m).sum() / (r | m).sum() > 0.98, f"view {i}"


def test_principal_point_off_centre_and_decomposition(cams: dict, scene: dict, gt_norm: trimesh.Trimesh) -> None:
    K_json = np.asarray(scene["camera"]["K"])
    verts = np.asarray(gt_norm.vertices)
    centres = []
    for i in range(N_VIEWS):
        P = projection(cams, i)
        K, c2w = decompose(P)
        np.testing.assert_allclose(K, K_json, rtol=1e-9, atol=1e-9)
        uv, depth = project_points(K, c2w, verts)
        assert (depth > 0).all()
        np.testing.assert_allclose(uv, project(P, verts), atol=1e-6)
        centres.append(c2w[:, 3])
    fx, fy, cx, cy = K_json[0, 0], K_json[1, 1], K_json[0, 2], K_json[1, 2]
    assert fx == pytest.approx(fy) and K_json[0, 1] == 0
    # Off-centre principal point (the image centre in pixel-centre coordinates is ((W-1)/2, (H-1)/2)).
    assert abs(cx - (W - 1) / 2) > 5 and abs(cy - (H - 1) / 2) > 5
    dist = np.linalg.norm(centres, axis=1)
    assert dist.min() > 2.5 and dist.max() < 3.3  # normalized units, outside the unit sphere


@pytest.mark.blender
def test_rerender_one_view_matches(tmp_path: Path, cams: dict) -> None:
    if importlib.util.find_spec("bpy") is None:
        pytest.skip("bpy (Blender as a Python module) is not installed")
    out = tmp_path / "scene"
    # A subprocess: the script resets Blender to factory settings, which must not touch this process.
    proc = subprocess.run(
        [sys.executable, "-m", "datasets.sample_scene.render_sample", "--out", str(out), "--limit", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with np.load(out / "cameras_sphere.npz") as z:
        np.testing.assert_allclose(z["world_mat_0"], cams["world_mat_0"], atol=1e-9)
    for sub, name in (("image", "000000.png"), ("mask", "000.png")):
        new = np.asarray(Image.open(out / sub / name)).astype(np.int16)
        ref = np.asarray(Image.open(SAMPLE_SCENE_DIR / sub / name)).astype(np.int16)
        diff = np.abs(new - ref)
        # Fixed seeds give identical pixels on one machine; leave room for other CPUs' denoiser rounding.
        assert diff.mean() < 0.5 and (diff > 20).mean() < 0.005, f"{sub}/{name}: mean diff {diff.mean():.3f}"
