"""The 3D Viewport sidebar tab "Reconstruct"."""

import bpy

from . import photo_source, reconstruct, solve_cameras
from .preferences import wrapped_labels

HAS_PROGRESS_WIDGET = bpy.types.UILayout.bl_rna.functions.get("progress") is not None  # Blender 4.0+


class NEUS_PT_reconstruct(bpy.types.Panel):
    bl_idname = "NEUS_PT_reconstruct"
    bl_label = "NeuS Reconstruct"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Reconstruct"

    def draw(self, context):
        layout = self.layout
        s = context.scene.neus
        solving = solve_cameras.is_running()
        running = reconstruct.is_running() or solving

        col = layout.column(align=True)
        col.prop(s, "data_dir")
        col.prop(s, "data_format")
        col.prop(s, "frame")
        row = col.row()
        row.enabled = not running
        if s.data_dir.strip() and photo_source.needs_solving(bpy.path.abspath(s.data_dir)):
            row.operator("neus.solve_cameras", icon="CAMERA_DATA")  # photos or a video without cameras
        else:
            row.operator("neus.import_cameras", icon="OUTLINER_OB_CAMERA")

        box = layout.box()
        box.enabled = not running
        box.prop(s, "preset")
        box.prop(s, "device")
        box.prop(s, "steps")
        row = box.row()
        row.prop(s, "texture")
        row.prop(s, "show_preview")
        box.prop(s, "use_masks")
        box.prop(s, "output_dir")
        box.prop(s, "engine_settings")

        if running:
            layout.operator("neus.cancel", icon="CANCEL")
        else:
            layout.operator("neus.reconstruct", icon="PLAY")

        if running or s.state in ("done", "failed", "cancelled"):
            self.draw_status(layout, s, running)
        layout.operator("neus.import_mesh", icon="IMPORT")

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
        if s.last_error:
            err = box.column()
            err.alert = True
            wrapped_labels(err, s.last_error, icon="ERROR", width=48)


classes = (NEUS_PT_reconstruct,)
