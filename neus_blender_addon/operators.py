"""Operators: neus.import_cameras, neus.solve_cameras, neus.reconstruct, neus.cancel, neus.import_mesh,
neus.check_engine."""

# No `from __future__ import annotations`: Blender reads the property annotations as objects.
import functools
from pathlib import Path

import bpy
import numpy as np
from bpy.props import EnumProperty, StringProperty

from . import (
    blender_cameras,
    blender_mesh,
    camera_source,
    engine_process,
    import_dataset,
    photo_source,
    preferences,
    reconstruct,
    run_files,
    solve_cameras,
)


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


class NEUS_OT_solve_cameras(bpy.types.Operator):
    """Solve the cameras of a folder of photos or a video with COLMAP (in the engine, in the background), then
    import the cameras, their photos and the sparse points"""

    bl_idname = "neus.solve_cameras"
    bl_label = "Solve Cameras"
    bl_options = {"REGISTER"}

    matcher: EnumProperty(
        name="Matcher",
        items=[("auto", "Auto", "Every pair for up to 150 photos; neighbouring frames for a video"),
               ("exhaustive", "Exhaustive", "Match every pair of photos"),
               ("sequential", "Sequential", "Match neighbouring photos in name order (video frames)")],
        default="auto",
    )
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
        if reconstruct.is_running() or solve_cameras.is_running():
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
                                      echo=functools.partial(print, flush=True))
        except (ValueError, RuntimeError, OSError) as e:  # EngineNotFoundError is a RuntimeError
            s.last_error = str(e)
            s.state = "failed"
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        if not (self.mode == "BLOCKING" or (self.mode == "AUTO" and bpy.app.background)):
            solve_cameras.start_timer()
            self.report({"INFO"}, f"Solving cameras into {out}")
            return {"FINISHED"}
        state = solve_cameras.run_blocking(run)
        if state == "done":
            self.report({"WARNING"} if run.warnings else {"INFO"},
                        f"Cameras solved into {out}" + (f" ({'; '.join(run.warnings)})" if run.warnings else ""))
            return {"FINISHED"}
        if state == "cancelled":
            self.report({"WARNING"}, "Camera solving cancelled")
        else:
            self.report({"ERROR"}, f"Camera solving failed: {run.status.last_error}")
        return {"CANCELLED"}


class NEUS_OT_reconstruct(bpy.types.Operator):
    """Reconstruct a mesh from the dataset's photos with the NeuS engine (runs in the background)"""

    bl_idname = "neus.reconstruct"
    bl_label = "Reconstruct"
    bl_options = {"REGISTER"}

    mode: EnumProperty(
        name="Mode",
        items=[("AUTO", "Auto", "Blocking in background mode (scripts), else asynchronous"),
               ("BLOCKING", "Blocking", "Wait for the engine to finish"),
               ("ASYNC", "Asynchronous", "Return at once; a timer applies the engine's progress")],
        default="AUTO",
        options={"SKIP_SAVE", "HIDDEN"},
    )

    def execute(self, context):
        s = context.scene.neus
        if reconstruct.is_running() or solve_cameras.is_running():
            self.report({"ERROR"}, "The engine is busy (a reconstruction or a camera solve); cancel it first")
            return {"CANCELLED"}
        try:
            request = reconstruct.request_from_scene(context.scene, preferences.engine_python_setting(context))
            blocking = self.mode == "BLOCKING" or (self.mode == "AUTO" and bpy.app.background)
            run = reconstruct.start(request, echo=functools.partial(print, flush=True))
        except (ValueError, ImportError, RuntimeError, OSError) as e:  # EngineNotFoundError, DatasetError, ...
            s.last_error = str(e)
            s.state = "failed"
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        if not blocking:
            reconstruct.start_timer()
            self.report({"INFO"}, f"Reconstruction started in {request.run_dir}")
            return {"FINISHED"}
        state = reconstruct.run_blocking(run)
        if state == "done":
            if run.status.last_error:
                self.report({"WARNING"}, run.status.last_error)
            self.report({"INFO"}, f"Reconstruction finished: {run.result_object}")
            return {"FINISHED"}
        if state == "cancelled":
            self.report({"WARNING"}, "Reconstruction cancelled")
        else:
            self.report({"ERROR"}, f"Reconstruction failed: {run.status.last_error}")
        return {"CANCELLED"}


class NEUS_OT_cancel(bpy.types.Operator):
    """Stop the running reconstruction (the engine saves a checkpoint)"""

    bl_idname = "neus.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    def execute(self, context):
        if solve_cameras.cancel():
            self.report({"INFO"}, "Cancelling the camera solve")
            return {"FINISHED"}
        if not reconstruct.cancel():
            self.report({"WARNING"}, "No reconstruction is running")
            return {"CANCELLED"}
        self.report({"INFO"}, "Cancelling the reconstruction")
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
        except ValueError:
            coll = blender_cameras.dataset_collection(context.scene, dataset, create=False)
            run_scale_mat = blender_cameras.stored_matrix(coll and blender_cameras.find_frame_empty(coll))
            if run_scale_mat is None and s.frame == "world":
                self.report({"ERROR"}, f"{path}: the world frame needs normalization.json beside the mesh "
                            "or the dataset's cameras imported first")
                return {"CANCELLED"}
        try:
            obj = blender_mesh.import_mesh(path, name, blender_cameras.sub_collection(context.scene, dataset,
                                                                                      "results"))
        except (ValueError, OSError, RuntimeError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        up = None
        if data_dir:
            try:  # the cameras' up, for a dataset whose cameras are not imported yet
                up = camera_source.load_camera_set(data_dir, s.data_format).up
            except (ValueError, ImportError):
                pass
        blender_cameras.attach_result(obj, context.scene, dataset, s.frame,
                                      np.eye(4) if run_scale_mat is None else run_scale_mat, up)
        self.report({"INFO"}, f"Imported '{obj.name}' ({len(obj.data.vertices)} vertices)")
        return {"FINISHED"}


class NEUS_OT_check_engine(bpy.types.Operator):
    """Run the engine's self-check (doctor): Python, PyTorch, devices, optional accelerators"""

    bl_idname = "neus.check_engine"
    bl_label = "Check Engine"
    bl_options = {"REGISTER"}

    def execute(self, context):
        prefs = preferences.get_preferences(context)
        try:
            loc = engine_process.find_engine_python(preferences.engine_python_setting(context))
            report = engine_process.run_doctor(loc)
        except RuntimeError as e:  # includes EngineNotFoundError
            if prefs is not None:
                prefs.engine_status = f"Engine check failed: {e}"
            self.report({"ERROR"}, f"Engine check failed: {e}")
            return {"CANCELLED"}
        lines = [f"Engine: {loc.describe()}", *engine_process.format_doctor(report)]
        if prefs is not None:
            prefs.engine_status = "\n".join(lines)
        print("\n".join(lines))
        self.report({"INFO"}, "Engine OK: " + "; ".join(lines[1:4]))
        return {"FINISHED"}


classes = (NEUS_OT_import_cameras, NEUS_OT_solve_cameras, NEUS_OT_reconstruct, NEUS_OT_cancel, NEUS_OT_import_mesh,
           NEUS_OT_check_engine)
