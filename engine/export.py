"""From a trained model to files: marching cubes, colours, optional texture, PLY/OBJ/GLB, normalization.json."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from . import liveness, region
from .config_schema import EXPORT_FORMATS, EXPORT_FRAMES, ExportConfig
from .errors import Cancelled, InputError
from .guard import with_memory_backoff
from .mesh import transform_vertices, write_glb, write_normalization_json, write_obj, write_ply
from .mesh.color import field_color_source, vertex_colors_from_field
from .mesh.extract import MeshExtractionError, clean_mesh, decimate, extract_mesh
from .mesh.fidelity import FIDELITY_FILE, export_fidelity, write_fidelity_json
from .mesh.normal_map import bake_normal_map, nearest_normals
from .mesh.photo import photo_source
from .mesh.texture import texture_mesh
from .model import NeuSModel
from .protocol import Emitter
from .run_dir import split_views


@dataclass
class ExportOptions(ExportConfig):
    """The ``export`` settings of one export: ``ExportConfig``'s fields and defaults (``engine/config_schema.py``)."""

    @classmethod
    def from_config(cls, cfg, **overrides) -> ExportOptions:
        """From the config's ``export`` section; ``overrides`` that are not None (command-line options) win."""
        values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["formats"] = list(values["formats"])
        return cls(**values)


CPU_SDF_CHUNK = 2**15  # points per SDF call off CUDA: about 0.5 s on a busy 2-core CPU (export.chunk caps it)


def _sdf_fn(model: NeuSModel):
    return model.surface_sdf


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


def extract_colored_mesh(model: NeuSModel, opts: ExportOptions, scene=None, progress=None, holdout_every: int = 0,
                         views_cache: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Marching cubes on the SDF plus per-vertex colours, in the normalized frame.

    With ``opts.color == "photos"`` the colours come from the training photos (``holdout_every``: the views held
    out of training are left out here too); ``views_cache`` keeps the per-camera depth maps for a later texture
    bake of the same mesh.

    Returns vertices (V,3) float32, faces (F,3) int64, colours (V,3) float32 in [0,1], normals (V,3).
    """
    device = _device_of(model)
    r = model.radius
    # A CPU gains nothing from larger calls, and a cancel or progress event waits for the call under way.
    chunk = int(opts.chunk) if device.type == "cuda" else min(int(opts.chunk), CPU_SDF_CHUNK)
    verts, faces = extract_mesh(_sdf_fn(model), (-r, -r, -r), (r, r, r), resolution=int(opts.resolution),
                                chunk=chunk, device=device, coarse_resolution=int(opts.coarse_resolution),
                                progress=progress, method=str(opts.method))
    if opts.clean:
        masks = None if scene is None else scene.masks
        try:
            verts, faces = clean_mesh(verts, faces, K=None if masks is None else scene.K,
                                      c2w=None if masks is None else scene.c2w, masks=masks)
        except MeshExtractionError as exc:  # e.g. a barely trained surface lies outside the visual hull
            print(f"warning: mesh clean-up skipped: {exc}", file=sys.stderr, flush=True)
    if opts.decimate and len(faces) > int(opts.decimate):
        verts, faces = decimate(verts, faces, int(opts.decimate))
    normals = model_normals(model, verts, device)
    if opts.color == "photos" and scene is not None:
        colors = _photo_source(model, scene, verts, faces, holdout_every, views_cache)(verts, normals)
    else:
        colors = vertex_colors_from_field(verts, normals, model.albedo, device=device)
    return verts, faces, colors, normals


def texturing_views(scene, holdout_every: int) -> np.ndarray:
    """Views whose photos colour the asset: the training views (held-out ones stay unseen, for honest figures)."""
    return split_views(scene.n_views, int(holdout_every))[0]


def _photo_source(model: NeuSModel, scene, verts: np.ndarray, faces: np.ndarray, holdout_every: int = 0,
                  views_cache: dict | None = None, max_faces: int = 200_000):
    """Photo colours with visibility from depth maps of (verts, faces); the field colours what no photo sees.

    A larger mesh is decimated for the depth maps only: visibility tolerates the small shift, and rasterising
    a million faces per view would cost more than the colours.
    """
    if len(faces) > max_faces:
        verts, faces = decimate(verts, faces, max_faces)
    # Vertex colours and the texture of one export see the same (decimated) mesh: its depth maps are made once.
    key = (verts.shape, faces.shape, float(np.asarray(verts, np.float64).sum()), int(faces.sum()), holdout_every)
    if views_cache is not None and key in views_cache:
        return views_cache[key]
    idx = texturing_views(scene, holdout_every)
    # Lists of views into the scene's uint8 arrays: no copy of the photos.
    masks = None if scene.masks is None else [scene.masks[i] for i in idx]
    source = photo_source(verts, faces, scene.K[idx], scene.c2w[idx], [scene.images[i] for i in idx], masks,
                          fallback=model.albedo, device=_device_of(model))
    if views_cache is not None:
        views_cache[key] = source
    return source


def texture_asset(model: NeuSModel, scene, verts: np.ndarray, faces: np.ndarray, normals: np.ndarray,
                  opts: ExportOptions, holdout_every: int = 0, views_cache: dict | None = None,
                  stats: dict | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """UV atlas, colour texture and (game-ready, ``opts.faces > 0``) a normal map baked from the full mesh.

    The textured mesh is decimated to ``opts.faces`` (else ``opts.texture_faces``) faces, so the atlas has few,
    large charts; its colours are sampled on the full mesh (points snapped onto it, its SDF normals), and photo
    visibility comes from the same depth maps as the vertex colours. With photo colours and
    ``opts.texture_refine`` the baked blend is then fitted to the training photos (:func:`refine_asset_texture`);
    ``stats`` receives its figures.

    Returns vertices (V', 3), faces (F', 3), uvs (V', 2), texture (S, S, 3) uint8, normal map (S, S, 3) uint8
    or None, in the normalized frame.
    """
    target = int(opts.faces) if opts.faces else int(opts.texture_faces)
    low_v, low_f = decimate(verts, faces, target) if len(faces) > target else (verts, faces)
    decimated = low_v is not verts
    if opts.color == "photos" and scene is not None:
        source = _photo_source(model, scene, verts, faces, holdout_every, views_cache)
    else:
        source = field_color_source(model.albedo, device=_device_of(model))
    size = int(opts.texture_size)
    tv, tf, uvs, tex = texture_mesh(low_v, low_f, source, normals=None if decimated else normals, texture_size=size,
                                    detail=(verts, normals) if decimated else None, device=_device_of(model))
    if opts.silhouette_fit and scene is not None and scene.masks is not None:
        from .mesh.extract import mesh_vertex_normals
        from .mesh.texture_refine import silhouette_offset

        idx = texturing_views(scene, holdout_every)
        welded = mesh_vertex_normals(low_v, low_f)[_vertex_mapping(low_v, tv)]  # seam copies move together
        offset, scores = silhouette_offset(tv, tf, welded, uvs, tex, scene.K[idx], scene.c2w[idx],
                                           [scene.images[i] for i in idx], [scene.masks[i] for i in idx],
                                           device=_device_of(model))
        tv = (tv + offset * welded).astype(np.float32)
        if stats is not None:
            stats["silhouette"] = {"offset": offset, "psnr": scores}
    if opts.texture_refine and opts.color == "photos" and scene is not None:
        tex = refine_asset_texture(scene, tv, tf, uvs, tex, opts, holdout_every, _device_of(model), stats)
    nmap = None
    if opts.faces:
        from .mesh.extract import mesh_vertex_normals

        welded = mesh_vertex_normals(low_v, low_f)
        vmap = _vertex_mapping(low_v, tv)
        nmap = bake_normal_map(tv, tf, uvs, nearest_normals(verts, normals), size, normals=welded[vmap],
                               device=_device_of(model))
    return tv, tf, uvs, tex, nmap


def refine_asset_texture(scene, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, texture: np.ndarray,
                         opts: ExportOptions, holdout_every: int, device: torch.device, stats: dict | None = None
                         ) -> np.ndarray:
    """The texture (S, S, 3) uint8 fitted to the training views' photos (held-out views stay unseen)."""
    from .mesh.texture_refine import RefineOptions, refine_texture

    idx = texturing_views(scene, holdout_every)
    masks = None if scene.masks is None else [scene.masks[i] for i in idx]
    options = RefineOptions(steps=int(opts.texture_refine_steps), time_budget_s=float(opts.texture_refine_s))
    return refine_texture(vertices, faces, uvs, texture, scene.K[idx], scene.c2w[idx], [scene.images[i] for i in idx],
                          masks, options, device=device, stats=stats)


def _vertex_mapping(original: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Index into ``original`` of each seam-split vertex (xatlas copies positions exactly)."""
    from scipy.spatial import cKDTree

    return cKDTree(original).query(split)[1]


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


def export_mesh(model: NeuSModel, cfg, scene, run_dir: Path, emitter: Emitter, opts: ExportOptions,
                timings: dict | None = None) -> dict[str, Path]:
    """Writes ``mesh.ply`` (always, normalized frame), ``normalization.json`` and the requested extras.

    OBJ and GLB files are written Y-up, as those formats expect (``(x, y, z)`` stored as ``(x, z, -y)``), so
    Blender's and other tools' importers place them like ``mesh.ply``.

    Returns a mapping of output names to paths.
    """
    timings = {} if timings is None else timings
    if opts.frame not in EXPORT_FRAMES:
        raise ValueError(f"frame must be one of {EXPORT_FRAMES}")
    to_frame = frame_matrix(opts.frame, scene)  # before the work: a metric frame without a scale is bad input
    emitter.emit("stage", stage="extracting")
    t0 = time.monotonic()
    holdout = int(cfg.data.holdout_every)
    views_cache: dict = {}
    verts, faces, colors, normals = with_memory_backoff(
        lambda chunk: extract_colored_mesh(model, replace(opts, chunk=chunk), scene, progress=_grid_progress,
                                           holdout_every=holdout, views_cache=views_cache),
        int(opts.chunk), "export.chunk", "extract", emitter.emit)
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
    for fmt in extra:
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"unknown mesh format {fmt!r}; use {', '.join(EXPORT_FORMATS)}")
    if opts.texture:
        emitter.emit("stage", stage="texturing")
        try:
            refine_stats: dict = {}
            tv, tf, uvs, tex, nmap = texture_asset(model, scene, verts, faces, normals, opts, holdout,
                                                   views_cache=views_cache, stats=refine_stats)
            if refine_stats.get("mse_before") is not None:
                timings["texture_refine"] = refine_stats
            if "silhouette" in refine_stats:
                timings["silhouette"] = refine_stats["silhouette"]
            fidelity = None
            if opts.fidelity and scene is not None:  # before any textured file: a cancel here writes none
                fidelity = export_fidelity(tv, tf, uvs, tex, scene, holdout, _device_of(model),
                                           progress=lambda done, total: liveness.tick("validating", done, total,
                                                                                      "views"))
        except Cancelled as exc:  # the mesh and normalization.json are whole; no textured file was started
            exc.files = dict(files)
            raise
        tv_out = transform_vertices(tv, to_frame) if to_frame is not None else tv
        obj_files = write_obj(run_dir / f"mesh_textured{suffix}.obj", tv_out, tf, uvs=uvs, texture=tex, yup=True,
                              normal_map=nmap)
        for key, path in obj_files.items():
            files[f"obj_{key}" if key != "obj" else "obj"] = path
        files["glb"] = write_glb(run_dir / f"mesh_textured{suffix}.glb", tv_out, tf, uvs=uvs, texture=tex, yup=True,
                                 normal_map=nmap)
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


def _grid_progress(fraction: float) -> None:
    """The SDF grid's evaluation, chunk by chunk, as a long phase (progress events, cancel)."""
    liveness.tick("extracting", int(100 * fraction), 100, "percent")


def write_preview_mesh(model: NeuSModel, cfg, run_dir: Path, step: int) -> Path | None:
    """A quick low-resolution coloured mesh for live preview; None while the surface is still empty."""
    was_training = model.training
    model.eval()
    try:
        opts = ExportOptions(resolution=int(cfg.train.preview_resolution), coarse_resolution=0, clean=False)
        with liveness.paused():  # inside a training step: the training loop itself reports and stops
            verts, faces, colors, _ = extract_colored_mesh(model, opts)
    except MeshExtractionError:
        return None
    finally:
        model.train(was_training)
    out = run_dir / "preview" / f"preview_{step:06d}.ply"
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_ply(out, verts, faces, colors=colors)
