"""Reconstruction runs in Blender: the scene's settings become a run, the run's meshes come into the scene.

The run's logic is the bpy-free state machine :class:`core.run_state.Run`; the one job driver (``job_driver.py``)
runs it (timer, background mode, Cancel / Kill, the panel's status, the end report). This module builds the
:class:`RunRequest` from the scene (:func:`request_from_scene`, :func:`resume_request`), starts it (:func:`start`)
and gives the run its :class:`ReconstructHost`: mesh import under the dataset's parent, preview removal, and once
the run ended its engine log in a Text data-block and its result import as one undo step.
"""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Callable
from pathlib import Path

import bpy
import numpy as np

from . import blender_cameras, blender_mesh, job_driver, timer_ui
from .core import camera_source, engine_process, run_files, run_state
from .core.errors import AddonError
from .core.run_state import Run, RunRequest

PREVIEW_EVERY = 250  # steps between live-preview meshes, when the scene asks for them
LOG_TEXT = "NeuS engine log"  # Text data-block holding the last run's engine log


def default_run_dir(dataset: str) -> Path:
    """Parent of the numbered run folders: ``//neus_runs/<dataset>`` beside a saved .blend file, else
    ``<tmp>/neus_runs/<dataset>``."""
    if bpy.data.filepath:
        return Path(bpy.path.abspath("//")) / "neus_runs" / dataset
    return Path(tempfile.gettempdir()) / "neus_runs" / dataset


def request_from_scene(scene: bpy.types.Scene, engine_python: str = "", run_dir: Path | None = None,
                       resume: bool = False,
                       silence_s: float = engine_process.DEFAULT_SILENCE_S) -> RunRequest:
    """Validates the scene settings and the dataset (cameras only, fast) and finds the engine.

    The run goes to ``run_dir`` when given (headless, Resume), else to a new numbered folder
    ``run_NNN`` in the Output folder, with a result object of its own (``"<dataset> NeuS run_NNN"``).

    Raises:
        AddonError: bad settings, data folder or dataset (``"<path>: <problem>"``), or no engine interpreter.
    """
    s = scene.neus
    if not s.data_dir.strip():
        raise AddonError("no dataset folder set (Photos)")
    data_dir = Path(bpy.path.abspath(s.data_dir)).absolute()
    cams = camera_source.load_camera_set(data_dir, s.data_format)
    dataset = camera_source.dataset_name(data_dir)
    result_name = ""
    if run_dir is None:
        parent = Path(bpy.path.abspath(s.output_dir)).absolute() if s.output_dir.strip() else default_run_dir(dataset)
        if parent.resolve() == data_dir.resolve():
            raise AddonError(f"{parent}: the output folder must not be the dataset folder")
        run_dir = run_files.next_run_dir(parent)
    if run_dir.name.startswith(run_files.RUN_PREFIX):
        result_name = f"{dataset} NeuS {run_dir.name}"
    if run_dir.resolve() == data_dir.resolve():
        raise AddonError(f"{run_dir}: the output folder must not be the dataset folder")
    settings = parse_settings(s.engine_settings)
    if s.show_preview and not any(kv.startswith("train.preview_every=") for kv in settings):
        settings.append(f"train.preview_every={PREVIEW_EVERY}")
    if s.texture:  # the panel's texture options, except where the artist's own settings name the key
        user_keys = {kv.split("=", 1)[0] for kv in settings}
        settings += [kv for kv in engine_process.texture_settings(s.texture_size, s.color_source, int(s.game_faces))
                     if kv.split("=", 1)[0] not in user_keys]
    if not s.use_masks and not any(kv.startswith("data.use_mask=") for kv in settings):
        settings.append("data.use_mask=false")  # the engine then layers its no-mask defaults
    user_region = blender_cameras.user_region(scene, dataset)  # the region object, once the artist edits it
    if user_region is not None and not any(kv.startswith("data.region.") for kv in settings):
        settings += user_region.settings()
    engine = engine_process.find_engine_python(engine_python)
    return RunRequest(scene.name, data_dir, run_dir, dataset, engine, s.preset, s.device, int(s.steps),
                      s.data_format, s.frame, bool(s.texture), bool(s.show_preview),
                      np.asarray(cams.scale_mat, dtype=np.float64), settings, resume=resume,
                      export_on_cancel=bool(s.export_on_cancel), result_name=result_name, up=np.asarray(cams.up),
                      silence_s=silence_s)


def resume_request(scene: bpy.types.Scene, engine_python: str = "",
                   silence_s: float = engine_process.DEFAULT_SILENCE_S) -> RunRequest:
    """A request that continues the scene's last run folder from its checkpoint (``fit --resume``).

    Raises:
        AddonError: no run folder, or nothing to resume in it.
    """
    s = scene.neus
    if not s.run_dir.strip():
        raise AddonError("no earlier run to resume")
    run_dir = Path(bpy.path.abspath(s.run_dir)).absolute()
    problem = run_state.resume_problem(run_dir)
    if problem:
        raise AddonError(problem)
    return request_from_scene(scene, engine_python, run_dir=run_dir, resume=True, silence_s=silence_s)


def parse_settings(text: str) -> list[str]:
    """``"a.b=1 c='x y'"`` -> ``["a.b=1", "c=x y"]``; AddonError for an item without ``=``."""
    try:
        items = shlex.split(text or "")
    except ValueError as e:
        raise AddonError(f"Extra Settings: {e}") from e
    for item in items:
        key, eq, _ = item.partition("=")
        if not eq or not key.strip():
            raise AddonError(f"Extra Settings: '{item}' is not KEY=VALUE")
    return items


def start(request: RunRequest, echo: Callable[[str], None] | None = None) -> Run:
    """Starts the engine for ``request`` as the driver's active job (then ``job_driver.start_timer`` or
    ``job_driver.run_blocking``).

    Raises:
        AddonError: a job is already running, bad options, or the engine cannot start.
    """
    return job_driver.start(run_state.new_run(request, echo), HOST)


class ReconstructHost(job_driver.BlenderHost):
    """What :class:`run_state.Run` asks of Blender."""

    def import_mesh(self, run: Run, path: str, role: str) -> str:
        preview = role == "preview"
        obj = _import_result(run, path, run.preview_name if preview else run.result_name,
                             "previews" if preview else "results")
        blender_mesh.stamp(obj)  # as placed: a later move by the artist marks it as theirs
        return obj.name

    def clear_preview(self, run: Run) -> None:
        blender_mesh.remove_named_object(run.preview_name)

    def ended(self, run: Run) -> None:
        """Keeps the run's engine log and makes its result import one undo step."""
        _store_log(run)
        if run.result_object:
            _undo_push(f"NeuS: import {run.result_object}")


HOST = ReconstructHost()


def _scene(run: Run) -> bpy.types.Scene | None:
    return bpy.data.scenes.get(run.request.scene_name)


def _run_scale_mat(run: Run) -> np.ndarray:
    """The run's normalized -> world matrix: its normalization.json, else the dataset cameras'."""
    try:
        return run_files.read_normalization(run.request.run_dir)
    except AddonError:
        return run.request.scale_mat if run.request.scale_mat is not None else np.eye(4)


def _import_result(run: Run, path: str | Path, name: str, kind: str = "results") -> bpy.types.Object:
    """Imports a mesh of the run into the dataset's ``kind`` sub-collection, under the dataset's parent."""
    scene = _scene(run) or bpy.context.scene
    req = run.request
    obj = blender_mesh.import_mesh(path, name, blender_cameras.sub_collection(scene, req.dataset, kind))
    try:
        metres = run_files.read_metres_per_unit(req.run_dir)
    except AddonError:
        metres = None  # no normalization.json yet (a live preview) or an older run
    blender_cameras.attach_result(obj, scene, req.dataset, req.frame, _run_scale_mat(run), req.up, metres)
    return obj


def _undo_push(message: str) -> None:
    try:
        with timer_ui.window_context():
            bpy.ops.ed.undo_push(message=message)
    except RuntimeError as e:  # no undo stack (some background setups): the import stays, without a step
        print(f"[neus] no undo step: {e}", flush=True)


def _store_log(run: Run) -> None:
    """The whole engine log in a Text data-block (Scripting > Text Editor), for after the run."""
    try:
        text = run.process.log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    block = bpy.data.texts.get(LOG_TEXT) or bpy.data.texts.new(LOG_TEXT)
    block.clear()
    block.write(f"# {run.process.log_path}\n{text}")
