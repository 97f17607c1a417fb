"""datasets: DTU loading on the real scan 65, masks against cameras, bad input, the downscale tool, rays."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import DTU, REPO, centre_aware, dtu_or_skip, project_with
from paths import SAMPLE, needs_sample

import datasets
from datasets import DatasetError
from datasets.geometry import decompose_projection, project_points, projection_matrix

N_DTU = 49


def npz_projections(npz: Path, factor: float = 1) -> np.ndarray:
    """(N, 3, 4) NeuS projections P_i = (world_mat_i @ scale_mat_i)[:3] (normalized frame), in the downscaled grid."""
    data = np.load(npz)
    n = len([k for k in data.files if k.startswith("world_mat_") and "inv" not in k])
    P = [(data[f"world_mat_{i}"].astype(np.float64) @ data[f"scale_mat_{i}"].astype(np.float64))[:3] for i in range(n)]
    return centre_aware(factor) @ np.stack(P)


def random_ball(n: int, seed: int = 0, radius: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return x / np.linalg.norm(x, axis=1, keepdims=True) * radius * rng.uniform(0, 1, (n, 1)) ** (1 / 3)


def make_small_dtu(dst: Path, views=(0, 16, 32)) -> Path:
    """A 3-view DTU-layout copy of scan 65 (full-size images and masks, npz re-indexed 0..2)."""
    src = dtu_or_skip()
    (dst / "image").mkdir(parents=True)
    (dst / "mask").mkdir()
    data = np.load(src / "cameras_sphere.npz")
    arrays = {}
    for new, old in enumerate(views):
        shutil.copy(src / "image" / f"{old:06d}.png", dst / "image" / f"{new:06d}.png")
        shutil.copy(src / "mask" / f"{old:03d}.png", dst / "mask" / f"{new:03d}.png")
        for key in ("world_mat", "scale_mat", "camera_mat", "world_mat_inv", "scale_mat_inv", "camera_mat_inv"):
            arrays[f"{key}_{new}"] = data[f"{key}_{old}"]
    np.savez(dst / "cameras_sphere.npz", **arrays)
    return dst


def edit_npz(path: Path, drop=(), **replace) -> None:
    arrays = dict(np.load(path))
    for key in drop:
        del arrays[key]
    arrays.update(replace)
    np.savez(path, **arrays)


@pytest.fixture(scope="module")
def dtu_scene() -> datasets.Scene:
    """All 49 full-size views (about 1.5 GB of float32), loaded once for the module."""
    return datasets.load(dtu_or_skip())


# --- cameras ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_dtu_cameras_project_like_the_npz_for_every_view(factor):
    root = dtu_or_skip()
    cams = datasets.load_cameras(root, downscale=factor)
    assert cams.format == "dtu" and cams.n_views == N_DTU
    assert (cams.width, cams.height) == (1600 // factor, 1200 // factor)
    assert cams.K.shape == (N_DTU, 3, 3) and cams.c2w.shape == (N_DTU, 3, 4)
    assert cams.K.dtype == np.float64 and cams.c2w.dtype == np.float64
    assert cams.names == [f"{i:06d}.png" for i in range(N_DTU)]
    assert [p.name for p in cams.mask_paths] == [f"{i:03d}.png" for i in range(N_DTU)]
    np.testing.assert_allclose(cams.scale_mat, np.load(root / "cameras_sphere.npz")["scale_mat_0"], rtol=1e-7)

    pts = random_ball(2000, seed=factor)
    expected = project_with(npz_projections(root / "cameras_sphere.npz", factor), pts)
    uv, depth = project_points(cams.K, cams.c2w, pts)
    err = np.abs(uv - expected).max(axis=(1, 2))  # per view
    assert err.max() < 1e-3, f"worst view {err.argmax()}: {err.max():.2e} px"
    assert (depth > 0).all()  # the whole unit sphere is in front of every camera

    # Proper cameras: rotations, positive focal lengths, K[2, 2] = 1, unit up.
    R = cams.c2w[:, :, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)
    assert (cams.K[:, 0, 0] > 0).all() and (cams.K[:, 1, 1] > 0).all()
    np.testing.assert_allclose(cams.K[:, 2], np.broadcast_to([0, 0, 1], (N_DTU, 3)))
    assert np.linalg.norm(cams.up) == pytest.approx(1.0)
    # Cameras are outside the unit sphere and look at the object (the optical axis passes near the origin).
    centres = cams.c2w[:, :, 3]
    assert (np.linalg.norm(centres, axis=1) > 1.0).all()
    axis = -cams.c2w[:, :, 2]
    miss = np.linalg.norm(np.cross(axis, -centres), axis=1)  # distance of the origin to the axis
    assert (miss < 0.5).all()


def test_decompose_projection_recovers_k_r_t():
    rng = np.random.default_rng(3)
    for _ in range(20):
        K = np.array(
            [
                [rng.uniform(100, 3000), rng.uniform(-2, 2), rng.uniform(0, 800)],
                [0, rng.uniform(100, 3000), rng.uniform(0, 600)],
                [0, 0, 1],
            ]
        )
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        R = q * np.sign(np.diag(r))
        if np.linalg.det(R) < 0:
            R[:, 0] *= -1
        t = rng.normal(size=3) * 5
        scale = rng.uniform(0.01, 100) * rng.choice([-1, 1])  # P is defined up to scale, sign included
        K2, R2, t2 = decompose_projection(scale * K @ np.c_[R, t])
        np.testing.assert_allclose(K2, K, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(R2, R, atol=1e-9)
        np.testing.assert_allclose(t2, t, atol=1e-8)
    with pytest.raises(ValueError, match="singular"):
        decompose_projection(np.array([[1.0, 2, 3, 4], [2, 4, 6, 1], [0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="non-finite"):
        decompose_projection(np.full((3, 4), np.nan))


# --- pixels -----------------------------------------------------------------------------------------------------


def test_dtu_scene_pixels_match_the_files(dtu_scene):
    from PIL import Image

    s = dtu_scene
    assert isinstance(s, datasets.CameraSet)
    assert s.images.shape == (N_DTU, 1200, 1600, 3) and s.images.dtype == np.uint8
    assert s.masks.shape == (N_DTU, 1200, 1600) and s.masks.dtype == np.bool_
    assert (s.n_views, s.height, s.width) == (N_DTU, 1200, 1600)
    for i in (0, 25, 48):
        np.testing.assert_array_equal(s.images[i], np.asarray(Image.open(s.image_paths[i])))
        mask = np.asarray(Image.open(s.mask_paths[i]).convert("L")) > 127
        np.testing.assert_array_equal(s.masks[i], mask)
    fg = s.masks.mean(axis=(1, 2))
    assert (fg > 0.05).all() and (fg < 0.8).all(), fg
    sub = s.subset([5, 2])
    assert isinstance(sub, datasets.Scene) and sub.names == ["000005.png", "000002.png"]
    np.testing.assert_array_equal(sub.images[1], s.images[2])
    np.testing.assert_array_equal(sub.K[0], s.K[5])


def _carve(K, c2w, masks, pairing, res=64):
    """Visual hull on a res^3 grid of the unit sphere: voxels whose centre falls inside every mask that sees it.

    ``pairing[i]`` is the index of the mask used for view i.
    """
    g = (np.arange(res) + 0.5) / res * 2 - 1
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    in_ball = np.linalg.norm(pts, axis=1) < 1
    occ = np.ones(in_ball.sum(), bool)
    H, W = masks.shape[1:]
    # P = K [R | t] of the loaded cameras: one BLAS product for all views (project_points is checked above).
    h = np.c_[pts[in_ball], np.ones(len(occ))] @ projection_matrix(K, c2w).transpose(0, 2, 1)
    depth = h[..., 2]
    u, v = np.round(h[..., 0] / depth).astype(int), np.round(h[..., 1] / depth).astype(int)
    for i in range(len(K)):
        seen = (u[i] >= 0) & (u[i] < W) & (v[i] >= 0) & (v[i] < H) & (depth[i] > 0)
        fg = np.zeros(len(occ), bool)
        fg[seen] = masks[pairing[i]][v[i][seen], u[i][seen]] > 0.5
        occ &= fg | ~seen
    full = np.zeros(len(pts), bool)
    full[in_ball] = occ
    return pts, full.reshape(res, res, res)


def _hull_recall(K, c2w, masks, pairing, occ, views, n_rays=300):
    """Per view: fraction of rays through random mask pixels that pass through the visual hull."""
    res = occ.shape[0]
    rng = np.random.default_rng(0)
    out = []
    for i in views:
        vv, uu = np.nonzero(masks[pairing[i]] > 0.5)
        pick = rng.choice(len(vv), n_rays, replace=False)
        # Rays through the pixel centres (u, v): K^-1 [u, v, 1] in OpenCV axes, flipped to OpenGL, then rotated.
        pix = np.stack([uu[pick], vv[pick], np.ones(n_rays)], axis=1)
        d = (pix @ np.linalg.inv(K[i]).T * [1.0, -1.0, -1.0]) @ c2w[i, :, :3].T
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        o = np.broadcast_to(c2w[i, :, 3], d.shape)
        b = np.sum(o * d, 1)
        disc = b * b - (np.sum(o * o, 1) - 1)  # ray / unit sphere intersection
        sq = np.sqrt(np.maximum(disc, 0))
        t = (-b - sq)[:, None] + np.linspace(0, 1, 256)[None] * (2 * sq)[:, None]
        p = o[:, None] + t[..., None] * d[:, None]
        idx = np.clip(((p + 1) / 2 * res).astype(int), 0, res - 1)
        out.append((occ[idx[..., 0], idx[..., 1], idx[..., 2]].any(1) & (disc > 0)).mean())
    return np.array(out)


def test_dtu_masks_line_up_with_the_cameras(dtu_scene):
    """The 49 masks carve a consistent visual hull: rays through any view's mask pixels hit it.

    With wrong cameras (or masks paired with the wrong views) the hull erodes and those rays miss; the negative
    control below (masks shifted by one view) shows the check is sensitive to that.
    """
    s = dtu_scene
    identity = np.arange(N_DTU)
    pts, occ = _carve(s.K, s.c2w, s.masks, identity)
    fraction = occ.mean()
    assert 0.02 < fraction < 0.4, fraction  # a solid object, well inside the unit sphere
    views = range(0, N_DTU, 8)
    recall = _hull_recall(s.K, s.c2w, s.masks, identity, occ, views)
    assert recall.min() > 0.97, recall
    # The hull's centroid and the unit sphere's origin project inside every mask.
    centroid = pts[occ.ravel()].mean(axis=0)
    for point in (centroid, np.zeros(3)):
        uv, _ = project_points(s.K, s.c2w, point[None])
        u, v = np.round(uv[:, 0, 0]).astype(int), np.round(uv[:, 0, 1]).astype(int)
        assert s.masks[np.arange(N_DTU), v, u].all()

    shifted = np.roll(identity, 1)  # view i gets the mask of view i - 1
    _, occ_bad = _carve(s.K, s.c2w, s.masks, shifted)
    recall_bad = _hull_recall(s.K, s.c2w, s.masks, shifted, occ_bad, views)
    assert occ_bad.sum() < 0.6 * occ.sum()
    assert recall_bad.mean() < 0.85, recall_bad


def test_downscaled_pixels_are_box_filtered_and_consistent_with_k(tmp_path, dtu_scene):
    root = make_small_dtu(tmp_path / "scan", views=(0, 16, 32))
    full = dtu_scene
    for factor in (2, 3):
        half = datasets.load(root, downscale=factor)
        h, w = 1200 // factor, 1600 // factor
        assert half.images.shape == (3, h, w, 3) and half.masks.shape == (3, h, w)
        for new, old in enumerate((0, 16, 32)):
            crop = full.images[old, : h * factor, : w * factor]
            box = crop.reshape(h, factor, w, factor, 3).mean(axis=(1, 3))
            assert np.abs(half.images[new].astype(np.float64) - box).max() <= 1 + 1e-6  # uint8 levels
            mask_box = full.masks[old, : h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3))
            certain = np.abs(mask_box - 0.5) > 0.1
            np.testing.assert_array_equal(half.masks[new][certain], (mask_box > 0.5)[certain])
        np.testing.assert_allclose(half.K, datasets.load_cameras(DTU, downscale=factor).K[[0, 16, 32]], rtol=1e-12)


def test_images_pair_with_views_by_sorted_order_whatever_their_names(tmp_path):
    root = make_small_dtu(tmp_path / "scan")
    (root / "image").rename(root / "images")
    (root / "mask").rename(root / "masks")
    for i, name in enumerate(("view_a.png", "view_b.png", "view_c.png")):
        (root / "images" / f"{i:06d}.png").rename(root / "images" / name)
        (root / "masks" / f"{i:03d}.png").rename(root / "masks" / f"m{i + 8}.png")  # natural order m8, m9, m10
    cams = datasets.load_cameras(root)
    assert cams.names == ["view_a.png", "view_b.png", "view_c.png"]
    assert [p.name for p in cams.mask_paths] == ["m8.png", "m9.png", "m10.png"]
    expected = project_with(npz_projections(root / "cameras_sphere.npz"), random_ball(100))
    uv, _ = project_points(cams.K, cams.c2w, random_ball(100))
    assert np.abs(uv - expected).max() < 1e-3


def test_hidden_files_beside_the_images_are_ignored(tmp_path):
    # macOS writes "._<name>" metadata files (not images) next to every file it copies to a non-Apple disk.
    root = make_small_dtu(tmp_path / "scan")
    for folder, name in (("image", "000000.png"), ("mask", "000.png")):
        (root / folder / f"._{name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        (root / folder / ".hidden.png").write_bytes((root / folder / name).read_bytes())
    cams = datasets.load_cameras(root)
    assert cams.names == ["000000.png", "000001.png", "000002.png"]
    assert [p.name for p in cams.mask_paths] == ["000.png", "001.png", "002.png"]


def test_cameras_file_option_and_format_detection(tmp_path):
    root = make_small_dtu(tmp_path / "scan")
    assert datasets.detect_format(root) == "dtu"
    (root / "cameras_sphere.npz").rename(root / "cams_other.npz")
    cams = datasets.load_cameras(root, cameras_file="cams_other.npz")
    assert cams.n_views == 3
    with pytest.raises(DatasetError, match="cameras_sphere.npz"):
        datasets.load_cameras(root, format="dtu")


# --- bad input --------------------------------------------------------------------------------------------------


def _corrupt_idat(path: Path) -> None:
    """Overwrites the middle of a PNG's compressed data, keeping the header and the IEND chunk intact."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4096] = bytes((b * 7 + 13) % 256 for b in range(4096))
    path.write_bytes(bytes(data))


def _resave_half(path: Path) -> None:
    from PIL import Image

    im = Image.open(path)
    im.resize((im.width // 2, im.height // 2)).save(path)


def _pad_world_mat_keys(npz: Path) -> None:
    """world_mat_0 -> world_mat_00 ...: names the loader must not take for the canonical ones."""
    with np.load(npz) as data:
        arrays = {re.sub(r"^world_mat_(\d+)$", lambda m: f"world_mat_{int(m[1]):02d}", k): data[k] for k in data.files}
    np.savez(npz, **arrays)


BAD_DTU_CASES = {
    "zero-padded world_mat keys": (
        lambda r: _pad_world_mat_keys(r / "cameras_sphere.npz"),
        "cameras_sphere.npz",
        "missing key world_mat_0",
    ),
    "missing world_mat key": (
        lambda r: edit_npz(r / "cameras_sphere.npz", drop=["world_mat_1"]),
        "cameras_sphere.npz",
        "world_mat_1",
    ),
    "missing scale_mat key": (
        lambda r: edit_npz(r / "cameras_sphere.npz", drop=["scale_mat_2"]),
        "cameras_sphere.npz",
        "scale_mat_2",
    ),
    "singular projection": (
        lambda r: edit_npz(r / "cameras_sphere.npz", world_mat_1=np.diag([1.0, 1.0, 0.0, 1.0])),
        "cameras_sphere.npz",
        "world_mat_1",
    ),
    "non-finite matrix": (
        lambda r: edit_npz(r / "cameras_sphere.npz", scale_mat_0=np.full((4, 4), np.inf)),
        "cameras_sphere.npz",
        "scale_mat_0",
    ),
    "npz is not an archive": (
        lambda r: (r / "cameras_sphere.npz").write_bytes(b"not a zip file"),
        "cameras_sphere.npz",
        "npz",
    ),
    "missing image": (lambda r: (r / "image" / "000002.png").unlink(), "image", "3 views"),
    "extra image": (
        lambda r: shutil.copy(r / "image" / "000000.png", r / "image" / "000099.png"),
        "000099.png",
        "extra image",
    ),
    "no image folder": (lambda r: shutil.rmtree(r / "image"), "image", "image folder"),
    "truncated png": (
        lambda r: (r / "image" / "000001.png").write_bytes((r / "image" / "000001.png").read_bytes()[:5000]),
        "000001.png",
        "truncated",
    ),
    "not a png": (
        lambda r: (r / "image" / "000001.png").write_bytes(b"GIF89a" + bytes(100)),
        "000001.png",
        "not a PNG",
    ),
    "images of different sizes": (lambda r: _resave_half(r / "image" / "000001.png"), "000001.png", "800x600"),
    "mask count": (lambda r: (r / "mask" / "001.png").unlink(), "mask", "2 mask images for 3 images"),
    "mask size": (lambda r: _resave_half(r / "mask" / "002.png"), "002.png", "mask size"),
}


@pytest.mark.parametrize("case", list(BAD_DTU_CASES))
def test_bad_dtu_input_raises_dataset_error_naming_the_file(tmp_path, case):
    root = make_small_dtu(tmp_path / "scan")
    damage, file_part, problem = BAD_DTU_CASES[case]
    damage(root)
    with pytest.raises(DatasetError) as info:
        datasets.load_cameras(root)
    message = str(info.value)
    assert file_part in message and problem in message, message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def test_corrupt_image_data_fails_when_pixels_are_read(tmp_path):
    root = make_small_dtu(tmp_path / "scan")
    _corrupt_idat(root / "image" / "000001.png")
    datasets.load_cameras(root)  # the header is intact: cameras load
    with pytest.raises(DatasetError, match="000001.png") as info:
        datasets.load(root, downscale=4)
    assert "cannot decode image" in str(info.value)


@needs_sample
def test_loading_reports_every_file_in_the_calling_thread_and_stops_when_told(monkeypatch):
    """``load(progress=...)`` (fit's ``loading`` progress, a cancel between files): one call per image and mask
    read, counting up to their number, all in the caller's thread; an exception from it (a cancel) ends the loading
    without reading the files not yet started (one decoding thread: the file under way and at most one more)."""
    calls = []
    scene = datasets.load(SAMPLE, progress=lambda done, total: calls.append((done, total, threading.get_ident())))
    files = 2 * scene.n_views  # images and masks
    assert [c[:2] for c in calls] == [(k, files) for k in range(1, files + 1)]
    assert {c[2] for c in calls} == {threading.get_ident()}

    from datasets import images as io

    read = []
    real_read_image = io.read_image
    monkeypatch.setattr(io, "read_image", lambda *a, **k: read.append(a[0]) or real_read_image(*a, **k))

    class Stop(Exception):
        pass

    def stop_at_third(done: int, total: int) -> None:
        if done == 3:
            raise Stop

    with pytest.raises(Stop):
        datasets.load(SAMPLE, progress=stop_at_third, workers=1)
    assert 3 <= len(read) <= 5, len(read)


def test_folder_level_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        datasets.load_cameras(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty folder") as info:
        datasets.load_cameras(empty)
    assert str(empty) in str(info.value)
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="unknown dataset format"):
        datasets.detect_format(unknown)
    root = make_small_dtu(tmp_path / "scan")
    with pytest.raises(DatasetError, match="unknown format"):
        datasets.load_cameras(root, format="nerfies")
    with pytest.raises(DatasetError, match="downscale"):
        datasets.load_cameras(root, downscale=0.5)
    with pytest.raises(DatasetError, match="split"):
        datasets.load_cameras(root, split="everything")


# --- downscale tool ---------------------------------------------------------------------------------------------


def _run_downscale(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "datasets.downscale", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def test_downscale_tool_round_trip(tmp_path):
    src = make_small_dtu(tmp_path / "scan")
    dst = tmp_path / "out" / "scan_x2"
    result = _run_downscale(str(src), str(dst), "--factor", "2")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in dst.iterdir()) == ["cameras_sphere.npz", "image", "mask"]
    assert not list(dst.parent.glob(".neus_tmp*"))

    small = datasets.load(dst)
    reference = datasets.load(src, downscale=2)
    assert (small.width, small.height) == (800, 600)
    np.testing.assert_allclose(small.K, reference.K, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(small.c2w, reference.c2w, atol=1e-6)
    np.testing.assert_allclose(small.scale_mat, reference.scale_mat)
    assert np.abs(small.images - reference.images).max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only
    np.testing.assert_array_equal(small.masks, reference.masks)

    # The new npz projects with the centre-aware scaled P; scale_mat and the inverses are consistent.
    pts = random_ball(500, seed=5)
    expected = project_with(npz_projections(src / "cameras_sphere.npz", 2), pts)
    got = project_with(npz_projections(dst / "cameras_sphere.npz"), pts)
    assert np.abs(got - expected).max() < 1e-3
    old, new = np.load(src / "cameras_sphere.npz"), np.load(dst / "cameras_sphere.npz")
    assert set(old.files) == set(new.files)
    for i in range(3):
        np.testing.assert_array_equal(new[f"scale_mat_{i}"], old[f"scale_mat_{i}"])
        np.testing.assert_allclose(new[f"world_mat_inv_{i}"] @ new[f"world_mat_{i}"], np.eye(4), atol=1e-9)
        np.testing.assert_allclose(new[f"camera_mat_inv_{i}"] @ new[f"camera_mat_{i}"], np.eye(4), atol=1e-9)


def test_downscale_tool_bad_input_exits_2_with_one_line(tmp_path):
    src = make_small_dtu(tmp_path / "scan")
    (src / "image" / "000002.png").unlink()
    dst = tmp_path / "scan_x2"
    result = _run_downscale(str(src), str(dst), "--factor", "2")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "image" in result.stderr
    assert not dst.exists() and not list(tmp_path.glob(".neus_tmp*"))

    good = make_small_dtu(tmp_path / "good")
    dst.mkdir()
    result = _run_downscale(str(good), str(dst), "--factor", "2")
    assert result.returncode == 2 and "already exists" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = _run_downscale(str(good), str(tmp_path / "other"), "--factor", "zero")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


# --- rays -------------------------------------------------------------------------------------------------------


def test_rays_go_through_their_pixels():
    cams = datasets.load_cameras(dtu_or_skip(), downscale=8)
    h, w = cams.height, cams.width
    for i in (0, 30):
        K, c2w = cams.K[i], cams.c2w[i]
        dirs_cam = datasets.pixel_directions(K, h, w)
        assert dirs_cam.shape == (h, w, 3)
        np.testing.assert_allclose(dirs_cam[..., 2], -1.0)
        origins, dirs = datasets.camera_rays(K, c2w, h, w)
        np.testing.assert_allclose(np.linalg.norm(dirs, axis=-1), 1.0, atol=1e-6)
        np.testing.assert_allclose(origins, np.broadcast_to(c2w[:, 3], origins.shape), rtol=1e-6)
        # A point 3 units along each ray projects back onto the pixel centre (i, j) = (u, v).
        pts = (origins + 3.0 * dirs).reshape(-1, 3).astype(np.float64)
        uv, depth = project_points(K, c2w, pts)
        jj, ii = np.mgrid[0:h, 0:w]
        np.testing.assert_allclose(uv, np.stack([ii, jj], -1).reshape(-1, 2), atol=2e-3)
        assert (depth > 0).all()
        _, raw = datasets.camera_rays(K, c2w, h, w, normalize=False)
        np.testing.assert_allclose(raw.reshape(-1, 3) @ -c2w[:, 2], 1.0, atol=1e-5)  # unit depth along the axis


@pytest.mark.parametrize("up", [(0.0, 0.0, 1.0), (0.3, -0.5, -0.8)])
def test_spherical_trajectory_looks_at_the_centre(up):
    center = np.array([0.1, -0.2, 0.3])
    cams = datasets.spherical_trajectory(12, radius=2.5, elevation_deg=20.0, up=up, center=center)
    assert cams.shape == (12, 3, 4)
    up = np.asarray(up) / np.linalg.norm(up)
    R, pos = cams[:, :, :3], cams[:, :, 3]
    np.testing.assert_allclose(R.transpose(0, 2, 1) @ R, np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(R), 1.0)
    np.testing.assert_allclose(np.linalg.norm(pos - center, axis=1), 2.5)
    elevation = np.degrees(np.arcsin((pos - center) @ up / 2.5))
    np.testing.assert_allclose(elevation, 20.0)
    K = np.array([[100.0, 0, 49.5], [0, 100.0, 39.5], [0, 0, 1]])
    uv, depth = project_points(np.broadcast_to(K, (12, 3, 3)), cams, center[None])
    np.testing.assert_allclose(uv[:, 0], np.broadcast_to([49.5, 39.5], (12, 2)), atol=1e-9)
    assert (depth > 0).all()
    assert (np.abs(R[:, :, 0] @ up) < 1e-9).all() and (R[:, :, 1] @ up > 0).all()  # no roll, image up follows up
    azimuth_steps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    np.testing.assert_allclose(azimuth_steps, azimuth_steps[0])  # evenly spaced


# --- Blender's Python has numpy only -----------------------------------------------------------------------------


def test_camera_modules_import_and_load_without_pillow():
    code = (
        "import sys; sys.modules['PIL'] = None\n"
        "import datasets, datasets.cameras, datasets.rays, datasets.geometry, datasets.downscale\n"
        "import datasets.formats.dtu, datasets.formats.blender, datasets.formats.colmap\n"
        f"cams = datasets.load_cameras({str(dtu_or_skip())!r}, downscale=2)\n"
        "assert cams.n_views == 49 and cams.width == 800, cams.width\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    code = "import sys, datasets; datasets.load_cameras; assert 'PIL' not in sys.modules and 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env).returncode == 0


def test_image_headers_agree_with_pillow(tmp_path):
    """The stdlib header reader (used without Pillow) against Pillow on the file types it accepts."""
    from PIL import Image

    from datasets.imageinfo import read_image_info

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), "RGB")
    cases = {
        "rgb.png": (rgb, {}, False),
        "rgba.png": (rgb.convert("RGBA"), {}, True),
        "grey.png": (rgb.convert("L"), {}, False),
        "palette_alpha.png": (rgb.convert("P"), {"transparency": 0}, True),
        "baseline.jpg": (rgb, {"quality": 90}, False),
        "progressive.jpeg": (rgb, {"progressive": True, "quality": 80}, False),
    }
    for name, (im, options, alpha) in cases.items():
        im.save(tmp_path / name, **options)
        info = read_image_info(tmp_path / name)
        with Image.open(tmp_path / name) as check:
            assert (info.width, info.height) == check.size == (53, 37), name
        assert info.has_alpha == alpha, name
    from datasets.images import read_image

    jpg = read_image(tmp_path / "baseline.jpg", 1, 53, 37)
    np.testing.assert_array_equal(jpg, np.asarray(Image.open(tmp_path / "baseline.jpg")))
    with pytest.raises(DatasetError, match="empty.png: image file is empty"):
        (tmp_path / "empty.png").write_bytes(b"")
        read_image_info(tmp_path / "empty.png")


@pytest.mark.parametrize("factor", [2, 3, 1.6, 2.5])
def test_downscaled_pixel_grid_follows_the_centre_aware_map(tmp_path, factor):
    """A ramp image (value = column / row index) box-filtered by the loader has, at output pixel i, the value of
    the source coordinate u = (i + 0.5) * s - 0.5: the map that scale_intrinsics applies to K."""
    from PIL import Image

    from datasets.cameras import downscaled_size
    from datasets.images import read_image, read_mask

    W, H = 203, 151
    ramp = np.zeros((H, W, 3), np.uint8)
    ramp[..., 0] = np.arange(W)[None] % 256
    ramp[..., 1] = np.arange(H)[:, None]
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    w, h = downscaled_size(W, H, factor)
    assert (w, h) == (int(W // factor), int(H // factor))
    img = read_image(tmp_path / "ramp.png", factor, w, h).astype(np.float64)
    np.testing.assert_allclose(img[0, :, 0], (np.arange(w) + 0.5) * factor - 0.5, atol=0.5 + 1e-3)
    np.testing.assert_allclose(img[:, 0, 1], (np.arange(h) + 0.5) * factor - 0.5, atol=0.5 + 1e-3)
    # Masks use the same grid: a half plane u >= 100.5 stays a half plane at u' = (100.5 + 0.5) / s - 0.5.
    Image.fromarray(((np.arange(W)[None] > 100) * np.full((H, 1), 255)).astype(np.uint8)).save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png", factor, w, h)
    edge = 101 / factor - 0.5
    cols = np.arange(w)
    far = np.abs(cols - edge) > 0.5
    np.testing.assert_array_equal(mask[0, far], (cols > edge)[far])


def test_mask_and_image_pixel_modes(tmp_path):
    """Masks: an opaque-alpha RGBA mask is read from its grey level, a transparent one from its alpha; 16-bit grey,
    palette and 1-bit masks threshold at half range. Images: RGBA over white, 16-bit grey scaled to 8 bits."""
    from PIL import Image

    from datasets.images import read_image, read_mask

    grey = np.zeros((6, 8), np.uint8)
    grey[:, 4:] = 255
    expected = grey > 127
    rgba = np.dstack([np.stack([grey] * 3, axis=-1), np.full((6, 8), 255, np.uint8)])
    variants = {
        "opaque_rgba.png": Image.fromarray(rgba, "RGBA"),
        "alpha_only.png": Image.fromarray(np.dstack([np.zeros((6, 8, 3), np.uint8), grey]), "RGBA"),
        "grey16.png": Image.fromarray(grey.astype(np.uint16) * 257),
        "palette.png": Image.fromarray(grey).convert("P"),
        "bilevel.png": Image.fromarray(grey).convert("1"),
    }
    for name, im in variants.items():
        im.save(tmp_path / name)
        np.testing.assert_array_equal(read_mask(tmp_path / name, 1, 8, 6), expected, err_msg=name)
    # An RGBA photo that is its own mask (NeRF-synthetic) keeps its alpha even when it is opaque.
    np.testing.assert_array_equal(read_mask(tmp_path / "opaque_rgba.png", 1, 8, 6, own_alpha=True), True)

    photo = np.dstack([np.full((6, 8, 3), 51, np.uint8), grey])  # dark grey where opaque, else transparent
    Image.fromarray(photo, "RGBA").save(tmp_path / "photo.png")
    np.testing.assert_array_equal(read_image(tmp_path / "photo.png", 1, 8, 6)[..., 0], np.where(grey, 51, 255))
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "photo16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "photo16.png", 1, 8, 6), np.stack([grey] * 3, -1))
