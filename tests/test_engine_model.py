"""The NeuS model's losses, schedules and config handling, on small real tensors."""

import pytest
import torch

from engine.config import ConfigError, build_config, resolve_auto
from engine.model import NeuSModel, compute_losses, scheduled

ALL_LOSSES = ["rgb_l1", "rgb_mse", "eikonal", "mask", "opaque", "sparsity", "curvature", "distortion"]


def _small_model(**overrides):
    sets = [f"{k}={v}" for k, v in overrides.items()]
    cfg = build_config("preview", "dtu", True, overrides=sets)
    resolve_auto(cfg, has_masks=True, device_type="cpu")
    return cfg, NeuSModel(cfg.model)


def _rays(n=64):
    torch.manual_seed(0)
    o = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1) * 2.5
    d = torch.nn.functional.normalize(-o + 0.2 * torch.randn(n, 3), dim=-1)
    return o, d


def test_every_loss_is_computed_and_reaches_the_parameters():
    cfg, model = _small_model(**{f"train.loss.{k}": 0.5 for k in ALL_LOSSES})
    o, d = _rays()
    out = model.render_rays(o, d, torch.ones(3), stratified=True)
    assert out.n_samples > 0
    target = torch.rand(len(o), 3)
    mask = (torch.rand(len(o)) > 0.5).float()
    loss, terms = compute_losses(model, out, target, mask, cfg.train.loss, step=10)
    assert set(terms) == set(ALL_LOSSES)
    assert all(torch.isfinite(v) for v in terms.values())
    loss.backward()
    assert model.variance.grad is not None and torch.isfinite(model.variance.grad)
    assert all(p.grad is not None for p in model.radiance.parameters())
    # The sphere init zeroes the first layer's encoding columns, so the hash table only starts learning once
    # those weights have moved: one optimizer step, then the table's gradient is non-zero too.
    first = model.geometry.mlp.layers[0]
    assert first.v.grad[:, 3:].abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    out = model.render_rays(o, d, torch.ones(3), stratified=True)
    compute_losses(model, out, target, mask, cfg.train.loss, step=11)[0].backward()
    assert model.geometry.encoding.table.grad.abs().sum() > 0


def test_a_step_without_foreground_samples_still_trains_the_background():
    """Rays that miss the foreground sphere give no foreground sample at all (as every ray does once pruning has
    emptied the occupancy grid): every loss is finite, the sample losses are 0, and the background still learns."""
    cfg = build_config("preview", "colmap", False, overrides=[f"train.loss.{k}=0.5" for k in ALL_LOSSES])
    resolve_auto(cfg, has_masks=False, device_type="cpu")
    model = NeuSModel(cfg.model)
    o = torch.tensor([[0.0, 0.0, 3.0], [3.0, 0.0, 0.0], [0.0, -3.0, 0.0]])
    d = torch.nn.functional.normalize(o, dim=-1)  # straight away from the sphere
    out = model.render_rays(o, d, torch.ones(3), stratified=True)
    assert int(out.n_samples) == 0 and out.sdf.numel() == 0
    loss, terms = compute_losses(model, out, torch.rand(3, 3), None, cfg.train.loss, step=0)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in terms.values()), terms
    assert terms["eikonal"] == 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.background.parameters())


def test_zero_weight_losses_are_skipped():
    cfg, model = _small_model(**{"train.loss.sparsity": 0.0, "train.loss.eikonal": 0.0})
    o, d = _rays(16)
    out = model.render_rays(o, d, torch.ones(3))
    _, terms = compute_losses(model, out, torch.rand(16, 3), None, cfg.train.loss, step=0)
    assert "sparsity" not in terms and "eikonal" not in terms and "mask" not in terms


def test_schedules():
    sched = {"start": 0.01, "end": 0.001, "start_step": 100, "end_step": 1100}
    assert scheduled(0.3, 5) == 0.3
    assert scheduled(sched, 0) == 0.01 and scheduled(sched, 5000) == 0.001
    assert scheduled(sched, 600) == pytest.approx(0.0055)
    cfg, model = _small_model(**{"model.geometry.fd_eps": "{start: 0.01, end: 0.001, end_step: 100}",
                                 "model.geometry.grad_mode": "finite_difference"})
    model.update_step(0)
    assert model.geometry.fd_eps == pytest.approx(0.01)
    model.update_step(100)
    assert model.geometry.fd_eps == pytest.approx(0.001)


def test_progressive_levels_and_cos_anneal_follow_the_step():
    cfg, model = _small_model()
    prog = cfg.model.geometry.progressive
    model.update_step(0)
    assert model.geometry.encoding.active_levels == prog.start_level
    model.update_step(prog.update_steps * 2)
    assert model.geometry.encoding.active_levels == prog.start_level + 2
    model.update_step(10**6)
    assert model.geometry.encoding.active_levels == cfg.model.geometry.encoding.n_levels
    assert float(model.cos_anneal_ratio) == 1.0


@pytest.mark.parametrize("override", ["train.stepz=3", "train.steps=abc", "model.radius=[1]", "train.steps"])
def test_bad_config_is_rejected(override):
    with pytest.raises(ConfigError):
        build_config("preview", overrides=[override])


def test_format_defaults_layer_on_presets():
    assert build_config("quality", "blender").data.background == "white"
    assert build_config("preview", "dtu", has_masks=True).data.use_mask is True
    assert build_config("fast").train.steps == 5000


def test_learned_background_path_without_masks():
    cfg = build_config("preview", "colmap", False)
    resolve_auto(cfg, has_masks=False, device_type="cpu")
    assert cfg.model.background.enabled and not cfg.data.use_mask
    model = NeuSModel(cfg.model)
    o, d = _rays(32)
    out = model.render_rays(o, d, torch.ones(3), stratified=True)
    assert torch.isfinite(out.rgb).all() and out.rgb.shape == (32, 3)
    loss, terms = compute_losses(model, out, torch.rand(32, 3), None, cfg.train.loss, step=0)
    assert "mask" not in terms
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.background.parameters())


def test_min_inv_s_floor_follows_its_schedule():
    cfg, model = _small_model(**{"model.min_inv_s": "{start: 20, end: 1000, end_step: 100}",
                                 "model.variance_init": 0.0})  # learned inv_s = 1, below the floor
    model.update_step(0)
    assert float(model.inv_s().detach()) == pytest.approx(20.0)
    model.update_step(50)
    assert float(model.inv_s().detach()) == pytest.approx(510.0)
    model.update_step(10**6)
    assert float(model.inv_s().detach()) == pytest.approx(1000.0)
    with torch.no_grad():
        model.variance.fill_(0.8)  # learned sharpness above the floor is kept
    assert float(model.inv_s().detach()) == pytest.approx(float(torch.exp(torch.tensor(8.0))), rel=1e-5)


def test_background_never_samples_inside_its_start_sphere():
    cfg = build_config("preview", "colmap", False)
    resolve_auto(cfg, has_masks=False, device_type="cpu")
    start = cfg.model.background.start_radius * cfg.model.radius
    assert start > cfg.model.radius
    model = NeuSModel(cfg.model)
    seen = []
    forward = model.background.forward

    def spy(x, dirs):  # records where the real background field is queried
        seen.append(x.detach())
        return forward(x, dirs)

    model.background.forward = spy
    o, d = _rays(256)  # from radius 2.5: some rays miss the start sphere, some cross it
    out = model.render_rays(o, d, torch.ones(3), stratified=True)
    assert torch.isfinite(out.rgb).all()
    radii = torch.cat(seen).norm(dim=-1)
    assert radii.min() >= start * (1 - 1e-4)


def test_loss_values_on_constructed_inputs():
    """Each regulariser against its formula; padding samples (weight 0) and incomplete rays never count."""
    import math

    from engine.fields.geometry import fd_laplacian
    from engine.model import curvature_loss, eikonal_loss, opaque_loss, sparsity_loss

    valid = torch.tensor([1.0, 1.0, 1.0, 0.0])  # the last sample is padding
    grads = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 0.5], [9.0, 9, 9]])
    assert float(eikonal_loss(grads, valid)) == pytest.approx((0 + 1 + 0.25) / 3)
    sdf = torch.tensor([0.0, 0.1, -0.2, 5.0])
    assert float(sparsity_loss(sdf, 10.0, valid)) == pytest.approx((1 + math.exp(-1) + math.exp(-2)) / 3)
    opacity = torch.tensor([0.9, 0.2, 1.0, 0.5])
    complete = torch.tensor([1.0, 1.0, 1.0, 0.0])
    bce = [-math.log(0.9), -math.log(0.8), -math.log(1 - 1e-3)]  # target: the rounded opacity; 1 clamped
    assert float(opaque_loss(opacity, complete)) == pytest.approx(sum(bce) / 3, rel=1e-5)
    # Curvature: points on spheres of radius rho around the origin, |x| - 0.5 has Laplacian 2 / rho.
    rho = torch.tensor([0.4, 0.5, 0.8, 0.6], dtype=torch.float64)
    x = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1) * rho[:, None]
    field = lambda p: p.norm(dim=-1) - 0.5  # noqa: E731
    lap = fd_laplacian(field, x, field(x), 1e-3)
    want = float((2.0 / rho[:3]).mean())
    assert float(curvature_loss(lap, valid.double())) == pytest.approx(want, rel=1e-5)
    assert float(eikonal_loss(grads, torch.zeros(4))) == 0.0  # nothing valid: 0, not NaN


def test_packed_ray_count_tracks_the_sample_target():
    from engine.system import next_ray_count

    assert next_ray_count(1000, 8192, 8192, 128, 4096) == 1000  # on target: unchanged
    assert next_ray_count(1000, 16384, 8192, 128, 4096) == 850  # twice the samples: 30 % of the way to 500
    assert next_ray_count(1000, 0, 8192, 128, 4096) == 4096  # no samples at all: grows, up to the cap
    assert next_ray_count(200, 10**9, 8192, 128, 4096) == 140  # 0.7 * 200 + ~0, above the floor 128
    assert next_ray_count(130, 10**9, 8192, 128, 4096) == 128
    # With samples proportional to rays (16 per ray) it settles where the target is met: 8192 / 16 = 512 rays.
    n = 2000
    for _ in range(60):
        n = next_ray_count(n, 16 * n, 8192, 128, 4096)
    assert abs(n - 512) <= 2


def test_learned_background_leaves_the_background_colour_where_it_is_transparent():
    cfg = build_config("preview", "colmap", False)
    resolve_auto(cfg, has_masks=False, device_type="cpu")
    model = NeuSModel(cfg.model)
    with torch.no_grad():  # an empty background: zero density everywhere
        last = model.background.mlp.layers[-1]
        last.v[0].zero_()
        last.bias[0] = -40.0
    o = torch.tensor([[0.0, 0.0, 3.0], [0.0, 2.0, 3.0]])  # the second ray misses the foreground sphere
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    bg = torch.tensor([0.2, 0.5, 0.9])
    out = model.render_rays(o, d, bg)
    torch.testing.assert_close(out.rgb[1], bg)
    assert torch.isfinite(out.rgb).all()


def test_background_contraction_scales_with_the_foreground_radius():
    """The same background seen through model.radius = 2 and 1: points at twice the distance look the same."""
    from engine.fields.geometry import BackgroundField

    cfg = build_config("preview", "colmap", False).model.background
    fields = [BackgroundField(dict(cfg.encoding), dict(cfg.mlp), dict(cfg.color_mlp), radius=r) for r in (1.0, 2.0)]
    fields[1].load_state_dict(fields[0].state_dict())
    x = torch.randn(200, 3) * 3  # inside and outside the foreground sphere
    d = torch.nn.functional.normalize(torch.randn(200, 3), dim=-1)
    for a, b in zip(fields[0](x, d), fields[1](2.0 * x, d), strict=True):
        torch.testing.assert_close(a, b)


def test_meshes_stay_inside_the_sphere_that_rendering_marches():
    """A field whose zero level set crosses the cube's corners outside the foreground sphere (a sphere of radius
    1.4 in a unit-radius scene): the mesh stops at the unit sphere, where the renders stop too."""
    from engine.config_schema import ExportConfig
    from engine.export import extract_colored_mesh

    torch.manual_seed(0)
    cfg, model = _small_model(**{"model.geometry.mlp.sphere_init_radius": 1.4})
    # The raw field changes sign between |x| = 1.18 and the corner (|x| = 1.65): surface outside the unit sphere.
    raw = model.geometry.sdf(torch.tensor([[0.68, 0.68, 0.68], [0.95, 0.95, 0.95]]))
    assert raw[0] < 0 < raw[1]
    verts, faces, _, _ = extract_colored_mesh(model, ExportConfig(resolution=24, coarse_resolution=0, clean=False))
    cell = 2 * model.radius / 24
    radii = torch.from_numpy(verts).norm(dim=-1)
    assert len(faces) > 0 and float(radii.max()) <= model.radius + cell
