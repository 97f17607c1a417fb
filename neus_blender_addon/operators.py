"""Operators: neus.import_cameras, neus.reconstruct, neus.cancel, neus.import_mesh, neus.check_engine."""

# No `from __future__ import annotations`: Blender reads the property annotations as objects.
import functools
from pathlib import Path

import bpy
import numpy as np
from bpy.props import EnumProperty, StringProperty

from . import blender_cameras, blender_mesh, camera_source, engine_process, preferences, reconstruct, run_files

# Reconstructions whose Blender camera moves some pixel by more than this get a warning.
WARN_REPROJECTION_PX = 0.5


class NEUS_OT_import_cameras(bpy.types.Operator):
    """Create one camera per photo of the dataset, with the photo as its background"""

    bl_idname = "neus.import_cameras"
    bl_label = "Import Cameras"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Dataset Folder", subtype="DIR_PATH", options={"SKIP_SAVE"})

    def invoke(self, context, event):
        if self.directory or context.scene.neus.data_dir:
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        s = context.scene.neus
        directory = self.directory or s.data_dir
        if not directory.strip():
            self.report({"ERROR"}, "No dataset folder given")
            return {"CANCELLED"}
        path = Path(bpy.path.abspath(directory))
        try:
            res = blender_cameras.import_cameras(context.scene, path, s.frame, s.data_format)
        except (ValueError, ImportError) as e:
            s.last_error = str(e)
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        if self.directory:
            s.data_dir = self.directory
        s.last_error = ""
        worst = max((c.max_error_px for c in res.converted.cameras), default=0.0)
        msg = (f"Imported {len(res.cameras)} cameras into '{res.collection.name}' "
               f"({res.converted.render.resolution_x}x{res.converted.render.resolution_y}, "
               f"largest pixel difference to the dataset's cameras {worst:.2g} px)")
        self.report({"WARNING"} if worst > WARN_REPROJECTION_PX else {"INFO"}, msg)
        return {"FINISHED"}


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
        if reconstruct.is_running():
            self.report({"ERROR"}, "A reconstruction is already running; cancel it first")
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
        if s.data_dir.strip():
            dataset = camera_source.dataset_name(bpy.path.abspath(s.data_dir))
            coll = blender_cameras.dataset_collection(context.scene, dataset)
            name = f"{dataset} {path.stem}"
        else:
            coll, name = context.scene.collection, path.stem
        parent = None
        if s.frame == "world":
            try:
                scale_mat = run_files.read_normalization(path.parent)
            except ValueError:
                stored = coll.get(blender_cameras.SCALE_MAT_PROP)
                if stored is None:
                    self.report({"ERROR"}, f"{path}: the world frame needs normalization.json beside the mesh "
                                "or the dataset's cameras imported first")
                    return {"CANCELLED"}
                scale_mat = np.array(stored, dtype=np.float64).reshape(4, 4)
            parent = blender_cameras.ensure_frame_empty(coll, scale_mat)
        try:
            obj = blender_mesh.import_mesh(path, name, coll, parent, context.scene)
        except (ValueError, OSError, RuntimeError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
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


classes = (NEUS_OT_import_cameras, NEUS_OT_reconstruct, NEUS_OT_cancel, NEUS_OT_import_mesh, NEUS_OT_check_engine)
