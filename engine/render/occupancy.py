"""Occupancy grid over the bounding cube, used to skip empty space while marching."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .primitives import neus_alpha_from_cos


class OccupancyGrid(nn.Module):
    """A ``resolution^3`` boolean grid over ``[-radius, radius]^3``, refreshed from the SDF every few steps.

    A cell is occupied when an exponential moving average of its estimated opacity exceeds ``threshold`` or when
    the SDF at its centre is within the cell's half-diagonal (times ``margin``) of zero: for a field whose gradient
    norm is about 1, a cell whose centre is farther than that from the surface cannot contain the surface.
    """

    def __init__(self, radius: float = 1.0, resolution: int = 128, threshold: float = 1e-3, ema_decay: float = 0.95,
                 margin: float = 1.5) -> None:
        super().__init__()
        self.radius = radius
        self.resolution = resolution
        self.threshold = threshold
        self.ema_decay = ema_decay
        self.margin = margin
        self.register_buffer("occupied", torch.ones(resolution**3, dtype=torch.bool))
        self.register_buffer("density", torch.zeros(resolution**3))  # EMA starts empty: the first update prunes
        axis = (torch.arange(resolution) + 0.5) / resolution * 2 - 1
        centres = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3) * radius
        self.register_buffer("centres", centres, persistent=False)
        # Cells that stay occupied whatever the SDF says there (pin); not saved: the fit sets them again.
        self.register_buffer("pinned", torch.zeros(resolution**3, dtype=torch.bool), persistent=False)

    def pin(self, points: Tensor) -> None:
        """Keeps the cells holding ``points`` (M, 3) occupied from now on (a surface known to be there)."""
        idx, inside = self.cell_index(points.to(self.centres))
        self.pinned[idx[inside]] = True
        self.occupied |= self.pinned

    @property
    def cell_size(self) -> float:
        return 2.0 * self.radius / self.resolution

    def cell_index(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """(M, 3) points -> (M,) flat cell indices and (M,) bool inside the grid."""
        u = (points / self.radius + 1.0) * 0.5 * self.resolution
        inside = ((u >= 0) & (u < self.resolution)).all(-1)
        ijk = u.long().clamp(0, self.resolution - 1)
        r = self.resolution
        return (ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2], inside

    def query(self, points: Tensor) -> Tensor:
        """(M, 3) -> (M,) bool: the point lies in an occupied cell."""
        idx, inside = self.cell_index(points)
        return self.occupied[idx] & inside

    @torch.no_grad()
    def update(self, sdf_fn: Callable[[Tensor], Tensor], inv_s: float | Tensor, step_size: float, chunk: int = 2**18,
               jitter: bool = True, fraction: float = 1.0) -> None:
        """Re-evaluates the cells (all, or a random ``fraction`` of them): ``sdf_fn`` maps (M, 3) -> (M,).

        Cells not drawn this time keep their state; with ``fraction`` f every cell is refreshed about every
        1/f updates, which keeps the cost per update low on the CPU.
        """
        n_cells = self.centres.shape[0]
        if fraction >= 1.0:
            cells = torch.arange(n_cells, device=self.centres.device)
        else:
            cells = torch.randperm(n_cells, device=self.centres.device)[: max(1, int(n_cells * fraction))]
        half_diag = 0.5 * self.cell_size * 3**0.5
        # With jitter the sample lies up to another half-diagonal from the centre.
        near_limit = self.margin * half_diag + (half_diag if jitter else 0.0)
        for start in range(0, cells.shape[0], chunk):
            idx = cells[start:start + chunk]
            c = self.centres[idx]
            if jitter:
                c = c + (torch.rand_like(c) - 0.5) * self.cell_size
            sdf = sdf_fn(c)
            # Opacity of one marching step centred here, for a ray hitting the surface head-on.
            alpha = neus_alpha_from_cos(sdf, -1.0, step_size, inv_s)
            self.density[idx] = torch.maximum(self.density[idx] * self.ema_decay, alpha)
            self.occupied[idx] = (self.density[idx] > self.threshold) | (sdf.abs() <= near_limit) | self.pinned[idx]

    def occupied_fraction(self) -> float:
        return self.occupied.float().mean().item()
