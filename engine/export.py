"""From a trained model to files: marching cubes, colours, optional texture, PLY/OBJ/GLB, normalization.json."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from . import region
from .config_schema import EXPORT_FORMATS, EXPORT_FRAMES, ExportConfig
from .mesh import transform_vertices, write_glb, write_normalization_json, write_obj, write_ply
from .mesh.color import (
    field_color_source,
    photo_color_source,
    vertex_colors_from_field,
    vertex_colors_from_photos,
)
from .mesh.extract import MeshExtractionError, clean_mesh, decimate, extract_mesh
from .mesh.texture import texture_mesh
from .model import NeuSModel
from .protocol import Emitter


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


def extract_colored_mesh(model: NeuSModel, opts: ExportOptions, scene=None, progress=None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Marching cubes on the SDF plus per-vertex colours, in the normalized frame.

    Returns vertices (V,3) float32, faces (F,3) int64, colours (V,3) float32 in [0,1], normals (V,3).
    """
    device = _device_of(model)
    r = model.radius
    verts, faces = extract_mesh(_sdf_fn(model), (-r, -r, -r), (r, r, r), resolution=int(opts.resolution),
                                chunk=int(opts.chunk), device=device, coarse_resolution=int(opts.coarse_resolution),
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
    colors = vertex_colors_from_field(verts, normals, model.albedo, device=device)
    if opts.color == "photos" and scene is not None:
        colors, _ = vertex_colors_from_photos(verts, normals, scene.K, scene.c2w, scene.images,
                                              sdf_fn=_sdf_fn(model), masks=scene.masks, fallback=colors,
                                              bound_radius=r, device=device)
    return verts, faces, colors, normals


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
    emitter.emit("stage", stage="extracting")
    t0 = time.monotonic()
    verts, faces, colors, normals = extract_colored_mesh(model, opts, scene)
    timings["extract_s"] = time.monotonic() - t0
    emitter.emit("stage", stage="exporting")
    t1 = time.monotonic()
    scale_mat = np.asarray(scene.scale_mat if scene is not None else np.eye(4), dtype=np.float64)
    verts, faces, colors, normals = region.crop_to_box(cfg, scale_mat, verts, faces, colors, normals)
    files: dict[str, Path] = {}
    files["ply"] = write_ply(run_dir / "mesh.ply", verts, faces, colors=colors)
    files["normalization"] = write_normalization_json(run_dir / "normalization.json", scale_mat, "normalized",
                                                      region=region.record(cfg, scale_mat))
    out_verts = transform_vertices(verts, scale_mat) if opts.frame == "world" else verts
    suffix = "_world" if opts.frame == "world" else ""
    if opts.frame == "world":
        files["ply_world"] = write_ply(run_dir / "mesh_world.ply", out_verts, faces, colors=colors)
    extra = [f for f in opts.formats if f != "ply"]
    for fmt in extra:
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"unknown mesh format {fmt!r}; use {', '.join(EXPORT_FORMATS)}")
    if opts.texture:
        source = field_color_source(model.albedo, device=_device_of(model))
        if opts.color == "photos" and scene is not None:
            source = photo_color_source(scene.K, scene.c2w, scene.images, sdf_fn=_sdf_fn(model), masks=scene.masks,
                                        fallback=model.albedo, bound_radius=model.radius, device=_device_of(model))
        tv, tf, uvs, tex = texture_mesh(verts, faces, source, normals=normals, texture_size=int(opts.texture_size))
        tv_out = transform_vertices(tv, scale_mat) if opts.frame == "world" else tv
        obj_files = write_obj(run_dir / f"mesh_textured{suffix}.obj", tv_out, tf, uvs=uvs, texture=tex, yup=True)
        for key, path in obj_files.items():
            files[f"obj_{key}" if key != "obj" else "obj"] = path
        files["glb"] = write_glb(run_dir / f"mesh_textured{suffix}.glb", tv_out, tf, uvs=uvs, texture=tex, yup=True)
    else:
        if "obj" in extra:
            files["obj"] = write_obj(run_dir / f"mesh{suffix}.obj", out_verts, faces, colors=colors, yup=True)["obj"]
        if "glb" in extra:
            files["glb"] = write_glb(run_dir / f"mesh{suffix}.glb", out_verts, faces, colors=colors, yup=True)
    timings["export_s"] = time.monotonic() - t1
    return files


def write_preview_mesh(model: NeuSModel, cfg, run_dir: Path, step: int) -> Path | None:
    """A quick low-resolution coloured mesh for live preview; None while the surface is still empty."""
    was_training = model.training
    model.eval()
    try:
        opts = ExportOptions(resolution=int(cfg.train.preview_resolution), coarse_resolution=0, clean=False)
        verts, faces, colors, _ = extract_colored_mesh(model, opts)
    except MeshExtractionError:
        return None
    finally:
        model.train(was_training)
    out = run_dir / "preview" / f"preview_{step:06d}.ply"
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_ply(out, verts, faces, colors=colors)
