"""Rendering primitives against a brute-force per-ray loop; NeuS alpha by hand; occupancy grid on a sphere."""

import math

import numpy as np
import torch

from engine.render.occupancy import OccupancyGrid
from engine.render.primitives import (
    accumulate_along_rays,
    exclusive_cumsum_per_ray,
    neus_alpha,
    ray_sphere_intersect,
    render_weights_from_alpha,
    sample_uniform_along_rays,
)


def _packed(rng, n_rays=50, max_samples=40):
    counts = rng.integers(0, max_samples, n_rays)
    counts[3] = 0  # a ray with no samples
    ray_indices = np.repeat(np.arange(n_rays), counts)
    return counts, torch.from_numpy(ray_indices)


def test_weights_and_accumulation_match_per_ray_loop():
    rng = np.random.default_rng(0)
    counts, ray_idx = _packed(rng)
    n = int(counts.sum())
    alphas = torch.from_numpy(rng.random(n)).double()
    values = torch.from_numpy(rng.random((n, 3))).double()
    weights, trans = render_weights_from_alpha(alphas, ray_idx, len(counts))
    acc = accumulate_along_rays(weights, ray_idx, len(counts), values)
    opacity = accumulate_along_rays(weights, ray_idx, len(counts))[:, 0]
    start = 0
    for r, c in enumerate(counts):
        t, w_ref, v_ref = 1.0, [], np.zeros(3)
        for i in range(start, start + c):
            w_ref.append(t * float(alphas[i]))
            v_ref += w_ref[-1] * values[i].numpy()
            t *= 1 - float(alphas[i])
        np.testing.assert_allclose(weights[start:start + c].numpy(), w_ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(acc[r].numpy(), v_ref, rtol=1e-9, atol=1e-12)
        assert math.isclose(float(opacity[r]), sum(w_ref), rel_tol=1e-9, abs_tol=1e-12)
        start += c
    assert float(opacity[3]) == 0.0


def test_exclusive_cumsum_per_ray_long_segments_float32():
    # Long scans in float32 are where a naive global cumsum loses precision.
    rng = np.random.default_rng(1)
    counts = np.array([200_000, 5, 1, 150_000])
    ray_idx = torch.from_numpy(np.repeat(np.arange(4), counts))
    vals = torch.from_numpy(rng.random(int(counts.sum())).astype(np.float32) * -3)
    got = exclusive_cumsum_per_ray(vals, ray_idx, 4)
    ref = np.concatenate([np.concatenate([[0], np.cumsum(v.astype(np.float64))[:-1]])
                          for v in np.split(vals.numpy(), np.cumsum(counts)[:-1])])
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-2)


def test_padded_scan_used_on_mps_matches_the_float64_scan():
    from engine.render.primitives import _exclusive_cumsum_padded

    rng = np.random.default_rng(2)
    counts, ray_idx = _packed(rng)
    vals = torch.from_numpy(rng.random(int(counts.sum())).astype(np.float32))
    torch.testing.assert_close(_exclusive_cumsum_padded(vals, ray_idx, len(counts)),
                               exclusive_cumsum_per_ray(vals, ray_idx, len(counts)), rtol=1e-5, atol=1e-5)


def test_weights_from_alpha_of_densities_and_gradients_flow():
    sigma = torch.tensor([0.0, 1.0, 100.0], requires_grad=True)
    t0, t1 = torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.5, 1.0, 1.5])
    alpha = 1.0 - torch.exp(-sigma * (t1 - t0))
    w, trans = render_weights_from_alpha(alpha, torch.zeros(3, dtype=torch.long), 1)
    a1 = 1 - math.exp(-0.5)
    np.testing.assert_allclose(w.detach().numpy(), [0.0, a1, (1 - a1) * (1 - math.exp(-50))], rtol=1e-6)
    w.sum().backward()
    assert torch.isfinite(sigma.grad).all() and sigma.grad.abs().sum() > 0


def test_neus_alpha_hand_computed():
    # A ray hitting a plane head-on (cos = -1) with exact cosine (ratio 1): the SDF at the segment ends is
    # sdf -/+ dist/2, and alpha is the relative drop of sigmoid(inv_s * sdf) across the segment.
    sdf = torch.tensor([0.05, 0.0, -0.05])
    normals = torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3)
    dirs = torch.tensor([[0.0, 0.0, -1.0]]).expand(3, 3)
    dists = torch.full((3,), 0.02)
    inv_s = torch.tensor(64.0)
    got = neus_alpha(sdf, normals, dirs, dists, inv_s, 1.0)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    for i, s in enumerate([0.05, 0.0, -0.05]):
        prev, nxt = sig((s + 0.01) * 64), sig((s - 0.01) * 64)
        assert math.isclose(float(got[i]), min(1, max(0, (prev - nxt + 1e-5) / (prev + 1e-5))), rel_tol=1e-5)
    # Leaving the surface (cos = +1) is transparent once the cosine is exact.
    assert float(neus_alpha(sdf, normals, -dirs, dists, inv_s, 1.0).max()) < 1e-3


def test_ray_sphere_and_sampling():
    origins = torch.tensor([[0.0, 0.0, 3.0], [0.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    near, far, hit = ray_sphere_intersect(origins, dirs, 1.0)
    assert hit.tolist() == [True, False, True]
    np.testing.assert_allclose([near[0], far[0], near[2], far[2]], [2.0, 4.0, 0.0, 1.0], atol=1e-6)
    t0, t1, ray_idx = sample_uniform_along_rays(origins, dirs, near, torch.where(hit, far, near), 0.1, 100)
    assert torch.all(ray_idx[1:] >= ray_idx[:-1]) and 1 not in ray_idx.tolist()
    assert (ray_idx == 0).sum() == 20 and (ray_idx == 2).sum() == 10
    assert torch.all(0.5 * (t0 + t1)[ray_idx == 0] < 4.0)


def test_occupancy_grid_keeps_every_cell_that_touches_the_sphere():
    radius = 0.6
    grid = OccupancyGrid(radius=1.0, resolution=32)
    sdf = lambda x: x.norm(dim=-1) - radius  # noqa: E731
    for _ in range(3):  # the EMA decays the initial "everything occupied" state
        grid.update(sdf, inv_s=2000.0, step_size=0.01)
    # Cells whose box intersects the sphere: closest point of the box inside, farthest outside.
    c = grid.centres
    h = grid.cell_size / 2
    closest = (c.abs() - h).clamp_min(0).norm(dim=-1)
    farthest = (c.abs() + h).norm(dim=-1)
    touches = (closest <= radius) & (farthest >= radius)
    assert grid.occupied[touches].all()
    # And pruning is real: most of the volume is freed.
    assert grid.occupied_fraction() < 0.3
    pts = torch.nn.functional.normalize(torch.randn(5000, 3), dim=-1) * radius
    assert grid.query(pts).all()


def test_occupancy_grid_keeps_pinned_cells_whatever_the_sdf_says():
    """Cells holding a pinned point (the no-mask sparse-point prior) stay occupied where the SDF says empty space;
    every other cell is pruned exactly as on a grid without pins."""
    points = torch.tensor([[0.7, 0.0, 0.0], [-0.3, 0.5, 0.2]])
    grids = [OccupancyGrid(radius=1.0, resolution=16) for _ in range(2)]
    grids[0].pin(points)
    for grid in grids:
        for _ in range(3):
            grid.update(lambda x: x.norm(dim=-1) - 0.2, inv_s=2000.0, step_size=0.01, jitter=False)
    pinned, plain = grids
    assert pinned.query(points).all() and not plain.query(points).any()
    idx, _ = pinned.cell_index(points)
    others = torch.ones_like(pinned.occupied)
    others[idx] = False
    assert torch.equal(pinned.occupied[others], plain.occupied[others])
    assert plain.occupied_fraction() < 0.1  # pruning is real


def test_neus_alpha_while_the_cosine_is_annealed():
    """At cos_anneal_ratio r < 1 the cosine blends the relaxed -(1 - cos)/2 and the exact -relu(-cos):
    checked element by element against NeuS eq. 13 written out with math."""
    g = torch.Generator().manual_seed(0)
    n = 40
    sdf = (torch.rand(n, generator=g) - 0.5) * 0.2
    normals = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    dists = torch.rand(n, generator=g) * 0.05 + 0.005
    inv_s = torch.tensor(40.0)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    for ratio in (0.0, 0.3, 0.75):
        got = neus_alpha(sdf, normals, dirs, dists, inv_s, ratio)
        got_tensor_ratio = neus_alpha(sdf, normals, dirs, dists, inv_s, torch.tensor(ratio))
        torch.testing.assert_close(got_tensor_ratio, got)
        for i in range(n):
            cos = float((dirs[i] * normals[i]).sum())
            annealed = -(max(0.0, 0.5 - 0.5 * cos) * (1 - ratio) + max(0.0, -cos) * ratio)
            prev = sig((float(sdf[i]) - annealed * float(dists[i]) / 2) * 40.0)
            nxt = sig((float(sdf[i]) + annealed * float(dists[i]) / 2) * 40.0)
            want = min(1.0, max(0.0, (prev - nxt + 1e-5) / (prev + 1e-5)))
            assert math.isclose(float(got[i]), want, rel_tol=1e-4, abs_tol=1e-6), (ratio, i)
    # Relaxed (r = 0), a ray leaving the surface (cos > 0) is still partly opaque: back faces get gradient.
    leaving = (dirs * normals).sum(-1) > 0.5
    assert float(neus_alpha(sdf, normals, dirs, dists, inv_s, 0.0)[leaving & (sdf.abs() < 0.02)].max()) > 0.05
