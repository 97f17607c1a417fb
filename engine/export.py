"""From a trained model to files, in explicit stages (:func:`export_mesh`):

level (where the photos place the surface) -> extract (that level set of the SDF) -> clean -> decimate (every
smaller mesh the export needs, in one place) -> colour source (the photos' depth maps built once, for the vertex
colours and the texture) -> vertex colours -> write mesh.ply / normalization.json / frames -> [texture: UV atlas and
bake, texel fit, normal map, fidelity] -> write the textured OBJ/GLB.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from . import liveness, region
from .config_schema import ExportConfig, RunConfig
from .errors import Cancelled, InputError
from .guard import with_memory_backoff
from .mesh import transform_vertices, write_glb, write_normalization_json, write_obj, write_ply
from .mesh.color import ColorSource, field_color_source
from .mesh.extract import MeshExtractionError, clean_mesh, decimate, mesh_vertex_normals
from .mesh.extract import extract_mesh as march
from .mesh.fidelity import FIDELITY_FILE, export_fidelity, write_fidelity_json
from .mesh.normal_map import bake_normal_map, nearest_normals
from .mesh.photo import photo_source, spread_views
from .mesh.texture import TexturedMesh, texture_mesh
from .model import NeuSModel
from .photo_sweep import photo_surface_level
from .protocol import Emitter
from .run_dir import split_views
from .system import RaySource

CPU_SDF_CHUNK = 2**15  # points per SDF call off CUDA: about 0.5 s on a busy 2-core CPU (export.chunk caps it)
# Photo visibility comes from depth maps of a mesh of at most this many faces: visibility tolerates the small shift,
# and rasterising a million faces per view would cost more than the colours.
VISIBILITY_FACES = 200_000

Mesh = tuple[np.ndarray, np.ndarray]  # vertices (V, 3) float32, faces (F, 3) int64


@torch.no_grad()
def model_normals(model: NeuSModel, points: np.ndarray, device: torch.device, chunk: int = 2**16) -> np.ndarray:
    """Unit SDF gradients at points, (P, 3) -> (P, 3) float32 (closed form: no autograd needed)."""
    out = []
    geo = model.geometry
    for s in range(0, len(points), chunk):
        x = torch.from_numpy(np.ascontiguousarray(points[s:s + chunk], dtype=np.float32)).to(device)
        if geo.grad_mode == "closed_form":
            _, g, _ = geo(x, with_grad=True)
        else:
            with torch.enable_grad():
                _, g, _ = geo(x, with_grad=True)
        out.append(F.normalize(g, dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 3), np.float32)


def _device_of(model: NeuSModel) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------------- stages
def extract_surface(model: NeuSModel, opts: ExportConfig, chunk: int | None = None, scene=None,
                    progress=None, level: float = 0.0) -> Mesh:
    """Stages 1-2: marching cubes (or surface nets) on the SDF at ``level``, then the clean-up (small pieces, and
    with masks pieces outside the visual hull), in the normalized frame. ``chunk``: points per SDF call (default
    ``opts.chunk``, at most :data:`CPU_SDF_CHUNK` off CUDA: a cancel or progress event waits for the call under
    way, and a CPU gains nothing from larger calls)."""
    device = _device_of(model)
    chunk = opts.chunk if chunk is None else chunk
    chunk = chunk if device.type == "cuda" else min(chunk, CPU_SDF_CHUNK)
    r = model.radius
    verts, faces = march(model.surface_sdf, (-r, -r, -r), (r, r, r), resolution=opts.resolution, chunk=chunk,
                         device=device, coarse_resolution=opts.coarse_resolution, progress=progress,
                         method=opts.method, level=level)
    if opts.clean:
        masks = None if scene is None else scene.masks
        try:
            verts, faces = clean_mesh(verts, faces, K=None if masks is None else scene.K,
                                      c2w=None if masks is None else scene.c2w, masks=masks)
        except MeshExtractionError as exc:  # e.g. a barely trained surface lies outside the visual hull
            print(f"warning: mesh clean-up skipped: {exc}", file=sys.stderr, flush=True)
    return verts, faces


@dataclass
class Decimated:
    """Stage 3: every mesh the export derives from the extracted one, each decimated from the previous (largest
    first), so the dense mesh is simplified once and each smaller level costs less.

    Attributes:
        mesh: the exported mesh (``export.decimate`` faces; else the extracted mesh itself).
        visibility: at most :data:`VISIBILITY_FACES` faces: the mesh whose depth maps decide photo visibility
            (None when neither photo colours nor a texture need it).
        textured: the textured mesh's geometry (``export.faces``, else ``export.texture_faces``; None without a
            texture): few faces, so xatlas cuts few, large UV charts; its colours come from ``mesh``.
    """

    mesh: Mesh
    visibility: Mesh | None
    textured: Mesh | None


def decimate_stage(verts: np.ndarray, faces: np.ndarray, opts: ExportConfig, photos: bool) -> Decimated:
    """Stage 3 (:class:`Decimated`); ``photos``: the colours come from the photos. A level already within its face
    count is the previous one, unchanged."""
    def down(mesh: Mesh, target: int) -> Mesh:
        return decimate(*mesh, target) if target and len(mesh[1]) > target else mesh

    mesh = down((verts, faces), opts.decimate)
    visibility = down(mesh, VISIBILITY_FACES) if photos or opts.texture else None
    textured = down(visibility, opts.faces or opts.texture_faces) if opts.texture else None
    return Decimated(mesh, visibility, textured)


def _photo_colours(opts: ExportConfig, scene) -> bool:
    return opts.color == "photos" and scene is not None


def texturing_views(scene, holdout_every: int, limit: int = 0) -> np.ndarray:
    """Views whose photos colour the asset: the training views (held-out ones stay unseen, for honest figures), at
    most ``limit`` of them (0: all) spread over the directions they look from (:func:`spread_views`)."""
    train = split_views(scene.n_views, holdout_every)[0]
    if 0 < limit < len(train):
        train = train[spread_views(np.asarray(scene.c2w)[train, :3, 3], limit)]
    return train


def colour_source(model: NeuSModel, opts: ExportConfig, scene, visibility: Mesh | None,
                  holdout_every: int) -> ColorSource:
    """Stage 4: the colour source of the vertex colours and the texture, built once.

    Photos (``opts.color == "photos"`` with a scene): the training views' photos blended with visibility from
    depth maps of ``visibility`` (one per view, made here), the field where no photo sees the surface; else the
    field's albedo."""
    device = _device_of(model)
    if not _photo_colours(opts, scene):
        return field_color_source(model.albedo, device=device)
    idx = texturing_views(scene, holdout_every, opts.color_views)
    # Lists of views into the scene's uint8 arrays: no copy of the photos.
    masks = None if scene.masks is None else [scene.masks[i] for i in idx]
    return photo_source(*visibility, scene.K[idx], scene.c2w[idx], [scene.images[i] for i in idx], masks,
                        fallback=model.albedo, device=device)


def extract_colored_mesh(model: NeuSModel, opts: ExportConfig, scene=None, holdout_every: int = 0,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stages 1-5 in one call, for a mesh alone (previews, tests): vertices (V, 3) float32, faces (F, 3) int64,
    colours (V, 3) float32 in [0, 1], normals (V, 3), in the normalized frame."""
    verts, faces = extract_surface(model, opts, scene=scene)
    levels = decimate_stage(verts, faces, opts, _photo_colours(opts, scene))
    verts, faces = levels.mesh
    normals = model_normals(model, verts, _device_of(model))
    colors = colour_source(model, opts, scene, levels.visibility, holdout_every)(verts, normals)
    return verts, faces, colors, normals


def texture_asset(model: NeuSModel, scene, surface: Mesh, normals: np.ndarray, textured: Mesh,
                  source: ColorSource, opts: ExportConfig, holdout_every: int = 0, stats: dict | None = None,
                  ) -> tuple[TexturedMesh, np.ndarray | None]:
    """Stage 6: UV atlas and colour texture of ``textured`` (from :func:`decimate_stage`), then the optional
    silhouette fit, texel fit and (game-ready, ``opts.faces > 0``) normal map baked from the full surface.

    Its colours are sampled on ``surface`` (texel points snapped onto it, ``normals`` its SDF normals) through
    ``source``. ``stats`` receives the texel fit's and the silhouette fit's figures.

    Returns the textured mesh (seam-split, normalized frame) and the normal map (S, S, 3) uint8 or None.
    """
    device = _device_of(model)
    decimated = len(textured[1]) != len(surface[1])
    asset = texture_mesh(*textured, source, normals=None if decimated else normals, texture_size=opts.texture_size,
                         detail=(surface[0], normals) if decimated else None, device=device)
    # Normals of the welded mesh, per seam-split vertex: seam copies move (and shade) together.
    welded_normals = mesh_vertex_normals(*textured)
    welded = welded_normals[asset.source_index]
    if (opts.silhouette_fit or opts.silhouette_refine) and scene is not None and scene.masks is not None:
        asset = fit_silhouette(scene, asset, textured, welded_normals, opts, holdout_every, device, stats)
    if opts.texture_refine and opts.color == "photos" and scene is not None:
        asset = asset._replace(texture=refine_asset_texture(scene, asset, opts, holdout_every, device, stats))
    nmap = None
    if opts.faces:
        nmap = bake_normal_map(asset.vertices, asset.faces, asset.uvs, nearest_normals(surface[0], normals),
                               opts.texture_size, normals=welded, device=device)
    return asset, nmap


def fit_silhouette(scene, asset: TexturedMesh, textured: Mesh, normals: np.ndarray, opts: ExportConfig,
                   holdout_every: int, device: torch.device, stats: dict | None = None) -> TexturedMesh:
    """The textured mesh's outline brought onto the training views' masks (``engine.mesh.silhouette``): the whole
    mesh moved along its normals by ``export.silhouette_fit``'s offset, then each outline vertex by
    ``export.silhouette_refine``. Both move the welded mesh ``textured`` (``normals``: its vertex normals), so
    seam copies of a vertex move together; ``asset`` is its seam-split copy (``asset.source_index``)."""
    from .mesh.silhouette import AssetJudge, best_refinement, silhouette_offset

    idx = texturing_views(scene, holdout_every, opts.color_views)
    images, masks = [scene.images[i] for i in idx], [scene.masks[i] for i in idx]
    # One judge for both steps: the offset's own score is the refinement's baseline.
    judge = AssetJudge(asset.faces, asset.uvs, asset.texture, scene.K[idx], scene.c2w[idx], images, masks,
                       device=device)
    found: dict = {"offset": 0.0}
    vertices = np.asarray(textured[0], np.float32)
    unmoved_psnr = None
    if opts.silhouette_fit:
        offset, scores = silhouette_offset(asset.vertices, asset.faces, normals[asset.source_index], asset.uvs,
                                           asset.texture, scene.K[idx], scene.c2w[idx], images, masks, judge=judge)
        vertices = (vertices + offset * normals).astype(np.float32)
        found.update(offset=offset, psnr=scores)
        unmoved_psnr = scores[offset]
    if opts.silhouette_refine:
        found["refine"] = {}
        vertices = best_refinement(vertices, textured[1], normals, asset.source_index, judge, scene.K[idx],
                                   scene.c2w[idx], masks, stats=found["refine"], unmoved_psnr=unmoved_psnr)
    if stats is not None:
        stats["silhouette"] = found
    return asset._replace(vertices=vertices[asset.source_index])


def silhouette_fields(found: dict) -> dict:
    """``done``'s figures of :func:`fit_silhouette` (PROTOCOL.md): ``silhouette_offset`` and, when refined,
    ``silhouette_refine`` (cap chosen and its scores, views measured, mask pixels missed before each round, moves
    in pixels)."""
    fields = {"silhouette_offset": round(float(found["offset"]), 6)}
    if "refine" in found:
        fields["silhouette_refine"] = {k: found["refine"].get(k) for k in ("cap_px", "psnr", "views", "missed",
                                                                           "moved_px")}
    return fields


def refine_asset_texture(scene, asset: TexturedMesh, opts: ExportConfig, holdout_every: int, device: torch.device,
                         stats: dict | None = None) -> np.ndarray:
    """The asset's texture (S, S, 3) uint8 fitted to the training views' photos (held-out views stay unseen)."""
    from .mesh.texture_refine import RefineOptions, refine_texture

    idx = texturing_views(scene, holdout_every, opts.color_views)
    masks = None if scene.masks is None else [scene.masks[i] for i in idx]
    options = RefineOptions(steps=opts.texture_refine_steps, time_budget_s=opts.texture_refine_s)
    return refine_texture(asset.vertices, asset.faces, asset.uvs, asset.texture, scene.K[idx], scene.c2w[idx],
                          [scene.images[i] for i in idx], masks, options, device=device, stats=stats)


def frame_matrix(frame: str, scene) -> np.ndarray | None:
    """(4, 4) normalized frame -> the frame of the extra ``*_world`` / ``*_metres`` files; None for normalized.

    ``metres`` is the world frame times the dataset's true scale (``scene.metres_per_unit``, from scale.json);
    without one it is bad input (checked before training by ``fit``)."""
    if frame == "normalized":
        return None
    scale_mat = np.asarray(scene.scale_mat if scene is not None else np.eye(4), dtype=np.float64)
    if frame == "world":
        return scale_mat
    metres = getattr(scene, "metres_per_unit", None)
    if metres is None:
        where = f"{scene.root}: " if scene is not None else ""
        raise InputError(f"{where}export.frame=metres needs the dataset's true scale (scale.json): give a known "
                         "distance with solve --known-distance or the add-on's Set Scale")
    return np.diag([metres, metres, metres, 1.0]) @ scale_mat


def export_mesh(model: NeuSModel, cfg: RunConfig, scene, run_dir: Path, emitter: Emitter, opts: ExportConfig,
                timings: dict | None = None) -> dict[str, Path]:
    """Writes ``mesh.ply`` (always, normalized frame), ``normalization.json`` and the requested extras, stage by
    stage (module docstring). ``cfg``: the run's config (its region and held-out views); ``opts``: the export
    settings (``engine.config.export_settings``, with the command line's overrides).

    OBJ and GLB files are written Y-up, as those formats expect (``(x, y, z)`` stored as ``(x, z, -y)``), so
    Blender's and other tools' importers place them like ``mesh.ply``.

    Returns a mapping of output names to paths.
    """
    timings = {} if timings is None else timings
    to_frame = frame_matrix(opts.frame, scene)  # before the work: a metric frame without a scale is bad input
    emitter.emit("stage", stage="extracting")
    t0 = time.monotonic()
    holdout = cfg.data.holdout_every
    device = _device_of(model)
    level = surface_level(model, cfg, scene, emitter) if opts.photo_level else 0.0
    verts, faces = with_memory_backoff(
        lambda chunk: extract_surface(model, opts, chunk, scene, progress=_grid_progress, level=level),
        opts.chunk, "export.chunk", "extract", emitter.emit)
    levels = decimate_stage(verts, faces, opts, _photo_colours(opts, scene))
    verts, faces = levels.mesh
    normals = model_normals(model, verts, device)
    source = colour_source(model, opts, scene, levels.visibility, holdout)
    colors = source(verts, normals)
    timings["extract_s"] = time.monotonic() - t0
    liveness.check_cancel()  # the last moment a cancel leaves every file as it was
    emitter.emit("stage", stage="exporting")
    t1 = time.monotonic()
    scale_mat = np.asarray(scene.scale_mat if scene is not None else np.eye(4), dtype=np.float64)
    verts, faces, colors, normals = region.crop_to_box(cfg, scale_mat, verts, faces, colors, normals)
    files: dict[str, Path] = {}
    files["ply"] = write_ply(run_dir / "mesh.ply", verts, faces, colors=colors)
    files["normalization"] = write_normalization_json(
        run_dir / "normalization.json", scale_mat, "normalized",
        region=region.record(cfg, scale_mat, getattr(scene, "region_notes", ())),
        metres_per_unit=getattr(scene, "metres_per_unit", None))
    out_verts = transform_vertices(verts, to_frame) if to_frame is not None else verts
    suffix = "" if to_frame is None else f"_{opts.frame}"
    if to_frame is not None:
        files[f"ply{suffix}"] = write_ply(run_dir / f"mesh{suffix}.ply", out_verts, faces, colors=colors)
    extra = [f for f in opts.formats if f != "ply"]
    if opts.texture:
        emitter.emit("stage", stage="texturing")
        try:
            # A box region crops the textured mesh too (the photos' depth maps keep what lies outside it: it
            # hides the object from some views all the same).
            textured = region.crop_to_box(cfg, scale_mat, *levels.textured)
            refine_stats: dict = {}
            asset, nmap = texture_asset(model, scene, (verts, faces), normals, textured, source, opts, holdout,
                                        stats=refine_stats)
            if refine_stats.get("mse_before") is not None:
                timings["texture_refine"] = refine_stats
            if "silhouette" in refine_stats:
                timings["silhouette"] = refine_stats["silhouette"]
            fidelity = None
            if opts.fidelity and scene is not None:  # before any textured file: a cancel here writes none
                fidelity = export_fidelity(asset.vertices, asset.faces, asset.uvs, asset.texture, scene, holdout,
                                           device, progress=lambda done, total: liveness.tick("validating", done,
                                                                                              total, "views"))
        except Cancelled as exc:  # the mesh and normalization.json are whole; no textured file was started
            exc.files = dict(files)
            raise
        tv_out = transform_vertices(asset.vertices, to_frame) if to_frame is not None else asset.vertices
        obj_files = write_obj(run_dir / f"mesh_textured{suffix}.obj", tv_out, asset.faces, uvs=asset.uvs,
                              texture=asset.texture, yup=True, normal_map=nmap)
        for key, path in obj_files.items():
            files[f"obj_{key}" if key != "obj" else "obj"] = path
        files["glb"] = write_glb(run_dir / f"mesh_textured{suffix}.glb", tv_out, asset.faces, uvs=asset.uvs,
                                 texture=asset.texture, yup=True, normal_map=nmap)
        if fidelity is not None:
            fidelity["mesh"] = files["glb"].name
            files["fidelity"] = write_fidelity_json(run_dir / FIDELITY_FILE, fidelity)
            timings["fidelity"] = fidelity
    else:
        if "obj" in extra:
            files["obj"] = write_obj(run_dir / f"mesh{suffix}.obj", out_verts, faces, colors=colors, yup=True)["obj"]
        if "glb" in extra:
            files["glb"] = write_glb(run_dir / f"mesh{suffix}.glb", out_verts, faces, colors=colors, yup=True)
    timings["export_s"] = time.monotonic() - t1
    return files


def surface_level(model: NeuSModel, cfg: RunConfig, scene, emitter: Emitter) -> float:
    """The SDF level the mesh is extracted at (``export.photo_level``): where the training photos place the surface
    (``engine.photo_sweep.photo_surface_level``), or 0 without photos or with too little texture to say. Seconds on
    a CPU, with progress events."""
    if scene is None:
        return 0.0
    train_idx, _ = split_views(scene.n_views, cfg.data.holdout_every)
    photos = RaySource(scene.images, None, scene.K, scene.c2w, views=train_idx)  # the scene's arrays, no copy
    device = _device_of(model)
    sweep = OmegaConf.to_container(cfg.train.sweep)
    found = photo_surface_level(lambda points: model.sdf(points.to(device)), photos, model.radius, sweep,
                                progress=lambda done, total: liveness.tick("extracting", done, total, "rays"))
    if found is None:
        emitter.log("surface level: too few photo-consistent points to place the surface; extracted at level 0")
        return 0.0
    level, targets = found
    emitter.log(f"surface level: the photos place the surface {abs(level):.4f} {'outside' if level > 0 else 'inside'} "
                f"the field's zero level ({targets} points); the mesh is extracted there")
    return level


def _grid_progress(fraction: float) -> None:
    """The SDF grid's evaluation, chunk by chunk, as a long phase (progress events, cancel)."""
    liveness.tick("extracting", int(100 * fraction), 100, "percent")


def write_preview_mesh(model: NeuSModel, cfg: RunConfig, run_dir: Path, step: int) -> Path | None:
    """A quick low-resolution coloured mesh for live preview; None while the surface is still empty."""
    was_training = model.training
    model.eval()
    try:
        opts = ExportConfig(resolution=cfg.train.preview_resolution, coarse_resolution=0, clean=False)
        with liveness.paused():  # inside a training step: the training loop itself reports and stops
            verts, faces, colors, _ = extract_colored_mesh(model, opts)
    except MeshExtractionError:
        return None
    finally:
        model.train(was_training)
    out = run_dir / "preview" / f"preview_{step:06d}.ply"
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_ply(out, verts, faces, colors=colors)
