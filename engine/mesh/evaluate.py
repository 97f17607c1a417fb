"""Geometry metrics: Chamfer-L1 (accuracy / completeness) and F-score between surface samples.

Accuracy is the mean distance from predicted samples to the ground truth, completeness the mean distance from
ground-truth samples to the prediction, Chamfer-L1 their average; precision / recall are the fractions of
those distances below a threshold and the F-score their harmonic mean (as in DTU / Tanks and Temples).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .frames import transform_vertices
from .mesh_data import MeshData, MeshFileError
from .read import read_mesh

MeshLike = str | os.PathLike | MeshData | tuple[np.ndarray, np.ndarray] | Any  # Any: a trimesh.Trimesh


def _load(mesh_or_path: MeshLike) -> tuple[np.ndarray, np.ndarray, str]:
    """(vertices, faces, name) from a path, MeshData, (vertices, faces) tuple or trimesh object."""
    if isinstance(mesh_or_path, str | os.PathLike):
        m = read_mesh(mesh_or_path)
        return m.vertices, m.faces, str(mesh_or_path)
    if isinstance(mesh_or_path, MeshData):
        return mesh_or_path.vertices, mesh_or_path.faces, "<mesh>"
    if isinstance(mesh_or_path, tuple):
        v, f = mesh_or_path
        return np.asarray(v), np.zeros((0, 3), np.int64) if f is None else np.asarray(f), "<mesh>"
    if hasattr(mesh_or_path, "vertices"):
        f = getattr(mesh_or_path, "faces", None)
        return (
            np.asarray(mesh_or_path.vertices),
            np.zeros((0, 3), np.int64) if f is None else np.asarray(f),
            "<mesh>",
        )
    raise TypeError(
        f"expected a mesh path, MeshData, (vertices, faces) or trimesh object, got {type(mesh_or_path)}"
    )


def sample_surface(mesh_or_path: MeshLike, n: int = 100_000, seed: int = 0) -> np.ndarray:
    """Points uniformly distributed by area on a mesh, or a random subset of a point cloud.

    Args:
        mesh_or_path: mesh file (PLY/OBJ/GLB...), :class:`MeshData`, ``(vertices, faces)`` or trimesh object.
            A file or array without faces is treated as a point cloud: all its points if it has at most ``n``,
            else ``n`` of them drawn without replacement.
        n: number of samples.
        seed: random seed (results are deterministic for a given seed).
    Returns:
        (n', 3) float64 points (n' = n for meshes).
    Raises:
        MeshFileError: missing/unreadable file, or a mesh with no vertices or zero area.
    """
    v, f, name = _load(mesh_or_path)
    v = np.asarray(v, dtype=np.float64).reshape(-1, 3)
    if len(v) == 0:
        raise MeshFileError(name, "contains no vertices")
    rng = np.random.default_rng(seed)
    f = np.asarray(f, dtype=np.int64).reshape(-1, 3)
    if len(f) == 0:
        return v if len(v) <= n else v[rng.choice(len(v), size=n, replace=False)]
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    total = area.sum()
    if not np.isfinite(total) or total <= 0:
        raise MeshFileError(name, "has zero surface area")
    tri = rng.choice(len(f), size=n, p=area / total)
    # Uniform barycentrics: reflect the unit square's upper half onto the lower triangle.
    r = rng.random((n, 2))
    flip = r.sum(axis=1) > 1
    r[flip] = 1 - r[flip]
    return a[tri] + r[:, :1] * (b[tri] - a[tri]) + r[:, 1:] * (c[tri] - a[tri])


def chamfer_and_fscore(pred_points: np.ndarray, gt_points: np.ndarray, threshold: float) -> dict[str, float]:
    """Chamfer-L1 and F-score between two point sets (nearest neighbours with scipy's cKDTree).

    Args:
        pred_points: (P, 3); gt_points: (G, 3), same frame and units.
        threshold: distance under which a point counts as matched (same units).
    Returns:
        ``{"accuracy", "completeness", "chamfer_l1", "precision", "recall", "fscore", "threshold"}``.
    """
    from scipy.spatial import cKDTree

    pred = np.asarray(pred_points, dtype=np.float64).reshape(-1, 3)
    gt = np.asarray(gt_points, dtype=np.float64).reshape(-1, 3)
    if len(pred) == 0 or len(gt) == 0:
        raise ValueError(f"chamfer_and_fscore needs points on both sides (got {len(pred)} and {len(gt)})")
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    d_pred, _ = cKDTree(gt).query(pred, workers=-1)
    d_gt, _ = cKDTree(pred).query(gt, workers=-1)
    precision = float(np.mean(d_pred < threshold))
    recall = float(np.mean(d_gt < threshold))
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    acc, comp = float(d_pred.mean()), float(d_gt.mean())
    return {
        "accuracy": acc,
        "completeness": comp,
        "chamfer_l1": 0.5 * (acc + comp),
        "precision": precision,
        "recall": recall,
        "fscore": float(fscore),
        "threshold": float(threshold),
    }


def _isotropic_scale(scale_mat: np.ndarray) -> float:
    return float(abs(np.linalg.det(scale_mat[:3, :3])) ** (1.0 / 3.0))


def evaluate_mesh(
    pred: MeshLike,
    gt: MeshLike,
    threshold: float = 0.01,
    n_samples: int = 100_000,
    scale_mat: Any = None,
    pred_frame: str = "normalized",
    gt_frame: str = "normalized",
    world_threshold: float | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Compares a predicted mesh with a ground-truth mesh or point cloud.

    Samples are drawn once in each input's own frame and moved between frames by applying ``scale_mat``
    (normalized -> world) or its inverse point by point, so an anisotropic ``scale_mat`` is handled exactly.

    Args:
        pred: predicted mesh (path, :class:`MeshData`, ``(vertices, faces)`` or trimesh object).
        gt: ground-truth mesh or point cloud (same kinds).
        threshold: F-score threshold in normalized units.
        n_samples: samples per surface (point clouds are subsampled to at most this many).
        scale_mat: (4, 4) normalized -> world matrix; needed when the frames differ, and adds a world report.
        pred_frame, gt_frame: ``"normalized"`` or ``"world"``: the frame each input is expressed in.
        world_threshold: F-score threshold in world units (default: ``threshold`` times the cube root of
            ``|det scale_mat[:3, :3]|``, the isotropic scale).
        seed: sampling seed.
    Returns:
        ``{"normalized": metrics, "world": metrics}`` when ``scale_mat`` is given, else ``{frame: metrics}``
        for the common frame; metrics as in :func:`chamfer_and_fscore` plus ``n_pred`` / ``n_gt`` counts.
    Raises:
        MeshFileError: a missing, unreadable or empty mesh file (the message names it).
        ValueError: frames differ and no ``scale_mat`` was given, or an unknown frame name.
    """
    for fr in (pred_frame, gt_frame):
        if fr not in ("normalized", "world"):
            raise ValueError(f"frame must be 'normalized' or 'world', got {fr!r}")
    if scale_mat is None and pred_frame != gt_frame:
        raise ValueError(f"pred is in the {pred_frame} frame and gt in the {gt_frame} frame: pass scale_mat")
    p = sample_surface(pred, n_samples, seed)
    g = sample_surface(gt, n_samples, seed + 1)
    if scale_mat is None:
        res = chamfer_and_fscore(p, g, threshold)
        res.update(n_pred=len(p), n_gt=len(g))
        return {pred_frame: res}
    m = np.asarray(scale_mat, dtype=np.float64)
    inv = np.linalg.inv(m)
    pts = {"pred": {pred_frame: p}, "gt": {gt_frame: g}}
    for key, frame in (("pred", pred_frame), ("gt", gt_frame)):
        x = pts[key][frame]
        if frame == "normalized":
            pts[key]["world"] = transform_vertices(x, m)
        else:
            pts[key]["normalized"] = transform_vertices(x, inv)
    thresholds = {
        "normalized": threshold,
        "world": world_threshold if world_threshold is not None else threshold * _isotropic_scale(m),
    }
    out: dict[str, dict[str, float]] = {}
    for frame in ("normalized", "world"):
        res = chamfer_and_fscore(pts["pred"][frame], pts["gt"][frame], thresholds[frame])
        res.update(n_pred=len(p), n_gt=len(g))
        out[frame] = res
    return out


__all__ = ["MeshFileError", "chamfer_and_fscore", "evaluate_mesh", "sample_surface"]
