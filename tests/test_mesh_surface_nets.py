"""Surface nets (the GPU-friendly mesher) on analytic SDFs, checked against the truth and marching cubes."""

import numpy as np
import pytest
import torch
import trimesh

from engine.mesh.evaluate import chamfer_and_fscore, sample_surface
from engine.mesh.extract import MeshExtractionError, extract_mesh
from engine.mesh.surface_nets import surface_nets


def _sphere(center, radius):
    c = torch.tensor(center, dtype=torch.float32)
    return lambda x: (x - c).norm(dim=-1) - radius


@pytest.mark.parametrize("resolution", [48, 96])
def test_sphere_is_watertight_outward_and_within_a_voxel(resolution):
    center, radius = (0.1, -0.2, 0.05), 0.55
    v, f = extract_mesh(_sphere(center, radius), resolution=resolution, coarse_resolution=None,
                        method="surface_nets")
    voxel = 2.0 / (resolution - 1)
    dist = np.linalg.norm(v - np.array(center), axis=1)
    assert np.abs(dist - radius).max() < voxel
    mesh = trimesh.Trimesh(v, f, process=True)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward-facing normals give a positive signed volume
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * radius**3, rel=0.03)


def test_matches_marching_cubes_on_a_box_with_two_passes():
    def box(x):
        q = x.abs() - torch.tensor([0.5, 0.3, 0.4])
        return q.clamp_min(0).norm(dim=-1) + q.max(-1).values.clamp_max(0)

    v_sn, f_sn = extract_mesh(box, resolution=96, coarse_resolution=32, method="surface_nets")
    v_mc, f_mc = extract_mesh(box, resolution=96, coarse_resolution=32, method="marching_cubes")
    a = sample_surface(trimesh.Trimesh(v_sn, f_sn), 20000, seed=0)
    b = sample_surface(trimesh.Trimesh(v_mc, f_mc), 20000, seed=0)
    metrics = chamfer_and_fscore(a, b, threshold=0.02)
    assert metrics["chamfer_l1"] < 0.01, metrics


def test_empty_volume_and_surface_touching_the_border():
    with pytest.raises(MeshExtractionError):
        extract_mesh(lambda x: x.norm(dim=-1) + 1.0, resolution=16, coarse_resolution=None, method="surface_nets")
    # A sphere cut by the box: still a valid (open) mesh whose faces all point outward.
    vol = torch.from_numpy(np.linalg.norm(np.stack(np.meshgrid(*[np.linspace(-1, 1, 40)] * 3, indexing="ij"), -1),
                                          axis=-1) - 1.2).float()
    v, f = surface_nets(vol, (-1, -1, -1), (1, 1, 1))
    assert len(f) > 0
    normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    centres = v[f].mean(1)
    assert np.mean((normals * centres).sum(1) > 0) > 0.99
