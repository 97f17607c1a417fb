"""The 3D Viewport sidebar tab "Reconstruct": run buttons and status, with Data, Training, Output, Advanced and
Engine Log sub-panels (property-split layout, as Blender's own panels)."""

import bpy

from .core import photo_source
from .job_driver import is_running as engine_busy
from .preferences import wrapped_labels

HAS_PROGRESS_WIDGET = bpy.types.UILayout.bl_rna.functions.get("progress") is not None  # Blender 4.0+


class _SidebarPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Reconstruct"


class NEUS_PT_reconstruct(_SidebarPanel, bpy.types.Panel):
    bl_idname = "NEUS_PT_reconstruct"
    bl_label = "NeuS Reconstruct"

    def draw(self, context):
        layout = self.layout
        s = context.scene.neus
        running = engine_busy()
        row = layout.row(align=True)
        row.scale_y = 1.4
        if running:
            row.operator("neus.cancel", icon="CANCEL")
            if s.silent_s:
                warn = layout.box()
                warn.alert = True
                warn.label(text=f"Engine not responding for {s.silent_s} s", icon="ERROR")
                buttons = warn.row(align=True)
                buttons.operator("neus.cancel", icon="CANCEL")
                buttons.operator("neus.kill", icon="X")
        else:
            row.operator("neus.reconstruct", icon="PLAY")
            if s.state != "done" and s.run_dir:
                row.operator("neus.resume", icon="FILE_REFRESH")
        if running or s.state in ("done", "failed", "cancelled"):
            self.draw_status(layout, s, running)

    @staticmethod
    def draw_status(layout, s, running: bool) -> None:
        box = layout.box()
        pct = f"{100.0 * s.progress:.0f}%"
        if HAS_PROGRESS_WIDGET:
            box.progress(factor=s.progress, type="BAR", text=f"{s.stage or s.state} {pct}")
        else:
            box.label(text=f"Progress: {pct}")
        grid = box.grid_flow(columns=2, even_columns=True)
        grid.label(text=f"Stage: {s.stage or s.state}")
        grid.label(text=f"Step: {s.step}/{s.total}")
        grid.label(text=f"Loss: {s.loss:.4g}" if s.has_loss else "Loss: --")
        grid.label(text=f"PSNR: {s.psnr:.2f} dB" if s.has_psnr else "PSNR: --")
        if running:
            grid.label(text=f"ETA: {s.eta or '--'}")
        if s.result_object and not running:
            box.label(text=f"Result: {s.result_object}", icon="MESH_DATA")
        if s.fidelity and not running:
            wrapped_labels(box.column(), s.fidelity, icon="IMAGE_DATA", width=48)
        if s.last_error:
            err = box.column()
            err.alert = True
            wrapped_labels(err, s.last_error, icon="ERROR", width=48)


class SubPanel(_SidebarPanel):
    """A settings sub-panel of the main panel (also scene_tools.NEUS_PT_scene): property-split layout, greyed out
    while the engine runs unless ``usable_while_running``."""

    bl_parent_id = "NEUS_PT_reconstruct"
    usable_while_running = False  # True: region and display helpers, which a run does not read

    def split_layout(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        layout.enabled = self.usable_while_running or not engine_busy()
        return layout

    def prop_column(self, context, data, names: tuple[str, ...]):
        """The split layout and a column holding one row per property of ``data`` in ``names`` (more rows may
        follow in the column); returns (layout, column)."""
        layout = self.split_layout(context)
        col = layout.column()
        for name in names:
            col.prop(data, name)
        return layout, col


class NEUS_PT_data(SubPanel, bpy.types.Panel):
    bl_idname = "NEUS_PT_data"
    bl_label = "Data"

    def draw(self, context):
        layout = self.split_layout(context)
        s = context.scene.neus
        col = layout.column()
        row = col.row(align=True)
        row.prop(s, "data_dir")
        row.operator("neus.pick_video", text="", icon="FILE_MOVIE")  # the folder browser cannot pick a file
        col.prop(s, "data_format")
        col.prop(s, "frame")
        col.prop(s, "use_masks")
        if s.data_dir.strip() and photo_source.needs_solving(bpy.path.abspath(s.data_dir)):
            layout.operator("neus.solve_cameras", icon="CAMERA_DATA")  # photos or a video without cameras
        else:
            layout.operator("neus.import_cameras", icon="OUTLINER_OB_CAMERA")
        from .scene_tools import draw_region_notes  # here: scene_tools builds on this module

        draw_region_notes(layout, context, short=True)


class NEUS_PT_training(SubPanel, bpy.types.Panel):
    bl_idname = "NEUS_PT_training"
    bl_label = "Training"

    def draw(self, context):
        self.prop_column(context, context.scene.neus, ("preset", "device", "steps", "show_preview"))


class NEUS_PT_output(SubPanel, bpy.types.Panel):
    bl_idname = "NEUS_PT_output"
    bl_label = "Output"

    def draw(self, context):
        s = context.scene.neus
        _layout, col = self.prop_column(context, s, ("output_dir", "texture"))
        sub = col.column()
        sub.enabled = s.texture
        sub.prop(s, "texture_size")
        sub.prop(s, "color_source")
        sub.prop(s, "game_faces")
        col.prop(s, "export_on_cancel")
        row = self.layout.row(align=True)  # usable during a run too
        row.operator("neus.open_run_folder", icon="FILE_FOLDER")
        row.operator("neus.import_mesh", icon="IMPORT")


class NEUS_PT_advanced(SubPanel, bpy.types.Panel):
    bl_idname = "NEUS_PT_advanced"
    bl_label = "Advanced"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.split_layout(context)
        layout.prop(context.scene.neus, "engine_settings")


class NEUS_PT_log(_SidebarPanel, bpy.types.Panel):
    """The engine log's last lines (the whole log: the "NeuS engine log" text after the run, or the run folder)."""

    bl_idname = "NEUS_PT_log"
    bl_label = "Engine Log"
    bl_parent_id = "NEUS_PT_reconstruct"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        s = context.scene.neus
        col = self.layout.column(align=True)
        lines = s.log_tail.splitlines()
        for line in lines or ["(no engine output yet)"]:
            col.label(text=line)
        if s.run_dir:
            col.label(text=f"Run folder: {s.run_dir}", icon="FILE_FOLDER")


classes = (NEUS_PT_reconstruct, NEUS_PT_data, NEUS_PT_training, NEUS_PT_output, NEUS_PT_advanced, NEUS_PT_log)
