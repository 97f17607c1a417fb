"""The static-shape sampler (model.sampler=static) against the packed one: same samples, same pixels, fixed shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import SAMPLE, TINY, run_engine

from engine.config import build_config, resolve_auto
from engine.model import NeuSModel, compute_losses, scheduled
from engine.render.occupancy import OccupancyGrid
from engine.render.primitives import ray_sphere_intersect, sample_static, sample_uniform_along_rays
from engine.system import NeuSSystem, bucket_rays

STEP = 0.02
T = int(np.ceil(2.0 / STEP)) + 1  # candidates per ray for any chord of the unit sphere


def _rays(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 2.5
    d = torch.nn.functional.normalize(-o + 0.6 * torch.randn(n, 3, generator=g), dim=-1)  # some rays miss
    return o, d


def _grid(fill: float, seed: int = 0) -> OccupancyGrid:
    grid = OccupancyGrid(radius=1.0, resolution=16)
    g = torch.Generator().manual_seed(seed)
    grid.occupied.copy_(torch.rand(grid.occupied.shape, generator=g) < fill)
    return grid


def _both(budget: int, fill: float = 0.4, stratified: bool = True, n: int = 96):
    o, d = _rays(n)
    near, far, hit = ray_sphere_intersect(o, d, 1.0)
    far = torch.where(hit, far, near)
    grid = _grid(fill)
    torch.manual_seed(7)
    packed = sample_uniform_along_rays(o, d, near, far, STEP, T, grid.query, stratified)
    torch.manual_seed(7)
    static = sample_static(o, d, near, far, STEP, T, budget, grid.query, stratified)
    return packed, static


@pytest.mark.parametrize("stratified", [False, True])
def test_same_samples_as_packed_when_the_budget_suffices(stratified):
    (t0, t1, ray_idx), s = _both(budget=20_000, stratified=stratified)
    n = t0.shape[0]
    assert n > 500 and int(s.n_valid) == n and bool(s.complete.all())
    assert s.valid[:n].all() and not s.valid[n:].any()
    assert torch.equal(s.t_starts[:n], t0) and torch.equal(s.t_ends[:n], t1) and torch.equal(s.ray_indices[:n], ray_idx)
    # Padding: the dummy ray R, zero-length segments.
    assert (s.ray_indices[n:] == 96).all() and (s.t_ends[n:] - s.t_starts[n:] == 0).all()


def test_overflow_marks_the_cut_rays_and_all_later_ones_incomplete():
    (t0, t1, ray_idx), s = _both(budget=900)
    counts = torch.bincount(ray_idx, minlength=96)
    assert int(s.n_valid) == t0.shape[0] > 900  # the demand is reported beyond the budget
    # The budget holds exactly the first S packed samples.
    assert s.valid.all()
    assert torch.equal(s.t_starts, t0[:900]) and torch.equal(s.ray_indices, ray_idx[:900])
    ends = torch.cumsum(counts, 0)
    assert torch.equal(s.complete, ends <= 900)
    cut = int(ray_idx[900])  # the ray whose samples were split
    assert counts[cut] > 0 and (ray_idx[:900] == cut).any() and not s.complete[cut]
    assert s.complete[:cut].all() and not s.complete[cut:].any()


def test_shapes_depend_only_on_rays_steps_and_budget():
    shapes = set()
    for fill in (0.0, 0.3, 1.0):
        for budget_hit in (False, True):
            o, d = _rays(64, seed=int(budget_hit))
            near, far, hit = ray_sphere_intersect(o, d, 1.0)
            s = sample_static(o, d, near, torch.where(hit, far, near), STEP, T, 2048, _grid(fill).query, True)
            shapes.add(tuple(tuple(x.shape) for x in s))
    assert shapes == {((2048,), (2048,), (2048,), (2048,), (64,), ())}


def test_compiles_as_one_graph_with_the_occupancy_lookup():
    # fullgraph=True fails on any graph break: .item(), nonzero() or a data-dependent shape would be one.
    o, d = _rays(64)
    near, far, hit = ray_sphere_intersect(o, d, 1.0)
    far = torch.where(hit, far, near)
    grid = _grid(0.4)

    def fn(o, d, near, far):
        return sample_static(o, d, near, far, STEP, T, 2048, grid.query, False)

    torch._dynamo.reset()
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(o, d, near, far)
    ref = fn(o, d, near, far)
    for a, b in zip(got, ref, strict=True):
        assert torch.equal(a, b)


def _model_pair(**sets):
    overrides = [f"{k}={v}" for k, v in sets.items()]
    cfg = build_config("preview", "dtu", False, overrides=overrides)
    resolve_auto(cfg, has_masks=False, device_type="cpu")  # learned background on
    torch.manual_seed(0)
    packed = NeuSModel(cfg.model)
    cfg_s = cfg.copy()
    cfg_s.model.sampler = "static"
    static = NeuSModel(cfg_s.model)
    static.load_state_dict(packed.state_dict())
    return cfg, packed, static


def _prune(model: NeuSModel) -> None:
    g = torch.Generator().manual_seed(3)
    model.occupancy.occupied.copy_(torch.rand(model.occupancy.occupied.shape, generator=g) < 0.3)


@pytest.mark.parametrize("stratified", [False, True])
def test_static_rendering_matches_packed(stratified):
    cfg, packed, static = _model_pair()
    for m in (packed, static):
        _prune(m)
    o, d = _rays(64)
    torch.manual_seed(1)
    a = packed.render_rays(o, d, torch.ones(3), stratified=stratified)
    torch.manual_seed(1)
    b = static.render_rays(o, d, torch.ones(3), stratified=stratified, budget=a.n_samples + 37)
    assert bool(b.complete.all()) and int(b.n_samples) == a.n_samples
    for key in ("rgb", "opacity", "depth", "normal"):
        torch.testing.assert_close(getattr(b, key), getattr(a, key), rtol=1e-5, atol=1e-5)
    # Losses agree too (distortion exercises the scans over the dummy ray).
    weights = {k: 0.3 for k in ("rgb_l1", "rgb_mse", "eikonal", "opaque", "sparsity", "distortion")}
    target = torch.rand(64, 3)
    la, ta = compute_losses(packed, a, target, None, weights, step=5)
    lb, tb = compute_losses(static, b, target, None, weights, step=5)
    for k in ta:
        torch.testing.assert_close(tb[k], ta[k], rtol=1e-4, atol=1e-6)
    lb.backward()
    assert torch.isfinite(static.variance.grad) and static.variance.grad != 0
    assert all(torch.isfinite(p.grad).all() for p in static.parameters() if p.grad is not None)


def test_static_losses_ignore_incomplete_rays():
    cfg, _, static = _model_pair()
    o, d = _rays(64)
    out = static.render_rays(o, d, torch.ones(3), budget=1000)  # far too small for a fresh (all-occupied) grid
    assert 0 < int(out.complete.sum()) < 64
    target = out.rgb.detach().clone()
    target[~out.complete] = 0.0  # a huge error on the incomplete rays only
    _, terms = compute_losses(static, out, target, None, {"rgb_l1": 1.0}, step=0)
    assert float(terms["rgb_l1"]) == 0.0


def test_render_image_in_static_mode_continues_with_the_rays_that_did_not_fit():
    from engine.rays import camera_rays  # noqa: F401  (render_image builds the rays)

    cfg, packed, static = _model_pair()
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]])
    c2w = torch.tensor([[1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, -1.0, 2.5]])
    a = packed.render_image(K, c2w, 24, 32, torch.ones(3), chunk=128)
    b = static.render_image(K, c2w, 24, 32, torch.ones(3), chunk=128)  # budget 32 * 128: several calls per chunk
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5)


def test_occupancy_refresh_takes_inv_s_as_a_device_tensor():
    # The static sampler passes inv_s without reading it back; the refresh must be the same as with a float.
    sdf = lambda x: x.norm(dim=-1) - 0.5  # noqa: E731
    grids = [OccupancyGrid(radius=1.0, resolution=16) for _ in range(2)]
    for grid, inv_s in zip(grids, (300.0, torch.tensor(300.0)), strict=True):
        torch.manual_seed(0)
        grid.update(sdf, inv_s, step_size=0.02, fraction=0.5)
    assert torch.equal(grids[0].occupied, grids[1].occupied) and torch.equal(grids[0].density, grids[1].density)


def test_whole_static_training_forward_compiles_as_one_graph():
    # What train.cuda_graphs compiles: render (with the learned background) + losses + statistics. One graph
    # (fullgraph=True) means no host sync and no data-dependent shape anywhere in it.
    cfg = build_config("preview", "dtu", False, overrides=["model.sampler=static", "train.loss.distortion=0.1",
                                                            "train.loss.opaque=0.1"])
    resolve_auto(cfg, has_masks=False, device_type="cpu")
    torch.manual_seed(0)
    system = NeuSSystem(cfg)
    system.model.geometry.encoding.static_levels = True  # as _compile sets it
    system.model.update_step(100)
    o, d = _rays(256)
    rgb, bg = torch.rand(256, 3), torch.ones(256, 3)
    weights = {k: scheduled(v, 100) for k, v in cfg.train.loss.items()}  # as the step computes them
    torch._dynamo.reset()
    compiled = torch.compile(system.forward_step, fullgraph=True, backend="aot_eager")
    torch.manual_seed(5)
    got = compiled(o, d, rgb, None, bg, weights)
    torch.manual_seed(5)
    ref = system.forward_step(o, d, rgb, None, bg, weights)
    torch.testing.assert_close(got[0], ref[0])
    assert set(got[1]) == {"rgb_l1", "eikonal", "opaque", "distortion"}
    for a, b in zip(got[2:], ref[2:], strict=True):
        torch.testing.assert_close(a, b)
    got[0].backward()
    assert torch.isfinite(system.model.variance.grad)


def test_ray_count_buckets_and_lagged_adaptation():
    assert [bucket_rays(n, 128, 16384) for n in (100, 1000, 1100, 5000, 10**6)] == [128, 1024, 1152, 5120, 16384]
    cfg = build_config("preview", "dtu", False, overrides=["model.sampler=static", "train.static_adapt_every=4"])
    resolve_auto(cfg, has_masks=False, device_type="cpu")
    system = NeuSSystem(cfg)
    assert system.n_rays == 256 and system.model.static_budget == 8192
    system._demand_ema = torch.tensor(16.0)  # 16 candidates per ray -> 0.9 * 8192 / 16 = 460.8 rays
    system._adapt_static_rays(0)  # requests the read-back (immediate on the CPU) ...
    assert system.n_rays == 256
    system._adapt_static_rays(1)  # ... and applies it at the next step
    assert system.n_rays == bucket_rays(460.8, 128, 2048) == 448
    system._demand_ema = torch.tensor(16.5)  # within 10 %: no change, the shapes stay put
    for step in range(2, 12):
        system._adapt_static_rays(step)
    assert system.n_rays == 448
    ckpt: dict = {}
    system.on_save_checkpoint(ckpt)
    restored = NeuSSystem(cfg)
    restored.on_load_checkpoint(ckpt)
    assert restored.n_rays == 448 and restored._demand == pytest.approx(16.5)


@pytest.mark.skipif(not (SAMPLE / "cameras_sphere.npz").is_file(), reason="bundled sample scene missing")
def test_short_static_training_run_learns(tmp_path):
    run = tmp_path / "run"
    code, events, err = run_engine("fit", str(SAMPLE), "--out", str(run), "--preset", "preview", "--steps", "30",
                                   "--progress", "jsonl", "--set", "model.sampler=static",
                                   "--set", "train.static_adapt_every=5", *TINY)
    assert code == 0, err
    progress = [e for e in events if e["event"] == "progress" and "stage" not in e]  # training's, not the export's
    assert progress[-1]["step"] == 30 and len(progress) >= 3
    losses = [p["loss"] for p in progress]
    assert np.isfinite(losses).all()
    k = max(1, len(losses) // 3)
    assert np.mean(losses[-k:]) < np.mean(losses[:k])
    assert all(0 < p["samples_per_step"] <= 8192 for p in progress)
    assert len({p["rays"] for p in progress}) > 1  # the ray count adapted (from 256 at the start)
    assert events[-1]["event"] == "done"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by engine/gpu/gpu_check.sh)")
def test_cuda_static_step_matches_packed_and_never_syncs():
    _, packed, static = _model_pair()
    packed, static = packed.cuda(), static.cuda()
    for m in (packed, static):
        _prune(m)
    o, d = (x.cuda() for x in _rays(256))
    bg = torch.ones(3, device="cuda")
    a = packed.render_rays(o, d, bg)
    b = static.render_rays(o, d, bg, budget=a.n_samples + 100)  # also the warm-up (lazy CUDA initialisation)
    for key in ("rgb", "opacity", "depth", "normal"):
        torch.testing.assert_close(getattr(b, key), getattr(a, key), rtol=1e-5, atol=1e-5)
    weights = {k: 0.3 for k in ("rgb_l1", "eikonal", "opaque", "sparsity", "distortion")}
    target = torch.rand(256, 3, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync (.item(), nonzero, bincount ...) raises
    try:
        out = static.render_rays(o, d, bg, stratified=True, budget=4096)
        loss, _ = compute_losses(static, out, target, None, weights, step=5)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("override", ["model.sampler=dense", "train.cuda_graphs=auto", "train.static_fill=0",
                                      "train.static_adapt_every=0"])
def test_bad_static_sampler_settings_are_config_errors(override):
    from engine.config import ConfigError

    with pytest.raises(ConfigError):
        build_config("preview", "dtu", True, overrides=[override])
