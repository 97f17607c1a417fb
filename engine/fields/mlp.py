"""Small MLPs with Softplus(beta=100), optional weight normalisation and NeuS geometric (sphere) initialisation.

``MLP.forward_with_input_gradient`` returns the gradient of the first output with respect to the input in closed
form (a backward sweep through the layers written as ordinary tensor ops), so the result is itself differentiable
with plain first-order autograd: that is what makes closed-form SDF normals cheap and ``torch.compile``-friendly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Linear(nn.Module):
    """Linear layer with optional weight normalisation (w = g * v / |v|, per output row)."""

    def __init__(self, in_dim: int, out_dim: int, weight_norm: bool = False) -> None:
        super().__init__()
        self.weight_norm = weight_norm
        self.v = nn.Parameter(torch.empty(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        nn.init.kaiming_uniform_(self.v, a=math.sqrt(5))
        if weight_norm:
            self.g = nn.Parameter(self.v.detach().norm(dim=1))

    def weight(self) -> Tensor:
        if not self.weight_norm:
            return self.v
        return self.g[:, None] * self.v / self.v.norm(dim=1, keepdim=True)

    def set_weight(self, w: Tensor) -> None:
        """Initialises the effective weight (used by the geometric init)."""
        with torch.no_grad():
            self.v.copy_(w)
            if self.weight_norm:
                self.g.copy_(w.norm(dim=1))


class MLP(nn.Module):
    """``in_dim -> hidden x n_hidden_layers -> out_dim`` with Softplus(beta) or ReLU hidden activations.

    Args:
        output_activation: None, "sigmoid" or "none".
        sphere_init: NeuS geometric init so the first output starts as the SDF of a sphere of
            ``sphere_init_radius`` (input columns ``[:3]`` must be the xyz coordinates in the same units).
        inside_out: flips the sign of the init (for scenes seen from inside).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 64,
        n_hidden_layers: int = 1,
        activation: str = "softplus",
        output_activation: str | None = None,
        weight_norm: bool = False,
        sphere_init: bool = False,
        sphere_init_radius: float = 0.5,
        inside_out: bool = False,
        softplus_beta: float = 100.0,
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * n_hidden_layers + [out_dim]
        self.layers = nn.ModuleList(Linear(a, b, weight_norm) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.activation = activation
        self.output_activation = output_activation
        self.beta = softplus_beta
        if sphere_init:
            self._sphere_init(sphere_init_radius, inside_out)

    def _sphere_init(self, radius: float, inside_out: bool) -> None:
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            out_dim, in_dim = layer.v.shape
            with torch.no_grad():
                if i == n - 1:
                    mean = math.sqrt(math.pi) / math.sqrt(in_dim)
                    w = torch.randn(out_dim, in_dim) * 1e-4 + (-mean if inside_out else mean)
                    layer.bias.fill_(radius if inside_out else -radius)
                elif i == 0:
                    # Only the xyz columns start non-zero: the network begins as a function of position alone.
                    w = torch.zeros(out_dim, in_dim)
                    w[:, :3] = torch.randn(out_dim, 3) * (math.sqrt(2) / math.sqrt(out_dim))
                    layer.bias.zero_()
                else:
                    w = torch.randn(out_dim, in_dim) * (math.sqrt(2) / math.sqrt(out_dim))
                    layer.bias.zero_()
            layer.set_weight(w)

    def _act(self, z: Tensor) -> Tensor:
        return F.softplus(z, beta=self.beta) if self.activation == "softplus" else F.relu(z)

    def _act_grad(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.beta * z) if self.activation == "softplus" else (z > 0).to(z.dtype)

    def _out(self, y: Tensor) -> Tensor:
        return torch.sigmoid(y) if self.output_activation == "sigmoid" else y

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, in_dim) -> (N, out_dim)."""
        h = x
        for layer in self.layers[:-1]:
            h = self._act(F.linear(h, layer.weight(), layer.bias))
        last = self.layers[-1]
        return self._out(F.linear(h, last.weight(), last.bias))

    def forward_with_input_gradient(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Output and d output[:, 0] / d x.

        Args:
            x: (N, in_dim).
        Returns:
            y: (N, out_dim) (no output activation is applied to the first channel's gradient path).
            grad: (N, in_dim).
        """
        h = x
        weights, pre = [], []
        for layer in self.layers[:-1]:
            w = layer.weight()
            z = F.linear(h, w, layer.bias)
            weights.append(w)
            pre.append(z)
            h = self._act(z)
        last = self.layers[-1]
        w_last = last.weight()
        y = F.linear(h, w_last, last.bias)
        g = w_last[0].expand(x.shape[0], -1)  # (N, hidden)
        for w, z in zip(reversed(weights), reversed(pre), strict=True):
            g = (g * self._act_grad(z)) @ w
        return self._out(y), g
