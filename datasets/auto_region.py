"""The automatic object region of a capture without one (COLMAP / solved photos), numpy only.

Sparse SfM points crowd where the object is textured, so a region taken from them alone cuts smooth or thin parts
(issue 19: 0.71 of the object's radius on a textured rock with a smooth pillar). The region here is the smallest
sphere holding two others, so it errs on the side of too large (the background model takes the rest):

- the **shared view**: the space most photos see (a point counts when it lies in front of at least
  ``SHARED_FRACTION`` of the cameras and inside their images), sampled on a grid around the point the optical
  axes converge on; its centroid and the ``SHARED_PERCENTILE`` percentile of its distances. A photographer frames
  the object, so what most photos share holds it, whatever its texture;
- the **points' robust hull**: the sparse points nearer than the median camera (farther ones are background),
  their per-axis median and ``POINT_MARGIN`` x the ``POINT_PERCENTILE`` percentile of their distances.

The sphere is then shrunk, if needed, to keep every camera outside it (ray marching starts outside the unit
sphere). ``notes`` say, in one line each, why the result is uncertain: the axes do not converge (forward-facing
capture: the points alone decide), the points and the shared view disagree, or a camera limited the size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datasets.normalization import camera_distances, look_at_center, scale_matrix

SHARED_FRACTION = 0.95  # "most photos": one stray camera in twenty does not empty the shared view
SHARED_PERCENTILE = 99.0
SHARED_GRID = 40  # cells per side of the sampling grid (64k points)
MAX_GRID_VIEWS = 200  # views projected for the shared view (evenly chosen beyond this): bounded cost
POINT_PERCENTILE = 95.0
POINT_MARGIN = 1.1
MIN_OBJECT_POINTS = 20
CAMERA_CLEARANCE = 0.95  # the region's radius is at most this fraction of the nearest camera's distance
# Disagreement: the union is this much larger than the larger of the two spheres, or the points' hull is this
# small a part of the shared view.
UNION_GROWTH = 1.25
POINTS_SMALL = 0.6


@dataclass(frozen=True)
class Sphere:
    center: np.ndarray  # (3,)
    radius: float

    def contains(self, other: Sphere, tol: float = 1e-9) -> bool:
        return float(np.linalg.norm(other.center - self.center)) + other.radius <= self.radius + tol


@dataclass(frozen=True)
class AutoRegion:
    """The chosen region (world frame) and how it was made."""

    sphere: Sphere
    shared: Sphere | None  # the shared view's sphere (None: the axes do not converge or nothing is shared)
    points: Sphere | None  # the points' robust hull (None: too few points)
    notes: tuple[str, ...]  # why the region is uncertain, one line each; empty when it is not

    @property
    def scale_mat(self) -> np.ndarray:
        return scale_matrix(self.sphere.center, self.sphere.radius)

    def record(self) -> dict:
        """A JSON-ready summary (solve.json ``region``)."""

        def sphere(s: Sphere | None):
            return None if s is None else {"center": [float(v) for v in s.center], "radius": float(s.radius)}

        return {**sphere(self.sphere), "shared_view": sphere(self.shared), "points": sphere(self.points),
                "uncertain": bool(self.notes), "notes": list(self.notes)}


def enclosing_sphere(a: Sphere, b: Sphere) -> Sphere:
    """The smallest sphere holding spheres ``a`` and ``b``."""
    if a.contains(b):
        return a
    if b.contains(a):
        return b
    gap = b.center - a.center
    dist = float(np.linalg.norm(gap))
    radius = 0.5 * (dist + a.radius + b.radius)
    return Sphere(a.center + (radius - a.radius) / dist * gap, radius)


def seen_fraction(K: np.ndarray, c2w: np.ndarray, width: int, height: int, points: np.ndarray) -> np.ndarray:
    """(P,) fraction of the cameras that see each point: in front of the camera and inside its image.

    Args:
        K: (N, 3, 3) OpenCV intrinsics; c2w: (N, 3, 4) OpenGL camera-to-world; points: (P, 3), same frame.
    """
    if len(K) > MAX_GRID_VIEWS:
        keep = np.linspace(0, len(K) - 1, MAX_GRID_VIEWS).round().astype(int)
        K, c2w = K[keep], c2w[keep]
    seen = np.zeros(len(points), dtype=np.int32)
    pts = np.asarray(points, dtype=np.float64)
    for Ki, cam in zip(K, c2w, strict=True):
        local = (pts - cam[:, 3]) @ cam[:, :3]  # OpenGL camera coordinates: x right, y up, looking down -z
        depth = -local[:, 2]
        front = depth > 1e-9
        u = Ki[0, 0] * local[:, 0] / np.where(front, depth, 1.0) + Ki[0, 2]
        v = -Ki[1, 1] * local[:, 1] / np.where(front, depth, 1.0) + Ki[1, 2]
        seen += front & (u >= -0.5) & (u <= width - 0.5) & (v >= -0.5) & (v <= height - 0.5)
    return seen / len(K)


def shared_view(K: np.ndarray, c2w: np.ndarray, width: int, height: int, center: np.ndarray) -> Sphere | None:
    """The sphere of the space at least ``SHARED_FRACTION`` of the photos see, sampled on a grid around
    ``center`` (reaching the nearest camera); None when too little is shared to measure."""
    half = float(camera_distances(c2w, center).min())
    cells = (np.arange(SHARED_GRID) + 0.5) / SHARED_GRID * 2.0 - 1.0
    grid = np.stack(np.meshgrid(cells, cells, cells, indexing="ij"), -1).reshape(-1, 3) * half + center
    shared = grid[seen_fraction(K, c2w, width, height, grid) >= SHARED_FRACTION - 1e-9]
    if len(shared) < 8:
        return None
    middle = shared.mean(axis=0)
    return Sphere(middle, float(np.percentile(np.linalg.norm(shared - middle, axis=1), SHARED_PERCENTILE)))


def points_hull(points: np.ndarray | None, c2w: np.ndarray, center: np.ndarray | None) -> Sphere | None:
    """The sparse points' robust hull (see the module docstring); None for fewer than ``MIN_OBJECT_POINTS``."""
    if points is None:
        return None
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) < MIN_OBJECT_POINTS:
        return None
    ref = np.median(pts, axis=0) if center is None else center
    near = pts[np.linalg.norm(pts - ref, axis=1) < float(np.median(camera_distances(c2w, ref)))]
    if len(near) >= MIN_OBJECT_POINTS:  # a background behind the object must not inflate the region
        pts = near
    middle = np.median(pts, axis=0)
    return Sphere(middle, POINT_MARGIN * float(np.percentile(np.linalg.norm(pts - middle, axis=1), POINT_PERCENTILE)))


def auto_region(K: np.ndarray, c2w: np.ndarray, width: int, height: int, points: np.ndarray | None) -> AutoRegion:
    """The automatic region of world-frame cameras and sparse points (see the module docstring).

    Args:
        K: (N, 3, 3) intrinsics; c2w: (N, 3, 4) world-frame cameras (OpenGL axes); width, height: image size.
        points: (P, 3) sparse points in the world frame, or None.
    Raises:
        ValueError: no region can be placed (the axes do not converge and there are no points; a camera sits at
            the centre).
    """
    notes: list[str] = []
    center = look_at_center(c2w)
    shared = None if center is None else shared_view(K, c2w, width, height, center)
    hull = points_hull(points, c2w, center)
    if center is None:
        if hull is None:
            raise ValueError("cannot place the object: camera axes are nearly parallel and there are no points")
        notes.append("the cameras' axes do not converge (a forward-facing capture?): the region comes from the "
                     "sparse points alone")
    elif shared is None:
        notes.append("the photos share too little of their views to bound the object: the region comes from the "
                     "sparse points" + ("" if hull is not None else " (none) and the axes' meeting point"))
    if shared is not None and hull is not None:
        sphere = enclosing_sphere(shared, hull)
        if sphere.radius > UNION_GROWTH * max(shared.radius, hull.radius):
            notes.append(f"the sparse points (radius {hull.radius:.3g}) and the space the photos share (radius "
                         f"{shared.radius:.3g}) disagree on where the object is: the region holds both")
        elif hull.radius < POINTS_SMALL * shared.radius:
            notes.append(f"the sparse points span only {hull.radius / shared.radius:.0%} of the space the photos "
                         "share: their features may crowd on one part of the object, or the object is small in "
                         "the photos; the region holds the whole shared space")
    else:
        sphere = shared or hull
    if sphere is None:  # converging axes, nothing shared, no points: the sphere the images span around the centre
        from datasets.normalization import view_radius

        sphere = Sphere(center, view_radius(K, c2w, width, height, center))
    nearest = camera_distances(c2w, sphere.center)
    limit = CAMERA_CLEARANCE * float(nearest.min())
    if not limit > 0:
        raise ValueError("cannot place the object: a camera sits at the scene centre")
    if sphere.radius > limit:
        notes.append(f"a camera is {nearest.min():.3g} from the region's centre: the region was shrunk from radius "
                     f"{sphere.radius:.3g} to {limit:.3g} to keep every camera outside it and may cut the object")
        sphere = Sphere(sphere.center, limit)
    return AutoRegion(sphere, shared, hull, tuple(notes))
