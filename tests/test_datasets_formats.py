"""datasets: NeRF-synthetic and COLMAP loaders on small scenes written here from DTU scan 65's cameras and images.

Each scene re-expresses DTU cameras in another format; the loaded cameras must project world points exactly as
DTU's own ``world_mat`` does (whatever normalization the loader chose), and the pixels must match.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import centre_aware, dtu_or_skip, project_with

import datasets
from datasets import DatasetError
from datasets.geometry import project_points
from datasets.sample_scene.to_colmap import rotation_to_qvec

FACTOR = 4  # scenes are written at 400x300 to keep the tests fast
CV_TO_GL = np.diag([1.0, -1.0, -1.0])


class DtuViews:
    """DTU scan 65 views at 1/FACTOR resolution: world-frame cameras, projections, pixels."""

    def __init__(self, views: tuple[int, ...]) -> None:
        from PIL import Image

        root = dtu_or_skip()
        self.views = views
        data = np.load(root / "cameras_sphere.npz")
        self.dtu_scale_mat = data["scale_mat_0"].astype(np.float64)
        # World-frame projections straight from the npz: the ground truth every loader is compared with.
        self.P_world = np.stack([centre_aware(FACTOR) @ data[f"world_mat_{v}"].astype(np.float64)[:3] for v in views])
        cams = datasets.load_cameras(root, downscale=FACTOR)
        self.K = cams.K[list(views)]
        self.width, self.height = cams.width, cams.height
        c2w = cams.c2w[list(views)].copy()
        c2w[:, :, 3] = c2w[:, :, 3] @ self.dtu_scale_mat[:3, :3].T + self.dtu_scale_mat[:3, 3]
        self.c2w_world = c2w  # DTU's scale_mat is a scale + translation, so rotations carry over
        self.rgb, self.mask = [], []
        for v in views:
            self.rgb.append(Image.open(root / "image" / f"{v:06d}.png").reduce(FACTOR))
            self.mask.append(Image.open(root / "mask" / f"{v:03d}.png").convert("L").reduce(FACTOR))

    def world_points(self, n: int, seed: int = 0) -> np.ndarray:
        """Random world points inside DTU's bounding sphere."""
        rng = np.random.default_rng(seed)
        x = rng.uniform(-0.6, 0.6, (n, 3))
        return x @ self.dtu_scale_mat[:3, :3].T + self.dtu_scale_mat[:3, 3]

    def check_projection(self, cams: datasets.CameraSet, order: list[int] | None = None) -> None:
        """Loaded cameras (normalized frame) project world points like DTU's world_mat, within 1e-3 px."""
        order = list(range(len(self.views))) if order is None else order
        X = self.world_points(500)
        expected = project_with(self.P_world[order], X)
        inv = np.linalg.inv(cams.scale_mat)
        x_norm = X @ inv[:3, :3].T + inv[:3, 3]
        uv, depth = project_points(cams.K, cams.c2w, x_norm)
        assert np.abs(uv - expected).max() < 1e-3
        assert (depth > 0).all()


@pytest.fixture(scope="module")
def dtu4() -> DtuViews:
    return DtuViews((0, 8, 16, 24, 32, 40))


# --- NeRF-synthetic -------------------------------------------------------------------------------------------


def write_blender_scene(root: Path, dtu: DtuViews, splits: dict[str, list[int]]) -> None:
    """transforms_<split>.json with pixel intrinsics (instant-ngp style, +0.5 pixel centres) and RGBA images."""

    for split, idx in splits.items():
        (root / split).mkdir(parents=True)
        frames = []
        for n, k in enumerate(idx):
            rgba = dtu.rgb[k].copy()
            rgba.putalpha(dtu.mask[k])
            rgba.save(root / split / f"r_{n}.png")
            m = np.eye(4)
            m[:3] = dtu.c2w_world[k]
            stem = f"./{split}/r_{n}" + (".png" if n % 2 else "")  # with and without extension
            frames.append({"file_path": stem, "transform_matrix": m.tolist()})
        K = dtu.K[idx[0]]
        meta = {
            "camera_angle_x": 2 * math.atan(dtu.width / (2 * K[0, 0])),
            "fl_x": K[0, 0],
            "fl_y": K[1, 1],
            "cx": K[0, 2] + 0.5,
            "cy": K[1, 2] + 0.5,
            "w": dtu.width,
            "h": dtu.height,
            "frames": frames,
        }
        (root / f"transforms_{split}.json").write_text(json.dumps(meta, indent=1))


def test_blender_scene_from_dtu_projects_like_dtu(tmp_path, dtu4):
    root = tmp_path / "nerf"
    # DTU views share one K (within round-off), so one set of intrinsics per split file is faithful.
    write_blender_scene(root, dtu4, {"train": [0, 1, 2, 3], "test": [4, 5]})
    assert datasets.detect_format(root) == "blender"
    train = datasets.load_cameras(root)
    assert train.format == "blender" and train.n_views == 4
    assert train.names == ["train/r_0.png", "train/r_1.png", "train/r_2.png", "train/r_3.png"]
    assert (train.width, train.height) == (400, 300)
    dtu4.check_projection(train, [0, 1, 2, 3])
    test = datasets.load_cameras(root, split="test")
    assert test.names == ["test/r_0.png", "test/r_1.png"]
    everything = datasets.load_cameras(root, split="all")
    assert everything.n_views == 6
    dtu4.check_projection(everything)
    # Normalization from the cameras: the object (within radius 0.5 of DTU's normalized origin, see the visual
    # hull test) fits in the unit sphere; every camera is outside it.
    inv = np.linalg.inv(everything.scale_mat)
    dtu_centre = inv[:3, :3] @ dtu4.dtu_scale_mat[:3, 3] + inv[:3, 3]
    object_radius = 0.5 * dtu4.dtu_scale_mat[0, 0] / everything.scale_mat[0, 0]
    assert np.linalg.norm(dtu_centre) + object_radius < 1.0
    assert (np.linalg.norm(everything.c2w[:, :, 3], axis=1) > 1).all()
    with pytest.raises(DatasetError, match="transforms_val.json"):
        datasets.load_cameras(root, split="val")


def test_blender_rgba_gives_masks_and_white_background(tmp_path, dtu4):
    root = tmp_path / "nerf"
    write_blender_scene(root, dtu4, {"train": [0, 3]})
    scene = datasets.load(root)
    assert scene.mask_paths == scene.image_paths
    assert scene.images.shape == (2, 300, 400, 3) and scene.masks.shape == (2, 300, 400)
    for n, k in enumerate((0, 3)):
        alpha = np.asarray(dtu4.mask[k])
        rgb = np.asarray(dtu4.rgb[k])
        np.testing.assert_array_equal(scene.masks[n], alpha > 127)
        opaque, clear = alpha == 255, alpha == 0
        assert opaque.any() and clear.any()
        assert scene.images.dtype == np.uint8
        np.testing.assert_array_equal(scene.images[n][opaque], rgb[opaque])
        np.testing.assert_array_equal(scene.images[n][clear], 255)
    half = datasets.load(root, downscale=2)
    assert half.images.shape == (2, 150, 200, 3)
    full = datasets.load_cameras(root)
    np.testing.assert_allclose(half.K[:, 0, 0], full.K[:, 0, 0] / 2)
    np.testing.assert_allclose(half.K[:, 0, 2], (full.K[:, 0, 2] + 0.5) / 2 - 0.5)


def _write_rgba(path: Path, width: int, height: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA").save(path)


def test_nerf_synthetic_conventions(tmp_path):
    """Cameras on a sphere looking at the origin (as NeRF-synthetic): centre 0, radius 1.5, fov from camera_angle_x."""
    root = tmp_path / "lego"
    (root / "train").mkdir(parents=True)
    c2w = datasets.spherical_trajectory(8, radius=4.0311, elevation_deg=30.0)
    angle_x, angle_y, W, H = 0.6911112070083618, 0.5, 40, 30
    frames = []
    for k in range(8):
        _write_rgba(root / "train" / f"r_{k}.png", W, H, k)
        m = np.eye(4)
        m[:3] = c2w[k]
        frames.append({"file_path": f"./train/r_{k}", "rotation": 0.01, "transform_matrix": m.tolist()})
    (root / "transforms.json").write_text(json.dumps({"camera_angle_x": angle_x, "frames": frames}))

    cams = datasets.load_cameras(root)  # a lone transforms.json serves the train split
    np.testing.assert_allclose(cams.scale_mat, np.diag([1.5, 1.5, 1.5, 1.0]), atol=1e-9)
    f = 0.5 * W / math.tan(0.5 * angle_x)
    np.testing.assert_allclose(
        cams.K, np.broadcast_to([[f, 0, W / 2 - 0.5], [0, f, H / 2 - 0.5], [0, 0, 1]], (8, 3, 3))
    )
    np.testing.assert_allclose(cams.c2w[:, :, :3], c2w[:, :, :3], atol=1e-12)
    np.testing.assert_allclose(cams.c2w[:, :, 3], c2w[:, :, 3] / 1.5, atol=1e-12)
    uv, _ = project_points(cams.K, cams.c2w, np.zeros((1, 3)))
    np.testing.assert_allclose(uv[:, 0], np.broadcast_to([W / 2 - 0.5, H / 2 - 0.5], (8, 2)), atol=1e-9)
    np.testing.assert_allclose(cams.up, [0, 0, 1], atol=0.2)  # cameras tilt down 30 degrees, no roll
    with pytest.raises(DatasetError, match="transforms_test.json"):
        datasets.load_cameras(root, split="test")

    # camera_angle_y sets fy; a world point projects where a pinhole with these focal lengths puts it.
    meta = json.loads((root / "transforms.json").read_text())
    meta["camera_angle_y"] = angle_y
    (root / "transforms.json").write_text(json.dumps(meta))
    cams = datasets.load_cameras(root)
    fy = 0.5 * H / math.tan(0.5 * angle_y)
    np.testing.assert_allclose(cams.K[:, 1, 1], fy)
    X = np.array([0.3, -0.2, 0.4])
    cam = (X - c2w[0, :, 3]) @ c2w[0, :, :3]  # OpenGL camera coordinates
    u = W / 2 - 0.5 + f * cam[0] / -cam[2]
    v = H / 2 - 0.5 - fy * cam[1] / -cam[2]
    uv, _ = project_points(cams.K[0], cams.c2w[0], (X / 1.5)[None])
    np.testing.assert_allclose(uv[0], [u, v], atol=1e-9)


def _blender_base(root: Path) -> dict:
    (root / "train").mkdir(parents=True)
    _write_rgba(root / "train" / "r_0.png", 20, 10, 0)
    _write_rgba(root / "train" / "r_1.png", 20, 10, 1)
    c2w = datasets.spherical_trajectory(2, 4.0, 30.0)
    frames = [{"file_path": f"train/r_{k}", "transform_matrix": np.r_[c2w[k], [[0, 0, 0, 1]]].tolist()} for k in (0, 1)]
    return {"camera_angle_x": 0.7, "frames": frames}


def _broken(kind: str):
    def damage(root: Path, meta: dict) -> None:
        if kind == "bad json":
            (root / "transforms_train.json").write_text('{"camera_angle_x": 0.7, "frames": [}')
            return
        if kind == "missing image":
            meta["frames"][1]["file_path"] = "train/r_7"
        elif kind == "not a rotation":
            meta["frames"][0]["transform_matrix"][0][1] += 0.5  # shear
        elif kind == "no field of view":
            del meta["camera_angle_x"]
        elif kind == "no frames":
            meta["frames"] = []
        elif kind == "wrong w":
            meta["w"] = 21
        (root / "transforms_train.json").write_text(json.dumps(meta))

    return damage


@pytest.mark.parametrize(
    "kind, file_part, problem",
    [
        ("bad json", "transforms_train.json", "invalid JSON"),
        ("missing image", "r_7", "missing image"),
        ("not a rotation", "transforms_train.json", "not a rotation"),
        ("no field of view", "transforms_train.json", "camera_angle_x"),
        ("no frames", "transforms_train.json", "frames"),
        ("wrong w", "transforms_train.json", "'w' is 21"),
    ],
)
def test_bad_blender_input(tmp_path, kind, file_part, problem):
    root = tmp_path / "scene"
    meta = _blender_base(root)
    _broken(kind)(root, meta)
    with pytest.raises(DatasetError) as info:
        datasets.load_cameras(root)
    assert file_part in str(info.value) and problem in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_blender_files_from_other_tools_load(tmp_path):
    """A byte-order mark, Windows path separators, an extension in another case, one focal length only."""
    root = tmp_path / "scene"
    meta = _blender_base(root)
    (root / "transforms_train.json").write_text(json.dumps(meta))
    reference = datasets.load_cameras(root)
    (root / "train" / "r_1.png").rename(root / "train" / "r_1.PNG")
    meta["frames"][0]["file_path"] = ".\\train\\r_0"
    meta["frames"][1]["file_path"] = "./train/r_1.png"
    meta["fl_y"] = 0.5 * 20 / math.tan(0.5 * meta.pop("camera_angle_x"))  # only the vertical focal length
    (root / "transforms_train.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(meta).encode())
    cams = datasets.load_cameras(root)
    assert [p.name for p in cams.image_paths] == ["r_0.png", "r_1.PNG"]
    np.testing.assert_allclose(cams.K, reference.K)  # square pixels: fx = fy
    np.testing.assert_allclose(cams.c2w, reference.c2w)
    assert cams.mask_paths == cams.image_paths


def test_missing_transforms(tmp_path):
    root = tmp_path / "scene"
    root.mkdir()
    (root / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="transforms_train.json"):
        datasets.load_cameras(root, format="blender")


# --- COLMAP ---------------------------------------------------------------------------------------------------


MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "OPENCV_FISHEYE": 5}


class ColmapModel:
    """A COLMAP reconstruction of DTU views: one camera per image, sparse points in DTU's bounding sphere."""

    def __init__(self, dtu: DtuViews, model: str = "PINHOLE") -> None:
        self.dtu = dtu
        self.cameras, self.images = [], []
        for k in range(len(dtu.views)):
            K = dtu.K[k]
            # COLMAP's principal point is in +0.5-centred pixels.
            if model == "PINHOLE":
                params = [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5]
            elif model == "SIMPLE_RADIAL":
                params = [K[0, 0], K[0, 2] + 0.5, K[1, 2] + 0.5, 0.01]
            else:
                params = [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5, 0.1, 0.0, 0.0, 0.0]
            self.cameras.append((k + 10, model, dtu.width, dtu.height, params))
            R_cv = (dtu.c2w_world[k, :, :3] @ CV_TO_GL).T
            t = -R_cv @ dtu.c2w_world[k, :, 3]
            # Registered in reverse order to check the loader sorts by name.
            self.images.insert(0, (100 - k, rotation_to_qvec(R_cv), t, k + 10, f"img_{k:02d}.png"))
        rng = np.random.default_rng(1)
        inliers = rng.uniform(-0.5, 0.5, (950, 3))
        outliers = rng.normal(size=(50, 3)) * 4
        x = np.concatenate([inliers, outliers])
        self.points = x @ dtu.dtu_scale_mat[:3, :3].T + dtu.dtu_scale_mat[:3, 3]

    def write_images(self, root: Path) -> None:
        (root / "images").mkdir(parents=True, exist_ok=True)
        for k, im in enumerate(self.dtu.rgb):
            im.save(root / "images" / f"img_{k:02d}.png")

    def write_text(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
        lines += [f"{c} {m} {w} {h} " + " ".join(repr(float(p)) for p in params) for c, m, w, h, params in self.cameras]
        (folder / "cameras.txt").write_text("\n".join(lines) + "\n")
        lines = ["# Image list with two lines of data per image:", f"# Number of images: {len(self.images)}"]
        for n, (i, q, t, c, name) in enumerate(self.images):
            lines.append(f"{i} " + " ".join(repr(float(v)) for v in (*q, *t)) + f" {c} {name}")
            lines.append("" if n % 2 else "10.5 20.25 1 30.0 40.0 -1")  # an empty 2D point line, then some points
        (folder / "images.txt").write_text("\n".join(lines) + "\n")
        lines = ["# 3D point list with one line of data per point:"]
        lines += [f"{n + 1} {x!r} {y!r} {z!r} 128 128 128 0.5 100 0 99 3" for n, (x, y, z) in enumerate(self.points)]
        (folder / "points3D.txt").write_text("\n".join(lines) + "\n")

    def write_binary(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        data = struct.pack("<Q", len(self.cameras))
        for c, m, w, h, params in self.cameras:
            data += struct.pack("<iiQQ", c, MODEL_IDS[m], w, h) + struct.pack(f"<{len(params)}d", *params)
        (folder / "cameras.bin").write_bytes(data)
        data = struct.pack("<Q", len(self.images))
        for n, (i, q, t, c, name) in enumerate(self.images):
            data += struct.pack("<i7di", i, *q, *t, c) + name.encode() + b"\x00"
            data += struct.pack("<Q", n) + b"".join(struct.pack("<ddq", 1.5 * j, 2.5, j - 1) for j in range(n))
        (folder / "images.bin").write_bytes(data)
        data = struct.pack("<Q", len(self.points))
        for n, p in enumerate(self.points):
            track = [(100, 0), (99, 3)][: n % 3]
            data += struct.pack("<Q3d3BdQ", n + 1, *p, 10, 20, 30, 0.7, len(track))
            data += b"".join(struct.pack("<ii", *pair) for pair in track)
        (folder / "points3D.bin").write_bytes(data)


def test_colmap_text_and_binary_models_match_dtu(tmp_path, dtu4):
    model = ColmapModel(dtu4)
    text_root, bin_root = tmp_path / "text", tmp_path / "bin"
    for root in (text_root, bin_root):
        model.write_images(root)
    model.write_text(text_root / "sparse" / "0")
    model.write_binary(bin_root / "sparse")  # sparse/ without 0/ is accepted too
    assert datasets.detect_format(text_root) == datasets.detect_format(bin_root) == "colmap"
    text = datasets.load_cameras(text_root)
    binary = datasets.load_cameras(bin_root)
    assert text.names == binary.names == [f"img_{k:02d}.png" for k in range(6)]
    assert text.mask_paths is None
    for field in ("K", "c2w", "scale_mat", "up"):
        np.testing.assert_allclose(getattr(text, field), getattr(binary, field), rtol=1e-12, atol=1e-12)
    dtu4.check_projection(text)
    # Normalization: the object's sparse points fit in the unit sphere (outliers excepted), cameras stay outside.
    inv = np.linalg.inv(text.scale_mat)
    x = model.points @ inv[:3, :3].T + inv[:3, 3]
    inside = np.linalg.norm(x, axis=1) < 1
    assert inside[:950].mean() > 0.97 and inside.mean() > 0.9
    assert (np.linalg.norm(text.c2w[:, :, 3], axis=1) > 1).all()

    scene = datasets.load(bin_root, downscale=2)
    np.testing.assert_array_equal(scene.images[3], np.asarray(dtu4.rgb[3].reduce(2)))


def test_colmap_sparse_points_with_colours(tmp_path, dtu4):
    from datasets.formats.colmap import read_sparse_points

    model = ColmapModel(dtu4)
    model.write_text(tmp_path / "text" / "sparse" / "0")
    model.write_binary(tmp_path / "bin" / "sparse")
    xyz, rgb = read_sparse_points(tmp_path / "text")
    np.testing.assert_allclose(xyz, model.points, rtol=1e-12)
    assert rgb.dtype == np.uint8 and (rgb == 128).all()
    xyz, rgb = read_sparse_points(tmp_path / "bin")
    np.testing.assert_array_equal(xyz, model.points)
    assert (rgb == [10, 20, 30]).all()
    (tmp_path / "bin" / "sparse" / "points3D.bin").unlink()
    assert read_sparse_points(tmp_path / "bin") is None


def test_colmap_text_model_with_byte_order_marks_and_junk(tmp_path, dtu4):
    root = tmp_path / "scene"
    model = ColmapModel(dtu4)
    model.write_images(root)
    model.write_text(root / "sparse" / "0")
    reference = datasets.load_cameras(root)
    for name in ("cameras.txt", "images.txt", "points3D.txt"):
        path = root / "sparse" / "0" / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    (root / "images" / "._img_00.png").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata: not an image
    with open(root / "sparse" / "0" / "points3D.txt", "a") as f:
        f.write("9999 nan 0 0 0 0 0 0\n")  # a broken point is ignored, not a NaN normalization
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even an "unregistered image" warning for it
        cams = datasets.load_cameras(root)
    np.testing.assert_array_equal(cams.c2w, reference.c2w)
    np.testing.assert_array_equal(cams.scale_mat, reference.scale_mat)


def test_colmap_masks_and_unregistered_images(tmp_path, dtu4):
    root = tmp_path / "scene"
    model = ColmapModel(dtu4)
    model.write_images(root)
    model.write_text(root / "sparse" / "0")
    (root / "masks").mkdir()
    for k, m in enumerate(dtu4.mask):
        m.save(root / "masks" / f"{k:03d}.png")  # paired by sorted order
    shutil.copy(root / "images" / "img_00.png", root / "images" / "zz_unregistered.png")
    (root / "masks" / "999.png").write_bytes((root / "masks" / "000.png").read_bytes())
    with pytest.warns(UserWarning, match="not registered"):
        scene = datasets.load(root)
    assert scene.n_views == 6
    for k in range(6):
        np.testing.assert_array_equal(scene.masks[k], np.asarray(dtu4.mask[k]) > 127)


def test_colmap_distortion_warns_and_fisheye_is_refused(tmp_path, dtu4):
    root = tmp_path / "radial"
    model = ColmapModel(dtu4, "SIMPLE_RADIAL")
    model.write_images(root)
    model.write_binary(root / "sparse" / "0")
    with pytest.warns(UserWarning, match="distortion"):
        cams = datasets.load_cameras(root)
    np.testing.assert_allclose(cams.K[:, 0, 0], cams.K[:, 1, 1])
    np.testing.assert_allclose(cams.K[:, 0, 2], dtu4.K[:, 0, 2])

    root = tmp_path / "fisheye"
    ColmapModel(dtu4, "OPENCV_FISHEYE").write_text(root / "sparse" / "0")
    ColmapModel(dtu4).write_images(root)
    with pytest.raises(DatasetError, match="cameras.txt.*OPENCV_FISHEYE is not supported"):
        datasets.load_cameras(root)


@pytest.mark.parametrize("case", ["missing image", "truncated images.bin", "image size", "no sparse", "bad line",
                                  "registered twice"])
def test_bad_colmap_input(tmp_path, dtu4, case):
    root = tmp_path / "scene"
    model = ColmapModel(dtu4)
    model.write_images(root)
    if case == "registered twice":
        model.images[1] = (*model.images[1][:4], model.images[0][4])
    if case == "bad line":
        model.write_text(root / "sparse" / "0")
        (root / "sparse" / "0" / "cameras.txt").write_text("10 PINHOLE 400 300 1.0 2.0\n")
        file_part, problem = "cameras.txt", "line 1"
    else:
        model.write_binary(root / "sparse" / "0")
    if case == "missing image":
        (root / "images" / "img_02.png").unlink()
        file_part, problem = "img_02.png", "missing image"
    elif case == "truncated images.bin":
        path = root / "sparse" / "0" / "images.bin"
        path.write_bytes(path.read_bytes()[:-7])
        file_part, problem = "images.bin", "truncated"
    elif case == "image size":
        dtu4.rgb[1].reduce(2).save(root / "images" / "img_01.png")
        file_part, problem = "img_01.png", "image size"
    elif case == "no sparse":
        shutil.rmtree(root / "sparse")
        file_part, problem = "sparse", "COLMAP model not found"
    elif case == "registered twice":
        file_part, problem = "images.bin", f"{model.images[0][4]!r} is registered twice"
    with pytest.raises(DatasetError) as info:
        datasets.load_cameras(root, format="colmap")
    assert file_part in str(info.value) and problem in str(info.value), str(info.value)
