"""Neural fields: the SDF (foreground geometry), radiance (colour) and background density fields."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .encodings import SphericalHarmonics, make_encoding
from .mlp import MLP

# Regular tetrahedron directions for 4-point finite differences: sum_k v_k v_k^T = 4 I.
_TETRA = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])
_AXES6 = torch.cat([torch.eye(3), -torch.eye(3)])

GRAD_MODES = ("closed_form", "autograd", "finite_difference")


def fd_laplacian(sdf_fn, x: Tensor, sdf: Tensor, eps: float) -> Tensor:
    """Central-difference Laplacian of ``sdf_fn`` ((M, 3) -> (M,)) at ``x`` (N, 3), whose values ``sdf`` (N,) are
    known: six more evaluations per point. Returns (N,)."""
    vals = sdf_fn((x[:, None, :] + eps * _AXES6.to(x)).reshape(-1, 3)).reshape(-1, 6)
    return (vals.sum(1) - 6 * sdf) / (eps * eps)


class SDFField(nn.Module):
    """Signed distance field ``x -> (sdf, gradient, feature)`` in the normalized frame.

    Points inside the sphere of ``radius`` are mapped to the encoding's unit cube. Gradient modes:
      - ``closed_form``: exact gradient from the hash grid's trilinear Jacobian and the MLP's backward sweep,
        built from ordinary ops (no double backward), the default everywhere;
      - ``autograd``: ``torch.autograd.grad`` with ``create_graph`` (double backward; slow, not compilable);
      - ``finite_difference``: 4-point tetrahedron or 6-point central differences with step ``fd_eps``.
    """

    def __init__(
        self,
        encoding: dict,
        mlp: dict,
        radius: float = 1.0,
        feature_dim: int = 13,
        include_xyz: bool = True,
        grad_mode: str = "closed_form",
        fd_points: int = 4,
        fd_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
        self.radius = radius
        self.encoding = make_encoding(encoding)
        self.include_xyz = include_xyz
        self.feature_dim = feature_dim
        in_dim = self.encoding.output_dim + (3 if include_xyz else 0)
        self.mlp = MLP(in_dim, 1 + feature_dim, **mlp)
        self.grad_mode = grad_mode
        self.fd_points = fd_points
        self.fd_eps = fd_eps

    def _net_input(self, x: Tensor, with_jacobian: bool) -> tuple[Tensor, Tensor | None]:
        enc, jac = self.encoding((x / self.radius + 1.0) * 0.5, with_jacobian=with_jacobian)
        if self.include_xyz:
            enc = torch.cat([x / self.radius, enc], -1)
        return enc, jac

    def sdf(self, x: Tensor) -> Tensor:
        """x: (N, 3) -> sdf (N,)."""
        inp, _ = self._net_input(x, False)
        return self.mlp(inp)[:, 0]

    def forward(self, x: Tensor, with_grad: bool = True) -> tuple[Tensor, Tensor | None, Tensor]:
        """Evaluates the field.

        Args:
            x: (N, 3) points in the normalized frame.
            with_grad: also return d sdf / d x.
        Returns:
            sdf: (N,), grad: (N, 3) or None, feature: (N, feature_dim).
        """
        if not with_grad:
            inp, _ = self._net_input(x, False)
            out = self.mlp(inp)
            return out[:, 0], None, out[:, 1:]
        if self.grad_mode == "closed_form":
            inp, jac = self._net_input(x, True)
            out, g_in = self.mlp.forward_with_input_gradient(inp)
            enc_grad = g_in[:, 3:] if self.include_xyz else g_in
            grad = torch.einsum("nf,nfd->nd", enc_grad, jac) * (0.5 / self.radius)
            if self.include_xyz:
                grad = grad + g_in[:, :3] / self.radius
            return out[:, 0], grad, out[:, 1:]
        if self.grad_mode == "autograd":
            with torch.enable_grad():
                x = x if x.requires_grad else x.detach().requires_grad_(True)
                inp, _ = self._net_input(x, False)
                out = self.mlp(inp)
                grad = torch.autograd.grad(out[:, 0].sum(), x, create_graph=self.training)[0]
            return out[:, 0], grad, out[:, 1:]
        inp, _ = self._net_input(x, False)
        out = self.mlp(inp)
        return out[:, 0], self.finite_difference_gradient(x, out[:, 0]), out[:, 1:]

    def finite_difference_gradient(self, x: Tensor, sdf: Tensor) -> Tensor:
        """d sdf / d x by finite differences: (N, 3) points and their (N,) sdf -> (N, 3)."""
        eps = self.fd_eps
        if self.fd_points == 4:
            dirs = _TETRA.to(x)
            vals = self.sdf((x[:, None, :] + eps * dirs).reshape(-1, 3)).reshape(-1, 4)
            return (vals[..., None] * dirs).sum(1) / (4 * eps)
        dirs = _AXES6.to(x)
        vals = self.sdf((x[:, None, :] + eps * dirs).reshape(-1, 3)).reshape(-1, 6)
        return (vals[:, :3] - vals[:, 3:]) / (2 * eps)

    def laplacian(self, x: Tensor, sdf: Tensor, eps: float) -> Tensor:
        """Finite-difference Laplacian of the sdf, for the curvature loss: (N, 3), (N,) -> (N,)."""
        return fd_laplacian(self.sdf, x, sdf, eps)

    def set_progress(self, active_levels: int) -> None:
        self.encoding.set_active_levels(active_levels)


class RadianceField(nn.Module):
    """Colour from (feature, view direction, normal): (N, F), (N, 3), (N, 3) -> rgb (N, 3) in [0, 1].

    ``use_view_dir=False`` gives a direction-free colour head (diffuse-only look; useful for texture baking).
    """

    def __init__(self, feature_dim: int, mlp: dict, sh_degree: int = 4, use_view_dir: bool = True,
                 use_normal: bool = True) -> None:
        super().__init__()
        self.use_view_dir = use_view_dir
        self.use_normal = use_normal
        self.dir_encoding = SphericalHarmonics(sh_degree)
        in_dim = feature_dim + (self.dir_encoding.output_dim if use_view_dir else 0) + (3 if use_normal else 0)
        self.mlp = MLP(in_dim, 3, output_activation="sigmoid", **mlp)

    def forward(self, feature: Tensor, dirs: Tensor, normals: Tensor) -> Tensor:
        parts = [feature]
        if self.use_view_dir:
            parts.append(self.dir_encoding(dirs))
        if self.use_normal:
            parts.append(normals)
        return self.mlp(torch.cat(parts, -1))


def contract_unbounded(x: Tensor) -> Tensor:
    """Maps all of R^3 into the ball of radius 2: identity inside the unit ball, ``(2 - 1/|x|) x/|x|`` outside.

    (N, 3) -> (N, 3).
    """
    norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return torch.where(norm <= 1.0, x, (2.0 - 1.0 / norm) * (x / norm))


class BackgroundField(nn.Module):
    """NeRF++-style background in contracted space: density and view-dependent colour.

    ``forward(x (N,3) in the normalized frame, dirs (N,3)) -> (density (N,), rgb (N,3))``. Distances are measured
    in units of the foreground ``radius`` before contracting, so the foreground sphere maps onto the unit ball and
    the background's grid resolution means the same for any ``model.radius``.
    """

    def __init__(self, encoding: dict, mlp: dict, color_mlp: dict, feature_dim: int = 15, sh_degree: int = 4,
                 use_view_dir: bool = True, radius: float = 1.0) -> None:
        super().__init__()
        self.radius = radius
        self.encoding = make_encoding(encoding)
        self.mlp = MLP(self.encoding.output_dim, 1 + feature_dim, **mlp)
        # Without view dependence a background point has one colour for every camera, so the background cannot
        # paint a different picture of the object for each view (and steal it from the foreground).
        self.dir_encoding = SphericalHarmonics(sh_degree) if use_view_dir else None
        dir_dim = self.dir_encoding.output_dim if use_view_dir else 0
        self.color_mlp = MLP(feature_dim + dir_dim, 3, output_activation="sigmoid", **color_mlp)

    def forward(self, x: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
        u = contract_unbounded(x / self.radius) * 0.25 + 0.5  # ball of radius 2 -> [0, 1]^3
        enc, _ = self.encoding(u)
        out = self.mlp(enc)
        density = torch.exp(out[:, 0].clamp(max=15.0) - 1.0)  # shifted exp: starts nearly transparent
        feats = out[:, 1:] if self.dir_encoding is None else torch.cat([out[:, 1:], self.dir_encoding(dirs)], -1)
        rgb = self.color_mlp(feats)
        return density, rgb
