"""Helpers shared by the dataset tests: where the real DTU scan is, and independent projection arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DTU = (REPO / ".." / "shared" / "data" / "dtu_scan65").resolve()


def dtu_or_skip() -> Path:
    if not (DTU / "cameras_sphere.npz").is_file():
        pytest.skip(f"DTU scan 65 not found at {DTU}")
    return DTU


def centre_aware(factor: float) -> np.ndarray:
    """Pixel map of a downscale, written out independently of datasets.geometry: u' = (u + 0.5) / s - 0.5."""
    return np.array([[1 / factor, 0, 0.5 / factor - 0.5], [0, 1 / factor, 0.5 / factor - 0.5], [0, 0, 1]])


def project_with(P: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(N, P, 2) pixels of points (P, 3) through projections (N, 3, 4)."""
    h = np.einsum("nij,pj->npi", P, np.c_[pts, np.ones(len(pts))])
    return h[..., :2] / h[..., 2:]
