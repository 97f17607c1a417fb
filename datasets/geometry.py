"""Camera conventions shared by every loader, the engine and the add-on (numpy only).

Conventions (read these once; everything else follows them):

- Intrinsics ``K`` use the OpenCV pixel convention: integer coordinates are pixel *centres*, so pixel ``(i, j)``
  (column i, row j) is centred at ``(u, v) = (i, j)`` and the image spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``.
  Downscaling an image by ``s`` therefore maps ``u' = (u + 0.5) / s - 0.5``.
- ``c2w`` is camera-to-world ``(3, 4)`` with camera axes x right, y up, z backward (OpenGL / Blender); the camera
  looks down its -z axis. The OpenCV camera (x right, y down, z forward) differs by flipping y and z.
- Loaders return ``c2w`` in the *normalized* frame (object inside the unit sphere); ``scale_mat`` (4, 4) maps
  normalized points to the dataset's world frame: ``x_world = scale_mat @ [x_norm, 1]``.
"""

from __future__ import annotations

import numpy as np

# Flips the y and z camera axes: OpenCV <-> OpenGL. Its own inverse.
CV_TO_GL = np.diag([1.0, -1.0, -1.0])


def scale_intrinsics(K: np.ndarray, factor: float) -> np.ndarray:
    """Intrinsics for an image downscaled by ``factor`` (pixel-centre aware).

    Args:
        K: (..., 3, 3) intrinsics at the original resolution.
        factor: downscale factor (2 halves the width and height).
    Returns:
        (..., 3, 3) intrinsics at the new resolution.
    """
    K = np.array(K, dtype=np.float64, copy=True)
    K[..., 0, :] /= factor
    K[..., 1, :] /= factor
    # Centre-aware shift: u' = (u + 0.5) / s - 0.5, applied to the principal point.
    K[..., 0, 2] += 0.5 / factor - 0.5
    K[..., 1, 2] += 0.5 / factor - 0.5
    return K


def project_points(K: np.ndarray, c2w: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projects world points into cameras.

    Args:
        K: (N, 3, 3) or (3, 3) intrinsics (OpenCV pixel convention).
        c2w: (N, 3, 4) or (3, 4) camera-to-world, OpenGL camera axes.
        points: (P, 3) points in the same frame as ``c2w``.
    Returns:
        uv: (N, P, 2) pixel coordinates (or (P, 2) for a single camera).
        depth: (N, P) distance along the viewing axis, positive in front of the camera.
    """
    single = np.ndim(K) == 2
    K = np.atleast_3d(K) if not single else K[None]
    c2w = c2w[None] if single else c2w
    R = c2w[:, :3, :3]
    t = c2w[:, :3, 3]
    # World -> OpenGL camera -> OpenCV camera.
    cam = np.einsum("nji,npj->npi", R, points[None, :, :] - t[:, None, :])
    cam = cam * np.array([1.0, -1.0, -1.0])
    depth = cam[..., 2]
    pix = np.einsum("nij,npj->npi", K, cam)
    uv = pix[..., :2] / pix[..., 2:3]
    if single:
        return uv[0], depth[0]
    return uv, depth


def pixel_scale_matrix(factor: float) -> np.ndarray:
    """(3, 3) map from pixel coordinates to those of an image downscaled by ``factor`` (centre aware).

    ``S @ K == scale_intrinsics(K, factor)`` and ``S @ P`` is the projection into the downscaled grid.
    """
    shift = 0.5 / factor - 0.5
    return np.array([[1.0 / factor, 0.0, shift], [0.0, 1.0 / factor, shift], [0.0, 0.0, 1.0]])


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Splits a finite projective camera ``P ~ K [R | t]`` (OpenCV camera axes) with an RQ decomposition.

    ``P`` is only defined up to scale, sign included: the sign is chosen so that ``R`` is a rotation
    (det +1), the scale so that ``K[2, 2] == 1``, and the signs of K's columns so its focal lengths are
    positive.

    Args:
        P: (3, 4) projection matrix.
    Returns:
        K: (3, 3) upper-triangular intrinsics, ``K[2, 2] == 1``, ``K[0, 0], K[1, 1] > 0``.
        R: (3, 3) world -> camera rotation.
        t: (3,) world -> camera translation (``x_cam = R @ x + t``).
    Raises:
        ValueError: ``P`` is not finite or its left 3x3 block is singular (camera at infinity / degenerate).
    """
    P = np.asarray(P, dtype=np.float64)
    if P.shape != (3, 4):
        raise ValueError(f"projection matrix must be 3x4, got shape {P.shape}")
    if not np.all(np.isfinite(P)):
        raise ValueError("projection matrix has non-finite entries")
    M = P[:, :3]
    sv = np.linalg.svd(M, compute_uv=False)
    if sv[0] == 0.0 or sv[-1] <= 1e-10 * sv[0]:
        raise ValueError("projection matrix is singular (its left 3x3 block has rank < 3)")
    if np.linalg.det(M) < 0:
        P = -P
        M = -M
    # RQ via QR of the row-reversed transpose: with J the reversal permutation, (J M)^T = Q U gives
    # M = (J U^T J)(J Q^T), an upper-triangular times an orthogonal matrix.
    Q, U = np.linalg.qr(np.flipud(M).T)
    K = np.flipud(np.fliplr(U.T))
    R = np.flipud(Q.T)
    # Make the diagonal of K positive: K D and D R with D = diag(+-1), D^2 = I.
    # det(M) > 0 then forces det(R) = +1.
    D = np.diag(np.where(np.diag(K) < 0, -1.0, 1.0))
    K = K @ D
    R = D @ R
    t = np.linalg.solve(K, P[:, 3])
    K = K / K[2, 2]
    # Exact zeros below the diagonal (they are round-off after QR).
    K[1, 0] = K[2, 0] = K[2, 1] = 0.0
    return K, R, t


def c2w_from_opencv(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Camera-to-world in OpenGL camera axes from an OpenCV world-to-camera pose.

    Args:
        R: (..., 3, 3) world -> camera rotation (OpenCV axes).
        t: (..., 3) world -> camera translation.
    Returns:
        (..., 3, 4) c2w, OpenGL camera axes.
    """
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    Rt = np.swapaxes(R, -1, -2)
    centre = -np.einsum("...ij,...j->...i", Rt, t)
    return np.concatenate([Rt @ CV_TO_GL, centre[..., None]], axis=-1)


def projection_matrix(K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """The (..., 3, 4) projection ``P = K [R | t]`` of intrinsics (..., 3, 3) and c2w (..., 3, 4) (OpenGL)."""
    K = np.asarray(K, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    R = np.swapaxes(c2w[..., :3, :3] @ CV_TO_GL, -1, -2)
    t = -np.einsum("...ij,...j->...i", R, c2w[..., :3, 3])
    return K @ np.concatenate([R, t[..., None]], axis=-1)


def blender_view_intrinsics(width: int, height: int, pixel_aspect_x: float, pixel_aspect_y: float, lens: float,
                            sensor_width: float, sensor_height: float, sensor_fit: str, shift_x: float,
                            shift_y: float) -> np.ndarray:
    """(3, 3) OpenCV intrinsics of a perspective Blender camera: a model of Blender's view plane.

    The sensor side chosen by ``sensor_fit`` ("AUTO": the larger image side, always measured by ``sensor_width``)
    spans the fitted image side (``viewfac`` pixels, corrected for pixel aspect); the shift moves the optical axis by
    ``shift * viewfac`` pixels. ``width`` and ``height`` are the rendered size (resolution times percentage).
    Used by the sample scene's render script and the add-on's camera import.
    """
    ycor = pixel_aspect_y / pixel_aspect_x  # height of a pixel in units of its width
    fit = sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if pixel_aspect_x * width >= pixel_aspect_y * height else "VERTICAL"
        sensor = sensor_width
    else:
        sensor = sensor_width if fit == "HORIZONTAL" else sensor_height
    viewfac = float(width) if fit == "HORIZONTAL" else ycor * height  # fitted extent in pixel-width units
    fx = lens * viewfac / sensor
    fy = fx / ycor
    cx = width / 2.0 - 0.5 - shift_x * viewfac
    cy = height / 2.0 - 0.5 + shift_y * viewfac / ycor
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
