"""Scene helpers on request: vertex-colour shading, the editable region, and the sidebar's Scene sub-panel."""

import bpy

from . import blender_cameras, blender_mesh
from .core import camera_source
from .ui import SubPanel


def current_dataset(context) -> str | None:
    """Name of the dataset the sidebar points at (its Photos folder), or None."""
    s = context.scene.neus
    return camera_source.dataset_name(bpy.path.abspath(s.data_dir)) if s.data_dir.strip() else None


def region_object(context) -> bpy.types.Object | None:
    dataset = current_dataset(context)
    coll = blender_cameras.dataset_collection(context.scene, dataset, create=False) if dataset else None
    return blender_cameras.find_region(coll) if coll is not None else None


def region_notes(context) -> list[str]:
    """Why the automatic region of the sidebar's dataset is uncertain (one line each; recorded at the camera
    import), while its region object is still the automatic one; empty otherwise."""
    obj = region_object(context)
    notes = str(obj.get(blender_cameras.REGION_NOTES_PROP, "")) if obj is not None else ""
    if not notes or blender_cameras.user_region_or_none(context.scene, current_dataset(context)) is not None:
        return []
    return notes.splitlines()


def draw_region_notes(layout, context, short: bool = False) -> None:
    """The uncertain-region warning (an alert): every reason, or one line pointing to the Scene sub-panel."""
    from .preferences import wrapped_labels

    notes = region_notes(context)
    if not notes:
        return
    col = layout.column(align=True)
    col.alert = True
    if short:
        col.label(text="Automatic region uncertain: check it (Scene)", icon="ERROR")
        return
    col.label(text="Automatic region uncertain:", icon="ERROR")
    for note in notes:
        wrapped_labels(col, note, width=48)


class NEUS_OT_show_vertex_colors(bpy.types.Operator):
    """Show colour attributes in Solid shading, in the 3D views of this window (the add-on never changes
    viewport shading by itself)"""

    bl_idname = "neus.show_vertex_colors"
    bl_label = "Show Vertex Colours"
    bl_options = {"REGISTER"}

    def execute(self, context):
        screens = [context.screen] if context.screen is not None else list(bpy.data.screens)
        n = blender_mesh.show_attribute_colors(screens, context.scene)
        self.report({"INFO"}, f"Solid shading shows colour attributes in {n} 3D view(s)")
        return {"FINISHED"}


class NEUS_OT_reset_region(bpy.types.Operator):
    """Put the region object back to the automatic region (the unit sphere the engine would choose)"""

    bl_idname = "neus.reset_region"
    bl_label = "Reset Region"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return region_object(context) is not None

    def execute(self, context):
        blender_cameras.reset_region(context.scene, current_dataset(context))
        return {"FINISHED"}


class NEUS_PT_scene(SubPanel, bpy.types.Panel):
    """Region and display helpers, under the add-on's main panel."""

    bl_idname = "NEUS_PT_scene"
    bl_label = "Scene"
    bl_options = {"DEFAULT_CLOSED"}
    usable_while_running = True

    def draw(self, context):
        layout = self.split_layout(context)
        obj = region_object(context)
        if obj is None:
            layout.label(text="Import cameras to get an editable region", icon="INFO")
        else:
            col = layout.column()
            col.prop(obj, "empty_display_type", text="Region Shape")
            row = col.row(align=True)
            row.operator("neus.select_region", icon="RESTRICT_SELECT_OFF")
            row.operator("neus.reset_region", icon="LOOP_BACK")
            draw_region_notes(col, context)
        layout.operator("neus.show_vertex_colors", icon="COLOR")


class NEUS_OT_select_region(bpy.types.Operator):
    """Select the region object to move, scale or rotate it; Reconstruct then reconstructs inside it"""

    bl_idname = "neus.select_region"
    bl_label = "Edit Region"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return region_object(context) is not None

    def execute(self, context):
        obj = region_object(context)
        for other in context.selected_objects:
            other.select_set(False)
        if obj.name in context.view_layer.objects:
            obj.hide_set(False)
            obj.select_set(True)
            context.view_layer.objects.active = obj
        return {"FINISHED"}


classes = (NEUS_OT_show_vertex_colors, NEUS_OT_reset_region, NEUS_OT_select_region, NEUS_PT_scene)
