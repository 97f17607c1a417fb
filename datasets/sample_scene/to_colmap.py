"""Writes the bundled sample scene as a COLMAP text model with no masks: a stand-in for a phone capture.

    python -m datasets.sample_scene.to_colmap OUT_DIR

Cameras go to the scene's world frame (``scale_mat``), one PINHOLE camera per image (COLMAP pixel centres at
+0.5), and the sparse points are ground-truth surface vertices with a little noise plus far background points,
so the COLMAP loader has to choose the normalization itself. Used by the tests and the benchmarks.
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import numpy as np

from ..cameras import load_cameras

SAMPLE = Path(__file__).parent / "data"
_CV_TO_GL = np.diag([1.0, -1.0, -1.0])  # OpenCV camera axes <-> OpenGL camera axes


def rotation_to_qvec(R: np.ndarray) -> np.ndarray:
    """(w, x, y, z) unit quaternion of a rotation matrix (3, 3), COLMAP's order (Shepperd's method: stable
    near half turns)."""
    t = np.trace(R)
    if t > 0:
        s = 2 * math.sqrt(t + 1)
        q = [s / 4, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2 * math.sqrt(1 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [(R[2, 1] - R[1, 2]) / s, s / 4, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif R[1, 1] > R[2, 2]:
        s = 2 * math.sqrt(1 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, s / 4, (R[1, 2] + R[2, 1]) / s]
    else:
        s = 2 * math.sqrt(1 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, s / 4]
    return np.array(q)


def write_colmap(out: Path, source: Path = SAMPLE, n_points: int = 2000, seed: int = 0) -> Path:
    """Writes ``out/images/*`` and ``out/sparse/0/{cameras,images,points3D}.txt``; returns ``out``."""
    cams = load_cameras(source)
    S = cams.scale_mat
    sparse = out / "sparse" / "0"
    sparse.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    camera_lines, image_lines = [], []
    for k in range(cams.n_views):
        K, c2w = cams.K[k], cams.c2w[k]  # normalized frame, OpenGL axes
        centre = S[:3, :3] @ c2w[:, 3] + S[:3, 3]  # a similarity: rotations are unchanged
        R_cv = (c2w[:, :3] @ _CV_TO_GL).T
        t = -R_cv @ centre
        camera_lines.append(f"{k + 1} PINHOLE {cams.width} {cams.height} "
                            f"{K[0, 0]!r} {K[1, 1]!r} {K[0, 2] + 0.5!r} {K[1, 2] + 0.5!r}")
        name = Path(cams.image_paths[k]).name
        shutil.copyfile(cams.image_paths[k], out / "images" / name)
        pose = " ".join(repr(float(v)) for v in (*rotation_to_qvec(R_cv), *t))
        image_lines += [f"{k + 1} {pose} {k + 1} {name}", ""]  # no 2D points
    (sparse / "cameras.txt").write_text("\n".join(camera_lines) + "\n")
    (sparse / "images.txt").write_text("\n".join(image_lines) + "\n")
    import trimesh  # a project dependency; this tool is not part of the add-on's numpy-only camera code

    rng = np.random.default_rng(seed)
    verts = np.asarray(trimesh.load(source / "gt_mesh_world.ply", process=False).vertices)
    pts = verts[rng.choice(len(verts), min(n_points, len(verts)), replace=False)]
    pts = pts + rng.normal(scale=0.01, size=pts.shape)
    pts = np.concatenate([pts, S[:3, 3] + rng.normal(size=(n_points // 20, 3)) * 8])  # background clutter
    (sparse / "points3D.txt").write_text(
        "\n".join(f"{i + 1} {x!r} {y!r} {z!r} 128 128 128 0.5" for i, (x, y, z) in enumerate(pts)) + "\n")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    args = p.parse_args()
    print(write_colmap(args.out))


if __name__ == "__main__":
    main()
