"""How far solved cameras are from known ones, up to the similarity SfM cannot know (numpy only).

Structure from motion recovers cameras up to scale, rotation and translation; comparing with calibrated cameras
first fits that similarity on the camera centres (Umeyama's least squares), then measures what is left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import numpy as np


@dataclass
class Similarity:
    scale: float
    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) points of the source frame -> target frame."""
        return self.scale * points @ self.rotation.T + self.translation

    def matrix(self) -> np.ndarray:
        """(4, 4) homogeneous form."""
        mat = np.eye(4)
        mat[:3, :3] = self.scale * self.rotation
        mat[:3, 3] = self.translation
        return mat


def fit_similarity(source: np.ndarray, target: np.ndarray) -> Similarity:
    """Least-squares ``target ~ s R source + t`` for (N, 3) corresponding points, N >= 3 not collinear."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    xs, xt = source - mu_s, target - mu_t
    cov = xt.T @ xs / len(source)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection fits better: take the best rotation instead
        sign[2, 2] = -1.0
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(d) @ sign) / (xs**2).sum(axis=1).mean())
    return Similarity(scale, rotation, mu_t - scale * mu_s @ rotation.T)


@dataclass
class CameraErrors:
    similarity: Similarity  # solved frame -> known frame
    rotation_deg: np.ndarray  # (N,) angle between solved (aligned) and known camera orientations
    centre_rel: np.ndarray  # (N,) centre distance / camera spread (RMS distance of known centres to their mean)

    def summary(self) -> dict:
        return {"median_rotation_deg": float(np.median(self.rotation_deg)),
                "max_rotation_deg": float(self.rotation_deg.max()),
                "median_centre_error_pct": float(100 * np.median(self.centre_rel)),
                "max_centre_error_pct": float(100 * self.centre_rel.max())}


def camera_errors(solved_c2w: np.ndarray, known_c2w: np.ndarray) -> CameraErrors:
    """Errors of (N, 3, 4) solved cameras against (N, 3, 4) known ones (same order, any frames and scales)."""
    sim = fit_similarity(solved_c2w[:, :, 3], known_c2w[:, :, 3])
    centres = sim.apply(solved_c2w[:, :, 3])
    known_centres = known_c2w[:, :, 3]
    spread = float(np.sqrt(((known_centres - known_centres.mean(axis=0)) ** 2).sum(axis=1).mean()))
    centre_rel = np.linalg.norm(centres - known_centres, axis=1) / spread
    aligned = np.einsum("ij,njk->nik", sim.rotation, solved_c2w[:, :, :3])
    rel = np.einsum("nji,njk->nik", known_c2w[:, :, :3], aligned)  # known^T aligned: identity when they agree
    cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    return CameraErrors(sim, np.degrees(np.arccos(cos)), centre_rel)


def paired_cameras(solved: Any, known: Any, solved_to_known_name: Callable[[str], str] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(solved c2w, known c2w), each (N, 3, 4), of the views both scenes have (``datasets`` scenes, each in its own
    normalized frame). Views pair by file stem (a solve writes JPEG photos as they came, a dataset may hold PNGs),
    or by ``solved_to_known_name`` (solved name -> known name) when given."""
    solved_key, known_key = ((solved_to_known_name, str) if solved_to_known_name is not None
                             else (lambda n: PurePath(n).stem, lambda n: PurePath(n).stem))
    index = {known_key(n): k for k, n in enumerate(known.names)}
    keys = [solved_key(n) for n in solved.names]
    pairs = [(k, index[key]) for k, key in enumerate(keys) if key in index]
    if len(pairs) < 3:
        raise ValueError(f"only {len(pairs)} views of the solve are in the known scene: at least 3 are needed")
    s_idx, k_idx = (np.array(x) for x in zip(*pairs, strict=True))
    return solved.c2w[s_idx, :3], known.c2w[k_idx, :3]


def solved_world_to_known(solved: Any, known: Any) -> Similarity:
    """The similarity taking the solve's world frame to the known scene's normalized frame, fitted on the centres of
    the cameras both have (``solved.scale_mat`` maps the solve's normalized frame to its world frame)."""
    s_c2w, k_c2w = paired_cameras(solved, known)
    world = s_c2w[:, :, 3] @ solved.scale_mat[:3, :3].T + solved.scale_mat[:3, 3]
    return fit_similarity(world, k_c2w[:, :, 3])
