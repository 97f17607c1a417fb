"""Input encodings: multiresolution hash grid, frequency (positional) encoding, spherical harmonics.

Every encoding maps ``x (N, D_in)`` to features ``(N, D_out)``. The hash grid can also return the Jacobian of its
features with respect to the input (closed form, from the trilinear weights), which lets the SDF field compute
normals without double backward or finite differences.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Primes of the spatial hash (Teschner et al.); the first is 1 so that coarse hashed levels stay coherent along x.
HASH_PRIMES = (1, 2654435761, 805459861)

# The 8 corners of a unit cube, (8, 3), ordered by their bits (x is bit 0).
_CORNERS = torch.tensor([[(c >> 0) & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], dtype=torch.long)


class HashGrid(nn.Module):
    """Multiresolution hash encoding (Mueller et al. 2022) in pure PyTorch.

    Level ``l`` has ``R_l = floor(base_resolution * per_level_scale**l)`` cells per axis, i.e. ``R_l + 1`` vertices.
    A level whose ``(R_l + 1)**3`` vertices fit in ``2**log2_hashmap_size`` entries is indexed densely (no
    collisions); finer levels are hashed. All levels live in one parameter table.

    Progressive training: only the first ``active_levels`` levels are computed; the others output zeros.
    """

    def __init__(
        self,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 1.447269237440378,
        init_std: float = 1e-4,
    ) -> None:
        super().__init__()
        self.n_levels = n_levels
        self.n_features = n_features_per_level
        self.output_dim = n_levels * n_features_per_level
        self.hashmap_size = 2**log2_hashmap_size
        resolutions, offsets, dense = [], [0], []
        for level in range(n_levels):
            res = int(math.floor(base_resolution * per_level_scale**level))
            n_vertices = (res + 1) ** 3
            is_dense = n_vertices <= self.hashmap_size
            size = n_vertices if is_dense else self.hashmap_size
            resolutions.append(res)
            dense.append(is_dense)
            offsets.append(offsets[-1] + size)
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.long), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets[:-1], dtype=torch.long), persistent=False)
        self.register_buffer("dense", torch.tensor(dense, dtype=torch.bool), persistent=False)
        self.register_buffer("corners", _CORNERS.clone(), persistent=False)
        # Resolutions grow with the level, so the densely indexed levels are exactly the first ones. Kept as a
        # Python int: reading it from a tensor would cost a host sync (and a graph break under torch.compile).
        self.n_dense_levels = sum(dense)
        self.table = nn.Parameter(torch.empty(offsets[-1], n_features_per_level).uniform_(-init_std, init_std))
        self.active_levels = n_levels
        # static_levels: compute every level and zero the inactive ones with a mask tensor, so shapes never
        # change with the progressive schedule (under torch.compile a change would force a recompilation).
        self.static_levels = False
        self.register_buffer("level_mask", torch.ones(self.output_dim), persistent=False)

    def set_active_levels(self, n: int) -> None:
        self.active_levels = max(1, min(self.n_levels, int(n)))
        self.level_mask.fill_(0.0)
        self.level_mask[: self.active_levels * self.n_features] = 1.0

    def vertex_indices(self, cell: Tensor, levels: slice) -> Tensor:
        """Table rows of the 8 corners of each cell.

        Args:
            cell: (N, L, 3) integer lower corner of the cell at each level.
            levels: which levels ``cell`` covers (dense levels come first, hashed ones after).
        Returns:
            (N, L, 8) indices into ``table``; corner ``c`` is offset ``(c & 1, c >> 1 & 1, c >> 2 & 1)``.
        """
        n_dense = min(self.n_dense_levels, cell.shape[1])
        parts = []
        if n_dense:
            # Per-axis index contributions of both corners, (N, Ld, 2) each, combined by broadcasting to 8.
            c = cell[:, :n_dense]
            res1 = self.resolutions[levels][:n_dense] + 1
            ix = torch.stack([c[..., 0], c[..., 0] + 1], -1)
            iy = torch.stack([c[..., 1], c[..., 1] + 1], -1) * res1[:, None]
            iz = torch.stack([c[..., 2], c[..., 2] + 1], -1) * (res1 * res1)[:, None]
            parts.append(iz[..., :, None, None] + iy[..., None, :, None] + ix[..., None, None, :])
        if n_dense < cell.shape[1]:
            c = cell[:, n_dense:]
            hx = torch.stack([c[..., 0], c[..., 0] + 1], -1) * HASH_PRIMES[0]
            hy = torch.stack([c[..., 1], c[..., 1] + 1], -1) * HASH_PRIMES[1]
            hz = torch.stack([c[..., 2], c[..., 2] + 1], -1) * HASH_PRIMES[2]
            h = hz[..., :, None, None] ^ hy[..., None, :, None] ^ hx[..., None, None, :]
            parts.append(h & (self.hashmap_size - 1))
        idx = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        return idx.reshape(cell.shape[0], cell.shape[1], 8) + self.offsets[levels][None, :, None]

    def forward(self, x: Tensor, with_jacobian: bool = False) -> tuple[Tensor, Tensor | None]:
        """Encodes points.

        Args:
            x: (N, 3) points in [0, 1]^3 (clamped).
            with_jacobian: also return d features / d x.
        Returns:
            features: (N, n_levels * n_features).
            jacobian: (N, n_levels * n_features, 3) or None.
        """
        n_pts = x.shape[0]
        n_act = self.n_levels if self.static_levels else self.active_levels
        levels = slice(0, n_act)
        x = x.clamp(0.0, 1.0)
        res = self.resolutions[levels].to(x.dtype)  # (L,)
        pos = x[:, None, :] * res[None, :, None]  # (N, L, 3)
        cell = pos.floor().clamp(max=res[None, :, None] - 1)
        frac = pos - cell  # (N, L, 3) in [0, 1]
        idx = self.vertex_indices(cell.long(), levels)  # (N, L, 8)
        feats = self.table[idx]  # (N, L, 8, F)

        # Trilinear weights as an outer product of per-axis weights (1 - f, f), laid out (z, y, x) like the corners.
        wx, wy, wz = (torch.stack([1 - frac[..., d], frac[..., d]], -1) for d in range(3))  # (N, L, 2) each
        w = (wz[..., :, None, None] * wy[..., None, :, None] * wx[..., None, None, :]).reshape(n_pts, n_act, 8)
        out = torch.einsum("nlc,nlcf->nlf", w, feats)
        out = self._pad_levels(out.reshape(n_pts, n_act * self.n_features))
        if self.static_levels:
            out = out * self.level_mask
        if not with_jacobian:
            return out, None
        # d w / d x_d replaces the axis-d factor by d(1 - f, f)/dx = (-res, res).
        ds = torch.tensor([-1.0, 1.0], device=x.device, dtype=x.dtype) * res[:, None]  # (L, 2)
        dx = (wz[..., :, None, None] * wy[..., None, :, None] * ds[:, None, None, :]).reshape(n_pts, n_act, 8)
        dy = (wz[..., :, None, None] * ds[:, None, :, None] * wx[..., None, None, :]).reshape(n_pts, n_act, 8)
        dz = (ds[:, :, None, None] * wy[..., None, :, None] * wx[..., None, None, :]).reshape(n_pts, n_act, 8)
        dw = torch.stack([dx, dy, dz], -1)  # (N, L, 8, 3)
        jac = torch.einsum("nlcf,nlcd->nlfd", feats, dw).reshape(n_pts, n_act * self.n_features, 3)
        if self.static_levels:
            jac = jac * self.level_mask[:, None]
        if n_act < self.n_levels:
            jac = torch.cat([jac, jac.new_zeros(n_pts, self.output_dim - jac.shape[1], 3)], 1)
        return out, jac

    def _pad_levels(self, out: Tensor) -> Tensor:
        if out.shape[1] == self.output_dim:
            return out
        return torch.cat([out, out.new_zeros(out.shape[0], self.output_dim - out.shape[1])], 1)


class FrequencyEncoding(nn.Module):
    """sin/cos positional encoding with optional progressive masking of high frequencies (as in BARF/Neuralangelo).

    Maps (N, D) to (N, D * 2 * n_frequencies).
    """

    def __init__(self, in_dim: int = 3, n_frequencies: int = 6) -> None:
        super().__init__()
        self.n_frequencies = n_frequencies
        self.output_dim = in_dim * 2 * n_frequencies
        self.register_buffer("freqs", 2.0 ** torch.arange(n_frequencies) * math.pi, persistent=False)
        self.active_levels = n_frequencies

    def set_active_levels(self, n: int) -> None:
        self.active_levels = max(0, min(self.n_frequencies, int(n)))

    def forward(self, x: Tensor, with_jacobian: bool = False) -> tuple[Tensor, Tensor | None]:
        """x: (N, D) -> features (N, D*2*F) ordered [freq][sin/cos][dim]; jacobian (N, D*2*F, D) or None."""
        n, d = x.shape
        arg = x[:, None, :] * self.freqs[:, None]  # (N, F, D)
        mask = (torch.arange(self.n_frequencies, device=x.device) < self.active_levels).to(x.dtype)[:, None]
        out = torch.stack([arg.sin(), arg.cos()], 2) * mask[:, :, None]  # (N, F, 2, D)
        if not with_jacobian:
            return out.reshape(n, -1), None
        dsin = arg.cos() * self.freqs[:, None]
        dcos = -arg.sin() * self.freqs[:, None]
        eye = torch.eye(d, device=x.device, dtype=x.dtype)
        jac = torch.stack([dsin, dcos], 2)[..., None] * eye * mask[:, :, None, None]  # (N, F, 2, D, D)
        return out.reshape(n, -1), jac.reshape(n, -1, d)


class SphericalHarmonics(nn.Module):
    """Real spherical harmonics of a unit direction up to ``degree`` (exclusive): (N, 3) -> (N, degree**2)."""

    def __init__(self, degree: int = 4) -> None:
        super().__init__()
        if not 1 <= degree <= 4:
            raise ValueError("spherical harmonics degree must be in 1..4")
        self.degree = degree
        self.output_dim = degree**2

    def forward(self, d: Tensor) -> Tensor:
        x, y, z = d.unbind(-1)
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out = [torch.full_like(x, 0.28209479177387814)]
        if self.degree > 1:
            out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
        if self.degree > 2:
            out += [
                1.0925484305920792 * xy,
                -1.0925484305920792 * yz,
                0.94617469575755997 * zz - 0.31539156525251999,
                -1.0925484305920792 * xz,
                0.54627421529603959 * (xx - yy),
            ]
        if self.degree > 3:
            out += [
                0.59004358992664352 * y * (-3.0 * xx + yy),
                2.8906114426405538 * xy * z,
                0.45704579946446572 * y * (1.0 - 5.0 * zz),
                0.3731763325901154 * z * (5.0 * zz - 3.0),
                0.45704579946446572 * x * (1.0 - 5.0 * zz),
                1.4453057213202769 * z * (xx - yy),
                0.59004358992664352 * x * (-xx + 3.0 * yy),
            ]
        return torch.stack(out, -1)


def make_encoding(cfg: dict) -> nn.Module:
    """Builds an encoding from a config dict with ``otype`` in {HashGrid, Frequency}."""
    cfg = dict(cfg)
    otype = cfg.pop("otype")
    if otype == "HashGrid":
        return HashGrid(**cfg)
    if otype == "Frequency":
        return FrequencyEncoding(**cfg)
    if otype == "TcnnHashGrid":
        from ..accel import TcnnHashGrid

        return TcnnHashGrid(**cfg)
    raise ValueError(f"unknown encoding type {otype!r}")
