"""Helpers shared by the dataset tests: independent projection arithmetic (paths come from ``paths``)."""

from __future__ import annotations

import numpy as np
from paths import DTU, REPO, dtu_or_skip  # noqa: F401  (re-exported for the dataset tests)


def centre_aware(factor: float) -> np.ndarray:
    """Pixel map of a downscale, written out independently of datasets.geometry: u' = (u + 0.5) / s - 0.5."""
    return np.array([[1 / factor, 0, 0.5 / factor - 0.5], [0, 1 / factor, 0.5 / factor - 0.5], [0, 0, 1]])


def project_with(P: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(N, P, 2) pixels of points (P, 3) through projections (N, 3, 4)."""
    h = np.einsum("nij,pj->npi", P, np.c_[pts, np.ones(len(pts))])
    return h[..., :2] / h[..., 2:]
