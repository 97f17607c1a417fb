"""Optional CUDA accelerators: tinycudann (hash grid) and nerfacc (rendering scans).

Both are used only on CUDA and only when importable. ``accel.tcnn`` / ``accel.nerfacc`` in the config are
``auto`` (use when possible), ``true`` (require: error if impossible) or ``false`` (never).
"""

from __future__ import annotations

import importlib
import importlib.util

import torch
from torch import Tensor, nn

from .errors import DeviceError


def _importable(name: str) -> bool:
    if importlib.util.find_spec(name) is None:
        return False
    try:
        importlib.import_module(name)
        return True
    except Exception:  # a broken CUDA extension raises all sorts of errors at import
        return False


def want(setting, name: str, device: torch.device) -> bool:
    """Resolves an ``auto``/true/false accelerator switch for ``device``."""
    if setting in (False, "false", None):
        return False
    possible = device.type == "cuda" and _importable(name)
    if setting in (True, "true") and not possible:
        raise DeviceError(f"accel.{name}=true but {name} is not importable or the device is not CUDA")
    return possible


class TcnnHashGrid(nn.Module):
    """tinycudann's fused hash grid behind the same interface as ``HashGrid`` (no closed-form Jacobian).

    x (N, 3) in [0, 1]^3 -> (features (N, L*F) float32, None).
    """

    def __init__(self, n_levels: int, n_features_per_level: int, log2_hashmap_size: int, base_resolution: int,
                 per_level_scale: float, **_: object) -> None:
        super().__init__()
        import tinycudann as tcnn

        self.n_levels = n_levels
        self.output_dim = n_levels * n_features_per_level
        self.n_features = n_features_per_level
        self.encoding = tcnn.Encoding(3, {"otype": "HashGrid", "n_levels": n_levels,
                                          "n_features_per_level": n_features_per_level,
                                          "log2_hashmap_size": log2_hashmap_size,
                                          "base_resolution": base_resolution, "per_level_scale": per_level_scale})
        self.active_levels = n_levels

    def set_active_levels(self, n: int) -> None:
        self.active_levels = max(1, min(self.n_levels, int(n)))

    def forward(self, x: Tensor, with_jacobian: bool = False) -> tuple[Tensor, None]:
        if with_jacobian:
            raise RuntimeError("tinycudann has no closed-form Jacobian: use grad_mode=finite_difference")
        feats = self.encoding(x.clamp(0, 1)).float()
        if self.active_levels < self.n_levels:
            mask = torch.zeros(self.output_dim, device=x.device)
            mask[: self.active_levels * self.n_features] = 1
            feats = feats * mask
        return feats, None


def nerfacc_weights(alphas: Tensor, ray_indices: Tensor, n_rays: int) -> tuple[Tensor, Tensor]:
    """nerfacc's CUDA scan, same contract as ``render.primitives.render_weights_from_alpha``."""
    import nerfacc

    return nerfacc.render_weight_from_alpha(alphas, ray_indices=ray_indices, n_rays=n_rays)
