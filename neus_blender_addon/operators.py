"""Operators: neus.import_cameras, neus.pick_video, neus.solve_cameras, neus.reconstruct, neus.resume, neus.cancel,
neus.kill, neus.open_run_folder, neus.report, neus.import_mesh, neus.check_engine."""

# No `from __future__ import annotations`: Blender reads the property annotations as objects.
import functools
from pathlib import Path

import bpy
import numpy as np
from bpy.props import EnumProperty, FloatProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from . import (
    blender_cameras,
    blender_mesh,
    import_dataset,
    job_driver,
    preferences,
    reconstruct,
    solve_cameras,
    timer_ui,
)
from .core import camera_source, engine_process, photo_source, run_files, run_state
from .core.errors import AddonError
from .core.solve_state import SolveJob
from .job_driver import is_running as engine_busy


class NEUS_OT_import_cameras(bpy.types.Operator, import_dataset.CameraImportSettings):
    """Create one camera per photo of the dataset (options in the redo panel, as in File > Import)"""

    bl_idname = "neus.import_cameras"
    bl_label = "Import Cameras"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Dataset Folder", subtype="DIR_PATH", options={"SKIP_SAVE"})

    def invoke(self, context, event):
        if self.directory or context.scene.neus.data_dir:
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def draw(self, context):
        self.draw_import_options(self.layout)

    def execute(self, context):
        s = context.scene.neus
        directory = self.directory or s.data_dir
        if not directory.strip():
            self.report({"ERROR"}, "No dataset folder given")
            return {"CANCELLED"}
        dataset = camera_source.DatasetFile(Path(bpy.path.abspath(directory)), s.data_format)
        return import_dataset.run_import(self, context, dataset, self.import_options())


class NEUS_OT_pick_video(bpy.types.Operator, ImportHelper):
    """Choose a video to solve the cameras of (the Photos field's own browser picks folders)"""

    bl_idname = "neus.pick_video"
    bl_label = "Choose Video"
    bl_options = {"REGISTER"}

    filename_ext = ""  # any of the video suffixes: ImportHelper adds none
    filter_glob: StringProperty(default=";".join(f"*{suffix}" for suffix in photo_source.VIDEO_SUFFIXES),
                                options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        return not engine_busy()

    def execute(self, context):
        path = Path(bpy.path.abspath(self.filepath))
        if path.suffix.lower() not in photo_source.VIDEO_SUFFIXES or not path.is_file():
            self.report({"ERROR"}, f"{path}: not a video file ({', '.join(photo_source.VIDEO_SUFFIXES)})")
            return {"CANCELLED"}
        context.scene.neus.data_dir = self.filepath
        return {"FINISHED"}


class NEUS_OT_solve_cameras(bpy.types.Operator):
    """Solve the cameras of a folder of photos or a video with COLMAP (in the engine, in the background), then
    import the cameras, their photos and the sparse points"""

    bl_idname = "neus.solve_cameras"
    bl_label = "Solve Cameras"
    bl_options = {"REGISTER"}

    matcher: EnumProperty(name="Matcher", items=list(photo_source.MATCHER_ITEMS), default="auto")
    mode: EnumProperty(
        name="Mode",
        items=[("AUTO", "Auto", "Blocking in background mode (scripts), else asynchronous"),
               ("BLOCKING", "Blocking", "Wait for the solve to finish"),
               ("ASYNC", "Asynchronous", "Return at once; a timer applies the engine's progress")],
        default="AUTO",
        options={"SKIP_SAVE", "HIDDEN"},
    )

    def execute(self, context):
        s = context.scene.neus
        if engine_busy():
            self.report({"ERROR"}, "The engine is busy; cancel the running job first")
            return {"CANCELLED"}
        source = Path(bpy.path.abspath(s.data_dir)).absolute() if s.data_dir.strip() else None
        if source is None or not photo_source.needs_solving(source):
            self.report({"ERROR"}, f"{source or 'Photos'}: choose a folder of photos (with no camera file) or a video")
            return {"CANCELLED"}
        base = (Path(bpy.path.abspath(s.output_dir)).absolute() if s.output_dir.strip()
                else reconstruct.default_run_dir("x").parent)
        out = photo_source.solved_dir_for(source, base)
        try:
            engine = engine_process.find_engine_python(preferences.engine_python_setting(context))
            run = solve_cameras.start(context.scene, source, out, engine, self.matcher,
                                      echo=functools.partial(print, flush=True),
                                      silence_s=preferences.silence_limit_setting(context))
        except AddonError as e:
            s.last_error = str(e)
            s.state = "failed"
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        if not (self.mode == "BLOCKING" or (self.mode == "AUTO" and bpy.app.background)):
            job_driver.start_timer()
            self.report({"INFO"}, f"Solving cameras into {out}")
            return {"FINISHED"}
        state = job_driver.run_blocking(run)
        level, message = run.outcome()
        self.report({level}, message)
        return {"FINISHED"} if state == "done" else {"CANCELLED"}


def _start_run(op: bpy.types.Operator, context: bpy.types.Context, resume: bool, mode: str,
               run_dir: str = "", silence_s: float = 0.0) -> set[str]:
    """Shared by Reconstruct and Resume: one place reports an AddonError (and stores it for the panel)."""
    s = context.scene.neus
    try:
        engine_python = preferences.engine_python_setting(context)
        silence_s = silence_s or preferences.silence_limit_setting(context)
        if resume:
            request = reconstruct.resume_request(context.scene, engine_python, silence_s)
        else:
            request = reconstruct.request_from_scene(context.scene, engine_python,
                                                     Path(bpy.path.abspath(run_dir)) if run_dir else None,
                                                     silence_s=silence_s)
        blocking = mode == "BLOCKING" or (mode == "AUTO" and bpy.app.background)
        run = reconstruct.start(request, echo=functools.partial(print, flush=True))
    except AddonError as e:
        s.last_error = str(e)
        s.state = "failed"
        op.report({"ERROR"}, str(e))
        return {"CANCELLED"}
    if not blocking:
        job_driver.start_timer()
        op.report({"INFO"}, f"Reconstruction {'resumed' if resume else 'started'} in {request.run_dir}")
        return {"FINISHED"}
    state = job_driver.run_blocking(run)
    if state == "done":
        if run.status.last_error:
            op.report({"WARNING"}, run.status.last_error)
        op.report({"INFO"}, f"Reconstruction finished: {run.result_object}")
        return {"FINISHED"}
    if state == "cancelled":
        op.report({"WARNING"}, "Reconstruction cancelled")
    else:
        op.report({"ERROR"}, f"Reconstruction failed: {run.status.last_error}")
    return {"CANCELLED"}


MODE_ITEMS = [("AUTO", "Auto", "Blocking in background mode (scripts), else asynchronous"),
              ("BLOCKING", "Blocking", "Wait for the engine to finish"),
              ("ASYNC", "Asynchronous", "Return at once; a timer applies the engine's progress")]


class NEUS_OT_reconstruct(bpy.types.Operator):
    """Reconstruct a mesh from the dataset's photos with the NeuS engine (runs in the background, into a new
    numbered run folder)"""

    bl_idname = "neus.reconstruct"
    bl_label = "Reconstruct"
    bl_options = {"REGISTER"}

    mode: EnumProperty(name="Mode", items=MODE_ITEMS, default="AUTO", options={"SKIP_SAVE", "HIDDEN"})
    run_dir: StringProperty(name="Run Folder", description="Use this run folder instead of a new numbered one",
                            subtype="DIR_PATH", options={"SKIP_SAVE", "HIDDEN"})
    silence_limit: FloatProperty(name="Silence Limit", description="Seconds without a word from the engine that "
                                 "count as not responding (0: the add-on preferences' value)", default=0.0, min=0.0,
                                 options={"SKIP_SAVE", "HIDDEN"})

    @classmethod
    def poll(cls, context):
        if engine_busy():
            cls.poll_message_set("The engine is busy (a reconstruction is already running or cameras are being "
                                 "solved); cancel it first")
            return False
        if not context.scene.neus.data_dir.strip():
            cls.poll_message_set("Set the dataset folder (Photos) first")
            return False
        return True

    def execute(self, context):
        return _start_run(self, context, False, self.mode, self.run_dir, self.silence_limit)


class NEUS_OT_resume(bpy.types.Operator):
    """Continue the last run from its checkpoint (after Cancel, a crash or quitting Blender)"""

    bl_idname = "neus.resume"
    bl_label = "Resume"
    bl_options = {"REGISTER"}

    mode: EnumProperty(name="Mode", items=MODE_ITEMS, default="AUTO", options={"SKIP_SAVE", "HIDDEN"})

    @classmethod
    def poll(cls, context):
        s = context.scene.neus
        return (not engine_busy() and s.state != "done"
                and bool(s.run_dir.strip())
                and run_state.resume_problem(bpy.path.abspath(s.run_dir)) is None)

    def execute(self, context):
        return _start_run(self, context, True, self.mode)


class NEUS_OT_cancel(bpy.types.Operator):
    """Stop the running reconstruction (the engine saves a checkpoint; Resume continues it)"""

    bl_idname = "neus.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        if not engine_busy():
            cls.poll_message_set("No reconstruction is running")
            return False
        return True

    def execute(self, context):
        job = job_driver.active()
        if not job_driver.cancel():
            self.report({"WARNING"}, "No reconstruction is running")
            return {"CANCELLED"}
        self.report({"INFO"}, "Cancelling the camera solve" if isinstance(job, SolveJob)
                    else "Cancelling the reconstruction")
        return {"FINISHED"}


class NEUS_OT_kill(bpy.types.Operator):
    """Kill the engine now, with every process it started (for an engine that stopped answering; the last
    checkpoint stays, Resume continues from it)"""

    bl_idname = "neus.kill"
    bl_label = "Kill"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        if not engine_busy():
            cls.poll_message_set("No engine is running")
            return False
        return True

    def execute(self, context):
        if job_driver.kill():
            self.report({"WARNING"}, "Killing the engine")
            return {"FINISHED"}
        self.report({"WARNING"}, "No engine is running")
        return {"CANCELLED"}


class NEUS_OT_open_run_folder(bpy.types.Operator):
    """Open the last run's folder (meshes, checkpoint, engine log) in the file manager"""

    bl_idname = "neus.open_run_folder"
    bl_label = "Open Run Folder"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        s = context.scene.neus
        return bool(s.run_dir.strip()) and Path(bpy.path.abspath(s.run_dir)).is_dir()

    def execute(self, context):
        return bpy.ops.wm.path_open(filepath=bpy.path.abspath(context.scene.neus.run_dir))


class NEUS_OT_report(bpy.types.Operator):
    """Internal: shows a message from a timer in the status bar and the Info log"""

    bl_idname = "neus.report"
    bl_label = "NeuS Report"
    bl_options = {"INTERNAL"}

    level: EnumProperty(items=[("INFO", "Info", ""), ("WARNING", "Warning", ""), ("ERROR", "Error", "")],
                        default="INFO", options={"SKIP_SAVE"})
    message: StringProperty(default="", options={"SKIP_SAVE"})

    def execute(self, context):
        self.report({self.level}, self.message)
        return {"FINISHED"}


class NEUS_OT_import_mesh(bpy.types.Operator):
    """Import a mesh written by the engine (PLY with vertex colours, OBJ or glTF) in the cameras' frame"""

    bl_idname = "neus.import_mesh"
    bl_label = "Import Mesh"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Mesh", subtype="FILE_PATH", options={"SKIP_SAVE"})
    filter_glob: StringProperty(default="*.ply;*.obj;*.glb;*.gltf", options={"HIDDEN"})

    def invoke(self, context, event):
        if self.filepath:
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        s = context.scene.neus
        path = Path(bpy.path.abspath(self.filepath))
        data_dir = bpy.path.abspath(s.data_dir) if s.data_dir.strip() else ""
        dataset = camera_source.dataset_name(data_dir or path.parent)
        name = f"{dataset} {path.stem}" if data_dir else path.stem
        try:
            run_scale_mat = run_files.read_normalization(path.parent)
        except AddonError:  # no (readable) normalization.json beside the mesh
            coll = blender_cameras.dataset_collection(context.scene, dataset, create=False)
            run_scale_mat = blender_cameras.stored_matrix(coll and blender_cameras.find_frame_empty(coll))
            if run_scale_mat is None and s.frame == "world":
                self.report({"ERROR"}, f"{path}: the world frame needs normalization.json beside the mesh "
                            "or the dataset's cameras imported first")
                return {"CANCELLED"}
        try:
            obj = blender_mesh.import_mesh(path, name, blender_cameras.sub_collection(context.scene, dataset,
                                                                                      "results"))
        except AddonError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        up = None
        if data_dir:
            try:  # the cameras' up, for a dataset whose cameras are not imported yet
                up = camera_source.load_camera_set(data_dir, s.data_format).up
            except AddonError:
                pass
        blender_cameras.attach_result(obj, context.scene, dataset, s.frame,
                                      np.eye(4) if run_scale_mat is None else run_scale_mat, up)
        blender_mesh.stamp(obj)  # as placed, so the replace rule sees later edits by the artist
        self.report({"INFO"}, f"Imported '{obj.name}' ({len(obj.data.vertices)} vertices)")
        return {"FINISHED"}


_doctor: engine_process.DoctorJob | None = None
engine_check_result: tuple[bool, list[str]] | None = None  # the last check's (ok, lines), for the UI and tests


def check_engine_step() -> float | None:
    """Timer: when the background engine check has answered, show and report it."""
    global _doctor, engine_check_result
    if _doctor is None:
        return None
    answer = _doctor.result()
    if answer is None:
        return 0.5
    _doctor = None
    engine_check_result = answer
    ok, lines = answer
    prefs = preferences.get_preferences()
    if prefs is not None:
        prefs.engine_status = "\n".join(lines)
    print("\n".join(lines), flush=True)
    timer_ui.report("INFO" if ok else "ERROR", ("Engine OK: " + "; ".join(lines[1:4])) if ok else lines[0])
    return None


def stop_engine_check() -> None:
    global _doctor
    _doctor = None
    if bpy.app.timers.is_registered(check_engine_step):
        bpy.app.timers.unregister(check_engine_step)


class NEUS_OT_check_engine(bpy.types.Operator):
    """Run the engine's self-check (doctor) in the background: Python, PyTorch, devices, optional accelerators"""

    bl_idname = "neus.check_engine"
    bl_label = "Check Engine"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return _doctor is None

    def execute(self, context):
        global _doctor, engine_check_result
        prefs = preferences.get_preferences(context)
        try:
            loc = engine_process.find_engine_python(preferences.engine_python_setting(context))
        except AddonError as e:
            if prefs is not None:
                prefs.engine_status = f"Engine check failed: {e}"
            self.report({"ERROR"}, f"Engine check failed: {e}")
            return {"CANCELLED"}
        engine_check_result = None
        _doctor = engine_process.DoctorJob(loc)
        if prefs is not None:
            prefs.engine_status = f"Checking {loc.describe()} ..."
        bpy.app.timers.register(check_engine_step, first_interval=0.5, persistent=True)
        self.report({"INFO"}, "Checking the engine in the background")
        return {"FINISHED"}


classes = (NEUS_OT_import_cameras, NEUS_OT_pick_video, NEUS_OT_solve_cameras, NEUS_OT_reconstruct, NEUS_OT_resume,
           NEUS_OT_cancel, NEUS_OT_kill, NEUS_OT_open_run_folder, NEUS_OT_report, NEUS_OT_import_mesh,
           NEUS_OT_check_engine)
