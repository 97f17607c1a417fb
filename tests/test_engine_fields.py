"""Hash grid, MLP and SDF field against plain references."""

import itertools
import math

import numpy as np
import pytest
import torch

from engine.fields.encodings import HASH_PRIMES, FrequencyEncoding, HashGrid, SphericalHarmonics
from engine.fields.geometry import SDFField


def reference_hashgrid(grid: HashGrid, x: np.ndarray) -> np.ndarray:
    """Per-point, per-level, per-corner loop: the textbook definition of the encoding."""
    table = grid.table.detach().double().numpy()
    out = np.zeros((len(x), grid.output_dim))
    for p, pt in enumerate(x):
        for level in range(grid.n_levels):
            res = int(grid.resolutions[level])
            pos = np.clip(pt, 0, 1) * res
            cell = np.minimum(np.floor(pos), res - 1).astype(np.int64)
            frac = pos - cell
            acc = np.zeros(grid.n_features)
            for bits in itertools.product((0, 1), repeat=3):
                v = cell + np.array(bits)
                if bool(grid.dense[level]):
                    row = v[0] + (res + 1) * (v[1] + (res + 1) * v[2])
                else:
                    row = (int(v[0]) * HASH_PRIMES[0]) ^ (int(v[1]) * HASH_PRIMES[1]) ^ (int(v[2]) * HASH_PRIMES[2])
                    row &= grid.hashmap_size - 1
                weight = np.prod([frac[d] if bits[d] else 1 - frac[d] for d in range(3)])
                acc += weight * table[int(grid.offsets[level]) + row]
            out[p, level * grid.n_features:(level + 1) * grid.n_features] = acc
    return out


def test_hashgrid_matches_reference_on_dense_and_hashed_levels():
    torch.manual_seed(0)
    grid = HashGrid(n_levels=5, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0,
                    init_std=1.0)
    assert bool(grid.dense[0]) and not bool(grid.dense[-1])  # both kinds of level are exercised
    x = np.random.default_rng(0).random((64, 3))
    x[:4] = [[0, 0, 0], [1, 1, 1], [0.5, 0.25, 1.0], [1.0, 0.0, 0.3]]  # faces and corners of the cube
    got = grid(torch.from_numpy(x).float())[0].detach().double().numpy()
    np.testing.assert_allclose(got, reference_hashgrid(grid, x), rtol=1e-5, atol=1e-5)


def test_hashgrid_gradients_gradcheck_float64():
    torch.manual_seed(0)
    grid = HashGrid(n_levels=3, n_features_per_level=2, log2_hashmap_size=8, base_resolution=3, per_level_scale=2.0,
                    init_std=1.0).double()
    x = (torch.rand(8, 3, dtype=torch.float64) * 0.9 + 0.05).requires_grad_(True)
    table = grid.table.detach().clone().requires_grad_(True)

    def encode(inp, tab):
        return torch.func.functional_call(grid, {"table": tab}, (inp,))[0]

    # Gradients w.r.t. both the inputs (away from cell faces) and the table.
    assert torch.autograd.gradcheck(encode, (x, table))


def test_hashgrid_jacobian_matches_autograd():
    torch.manual_seed(1)
    grid = HashGrid(n_levels=4, n_features_per_level=2, log2_hashmap_size=9, base_resolution=4, per_level_scale=1.7,
                    init_std=1.0).double()
    x = torch.rand(32, 3, dtype=torch.float64).requires_grad_(True)
    feats, jac = grid(x, with_jacobian=True)
    ref = torch.stack([torch.autograd.grad(feats[:, k].sum(), x, retain_graph=True)[0] for k in range(feats.shape[1])],
                      1)
    torch.testing.assert_close(jac, ref)


def test_progressive_levels_zero_the_inactive_features():
    grid = HashGrid(n_levels=6, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4, init_std=1.0)
    x = torch.rand(10, 3)
    full = grid(x)[0]
    grid.set_active_levels(2)
    part, jac = grid(x, with_jacobian=True)
    torch.testing.assert_close(part[:, :4], full[:, :4])
    assert torch.all(part[:, 4:] == 0) and torch.all(jac[:, 4:] == 0)
    grid.static_levels = True  # the torch.compile-friendly path computes every level, then masks
    static, static_jac = grid(x, with_jacobian=True)
    torch.testing.assert_close(static, part)
    torch.testing.assert_close(static_jac, jac)


@pytest.mark.parametrize("mode", ["closed_form", "finite_difference"])
def test_sdf_gradient_modes_agree_with_autograd(mode):
    torch.manual_seed(0)
    enc = dict(otype="HashGrid", n_levels=6, n_features_per_level=2, log2_hashmap_size=12, base_resolution=8,
               per_level_scale=1.5)
    mlp = dict(hidden_dim=32, n_hidden_layers=2, sphere_init=True, sphere_init_radius=0.5, weight_norm=True)
    field = SDFField(enc, mlp, grad_mode="autograd")
    with torch.no_grad():
        field.encoding.table.normal_(0, 0.05)
    x = torch.rand(200, 3) * 1.6 - 0.8
    _, ref, _ = field(x)
    field.grad_mode = mode
    field.fd_eps = 1e-4
    _, got, _ = field(x)
    tol = 1e-4 if mode == "closed_form" else 3e-2
    torch.testing.assert_close(got, ref, atol=tol, rtol=tol)


def test_sphere_init_starts_as_a_sphere_sdf():
    torch.manual_seed(0)
    enc = dict(otype="HashGrid", n_levels=4, n_features_per_level=2, log2_hashmap_size=12, base_resolution=8)
    field = SDFField(enc, dict(hidden_dim=64, n_hidden_layers=1, sphere_init=True, sphere_init_radius=0.5))
    d = torch.nn.functional.normalize(torch.randn(2000, 3), dim=-1)
    radii = [0.1, 0.3, 0.5, 0.7, 0.9]
    means = [field.sdf(d * r).mean().item() for r in radii]
    # On average the zero level set is the sphere of radius 0.5 and the SDF grows with unit slope (it is an
    # initialisation with random hidden units, so only the averages are tight).
    assert abs(means[2]) < 0.05
    slopes = np.diff(means) / np.diff(radii)
    assert np.all(slopes > 0.6) and np.all(slopes < 1.4)


def test_frequency_and_sh_encodings():
    enc = FrequencyEncoding(3, 4)
    x = torch.rand(5, 3, dtype=torch.float64).requires_grad_(True)
    out, jac = enc(x, with_jacobian=True)
    ref = torch.stack([torch.autograd.grad(out[:, k].sum(), x, retain_graph=True)[0] for k in range(out.shape[1])], 1)
    torch.testing.assert_close(jac, ref)
    sh = SphericalHarmonics(4)
    d = torch.nn.functional.normalize(torch.randn(2000, 3, dtype=torch.float64), dim=-1)
    y = sh(d)
    # Orthonormal on the sphere: the Monte-Carlo Gram matrix is close to identity / (4 pi).
    gram = y.T @ y / len(d) * 4 * math.pi
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=0.15)


def test_sh_basis_matches_the_closed_form_real_harmonics():
    """Each basis function against scipy's complex Y_l^m turned real: sqrt(2) (-1)^m Im Y_l^|m| (m < 0), Y_l^0,
    sqrt(2) (-1)^m Re Y_l^m (m > 0). The encoding, like tinycudann's, drops the Condon-Shortley phase: (-1)^m."""
    from scipy.special import sph_harm_y

    d = torch.nn.functional.normalize(torch.randn(500, 3, generator=torch.Generator().manual_seed(0),
                                                  dtype=torch.float64), dim=-1)
    got = SphericalHarmonics(4)(d).numpy()
    x, y, z = d.numpy().T
    polar, azimuth = np.arccos(np.clip(z, -1, 1)), np.arctan2(y, x)
    column = 0
    for degree in range(4):
        for m in range(-degree, degree + 1):
            ylm = sph_harm_y(degree, abs(m), polar, azimuth)
            if m < 0:
                real = math.sqrt(2) * (-1) ** m * ylm.imag
            elif m == 0:
                real = ylm.real
            else:
                real = math.sqrt(2) * (-1) ** m * ylm.real
            np.testing.assert_allclose(got[:, column], (-1) ** m * real, atol=1e-12, err_msg=f"l={degree} m={m}")
            column += 1
    assert column == got.shape[1] == 16


def test_fd_laplacian_of_a_sphere_sdf():
    """|x| - r has Laplacian 2/|x| (the mean curvature the curvature loss penalises)."""
    from engine.fields.geometry import fd_laplacian

    sdf = lambda p: p.norm(dim=-1) - 0.5  # noqa: E731
    rho = torch.tensor([0.3, 0.5, 0.8], dtype=torch.float64)
    x = torch.nn.functional.normalize(torch.randn(3, 3, dtype=torch.float64), dim=-1) * rho[:, None]
    torch.testing.assert_close(fd_laplacian(sdf, x, sdf(x), 1e-3), 2.0 / rho, rtol=1e-5, atol=0)
