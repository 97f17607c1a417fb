"""Automatic region before/after issue 19 on real cameras: ``python -m engine.bench_region [DTU_DIR]``, or
``python -m engine.bench_region --solved DATA_DIR [DTU_DIR]`` for an ``engine solve`` of DTU 65's photos.

DTU scan 65 (49 real cameras and masks) with synthetic sparse points: spread over the object, or crowded in a
ball of a quarter of its bounding radius on one part (features on the textured part only); the bundled scene as a
COLMAP capture (noisy surface points + far clutter), whole or crowded. For each: the region's radius over the
object's bounding radius, whether it holds the bounding sphere, and (DTU) the share of mask-pixel rays missing it.
"Before" is the rule the COLMAP loader used until 2026-12-03 (1.1 x the 90th percentile of the points nearer than
the median camera, around the axes' meeting point); "after" is ``datasets.auto_region``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import datasets
from datasets.auto_region import Sphere, auto_region
from datasets.normalization import camera_distances, look_at_center


def before(c2w: np.ndarray, points: np.ndarray) -> Sphere:
    center = look_at_center(c2w)
    center = np.median(points, axis=0) if center is None else center
    dist = np.linalg.norm(points - center, axis=1)
    near = dist[dist < np.median(camera_distances(c2w, center))]
    dist = near if len(near) >= 20 else dist
    radius = min(1.1 * float(np.percentile(dist, 90)), 0.95 * float(camera_distances(c2w, center).min()))
    return Sphere(center, radius)


def world(cams) -> np.ndarray:
    S = cams.scale_mat
    return np.concatenate([cams.c2w[:, :, :3], (cams.c2w[:, :, 3] @ S[:3, :3].T + S[:3, 3])[..., None]], axis=2)


def ball(center, radius, n=500, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return center + x / np.linalg.norm(x, axis=1, keepdims=True) * radius * rng.uniform(0, 1, (n, 1)) ** (1 / 3)


def mask_miss(cams, sphere: Sphere, views=range(0, 49, 6), n=3000) -> float:
    from PIL import Image

    rng, S, miss = np.random.default_rng(0), cams.scale_mat, 0
    for k in views:
        v, u = np.nonzero(np.asarray(Image.open(cams.mask_paths[k]).convert("L")) > 127)
        pick = rng.choice(len(v), n, replace=False)
        pix = np.stack([u[pick], v[pick], np.ones(n)], 1)
        d = (pix @ np.linalg.inv(cams.K[k]).T * [1, -1, -1]) @ cams.c2w[k, :, :3].T
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        to = sphere.center - (S[:3, :3] @ cams.c2w[k, :, 3] + S[:3, 3])
        gap = np.linalg.norm(to[None] - np.maximum(d @ to, 0)[:, None] * d, axis=1)
        miss += int((gap > sphere.radius).sum())
    return miss / (n * len(views))


def row(name, obj: Sphere, old: Sphere, new, extra_old="", extra_new=""):
    print(f"| {name} | {old.radius / obj.radius:.2f} | {'yes' if old.contains(obj) else 'no'}{extra_old} | "
          f"{new.sphere.radius / obj.radius:.2f} | {'yes' if new.sphere.contains(obj) else 'no'}{extra_new} | "
          f"{'uncertain' if new.notes else '-'} |")


def solved_dtu(solved_dir: Path, dtu_dir: Path) -> None:
    """Rows for a real solve of DTU 65's photos (``engine solve``): its own sparse points, all of them or the
    quarter nearest one part; the bounding sphere is taken into the solved frame by the similarity between the
    solved and the calibrated camera centres."""
    from datasets.formats.colmap import read_sparse_points
    from datasets.scale_file import world_centres
    from engine.solve.compare import fit_similarity

    dtu, solved = datasets.load_cameras(dtu_dir), datasets.load_cameras(solved_dir)
    points, _ = read_sparse_points(solved_dir)
    sim = fit_similarity(world_centres(solved), world_centres(dtu)[[dtu.names.index(n) for n in solved.names]])
    S = dtu.scale_mat
    obj = Sphere(sim.rotation.T @ (S[:3, 3] - sim.translation) / sim.scale, float(S[0, 0]) / sim.scale)

    def miss(s: Sphere) -> str:
        return f", {mask_miss(dtu, Sphere(sim.apply(s.center), s.radius * sim.scale)):.1%} mask rays miss"

    c2w = world(solved)
    dist = np.linalg.norm(points - points[np.argsort(points[:, 0])[len(points) // 10]], axis=1)
    for name, pts in ((f"DTU 65 solved, all {len(points)} points", points),
                      ("DTU 65 solved, a quarter of the points (one part)", points[dist < np.percentile(dist, 25)])):
        old, new = before(c2w, pts), auto_region(solved.K, c2w, solved.width, solved.height, pts)
        row(name, obj, old, new, miss(old), miss(new.sphere))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--solved":  # --solved DATA_DIR [DTU_DIR]
        solved_dtu(Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else Path("../shared/data/dtu_scan65"))
        return
    dtu_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data/dtu_scan65")
    print("| scene | before r/object | holds it | after r/object | holds it | after says |")
    print("|---|---|---|---|---|---|")
    if (dtu_dir / "cameras_sphere.npz").is_file():
        cams = datasets.load_cameras(dtu_dir)
        S, c2w = cams.scale_mat, world(cams)
        obj = Sphere(S[:3, 3], float(S[0, 0]))
        for name, pts in (("DTU 65, points over the object", ball(obj.center, 0.8 * obj.radius)),
                          ("DTU 65, points on the top part", ball(obj.center + 0.5 * obj.radius * cams.up,
                                                                  0.25 * obj.radius)),
                          ("DTU 65, points on one side", ball(obj.center + [0.5 * obj.radius, 0, 0],
                                                              0.25 * obj.radius))):
            t = time.perf_counter()
            new = auto_region(cams.K, c2w, cams.width, cams.height, pts)
            dt = time.perf_counter() - t
            old = before(c2w, pts)
            row(f"{name} ({dt:.2f} s)", obj, old, new, f", {mask_miss(cams, old):.0%} mask rays miss",
                f", {mask_miss(cams, new.sphere):.0%} mask rays miss")
    import tempfile

    import trimesh

    from datasets.sample_scene.to_colmap import SAMPLE, write_colmap

    verts = np.asarray(trimesh.load(SAMPLE / "gt_mesh_world.ply", process=False).vertices)
    obj = Sphere((verts.min(0) + verts.max(0)) / 2, float(np.linalg.norm(verts - (verts.min(0) + verts.max(0)) / 2,
                                                                         axis=1).max()))
    with tempfile.TemporaryDirectory() as tmp:
        root = write_colmap(Path(tmp) / "c")
        cams = datasets.load_cameras(root)
        c2w = world(cams)
        lines = (root / "sparse" / "0" / "points3D.txt").read_text().splitlines()
        pts = np.array([[float(v) for v in ln.split()[1:4]] for ln in lines])
        top = pts[:2000][np.linalg.norm(pts[:2000] - pts[:2000][pts[:2000, 2].argmax()], axis=1) < 0.8]
        for name, p in (("bundled scene as COLMAP, surface points + clutter", pts),
                        ("bundled scene, points on the top part only", top)):
            row(name, obj, before(c2w, p), auto_region(cams.K, c2w, cams.width, cams.height, p))


if __name__ == "__main__":
    main()
