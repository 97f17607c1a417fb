"""Camera import with options: File > Import, drag-and-drop (FileHandler) and the sidebar share one code path.

The options (every k-th view, frustum size, photo backgrounds, image planes, sparse points, render settings and
scene camera) are operator properties: the file browser shows them in its side panel, the sidebar's Import
Cameras in its redo panel. Defaults come from ``blender_cameras.ImportOptions``.
"""

# No `from __future__ import annotations`: Blender reads the property annotations as objects.
from pathlib import Path

import bpy
from bpy.props import BoolProperty, CollectionProperty, FloatProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ImportHelper, poll_file_object_drop

from . import blender_cameras
from .core import camera_source
from .core.errors import AddonError

# Reconstructions whose Blender camera moves some pixel by more than this get a warning.
WARN_REPROJECTION_PX = 0.5
MENU_TEXT = "NeuS dataset cameras (.json/.npz/COLMAP)"
_D = blender_cameras.ImportOptions  # the defaults, stated once there


def _doc(name: str) -> str:
    return {  # the dataclass field docstrings are not introspectable; short tooltips here
        "every": "Import every k-th view (1: all views)",
        "subset": "0-based view indices and ranges to import, e.g. 0-9, 12 (empty: all views)",
        "display_size": "Size of the camera frustums (normalized-frame units: the object fits the unit sphere)",
        "backgrounds": "Show each photo as its camera's background image",
        "background_alpha": "Opacity of the background photos",
        "image_planes": "Add a plane textured with the photo in front of each camera",
        "image_plane_depth": "Distance of the image planes from their cameras (normalized-frame units)",
        "point_cloud": "Import the sparse point cloud where the format has one (COLMAP points3D)",
        "set_render": "Set the render resolution and pixel aspect to the photos' (off: keep the scene's)",
        "set_active_camera": "Make the first imported camera the scene camera (off: keep the scene's)",
    }[name]


class CameraImportSettings:
    """Mixin: the camera import options as operator properties."""

    every: IntProperty(name="Every k-th View", description=_doc("every"), default=_D.every, min=1, soft_max=50)
    subset: StringProperty(name="Views", description=_doc("subset"), default=_D.subset)
    display_size: FloatProperty(name="Camera Size", description=_doc("display_size"), default=_D.display_size,
                                min=0.001, soft_max=2.0)
    backgrounds: BoolProperty(name="Photo Backgrounds", description=_doc("backgrounds"), default=_D.backgrounds)
    background_alpha: FloatProperty(name="Opacity", description=_doc("background_alpha"),
                                    default=_D.background_alpha, min=0.0, max=1.0, subtype="FACTOR")
    image_planes: BoolProperty(name="Image Planes", description=_doc("image_planes"), default=_D.image_planes)
    image_plane_depth: FloatProperty(name="Plane Distance", description=_doc("image_plane_depth"),
                                     default=_D.image_plane_depth, min=0.001, soft_max=5.0)
    point_cloud: BoolProperty(name="Sparse Points", description=_doc("point_cloud"), default=_D.point_cloud)
    set_render: BoolProperty(name="Set Render Resolution", description=_doc("set_render"), default=_D.set_render)
    set_active_camera: BoolProperty(name="Set Scene Camera", description=_doc("set_active_camera"),
                                    default=_D.set_active_camera)

    def import_options(self) -> blender_cameras.ImportOptions:
        return blender_cameras.ImportOptions(
            every=self.every, subset=self.subset, display_size=self.display_size, backgrounds=self.backgrounds,
            background_alpha=self.background_alpha, image_planes=self.image_planes,
            image_plane_depth=self.image_plane_depth, point_cloud=self.point_cloud, set_render=self.set_render,
            set_active_camera=self.set_active_camera)

    def draw_import_options(self, layout) -> None:
        layout.use_property_split = True
        layout.use_property_decorate = False
        col = layout.column(heading="Views")
        col.prop(self, "every")
        col.prop(self, "subset")
        col = layout.column(heading="Cameras")
        col.prop(self, "display_size")
        col.prop(self, "backgrounds")
        sub = col.column()
        sub.active = self.backgrounds
        sub.prop(self, "background_alpha")
        col.prop(self, "image_planes")
        sub = col.column()
        sub.active = self.image_planes
        sub.prop(self, "image_plane_depth")
        col.prop(self, "point_cloud")
        col = layout.column(heading="Scene")
        col.prop(self, "set_render")
        col.prop(self, "set_active_camera")


def run_import(op: bpy.types.Operator, context, dataset: camera_source.DatasetFile,
               options: blender_cameras.ImportOptions) -> set[str]:
    """Imports ``dataset``'s cameras into the scene and reports; the one path of every camera import."""
    s = context.scene.neus
    try:
        res = blender_cameras.import_cameras(context.scene, dataset.root, s.frame, dataset.data_format, options,
                                             dataset.cameras_file)
    except AddonError as e:
        s.last_error = str(e)
        op.report({"ERROR"}, str(e))
        return {"CANCELLED"}
    s.data_dir = str(dataset.root)  # Reconstruct uses the imported dataset
    if dataset.data_format != "auto":
        s.data_format = dataset.data_format
    s.last_error = ""
    render = res.converted.render
    worst = max((c.max_error_px for c in res.converted.cameras), default=0.0)
    extra = f", {len(res.points.data.vertices)} sparse points" if res.points is not None else ""
    msg = (f"Imported {len(res.cameras)} cameras into '{res.collection.name}'{extra} "
           f"({render.resolution_x}x{render.resolution_y}, largest pixel difference to the dataset's cameras "
           f"{worst:.2g} px)")
    op.report({"WARNING"} if worst > WARN_REPROJECTION_PX else {"INFO"}, msg)
    if not blender_cameras.render_matches(context.scene, render):
        op.report({"INFO"}, f"The scene renders {context.scene.render.resolution_x}x"
                  f"{context.scene.render.resolution_y}, the photos are {render.resolution_x}x"
                  f"{render.resolution_y}: turn on Set Render Resolution to look through the cameras exactly")
    return {"FINISHED"}


class NEUS_OT_import_dataset(bpy.types.Operator, ImportHelper, CameraImportSettings):
    """Import the cameras of a NeuS dataset: transforms.json (NeRF-synthetic), cameras_sphere.npz (DTU / NeuS) or
    a COLMAP model's cameras/images/points3D file"""

    bl_idname = "neus.import_dataset"
    bl_label = "Import NeuS Dataset Cameras"
    bl_options = {"REGISTER", "UNDO"}

    filter_glob: StringProperty(default="*.json;*.npz;*.bin;*.txt", options={"HIDDEN"})
    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    files: CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, context, event):
        return self.invoke_popup(context)  # a dropped file: options in a popup; otherwise the file browser

    def draw(self, context):
        self.draw_import_options(self.layout)

    def execute(self, context):
        path = Path(bpy.path.abspath(self.filepath)) if self.filepath else Path(bpy.path.abspath(self.directory))
        if not str(path).strip() or str(path) == ".":
            self.report({"ERROR"}, "No dataset file given")
            return {"CANCELLED"}
        try:
            dataset = camera_source.dataset_from_path(path)
        except AddonError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        return run_import(self, context, dataset, self.import_options())


def menu_import(self, context) -> None:
    self.layout.operator(NEUS_OT_import_dataset.bl_idname, text=MENU_TEXT)


classes = [NEUS_OT_import_dataset]

if hasattr(bpy.types, "FileHandler"):  # Blender 4.1+: drag and drop onto the 3D Viewport or the Outliner

    class NEUS_FH_dataset(bpy.types.FileHandler):
        bl_idname = "NEUS_FH_dataset"
        bl_label = "NeuS dataset cameras"
        bl_import_operator = NEUS_OT_import_dataset.bl_idname
        bl_file_extensions = ".json;.npz;.bin;.txt"

        @classmethod
        def poll_drop(cls, context):
            return poll_file_object_drop(context)

    classes.append(NEUS_FH_dataset)

classes = tuple(classes)


def register() -> None:
    bpy.types.TOPBAR_MT_file_import.append(menu_import)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
