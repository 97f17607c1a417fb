"""The user's object region (``data.region``): read from a config, and the box crop of extracted meshes.

The region itself becomes the normalized frame in ``datasets`` (``datasets.cameras.apply_region``); here it is
only read and, for a box, applied to the mesh (the unit sphere circumscribes the box, so its corners' surroundings
would otherwise come back as geometry).
"""

from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from datasets.normalization import box_half_size_normalized, region_record


def region_of(cfg, key: str = "data.region") -> dict | None:
    """``data.region`` of a config (``key="region"`` for its ``data`` section) as a plain dict; None for auto or a
    config saved before the key existed."""
    node = OmegaConf.select(cfg, key, default=None)
    if node is None:
        return None
    region = OmegaConf.to_container(node, resolve=True)
    return None if (region.get("type") or "auto") == "auto" else region


def record(cfg, scale_mat: np.ndarray, notes: tuple[str, ...] = ()) -> dict:
    """The ``region`` entry of normalization.json; an automatic region also lists why it is uncertain (``notes``,
    ``CameraSet.region_notes``; empty when it is not)."""
    entry = region_record(region_of(cfg), scale_mat)
    if entry["type"] == "auto":
        entry["notes"] = list(notes)
    return entry


def crop_to_box(cfg, scale_mat: np.ndarray, verts: np.ndarray, faces: np.ndarray, *per_vertex: np.ndarray):
    """Drops faces with a vertex outside a user box (normalized frame) and unused vertices; other regions pass.

    Args:
        verts: (V, 3); faces: (F, 3); per_vertex: arrays with V rows (colours, normals) kept in step.
    Returns:
        (verts, faces, *per_vertex) after the crop.
    """
    half = box_half_size_normalized(region_of(cfg), scale_mat)
    if half is None or len(faces) == 0:
        return (verts, faces, *per_vertex)
    inside = np.all(np.abs(verts) <= half[None] + 1e-9, axis=1)
    faces = faces[inside[faces].all(axis=1)]
    used = np.zeros(len(verts), dtype=bool)
    used[faces.reshape(-1)] = True
    remap = np.cumsum(used) - 1
    return (verts[used], remap[faces].astype(faces.dtype), *(a[used] for a in per_vertex))
